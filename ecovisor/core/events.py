"""Notifications of one app tick, derived purely from (previous state, ledger entry,
thresholds in the entry's settings). Tracking state (last notified values, carbon rate
windows, the budget period) is returned for ``AppState.tracking``.

Rules (docs/core.md "Events"):

- ``tick``: every tick.
- ``solar_change`` / ``carbon_change``: ``|new - ref| >= max(abs, rel * |ref|)`` and
  ``new != ref``; ``ref`` is the last notified value (the first tick only sets it).
  Compared exactly (rationals: solar from its integer mJ, every float as written), so
  a change of exactly the threshold fires in the tick it happens.
- ``battery_full``: the store reached usable capacity this tick, or ``Rc > 0`` was in
  force and the store is full (``Rc`` resets to 0 with this event).
- ``battery_empty``: the store came down to the reserve this tick.
- ``unserved``: any unserved energy in the tick.
- ``carbon_rate_near`` / ``carbon_rate_exceeded``: per container with a limit, on the
  tick its window rate rises to the level (``near`` from ``near_fraction * limit``,
  ``exceeded`` above the limit). Falling back re-arms silently. A new or resized window
  starts from the container's recent carbon (``carbon_limits.seed_window``), so a limit
  set on a container already near or above it is notified in the first tick in force.
- ``carbon_budget_near`` / ``carbon_budget_exceeded``: the same for the app's carbon in
  the current budget period; the period reset re-arms.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from fractions import Fraction
from functools import lru_cache
from typing import Any

from ecovisor.core.account_lines import unchecked
from ecovisor.core.carbon_limits import (
    advance_budget,
    budget_ug,
    level_of,
    push_window,
    rose,
    seed_window,
    ticks_in,
    window_rate_mg_per_s,
)
from ecovisor.core.entries import AppLedgerEntry, Event, EventKind
from ecovisor.core.state import AppState, EventTracking, Level, RateWindow
from ecovisor.core.units import MJ_PER_J, MJ_PER_WH, UG_PER_G, mj_to_j, mj_to_power

Number = int | float | Fraction


@lru_cache(maxsize=1024)
def _as_written(x: float) -> Fraction:
    """A float as written (its shortest repr): 0.1 is 1/10, the threshold configured,
    not the binary float just above it."""
    return Fraction(repr(x))


def _exact(x: Number) -> Fraction:
    return _as_written(x) if isinstance(x, float) else Fraction(x)


def significant(new: Number, ref: Number, abs_th: Number, rel_th: Number) -> bool:
    """Is the change from ``ref`` to ``new`` worth a notification? Exact: in floats
    3.3 - 3.0 < 0.1 * 3.0, so a change of exactly 10 % would fire a tick late."""
    return _decide(float(new), float(ref), abs_th, rel_th,
                   lambda: (_exact(new), _exact(ref)))


def _decide(new: float, ref: float, abs_th: Number, rel_th: Number,
            exact: Callable[[], tuple[Fraction, Fraction]]) -> bool:
    """The rule in floats when they are clearly on one side of the threshold (their
    error is ~1e-16, the margin 1e-9), else in rationals (``exact()``): Fractions cost
    microseconds and the ledger checks two values per app tick."""
    d = abs(new - ref)
    th = max(float(abs_th), float(rel_th) * abs(ref))
    if not (math.isfinite(d) and math.isfinite(th)):
        return d > 0 and d >= th  # not reachable from validated inputs; no Fraction of inf
    margin = 1e-9 * max(d, th)
    if d > th + margin:
        return True
    if d < th - margin:
        return False
    n, r = exact()
    de = abs(n - r)
    return de > 0 and de >= max(_exact(abs_th), _exact(rel_th) * abs(r))


def _event(kind: EventKind, base: dict[str, Any], *, container: str | None = None,
           value: float | None = None, previous: float | None = None,
           threshold: float | None = None, unit: str | None = None) -> Event:
    """An event of this tick, built unchecked (``account_lines.unchecked``): its fields come from
    a checked entry; the figures are made floats as validation would."""
    return unchecked(Event, {
        "kind": kind, **base, "container": container,
        "value": None if value is None else float(value),
        "previous": None if previous is None else float(previous),
        "threshold": None if threshold is None else float(threshold), "unit": unit})


def _change(out: list[Event], kind: EventKind, new: float, ref: float | None, abs_th: float,
            rel_th: float, unit: str, base: dict[str, Any]) -> float:
    """Append a ``kind`` event when ``new`` moved significantly from the last notified
    ``ref``; return the reference to keep (the first value only sets it)."""
    if ref is None:
        return new
    if not significant(new, ref, abs_th, rel_th):
        return ref
    out.append(_event(kind, base, value=new, previous=ref, unit=unit))
    return new


def _solar_change(out: list[Event], tr: EventTracking, entry: AppLedgerEntry,
                  abs_w: float, rel: float, base: dict[str, Any]) -> int:
    """solar_change on the exact power ``solar_mj / Δt``; returns the reference (mJ per
    tick) to keep. A snapshot without ``solar_ref_mj`` compares with ``solar_ref_w``."""
    dt = entry.tick_s
    mj = entry.solar_mj
    if tr.solar_ref_mj is not None:
        ref_mj = tr.solar_ref_mj
    elif tr.solar_ref_w is not None:
        ref_mj = round(_exact(tr.solar_ref_w) * _exact(dt) * MJ_PER_J)
    else:
        return mj  # the first tick only sets the reference

    def exact() -> tuple[Fraction, Fraction]:
        per_w = MJ_PER_J * _exact(dt)  # mJ per tick of 1 W
        return Fraction(mj) / per_w, Fraction(ref_mj) / per_w

    if not _decide(mj_to_power(mj, dt), mj_to_power(ref_mj, dt), abs_w, rel, exact):
        return ref_mj
    out.append(_event(EventKind.solar_change, base, value=mj_to_power(mj, dt),
                      previous=mj_to_power(ref_mj, dt), unit="W"))
    return mj


def derive_events(prev: AppState, entry: AppLedgerEntry) -> tuple[EventTracking, tuple[Event, ...]]:
    """Events of ``entry`` (computed from ``prev``) and the tracking state after it."""
    tr = prev.tracking
    st = entry.settings
    th = st.notify
    dt = entry.tick_s
    base = {"site": entry.site, "app": entry.app, "k": entry.k, "t_start": entry.t_start}
    out: list[Event] = [_event(EventKind.tick, base)]

    # solar and carbon changes
    solar_ref = _solar_change(out, tr, entry, th.solar_change_abs_w, th.solar_change_rel, base)
    i_ref = _change(out, EventKind.carbon_change, entry.intensity_g_per_kwh, tr.intensity_ref,
                    th.carbon_change_abs_g_per_kwh, th.carbon_change_rel, "gCO2eq/kWh", base)

    # battery
    bat = entry.battery
    full = bat.after_mj >= bat.usable_mj
    if full and (bat.before_mj < bat.usable_mj or st.charge_rate_w > 0):
        out.append(_event(EventKind.battery_full, base, value=bat.after_mj / MJ_PER_WH,
                          threshold=bat.usable_mj / MJ_PER_WH, unit="Wh"))
    if bat.after_mj <= bat.reserve_mj < bat.before_mj:
        out.append(_event(EventKind.battery_empty, base, value=bat.after_mj / MJ_PER_WH,
                          threshold=bat.reserve_mj / MJ_PER_WH, unit="Wh"))

    if entry.flows.unserved > 0:
        out.append(_event(EventKind.unserved, base, value=mj_to_j(entry.flows.unserved),
                          unit="J"))

    # carbon rate per container with a limit
    windows: dict[str, RateWindow] = {}
    lines = entry.containers
    for c in sorted(st.carbon_rates):
        lim = st.carbon_rates[c]
        row = lines.index(c)
        n = ticks_in(lim.window_s, dt)
        prev_win = tr.rate_windows.get(c)
        if prev_win is None or prev_win.window_ticks != n:
            # a new or resized window starts from what the container emitted in it
            level = Level.ok if prev_win is None else prev_win.level
            prev_win = seed_window(tr.carbon_history.get(c), n, entry.k, level) or prev_win
        win = push_window(prev_win, n, entry.k, lines.carbon[row] if row is not None else 0)
        rate = window_rate_mg_per_s(win, dt)
        level = level_of(rate, lim.rate_mg_per_s, th.near_fraction)
        if rose(win.level, level):
            kind = (EventKind.carbon_rate_exceeded if level is Level.exceeded
                    else EventKind.carbon_rate_near)
            out.append(_event(kind, base, container=c, value=rate,
                              threshold=lim.rate_mg_per_s, unit="mg/s"))
        # (push_window kept the window's level: a new model only when it changed)
        windows[c] = (win if level is win.level
                      else unchecked(RateWindow, {**win.__dict__, "level": level}))

    # carbon budget of the app
    budget = None
    if st.carbon_budget is not None:
        budget = advance_budget(tr.budget, st.carbon_budget, entry.k, dt, entry.total.carbon_ug)
        limit = budget_ug(st.carbon_budget)
        level = level_of(budget.used_ug, limit, th.near_fraction)
        if rose(budget.level, level):
            kind = (EventKind.carbon_budget_exceeded if level is Level.exceeded
                    else EventKind.carbon_budget_near)
            out.append(_event(kind, base, value=budget.used_ug / UG_PER_G,
                              threshold=st.carbon_budget.budget_g, unit="g"))
        budget = budget.model_copy(update={"level": level})

    # the carbon history as it was: the site's step advances every app's together
    # (``carbon_limits.advance_site_histories``), under the site's bounds
    tracking = unchecked(EventTracking, {
        "solar_ref_w": mj_to_power(solar_ref, dt), "solar_ref_mj": solar_ref,
        "intensity_ref": i_ref, "rate_windows": windows, "carbon_history": tr.carbon_history,
        "budget": budget})
    return tracking, tuple(out)
