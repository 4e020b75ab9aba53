"""The Faust wiring of the ledger worker: where the pure per-site ledger
(streams/ledger_worker.py) meets Kafka, for one site or a group of sites shared by
several workers (streams/ledger_group.py).

* ``ecovisor.telemetry``, ``ecovisor.commands``, ``ecovisor.actuator.acks``: Faust agents.
  All three are keyed by site and have the group's number of partitions, so a site's
  messages are on one partition number in each (co-partitioned) and Faust hands them to
  the worker that owns it. Telemetry is one event per node batch (hundreds of samples),
  so Faust's per-event cost (~65 µs here) no longer bounds the samples a worker takes.
* State: the Faust tables ``snapshots`` (key site: ``SiteLedger.snapshot()``) and
  ``counters`` (keys ``app:b{k}``, ``app:open``: the views' counter history in
  compressed blocks, streams/counters_table.py), both with
  changelogs, partitioned by site like the topics. Outputs are made durable before each
  snapshot; a snapshot is written at most every ``PERSIST_INTERVAL_S`` while ticks close,
  after every command, and when ``MAX_UNACKED`` telemetry events wait for one.
* Exactness across restarts and rebalances: telemetry events are acknowledged (so their
  offsets committed) only once a snapshot that reflects them is written; a snapshot
  holds the offset of the last telemetry event it reflects, and events at or below it
  are skipped when delivered again. A new owner restores the snapshot and receives every
  event after the committed offset: none lost, none booked twice.
* The state views (streams/ledger_views.py) and /metrics on the Faust web server; a view
  for a site another worker owns is routed to that worker.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

from ecovisor.adapters import faust_transport
from ecovisor.adapters.kafka import (
    COMPRESSION_TYPE,
    checked_fetch_wait,
    checked_linger,
    create_topics,
    existing_partitions,
    faust_credentials,
)
from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.environment import internal_key
from ecovisor.core.tick_clock import to_us
from streams.counters_table import KeyIndex
from streams.gc_schedule import FULL_COLLECTIONS
from streams.ledger_group import LedgerGroup, SiteGroup, not_ready_reason
from streams.ledger_metrics import LedgerHealth, add_metrics_page, sites_registry
from streams.ledger_service import (
    HAND_OVER_STOP_S,
    ClockMode,
    LedgerService,
    run_guarded,
)
from streams.ledger_views import Target, add_pages, add_ready_page

log = logging.getLogger("ecovisor.ledger")

SNAPSHOT_MAX_BYTES = 32 * 1024 * 1024  # uncompressed record size the producer accepts
# the producer's batch (uncompressed): compressed, it stays under a broker's default
# 1 MiB message limit whatever it holds
OUTPUT_BATCH_BYTES = 1_000_000
SETTLE_POLL_S = 0.05  # how often an event held during a rebalance looks again
STALL_CHECK_S = 5.0  # a partition with events to read and none delivered this long: seek
# a partition seeking back that has delivered nothing this long: seek again (unstall)
RESEEK_S = 1.0
# the producer's linger (ms): a tick's outputs are appended without a pause, so they
# form their batches anyway; the linger only adds to each output's latency
PRODUCER_LINGER_MS = 2


def faust_app_id(cfg: EcovisorConfig | SiteGroup) -> str:
    """Its consumer group and its topics' prefix, which the Kafka ACLs name
    (``ecovisor.contract.kafka_access``)."""
    return cfg.app_id if isinstance(cfg, SiteGroup) else SiteGroup.of([cfg]).app_id


def internal_topics(app_id: str) -> list[str]:
    """Faust's own topics (tansu does not auto-create): table changelogs."""
    return [f"{app_id}-snapshots-changelog", f"{app_id}-counters-changelog"]


async def seek(consumer: Any, tp: Any, offset: int) -> None:
    """Seek a telemetry partition on the consumer's own thread. Faust's ``seek`` calls
    aiokafka's on the caller's thread while the consumer thread fetches: a restarted
    worker's seek once raced the fetcher (KeyError in ``fetched_records``) and crashed
    it. ``seek_wait`` runs it on the consumer thread, and sets what Faust counts as
    read the same way."""
    await consumer.seek_wait({tp: offset})


def value_of(raw: bytes | None) -> bytes:
    """A record's value; a tombstone (null value: anyone may write one to a topic) as
    empty bytes, which every step refuses with a dead letter like any other junk."""
    return raw if raw is not None else b""


class PartitionMismatch(RuntimeError):
    """A site-keyed topic exists with another partition count than the group's."""


def prepare_topics(cfg: EcovisorConfig | SiteGroup, bootstrap: str) -> None:
    """Create every topic the worker reads or writes (tansu does not auto-create): the
    site-keyed ones and the changelogs with the group's partitions. A site-keyed topic
    that already exists with another partition count raises ``PartitionMismatch`` (a
    site would be looked for on the wrong partition)."""
    group = cfg if isinstance(cfg, SiteGroup) else SiteGroup.of([cfg])
    apps = [a.id for c in group.sites.values() for a in c.apps]
    keyed = [*topics.KEYED_BY_SITE, *internal_topics(group.app_id)]
    wanted = topics.topic_partitions([*keyed, *topics.all_topics(apps)], group.partitions,
                                     keyed)  # fmt: skip
    have = existing_partitions(bootstrap, keyed)  # checked before anything is created
    wrong = {t: n for t, n in have.items() if n != wanted[t]}
    if wrong:
        raise PartitionMismatch(
            f"the group has {group.partitions} partition(s) but "
            + ", ".join(f"{t} has {n}" for t, n in sorted(wrong.items()))
            + ": use --partitions to match, or a broker without these topics"
        )
    create_topics(bootstrap, wanted)


class GroupService:
    """The I/O of a worker of a group: routes each message to its site's
    ``LedgerService`` (``LedgerGroup``), closes every owned site's ticks on their
    deadlines, tracks the telemetry catch-up of event mode."""

    def __init__(self, group: SiteGroup, app: Any, snapshots: Any, counters: Any,
                 clock: ClockMode, rebalance_timeout_s: float = 3.0) -> None:  # fmt: skip
        self.group = group
        self.app = app
        self.clock_mode = clock
        # a revoke's hand-over must end well within the group's rebalance timeout: it runs
        # before this worker rejoins, and a member late to rejoin is dropped (its
        # partitions then assigned without its snapshots)
        self.revoke_budget_s = rebalance_timeout_s / 2
        # a rebalance under way: from its start (``on_rebalance_start``) to the end of the
        # recovery of its own assignment (``rebalance_ends``); the worker owns nothing
        # then (``settled``)
        self.moving = False
        self.assigned_now = False  # this rebalance's assignment is known
        self.flags = threading.Lock()  # the two flags above, set from two threads
        # partition -> TP of the settled assignment's telemetry partitions (made once per
        # settling: every telemetry event asks, ``still_ours``)
        self._tps: dict[int, Any] | None = None
        self.failure: BaseException | None = None
        self.ack: Any = None  # the telemetry stream's ack, set when the agent starts
        self.health: dict[str, LedgerHealth] = {}

        self.counters_index = KeyIndex()  # the counters table's keys by app (all sites)

        def make(cfg: EcovisorConfig) -> LedgerService:
            svc = LedgerService(cfg, app, snapshots, counters, clock, ack=self.ack_event,
                                counters_index=self.counters_index)  # fmt: skip
            svc.health = self.health.get(cfg.site.id)
            return svc

        self.sites = LedgerGroup(group, self.active_partitions, make, self.settled)

    def telemetry_tps(self) -> dict[int, Any]:
        """Partition -> TP of the telemetry partitions assigned to this worker and
        recovered: none until the first recovery, and none during a rebalance (from the
        revoke to the recovery of the new assignment). Faust's view of the assignment
        lags both ends of it: a site service made then (the tick closer or the catch-up
        watch asking ``owned``) held the state just handed over, stale once the next
        owner moved on, or read tables not recovered yet, and a partition assigned back
        resumed from it (ticks re-sent, commands taken meanwhile missed)."""
        if not self.settled():
            return {}
        if self._tps is None:
            self._tps = {tp.partition: tp for tp in self.app.assignor.assigned_actives()
                         if tp.topic == topics.TELEMETRY}  # fmt: skip
        return self._tps

    def active_partitions(self) -> set[int]:
        return set(self.telemetry_tps())

    def owns_partition(self, part: int) -> bool:
        return part in self.telemetry_tps()

    def settled(self) -> bool:
        """Recovered, and no rebalance under way (``telemetry_tps``): ``moving`` from a
        rebalance's start to the end of the recovery of its own assignment."""
        return (self.app.tables.recovery.completed.is_set() and not self.app.rebalancing
                and not self.moving)  # fmt: skip

    def moved_since(self, n: int) -> bool:
        """Whether a rebalance has started since Faust's ``rebalancing_count`` was ``n``,
        or one is under way: what was read across an await is then of an assignment
        that has passed."""
        return self.app.rebalancing_count != n or not self.settled()

    async def wait_settled(self) -> None:
        """Until ``settled`` (a rebalance takes seconds: polled, cheaply)."""
        while not self.settled():
            await asyncio.sleep(SETTLE_POLL_S)

    async def still_ours(self, part: int) -> bool:
        """Whether an event of telemetry (command, ack) partition ``part``, handed on by
        Faust now, may be taken here: once the worker is settled, if no rebalance started
        meanwhile and ``part`` is assigned to it. Faust hands events on while a rebalance
        starts (the app does not wait for its streams); an event held across one is not
        taken: it was not acknowledged, and Faust delivers it again to the partition's
        owner after the rebalance (this worker too: each assignment seeks to the
        committed offsets), in order."""
        n = self.app.rebalancing_count
        if not self.settled():
            await self.wait_settled()
            if self.moved_since(n):
                return False
        return self.owns_partition(part)

    def rebalance_starts(self) -> None:
        """Faust's ``on_rebalance_start`` (called at once, before the revoke, on the
        consumer's thread: one flag set)."""
        with self.flags:
            self.moving = True
            self.assigned_now = False

    def assigned(self) -> None:
        """Faust's ``on_partitions_assigned``: the new assignment is known; its tables
        are recovered next (``rebalance_ends``)."""
        with self.flags:
            self.assigned_now = True
        self.sites.assigned()

    def rebalance_ends(self) -> None:
        """Faust's ``on_rebalance_end`` (a recovery's end): settled only if it is the
        recovery of this rebalance's assignment. A previous rebalance's recovery can end
        after the next one started (Faust checks its generation before its last awaits):
        before the next assignment (not ``assigned_now``), or after it, while the next
        recovery is still to run (its start signal not yet taken: Faust's recovery runs
        one at a time, the late end inside the loop that would take it)."""
        pending = self.app.tables.recovery.signal_recovery_start.is_set()
        with self.flags:  # (against a rebalance starting on the consumer's thread now)
            if not self.assigned_now or pending:
                return
            self.moving = False
        # what was read of the assignment and the recovering tables before now is old
        self._tps = None
        self.counters_index.invalidate()

    async def ack_event(self, event: Any) -> None:
        if self.ack is not None:
            await self.ack(event)

    async def telemetry(self, event: Any) -> None:
        """One telemetry event (a sample, a node batch or a clock message) to its site."""
        msg = event.message
        part, off = msg.partition, msg.offset
        if not await self.still_ours(part):
            return  # (not acknowledged: delivered again after the rebalance)
        n = self.app.rebalancing_count
        if not await self.positioned(part, off, msg.tp):
            return  # read before the seek to the snapshots' offset: delivered again after it
        if self.moved_since(n):
            return  # a rebalance during the seek: as above
        raw = value_of(event.value)
        site = self.sites.site_of_key(event.key, raw, by_app=False)
        svc = self.sites.service(site, delivered_on=part) if site is not None else None
        if svc is None:  # another group's site, or none: nothing of ours to hold it for
            if site is not None:  # a site of the group on another partition: its key is
                # not its site id, so its owner never reads it; say so rather than drop it
                await self._misrouted(topics.TELEMETRY, site, part, raw)
            await self.ack_event(event)
        else:
            svc.unacked.append(event)
            keyed = event.key == site.encode()
            await svc.telemetry(svc.loaded(), part, [_Record(raw, off)], keyed)
        self.sites.note_offset(part, off)

    async def positioned(self, part: int, off: int, tp: Any) -> bool:
        """Whether the event at ``off`` may be handed on (``LedgerGroup.position`` says;
        on a gap the consumer seeks back and the event comes again later)."""
        verdict = self.sites.position(part, off)
        if verdict == "first":
            earliest = (await self.app.consumer.earliest_offsets(tp)).get(tp) or 0
            verdict = self.sites.position_first(part, off, earliest)
        if not isinstance(verdict, bool):  # an offset (bool is an int subclass)
            log.info("partition %s: offset %s delivered, %s expected: seeking back",
                     part, off, verdict)  # fmt: skip
            await seek(self.app.consumer, tp, verdict)
            return False
        return verdict is True

    async def unstall(self) -> None:
        """A telemetry partition this worker owns that has events to read but delivered
        none for ``STALL_CHECK_S``: seek it to the next offset it must hand on, and log a
        warning. Seen on the embedded broker after a takeover, in 2 of 5 runs of
        tests/integration/test_ledger_scaleout.py: the partition was assigned, recovered,
        in Faust's fetch set and fetched to its end, yet none of its events reached the
        agent (the agent idle, waiting on its queue); Faust's consumer had counted them as
        read. A seek resets that, and they come again (each run then completed exact).
        The gap check (``LedgerGroup.position``) catches the same loss as soon as a later
        event arrives; this catches it when none does.

        A partition seeking back (``resync``) that has delivered nothing for ``RESEEK_S``
        is sought again: Faust's fetch loop may still be handing on the rest of a batch
        fetched before the seek, and each of those moves Faust's "read up to" past the
        offset sought, so the events from there were dropped as already read (found with
        a 25 ms fetch wait: a SIGKILLed worker's successor stalled for good, 2 runs in 4
        of tests/integration/test_ledger_restart.py). Once that batch is through, the
        second seek holds."""
        consumer = self.app.consumer
        now = time.monotonic()
        moves = self.app.rebalancing_count  # a rebalance during an await: its state is old
        for part, tp in self.telemetry_tps().items():
            if self.moved_since(moves):
                return
            since = self.sites.last_event.setdefault(part, now)
            rs = self.sites.resync.get(part)
            if now - since < (STALL_CHECK_S if rs is None else RESEEK_S):
                continue
            at = rs[0] if rs is not None else self.sites.expect.get(part)
            if at is None:
                at = self.sites.resume_offset(part)
            end = consumer.highwater(tp)  # of its last fetch: the broker only if none yet
            if end is None:
                end = int((await consumer.highwaters(tp)).get(tp) or 0)
                if self.moved_since(moves):
                    return
            if end <= at:
                self.sites.last_event[part] = now  # nothing to read: not stalled
                continue
            pos = await consumer.position(tp)
            if self.moved_since(moves):
                return
            log.warning("telemetry partition %s delivered nothing for %.0f s with offsets "
                        "%s..%s to read (fetched up to %s, buffered %s, in the fetch set %s): "
                        "sought to %s", part, now - since, at, end - 1, pos,
                        tp in getattr(consumer, "_buffered_partitions", ()),
                        tp in (getattr(consumer, "_active_partitions", None) or ()),
                        at)  # fmt: skip
            self.sites.last_event[part] = now
            consumer.on_buffer_drop(tp)
            self.sites.expect[part] = at
            self.sites.resync[part] = (at, -1 if rs is None else rs[1])
            await seek(consumer, tp, at)  # also resets what Faust counts as read on it

    async def command(self, key: bytes | None, raw: bytes | None, partition: int) -> None:
        await self._routed(topics.COMMANDS, key, value_of(raw), partition)

    async def actuator_ack(self, key: bytes | None, raw: bytes | None, partition: int) -> None:
        await self._routed(topics.ACTUATOR_ACKS, key, value_of(raw), partition)

    async def _routed(self, origin: str, key: bytes | None, raw: bytes, partition: int) -> None:
        """A command or ack to its site's service (``still_ours``); not taken when the
        site was handed over while it waited (``LedgerService.command`` False): Faust
        delivers it again to the partition's owner after the rebalance."""
        if await self.still_ours(partition):
            svc = await self._service_of(origin, key, raw, partition)
            if svc is None:
                return
            take = svc.command if origin == topics.COMMANDS else svc.ack
            if await take(raw):
                return
        log.info("%s message on partition %s held across a rebalance: delivered again to "
                 "the partition's owner", origin, partition)  # fmt: skip

    async def _service_of(
        self, origin: str, key: bytes | None, raw: bytes, partition: int
    ) -> LedgerService | None:
        """The service of a command's or ack's site (a command may still be keyed by its
        app), else None with the message dead-lettered saying why."""
        site = self.sites.site_of_key(key, raw, by_app=origin == topics.COMMANDS)
        svc = self.sites.service(site, delivered_on=partition) if site is not None else None
        if svc is None:
            await self._misrouted(origin, site, partition, raw)
        return svc  # type: ignore[no-any-return]

    async def _misrouted(self, origin: str, site: str | None, partition: int, raw: bytes) -> None:
        o = self.sites.misrouted(origin, site, partition, raw)
        fut = await self.app.producer.send(o.topic, o.key, o.value, None, None, None)
        await fut

    async def close_on_deadlines(self) -> None:
        """Real-time mode: sleep until the earliest deadline (end + grace) of an owned
        site's oldest open tick, close what is due, forever. Event-driven rather than
        polled, so a tick closes at its deadline, not up to a polling period later
        (docs/ledger.md); it looks again at least every Δt/10 for sites newly assigned."""
        idle_s = max(0.05, min(c.site.shape.tick_s for c in self.group.sites.values()) / 10)
        while True:
            now = to_us(time.time())
            due: list[tuple[int, LedgerService]] = []
            nxt: int | None = None
            for svc in self.sites.owned():
                d = svc.loaded().clock.next_deadline_us()
                if d is None:
                    continue
                if d <= now:
                    due.append((d, svc))
                else:
                    nxt = d if nxt is None else min(nxt, d)
            closed = False
            for d, svc in due:
                await svc.on_timer(now)
                closed = closed or svc.loaded().clock.next_deadline_us() != d
            if closed:
                continue
            if due or nxt is None:  # nothing closed (never spin), or no tick open yet
                await asyncio.sleep(idle_s)
            else:
                await asyncio.sleep(min(idle_s, max(0.0, (nxt - now) / 1e6)))

    async def watch_catch_up(self) -> None:
        """Event mode: a partition's sites take commands once the worker has read the
        telemetry that was in it when the partition was assigned (``LedgerService.command``)."""
        while True:
            for _ in self.sites.owned():  # every owned site loaded (and logged) at once
                pass
            for part, tp in self.telemetry_tps().items():
                if part in self.sites.caught_up:
                    continue
                if part not in self.sites.catch_up_to:
                    moves = self.app.rebalancing_count
                    ends = await self.app.consumer.highwaters(tp)
                    if self.moved_since(moves):
                        break  # the end of an assignment that has passed: take it again
                    self.sites.catch_up_to[part] = int(ends.get(tp) or 0)
                # Faust's committed offset of the partition (what it resumed from)
                committed = getattr(self.app.consumer, "_committed_offset", {}).get(tp)
                self.sites.check_caught_up(part, committed)
            await asyncio.sleep(0.05)

    async def hand_over(self, partitions: set[int] | None) -> None:
        """Hand the loaded sites of ``partitions`` over (every site, a graceful stop, when
        None) before they leave this worker: each leaves at once (no tick closes after),
        then each is persisted (``LedgerService.hand_over``) within the budget (a
        revoke: half the rebalance timeout; a stop: HAND_OVER_STOP_S), then the producer
        is drained once and the telemetry they cover acknowledged. Not after a crash: the
        next owner reads again what no snapshot holds, as after a SIGKILL. A failure is
        logged, never raised: the next owner then starts from the snapshot before."""
        crashed = self.failure is not None or getattr(self.app, "crash_reason", None)
        leaving = [s for site, s in list(self.sites.services.items())
                   if partitions is None or self.group.partition(site) in partitions]
        for s in leaving:
            s.leave(moved=partitions is not None)
        if partitions is None:
            # a stop: only the sites of partitions this worker owns now; none during a
            # rebalance (Faust then leaves the group without a revoke: others may be
            # taking its partitions over already)
            leaving = [s for s in leaving if self.owns_partition(self.group.partition(s.site))]
        if crashed or not leaving:
            return
        t0 = time.monotonic()
        deadline = t0 + (HAND_OVER_STOP_S if partitions is None else self.revoke_budget_s)
        written, events = 0, []
        try:
            for s in leaving:
                got = await asyncio.wait_for(s.hand_over(deadline),
                                             max(0.0, deadline - time.monotonic()))  # fmt: skip
                if got is not None:
                    written += 1
                    events += got
            if written:
                await asyncio.wait_for(self.drain(), max(0.0, deadline - time.monotonic()))
        except Exception as e:  # noqa: BLE001 - the next owner replays from the one before
            log.warning("hand-over of %d site(s) not complete after %.2f s (%r): %d written; "
                        "the others' next owner starts from their previous snapshots",
                        len(leaving), time.monotonic() - t0, e, written)  # fmt: skip
            return
        for ev in events:
            await self.ack_event(ev)
        log.info("handed over %d of %d site(s) in %.2f s", written, len(leaving),
                 time.monotonic() - t0)  # fmt: skip

    async def drain(self) -> None:
        """Until every record sent so far has left Faust's buffer and been flushed (its
        buffer's flush returns after 0.1 s without progress even with records queued)."""
        producer = self.app.producer
        while getattr(getattr(producer, "buffer", None), "size", 0):
            await producer.buffer.flush()
        await producer.flush()

    def readiness(self) -> str | None:
        """Why this worker does not serve its share yet (``not_ready_reason``), else None."""
        app = self.app
        recovered = app.tables.recovery.completed.is_set()
        return not_ready_reason(
            failed=self.failure, joined=app.rebalancing_count > 0,
            rebalancing=app.rebalancing or self.moving,
            recovered=recovered, owned=self.active_partitions() if recovered else set(),
            caught_up=self.sites.caught_up, event_mode=self.clock_mode == "event")

    async def guarded(self, what: str, body: Any) -> None:
        """Run ``body``, a task of the worker (``run_guarded``)."""
        await run_guarded(self, what, body)



class _Record:
    """A telemetry event as ``LedgerService.telemetry`` reads it."""

    __slots__ = ("offset", "value")

    def __init__(self, value: bytes, offset: int) -> None:
        self.value, self.offset = value, offset


def build_app(
    cfg: EcovisorConfig | SiteGroup,
    *,
    bootstrap: str,
    clock: ClockMode = "realtime",
    timeouts: float = 3.0,
    web_port: int | None = None,
    web_bind: str = "127.0.0.1",
    web_host: str = "127.0.0.1",
    fetch_wait_ms: int = faust_transport.WORKER_FETCH_MAX_WAIT_MS,
    linger_ms: int = PRODUCER_LINGER_MS,
) -> Any:
    """The Faust app of a ledger worker for one site or a group of sites (``timeouts``:
    broker session and rebalance timeouts in s; ``web_port``: its views and /metrics,
    default the first site's ``stack.ledger_web_port``, on ``web_bind``; ``web_host``:
    the name other workers of the group reach it at; ``fetch_wait_ms``: its consumer's
    longest fetch wait, ``linger_ms``: its producer's linger, both latency against
    requests: docs/replay-pipeline.md, Speed)."""
    checked_fetch_wait(fetch_wait_ms)
    checked_linger(linger_ms)
    import faust

    group = cfg if isinstance(cfg, SiteGroup) else SiteGroup.of([cfg])
    first = next(iter(group.sites.values()))
    app_id = group.app_id
    port = web_port or first.stack.ledger_web_port
    datadir = f"{first.stack.state_dir}/faust-{app_id}" + ("" if web_port is None else f"-{port}")
    Path(datadir).mkdir(parents=True, exist_ok=True)
    faust_transport.register()
    app = faust.App(
        app_id,
        broker=f"{faust_transport.BROKER_SCHEME}://{bootstrap}",
        broker_credentials=faust_credentials(),  # None: PLAINTEXT (ECOVISOR_KAFKA_*)
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=group.partitions,
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
        web_host=web_host,  # its canonical URL: where the group routes view requests
        web_bind=web_bind,
        web_port=port,
        datadir=datadir,
        stream_buffer_maxsize=8192,
        producer_linger=linger_ms / 1000,
        # a tick's outputs in few batches and produce requests: a tick of 1,000 containers
        # sends ~350 kB of entries and notifications (an entry of 100 containers ~21 kB);
        # with Faust's 16 kB default each entry was a batch and a request of its own
        # (docs/ledger.md "Producer batches")
        producer_max_batch_size=OUTPUT_BATCH_BYTES,
        # JSON entries, notifications and snapshots compress ~12x; a broker keeps them
        # compressed (the embedded one in memory: L1, docs/reliability.md)
        producer_compression_type=COMPRESSION_TYPE,
        # the producer checks a record's size before compression: the snapshot of a
        # site of 10,000 containers is ~3.3 MB as JSON, ~150 kB compressed on the broker
        producer_max_request_size=SNAPSHOT_MAX_BYTES,
    )
    setattr(app, faust_transport.FETCH_WAIT_ATTR, fetch_wait_ms)  # (the transport reads it)
    telemetry = app.topic(topics.TELEMETRY, value_type=bytes, key_type=bytes)
    commands = app.topic(topics.COMMANDS, value_type=bytes, key_type=bytes)
    acks = app.topic(topics.ACTUATOR_ACKS, value_type=bytes, key_type=bytes)
    app_sites = group.app_sites

    def site_of_row(key: bytes) -> str:  # counters keys: "app:b{k}", "app:open", "app:k"
        return app_sites.get(key.decode("utf-8", "replace").rpartition(":")[0], "")

    def table(name: str, site_of: Any) -> Any:
        t = _site_table_class()(app, name=name, partitions=group.partitions, key_type=bytes,
                      value_type=bytes, help=None)  # fmt: skip
        t.partition_of = lambda key: group.partition(site_of(key))
        return app.tables.add(t)

    snapshots = table("snapshots", lambda key: key.decode("utf-8", "replace"))
    counters = table("counters", site_of_row)
    svc = GroupService(group, app, snapshots, counters, clock, rebalance_timeout_s=timeouts)

    async def telemetry_loop(stream: Any) -> None:
        manual = stream.noack()
        svc.ack = manual.ack
        async for event in manual.events():
            await svc.telemetry(event)

    async def commands_loop(stream: Any) -> None:
        async for event in stream.events():
            await svc.command(event.key, event.value, event.message.partition)

    async def acks_loop(stream: Any) -> None:
        async for event in stream.events():
            await svc.actuator_ack(event.key, event.value, event.message.partition)

    @app.agent(telemetry)
    async def on_telemetry(stream: Any) -> None:
        await svc.guarded("telemetry", telemetry_loop(stream))

    @app.agent(commands)
    async def on_command(stream: Any) -> None:
        await svc.guarded("commands", commands_loop(stream))

    @app.agent(acks)
    async def on_ack(stream: Any) -> None:
        await svc.guarded("acks", acks_loop(stream))

    if clock == "realtime":

        @app.task
        async def tick_closer() -> None:
            await app.tables.recovery.completed.wait()
            await svc.guarded("tick closer", svc.close_on_deadlines())
    else:

        @app.task
        async def catch_up() -> None:
            await svc.guarded("catch-up", svc.watch_catch_up())

    @app.timer(RESEEK_S)
    async def telemetry_watchdog() -> None:
        try:
            await svc.unstall()
        except Exception as e:  # noqa: BLE001 - a missed check is retried, not fatal
            log.warning("telemetry watchdog: %s", e)
        FULL_COLLECTIONS.maybe_collect()  # also when no tick closes (gc_schedule)

    faust_rebalance_start = app.on_rebalance_start

    def rebalance_start() -> None:  # called at once when a rebalance starts (sync)
        try:
            svc.rebalance_starts()
        finally:  # (an error here would make aiokafka skip Faust's whole revoke)
            faust_rebalance_start()

    faust_rebalance_end = app.on_rebalance_end

    def rebalance_end() -> None:  # a recovery's end (the main loop)
        try:
            faust_rebalance_end()
        finally:
            svc.rebalance_ends()

    app.on_rebalance_start = rebalance_start
    app.on_rebalance_end = rebalance_end

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **_: Any) -> None:
        parts = {tp.partition for tp in revoked if tp.topic == topics.TELEMETRY}
        await svc.hand_over(parts)
        svc.sites.revoke(parts)

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **_: Any) -> None:
        svc.assigned()

    @app.on_before_shutdown.connect
    async def on_shutdown(sender: Any, **_: Any) -> None:
        # a graceful stop: sent once Faust has stopped fetching and paused its
        # partitions (the consumer leaves the group later), before its producer's last
        # flush; this worker is the sites' only owner until then
        await svc.hand_over(None)

    keys = {s: internal_key(c) for s, c in group.sites.items()}
    for s, k in keys.items():
        if k is None:  # the site file and environment hold no key: behave as before keys
            log.warning(
                "no internal key for site %s ($%s): internal topics are not authenticated "
                "and the ledger views are open to any local process",
                s, group.sites[s].site.internal_key_env,
            )  # fmt: skip

    def target(app_name: str) -> Target:
        site = app_sites.get(app_name)
        if site is None:  # unknown app: 404 (one site: its ledger answers as before)
            only = next(iter(group.sites)) if len(group.sites) == 1 else None
            one = svc.sites.services.get(only) if only else None
            return Target(one.ledger if one else None, keys.get(only) if only else None)
        own = svc.sites.services.get(site)
        if own is None and svc.sites.owns(site):
            own = svc.sites.service(site)
        if own is None:
            return Target(None, keys[site], forward=site)
        return Target(own.ledger, keys[site])

    add_pages(app, target)
    add_ready_page(app, svc)
    registry, svc.health = sites_registry(
        lambda: [s.ledger for s in list(svc.sites.services.values()) if s.ledger is not None],
        {s: c.site.grace_s for s, c in group.sites.items()},
    )
    # /metrics: the group's one internal key (SiteGroup.of checks they share it)
    add_metrics_page(app, registry, keys[next(iter(group.sites))])
    app.ledger_service = svc  # streams/ledger.py reads .failure for its exit code
    return app


def _site_table_class() -> Any:
    import faust

    class SiteTable(faust.Table):  # type: ignore[misc]
        """A table whose rows go to the partition of their site (``partition_of``),
        whichever task writes them (the tick closer has no current event)."""

        partition_of: Any = None

        def partition_for_key(self, key: Any) -> int | None:
            return int(self.partition_of(key))

    return SiteTable

