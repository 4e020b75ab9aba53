"""Python client against the real API served by uvicorn on a free loopback port (the
ledger and Kafka replaced by the in-memory test doubles): paper function names, errors
with the server's reason, tick/notification callbacks over server-sent events."""

import asyncio
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

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
    assert all(c.app == "web" and c.token == WEB for c in served.bus.published)


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
