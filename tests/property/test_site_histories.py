"""The site's step advances every app's carbon histories at once under the site's budget
(``advance_site_histories``) without building the ones the budget cuts: it must give
exactly what pushing each app's histories and then cutting them gives (the rule as it was
written before, tests/unit/site_histories_oracle.py) — the same histories, in the same
dict order (the state's JSON, hence snapshots and the golden digests, depend on it)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ecovisor.core.carbon_limits import (
    advance_site_histories,
    history_count_max,
    history_size,
    history_tiers,
    history_with_open,
    push_history,
)
from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.state import AppState, CarbonHistory
from ecovisor.core.tick import initial_app_state
from tests.unit.site_histories_oracle import bound_site_histories, update_history

APPS = ("a", "b", "c")
CONTAINERS = tuple(f"x{i}" for i in range(6))


def _apps(hist: dict[str, dict[str, CarbonHistory]]) -> dict[str, AppState]:
    out = {}
    for a, h in hist.items():
        s = initial_app_state(AppShare(), SiteShape(tick_s=1.0), site="s", app=a)
        out[a] = s.model_copy(update={"tracking": s.tracking.model_copy(
            update={"carbon_history": h})})
    return out


def _reference(hist: dict[str, dict[str, CarbonHistory]],
               carbon: dict[str, tuple[tuple[str, ...], tuple[int, ...]]],
               k: int, max_ticks: int, budget: int, max_histories: int | None
               ) -> dict[str, dict[str, CarbonHistory]]:
    pushed = {a: update_history(h, dict(zip(*carbon.get(a, ((), ())), strict=True)), k,
                                max_ticks)
              for a, h in hist.items()}
    count = (history_count_max(max_ticks, budget) if max_histories is None
             else max_histories)  # fmt: skip
    bounded = bound_site_histories(_apps(pushed), budget=budget, max_histories=count)
    return {a: dict(s.tracking.carbon_history) for a, s in bounded.items()}


tick_carbon = st.dictionaries(
    st.sampled_from(APPS),
    st.lists(st.tuples(st.sampled_from(CONTAINERS), st.sampled_from([0, 0, 1, 7, 1_000])),
             max_size=6, unique_by=lambda t: t[0]),
)


@settings(max_examples=150, deadline=None)
@given(
    ticks=st.lists(st.tuples(st.sampled_from([1, 1, 1, 2, 9, 40, -3]), tick_carbon),
                   min_size=1, max_size=40),
    max_ticks=st.sampled_from([1, 30, 100, 1_440, 86_400]),
    budget=st.sampled_from([0, 5, 12, 30, 80, 400, 40_000]),
    # None: the product's default (``history_count_max`` of the budget and Δt)
    max_histories=st.sampled_from([0, 1, 3, 7, 256, None]),
)
def test_advance_site_histories_is_push_then_bound(
    ticks: list[tuple[int, dict[str, list[tuple[str, int]]]]], max_ticks: int, budget: int,
    max_histories: int | None,
) -> None:
    hist: dict[str, dict[str, CarbonHistory]] = {a: {} for a in APPS}
    k = 5
    for step, emitted in ticks:
        k = max(0, k + step)  # mostly the next tick, sometimes a gap or an earlier one
        carbon = {a: (tuple(c for c, _ in rows), tuple(v for _, v in rows))
                  for a, rows in emitted.items()}
        want = _reference(hist, carbon, k, max_ticks, budget, max_histories)
        got = advance_site_histories(hist, carbon, k, max_ticks, budget, max_histories)
        assert got == want
        for a in APPS:  # the same order too (the state's JSON)
            assert list(got[a]) == list(want[a])
        hist = got


def _tiers_pushed_every_tier(tiers: tuple[tuple[int, ...], ...] | None, last: int | None,
                             sched: tuple[tuple[int, int], ...], k: int, v: int
                             ) -> tuple[tuple[int, ...], ...]:
    """The history as it was kept before 3 December 2026, as the oracle: every tier
    ending with its open bucket, a tick's carbon added to every tier."""
    if tiers is None or last is None or k < last:
        return tuple((v,) for _ in sched)
    out = []
    for (b, n), vals in zip(sched, tiers, strict=True):
        gap = k // b - last // b
        if gap == 0:
            out.append(vals[:-1] + (vals[-1] + v,))
        else:
            out.append((vals + (0,) * min(gap - 1, n) + (v,))[-n:])
    return tuple(out)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(st.sampled_from([0, 1, 1, 1, 1, 2, 7, 8, 33, 130, 600, 5_000,
                                              -2]),
                             st.sampled_from([1, 5, 1_000, 123_457])),
                   min_size=1, max_size=300),
    max_ticks=st.sampled_from([1, 7, 64, 65, 100, 1_440, 86_400]),
)
def test_completed_buckets_hold_the_same_history(steps: list[tuple[int, int]],
                                                  max_ticks: int) -> None:
    """The history keeps only its coarse tiers' completed buckets (the open one is the
    sum of finer values): with the open buckets added back it equals, after every push,
    the tiers pushed into every tier as before — so windows seed as before."""
    sched = history_tiers(max_ticks)
    h: CarbonHistory | None = None
    old: tuple[tuple[int, ...], ...] | None = None
    k = 100
    for step, v in steps:
        k = max(0, k + step)
        old = _tiers_pushed_every_tier(old, h.last_k if h else None, sched, k, v)
        h = push_history(h, max_ticks, k, v)
        assert history_with_open(h) == old
        assert history_size(h) == sum(map(len, old)) - (len(sched) - 1)
    assert h is not None
    assert CarbonHistory.model_validate_json(h.model_dump_json()) == h
