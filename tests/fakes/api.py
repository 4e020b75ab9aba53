"""Test doubles of the REST API's backends (ecovisor.api.state_source.StateSource and
ecovisor.api.command_bus.CommandBus): no ledger, no broker. Serve the real routes with
``create_app(cfg, InMemoryStateSource(), InMemoryBus())``; ``serve`` runs any API on
uvicorn on a free loopback port for clients that need a real socket; ``app_routes`` and
``route_names`` list an app's routes for the isolation tests."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import uvicorn
from fastapi import FastAPI

from ecovisor.api.auth import API_PREFIX
from ecovisor.api.command_bus import NotificationHub
from ecovisor.api.state_source import Counters, LiveState, StateUnavailable
from ecovisor.contract.commands import Command
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.notifications import Notification, TickData
from ecovisor.embedded.servers import free_port

try:  # FastAPI >= 0.137.2 keeps included routers as a tree in app.routes; this walks it
    from fastapi.routing import iter_route_contexts
except ImportError:  # older FastAPI copied every included route into app.routes

    def iter_route_contexts(routes: Any) -> Iterator[Any]:  # type: ignore[misc]
        yield from routes


class InMemoryStateSource:
    """The ledger's state views: states and counters set by the test."""

    def __init__(self) -> None:
        self.states: dict[str, LiveState] = {}
        self.counter_values: dict[str, Counters] = {}
        self.ledgers: dict[str, list[dict[str, Any]]] = {}
        self.counter_queries: list[tuple[str, datetime, datetime]] = []

    def set_tick(
        self, app: str, tick: int, time: datetime, data: TickData, **metrics: float
    ) -> None:
        self.states[app] = LiveState(app=app, tick=tick, time=time, data=data, app_metrics=metrics)

    async def state(self, app: str) -> LiveState:
        if app not in self.states:
            raise StateUnavailable(f"no state for {app!r}")
        return self.states[app]

    async def counters(self, app: str, t1: datetime, t2: datetime) -> Counters:
        self.counter_queries.append((app, t1, t2))
        if app not in self.counter_values:
            raise StateUnavailable(f"no counters for {app!r}")
        return self.counter_values[app]

    async def ledger(self, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
        return list(self.ledgers.get(app, []))

    async def aclose(self) -> None:
        return None


class InMemoryBus:
    """The Kafka command bus: records published commands; ``responder`` (a stand-in for
    the ledger) may answer each command with lifecycle notifications. ``notify`` appends
    a notification to its app's one-partition log (offsets from 0) and dispatches it with
    its position, as the Kafka consumer does; ``hub.dispatch(n)`` alone has no position."""

    def __init__(self, responder: Callable[[Command], list[Notification]] | None = None) -> None:
        self.hub = NotificationHub()
        self.published: list[Command] = []
        self.responder = responder
        self.logs: dict[str, list[Notification]] = {}

    async def start(self) -> None:
        return None

    def notify(self, n: Notification) -> None:
        log = self.logs.setdefault(n.app, [])
        log.append(n)
        self.hub.dispatch(n, (0, len(log) - 1))

    async def offsets(self, app: str) -> dict[int, tuple[int, int]]:
        return {0: (0, len(self.logs.get(app, [])))}

    async def replay(
        self, app: str, partition: int, start: int, end: int
    ) -> AsyncIterator[tuple[int, Notification]]:
        for off in range(start, end):
            await asyncio.sleep(0)
            yield off, self.logs[app][off]

    async def publish(self, cmd: Command) -> None:
        self.published.append(cmd)
        if self.responder is not None:
            replies = self.responder(cmd)

            async def later() -> None:
                for n in replies:
                    await asyncio.sleep(0)
                    self.hub.dispatch(n)

            asyncio.get_running_loop().create_task(later())

    async def stop(self) -> None:
        return None


def accept_and_apply(cmd: Command) -> list[Notification]:
    """A responder for InMemoryBus: accepted, then applied with the command's fields."""
    base = {"site": cmd.site, "time": utcnow(), "app": cmd.app, "command_id": cmd.command_id}
    applied = cmd.model_dump(exclude={"signature", "site", "time", "app", "command_id"})
    return [
        Notification(**base, type="command_accepted"),
        Notification(**base, type="command_applied", data=applied),
    ]


@contextmanager
def serve(api: FastAPI, start_timeout: float = 20.0) -> Iterator[str]:
    """Run ``api`` on uvicorn in a thread on a free loopback port; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            api, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=1
        )
    )
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + start_timeout
    while not server.started:
        assert time.monotonic() < deadline and th.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        th.join(10)


def app_routes(api: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every per-app route (``/v1/apps/{app}...``)."""
    out = []
    for r in iter_route_contexts(api.routes):
        path = r.path or ""
        if path.startswith(API_PREFIX):
            out += [(m, path) for m in sorted(r.methods or ()) if m != "HEAD"]
    return out


def route_names(api: FastAPI) -> set[str]:
    """The names of every route of ``api`` (an endpoint's function name by default)."""
    return {r.name for r in iter_route_contexts(api.routes) if r.name}
