"""Events, hand-computed. Δt = 60 s. An app without battery and a big grid share, at
I = 3600 g/kWh so that carbon in µg equals grid energy in mJ."""

from ecovisor.core.carbon_limits import MAX_BUCKETS, push_window, window_rate_mg_per_s
from ecovisor.core.entries import EventKind
from ecovisor.core.events import derive_events, significant
from ecovisor.core.settings import apply_settings, queue_change
from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.state import (
    AppTickInput,
    CarbonBudget,
    CarbonRateLimit,
    Level,
    NotifyThresholds,
    SetCarbonBudget,
    SetCarbonRate,
    SetNotifyThresholds,
)
from ecovisor.core.tick import app_step, initial_app_state

SHAPE = SiteShape(tick_s=60, solar_nameplate_w=100, battery_capacity_wh=100)
GRID_ONLY = AppShare(solar_fraction=0.5, grid_w=1000)
BATTERY = AppShare(solar_fraction=0.5, battery_capacity_wh=10, grid_w=20)


def new_state(share=GRID_ONLY):
    return initial_app_state(share, SHAPE, site="s1", app="app1")


def run(st, ticks, share=GRID_ONLY):
    """ticks: list of (k, solar_mj, {container: mJ}, intensity). Returns states, entries."""
    entries = []
    for k, solar, demand, intensity in ticks:
        st, e = app_step(share, SHAPE, st, AppTickInput(
            k=k, t_start=60.0 * k, solar_mj=solar, intensity_g_per_kwh=intensity,
            demand_mj=demand))
        entries.append(e)
    return st, entries


def of_kind(entry, kind):
    return [e for e in entry.events if e.kind == kind]


def test_tick_every_tick_first():
    _, es = run(new_state(), [(0, 0, {}, 100.0), (1, 0, {}, 100.0)])
    for e in es:
        assert e.events[0].kind == EventKind.tick
        assert e.events[0].k == e.k and e.events[0].app == "app1" and e.events[0].site == "s1"


def test_significant_rule():
    assert significant(11.0, 10.0, 1.0, 0.1)
    assert not significant(10.5, 10.0, 1.0, 0.1)
    assert not significant(10.0, 10.0, 0.0, 0.0)  # no change is never significant
    assert significant(0.5, 0.0, 0.0, 0.1)


def test_solar_change_against_last_notified_value():
    # 600,000 mJ / 60 s = 10 W; then 10.5 W (below max(1 W, 10 % of 10 W)); then 11 W
    ticks = [(0, 600_000, {}, 100.0), (1, 630_000, {}, 100.0), (2, 660_000, {}, 100.0),
             (3, 660_000, {}, 100.0)]
    _, es = run(new_state(), ticks)
    assert [len(of_kind(e, EventKind.solar_change)) for e in es] == [0, 0, 1, 0]
    ev = of_kind(es[2], EventKind.solar_change)[0]
    assert (ev.value, ev.previous, ev.unit) == (11.0, 10.0, "W")


def test_carbon_change_thresholds_and_configurable():
    # abs 10 g/kWh, rel 5 %: from 400, 415 is below max(10, 20); 420 is a change
    ticks = [(0, 0, {}, 400.0), (1, 0, {}, 415.0), (2, 0, {}, 420.0)]
    _, es = run(new_state(), ticks)
    assert [len(of_kind(e, EventKind.carbon_change)) for e in es] == [0, 0, 1]
    assert of_kind(es[2], EventKind.carbon_change)[0].previous == 400.0
    st = apply_settings(new_state(), SetNotifyThresholds(
        notify=NotifyThresholds(carbon_change_abs_g_per_kwh=1.0, carbon_change_rel=0.0)))
    _, es = run(st, ticks)
    assert [len(of_kind(e, EventKind.carbon_change)) for e in es] == [0, 1, 1]


def test_battery_full_and_empty_events():
    st = new_state(BATTERY).model_copy(update={"battery_mj": 32_950_000})
    st, es = run(st, [(0, 1_000_000, {"c": 800_000}, 100.0)], BATTERY)
    ev = of_kind(es[0], EventKind.battery_full)[0]
    assert ev.value == 33_000_000 / 3_600_000 and ev.unit == "Wh"
    st = new_state(BATTERY).model_copy(update={"battery_mj": 11_000_000})
    _, es = run(st, [(0, 0, {"c": 500_000}, 100.0)], BATTERY)
    assert of_kind(es[0], EventKind.battery_empty)[0].value == 3.0  # reserve 3 Wh


def test_carbon_rate_near_exceeded_and_rearm():
    # limit 1 mg/s over 180 s = 3 ticks: exceeded above 180,000 µg in the window,
    # near from 162,000 (90 %)
    st = apply_settings(new_state(), SetCarbonRate(
        container="c1", limit=CarbonRateLimit(rate_mg_per_s=1.0, window_s=180)))
    grid = [100_000, 70_000, 20_000, 0, 100_000, 100_000]
    st, es = run(st, [(k, 0, {"c1": g, "c2": 5}, 3600.0) for k, g in enumerate(grid)])
    got = [[(e.kind, e.container) for e in x.events
            if e.kind in (EventKind.carbon_rate_near, EventKind.carbon_rate_exceeded)]
           for x in es]
    assert got == [
        [],  # 100,000 -> 0.556 mg/s
        [(EventKind.carbon_rate_near, "c1")],  # 170,000 -> 0.944
        [(EventKind.carbon_rate_exceeded, "c1")],  # 190,000 -> 1.056
        [],  # 90,000 -> ok again (silent, re-armed)
        [],  # 120,000
        [(EventKind.carbon_rate_exceeded, "c1")],  # 200,000: straight to exceeded
    ]
    ev = es[1].events[-1]
    assert ev.unit == "mg/s" and abs(ev.value - 170 / 180) < 1e-12 and ev.threshold == 1.0
    assert st.tracking.rate_windows["c1"].values_ug == (0, 100_000, 100_000)
    assert st.tracking.rate_windows["c1"].level is Level.exceeded
    # removing the limit drops its window
    st = apply_settings(st, SetCarbonRate(container="c1", limit=None))
    st, _ = run(st, [(6, 0, {"c1": 1}, 3600.0)])
    assert st.tracking.rate_windows == {}


def test_carbon_rate_window_counts_skipped_ticks_as_zero():
    st = apply_settings(new_state(), SetCarbonRate(
        container="c1", limit=CarbonRateLimit(rate_mg_per_s=1.0, window_s=180)))
    st, _ = run(st, [(0, 0, {"c1": 100_000}, 3600.0), (5, 0, {"c1": 100_000}, 3600.0)])
    assert st.tracking.rate_windows["c1"].values_ug == (0, 0, 100_000)


def test_long_windows_are_bucketed_and_bounded():
    # one day at Δt = 1 s: 86,400 ticks kept as 600 sums of 144 ticks
    w = None
    for k in range(1000):
        w = push_window(w, 86_400, k, 1)
    assert w.bucket_ticks == 144 and len(w.values_ug) == 7  # ticks 0..999 -> buckets 0..6
    assert sum(w.values_ug) == 1000
    w = push_window(w, 86_400, 200_000, 5)
    assert len(w.values_ug) == MAX_BUCKETS and sum(w.values_ug) == 5
    assert window_rate_mg_per_s(w, 1.0) == 5 / 1000 / 86_400


def test_carbon_budget_near_exceeded_and_period_reset():
    # 0.5 g = 500,000 µg per 180 s (3 ticks); near from 450,000
    st = apply_settings(new_state(), SetCarbonBudget(budget=CarbonBudget(budget_g=0.5,
                                                                          period_s=180)))
    grid = [300_000, 160_000, 50_000, 100_000, 400_000]
    st, es = run(st, [(k, 0, {"c": g}, 3600.0) for k, g in enumerate(grid)])
    got = [[e.kind for e in x.events if e.kind.startswith("carbon_budget")] for x in es]
    assert got == [[], [EventKind.carbon_budget_near], [EventKind.carbon_budget_exceeded],
                   [],  # tick 3 starts a new period: 100,000
                   [EventKind.carbon_budget_near]]  # 500,000 is near, not above
    ev = es[2].events[-1]
    assert (ev.value, ev.threshold, ev.unit) == (0.51, 0.5, "g")
    assert st.tracking.budget.period_start_k == 3 and st.tracking.budget.used_ug == 500_000


def test_budget_counts_battery_charging_and_starts_when_in_force():
    share = BATTERY
    st = queue_change(new_state(share), SetCarbonBudget(budget=CarbonBudget(budget_g=1.0)),
                      accepted_k=4)
    st, es = run(st, [(4, 0, {"c": 9_000}, 400.0), (5, 0, {"c": 9_000}, 400.0)], share)
    assert st.tracking.budget.period_start_k == 5
    assert st.tracking.budget.used_ug == 1_000  # 9,000 mJ at 400 g/kWh


def test_near_fraction_configurable():
    st = apply_settings(new_state(), SetCarbonBudget(budget=CarbonBudget(budget_g=1.0)))
    st = apply_settings(st, SetNotifyThresholds(notify=NotifyThresholds(near_fraction=0.5)))
    _, es = run(st, [(0, 0, {"c": 500_000}, 3600.0)])
    assert [e.kind for e in es[0].events][-1] == EventKind.carbon_budget_near


def test_events_are_a_pure_function_of_previous_state_and_entry():
    st0 = apply_settings(new_state(), SetCarbonRate(
        container="c1", limit=CarbonRateLimit(rate_mg_per_s=0.001)))
    st1, es = run(st0, [(0, 600_000, {"c1": 100_000}, 3600.0)])
    bare = es[0].model_copy(update={"events": ()})
    tracking, events = derive_events(st0, bare)
    assert events == es[0].events and tracking == st1.tracking


# --- audit corrections: exact thresholds (A2), trailing carbon when a limit is set (A3) --


def test_significant_is_exact_at_the_threshold():
    # in floats 3.3 - 3.0 = 0.2999... < 0.1 * 3.0 = 0.3000...04: a change of exactly
    # 10 % must be significant (the thresholds are compared as written)
    assert significant(3.3, 3.0, 0.0, 0.1)
    assert significant(212.1, 202.0, 10.0, 0.05)  # 5 % of 202 = 10.1, exactly
    assert not significant(212.09, 202.0, 10.0, 0.05)


def test_solar_change_of_exactly_the_relative_threshold_fires_in_its_tick():
    # 603,000 mJ / 60 s = 10.05 W; 663,300 mJ = 11.055 W: exactly +10 % (> 1 W abs)
    ticks = [(0, 603_000, {}, 100.0), (1, 663_300, {}, 100.0), (2, 663_300, {}, 100.0)]
    _, es = run(new_state(), ticks)
    assert [len(of_kind(e, EventKind.solar_change)) for e in es] == [0, 1, 0]
    ev = of_kind(es[1], EventKind.solar_change)[0]
    assert (ev.value, ev.previous) == (663_300 / 60_000, 603_000 / 60_000)
    # one mJ short of 10 % is not a change
    _, es = run(new_state(), [(0, 603_000, {}, 100.0), (1, 663_299, {}, 100.0)])
    assert [len(of_kind(e, EventKind.solar_change)) for e in es] == [0, 0]


def test_carbon_change_of_exactly_the_relative_threshold_fires_in_its_tick():
    # 202 -> 212.1 g/kWh is exactly +5 % (10.1 > the 10 g/kWh absolute threshold)
    _, es = run(new_state(), [(0, 0, {}, 202.0), (1, 0, {}, 212.1), (2, 0, {}, 212.1)])
    assert [len(of_kind(e, EventKind.carbon_change)) for e in es] == [0, 1, 0]


def _rate_events(entry):
    return [(e.kind, e.container) for e in entry.events
            if e.kind in (EventKind.carbon_rate_near, EventKind.carbon_rate_exceeded)]


def test_carbon_rate_set_on_a_container_already_emitting_counts_its_trailing_window():
    # limit 1 mg/s over 180 s (3 ticks): exceeded above 180,000 µg, near from 162,000.
    # c1 emitted 100,000 µg per tick before any limit; the limit accepted during tick 2
    # is in force from tick 3, whose window is ticks 1-3: 300,000 µg -> exceeded now
    limit = SetCarbonRate(container="c1", limit=CarbonRateLimit(rate_mg_per_s=1.0,
                                                                 window_s=180))
    st, _ = run(new_state(), [(k, 0, {"c1": 100_000, "c2": 100_000}, 3600.0)
                              for k in range(3)])
    st = queue_change(st, limit, accepted_k=2)
    st, es = run(st, [(3, 0, {"c1": 100_000}, 3600.0)])
    assert _rate_events(es[0]) == [(EventKind.carbon_rate_exceeded, "c1")]
    assert st.tracking.rate_windows["c1"].values_ug == (100_000, 100_000, 100_000)
    # near: 55,000 per tick = 165,000 µg over the window (0.917 mg/s)
    st, _ = run(new_state(), [(k, 0, {"c1": 55_000}, 3600.0) for k in range(3)])
    st = queue_change(st, limit, accepted_k=2)
    _, es = run(st, [(3, 0, {"c1": 55_000}, 3600.0)])
    assert _rate_events(es[0]) == [(EventKind.carbon_rate_near, "c1")]
    assert abs(es[0].events[-1].value - 165 / 180) < 1e-12


def test_resized_carbon_rate_window_starts_from_the_trailing_carbon():
    # a 60 s (1 tick) limit widened to 180 s: the wider window holds the last 3 ticks
    st = apply_settings(new_state(), SetCarbonRate(
        container="c1", limit=CarbonRateLimit(rate_mg_per_s=10.0, window_s=60)))
    st, _ = run(st, [(k, 0, {"c1": 70_000}, 3600.0) for k in range(3)])
    st = apply_settings(st, SetCarbonRate(
        container="c1", limit=CarbonRateLimit(rate_mg_per_s=1.0, window_s=180)))
    st, es = run(st, [(3, 0, {"c1": 70_000}, 3600.0)])
    assert st.tracking.rate_windows["c1"].values_ug == (70_000, 70_000, 70_000)
    assert _rate_events(es[0]) == [(EventKind.carbon_rate_exceeded, "c1")]
