"""What the ledger tells the world when a tick closes, built from the core's tick result:
an app's ``TickData`` (the ``data`` of its ``tick`` notification), its events as
notifications, the site's aggregate battery setpoint and the site alerts.

Pure: contract messages only; the worker (streams/ledger_worker.py) picks topics and
keys. Field meanings: docs/ledger.md#notifications.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ecovisor.contract.actuation import BatterySetpoint
from ecovisor.contract.app_config import AppConfig
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.notifications import Notification
from ecovisor.contract.operator_messages import Alert
from ecovisor.core.entries import (
    AppLedgerEntry,
    ControllerSetpoints,
    EventKind,
    SiteAlert,
    SiteAlertKind,
)
from ecovisor.core.settings import max_discharge_setting_w
from ecovisor.core.shares import AppShare
from ecovisor.core.state import AppState
from ecovisor.core.units import mj_to_power, ug_to_g


def tick_data(
    app_cfg: AppConfig,
    share: AppShare,
    state: AppState,
    suspended: Iterable[str],
    entry: AppLedgerEntry,
    tick_s: float,
    next_solar_mj: int,
) -> dict[str, Any]:
    """The ``TickData`` of one app's tick as JSON: ``entry`` is its ledger entry,
    ``state`` its state after the tick (settings in force, budget tracking),
    ``next_solar_mj`` its share of the solar measured in this tick (used next tick)."""
    dt = tick_s
    f = entry.flows
    settings = state.settings
    budget = settings.carbon_budget
    tracker = state.tracking.budget
    off = set(suspended)
    caps, rates = settings.container_caps_w, settings.carbon_rates
    lines = entry.containers
    # every configured container, plus replicas that reported in this tick. Built as the
    # JSON of ``ContainerTickData`` directly (a validated model per container was a
    # third of this function at 1,000 containers): every figure comes from the checked
    # entry and settings; tests/unit/test_tick_notifications.py compares the two
    names, energy, carbon = lines.names, lines.energy, lines.carbon
    idle = lines.without_lines([c.id for c in app_cfg.containers])  # no line this tick
    if idle or names != tuple(sorted(names)):
        names = tuple(sorted([*names, *idle]))
        rows = [lines.index(c) for c in names]
        energy = tuple(0 if i is None else lines.energy[i] for i in rows)
        carbon = tuple(0 if i is None else lines.carbon[i] for i in rows)
    conts: dict[str, dict[str, Any]] = {
        c: {
            "power_w": mj_to_power(e, dt),  # (an idle container's 0 mJ is 0.0 W)
            "powercap_w": float(caps[c]) if c in caps else None,
            "suspended": c in off,
            "carbon_mg_per_s": g / 1000 / dt,
            "carbon_rate_limit_mg_per_s": (
                float(rates[c].rate_mg_per_s) if c in rates else None),
        }
        for c, e, g in zip(names, energy, carbon, strict=True)
    }
    # the top level as JSON directly too (a validated TickData and its dump were ~40 %
    # of this function for a small app); float() where a field is a float, so an int
    # figure is written as TickData would write it
    return {
        "tick_s": float(dt),
        "next_solar_w": mj_to_power(next_solar_mj, dt),
        "solar_w": mj_to_power(entry.solar_mj, dt),
        "grid_w": mj_to_power(f.grid_to_load + f.grid_to_battery, dt),
        "grid_carbon_g_per_kwh": float(entry.intensity_g_per_kwh),
        "battery_charge_level_wh": float(entry.battery.after_wh),
        "battery_discharge_rate_w": mj_to_power(f.battery_to_load, dt),
        "battery_charge_rate_setting_w": float(settings.charge_rate_w),
        "battery_max_discharge_setting_w": float(max_discharge_setting_w(share, settings)),
        "app_power_w": mj_to_power(entry.demand_mj, dt),
        "unserved_w": mj_to_power(f.unserved, dt),
        "carbon_g": ug_to_g(entry.total.carbon_ug),
        "carbon_budget_g": float(budget.budget_g) if budget else None,
        "carbon_budget_used_g": ug_to_g(tracker.used_ug) if (budget and tracker) else None,
        "containers": conts,
        "estimated": bool(entry.estimated),
    }


def event_notifications(
    site: str, when: datetime, app: str, k: int, entry: AppLedgerEntry
) -> list[Notification]:
    """The core's events of the tick (solar/carbon change, battery full/empty, carbon
    limits, ...) as notifications; the tick itself is the ``tick`` notification."""
    return [
        Notification(
            site=site,
            time=when,
            app=app,
            type=ev.kind.value,  # type: ignore[arg-type]
            tick=k,
            data=ev.model_dump(mode="json", exclude={"site", "app", "k", "kind"}),
        )
        for ev in entry.events
        if ev.kind is not EventKind.tick
    ]


def battery_setpoint(
    cfg: EcovisorConfig, when: datetime, k: int, c: ControllerSetpoints
) -> BatterySetpoint:
    """The site's aggregate battery setpoint of tick ``k`` (Σ of the apps' settings)."""
    site = cfg.site.id
    return BatterySetpoint(
        site=site,
        time=when,
        command_id=f"{site}-tick-{k}",
        device=cfg.site.battery.id if cfg.site.battery else None,
        charge_rate_w=c.grid_charge_w,
        max_discharge_w=c.max_discharge_w,
        net_power_w=c.net_battery_w,
        tick=k,
    )


def site_alert(site: str, when: datetime, a: SiteAlert) -> Alert:
    """A core site alert (grid limit, battery drift raised or cleared) as an ``Alert``."""
    kind = "grid_limit" if a.kind is SiteAlertKind.grid_limit else "battery_drift"
    cleared = a.kind is SiteAlertKind.battery_drift_cleared
    return Alert(
        site=site,
        time=when,
        kind=kind,  # type: ignore[arg-type]
        severity="warning",
        message=(
            f"{a.kind.value} at tick {a.k}: {a.value:.4g} {a.unit} (threshold {a.threshold:g})"
        ),
        data={**a.model_dump(mode="json"), "cleared": cleared},
    )
