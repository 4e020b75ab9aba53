"""docs/write-a-policy.md: the complete example runs as shown (its code, its command line,
its decisions through the runner) and the testing snippet passes."""

import re
import subprocess
import sys
import types
from datetime import UTC, datetime
from pathlib import Path

from ecovisor.contract.notifications import ContainerTickData, Notification, TickData
from policies.base import AppView, PolicyRunner, SetBatteryChargeRate, SetContainerPowercap

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "write-a-policy.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", DOC, re.S)


def example_module() -> types.ModuleType:
    [code] = [b for b in BLOCKS if "class CarbonCaps" in b]
    mod = types.ModuleType("carbon_caps")
    exec(compile(code, "carbon_caps.py", "exec"), mod.__dict__)
    return mod


def tick(
    carbon: float, suspended: bool = False, charge: float = 0.0, cap: float | None = None
) -> TickData:
    return TickData(
        tick_s=1,
        next_solar_w=0,
        solar_w=0,
        grid_w=4,
        grid_carbon_g_per_kwh=carbon,
        battery_charge_level_wh=19.0,
        battery_discharge_rate_w=0,
        battery_charge_rate_setting_w=charge,
        battery_max_discharge_setting_w=0,
        app_power_w=4,
        unserved_w=0,
        carbon_g=0.0005,
        containers={
            "web-1": ContainerTickData(power_w=4, powercap_w=cap),
            "web-2": ContainerTickData(power_w=0, suspended=suspended),
        },
    )


class RecordingClient:
    """Stands in for EcovisorClient: records the paper-named calls the runner makes."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def set_container_powercap(self, c, w):
        self.calls.append(("set_container_powercap", c, w))
        return types.SimpleNamespace(command_id=f"id-{len(self.calls)}")

    def set_battery_charge_rate(self, w):
        self.calls.append(("set_battery_charge_rate", w))
        return types.SimpleNamespace(command_id=f"id-{len(self.calls)}")


def test_example_runs_through_the_runner() -> None:
    mod = example_module()
    policy = mod.CarbonCaps(threshold_g_per_kwh=300, low_w=2.0)
    client = RecordingClient()
    app = AppView(app="web", containers=("web-1", "web-2"), battery_full_wh=19.0)
    runner = PolicyRunner(policy, client, app)
    runner.start()

    def n(k: int, data: TickData) -> Notification:
        return Notification(
            site="s",
            time=datetime.now(UTC),
            app="web",
            type="tick",
            tick=k,
            data=data.model_dump(),
        )

    runner.on_tick(n(1, tick(420, suspended=True, charge=5.0)))
    assert client.calls == [
        ("set_container_powercap", "web-1", 2.0),
        ("set_battery_charge_rate", 0.0),
    ]
    client.calls.clear()
    # the cap is in force now; the grid gets cleaner: the cap is lifted
    runner.on_tick(n(2, tick(100, suspended=True, cap=2.0)))
    assert client.calls == [("set_container_powercap", "web-1", None)]
    client.calls.clear()
    # already uncapped: nothing is re-sent
    runner.on_tick(n(3, tick(100, suspended=True)))
    assert client.calls == []
    assert policy.decide(
        types.SimpleNamespace(data=tick(420), battery_full=False)  # duck-typed observation
    ) == [SetContainerPowercap("web-1", 2.0), SetContainerPowercap("web-2", 2.0)]
    assert SetBatteryChargeRate(0.0) not in policy.decide(
        types.SimpleNamespace(data=tick(420), battery_full=True)
    )


def test_example_command_line(tmp_path: Path) -> None:
    [code] = [b for b in BLOCKS if "class CarbonCaps" in b]
    f = tmp_path / "carbon_caps.py"
    f.write_text(code)
    r = subprocess.run(
        [sys.executable, str(f), "--help"], capture_output=True, text=True, cwd=ROOT, timeout=30
    )
    assert r.returncode == 0 and "--threshold" in r.stdout and "--config" in r.stdout
    # no API reachable: one clear line, non-zero status, no traceback
    r = subprocess.run(
        [sys.executable, str(f), "--app", "web", "--api", "http://127.0.0.1:9", "--token", "x"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=30,
    )
    assert r.returncode == 2 and "API not reachable" in r.stderr
    assert "Traceback" not in r.stderr


def test_testing_snippet_passes() -> None:
    mod = example_module()
    [snippet] = [b for b in BLOCKS if "p = CarbonCaps(" in b]
    exec(compile(snippet, "snippet", "exec"), {"CarbonCaps": mod.CarbonCaps})


def test_runner_gives_the_policy_the_published_forecasts() -> None:
    """With ``needs_forecasts`` the runner reads both forecast routes each tick and hands
    their points to ``decide`` in time order; a failing read gives no forecast, not an
    error; without it the observation carries none."""
    from policies.base import api_forecasts

    seen = []

    class Watch:
        def setup(self, app):
            return []

        def decide(self, obs):
            seen.append((obs.carbon_forecast, obs.solar_forecast))
            return []

    class ForecastClient(RecordingClient):
        def get_carbon_forecast(self):
            return {"points": [{"time": "2024-06-01T14:00:00+00:00", "value": 150.0},
                               {"time": "2024-06-01T13:00:00+00:00", "value": 200.0},
                               {"time": "not a time", "value": 1.0}]}  # fmt: skip

        def get_solar_forecast(self):
            raise ConnectionError("API down")

    client = ForecastClient()
    app = AppView(app="web", containers=("web-1",))
    note = Notification(site="s", time=datetime.now(UTC), app="web", type="tick", tick=1,
                        data=tick(100).model_dump())  # fmt: skip
    PolicyRunner(Watch(), client, app, forecasts=api_forecasts(client)).on_tick(note)
    PolicyRunner(Watch(), client, app).on_tick(note)
    h = datetime(2024, 6, 1, 13, tzinfo=UTC)
    assert seen == [
        (((h, 200.0), (h.replace(hour=14), 150.0)), ()),
        ((), ()),
    ]
