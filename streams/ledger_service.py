"""The I/O around one site's ``SiteLedger`` (streams/ledger_worker.py): feeding it
telemetry, commands and actuator acks, sending its outputs, persisting its snapshot in
the Faust tables, closing its ticks. One per site a worker owns; the group's wiring
(streams/ledger_app.py) makes them and hands each one its messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
import time
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import ValidationError

from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.operator_messages import dead_letter, describe_validation_error
from ecovisor.contract.telemetry import (
    TELEMETRY_ADAPTER,
    BadEntry,
    ClockMessage,
    parse_telemetry_entries,
)
from ecovisor.core.tick_clock import to_us
from streams.counters_table import CountersTable, KeyIndex
from streams.gc_schedule import FULL_COLLECTIONS
from streams.ledger_metrics import LedgerHealth
from streams.ledger_out import Out
from streams.ledger_worker import SiteLedger

log = logging.getLogger("ecovisor.ledger")

ClockMode = Literal["realtime", "event"]
# A replay after a crash recomputes identical ticks, so fewer snapshots cost only replay
# time (a 300 kB snapshot per tick would cap catch-up speed) and re-sent identical
# outputs. Every snapshot stays in the embedded broker's memory (tansu keeps every
# record): one every 5 s instead of every tick was most of its growth (L1,
# docs/reliability.md).
PERSIST_INTERVAL_S = 5.0
MAX_IN_FLIGHT = 10_000  # unconfirmed sends before the worker waits for the broker
# Telemetry events a site holds unacknowledged (their offsets uncommitted) before it
# writes a snapshot to release them: bounds the worker's memory when ticks close rarely.
MAX_UNACKED = 20_000
# A graceful stop's hand-over writes its sites' snapshots within this time (a
# supervisor's stop waits 10 s before SIGKILL); a revoke's, within half the group's
# rebalance timeout (``GroupService``). Past it nothing more is written: the next owner
# starts from the snapshot before, as after a crash (nothing lost).
HAND_OVER_STOP_S = 5.0


class LedgerService:
    """The I/O around one site's ``SiteLedger``: sending its outputs, persisting it,
    feeding it telemetry batches. Lives inside the Faust app ``build_app`` makes."""

    def __init__(
        self, cfg: EcovisorConfig, app: Any, snapshots: Any, counters: Any, clock: ClockMode,
        ack: Any = None, counters_index: KeyIndex | None = None,
    ) -> None:
        self.cfg = cfg
        self.site = cfg.site.id
        self.app = app
        self.snapshots = snapshots  # Faust table: site -> SiteLedger.snapshot()
        # Faust table: the apps' counters view history (streams/counters_table.py)
        # ``counters_index``: the worker's shared KeyIndex (its sites share one table)
        self.counters = CountersTable(counters, counters_index)
        self.clock_mode = clock
        self.ledger: SiteLedger | None = None
        self.failure: BaseException | None = None  # set by ``run_guarded`` if it owns a task
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
        # telemetry events whose effect no snapshot holds yet: acknowledged (``ack``, the
        # Faust stream's) once one does, so a new owner is delivered them again
        self.unacked: list[Any] = []
        self.ack_events = ack
        self.apps = {a.id for a in cfg.apps}
        # set by ``leave``: the site is leaving this worker. ``retired``: it closes no more
        # ticks (after a hand-over the next owner starts from the last tick closed here
        # and re-sends nothing). ``moved``: its partition was revoked, so a command or ack
        # still waiting here is not taken (``command`` returns False): Faust delivers it
        # again to the partition's owner after the rebalance
        self.retired = False
        self.moved = False

    def loaded(self) -> SiteLedger:
        """The site's ledger: restored from the tables once recovered, else new."""
        if self.ledger is None:
            raw = self.snapshots.get(self.site.encode())
            led = SiteLedger.restore(self.cfg, raw) if raw else SiteLedger.new(self.cfg)
            led.restore_counters(self.counters.read(self.apps))
            for why in self.counters.unreadable:
                log.warning("site %s: counters table value left out: %s", self.site, why)
            self.ledger = led
            log.info("ledger for site %s loaded (restored=%s, next tick %s, offsets %s)",
                     self.site, bool(raw), led.state.next_k, led.offsets)  # fmt: skip
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
        if self.moved:  # handed over (or left) while the sends were confirmed: its next
            return  # owner may have recovered already; a late snapshot could be restored
        events = self.write_tables(led)
        if self.ack_events is not None:
            # the snapshot durable before the offsets it covers may be committed: a commit
            # past a lost snapshot would hide events from the next owner
            await self.app.producer.flush()
            for ev in events:
                await self.ack_events(ev)

    def write_tables(self, led: SiteLedger) -> list[Any]:
        """Write the counter blocks and the snapshot (no await: one step of the loop);
        returns the telemetry events they cover, to acknowledge once flushed."""
        for a, hist in led.counters.items():
            self.counters.write(a, hist, led.table_budget(a))
        self.snapshots[self.site.encode()] = led.snapshot()
        events, self.unacked = self.unacked, []
        return events

    def leave(self, moved: bool) -> None:
        """The site leaves this worker: no tick closes here any more; ``moved`` (its
        partition revoked, not a stop): no command or ack is taken here any more either.
        A command waiting for the catch-up wakes to leave."""
        self.retired = True
        if moved:
            self.moved = True
            self.caught_up.set()

    async def hand_over(self, deadline: float) -> list[Any] | None:
        """Persist the site as it is now (call ``leave`` first): a planned move (a
        rebalance, a graceful stop) then hands the next owner the last tick closed here,
        not a snapshot up to PERSIST_INTERVAL_S older that it would recompute and re-send.
        Nothing is written once ``deadline`` (monotonic) has passed: a snapshot landing
        after the next owner has recovered could later be restored over its newer state.
        Returns the telemetry events to acknowledge once the caller has flushed; None when
        nothing was written (nothing loaded, or too late)."""
        async with self.lock:
            led = self.ledger
            if led is None:
                return None
            await self.send([], wait=True)
            if time.monotonic() >= deadline:
                return None
            events = self.write_tables(led)
            log.info("site %s handed over at next tick %s", self.site, led.state.next_k)
            return events

    async def close_ticks(self, led: SiteLedger, now_us: int) -> None:
        """Close the ticks due at ``now_us``; snapshot at most every PERSIST_INTERVAL_S."""
        async with self.lock:
            if self.retired:  # handed over: the next owner closes them
                return
            outs, rows = led.close(now_us)
            if rows and self.health is not None:
                self.health.closed(rows, time.time(), led.clock.tick_us / 1e6,
                                   self.clock_mode == "realtime")  # fmt: skip
            if rows or outs:
                await self.send(outs)  # outputs first: a crash re-sends identical ones
                led.compact_history()  # (the entries' bytes exist now: sent)
                mono = time.monotonic()
                if mono - self.last_persist >= PERSIST_INTERVAL_S:
                    self.last_persist = mono
                    await self.persist(led)
        if rows:
            FULL_COLLECTIONS.maybe_collect()  # off the next close's path (gc_schedule)

    async def dead_letter(self, why: str, raw: bytes) -> None:
        dl = dead_letter(topics.TELEMETRY, why, raw)
        await self.send([Out(topics.DEADLETTER, None, dl.model_dump_json().encode())])

    async def telemetry(
        self, led: SiteLedger, partition: int, records: list[Any], keyed: bool = False
    ) -> None:
        """One fetched batch of telemetry: aggregate in memory, close due ticks. The hot
        path: per message only parsing and ``SiteLedger.ingest`` (bounds, ownership, the
        clock's offer); whatever it refuses is dead-lettered with the reason.
        ``keyed``: the records came here by their key, this site's id. A payload of
        another site then contradicts its key, and no other owner reads it: it is
        dead-lettered. Unkeyed, it is another ledger's (ignored)."""
        site = self.site
        parse = TELEMETRY_ADAPTER.validate_json
        ingest = led.ingest
        event_mode = self.clock_mode == "event"
        offsets = led.offsets
        wall_us = to_us(time.time())
        for r in records:
            done = offsets.get(partition)
            if done is not None and r.offset <= done:
                continue  # delivered again (a restart, a rebalance): the snapshot has it
            raw = r.value if r.value is not None else b""  # a tombstone: dead-lettered
            offsets[partition] = r.offset
            bad: list[BadEntry] = []
            try:
                t = parse(raw)
            except ValidationError as e:
                salvaged = _salvage_batch(raw, e)
                if isinstance(salvaged, ValidationError):
                    await self.clock_or_dead_letter(led, raw, salvaged, keyed)
                    continue
                t, bad = salvaged
            if t.site != site:
                if keyed:
                    await self.dead_letter(_other_site(site, t.site), raw)
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
        if len(self.unacked) >= MAX_UNACKED:
            async with self.lock:
                if not self.retired:
                    await self.persist(led)

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
                e = b.entry(i)
                dl = dead_letter(topics.TELEMETRY, f"{head} container {e.container!r}: {why}",
                                 e.model_dump_json())  # fmt: skip
            outs.append(Out(topics.DEADLETTER, None, dl.model_dump_json().encode()))
        if outs:
            await self.send(outs)

    async def clock_or_dead_letter(
        self, led: SiteLedger, raw: bytes, e: ValidationError, keyed: bool = False
    ) -> None:
        """A payload that is not telemetry: this site's clock message (accepted only as
        ``SiteLedger.clock_message`` says), another site's (ignored; dead-lettered when
        ``keyed``, as telemetry), or a dead letter."""
        cm = None
        if b'"clock"' in raw:
            with contextlib.suppress(ValidationError):
                cm = ClockMessage.model_validate_json(raw)
        if cm is None:
            await self.dead_letter(describe_validation_error(e), raw)
        elif cm.site != self.site:
            if keyed:
                await self.dead_letter(_other_site(self.site, cm.site), raw)
        else:
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
        led = self.loaded()
        await self.close_ticks(led, wall_us)

    async def command(self, raw: bytes) -> bool:
        """One command from ``ecovisor.commands``: decided, its outputs sent, the snapshot
        written if it was accepted. In event mode only once the telemetry already in Kafka
        has been read (``caught_up``, set by the group): a command is anchored to the
        driving time (capped at its own tick), and a worker that has just started would take
        it from its snapshot (older after a crash) or from nothing (a fresh start), so the
        setting applied to ticks the uninterrupted worker had already closed without it
        (found by reliability/chaos.py; docs/ledger.md, Guarantees).
        Returns False, the command not taken, when the site's partition was revoked while it
        waited (``moved``)."""
        if self.clock_mode == "event":
            await self.caught_up.wait()
        led = self.loaded()
        async with self.lock:
            if self.moved:
                return False
            accepted = led.accepted_commands
            outs = self.one_message(topics.COMMANDS, raw, led.command, raw, self.driving_now(led))
            await self.send(outs)
            if led.accepted_commands != accepted:
                # a rejected or junk command changes nothing the snapshot must hold (its
                # rejection, sent, is at-least-once like every output): persisting after
                # each (~8 ms at 10 apps x 100 containers) let a flood of junk stall
                # every site of the worker
                await self.persist(led)
        return True

    async def ack(self, raw: bytes) -> bool:
        """One actuator acknowledgement: decided and its outputs sent (snapshotted with
        the next tick or command). False as for ``command``."""
        led = self.loaded()
        async with self.lock:
            if self.moved:
                return False
            await self.send(self.one_message(topics.ACTUATOR_ACKS, raw, led.ack, raw))
        return True

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


async def run_guarded(owner: Any, what: str, body: Any) -> None:
    """Run a task of the worker; an error it does not handle is recorded in
    ``owner.failure`` (the process then exits non-zero, streams/ledger.py) and stops the
    worker (``owner.app.crash``): a supervisor sees the crash instead of a clean exit it
    would restart forever."""
    try:
        await body
    except asyncio.CancelledError:
        raise
    except Exception as e:
        log.exception("ledger %s failed; stopping the worker", what)
        owner.failure = owner.failure or e
        await owner.app.crash(e)  # (the process's hard stop: ``hard_stop_on_crash``)


def hard_stop_on_crash(app: Any, after_s: float) -> None:
    """Make every crash of ``app`` end the process: exit 1 if it is still alive
    ``after_s`` after the crash. Faust's stop after a crash waited forever on a worker
    holding thousands of fetched telemetry events (the full suite's shared broker); a
    supervisor must see the exit. Nothing is lost: what no snapshot holds is read again
    from Kafka, as after a SIGKILL. Hooked on the app's ``_crash``, which every crash
    reaches (mode walks a crashed service's beacon up to the app): a guarded task's
    error (``run_guarded`` calls ``app.crash``) and a failure inside Faust itself (its
    producer refusing a changelog record) alike."""
    faust_crash = app._crash

    def crash(reason: BaseException) -> None:
        _exit_if_not_stopped(after_s, repr(reason))
        faust_crash(reason)

    app._crash = crash


def _exit_if_not_stopped(after_s: float, why: str) -> None:

    def force() -> None:
        sys.stderr.write(f"streams.ledger: stopped by an error: {why} (Faust did not stop "
                         f"within {after_s:.0f} s)\n")  # fmt: skip
        sys.stderr.flush()
        os._exit(1)

    t = threading.Timer(after_s, force)
    t.daemon = True
    t.start()


def _other_site(site: str, other: str) -> str:
    return (f"keyed by site {site!r} but for site {other!r}: key it by its own site id "
            f"(its owner never reads it here)")  # fmt: skip


def _salvage_batch(raw: bytes, e: ValidationError) -> tuple[Any, list[BadEntry]] | ValidationError:
    """A node batch with invalid entries: the batch without them; else the error that
    says why not (``e``, the parse's, or the salvage's own: e.g. columns of unequal
    lengths, which the parse does not check once an element failed)."""
    if b'"node_batch"' not in raw:
        return e
    try:
        return parse_telemetry_entries(raw)
    except ValidationError as why:
        return why
    except ValueError:
        return e
