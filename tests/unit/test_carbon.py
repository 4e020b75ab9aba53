"""Carbon booking, tracking helpers and SCI, hand-computed."""

import json

import pytest

from ecovisor.core.carbon_limits import (
    advance_budget,
    advance_site_histories,
    history_tiers,
    history_with_open,
    level_of,
    push_history,
    push_window,
    seed_window,
    ticks_in,
)
from ecovisor.core.sci import EmbodiedShare, embodied_ug, sci, sci_of_entries
from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.state import (
    AppState,
    AppTickInput,
    CarbonBudget,
    CarbonHistory,
    EventTracking,
    Level,
)
from ecovisor.core.tick import app_step, initial_app_state
from ecovisor.core.units import carbon_ug


def test_carbon_booking_unit():
    # 1 kWh = 3.6e9 mJ at 400 g/kWh = 400 g = 4e8 µg
    assert carbon_ug(3_600_000_000, 400.0) == 400_000_000
    assert carbon_ug(9, 400.0) == 1  # 9 mJ * 400 / 3600 = 1 µg
    assert carbon_ug(4, 400.0) == 0  # 0.44 µg rounds to 0
    assert carbon_ug(1_000, 0.0) == 0


def test_ticks_in():
    assert ticks_in(60, 60) == 1
    assert ticks_in(60, 7) == 9  # 63 s
    assert ticks_in(60, 1) == 60
    assert ticks_in(0.5, 1) == 1
    assert ticks_in(180, 60) == 3  # no float fuzz: 3, not 4


def test_levels():
    assert level_of(0.89, 1.0, 0.9) is Level.ok
    assert level_of(0.9, 1.0, 0.9) is Level.near
    assert level_of(1.0, 1.0, 0.9) is Level.near
    assert level_of(1.01, 1.0, 0.9) is Level.exceeded


def test_budget_period_resets_on_multiples_of_the_period():
    b = CarbonBudget(budget_g=1.0, period_s=120)  # 2 ticks of 60 s
    t = advance_budget(None, b, 10, 60, 5)
    assert (t.period_start_k, t.used_ug) == (10, 5)
    t = advance_budget(t, b, 11, 60, 5)
    assert (t.period_start_k, t.used_ug) == (10, 10)
    t = advance_budget(t, b, 15, 60, 1)  # 15 is in the period starting at 14
    assert (t.period_start_k, t.used_ug) == (14, 1)
    never = CarbonBudget(budget_g=1.0)
    t = advance_budget(None, never, 0, 60, 5)
    t = advance_budget(t, never, 10**6, 60, 5)
    assert (t.period_start_k, t.used_ug) == (0, 10)
    # changing the period starts a new one
    t = advance_budget(t, b, 10**6 + 1, 60, 7)
    assert (t.period_start_k, t.used_ug) == (10**6 + 1, 7)


def test_embodied_share():
    # 100 kg over a 1,000,000 s life, half the machine, for one hour:
    # 100e9 µg * 3600 / 1e6 * 0.5 = 180,000,000 µg = 180 g
    hw = [EmbodiedShare(name="server", embodied_kg=100, lifetime_s=1e6, resource_share=0.5)]
    assert embodied_ug(hw, 3600) == 180_000_000
    assert embodied_ug([], 3600) == 0
    four_years = EmbodiedShare.years("s", 1000, 4, 0.25)
    assert four_years.lifetime_s == 4 * 365.25 * 86_400


def test_sci():
    hw = [EmbodiedShare(name="server", embodied_kg=100, lifetime_s=1e6, resource_share=0.5)]
    r = sci(1_000_000, 3600, hw, 10)  # (1 g + 180 g) / 10 requests
    assert r.sci_g_per_unit == pytest.approx(18.1)
    assert (r.operational_ug, r.embodied_ug) == (1_000_000, 180_000_000)
    with pytest.raises(ValueError):
        sci(1, 3600, hw, 0)


def test_sci_of_ledger_entries():
    shape = SiteShape(tick_s=60)
    share = AppShare(grid_w=100)
    st = initial_app_state(share, shape, site="s", app="x")
    entries = []
    for k in range(2):
        # 900,000 mJ at 400 g/kWh = 100,000 µg per tick
        st, e = app_step(share, shape, st, AppTickInput(
            k=k, t_start=60.0 * k, solar_mj=0, intensity_g_per_kwh=400.0,
            demand_mj={"c": 900_000}))
        entries.append(e)
    hw = [EmbodiedShare(name="server", embodied_kg=100, lifetime_s=1e6, resource_share=0.5)]
    r = sci_of_entries(entries, hw, 4)
    # 120 s: M = 100e9 * 120 / 1e6 * 0.5 = 6,000,000 µg; (0.2 g + 6 g) / 4 = 1.55 g
    assert r.interval_s == 120 and r.operational_ug == 200_000
    assert r.embodied_ug == 6_000_000
    assert r.sci_g_per_unit == pytest.approx(1.55)


# --- a container's carbon history: a rate window set later starts from it (audit A3) --


def _emissions(n: int, seed: int = 7) -> list[int]:
    """Bursty per-tick carbon with silent stretches (deterministic)."""
    out, x = [], seed
    for k in range(n):
        x = (x * 1_103_515_245 + 12_345) % 2**31
        out.append(0 if (k // 37) % 5 == 3 else x % 5_000)
    return out


def _advance(hist: dict, carbon: dict[str, int], k: int, max_ticks: int,
             budget: int | None = None) -> dict:
    """One app's histories after tick ``k``, as the site's step advances them."""
    by_app = {"a": (tuple(carbon), tuple(carbon.values()))}
    if budget is None:
        return advance_site_histories({"a": hist}, by_app, k, max_ticks)["a"]
    return advance_site_histories({"a": hist}, by_app, k, max_ticks, budget)["a"]


def _windows_both_ways(values: list[int], window: int, max_ticks: int, at: list[int]):
    """(seeded window, window kept since tick 0) after each tick in ``at``."""
    hist: dict = {}
    kept = None
    out = []
    for k, v in enumerate(values):
        if k in at:
            seeded = seed_window(hist.get("c"), window, k, Level.ok)
            out.append((push_window(seeded, window, k, v), push_window(kept, window, k, v)))
        kept = push_window(kept, window, k, v)
        hist = _advance(hist, {"c": v}, k, max_ticks)
    return out


def test_seeded_window_is_exact_up_to_65_ticks():
    values = _emissions(3_000)
    young = [0] * 18 + [9, 0, 0, 0, 256, 0, 44]  # a history that starts off a bucket edge
    for window in (1, 2, 3, 24, 60, 64, 65):
        for vals, at in ((values, [1, 5, 64, 200, 2_999]), (young, [19, 23, 24])):
            for seeded, kept in _windows_both_ways(vals, window, 86_400, at):
                assert sum(seeded.values_ug) == sum(kept.values_ug), window
                assert seeded.values_ug == kept.values_ug[-len(seeded.values_ug):]


def test_seeded_long_window_is_within_one_coarse_bucket():
    # beyond 65 ticks the history is coarser: the bucket the window's start cuts is
    # spread evenly, so the seeded carbon is off by less than 4/31 of the window's ticks
    values = _emissions(8_000)
    top = max(values)
    for window in (66, 100, 250, 601, 3_600, 7_000):
        for seeded, kept in _windows_both_ways(values, window, 86_400, [300, 4_001, 7_999]):
            assert abs(sum(seeded.values_ug) - sum(kept.values_ug)) <= window * 4 / 31 * top
    # a steady emitter is seeded exactly at any length, bucket by bucket
    for window in (100, 3_600, 86_400):
        for seeded, kept in _windows_both_ways([7] * 5_000, window, 86_400, [4_999]):
            assert seeded.values_ug == kept.values_ug


def test_history_is_bounded_and_forgets_silent_containers():
    assert sum(n for _, n in history_tiers(86_400)) == 236  # a day at Δt = 1 s
    assert history_tiers(24) == ((1, 24),)  # a day at Δt = 3,600 s: one value per tick
    # a day at Δt = 60 s: 1,440 ticks; the largest window's buckets are 3 ticks, so a
    # tick stays needed until 1,440 + 3 ticks later
    values = _emissions(5_000)
    hist: dict = {}
    for k, v in enumerate(values):
        hist = _advance(hist, {"c": v, "d": 1 if k < 10 else 0}, k, 1_440)
        assert ("d" in hist) == (k < 9 + 1_440 + 3)
    h = hist["c"]
    tiers = history_with_open(h)
    assert [len(t) for t in tiers] == [n for _, n in history_tiers(1_440)]
    assert h.ticks == tiers[0] == tuple(values[-64:])
    # the coarse tiers keep their completed buckets, the open one is derived
    assert [len(t) for t in h.buckets] == [n - 1 for _, n in history_tiers(1_440)[1:]]
    # the coarsest tier covers the whole day
    assert sum(tiers[-1]) >= sum(values[-1_440:])


def test_tracking_snapshots_without_history_restore():
    # a snapshot written before the history and the exact solar reference existed
    old = {"solar_ref_w": 10.0, "intensity_ref": 400.0, "rate_windows": {}, "budget": None}
    tr = EventTracking.model_validate(old)
    assert tr.carbon_history == {} and tr.solar_ref_mj is None
    st = initial_app_state(AppShare(grid_w=100), SiteShape(tick_s=60), site="s", app="x")
    st = st.model_copy(update={"tracking": tr})
    # 11 W against the old 10 W reference: +10 %, a change
    st, e = app_step(AppShare(grid_w=100), SiteShape(tick_s=60), st, AppTickInput(
        k=0, t_start=0.0, solar_mj=660_000, intensity_g_per_kwh=400.0,
        demand_mj={"c": 900_000}))
    assert [x.kind for x in e.events if x.kind == "solar_change"] == ["solar_change"]
    assert st.tracking.solar_ref_mj == 660_000 and "c" in st.tracking.carbon_history
    assert AppState.model_validate_json(st.model_dump_json()) == st
    with pytest.raises(ValueError, match="at most 64"):
        CarbonHistory.model_validate({"max_ticks": 10, "last_k": 0, "tiers": [[1] * 65]})
    with pytest.raises(ValueError, match="history tier"):
        CarbonHistory.model_validate({"max_ticks": 10, "last_k": 0, "ticks": [1],
                                      "buckets": [[1] * 65]})


def test_history_snapshots_with_tiers_restore_as_the_same_history():
    """Snapshots before 3 December 2026 kept every tier with its open bucket last
    (``tiers``); they read as the history that holds the same buckets."""
    h = None
    for k in range(200):
        h = push_history(h, 1_440, k, 1_000 + k % 13)
    assert h is not None
    old = {"max_ticks": 1_440, "last_k": h.last_k, "tiers": history_with_open(h)}
    assert CarbonHistory.model_validate(old) == h
    assert CarbonHistory.model_validate_json(json.dumps(old)) == h


def test_site_histories_stay_within_their_budget_in_sorted_order() -> None:
    """A site with many emitting containers keeps carbon histories for at most
    HISTORY_SITE_BUDGET values (the snapshot must stay under Kafka's 1 MB; at 1,000
    emitting containers the unbounded histories made a snapshot of > 1 MB); the
    containers kept are the first in sorted (app, container) order, so it is
    deterministic."""
    from ecovisor.core.carbon_limits import HISTORY_SITE_BUDGET, history_size

    names = {a: tuple(f"{a}-{i:03d}" for i in range(40)) for a in ("b", "a")}
    hist: dict = {a: {} for a in names}

    def tick(k: int, budget: int) -> dict:
        carbon = {a: (cs, (1000 + k,) * len(cs)) for a, cs in names.items()}
        # (the values' budget alone: no count bound, tested below)
        return advance_site_histories(hist, carbon, k, 86_400, budget, max_histories=10**6)

    for k in range(99):
        hist = tick(k, 10**9)
    full = tick(99, 10**9)
    per = history_size(full["a"]["a-000"])
    total = sum(history_size(h) for hs in full.values() for h in hs.values())
    budget = 50 * per  # room for 50 of the 80 histories
    assert total > budget
    out = tick(99, budget)
    kept = {(a, c) for a, hs in out.items() for c in hs}
    assert sum(history_size(h) for hs in out.values() for h in hs.values()) <= budget
    assert len(kept) == 50
    assert {c for a, c in kept if a == "a"} == {f"a-{i:03d}" for i in range(40)}
    assert {c for a, c in kept if a == "b"} == {f"b-{i:03d}" for i in range(10)}
    assert list(out["b"]) == sorted(out["b"])  # an app that lost histories: sorted order
    assert tick(99, total) == full  # under the budget: every history kept
    assert HISTORY_SITE_BUDGET * 8 < 512_000  # ~7 bytes a value in the snapshot


def test_site_keeps_at_most_the_histories_its_budget_holds_full_in_sorted_order() -> None:
    """Young histories hold a value or two each, so the values' budget alone let every
    container of a large site keep (and push, every tick) one until they grew: a site
    keeps at most as many histories as its budget holds full ones
    (``history_count_max``: 173 at Δt 1 s, 289 at 60 s), the first in sorted (app,
    container) order, whatever their size."""
    from ecovisor.core.carbon_limits import (
        HISTORY_SITE_BUDGET,
        history_count_max,
        history_values_max,
        ticks_in,
    )

    assert history_count_max(86_400) == HISTORY_SITE_BUDGET // history_values_max(86_400) == 173
    assert history_count_max(ticks_in(86_400, 60.0)) == 289
    n = history_count_max(86_400)
    names = {a: tuple(f"{a}-{i:03d}" for i in range(150)) for a in ("b", "a")}
    hist: dict = {a: {} for a in names}
    for k in range(3):
        carbon = {a: (cs, (1000 + k,) * len(cs)) for a, cs in names.items()}
        hist = advance_site_histories(hist, carbon, k, 86_400)
    assert len(hist["a"]) == 150  # all of the first app in sorted order
    assert list(hist["b"]) == [f"b-{i:03d}" for i in range(n - 150)]
    assert all(len(h.ticks) == 3 for hs in hist.values() for h in hs.values())
    # with room for all, every one is kept
    carbon = {a: (cs, (7,) * len(cs)) for a, cs in names.items()}
    wide = advance_site_histories(hist, carbon, 3, 86_400, max_histories=300)
    assert sum(map(len, wide.values())) == 300
