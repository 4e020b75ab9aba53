"""The Faust wiring of the ledger worker for one site: where the pure worker
(streams/ledger_worker.py) meets Kafka.

* ``ecovisor.telemetry``: read in batches by an aiokafka consumer on assigned partitions
  (``ecovisor.adapters.kafka_async``) inside the Faust app, not by a Faust agent: Faust's
  per-event path costs ~65 µs a message here (an empty agent ran ~15,000 events/s). Its
  position is the offset stored in the site snapshot (seeked to offset + 1 on start),
  not a group commit, so a restart replays exactly the messages after the snapshot.
* ``ecovisor.commands`` and ``ecovisor.actuator.acks``: Faust agents.
* State: the Faust tables ``snapshots`` (key site: ``SiteLedger.snapshot()``) and
  ``counters`` (key ``app:k``: per-tick cumulative counters for the views), both with
  changelogs. Outputs are made durable before each snapshot; a snapshot is written at
  most every ``PERSIST_INTERVAL_S`` while ticks close, and after every command.
* The state views (streams/ledger_views.py) on the Faust web server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from ecovisor.adapters import kafka_async
from ecovisor.adapters.kafka import create_topics, faust_credentials
from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig, internal_key
from ecovisor.contract.kafka_access import ledger_app_id
from ecovisor.contract.schemas import (
    TELEMETRY_ADAPTER,
    BadEntry,
    ClockMessage,
    dead_letter,
    describe_validation_error,
    parse_telemetry_entries,
)
from ecovisor.core.tick_clock import to_us
from streams.ledger_metrics import LedgerHealth, add_metrics_page, ledger_registry
from streams.ledger_views import add_pages
from streams.ledger_worker import CounterRow, Out, SiteLedger

log = logging.getLogger("ecovisor.ledger")

ClockMode = Literal["realtime", "event"]
# A replay after a crash recomputes identical ticks, so fewer snapshots cost only replay
# time (a 300 kB snapshot per tick would cap catch-up speed) and re-sent identical
# outputs. Every snapshot stays in the embedded broker's memory (tansu keeps every
# record): one every 5 s instead of every tick was most of its growth (L1,
# docs/reliability.md).
PERSIST_INTERVAL_S = 5.0
MAX_IN_FLIGHT = 10_000  # unconfirmed sends before the worker waits for the broker
SNAPSHOT_MAX_BYTES = 32 * 1024 * 1024  # uncompressed record size the producer accepts


def faust_app_id(cfg: EcovisorConfig) -> str:
    """Its consumer group and its topics' prefix, which the Kafka ACLs name
    (``ecovisor.contract.kafka_access``)."""
    return ledger_app_id(cfg.site.id)


def internal_topics(app_id: str) -> list[str]:
    """Faust's own topics (tansu does not auto-create): table changelogs."""
    return [f"{app_id}-snapshots-changelog", f"{app_id}-counters-changelog"]


def prepare_topics(cfg: EcovisorConfig, bootstrap: str) -> None:
    """Create every topic the worker reads or writes (tansu does not auto-create)."""
    create_topics(
        bootstrap,
        topics.all_topics([a.id for a in cfg.apps]) + internal_topics(faust_app_id(cfg)),
    )


class LedgerService:
    """The I/O around one site's ``SiteLedger``: sending its outputs, persisting it,
    feeding it telemetry batches. Lives inside the Faust app ``build_app`` makes."""

    def __init__(
        self, cfg: EcovisorConfig, app: Any, snapshots: Any, counters: Any, clock: ClockMode
    ) -> None:
        self.cfg = cfg
        self.site = cfg.site.id
        self.app = app
        self.snapshots = snapshots  # Faust table: site -> SiteLedger.snapshot()
        self.counters = counters  # Faust table: "app:k" -> counter row (JSON)
        self.clock_mode = clock
        self.ledger: SiteLedger | None = None
        self.failure: BaseException | None = None  # what stopped the worker, if anything
        self.rows: list[CounterRow] = []  # counter rows not yet persisted
        self.last_persist = 0.0
        self.in_flight: list[Any] = []  # send futures not yet confirmed
        # set once the telemetry consumer has read to the end of its partitions after
        # the start: event mode takes commands only then (``command``)
        self.caught_up = asyncio.Event()
        self.health: LedgerHealth | None = None  # /metrics (streams/ledger_metrics.py)
        # held by a state change (a tick close, a command, an ack) until its outputs are
        # handed to the producer, and by a snapshot: a snapshot must never count a change
        # whose outputs another task is still sending (a crash then would lose them)
        self.lock = asyncio.Lock()

    def loaded(self) -> SiteLedger:
        """The site's ledger: restored from the tables once recovered, else new."""
        if self.ledger is None:
            raw = self.snapshots.get(self.site.encode())
            led = SiteLedger.restore(self.cfg, raw) if raw else SiteLedger.new(self.cfg)
            rows: dict[str, dict[int, dict[str, Any]]] = {}
            for key, val in self.counters.items():
                a, _, k = key.decode().rpartition(":")
                rows.setdefault(a, {})[int(k)] = json.loads(val)
            led.restore_counters(rows)
            self.ledger = led
            log.info("ledger for site %s loaded (restored=%s)", self.site, bool(raw))
        return self.ledger

    async def send(self, outs: list[Out], wait: bool = False) -> None:
        """Send ``outs``; ``wait``: until everything sent so far is confirmed."""
        producer = self.app.producer
        if self.health is not None:
            self.health.outputs(outs)
        for o in outs:
            self.in_flight.append(await producer.send(o.topic, o.key, o.value, None, None, None))
        if wait or len(self.in_flight) > MAX_IN_FLIGHT:
            futs, self.in_flight = self.in_flight, []
            await asyncio.gather(*futs)

    async def persist(self, led: SiteLedger) -> None:
        """Counter rows and the snapshot; outputs first: they must be durable before the
        snapshot that makes a restart skip them. Call with ``self.lock`` held."""
        await self.send([], wait=True)
        counters = self.counters
        for a, k, row in self.rows:
            counters[f"{a}:{k}".encode()] = json.dumps(row, separators=(",", ":")).encode()
            old = f"{a}:{k - led.history_ticks}".encode()
            if old in counters:
                del counters[old]
        self.rows = []
        self.snapshots[self.site.encode()] = led.snapshot()

    async def close_ticks(self, led: SiteLedger, now_us: int) -> None:
        """Close the ticks due at ``now_us``; snapshot at most every PERSIST_INTERVAL_S."""
        async with self.lock:
            outs, rows = led.close(now_us)
            if rows and self.health is not None:
                self.health.closed(rows, time.time(), led.clock.tick_us / 1e6,
                                   self.clock_mode == "realtime")  # fmt: skip
            if rows or outs:
                self.rows.extend(rows)
                await self.send(outs)  # outputs first: a crash re-sends identical ones
                mono = time.monotonic()
                if mono - self.last_persist >= PERSIST_INTERVAL_S:
                    self.last_persist = mono
                    await self.persist(led)

    async def dead_letter(self, why: str, raw: bytes) -> None:
        dl = dead_letter(topics.TELEMETRY, why, raw)
        await self.send([Out(topics.DEADLETTER, None, dl.model_dump_json().encode())])

    async def telemetry(self, led: SiteLedger, partition: int, records: list[Any]) -> None:
        """One fetched batch of telemetry: aggregate in memory, close due ticks. The hot
        path: per message only parsing and ``SiteLedger.ingest`` (bounds, ownership, the
        clock's offer); whatever it refuses is dead-lettered with the reason."""
        site = self.site
        parse = TELEMETRY_ADAPTER.validate_json
        ingest = led.ingest
        event_mode = self.clock_mode == "event"
        offsets = led.offsets
        wall_us = to_us(time.time())
        for r in records:
            raw = r.value if r.value is not None else b""  # a tombstone: dead-lettered
            offsets[partition] = r.offset
            bad: list[BadEntry] = []
            try:
                t = parse(raw)
            except ValidationError as e:
                salvaged = _salvage_batch(raw)
                if salvaged is None:
                    await self.clock_or_dead_letter(led, raw, e)
                    continue
                t, bad = salvaged
            if t.site != site:
                continue
            t_us = to_us(t.time.timestamp())  # once per sample (or batch)
            now = led.event_now() if event_mode else wall_us
            try:
                if t.kind == "node_batch":
                    await self.batch_dead_letters(t, bad, led.ingest_batch(t, t_us, now))
                    why = None
                else:
                    why = ingest(t, t_us, now)
            except Exception as e:  # a bug met by one message: not a stop for every tenant
                log.exception("telemetry at offset %s failed", r.offset)
                why = f"internal error on this message: {e!r}"
            if why is not None:
                await self.dead_letter(why, raw)
            if event_mode:
                await self.close_due(led)

    async def batch_dead_letters(
        self, b: Any, bad: list[BadEntry], reports: list[tuple[int, str]]
    ) -> None:
        """One dead letter per entry of a node batch not taken (invalid: ``bad``; refused
        or reset by the ledger: ``reports``), or one for the whole batch (index -1)."""
        outs = []
        head = f"node_batch {b.source!r} seq {b.seq}"
        for i, why, entry in bad:
            dl = dead_letter(topics.TELEMETRY, f"{head} entry {i}: {why}",
                             json.dumps(entry, separators=(",", ":")))  # fmt: skip
            outs.append(Out(topics.DEADLETTER, None, dl.model_dump_json().encode()))
        for i, why in reports:
            if i < 0:
                dl = dead_letter(topics.TELEMETRY, f"{head}: {why}", b.model_dump_json())
            else:  # i indexes the parsed batch (without invalid entries): name the container
                e = b.containers[i]
                dl = dead_letter(topics.TELEMETRY, f"{head} container {e.container!r}: {why}",
                                 e.model_dump_json())  # fmt: skip
            outs.append(Out(topics.DEADLETTER, None, dl.model_dump_json().encode()))
        if outs:
            await self.send(outs)

    async def clock_or_dead_letter(self, led: SiteLedger, raw: bytes, e: ValidationError) -> None:
        """A payload that is not telemetry: this site's clock message (accepted only as
        ``SiteLedger.clock_message`` says), another site's (ignored), or a dead letter."""
        cm = None
        if b'"clock"' in raw:
            with contextlib.suppress(ValidationError):
                cm = ClockMessage.model_validate_json(raw)
        if cm is None:
            await self.dead_letter(describe_validation_error(e), raw)
        elif cm.site == self.site:
            why = led.clock_message(cm, self.clock_mode == "event")
            if why is not None:
                await self.dead_letter(why, raw)
            else:
                await self.close_due(led)

    async def close_due(self, led: SiteLedger) -> None:
        """Event mode: close the ticks the site's event clock has passed."""
        now = led.event_now()
        nc = led.clock.next_close
        if now is not None and nc is not None and led.clock.closable_until(now) > nc:
            await self.close_ticks(led, now)

    async def on_timer(self, wall_us: int) -> None:
        """Real-time mode: close the ticks the wall clock has passed. Only the wall clock:
        a sample ahead of it (within ``clock_skew_s``) waits in its tick, it does not
        close the ticks before it early."""
        led = self.ledger or self.loaded()
        await self.close_ticks(led, wall_us)

    async def close_on_deadlines(self) -> None:
        """Real-time mode: sleep until the oldest open tick's deadline (its end + grace),
        then close what is due, forever. Event-driven rather than polled, so a tick
        closes at its deadline, not up to a polling period later (docs/ledger.md)."""
        idle_s = max(0.05, self.cfg.site.shape.tick_s / 10)  # no tick open yet: look again
        while True:
            led = self.ledger or self.loaded()
            due = led.clock.next_deadline_us()
            now = to_us(time.time())
            if due is None or due > now:
                await asyncio.sleep(idle_s if due is None else (due - now) / 1e6)
                continue
            await self.on_timer(now)
            if led.clock.next_deadline_us() == due:  # nothing closed: never spin
                await asyncio.sleep(idle_s)

    async def consume_telemetry(self, bootstrap: str) -> None:
        """Read ``ecovisor.telemetry`` from the snapshot's position, forever."""
        led = self.ledger or self.loaded()
        consumer, tps = await kafka_async.assigned_consumer(
            bootstrap,
            [topics.TELEMETRY],
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            request_timeout_ms=30_000,
        )
        try:
            for tp in tps:
                off = led.offsets.get(tp.partition)
                if off is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, off + 1)  # the snapshot covers everything up to off
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
                for tp, records in batch.items():
                    await self.telemetry(led, tp.partition, records)
                if not self.caught_up.is_set() and await _at_end(consumer, tps):
                    self.caught_up.set()
        finally:
            await consumer.stop()

    async def command(self, raw: bytes) -> None:
        """One command from ``ecovisor.commands``: decided, its outputs sent, the snapshot
        written. In event mode only once the telemetry already in Kafka has been read
        (``caught_up``): a command is anchored to the driving time (capped at its own
        tick), and a worker that has just started would take it from its snapshot (older
        after a crash) or from nothing (a fresh start), so the setting applied to ticks
        the uninterrupted worker had already closed without it (found by
        reliability/chaos.py; docs/ledger.md, Guarantees)."""
        if self.clock_mode == "event":
            await self.caught_up.wait()
        led = self.ledger or self.loaded()
        async with self.lock:
            outs = self.one_message(topics.COMMANDS, raw, led.command, raw, self.driving_now(led))
            await self.send(outs)
            await self.persist(led)

    async def ack(self, raw: bytes) -> None:
        """One actuator acknowledgement: decided and its outputs sent (snapshotted with
        the next tick or command)."""
        led = self.ledger or self.loaded()
        async with self.lock:
            await self.send(self.one_message(topics.ACTUATOR_ACKS, raw, led.ack, raw))

    def driving_now(self, led: SiteLedger) -> int:
        """The driving time for a command: the site's clock (the wall clock in real-time
        mode, ``event_now()`` in event mode)."""
        if self.clock_mode == "realtime":
            return to_us(datetime.now(UTC).timestamp())
        return led.event_now() or 0

    def one_message(self, origin: str, raw: bytes | None, step: Any, *args: Any) -> list[Out]:
        """``step(*args)`` for one command or ack; an error it raises (a bug met by this
        message) dead-letters the message with the error instead of stopping the worker
        for every tenant. Sending and persisting stay outside: their failure is fatal."""
        try:
            outs: list[Out] = step(*args)
            return outs
        except Exception as e:
            log.exception("%s message failed", origin)
            dl = dead_letter(origin, f"internal error on this message: {e!r}", raw)
            return [Out(topics.DEADLETTER, None, dl.model_dump_json().encode())]

    async def guarded(self, what: str, body: Any) -> None:
        """Run a task of the worker; an error it does not handle is recorded (the process
        then exits non-zero, streams/ledger.py) and stops the worker: a supervisor sees
        the crash instead of a clean exit it would restart forever."""
        try:
            await body
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.exception("ledger %s failed; stopping the worker", what)
            self.failure = self.failure or e
            await self.app.crash(e)


def _salvage_batch(raw: bytes) -> tuple[Any, list[BadEntry]] | None:
    """A node batch with invalid entries: the batch without them (None: not that)."""
    if b'"node_batch"' not in raw:
        return None
    try:
        return parse_telemetry_entries(raw)
    except (ValidationError, ValueError):
        return None


async def _at_end(consumer: Any, tps: list[Any]) -> bool:
    """Whether the consumer's position is at the high watermark of its last fetch on
    every partition (None: not fetched yet)."""
    for tp in tps:
        hw = consumer.highwater(tp)
        if hw is None or await consumer.position(tp) < hw:
            return False
    return True


def build_app(
    cfg: EcovisorConfig, *, bootstrap: str, clock: ClockMode = "realtime", timeouts: float = 3.0
) -> Any:
    """The Faust app of the ledger worker for one site (``timeouts``: broker session and
    rebalance timeouts in s)."""
    import faust

    app_id = faust_app_id(cfg)
    datadir = f"{cfg.stack.state_dir}/faust-{app_id}"
    Path(datadir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        broker_credentials=faust_credentials(),  # None: PLAINTEXT (ECOVISOR_KAFKA_*)
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=1,
        topic_allow_declare=False,
        topic_disable_leader=True,
        stream_wait_empty=False,
        broker_commit_interval=0.5,
        broker_rebalance_timeout=timeouts,
        broker_session_timeout=timeouts,
        broker_heartbeat_interval=max(0.3, timeouts / 6),
        broker_request_timeout=max(10.0, timeouts * 3),
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        web_host="127.0.0.1",
        web_bind="127.0.0.1",
        web_port=cfg.stack.ledger_web_port,
        datadir=datadir,
        stream_buffer_maxsize=8192,
        producer_linger_ms=2,
        # JSON entries, notifications and snapshots compress 5-7x; a broker keeps them
        # compressed (the embedded one in memory: L1, docs/reliability.md)
        producer_compression_type="gzip",
        # the producer checks a record's size before compression: the snapshot of a
        # site of 10,000 containers is ~3.3 MB as JSON, ~150 kB gzipped on the broker
        producer_max_request_size=SNAPSHOT_MAX_BYTES,
    )
    commands = app.topic(topics.COMMANDS, value_type=bytes, key_type=bytes)
    acks = app.topic(topics.ACTUATOR_ACKS, value_type=bytes, key_type=bytes)

    def table(name: str) -> Any:
        return app.Table(name, partitions=1, use_partitioner=True, key_type=bytes,
                         value_type=bytes)  # fmt: skip

    svc = LedgerService(cfg, app, table("snapshots"), table("counters"), clock)

    @app.task
    async def telemetry_loop() -> None:
        await app.tables.recovery.completed.wait()
        await svc.guarded("telemetry", svc.consume_telemetry(bootstrap))

    if clock == "realtime":

        @app.task
        async def tick_closer() -> None:
            await app.tables.recovery.completed.wait()
            await svc.guarded("tick closer", svc.close_on_deadlines())

    async def commands_loop(stream: Any) -> None:
        async for raw in stream:
            await svc.command(raw)

    async def acks_loop(stream: Any) -> None:
        async for raw in stream:
            await svc.ack(raw)

    @app.agent(commands)
    async def on_command(stream: Any) -> None:
        await svc.guarded("commands", commands_loop(stream))

    @app.agent(acks)
    async def on_ack(stream: Any) -> None:
        await svc.guarded("acks", acks_loop(stream))

    key = internal_key(cfg)
    if key is None:  # the site file and environment hold no key: behave as before keys
        log.warning(
            "no internal key ($%s): internal topics are not authenticated and the ledger "
            "views are open to any local process",
            cfg.site.internal_key_env,
        )
    add_pages(app, lambda: svc.ledger, key)
    registry, svc.health = ledger_registry(lambda: svc.ledger, cfg.site.id, cfg.site.grace_s)
    add_metrics_page(app, registry, key)  # GET /metrics (docs/metrics.md)
    app.ledger_service = svc  # streams/ledger.py reads .failure for its exit code
    return app
