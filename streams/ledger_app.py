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
from ecovisor.adapters.kafka import create_topics
from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.schemas import (
    TELEMETRY_ADAPTER,
    ClockMessage,
    dead_letter,
    describe_validation_error,
)
from ecovisor.core.tick_clock import to_us
from streams.ledger_views import add_pages
from streams.ledger_worker import HISTORY_TICKS, CounterRow, Out, SiteLedger

log = logging.getLogger("ecovisor.ledger")

ClockMode = Literal["realtime", "event"]
# A replay after a crash recomputes identical ticks, so fewer snapshots cost only replay
# time (a 300 kB snapshot per tick would cap catch-up speed).
PERSIST_INTERVAL_S = 0.5
MAX_IN_FLIGHT = 10_000  # unconfirmed sends before the worker waits for the broker


def faust_app_id(cfg: EcovisorConfig) -> str:
    return f"ecovisor-ledger-{cfg.site.id}"


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
        self.driving_us = 0  # the time that closes ticks (docs/ledger.md#ticks)
        self.rows: list[CounterRow] = []  # counter rows not yet persisted
        self.last_persist = 0.0
        self.in_flight: list[Any] = []  # send futures not yet confirmed

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
        for o in outs:
            self.in_flight.append(await producer.send(o.topic, o.key, o.value, None, None, None))
        if wait or len(self.in_flight) > MAX_IN_FLIGHT:
            futs, self.in_flight = self.in_flight, []
            await asyncio.gather(*futs)

    async def persist(self, led: SiteLedger) -> None:
        """Counter rows and the snapshot; outputs first: they must be durable before the
        snapshot that makes a restart skip them."""
        await self.send([], wait=True)
        counters = self.counters
        for a, k, row in self.rows:
            counters[f"{a}:{k}".encode()] = json.dumps(row, separators=(",", ":")).encode()
            old = f"{a}:{k - HISTORY_TICKS}".encode()
            if old in counters:
                del counters[old]
        self.rows = []
        self.snapshots[self.site.encode()] = led.snapshot()

    async def close_ticks(self, led: SiteLedger, now_us: int) -> None:
        """Close the ticks due at ``now_us``; snapshot at most every PERSIST_INTERVAL_S."""
        outs, rows = led.close(now_us)
        if rows or outs:
            await self.send(outs)  # outputs first: a crash re-sends identical ones
            self.rows.extend(rows)
            mono = time.monotonic()
            if mono - self.last_persist >= PERSIST_INTERVAL_S:
                self.last_persist = mono
                await self.persist(led)

    async def dead_letter(self, why: str, raw: bytes) -> None:
        dl = dead_letter(topics.TELEMETRY, why, raw)
        await self.send([Out(topics.DEADLETTER, None, dl.model_dump_json().encode())])

    async def telemetry(self, led: SiteLedger, partition: int, records: list[Any]) -> None:
        """One fetched batch of telemetry: aggregate in memory, close due ticks. The hot
        path: per message only parsing, the refusal check and the clock's offer."""
        site = self.site
        parse = TELEMETRY_ADAPTER.validate_json
        offer = led.clock.offer
        event_mode = self.clock_mode == "event"
        offsets = led.offsets
        wall_us = to_us(time.time())
        for r in records:
            raw = r.value if r.value is not None else b""  # a tombstone: dead-lettered
            offsets[partition] = r.offset
            try:
                t = parse(raw)
            except ValidationError as e:
                cm = None
                if b'"clock"' in raw:
                    with contextlib.suppress(ValidationError):
                        cm = ClockMessage.model_validate_json(raw)
                why = describe_validation_error(e)
                if cm is not None and cm.site == site:
                    refused = led.refuse_reason(cm, None)
                    cm, why = (None, refused) if refused else (cm, why)
                if cm is None:
                    await self.dead_letter(why, raw)
                elif cm.site == site:
                    self.driving_us = max(self.driving_us, to_us(cm.time.timestamp()))
                    await self.close_ticks(led, self.driving_us)
                continue
            if t.site != site:
                continue
            t_us = to_us(t.time.timestamp())  # once per sample: refuse_reason and offer
            why = led.refuse_reason(t, None if event_mode else wall_us, t_us)
            if why is not None:
                await self.dead_letter(why, raw)
                continue
            offer(t, t_us)
            if event_mode:
                wm = led.clock.watermark_us or 0
                if wm > self.driving_us:
                    self.driving_us = wm
                if led.clock.next_close is not None and (
                    led.clock.closable_until(self.driving_us) > led.clock.next_close
                ):
                    await self.close_ticks(led, self.driving_us)

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
        finally:
            await consumer.stop()

    def driving_now(self, led: SiteLedger) -> int:
        """The driving time for a command: the clock's, never behind the wall clock in
        real-time mode."""
        now = max(self.driving_us, led.clock.watermark_us or 0)
        if self.clock_mode == "realtime":
            now = max(now, to_us(datetime.now(UTC).timestamp()))
        return now


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
        await svc.consume_telemetry(bootstrap)

    if clock == "realtime":

        @app.timer(interval=max(0.05, cfg.site.shape.tick_s / 10))
        async def tick_timer() -> None:
            if not app.tables.recovery.completed.is_set():
                return
            led = svc.ledger or svc.loaded()
            now = to_us(datetime.now(UTC).timestamp())
            await svc.close_ticks(led, max(now, led.clock.watermark_us or 0))

    @app.agent(commands)
    async def on_command(stream: Any) -> None:
        async for raw in stream:
            led = svc.ledger or svc.loaded()
            await svc.send(led.command(raw, svc.driving_now(led)))
            await svc.persist(led)

    @app.agent(acks)
    async def on_ack(stream: Any) -> None:
        async for raw in stream:
            led = svc.ledger or svc.loaded()
            await svc.send(led.ack(raw))

    add_pages(app, lambda: svc.ledger)
    return app
