"""Settings an application controls, as they change: apply a change, queue it when it
is accepted (it applies from the next tick), and the settings in force in a tick.

Pure: no clocks, no I/O. A command accepted during tick k applies from tick k+1.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from ecovisor.core.entries import LedgerError
from ecovisor.core.shares import AppShare
from ecovisor.core.state import (
    MAX_PENDING,
    AppSettings,
    AppState,
    PendingChange,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
    SetNotifyThresholds,
    SettingsChange,
    SiteState,
)

V = TypeVar("V")


def _set(mapping: Mapping[str, V], key: str, value: V | None) -> dict[str, V]:
    """A copy of ``mapping`` with ``key`` set to ``value`` (``None`` removes it)."""
    out = dict(mapping)
    if value is None:
        out.pop(key, None)
    else:
        out[key] = value
    return out


def apply_change(settings: AppSettings, change: SettingsChange) -> AppSettings:
    """The settings after one change (pure)."""
    if isinstance(change, SetBatteryChargeRate):
        return settings.model_copy(update={"charge_rate_w": change.watts})
    if isinstance(change, SetBatteryMaxDischarge):
        return settings.model_copy(update={"max_discharge_w": change.watts})
    if isinstance(change, SetContainerPowercap):
        caps = _set(settings.container_caps_w, change.container, change.watts)
        return settings.model_copy(update={"container_caps_w": caps})
    if isinstance(change, SetCarbonRate):
        rates = _set(settings.carbon_rates, change.container, change.limit)
        return settings.model_copy(update={"carbon_rates": rates})
    if isinstance(change, SetCarbonBudget):
        return settings.model_copy(update={"carbon_budget": change.budget})
    if isinstance(change, SetNotifyThresholds):
        return settings.model_copy(update={"notify": change.notify})
    raise TypeError(f"unknown settings change {change!r}")


def apply_settings(state: AppState, change: SettingsChange) -> AppState:
    """Apply a change now, before the next tick is computed (tests, tools, replays that
    already resolved timing). The ledger should use ``queue_change``."""
    return state.model_copy(update={"settings": apply_change(state.settings, change)})


def queue_change(state: AppState, change: SettingsChange, accepted_k: int) -> AppState:
    """Record a change accepted during tick ``accepted_k``; it applies from tick
    ``accepted_k + 1`` (or the next tick computed, if that is later). Changes apply in
    the order they were queued. At most ``MAX_PENDING`` changes wait at a time."""
    if len(state.pending) >= MAX_PENDING:
        raise LedgerError(f"app {state.app!r}: {MAX_PENDING} changes already pending")
    return state.model_copy(
        update={"pending": (*state.pending, PendingChange(accepted_k=accepted_k, change=change))}
    )


def queue_site_change(state: SiteState, app: str, change: SettingsChange,
                      accepted_k: int) -> SiteState:
    if app not in state.apps:
        raise LedgerError(f"unknown app {app!r} at site {state.site!r}")
    apps = dict(state.apps)
    apps[app] = queue_change(apps[app], change, accepted_k)
    return state.model_copy(update={"apps": apps})


def settings_in_force(state: AppState, k: int) -> tuple[AppSettings, tuple[PendingChange, ...]]:
    settings = state.settings
    if not state.pending:
        return settings, ()
    keep = []
    for p in state.pending:
        if p.accepted_k < k:
            settings = apply_change(settings, p.change)
        else:
            keep.append(p)
    return settings, tuple(keep)


def max_discharge_setting_w(share: AppShare, settings: AppSettings) -> float:
    """The max-discharge setting an app sees (tick data, metrics): its own, else the
    share's limit (unclipped; ``discharge_in_force`` is what the tick applies)."""
    return share.discharge_limit_w if settings.max_discharge_w is None else settings.max_discharge_w


def discharge_in_force(share: AppShare, settings: AppSettings) -> float:
    """Max discharge in force with Rc = 0: Rd clipped to the share's limit."""
    if settings.max_discharge_w is None:
        return share.discharge_limit_w
    return min(share.discharge_limit_w, settings.max_discharge_w)
