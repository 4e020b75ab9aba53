"""Commands out, notifications in: the API publishes each setter's command on
``ecovisor.commands`` and fans the apps' notifications out to event streams and to
requests waiting for a command's outcome (``NotificationHub``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, Protocol

from pydantic import ValidationError

from ecovisor.adapters import kafka
from ecovisor.adapters.kafka_async import assigned_consumer, started_producer
from ecovisor.contract import topics
from ecovisor.contract.schemas import Command, Notification, parse_notification


class NotificationHub:
    """In-process fan-out of notifications to SSE streams and command waiters, per app."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subs: dict[str, set[asyncio.Queue[Notification]]] = {}
        self._queue_size = queue_size

    def dispatch(self, n: Notification) -> None:
        for q in list(self._subs.get(n.app, ())):
            if q.full():  # a slow reader loses its oldest event rather than stalling all
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(n)

    @contextlib.contextmanager
    def subscribe(self, app: str) -> Iterator[asyncio.Queue[Notification]]:
        q: asyncio.Queue[Notification] = asyncio.Queue(self._queue_size)
        self._subs.setdefault(app, set()).add(q)
        try:
            yield q
        finally:
            self._subs[app].discard(q)

    def subscribers(self, app: str) -> int:
        return len(self._subs.get(app, ()))


class CommandBus(Protocol):
    """Publishes commands and feeds the app notifications into ``hub``. The production
    implementation is ``KafkaBus``; tests use an in-memory double (tests/fakes/api.py)."""

    hub: NotificationHub

    async def start(self) -> None: ...

    async def publish(self, cmd: Command) -> None: ...

    async def stop(self) -> None: ...


class KafkaBus:
    """A producer to ``ecovisor.commands`` and a partition-assigned consumer of every
    configured app's notification topic, through ``ecovisor.adapters.kafka_async`` (no
    consumer group: the API wants every notification, not a share)."""

    def __init__(self, bootstrap: str, apps: list[str], create_topics: bool = True) -> None:
        self.bootstrap, self.apps = bootstrap, apps
        self.hub = NotificationHub()
        self._create = create_topics
        self._producer: Any = None
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        names = [topics.notifications(a) for a in self.apps]
        if self._create:  # tansu does not auto-create; idempotent
            await asyncio.to_thread(kafka.create_topics, self.bootstrap, [topics.COMMANDS, *names])
        try:
            self._producer = await started_producer(self.bootstrap)
            self._consumer, tps = await assigned_consumer(self.bootstrap, names)
            if tps:  # (seek_to_end() without partitions means "all assigned")
                await self._consumer.seek_to_end(*tps)
            for tp in tps:  # resolve positions now: nothing published after start is missed
                await self._consumer.position(tp)
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
            self.hub.dispatch(n)

    async def publish(self, cmd: Command) -> None:
        await self._producer.send_and_wait(
            topics.COMMANDS, value=cmd.to_json(), key=cmd.app.encode()
        )

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for c in (self._consumer, self._producer):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.stop()
