"""The ``tick`` notification's data (streams/tick_notifications.tick_data) is built as
JSON directly; it must equal what the validated ``TickData`` / ``ContainerTickData``
models give for the same tick, key order included, over ticks with caps, carbon-rate
limits, a budget, suspended containers and containers that did not report."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

import streams.ledger_worker as ledger_worker
from ecovisor.contract.app_config import AppConfig
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import ContainerTickData, TickData
from ecovisor.contract.telemetry import ContainerTelemetry
from ecovisor.core.entries import AppLedgerEntry
from ecovisor.core.settings import apply_settings, max_discharge_setting_w
from ecovisor.core.shares import AppShare
from ecovisor.core.state import (
    AppState,
    CarbonBudget,
    CarbonRateLimit,
    SetBatteryChargeRate,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
)
from ecovisor.core.tick_clock import to_us
from ecovisor.core.units import mj_to_power, ug_to_g
from streams.tick_notifications import tick_data

T0 = datetime(2024, 1, 1, tzinfo=UTC)
SITE = """schema_version: 1
site:
  id: tn
  shape: {tick_s: 2.0, solar_nameplate_w: 10.0, battery_capacity_wh: 20.0,
          grid_limit_w: 9.0, excess_solar: offer}
  nodes: [{id: n1, cores: 8}]
apps:
  - id: a
    token: tok-a-xxxxxxxx
    shares: {solar_fraction: 0.5, battery_capacity_wh: 10.0, grid_w: 5.0, initial_soc: 0.6}
    containers:
      - {id: a-1, node: n1, backend: {type: process, cgroup: t/a-1}}
      - {id: a-2, node: n1, backend: {type: process, cgroup: t/a-2}}
      - {id: a-quiet, node: n1, backend: {type: process, cgroup: t/a-3}}
  - id: b
    token: tok-b-xxxxxxxx
    shares: {solar_fraction: 0.4, battery_capacity_wh: 10.0, grid_w: 4.0}
    containers:
      - {id: b-1, node: n1, backend: {type: process, cgroup: t/b-1}}
"""


def reference(app_cfg: AppConfig, share: AppShare, state: AppState, suspended: Iterable[str],
              entry: AppLedgerEntry, tick_s: float, next_solar_mj: int) -> dict[str, Any]:
    """The same data through the validated models (the implementation before)."""
    dt, f, settings = tick_s, entry.flows, state.settings
    budget, tracker = settings.carbon_budget, state.tracking.budget
    off = set(suspended)
    conts = {}
    for c in sorted({c.id for c in app_cfg.containers} | set(entry.containers)):
        line = entry.containers.get(c)
        rate = settings.carbon_rates.get(c)
        conts[c] = ContainerTickData(
            power_w=mj_to_power(line.energy_mj if line else 0, dt),
            powercap_w=settings.container_caps_w.get(c), suspended=c in off,
            carbon_mg_per_s=(line.carbon_ug if line else 0) / 1000 / dt,
            carbon_rate_limit_mg_per_s=rate.rate_mg_per_s if rate else None)  # fmt: skip
    return TickData(
        tick_s=dt, next_solar_w=mj_to_power(next_solar_mj, dt),
        solar_w=mj_to_power(entry.solar_mj, dt),
        grid_w=mj_to_power(f.grid_to_load + f.grid_to_battery, dt),
        grid_carbon_g_per_kwh=entry.intensity_g_per_kwh,
        battery_charge_level_wh=entry.battery.after_wh,
        battery_discharge_rate_w=mj_to_power(f.battery_to_load, dt),
        battery_charge_rate_setting_w=settings.charge_rate_w,
        battery_max_discharge_setting_w=max_discharge_setting_w(share, settings),
        app_power_w=mj_to_power(entry.demand_mj, dt), unserved_w=mj_to_power(f.unserved, dt),
        carbon_g=ug_to_g(entry.total.carbon_ug),
        carbon_budget_g=budget.budget_g if budget else None,
        carbon_budget_used_g=ug_to_g(tracker.used_ug) if (budget and tracker) else None,
        containers=conts, estimated=entry.estimated,
    ).model_dump(mode="json")  # fmt: skip


def test_tick_data_equals_the_validated_models(monkeypatch: pytest.MonkeyPatch) -> None:
    compared = []

    def both(*args: Any) -> dict[str, Any]:
        got, want = tick_data(*args), reference(*args)
        assert json.dumps(got) == json.dumps(want)  # values, types and key order
        compared.append(got)
        return got

    monkeypatch.setattr(ledger_worker, "tick_data", both)
    led = ledger_worker.SiteLedger.new(parse_config(SITE))
    apps = dict(led.state.apps)
    apps["a"] = apply_settings(apps["a"], SetContainerPowercap(container="a-1", watts=3))
    apps["a"] = apply_settings(apps["a"], SetCarbonRate(
        container="a-2", limit=CarbonRateLimit(rate_mg_per_s=0.25)))  # fmt: skip
    apps["a"] = apply_settings(apps["a"], SetCarbonBudget(
        budget=CarbonBudget(budget_g=2.0, period_s=3600.0)))  # fmt: skip
    apps["b"] = apply_settings(apps["b"], SetBatteryChargeRate(watts=1.5))
    led.state = led.state.model_copy(update={"apps": apps})
    led.suspended["a"] = ["a-2"]
    joules = {"a-1": 0.0, "a-2": 0.0, "b-1": 0.0}  # a-quiet never reports
    for k in range(12):
        t = T0 + timedelta(seconds=2 * k + 1)
        for i, c in enumerate(joules):
            joules[c] += (1 + (k * (i + 3)) % 5) * 0.7
            led.clock.offer(ContainerTelemetry(
                site="tn", time=t, source=f"p-{c}", seq=k, app=c[0], container=c,
                cpu_s=0.0, energy_j=round(joules[c], 3)))  # fmt: skip
        led.close(to_us((T0 + timedelta(seconds=2 * k + 2.6)).timestamp()))
    assert len(compared) >= 20  # both apps, most ticks
    last_a = [d for d in compared if "a-1" in d["containers"]][-1]
    assert last_a["containers"]["a-1"]["powercap_w"] == 3.0
    assert last_a["containers"]["a-2"]["suspended"] is True
    assert last_a["containers"]["a-quiet"]["power_w"] == 0.0
    assert last_a["carbon_budget_g"] == 2.0
