"""Notifications of one app tick, derived purely from (previous state, ledger entry,
thresholds in the entry's settings). Tracking state (last notified values, carbon rate
windows, the budget period) is returned for ``AppState.tracking``.

Rules (docs/core.md "Events"):

- ``tick``: every tick.
- ``solar_change`` / ``carbon_change``: ``|new - ref| >= max(abs, rel * |ref|)`` and
  ``new != ref``; ``ref`` is the last notified value (the first tick only sets it).
- ``battery_full``: the store reached usable capacity this tick, or ``Rc > 0`` was in
  force and the store is full (``Rc`` resets to 0 with this event).
- ``battery_empty``: the store came down to the reserve this tick.
- ``unserved``: any unserved energy in the tick.
- ``carbon_rate_near`` / ``carbon_rate_exceeded``: per container with a limit, on the
  tick its window rate rises to the level (``near`` from ``near_fraction * limit``,
  ``exceeded`` above the limit). Falling back re-arms silently.
- ``carbon_budget_near`` / ``carbon_budget_exceeded``: the same for the app's carbon in
  the current budget period; the period reset re-arms.
"""

from __future__ import annotations

from typing import Any

from ecovisor.core.carbon_limits import (
    advance_budget,
    budget_ug,
    level_of,
    push_window,
    rose,
    ticks_in,
    window_rate_mg_per_s,
)
from ecovisor.core.entries import AppLedgerEntry, Event, EventKind
from ecovisor.core.state import AppState, EventTracking, Level, RateWindow
from ecovisor.core.units import MJ_PER_WH, UG_PER_G, mj_to_j, mj_to_power


def significant(new: float, ref: float, abs_th: float, rel_th: float) -> bool:
    """Is the change from ``ref`` to ``new`` worth a notification?"""
    d = abs(new - ref)
    return d > 0 and d >= max(abs_th, rel_th * abs(ref))


def _change(out: list[Event], kind: EventKind, new: float, ref: float | None, abs_th: float,
            rel_th: float, unit: str, base: dict[str, Any]) -> float:
    """Append a ``kind`` event when ``new`` moved significantly from the last notified
    ``ref``; return the reference to keep (the first value only sets it)."""
    if ref is None:
        return new
    if not significant(new, ref, abs_th, rel_th):
        return ref
    out.append(Event(kind=kind, value=new, previous=ref, unit=unit, **base))
    return new


def derive_events(prev: AppState, entry: AppLedgerEntry) -> tuple[EventTracking, tuple[Event, ...]]:
    """Events of ``entry`` (computed from ``prev``) and the tracking state after it."""
    tr = prev.tracking
    st = entry.settings
    th = st.notify
    dt = entry.tick_s
    base = {"site": entry.site, "app": entry.app, "k": entry.k, "t_start": entry.t_start}
    out: list[Event] = [Event(kind=EventKind.tick, **base)]

    # solar and carbon changes
    solar_ref = _change(out, EventKind.solar_change, mj_to_power(entry.solar_mj, dt),
                        tr.solar_ref_w, th.solar_change_abs_w, th.solar_change_rel, "W", base)
    i_ref = _change(out, EventKind.carbon_change, entry.intensity_g_per_kwh, tr.intensity_ref,
                    th.carbon_change_abs_g_per_kwh, th.carbon_change_rel, "gCO2eq/kWh", base)

    # battery
    bat = entry.battery
    full = bat.after_mj >= bat.usable_mj
    if full and (bat.before_mj < bat.usable_mj or st.charge_rate_w > 0):
        out.append(Event(kind=EventKind.battery_full, value=bat.after_mj / MJ_PER_WH,
                         threshold=bat.usable_mj / MJ_PER_WH, unit="Wh", **base))
    if bat.after_mj <= bat.reserve_mj < bat.before_mj:
        out.append(Event(kind=EventKind.battery_empty, value=bat.after_mj / MJ_PER_WH,
                         threshold=bat.reserve_mj / MJ_PER_WH, unit="Wh", **base))

    if entry.flows.unserved > 0:
        out.append(Event(kind=EventKind.unserved, value=mj_to_j(entry.flows.unserved),
                         unit="J", **base))

    # carbon rate per container with a limit
    windows: dict[str, RateWindow] = {}
    for c in sorted(st.carbon_rates):
        lim = st.carbon_rates[c]
        line = entry.containers.get(c)
        win = push_window(
            tr.rate_windows.get(c),
            ticks_in(lim.window_s, dt),
            entry.k,
            line.carbon_ug if line is not None else 0,
        )
        rate = window_rate_mg_per_s(win, dt)
        level = level_of(rate, lim.rate_mg_per_s, th.near_fraction)
        if rose(win.level, level):
            kind = (EventKind.carbon_rate_exceeded if level is Level.exceeded
                    else EventKind.carbon_rate_near)
            out.append(Event(kind=kind, container=c, value=rate, threshold=lim.rate_mg_per_s,
                             unit="mg/s", **base))
        windows[c] = win.model_copy(update={"level": level})

    # carbon budget of the app
    budget = None
    if st.carbon_budget is not None:
        budget = advance_budget(tr.budget, st.carbon_budget, entry.k, dt, entry.total.carbon_ug)
        limit = budget_ug(st.carbon_budget)
        level = level_of(budget.used_ug, limit, th.near_fraction)
        if rose(budget.level, level):
            kind = (EventKind.carbon_budget_exceeded if level is Level.exceeded
                    else EventKind.carbon_budget_near)
            out.append(Event(kind=kind, value=budget.used_ug / UG_PER_G,
                             threshold=st.carbon_budget.budget_g, unit="g", **base))
        budget = budget.model_copy(update={"level": level})

    tracking = EventTracking(solar_ref_w=solar_ref, intensity_ref=i_ref,
                             rate_windows=windows, budget=budget)
    return tracking, tuple(out)
