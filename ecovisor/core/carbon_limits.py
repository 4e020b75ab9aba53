"""Carbon tracking beyond the per-tick booking: carbon rate windows (set_carbon_rate),
carbon budgets (set_carbon_budget). SCI is in ``ecovisor.core.sci``.

The ecovisor tracks and notifies; enforcing a rate or budget is a policy's job.
Pure functions over integer µg; the tracking state lives in ``AppState.tracking``.
"""

from __future__ import annotations

import math

from ecovisor.core.state import BudgetTracker, CarbonBudget, Level, RateWindow
from ecovisor.core.units import UG_PER_G

MAX_BUCKETS = 600  # a rate window keeps at most this many ints


def ticks_in(seconds: float, tick_s: float) -> int:
    """Whole ticks covering ``seconds`` (at least one); a window or period of 60 s at
    Δt = 60 s is one tick, at Δt = 7 s it is 9 ticks (63 s)."""
    return max(1, math.ceil(seconds / tick_s - 1e-9))


def level_of(value: float, limit: float, near_fraction: float) -> Level:
    """``exceeded`` above the limit, ``near`` from ``near_fraction * limit``, else ok."""
    if value > limit:
        return Level.exceeded
    if value >= near_fraction * limit:
        return Level.near
    return Level.ok


_RANK = {Level.ok: 0, Level.near: 1, Level.exceeded: 2}


def rose(before: Level, after: Level) -> bool:
    """True when ``after`` is a worse level than ``before`` (a notification is due)."""
    return _RANK[after] > _RANK[before]


# --- carbon rate (per container, mg/s over a sliding window) ----------------------------


def push_window(win: RateWindow | None, window_ticks: int, k: int, value_ug: int) -> RateWindow:
    """Add tick ``k``'s carbon. Ticks between the last one pushed and ``k`` count as
    zero. A new or resized window starts empty (its level is kept).

    Up to ``MAX_BUCKETS`` ticks the window is exact (one value per tick); a longer one
    keeps ``MAX_BUCKETS`` sums of ``ceil(window_ticks / MAX_BUCKETS)`` ticks, aligned on
    ``k``, and drops a whole bucket at a time."""
    if win is None or win.window_ticks != window_ticks:
        level = Level.ok if win is None else win.level
        win = RateWindow(
            window_ticks=window_ticks, bucket_ticks=-(-window_ticks // MAX_BUCKETS), level=level
        )
    b = win.bucket_ticks
    nb = -(-window_ticks // b)
    values = win.values_ug
    if win.last_k is None or not values:
        values = (value_ug,)
    else:
        gap = k // b - win.last_k // b
        if gap <= 0:
            values = values[:-1] + (values[-1] + value_ug,)
        else:
            values = values + (0,) * min(gap - 1, nb) + (value_ug,)
    return RateWindow(
        window_ticks=window_ticks, bucket_ticks=b, last_k=k, values_ug=values[-nb:], level=win.level
    )


def window_rate_mg_per_s(win: RateWindow, tick_s: float) -> float:
    """Mean carbon rate over the whole window (ticks not yet seen count as zero)."""
    return sum(win.values_ug) / 1000.0 / (win.window_ticks * tick_s)


# --- carbon budget (per app, g per period with reset) -----------------------------------


def advance_budget(tracker: BudgetTracker | None, budget: CarbonBudget, k: int,
                   tick_s: float, carbon_ug: int) -> BudgetTracker:
    """Add tick ``k``'s app carbon to the budget period containing ``k``.

    A period starts at the first tick the budget is in force and lasts
    ``ticks_in(period_s, tick_s)`` ticks; at a reset ``used`` and the level go back to
    zero and ``ok``. Changing ``period_s`` starts a new period; changing only
    ``budget_g`` keeps what was used."""
    if tracker is None or tracker.period_s != budget.period_s:
        tracker = BudgetTracker(period_s=budget.period_s, period_start_k=k)
    start, used, level = tracker.period_start_k, tracker.used_ug, tracker.level
    if budget.period_s is not None:
        n = ticks_in(budget.period_s, tick_s)
        if k >= start + n:
            start += (k - start) // n * n
            used, level = 0, Level.ok
    return BudgetTracker(period_s=budget.period_s, period_start_k=start,
                         used_ug=used + carbon_ug, level=level)


def budget_ug(budget: CarbonBudget) -> int:
    return round(budget.budget_g * UG_PER_G)
