"""Python client against the real API served by uvicorn on a free loopback port (the
ledger and Kafka replaced by the in-memory test doubles): paper function names, errors
with the server's reason, tick/notification callbacks over server-sent events."""

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ecovisor.api.app import create_app
from ecovisor.api.state_source import Counters, IntervalCounter
from ecovisor.client import (
    AuthenticationError,
    CommandRejected,
    EcovisorClient,
    ForbiddenError,
    NotFoundError,
    Tick,
    UnavailableError,
)
from ecovisor.contract.commands import verify_command
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import ContainerTickData, Notification, TickData
from tests.fakes.api import InMemoryBus, InMemoryStateSource, accept_and_apply, serve
from tests.fakes.sites import TWO_APPS

SITE = TWO_APPS
WEB, BATCH = "web-token-123456", "batch-token-654321"
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def td(carbon: float = 200.0) -> TickData:
    return TickData(
        tick_s=1.0,
        next_solar_w=3.0,
        solar_w=2.5,
        grid_w=1.5,
        grid_carbon_g_per_kwh=carbon,
        battery_charge_level_wh=4.25,
        battery_discharge_rate_w=0.5,
        battery_charge_rate_setting_w=0.0,
        battery_max_discharge_setting_w=5.0,
        app_power_w=4.5,
        unserved_w=0.0,
        carbon_g=0.00008,
        containers={"web-1": ContainerTickData(power_w=4.5, powercap_w=None)},
    )


class LoopBus(InMemoryBus):
    """InMemoryBus that remembers the server's event loop so a test thread can inject
    notifications the way the Kafka consumer would."""

    loop: asyncio.AbstractEventLoop | None = None

    async def start(self) -> None:
        self.loop = asyncio.get_running_loop()

    def inject(self, n: Notification) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.hub.dispatch, n)


@dataclass
class Served:
    url: str
    bus: LoopBus
    state: InMemoryStateSource


@pytest.fixture()
def served() -> Iterator[Served]:
    state = InMemoryStateSource()
    state.set_tick("web", 7, T0, td())
    state.counter_values["web"] = Counters(
        app="web",
        t1=T0,
        t2=T0 + timedelta(seconds=60),
        energy_j=270.0,
        carbon_g=0.015,
        containers={"web-1": IntervalCounter(energy_j=270.0, carbon_g=0.015)},
    )
    bus = LoopBus()
    with serve(create_app(parse_config(SITE), state, bus), start_timeout=10) as url:
        yield Served(url, bus, state)


def test_getters_with_the_papers_names(served: Served) -> None:
    with EcovisorClient(served.url, WEB) as eco:
        assert eco.app == "web"
        assert eco.get_solar_power() == 2.5
        assert eco.get_grid_power() == 1.5
        assert eco.get_grid_carbon() == 200.0
        assert eco.get_battery_discharge_rate() == 0.5
        assert eco.get_battery_charge_level() == 4.25
        assert eco.get_container_powercap("web-1") is None
        assert eco.get_container_power("web-1") == 4.5
        assert eco.get_app_power() == 4.5
        t2 = T0 + timedelta(seconds=60)
        assert eco.get_app_energy(T0, t2) == 270.0
        assert eco.get_app_carbon(T0, t2) == 0.015
        assert eco.get_container_energy("web-1", T0, t2) == 270.0
        assert eco.get_container_carbon("web-1", T0, t2) == 0.015
        with pytest.raises(ValueError, match="timezone-aware"):
            eco.get_app_energy(datetime(2024, 1, 1), t2)


def test_setters_publish_and_wait(served: Served) -> None:
    served.bus.responder = accept_and_apply
    with EcovisorClient(served.url, WEB) as eco:
        r = eco.set_container_powercap("web-1", 2.0)
        assert r.status == "published" and r.ok
        r = eco.set_container_powercap("web-1", None, wait=True)
        assert r.status == "applied" and r.data["watts"] is None
        eco.set_battery_charge_rate(1.0)
        eco.set_battery_max_discharge(3.0)
        eco.set_carbon_rate("web-1", 20.0, window_s=30)
        eco.set_carbon_budget(1.5, period_s=600)
        eco.suspend_container("web-1")
        eco.resume_container("web-1")
        eco.scale_container("web-1", 2.0)
        eco.scale_app("web-worker", 3)
    types = [c.type for c in served.bus.published]
    assert types == [
        "set_container_powercap",
        "set_container_powercap",
        "set_battery_charge_rate",
        "set_battery_max_discharge",
        "set_carbon_rate",
        "set_carbon_budget",
        "suspend_container",
        "resume_container",
        "scale_container",
        "scale_app",
    ]
    assert all(c.app == "web" and verify_command(c, WEB) for c in served.bus.published)


def test_rejection_raises_with_the_reason(served: Served) -> None:
    def reject(cmd):
        return [
            Notification(
                site="s1",
                time=T0,
                app=cmd.app,
                type="command_rejected",
                command_id=cmd.command_id,
                reason="below idle floor",
            )
        ]

    served.bus.responder = reject
    with EcovisorClient(served.url, WEB, wait=True) as eco, pytest.raises(CommandRejected) as e:
        eco.set_container_powercap("web-1", 0.01)
    assert e.value.result.status == "rejected" and "below idle floor" in str(e.value)


def test_errors_carry_the_servers_reason(served: Served) -> None:
    with pytest.raises(AuthenticationError, match="invalid token"):
        EcovisorClient(served.url, "wrong-token-000").get_solar_power()
    with pytest.raises(ForbiddenError, match="belongs to app 'web', not 'batch'"):
        EcovisorClient(served.url, WEB, app="batch").get_solar_power()
    eco = EcovisorClient(served.url, WEB)
    with pytest.raises(ForbiddenError, match="not a container of 'web'"):
        eco.set_container_powercap("batch-1", 1.0)
    with pytest.raises(NotFoundError, match="no container 'ghost'"):
        eco.get_container_power("ghost")
    served.state.states.clear()
    with pytest.raises(UnavailableError, match="no state"):
        eco.get_grid_carbon()
    assert served.bus.published == []


def _wait_subscribed(bus: LoopBus, app: str) -> None:
    deadline = time.monotonic() + 5
    while bus.hub.subscribers(app) == 0:
        assert time.monotonic() < deadline, "SSE stream did not subscribe"
        time.sleep(0.01)


def test_tick_and_notification_callbacks_over_sse(served: Served) -> None:
    eco = EcovisorClient(served.url, WEB)
    ticks: list[Tick] = []
    changes: list[Notification] = []

    @eco.on_tick
    def tick(t: Tick) -> None:
        ticks.append(t)

    @eco.on("carbon_change", "battery_full")
    def changed(n: Notification) -> None:
        changes.append(n)

    out: list[int] = []
    th = threading.Thread(target=lambda: out.append(eco.run(max_events=3)))
    th.start()
    _wait_subscribed(served.bus, "web")
    base = dict(site="s1", time=T0)
    served.bus.inject(
        Notification(**base, app="batch", type="tick", tick=1, data=td().model_dump())
    )
    served.bus.inject(Notification(**base, app="web", type="carbon_change", data={"g": 300}))
    served.bus.inject(
        Notification(**base, app="web", type="tick", tick=8, data=td(333.0).model_dump())
    )
    served.bus.inject(Notification(**base, app="web", type="battery_full"))
    th.join(10)
    assert out == [3]
    assert [t.index for t in ticks] == [8]
    assert ticks[0].data.grid_carbon_g_per_kwh == 333.0
    assert [n.type for n in changes] == ["carbon_change", "battery_full"]
    assert all(n.app == "web" for n in changes)


def test_stop_ends_run_from_another_thread(served: Served) -> None:
    eco = EcovisorClient(served.url, WEB)
    out: list[int] = []
    th = threading.Thread(target=lambda: out.append(eco.run()))
    th.start()
    _wait_subscribed(served.bus, "web")
    eco.stop()
    th.join(5)
    assert not th.is_alive() and out == [0]


def test_run_raises_on_bad_token_instead_of_retrying(served: Served) -> None:
    eco = EcovisorClient(served.url, "wrong-token-000", app="web")
    with pytest.raises(AuthenticationError):
        eco.run(max_events=1)


# --- robustness of the notification stream ------------------------------------------


class ScriptedSSE:
    """A tiny real HTTP server that plays one script of SSE events per connection, then
    holds the connection open without a byte (no keep-alive): an API host that vanished
    without closing the socket. Records each connection's Last-Event-ID."""

    def __init__(self, scripts: list[list[tuple[str, str, str]]]) -> None:
        self.scripts, self.seen = scripts, []
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                i = len(outer.seen)
                outer.seen.append(self.headers.get("Last-Event-ID"))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                for event, eid, data in outer.scripts[min(i, len(outer.scripts) - 1)]:
                    self.wfile.write(f"event: {event}\nid: {eid}\ndata: {data}\n\n".encode())
                self.wfile.flush()
                outer.done.wait(30)  # silent, connection left open

            def log_message(self, *a: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.done.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def scripted() -> Iterator[Callable[[list[list[tuple[str, str, str]]]], ScriptedSSE]]:
    made: list[ScriptedSSE] = []

    def make(scripts: list[list[tuple[str, str, str]]]) -> ScriptedSSE:
        made.append(ScriptedSSE(scripts))
        return made[-1]

    yield make
    for s in made:
        s.close()


def tick_json(k: int, data: dict | None = None) -> str:
    n = Notification(site="s1", time=T0, app="web", type="tick", tick=k,
                     data=td().model_dump() if data is None else data)  # fmt: skip
    return n.model_dump_json()


READY = ("ready", "0:4", '{"app": "web", "resumed": false}')


def test_stream_read_timeout_is_a_few_ping_intervals() -> None:
    assert EcovisorClient("http://x", WEB, app="web").stream_read_timeout == 5.0
    assert EcovisorClient("http://x", WEB, app="web", ping_s=15).stream_read_timeout == 45.0
    eco = EcovisorClient("http://x", WEB, app="web", stream_read_timeout=2.0)
    assert eco.stream_read_timeout == 2.0


def test_a_silent_stream_times_out_and_run_resumes_after_the_last_id(scripted) -> None:
    """The host sends ``ready`` and a tick, then nothing (not even a keep-alive):
    run() must not block for good but reconnect with the last id it handled."""
    srv = scripted([
        [READY, ("tick", "0:5", tick_json(5))],
        [("ready", "0:5", '{"app": "web", "resumed": true}'), ("tick", "0:6", tick_json(6))],
    ])  # fmt: skip
    eco = EcovisorClient(srv.url, WEB, app="web", stream_read_timeout=0.5)
    ticks: list[int | None] = []
    eco.on_tick(lambda t: ticks.append(t.index))
    out: list[int] = []
    th = threading.Thread(target=lambda: out.append(eco.run(max_events=2, reconnect_s=0.1)),
                          daemon=True)  # fmt: skip
    th.start()
    th.join(10)
    alive = th.is_alive()
    eco.stop()
    assert not alive, "run() blocked on a silent stream"
    assert out == [2] and ticks == [5, 6]
    assert srv.seen == [None, "0:5"]
    assert eco.last_event_id == "0:6"


def test_unreadable_notifications_are_logged_and_skipped(scripted, caplog) -> None:
    """Not JSON, an unknown type: logged with the event id and skipped for good (the id
    advances past them); an envelope field this client does not know is ignored."""
    newer = json.loads(tick_json(7)) | {"priority": "high"}
    srv = scripted([[
        READY,
        ("tick", "0:5", "{not json"),
        ("tick_v2", "0:6", tick_json(6).replace('"tick"', '"tick_v2"', 1)),
        ("tick", "0:7", json.dumps(newer)),
    ]])  # fmt: skip
    eco = EcovisorClient(srv.url, WEB, app="web", stream_read_timeout=5)
    ticks: list[int | None] = []
    eco.on_tick(lambda t: ticks.append(t.index))
    with caplog.at_level(logging.WARNING, "ecovisor.client"):
        assert eco.run(max_events=1) == 1
    assert ticks == [7] and eco.last_event_id == "0:7"
    skipped = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert len(skipped) == 2
    assert "event id 0:5" in skipped[0] and "json" in skipped[0].lower()
    assert "event id 0:6" in skipped[1] and "type" in skipped[1]


def test_a_bad_tick_is_skipped_and_newer_tick_fields_are_ignored(served: Served, caplog) -> None:
    """A tick without ``tick_s`` is logged (event id, reason) and skipped; one with
    fields this client does not know (top level and per container) is delivered."""
    eco = EcovisorClient(served.url, WEB)
    ticks: list[Tick] = []
    eco.on_tick(ticks.append)
    out: list[int] = []
    th = threading.Thread(target=lambda: out.append(eco.run(max_events=2)))
    th.start()
    _wait_subscribed(served.bus, "web")
    base = dict(site="s1", time=T0, app="web", type="tick")
    bad = td().model_dump()
    del bad["tick_s"]
    newer = td(333.0).model_dump()
    newer["water_l"] = 1.0
    newer["containers"]["web-1"]["gpu_w"] = 2.0
    with caplog.at_level(logging.WARNING, "ecovisor.client"):
        served.bus.inject(Notification(**base, tick=8, data=bad))
        served.bus.inject(Notification(**base, tick=9, data=newer))
        served.bus.inject(Notification(**base, tick=10, data=td().model_dump()))
        th.join(10)
    assert out == [2]
    assert [t.index for t in ticks] == [9, 10]
    assert ticks[0].data.grid_carbon_g_per_kwh == 333.0
    assert ticks[0].data.containers["web-1"].power_w == 4.5
    (msg,) = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert "tick_s" in msg and "event id" in msg and "tick 8" in msg


def test_a_handler_exception_is_logged_and_the_stream_goes_on(served: Served, caplog) -> None:
    """A bug in a handler is logged with its traceback and the next tick is handled;
    KeyboardInterrupt (not an Exception) still ends run()."""
    eco = EcovisorClient(served.url, WEB)
    ticks: list[int | None] = []

    @eco.on_tick
    def tick(t: Tick) -> None:
        if t.index == 8:
            raise RuntimeError("bug in the policy")
        if t.index == 10:
            raise KeyboardInterrupt
        ticks.append(t.index)

    caught: list[BaseException] = []

    def go() -> None:
        try:
            eco.run()
        except BaseException as e:  # noqa: BLE001 - the test looks at it
            caught.append(e)

    th = threading.Thread(target=go)
    th.start()
    _wait_subscribed(served.bus, "web")
    base = dict(site="s1", time=T0, app="web", type="tick")
    with caplog.at_level(logging.ERROR, "ecovisor.client"):
        for k in (8, 9, 10):
            served.bus.inject(Notification(**base, tick=k, data=td().model_dump()))
        th.join(10)
    assert not th.is_alive() and ticks == [9]
    assert len(caught) == 1 and isinstance(caught[0], KeyboardInterrupt)
    (rec,) = [r for r in caplog.records if "failed" in r.getMessage()]
    assert "event id" in rec.getMessage() and "bug in the policy" in str(rec.exc_info[1])
