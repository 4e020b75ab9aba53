"""The pipeline replay engine (``--engine pipeline``): one app's run on the real
services, in lock-step with the event-time clock. docs/replay-pipeline.md.

What runs: the embedded broker (tansu; its own on a free port, or a given bootstrap),
``python -m streams.ledger --clock event`` and ``python -m ecovisor.api`` as processes
on the app's site (``site_config``, plus an internal key and the replay clock source:
replay/pipeline_stack.py). In this process: the policy, as ``python -m policies.<name>``
runs it (``PolicyRunner`` driving the real ``EcovisorClient`` over HTTP for commands and
app metrics, and over the SSE notification stream; not a separate process: lock-step
must know when the policy is done with a tick, and one that sends nothing gives no
sign), and the collectors' and actuators' parts:

* the telemetry of each tick (``replay.tick_telemetry.TickTelemetry``, the core engine's) is
  published to ``ecovisor.telemetry`` (key = site), then a ``ClockMessage`` at the tick's
  end, so the ledger closes the tick;
* simulated containers (``replay.sim_containers.SimContainers``: the actuators' ``ActuatorState``
  fold, the core engine's) read the ledger's ``ContainerAction``s from
  ``ecovisor.actuator.containers`` and acknowledge them on ``ecovisor.actuator.acks``
  (signed with the site's internal key) as ``actuators.containers`` does, so commands
  reach ``applied``.

Lock-step, per tick k: telemetry and clock of tick k published; wait for tick k's
``tick`` notification on the SSE stream and hand it to the runner; wait until every
command it issued is ``command_accepted`` (or rejected) and, for those that act on
containers, until their ``ContainerAction`` has been read; only then tick k+1. So a
command decided on tick k changes the containers from tick k+1, as in the core engine.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import queue
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args

import numpy as np
from kafka import KafkaConsumer, TopicPartition

from ecovisor.adapters.kafka_async import started_producer
from ecovisor.cli.export_format import to_csv
from ecovisor.client import CommandResult, EcovisorClient
from ecovisor.contract import topics
from ecovisor.contract.actuation import (
    ActuatorAck,
    ContainerAction,
    ContainerActionName,
    sign,
    verify,
)
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.environment import internal_key
from ecovisor.contract.experiment import TOKEN, AppSpec, Experiment
from ecovisor.contract.notifications import Notification
from ecovisor.contract.telemetry import ClockMessage
from ecovisor.core.units import US_PER_S
from ecovisor.core.workloads import WebService
from policies.base import SUBSCRIBED_EVENTS, AppView
from replay.engine import (
    RunResult,
    add_tick,
    make_workload,
    new_series,
    policy_runner,
    reporting,
    run_result,
)
from replay.pipeline_stack import CLOCK_SOURCE, PipelineStack, pipeline_config
from replay.sim_containers import sim_for
from replay.tick_telemetry import TickTelemetry

ACTING = frozenset(get_args(ContainerActionName))  # commands the ledger sends to actuators
ACTUATOR = "containers"  # the acknowledging actuator's name (actuators.containers)
WAIT_S = 60.0  # the longest wait for one step of the lock-step before giving up


class PipelineError(RuntimeError):
    """The services did not answer in time (their logs are in the work folder)."""


@dataclass
class PipelineRun:
    """A pipeline run: the core engine's ``RunResult`` (``entries_sum`` always filled),
    the app's ledger entries in tick order (as ``ecovisor.ledger`` holds them), the
    commands as (tick index of the run whose notification caused it, -1 = the policy's
    setup; type; fields) and the wall time of the ticks (services started before);
    ``first_tick_s`` of it until the first tick's notification (the services' first
    fetches: ~0.26 s, against ~8 ms for a later tick; the ledger's group join, ~2 s, is
    before it: the stack waits for the ledger's ``GET /ready``)."""

    result: RunResult
    site: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    commands: list[tuple[int, str, dict[str, Any]]] = field(default_factory=list)
    wall_s: float = 0.0
    first_tick_s: float = 0.0


class _Client(EcovisorClient):
    """The real client, recording the commands it sends (for the lock-step's waits)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.tick = -1
        self.sent: list[CommandResult] = []
        self.log: list[tuple[int, str, dict[str, Any]]] = []

    def command(self, type: str, *, wait: bool | None = None, **fields: Any) -> CommandResult:
        res = super().command(type, wait=wait, **fields)
        self.sent.append(res)
        self.log.append((self.tick, type, fields))
        return res


def _assigned(bootstrap: str, topic: str) -> KafkaConsumer:
    """A consumer of ``topic``'s partitions from their current end (nothing later skipped)."""
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or {0})]
    c.assign(tps)
    c.seek_to_end(*tps)
    for tp in tps:
        c.position(tp)
    return c


def _end_offset(bootstrap: str, topic: str) -> int:
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tp = TopicPartition(topic, 0)
        return int(c.end_offsets([tp])[tp])
    finally:
        c.close()


class _Producer:
    """An aiokafka producer on an event loop thread of its own. ``batch`` hands a list of
    records for one partition over as batches (one for a usual tick: one produce request,
    read by the ledger in one fetch) and returns without waiting for the broker: the
    caller checks the returned future later (``done``), off the lock-step's path. kafka-python's
    send-and-flush of a tick's four records took 2.3-2.8 ms alone, most of it its sender
    thread; aiokafka's batch and its ack 0.8 ms, of which the engine now waits none."""

    def __init__(self, bootstrap: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True,
                                       name="pipeline-producer")  # fmt: skip
        self.thread.start()
        self.prod: Any = None
        try:
            self.prod = self._run(started_producer(bootstrap, acks=1, linger_ms=0))
        except BaseException:
            self._stop_loop()
            raise

    def _run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(WAIT_S)

    def batch(self, topic: str, key: bytes, values: list[bytes]
              ) -> concurrent.futures.Future[Any]:  # fmt: skip
        """``values`` (key ``key``) to ``topic``'s partition of that key, in order, in as
        few batches as the producer's batch size allows (one for a usual tick: the
        ledger reads it in one fetch); the future resolves once the broker has
        acknowledged every batch."""

        async def send() -> Any:
            parts = await self.prod.partitions_for(topic)
            part = topics.site_partition(key.decode(), len(parts))
            acks = []
            b = self.prod.create_batch()
            for v in values:
                if b.append(key=key, value=v, timestamp=None) is None:
                    # full (aiokafka's batch size): send it, the rest in the next one
                    # (batches to one partition are sent in order, one at a time; an
                    # empty batch takes any record, a larger one alone)
                    acks.append(await self.prod.send_batch(b, topic, partition=part))
                    b = self.prod.create_batch()
                    b.append(key=key, value=v, timestamp=None)
            acks.append(await self.prod.send_batch(b, topic, partition=part))
            done = await asyncio.gather(*acks, return_exceptions=True)  # (every one read)
            for d in done:
                if isinstance(d, BaseException):
                    raise d
            return done

        return asyncio.run_coroutine_threadsafe(send(), self.loop)

    @staticmethod
    def done(fut: concurrent.futures.Future[Any], what: str) -> None:
        """Raise ``PipelineError`` if the batch ``fut`` was not acknowledged in time."""
        try:
            fut.result(WAIT_S)
        except Exception as e:  # noqa: BLE001 - named, with the cause
            raise PipelineError(f"{what} not acknowledged by the broker: {e!r}") from e

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(WAIT_S)
        if not self.thread.is_alive():
            self.loop.close()

    def close(self) -> None:
        try:
            if self.prod is not None:
                self._run(self.prod.stop())  # sends what is left first
        finally:
            self._stop_loop()


class _Io:
    """The engine's Kafka side: telemetry out, container actions in (acknowledged), the
    ledger's entries of the site in."""

    def __init__(self, cfg: EcovisorConfig, bootstrap: str, app: str) -> None:
        self.site, self.app = cfg.site.id, app
        self.key = internal_key(cfg)
        self.prod = _Producer(bootstrap)
        opened: list[KafkaConsumer] = []
        try:
            opened.append(_assigned(bootstrap, topics.ACTUATOR_CONTAINERS))
            opened.append(_assigned(bootstrap, topics.LEDGER))
        except BaseException:
            for c in opened:
                c.close()
            self.prod.close()
            raise
        self.actions, self.ledger = opened
        self.got: dict[str, ContainerAction] = {}  # command id -> its action
        self.entries: dict[int, dict[str, Any]] = {}  # tick -> entry
        self.sent: list[tuple[concurrent.futures.Future[Any], str]] = []  # not yet checked

    def publish(self, msgs: list[tuple[Any, int]], start_us: int, end_us: int) -> None:
        """A tick's telemetry (message, event time µs) and clock messages: one at the
        tick's end, which closes it, and one before the first sample stamped after the
        tick's start. The ledger refuses telemetry more than ``clock_skew_s`` ahead of its
        event clock (live, samples arrive all through the tick); the clock bridges it,
        whatever the tick's length. As batches (one usually: the ledger reads it in one
        fetch), not waited for: ``check_sent`` after the tick's notification."""
        values: list[bytes] = []
        clock_us = start_us
        for m, t_us in msgs:
            if t_us > clock_us:
                values.append(self._clock(t_us))
                clock_us = t_us
            values.append(m.to_json())
        values.append(self._clock(end_us))
        fut = self.prod.batch(topics.TELEMETRY, self.site.encode(), values)
        self.sent.append((fut, f"the telemetry of the tick ending {end_us} µs"))

    def check_sent(self) -> None:
        """Every batch sent so far acknowledged by the broker (else ``PipelineError``)."""
        sent, self.sent = self.sent, []
        for fut, what in sent:
            self.prod.done(fut, what)

    def check_failed(self) -> None:
        """``PipelineError`` now if a send has already failed (while waiting for a tick
        that cannot come: its telemetry never reached the ledger)."""
        for fut, what in self.sent:
            if fut.done():
                self.prod.done(fut, what)

    def _clock(self, t_us: int) -> bytes:
        t = datetime.fromtimestamp(t_us / US_PER_S, UTC)
        return ClockMessage(site=self.site, time=t, source=CLOCK_SOURCE).model_dump_json().encode()

    def action(self, command_id: str, when: datetime, deadline: float) -> ContainerAction:
        """The container action of one accepted command, acknowledged as applied."""
        while command_id not in self.got:
            self.check_failed()
            if time.monotonic() > deadline:
                raise PipelineError(f"no container action for command {command_id}")
            for batch in self.actions.poll(timeout_ms=50).values():
                for r in batch:
                    a = ContainerAction.model_validate_json(r.value)
                    if a.site == self.site and (self.key is None or verify(a, self.key)):
                        self.got[a.command_id] = a
        a = self.got.pop(command_id)
        ack = ActuatorAck(site=self.site, time=when, command_id=a.command_id, app=a.app,
                          actuator=ACTUATOR, ok=True,
                          applied={"action": a.action, "container": a.container})  # fmt: skip
        ack = sign(ack, self.key) if self.key else ack
        fut = self.prod.batch(topics.ACTUATOR_ACKS, self.site.encode(), [ack.to_json()])
        self.sent.append((fut, f"the ack of command {command_id}"))
        return a

    def collect_entries(self, ticks: set[int], deadline: float) -> list[dict[str, Any]]:
        import json

        prefix = f"{self.site}:{self.app}:".encode()
        while not ticks <= set(self.entries):
            if time.monotonic() > deadline:
                missing = sorted(ticks - set(self.entries))[:5]
                raise PipelineError(f"ledger entries of ticks {missing}... never arrived")
            for batch in self.ledger.poll(timeout_ms=100).values():
                for r in batch:
                    if r.key and r.key.startswith(prefix):
                        e = json.loads(r.value)
                        self.entries[int(r.key[len(prefix) :])] = e  # a re-emitted tick: same
        return [self.entries[k] for k in sorted(ticks)]

    def close(self) -> None:
        try:
            self.prod.close()
        finally:
            self.actions.close()
            self.ledger.close()


def _stream(client: EcovisorClient, q: queue.Queue[Any]) -> None:
    """The SSE notification stream into ``q`` (an exception ends it, put last)."""
    try:
        for n in client.notifications():
            q.put(n)
    except Exception as e:  # noqa: BLE001 - handed to the engine's thread
        q.put(e)


def run_pipeline(
    exp: Experiment,
    app: AppSpec,
    label: str,
    run: int,
    carbon: np.ndarray,
    solar_w: np.ndarray,
    t0_us: int,
    arrival_i: int,
    bootstrap: str | None = None,
    workdir: Path | None = None,
    ledger_csv: Path | None = None,
    progress: Callable[[int], None] | None = None,
    load_rps: np.ndarray | None = None,
) -> PipelineRun:
    """One run, as ``replay.engine.run_one`` (same arguments), on the real services:
    its own broker unless ``bootstrap`` is given (then on a fresh site id); the services'
    logs in ``workdir`` (a temporary folder, removed after, when not given)."""
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="ecovisor-pipeline-") as tmp:
            return run_pipeline(exp, app, label, run, carbon, solar_w, t0_us, arrival_i,
                                bootstrap, Path(tmp), ledger_csv, progress, load_rps)  # fmt: skip
    with PipelineStack(workdir, bootstrap) as stack:
        boot = stack.start_broker()
        cfg, path = pipeline_config(exp, app, boot, workdir, unique=not stack.own_broker)
        url = stack.start_services(cfg, path)
        return _lockstep(stack, cfg, url, exp, app, label, run, carbon, solar_w, t0_us,
                         arrival_i, ledger_csv, progress, load_rps)  # fmt: skip


def _lockstep(
    stack: PipelineStack,
    cfg: EcovisorConfig,
    url: str,
    exp: Experiment,
    app: AppSpec,
    label: str,
    run: int,
    carbon: np.ndarray,
    solar_w: np.ndarray,
    t0_us: int,
    arrival_i: int,
    ledger_csv: Path | None,
    progress: Callable[[int], None] | None,
    load_rps: np.ndarray | None,
) -> PipelineRun:
    site, dt = cfg.site.id, cfg.site.shape.tick_s
    dt_us = round(dt * US_PER_S)
    io = _Io(cfg, stack.bootstrap, app.id)
    try:
        # the stream resumes after the topic's current end: nothing the ledger sends
        # from now on is missed, however late the SSE connection is made
        start = _end_offset(stack.bootstrap, topics.notifications(app.id))
        client = _Client(url, TOKEN, app=app.id)
        try:
            stream = EcovisorClient(url, TOKEN, app=app.id, last_event_id=f"0:{start - 1}")
        except BaseException:
            client.close()
            raise
    except BaseException:
        io.close()  # its producer and consumers: not left open by a failed start
        raise
    notes: queue.Queue[Any] = queue.Queue()
    pump = threading.Thread(target=_stream, args=(stream, notes), daemon=True)
    try:
        workload = make_workload(app, load_rps, seed=exp.arrivals.seed + run)
        web = workload if isinstance(workload, WebService) else None
        reports = reporting(workload)
        sim = sim_for(app)
        view = AppView.from_info(client.get_app_info())  # GET /v1/apps/{app}
        runner = policy_runner(exp, app, label, client, view, workload, carbon, arrival_i)
        pump.start()
        tel = TickTelemetry(cfg, app.id, exp.site.solar_nameplate_w > 0, carbon,
                            exp.traces.carbon.forecast_h)  # fmt: skip
        outcome: dict[str, Notification] = {}  # command id -> accepted / rejected

        def take(n: Notification, want_tick: int | None) -> bool:
            """Hand one notification to the runner; True when it is tick ``want_tick``."""
            if n.site != site:
                return False
            if n.type in ("command_accepted", "command_rejected") and n.command_id:
                outcome[n.command_id] = n
            if n.type == "tick":
                if n.tick != want_tick:
                    raise PipelineError(f"tick {n.tick} notified while waiting for {want_tick}")
                return True
            if n.type in SUBSCRIBED_EVENTS:
                runner.on_notification(n)
            return False

        def next_note(deadline: float) -> Notification:
            while True:
                try:
                    n = notes.get(timeout=0.5)
                except queue.Empty:
                    stack.check()
                    io.check_failed()
                    if time.monotonic() > deadline:
                        raise PipelineError("no notification from the API in time") from None
                    continue
                if isinstance(n, BaseException):
                    raise PipelineError(f"notification stream ended: {n}") from n
                return n

        def settle(first: int, when_us: int) -> None:
            """Wait for the outcome of the commands sent since ``first``; the accepted
            ones that act on containers reach the simulated containers."""
            deadline = time.monotonic() + WAIT_S
            when = datetime.fromtimestamp(when_us / US_PER_S, UTC)
            for res in client.sent[first:]:
                while res.command_id not in outcome:
                    take(next_note(deadline), None)
                n = outcome.pop(res.command_id)
                if n.type == "command_accepted" and res.type in ACTING:
                    sim.pending.append(io.action(res.command_id, when, deadline))

        client.tick = -1
        runner.start()
        settle(0, t0_us)
        wall0 = time.perf_counter()
        ser, rows, i, cum = new_series(), [], 0, (0, 0)
        first_tick_s = 0.0
        for i in range(len(carbon)):
            start_us = t0_us + i * dt_us
            end_us = start_us + dt_us
            sim.apply_pending()
            alloc = sim.cores()
            finished = False
            if i >= arrival_i and not workload.done:
                busy = workload.step(alloc, dt)
                finished = workload.done
            else:
                busy = dict.fromkeys(alloc, 0.0)
            metrics = reports.metrics() if reports is not None and i >= arrival_i else None
            msgs = tel.tick(i, start_us, dt_us, float(carbon[i]), float(solar_w[i]), busy,
                            metrics, i - arrival_i)  # fmt: skip
            io.publish(msgs, start_us, end_us)
            k = start_us // dt_us
            deadline = time.monotonic() + WAIT_S
            while not take(n := next_note(deadline), k):
                pass
            io.check_sent()  # (acknowledged long before its tick's notification)
            if i == 0:
                first_tick_s = time.perf_counter() - wall0
            p95 = web.last_p95_s if web is not None and i >= arrival_i else None
            prog = workload.progress if i >= arrival_i else 0.0
            rows.append((n.data, end_us, alloc, prog, p95))
            client.tick, first = i, len(client.sent)
            runner.on_tick(n)
            settle(first, end_us)
            if progress is not None:
                progress(1)
            if finished:
                break
        wall = time.perf_counter() - wall0
        ticks = i + 1
        k0 = t0_us // dt_us
        io.check_sent()  # the last acks
        entries = io.collect_entries(set(range(k0, k0 + ticks)), time.monotonic() + WAIT_S)
    finally:
        stream.close()
        client.close()
        io.close()
    # the series and totals from the ledger's entries (exact integers, summed)
    energy = carbon_ug = 0
    for e, (d, end_us, alloc, prog, p95) in zip(entries, rows, strict=True):
        energy += e["demand_mj"]
        carbon_ug += e["total"]["carbon_ug"]
        cum = (energy, carbon_ug)
        add_tick(ser, d, end_us, alloc, prog, cum, p95)
    if ledger_csv is not None:
        ledger_csv.parent.mkdir(parents=True, exist_ok=True)
        ledger_csv.write_text(to_csv(entries))
    arrival = datetime.fromtimestamp((t0_us + arrival_i * dt_us) / US_PER_S, UTC)
    sums = {"energy_mj": float(energy), "carbon_ug": float(carbon_ug)}
    res = run_result(app, label, run, arrival, workload, cum, ticks, len(client.sent), ser, sums)
    return PipelineRun(res, site, entries, client.log, wall, first_tick_s)
