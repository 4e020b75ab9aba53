"""Commands out, notifications in: the API publishes each setter's command on
``ecovisor.commands`` and fans the apps' notifications out to event streams and to
requests waiting for a command's outcome (``NotificationHub``). Each notification keeps
its position in the app's topic (partition, offset): the event streams use it as the
SSE event id and, on a reconnect with ``Last-Event-ID``, read what was missed back from
the topic (``CommandBus.replay``), so a client gets every notification at least once."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any, Protocol

from pydantic import ValidationError

from ecovisor.adapters import kafka
from ecovisor.adapters.kafka_async import assigned_consumer, started_producer
from ecovisor.contract import topics
from ecovisor.contract.commands import Command
from ecovisor.contract.notifications import Notification, parse_notification

Position = tuple[int, int]  # (partition, offset) of a notification in its app's topic
REPLAY_BATCH = 200  # records per fetch of a replay: memory stays bounded, whatever the gap
REPLAY_STALL_S = 30.0  # a replay that makes no progress this long ends the stream
NOTIFY_FETCH_WAIT_MS = 20  # the live consumer's longest wait for an empty fetch


class Subscription:
    """One event stream's bounded queue of (position, notification). When it is full the
    oldest entry is dropped and ``overflowed`` set: the stream then reads the dropped
    part back from the topic instead of losing it."""

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[tuple[Position | None, Notification]] = asyncio.Queue(size)
        self.overflowed = False

    def put(self, pos: Position | None, n: Notification) -> None:
        if self.queue.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                self.queue.get_nowait()
            self.overflowed = True
        self.queue.put_nowait((pos, n))


class NotificationHub:
    """In-process fan-out of notifications to SSE streams and command waiters, per app."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subs: dict[str, set[asyncio.Queue[Notification]]] = {}
        self._streams: dict[str, set[Subscription]] = {}
        self._queue_size = queue_size

    def dispatch(self, n: Notification, pos: Position | None = None) -> None:
        """Hand ``n`` to every waiter and stream of its app; ``pos`` is its place in the
        app's topic (None from a source without positions: streamed without an id)."""
        for q in list(self._subs.get(n.app, ())):
            if q.full():  # a slow waiter loses its oldest event rather than stalling all
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(n)
        for s in list(self._streams.get(n.app, ())):
            s.put(pos, n)

    @contextlib.contextmanager
    def subscribe(self, app: str) -> Iterator[asyncio.Queue[Notification]]:
        q: asyncio.Queue[Notification] = asyncio.Queue(self._queue_size)
        self._subs.setdefault(app, set()).add(q)
        try:
            yield q
        finally:
            self._subs[app].discard(q)

    @contextlib.contextmanager
    def stream(self, app: str) -> Iterator[Subscription]:
        """A subscription that keeps positions (for the event streams)."""
        s = Subscription(self._queue_size)
        self._streams.setdefault(app, set()).add(s)
        try:
            yield s
        finally:
            self._streams[app].discard(s)

    def subscribers(self, app: str) -> int:
        return len(self._subs.get(app, ())) + len(self._streams.get(app, ()))


class CommandBus(Protocol):
    """Publishes commands (signed by their app, ``commands.sign_command``: never a
    token), feeds the app notifications into ``hub`` and reads them back by position.
    The production implementation is ``KafkaBus``; tests use an in-memory double
    (tests/fakes/api.py)."""

    hub: NotificationHub

    async def start(self) -> None: ...

    async def publish(self, cmd: Command) -> None: ...

    async def offsets(self, app: str) -> dict[int, tuple[int, int]]:
        """(earliest, end) offset of each partition of the app's notification topic."""
        ...

    def replay(
        self, app: str, partition: int, start: int, end: int
    ) -> AsyncIterator[tuple[int, Notification]]:
        """The app's notifications at offsets ``start`` ≤ offset < ``end`` of a partition,
        in order, with their offsets (unparseable records are skipped)."""
        ...

    async def stop(self) -> None: ...


class KafkaBus:
    """A producer to ``ecovisor.commands`` and a partition-assigned consumer of every
    configured app's notification topic, through ``ecovisor.adapters.kafka_async`` (no
    consumer group: the API wants every notification, not a share)."""

    def __init__(self, bootstrap: str, apps: list[str], create_topics: bool = True,
                 fetch_wait_ms: int = NOTIFY_FETCH_WAIT_MS) -> None:  # fmt: skip
        kafka.checked_fetch_wait(fetch_wait_ms)
        self.bootstrap, self.apps = bootstrap, apps
        self.fetch_wait_ms = fetch_wait_ms
        self.hub = NotificationHub()
        self._create = create_topics
        self._producer: Any = None
        self._consumer: Any = None
        self._probe: Any = None  # finds a partition's real end (see offsets)
        self._probe_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        names = [topics.notifications(a) for a in self.apps]
        if self._create:  # tansu does not auto-create; idempotent
            await asyncio.to_thread(kafka.create_topics, self.bootstrap, [topics.COMMANDS, *names])
        try:
            self._producer = await started_producer(self.bootstrap)
            # a short fetch wait: the embedded broker (tansu) does not always answer a
            # waiting fetch when a record arrives, so a notification could wait up to
            # the whole fetch wait (aiokafka's default 500 ms; docs/replay-pipeline.md)
            self._consumer, tps = await assigned_consumer(
                self.bootstrap, names, fetch_max_wait_ms=self.fetch_wait_ms
            )
            if tps:  # (seek_to_end() without partitions means "all assigned")
                await self._consumer.seek_to_end(*tps)
            for tp in tps:  # resolve positions now: nothing published after start is missed
                await self._consumer.position(tp)
            self._probe, _ = await assigned_consumer(self.bootstrap, names, fetch_max_wait_ms=50)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for msg in self._consumer:
            try:
                n = parse_notification(msg.value)
            except ValidationError:
                continue  # the ledger dead-letters bad messages; the API just skips them
            self.hub.dispatch(n, (msg.partition, msg.offset))

    async def publish(self, cmd: Command) -> None:
        if cmd.signature is None:  # the ledger would only dead-letter it
            raise ValueError(f"command {cmd.command_id} is not signed")
        await self._producer.send_and_wait(
            topics.COMMANDS, value=cmd.to_json(), key=cmd.site.encode()  # by site: its partition
        )

    async def offsets(self, app: str) -> dict[int, tuple[int, int]]:
        from aiokafka import TopicPartition

        topic = topics.notifications(app)
        parts = sorted(self._consumer.partitions_for_topic(topic) or ())
        tps = [TopicPartition(topic, p) for p in parts]
        if not tps:
            return {}
        lo = await self._consumer.beginning_offsets(tps)
        hi = await self._consumer.end_offsets(tps)
        return {tp.partition: (lo[tp], await self._real_end(tp, hi[tp])) for tp in tps}

    async def _real_end(self, tp: Any, reported: int) -> int:
        """tansu 0.6 answers ListOffsets(latest) with the base offset of the partition's
        last batch + 1, short of the records after the first of that batch: read on from
        there to the real end (one empty fetch on a broker that answers right)."""
        async with self._probe_lock:
            self._probe.assign([tp])
            self._probe.seek(tp, reported)
            end = reported
            for _ in range(100):  # bounded: a producer faster than this is caught live
                batch = await self._probe.getmany(tp, timeout_ms=100, max_records=REPLAY_BATCH)
                if not batch.get(tp):
                    break
                end = batch[tp][-1].offset + 1
            return end

    async def replay(
        self, app: str, partition: int, start: int, end: int
    ) -> AsyncIterator[tuple[int, Notification]]:
        """Read from the topic with a consumer of its own (closed at the end), a batch at
        a time: nothing is buffered beyond one fetch."""
        from aiokafka import TopicPartition

        if start >= end:
            return
        topic = topics.notifications(app)
        tp = TopicPartition(topic, partition)
        consumer, _ = await assigned_consumer(self.bootstrap, [topic], fetch_max_wait_ms=50)
        try:
            consumer.assign([tp])
            consumer.seek(tp, start)
            stalled = time.monotonic() + REPLAY_STALL_S
            while True:
                batch = await consumer.getmany(tp, timeout_ms=500, max_records=REPLAY_BATCH)
                records = batch.get(tp, [])
                if not records:
                    if await consumer.position(tp) >= end:
                        return
                    if time.monotonic() > stalled:
                        raise kafka.KafkaUnavailable(
                            f"replay of {topic} stalled at offset {await consumer.position(tp)}"
                        )
                    continue
                stalled = time.monotonic() + REPLAY_STALL_S
                for r in records:
                    if r.offset >= end:
                        return
                    with contextlib.suppress(ValidationError):
                        yield r.offset, parse_notification(r.value)
                if records[-1].offset >= end - 1:
                    return
        finally:
            await consumer.stop()

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for c in (self._consumer, self._probe, self._producer):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.stop()
