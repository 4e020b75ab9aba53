"""Carbon tracking beyond the per-tick booking: carbon rate windows (set_carbon_rate),
carbon budgets (set_carbon_budget). SCI is in ``ecovisor.core.sci``.

The ecovisor tracks and notifies; enforcing a rate or budget is a policy's job.
Pure functions over integer µg; the tracking state lives in ``AppState.tracking``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

from ecovisor.core.account_lines import unchecked
from ecovisor.core.apportion import largest_remainder
from ecovisor.core.entries import AppLedgerEntry
from ecovisor.core.state import (
    AppState,
    BudgetTracker,
    CarbonBudget,
    CarbonHistory,
    EventTracking,
    Level,
    RateWindow,
)
from ecovisor.core.units import UG_PER_G

MAX_BUCKETS = 600  # a rate window keeps at most this many ints
MAX_WINDOW_S = 86_400.0  # CarbonRateLimit.window_s is at most a day
# A container's carbon history (``CarbonHistory``): the last HISTORY_EXACT ticks one by
# one (so every window up to 65 ticks, the default 60 s at Δt = 1 s, starts exactly),
# then tiers of HISTORY_BUCKETS buckets, each tier's buckets HISTORY_RATIO times longer,
# back to the largest window. A day at Δt = 1 s is 236 ints instead of 86,400.
HISTORY_EXACT = 64
HISTORY_BUCKETS = 32
HISTORY_RATIO = 4


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
    zero. A window of another size is replaced by an empty one (its level is kept);
    ``seed_window`` first fills a new or resized window from the container's history.

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
    return unchecked(RateWindow, {"window_ticks": window_ticks, "bucket_ticks": b,
                                  "last_k": k, "values_ug": values[-nb:], "level": win.level})


def window_rate_mg_per_s(win: RateWindow, tick_s: float) -> float:
    """Mean carbon rate over the whole window (ticks not yet seen count as zero)."""
    return sum(win.values_ug) / 1000.0 / (win.window_ticks * tick_s)


# --- a container's recent carbon, to start a window set later -------------------------


@lru_cache(maxsize=64)
def history_tiers(max_ticks: int) -> tuple[tuple[int, int], ...]:
    """(bucket ticks, buckets kept) of each tier of a history covering ``max_ticks``.

    Tier 0 is one tick per bucket; tier 1's buckets are HISTORY_EXACT * RATIO / BUCKETS
    ticks (so it reaches about RATIO times further back than tier 0), each further tier
    RATIO times longer; every bucket length divides the next, so a coarse bucket is a
    whole number of finer ones. A tier is added until the last covers ``max_ticks``."""
    tiers = [(1, min(max_ticks, HISTORY_EXACT))]
    b = HISTORY_EXACT * HISTORY_RATIO // HISTORY_BUCKETS
    while (tiers[-1][1] - 1) * tiers[-1][0] + 1 < max_ticks:
        tiers.append((b, min(HISTORY_BUCKETS, -(-max_ticks // b) + 1)))
        b *= HISTORY_RATIO
    return tuple(tiers)


def push_history(h: CarbonHistory | None, max_ticks: int, k: int, value_ug: int
                 ) -> CarbonHistory:
    """Add tick ``k``'s carbon (ticks skipped since ``last_k`` are zero)."""
    return _push(h, history_tiers(max_ticks), max_ticks, k, value_ug)


def _open_sums(h: CarbonHistory, sched: tuple[tuple[int, int], ...]) -> list[int]:
    """The carbon in the open bucket (the one holding ``last_k``) of each coarse tier:
    the finer tier's completed buckets inside it plus the finer tier's open bucket (a
    tier's bucket length divides the next's, and each tier reaches back far enough)."""
    last, ticks = h.last_k, h.ticks
    out: list[int] = []
    if len(sched) < 2:
        return out
    b1 = sched[1][0]
    m = min(last - last // b1 * b1 + 1, len(ticks))
    acc = sum(ticks[len(ticks) - m:])
    out.append(acc)
    for i in range(2, len(sched)):
        b, fine = sched[i][0], sched[i - 1][0]
        done = h.buckets[i - 2]  # the finer tier's completed buckets, up to its open one
        m = min(last // fine - last // b * (b // fine), len(done))
        if m:
            acc += sum(done[len(done) - m:])
        out.append(acc)
    return out


def history_with_open(h: CarbonHistory) -> tuple[tuple[int, ...], ...]:
    """Every tier of ``h`` ending with its open bucket (tier 0 first): the history's
    buckets as windows are rebuilt from them."""
    opens = _open_sums(h, history_tiers(h.max_ticks))
    return (h.ticks, *(done + (o,) for done, o in zip(h.buckets, opens, strict=True)))


def _starts_again(h: CarbonHistory | None, sched: tuple[tuple[int, int], ...],
                  max_ticks: int, k: int) -> bool:
    """Does a push at ``k`` start a new history: none yet, Δt changed (another schedule)
    or an earlier tick than its last."""
    return (h is None or h.max_ticks != max_ticks or len(h.buckets) != len(sched) - 1
            or k < h.last_k)


def _push(h: CarbonHistory | None, sched: tuple[tuple[int, int], ...], max_ticks: int,
          k: int, value_ug: int) -> CarbonHistory:
    """``push_history`` with the tiers of ``max_ticks`` (``advance_site_histories`` takes
    them once per tick, not once per container). Tier 0 takes the value; a coarse tier
    changes only
    when the bucket of ``last_k`` is complete at ``k`` (its sum appended, zeros for the
    empty buckets between): every 8 ticks for tier 1, 32 for tier 2, ..."""
    if _starts_again(h, sched, max_ticks, k):
        return unchecked(CarbonHistory, {"max_ticks": max_ticks, "last_k": k,
                                         "ticks": (value_ug,),
                                         "buckets": ((),) * (len(sched) - 1)})
    last, ticks, buckets = h.last_k, h.ticks, h.buckets
    if k == last:  # the same tick again: add to it
        ticks = ticks[:-1] + (ticks[-1] + value_ug,)
    else:
        if len(sched) > 1 and k // sched[1][0] != last // sched[1][0]:
            opens = _open_sums(h, sched)
            grown = list(buckets)
            for i in range(1, len(sched)):
                b, n = sched[i]
                gap = k // b - last // b
                if gap == 0:
                    break  # coarser buckets are longer: none of those completes either
                vals = buckets[i - 1] + (opens[i - 1],) + (0,) * min(gap - 1, n)
                grown[i - 1] = vals[max(0, len(vals) - (n - 1)):]  # n - 1 done + the open one
            buckets = tuple(grown)
        n0 = sched[0][1]
        gap = k - last
        if gap == 1:  # the next tick: one copy
            drop = len(ticks) + 1 - n0
            ticks = (ticks[drop:] if drop > 0 else ticks) + (value_ug,)
        else:
            ticks = (ticks + (0,) * min(gap - 1, n0) + (value_ug,))[-n0:]
    # built unchecked: bounded by construction (each tier keeps at most its n values)
    return unchecked(CarbonHistory, {"max_ticks": max_ticks, "last_k": k, "ticks": ticks,
                                     "buckets": buckets})


# All carbon histories of a site together keep at most this many values (~7 bytes each
# in the ledger's snapshot, which must stay far below Kafka's 1 MB message limit). Past
# it, containers in sorted (app, container) order keep theirs and the others get none:
# a rate limit set on one of those starts from an empty window (the behaviour before
# histories existed). Deterministic, so a replay or a restart gives the same events.
HISTORY_SITE_BUDGET = 40_000
# ... and at most as many histories as it holds full ones (``history_count_max``): each
# kept history is pushed every tick it emits (~2 µs), and young histories hold a value
# or two, so the values' budget alone let every container of a large site keep (and
# push) one for its first minutes, then cut most of them as they grew: at 1,000 emitting
# containers and Δt 1 s, ~1,000 pushes a tick at first (40 % of closing a tick), ~170
# once grown. With the count bound the same first containers in sorted order keep
# theirs from the start (173 at Δt 1 s, 289 at 60 s, 384 at 300 s).


def history_values_max(max_ticks: int) -> int:
    """The most values one history keeps (every tier full) at ``max_ticks``."""
    sched = history_tiers(max_ticks)
    return sum(n for _, n in sched) - (len(sched) - 1)


def history_count_max(max_ticks: int, budget: int = HISTORY_SITE_BUDGET) -> int:
    """The most histories a site keeps: as many as ``budget`` holds full ones."""
    return budget // history_values_max(max_ticks)


def history_size(h: CarbonHistory) -> int:
    """Values ``h`` keeps (the site's budget counts these)."""
    return len(h.ticks) + sum(map(len, h.buckets))


def _recent(history: Mapping[str, CarbonHistory], k: int, max_ticks: int
            ) -> dict[str, CarbonHistory]:
    """The histories still needed at tick ``k``: one whose last emission is older than
    the largest window (and its bucket, windows being bucket-aligned) is dropped, so the
    state is bounded."""
    keep = max_ticks + -(-max_ticks // MAX_BUCKETS)
    return {c: h for c, h in history.items() if h.max_ticks == max_ticks and h.last_k + keep > k}


def _pushed_all(hist: Mapping[str, CarbonHistory], names: Sequence[str],
                values: Sequence[int], sched: tuple[tuple[int, int], ...], k: int,
                max_ticks: int) -> dict[str, CarbonHistory]:
    """One app's histories after tick ``k`` with no budget to apply: the silent ones
    forgotten (``_recent``), each container that emitted pushes its carbon (a new one is
    added after the others, in the tick's order)."""
    out = _recent(hist, k, max_ticks)
    for c, v in zip(names, values, strict=True):
        if v:
            out[c] = _push(out.get(c), sched, max_ticks, k, v)
    return out


def advance_site_histories(
    history: Mapping[str, Mapping[str, CarbonHistory]],
    carbon: Mapping[str, tuple[Sequence[str], Sequence[int]]],
    k: int,
    max_ticks: int,
    budget: int = HISTORY_SITE_BUDGET,
    max_histories: int | None = None,
) -> dict[str, dict[str, CarbonHistory]]:
    """Every app's histories after tick ``k`` (``carbon``: app -> the tick's container
    names, each once, and carbon, µg: an entry's container lines): each app's silent
    ones forgotten (``_recent``), each container
    that emitted pushes its carbon, then the site's histories cut to ``budget`` values and
    ``max_histories`` histories in all (default ``history_count_max``), in sorted (app,
    container) order, each that still fits (an app that lost one keeps its histories in
    sorted order).

    One greedy pass in that order, which builds only the histories it keeps (a new one
    has one value) and stops where the budget is full: every later container is cut
    without being looked at. On a site over its budget most containers are cut (at
    1,000 emitting containers ~830 of them, at 10,000 ~9,600); staging and cutting
    them was a third of a tick's close."""
    sched = history_tiers(max_ticks)
    most = history_values_max(max_ticks)
    if max_histories is None:
        max_histories = history_count_max(max_ticks, budget)
    # (at most this many histories: the kept ones and one per emitting container)
    upper = (sum(map(len, history.values()))
             + sum(len(carbon.get(a, ((), ()))[0]) for a in history))
    if upper <= max_histories and upper * most <= budget:
        return {a: _pushed_all(hist, *carbon.get(a, ((), ())), sched, k, max_ticks)
                for a, hist in history.items()}
    out: dict[str, dict[str, CarbonHistory]] = {}
    used = count = 0
    for a in sorted(history):
        if used == budget or count == max_histories:  # full (a history holds >= 1 value)
            out[a] = {}
            continue
        old = _recent(history[a], k, max_ticks)
        names, values = carbon.get(a, ((), ()))
        emitted = {c: v for c, v in zip(names, values, strict=True) if v}
        kept: dict[str, CarbonHistory] = {}
        cut = False
        for c in sorted(old.keys() | emitted.keys()):
            if used == budget or count == max_histories:
                cut = True
                break
            h, v = old.get(c), emitted.get(c)
            new = h if v is None else _push(h, sched, max_ticks, k, v)
            assert new is not None  # (a container without carbon this tick has a history)
            n = history_size(new)
            if used + n > budget:
                cut = True
                continue
            used += n
            count += 1
            kept[c] = new
        if cut:
            out[a] = kept  # (in sorted order)
        else:  # as with no budget: the app's order, the new ones after the others
            out[a] = {c: kept[c] for c in old}
            out[a].update((c, kept[c]) for c in emitted if c not in old)
    return {a: out[a] for a in history}


def advance_app_histories(apps: Mapping[str, AppState],
                          entries: Mapping[str, AppLedgerEntry], k: int,
                          tick_s: float) -> dict[str, AppState]:
    """The apps' states with their containers' carbon histories after tick ``k``, whose
    ledger entries are ``entries`` (their container lines' carbon): all apps at once,
    under the site's budget (``advance_site_histories``)."""
    carbon = {a: (e.containers.names, e.containers.carbon) for a, e in entries.items()}
    history = advance_site_histories({a: st.tracking.carbon_history for a, st in apps.items()},
                                     carbon, k, ticks_in(MAX_WINDOW_S, tick_s))
    out: dict[str, AppState] = {}
    for a, st in apps.items():
        tracking = unchecked(EventTracking, {**st.tracking.__dict__, "carbon_history": history[a]})
        out[a] = unchecked(AppState, {**st.__dict__, "tracking": tracking})
    return out


def _segments(h: CarbonHistory) -> list[tuple[int, int, int]]:
    """The history as (first tick, last tick, carbon) spans that do not overlap: tier
    0's ticks, then of each coarser tier only the part older than the finer tiers hold
    (a coarse bucket minus its finer buckets still kept, exact in integers)."""
    sched = history_tiers(h.max_ticks)
    out: list[tuple[int, int, int]] = []
    finer: tuple[int, int, tuple[int, ...]] | None = None  # (bucket ticks, start, values)
    for (b, _), vals in zip(sched, history_with_open(h), strict=True):
        first_q = h.last_k // b - len(vals) + 1
        for i, v in enumerate(vals):
            start, end = (first_q + i) * b, min((first_q + i) * b + b - 1, h.last_k)
            if finer is not None:
                fb, fstart, fvals = finer
                if start >= fstart:
                    break  # this bucket and the later ones are in the finer tiers
                if end >= fstart:  # (the finer tier's last bucket may be partial)
                    v -= sum(fvals[:-(-(end + 1 - fstart) // fb)])
                    end = fstart - 1
            if v > 0 and end >= 0:
                out.append((max(start, 0), end, v))
        start0 = first_q * b
        if finer is None or start0 < finer[1]:
            finer = (b, start0, vals)
    return out


def seed_window(h: CarbonHistory | None, window_ticks: int, k: int, level: Level
                ) -> RateWindow | None:
    """The rate window of ``window_ticks`` as it would stand after tick ``k - 1`` had the
    limit always been in force, from the container's history; None when it emitted
    nothing in that span. Exact while the window lies within tier 0 (up to 65 ticks);
    further back a coarse bucket's carbon is spread evenly over its ticks, so the carbon
    in the window is exact but for the one coarse bucket its start cuts (shorter than
    4/31 of the window; exact for a steady emitter)."""
    if h is None or k == 0 or h.last_k >= k:
        return None
    last = k - 1
    b = -(-window_ticks // MAX_BUCKETS)
    nb = -(-window_ticks // b)
    first = last // b - nb + 1
    lo = max(0, first * b)
    sums = [0] * nb
    for start, end, v in _segments(h):
        if end < lo or start > last:
            continue
        if start == end:
            sums[start // b - first] += v
            continue
        # spread a multi-tick span over the window buckets it overlaps (by ticks), the
        # ticks outside the window keeping their part
        s, e = max(start, lo), min(end, last)
        weights = {"out": (end - start + 1) - (e - s + 1)}
        for j in range(s // b, e // b + 1):
            weights[str(j)] = min(e, j * b + b - 1) - max(s, j * b) + 1
        for key, part in largest_remainder(v, weights).items():
            if key != "out":
                sums[int(key) - first] += part
    while sums and sums[0] == 0:
        sums.pop(0)
    if not sums:
        return None
    return RateWindow(window_ticks=window_ticks, bucket_ticks=b, last_k=last,
                      values_ug=tuple(sums), level=level)


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
