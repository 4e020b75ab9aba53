"""Audit of the ledger core: hand-computed cases over many ticks and at the edges.

Reference app **a** (as in docs/core.md): Δt = 60 s, site nameplate 100 W, 0.5 of the
solar, 10 Wh (capacity 36,000,000 mJ, headroom 3,000,000, usable U = 33,000,000, reserve
R = 10,800,000), charge 0.25 C = 150,000 mJ/tick, discharge 1 C = 600,000, grid 20 W =
1,200,000. Intensity 400 g/kWh: µg = mJ / 9 (rounded half to even).
"""

from __future__ import annotations

import math
from fractions import Fraction

import pytest

from ecovisor.core.account_lines import AccountLine
from ecovisor.core.entries import LedgerError, entry_violations
from ecovisor.core.settings import queue_change, queue_site_change
from ecovisor.core.shares import AppShare, ExcessSolarPolicy, SiteShape
from ecovisor.core.site_totals import site_violations
from ecovisor.core.state import (
    AppState,
    AppTickInput,
    CarbonBudget,
    CarbonRateLimit,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SiteState,
    SiteTickInput,
)
from ecovisor.core.tick import (
    app_step,
    initial_app_state,
    initial_site_state,
    site_step,
    validate_site,
)
from ecovisor.core.virtual_battery import battery_limits

SHAPE = SiteShape(tick_s=60, solar_nameplate_w=100, battery_capacity_wh=100)
A = AppShare(solar_fraction=0.5, battery_capacity_wh=10, grid_w=20)
U, R = 33_000_000, 10_800_000


def app(share: AppShare = A, shape: SiteShape = SHAPE, battery: int | None = None) -> AppState:
    st = initial_app_state(share, shape, site="s", app="a")
    return st if battery is None else st.model_copy(update={"battery_mj": battery})


def tick(st, k, solar=0, demand=None, intensity=400.0, share=A, shape=SHAPE, **kw):
    inp = AppTickInput(k=k, t_start=1_000.0 + k * shape.tick_s, solar_mj=solar,
                       intensity_g_per_kwh=intensity, demand_mj=demand or {}, **kw)
    new, e = app_step(share, shape, st, inp)
    assert entry_violations(e) == []
    return new, e


def kinds(e) -> list[str]:
    return [x.kind.value for x in e.events]


def sstep(shape, shares, st, k, solar=0, demand=None, intensity=400.0, **kw):
    inp = SiteTickInput(k=k, t_start=1_000.0 + k * shape.tick_s, site_solar_mj=solar,
                        intensity_g_per_kwh=intensity, demand_mj=demand or {}, **kw)
    new, res = site_step(shape, shares, st, inp)
    assert site_violations(st, res) == []
    return new, res


# --- Rc over several ticks ----------------------------------------------------------


def test_rc_holds_over_ticks_then_resets_exactly_at_full_and_discharge_resumes():
    st = queue_change(app(battery=32_700_000), SetBatteryChargeRate(watts=2.0), accepted_k=0)
    st, e0 = tick(st, 0)  # accepted during tick 0: not yet in force
    assert e0.settings.charge_rate_w == 0 and e0.flows.grid_to_battery == 0
    stores, grid_in = [], []
    for k in (1, 2, 3):
        st, e = tick(st, k)
        stores.append(e.battery.after_mj)
        grid_in.append(e.flows.grid_to_battery)
        assert e.settings.charge_rate_w == 2.0  # the entry keeps the Rc it used
    assert grid_in == [120_000, 120_000, 60_000]  # the last tick only fills the room
    assert stores == [32_820_000, 32_940_000, U]
    assert "battery_full" in kinds(e) and st.settings.charge_rate_w == 0
    assert e.battery_charging.carbon_ug == 6_667  # 60,000 / 9 = 6,666.7
    assert st.cumulative.battery_charging.carbon_ug == 13_333 + 13_333 + 6_667
    # Rc is back to 0: the battery discharges again (up to 1 C), the grid tops up
    st, e = tick(st, 4, demand={"c": 700_000})
    assert (e.flows.battery_to_load, e.flows.grid_to_load) == (600_000, 100_000)
    assert e.battery.after_mj == 32_400_000
    assert "battery_full" not in kinds(e)


def test_rc_reached_by_solar_alone_resets_and_no_grid_charging_when_share_is_zero():
    share = A.model_copy(update={"grid_w": 0.0})
    st = app(share, battery=U - 100_000)
    st = queue_change(st, SetBatteryChargeRate(watts=1.0), accepted_k=0)
    st, e = tick(st, 1, solar=40_000, share=share)  # Rc 60,000: solar 40,000, no grid share
    assert (e.flows.solar_to_battery, e.flows.grid_to_battery) == (40_000, 0)
    assert st.settings.charge_rate_w == 1.0  # not full: Rc holds
    st, e = tick(st, 2, solar=500_000, share=share)  # solar fills the room (60,000)
    assert e.flows.solar_to_battery == 60_000 and e.battery.after_mj == U
    assert e.flows.solar_excess_curtailed == 440_000
    assert st.settings.charge_rate_w == 0 and "battery_full" in kinds(e)


# --- battery empty, reserve and discharge efficiency -----------------------------------


def test_battery_empty_then_recovery_then_empty_again():
    st = app(battery=11_000_000)
    st, e = tick(st, 0, demand={"c": 500_000})
    assert (e.flows.battery_to_load, e.flows.grid_to_load) == (200_000, 300_000)
    assert e.battery.after_mj == R and "battery_empty" in kinds(e)
    st, e = tick(st, 1, demand={"c": 300_000})  # already empty: no repeat
    assert (e.flows.battery_to_load, e.flows.grid_to_load) == (0, 300_000)
    assert "battery_empty" not in kinds(e)
    st, e = tick(st, 2, solar=1_000_000)  # recovery: solar charges at the C-rate
    assert e.flows.solar_to_battery == 150_000 and e.battery.after_mj == 10_950_000
    assert e.flows.solar_excess_curtailed == 850_000
    st, e = tick(st, 3, demand={"c": 500_000})
    assert (e.flows.battery_to_load, e.flows.grid_to_load) == (150_000, 350_000)
    assert e.battery.after_mj == R and "battery_empty" in kinds(e)
    assert st.cumulative.flows.battery_to_load == 350_000


@pytest.mark.parametrize("eta", [0.3, 0.5, 0.57, 0.75, 0.9, 0.97])
@pytest.mark.parametrize("above", [1, 2, 3, 11, 999, 1_000, 1_001, 123_457])
def test_discharge_with_efficiency_below_one_empties_to_the_reserve_exactly(eta, above):
    """With η_d < 1 and a deficit larger than the battery can give, the battery is
    emptied to the reserve: it never goes below it, delivers floor(above x η_d) (the
    brief's "limited in advance"), and - the bug this test caught - it must not be left
    a few mJ above the reserve that it can never deliver, which silenced battery_empty
    forever (e.g. η_d 0.9, 11 mJ above R: 9 delivered, 1 mJ stranded)."""
    share = A.model_copy(update={"discharge_efficiency": eta})
    st = app(share, battery=R + above)
    st, e = tick(st, 0, demand={"c": 200_000}, share=share)
    f = e.flows
    exact = math.floor(Fraction(repr(eta)) * above)
    assert exact - 1 <= f.battery_to_load <= exact  # float product may lose 1 mJ
    assert f.grid_to_load == 200_000 - f.battery_to_load
    assert e.battery.after_mj == R  # emptied exactly, never below
    assert f.battery_loss == above - f.battery_to_load
    assert "battery_empty" in kinds(e)
    # and a further deficit finds the battery empty: nothing delivered, nothing drawn
    st, e = tick(st, 1, demand={"c": 10}, share=share)
    assert (e.flows.battery_to_load, e.battery.after_mj, e.flows.grid_to_load) == (0, R, 10)
    assert "battery_empty" not in kinds(e)


def test_stranded_residue_is_not_swept_when_the_battery_served_the_whole_deficit():
    """Only when the reserve binds: a deficit the battery serves fully draws the least
    energy that delivers it (docs/core.md rule 3), even with η_d < 1."""
    share = A.model_copy(update={"discharge_efficiency": 0.9})
    st = app(share, battery=R + 11)
    st, e = tick(st, 0, demand={"c": 9}, share=share)  # 9 delivered needs a draw of 10
    assert (e.flows.battery_to_load, e.flows.battery_loss, e.battery.after_mj) == (9, 1, R + 1)
    assert "battery_empty" not in kinds(e)


def test_max_discharge_zero_never_sweeps_the_residue():
    share = A.model_copy(update={"discharge_efficiency": 0.9})
    st = queue_change(app(share, battery=R + 1), SetBatteryMaxDischarge(watts=0.0), 0)
    st, e = tick(st, 1, demand={"c": 50}, share=share)
    assert (e.flows.battery_to_load, e.flows.battery_loss, e.battery.after_mj) == (0, 0, R + 1)


# --- headroom, zero capacity, invalid shares -------------------------------------------


def test_headroom_large_against_capacity():
    hour = SiteShape(tick_s=3600, solar_nameplate_w=100, battery_capacity_wh=100)
    # headroom = 0.5 x 100 W x 1 h = 50 Wh: 60 Wh leaves U = 10 Wh, R = 6 Wh
    big = AppShare(solar_fraction=0.5, battery_capacity_wh=60, reserve_soc=0.1, grid_w=5)
    lim = battery_limits(big, hour)
    assert (lim.headroom_mj, lim.usable_mj, lim.reserve_mj) == (
        180_000_000, 36_000_000, 21_600_000)
    assert lim.charge_in_mj == 54_000_000  # 0.25 C = 15 W over an hour
    st = app(big, hour)
    st, e = tick(st, 0, solar=100_000_000, share=big, shape=hour)  # room 14.4e6 < C-rate
    assert e.flows.solar_to_battery == 14_400_000 and e.battery.after_mj == 36_000_000
    assert e.flows.solar_excess_curtailed == 85_600_000 and "battery_full" in kinds(e)
    # 50 Wh at 30 % reserve: R = 15 Wh above U = 0: refused, naming the share
    bad = AppShare(solar_fraction=0.5, battery_capacity_wh=50)
    with pytest.raises(ValueError, match="reserve .* lies above usable"):
        initial_site_state(hour, {"x": bad}, site="s")
    # 40 Wh, no reserve: usable 0, the battery can never hold anything
    none = AppShare(solar_fraction=0.5, battery_capacity_wh=40, reserve_soc=0.0, grid_w=5)
    st = app(none, hour)
    st, e = tick(st, 0, solar=5_000_000, demand={"c": 1_000_000}, share=none, shape=hour)
    assert (e.flows.solar_to_battery, e.flows.solar_excess_curtailed) == (0, 4_000_000)
    assert e.battery.after_mj == 0 and "battery_full" not in kinds(e)
    st, e = tick(st, 1, demand={"c": 1_000_000}, share=none, shape=hour)
    assert e.flows.battery_to_load == 0 and e.flows.grid_to_load == 1_000_000


def test_zero_capacity_share_rc_resets_at_once():
    zero = AppShare(solar_fraction=0.2, grid_w=10)
    st = queue_change(app(zero), SetBatteryChargeRate(watts=5.0), accepted_k=0)
    st, e = tick(st, 1, solar=300_000, demand={"c": 100_000}, share=zero)
    f = e.flows
    assert (f.solar_to_load, f.solar_to_battery, f.grid_to_battery) == (100_000, 0, 0)
    assert f.solar_excess_curtailed == 200_000
    assert e.battery.capacity_mj == e.battery.after_mj == 0
    assert "battery_full" in kinds(e) and st.settings.charge_rate_w == 0
    st, e = tick(st, 2, share=zero)
    assert "battery_full" not in kinds(e)  # not repeated once Rc is reset


def test_infinite_share_values_are_refused_before_any_tick():
    """YAML ``.inf`` passes the share's validation (ge=0); the ledger must refuse it
    when the site is validated instead of crashing every tick with OverflowError."""
    for bad in (A.model_copy(update={"grid_w": math.inf}),
                A.model_copy(update={"battery_capacity_wh": math.inf}),
                A.model_copy(update={"charge_c_rate": math.inf})):
        with pytest.raises(ValueError, match="finite"):
            validate_site(SHAPE.model_copy(update={"battery_capacity_wh": math.inf}),
                          {"a": bad})
        with pytest.raises(ValueError, match="finite"):
            initial_app_state(bad, SHAPE, site="s", app="a")
    with pytest.raises(ValueError, match="finite"):
        validate_site(SHAPE.model_copy(update={"solar_nameplate_w": math.inf}), {"a": A})
    # an infinite configured charge/discharge W is just "no extra limit": the C-rate rules
    ok = A.model_copy(update={"battery_max_charge_w": math.inf,
                              "battery_max_discharge_w": math.inf})
    assert battery_limits(ok, SHAPE) == battery_limits(A, SHAPE)


def test_infinite_drift_tolerance_is_refused():
    """``drift_tolerance_wh: .inf`` would crash the drift check (and cannot be written
    to JSON in the DriftCheck): refused when the site is validated."""
    shape = SHAPE.model_copy(update={"drift_tolerance_wh": math.inf})
    with pytest.raises(ValueError, match="drift_tolerance_wh must be finite"):
        initial_site_state(shape, {"a": A}, site="s")


# --- containers ------------------------------------------------------------------------


def test_app_with_zero_containers_and_containers_with_zero_demand():
    st = app(battery=20_000_000)
    st, e = tick(st, 0, solar=100_000)
    assert e.containers == {} and e.demand_mj == 0
    assert e.flows.solar_to_battery == 100_000 and e.total.energy_mj == 100_000
    st, e = tick(st, 1, demand={"idle": 0, "busy": 0})
    assert set(e.containers) == {"busy", "idle"}
    assert all(line == AccountLine() for line in e.containers.values())
    assert e.total == AccountLine()


def test_container_appearing_and_disappearing_between_ticks():
    st = app(battery=R)  # empty: the whole load comes from the grid
    st = queue_change(st, SetCarbonRate(container="c1", limit=CarbonRateLimit(
        rate_mg_per_s=1.0, window_s=180)), accepted_k=0)
    st, e = tick(st, 1, demand={"c1": 90_000})
    assert e.containers["c1"].carbon_ug == 10_000
    st, e = tick(st, 2, demand={"c1": 90_000, "c2": 180_000})
    assert (e.containers["c1"].carbon_ug, e.containers["c2"].carbon_ug) == (10_000, 20_000)
    st, e = tick(st, 3, demand={"c2": 45_000})  # c1 gone
    assert set(e.containers) == {"c2"}
    cum = st.cumulative.containers
    assert cum["c1"] == AccountLine(energy_mj=180_000, grid_mj=180_000, carbon_ug=20_000)
    assert cum["c2"] == AccountLine(energy_mj=225_000, grid_mj=225_000, carbon_ug=25_000)
    # c1's window holds 10,000, 10,000 and a 0 for the tick it was absent
    assert st.tracking.rate_windows["c1"].values_ug == (10_000, 10_000, 0)
    st, e = tick(st, 4, demand={"c1": 9})  # and back
    assert st.cumulative.containers["c1"].energy_mj == 180_009
    assert st.tracking.rate_windows["c1"].values_ug == (10_000, 0, 1)


def test_container_lines_plus_battery_charging_equal_the_app_exactly():
    st = queue_change(app(battery=20_000_000), SetBatteryChargeRate(watts=2.0), 0)
    st, e = tick(st, 1, demand={"c1": 100_000, "c2": 200_000, "c3": 0})
    c = e.containers
    assert (c["c1"].grid_mj, c["c2"].grid_mj, c["c3"].grid_mj) == (100_000, 200_000, 0)
    # load carbon round(300,000 / 9) = 33,333 split 1 : 2 -> 11,111 / 22,222
    assert (c["c1"].carbon_ug, c["c2"].carbon_ug, c["c3"].carbon_ug) == (11_111, 22_222, 0)
    assert e.battery_charging == AccountLine(energy_mj=120_000, grid_mj=120_000,
                                             carbon_ug=13_333)
    assert e.total == AccountLine(energy_mj=420_000, grid_mj=420_000, carbon_ug=46_666)
    assert c["c1"] + c["c2"] + c["c3"] + e.battery_charging == e.total


def test_container_split_with_mixed_sources_both_margins_exact():
    # S 300,000; battery 200,000 (to the reserve); grid 400,000 over 1 : 2 (docs §6)
    st = app(battery=11_000_000)
    st, e = tick(st, 0, solar=300_000, demand={"c1": 300_000, "c2": 600_000})
    c1, c2 = e.containers["c1"], e.containers["c2"]
    assert (c1.grid_mj, c1.solar_mj, c1.battery_mj) == (133_333, 100_000, 66_667)
    assert (c2.grid_mj, c2.solar_mj, c2.battery_mj) == (266_667, 200_000, 133_333)
    assert (c1.carbon_ug, c2.carbon_ug) == (14_815, 29_629)
    assert c1 + c2 + e.battery_charging == e.total


# --- Δt extremes, intensity 0, estimated -----------------------------------------------


def test_huge_tick_one_day():
    day = SiteShape(tick_s=86_400, solar_nameplate_w=1, battery_capacity_wh=100)
    share = AppShare(solar_fraction=1.0, battery_capacity_wh=100, grid_w=2)
    lim = battery_limits(share, day)
    # headroom 1 W x 1 day = 86,400,000; U = 360,000,000 - 86,400,000; R 108,000,000
    assert (lim.usable_mj, lim.reserve_mj) == (273_600_000, 108_000_000)
    assert lim.charge_in_mj == 2_160_000_000 and lim.discharge_out_mj == 8_640_000_000
    st = app(share, day, battery=200_000_000)
    st, e = tick(st, 0, demand={"c": 300_000_000}, share=share, shape=day)
    # the battery gives 92,000,000 (to the reserve), grid 172,800,000 (2 W x 1 day)
    assert (e.flows.battery_to_load, e.flows.grid_to_load) == (92_000_000, 172_800_000)
    assert e.flows.unserved == 35_200_000 and e.total.carbon_ug == 19_200_000
    assert [x.value for x in e.events if x.kind == "unserved"] == [35_200.0]


def test_tiny_tick_one_millisecond():
    ms = SiteShape(tick_s=0.001, solar_nameplate_w=100, battery_capacity_wh=10)
    share = AppShare(solar_fraction=0.5, battery_capacity_wh=10, grid_w=20,
                     charge_c_rate=1.0, battery_max_charge_w=3.0)
    lim = battery_limits(share, ms)
    # headroom 50 mJ; charge 3 W x 1 ms = 3 mJ; discharge 10 W = 10 mJ; grid 20 mJ
    assert (lim.headroom_mj, lim.usable_mj) == (50, 36_000_000 - 50)
    assert (lim.charge_in_mj, lim.discharge_out_mj) == (3, 10)
    st = app(share, ms, battery=R + 5)
    st, e = tick(st, 0, solar=40, demand={"c": 10}, share=share, shape=ms)
    assert (e.flows.solar_to_load, e.flows.solar_to_battery) == (10, 3)
    assert e.flows.solar_excess_curtailed == 27
    st, e = tick(st, 1, demand={"c": 40}, share=share, shape=ms)
    assert (e.flows.battery_to_load, e.flows.grid_to_load, e.flows.unserved) == (8, 20, 12)
    assert e.battery.after_mj == R and "battery_empty" in kinds(e)


def test_intensity_zero_books_no_carbon_and_change_thresholds_from_zero():
    st = app(battery=R)
    st, e = tick(st, 0, demand={"c": 1_000_000}, intensity=0.0)
    assert e.flows.grid_to_load == 1_000_000 and e.total.carbon_ug == 0
    assert e.containers["c"].carbon_ug == 0
    st, e = tick(st, 1, demand={"c": 1}, intensity=9.9)
    assert "carbon_change" not in kinds(e)  # abs threshold 10 g/kWh from a ref of 0
    st, e = tick(st, 2, demand={"c": 1}, intensity=10.0)
    assert "carbon_change" in kinds(e)


def test_estimated_flags_propagate_to_entries_counters_and_the_site():
    shares = {"a": A, "b": AppShare(solar_fraction=0.3, battery_capacity_wh=20, grid_w=10)}
    st = initial_site_state(SHAPE, shares, site="s")
    st, res = sstep(SHAPE, shares, st, 0, app_estimated_sources={"b": ("power/b-node",)})
    assert (res.entries["a"].estimated, res.entries["b"].estimated) == (False, True)
    assert res.entries["b"].estimated_sources == ("power/b-node",)
    assert res.estimated and res.estimated_sources == ("power/b-node",)
    st, res = sstep(SHAPE, shares, st, 1, estimated_sources=("solar/pv",))
    assert all(e.estimated_sources == ("solar/pv",) for e in res.entries.values())
    st, res = sstep(SHAPE, shares, st, 2)
    assert not res.estimated and not any(e.estimated for e in res.entries.values())
    assert (st.apps["a"].cumulative.estimated_ticks, st.apps["b"].cumulative.estimated_ticks,
            st.apps["b"].cumulative.ticks) == (1, 2, 3)


# --- tick index, JSON round trip ---------------------------------------------------------


def test_duplicate_or_older_tick_index_raises_also_after_json_round_trip():
    shares = {"a": A}
    st = initial_site_state(SHAPE, shares, site="s")
    st, _ = sstep(SHAPE, shares, st, 5)
    for k in (5, 4, 0):
        with pytest.raises(LedgerError, match="already accounted"):
            sstep(SHAPE, shares, st, k)
    restored = SiteState.model_validate_json(st.model_dump_json())
    with pytest.raises(LedgerError, match="already accounted"):
        sstep(SHAPE, shares, restored, 5)
    sstep(SHAPE, shares, restored, 7)  # a gap is fine
    a = app()
    a, _ = tick(a, 3)
    with pytest.raises(LedgerError):
        tick(a, 3)


def test_json_round_trip_of_state_mid_run_changes_nothing():
    shares = {"a": A, "b": AppShare(solar_fraction=0.3, battery_capacity_wh=20, grid_w=10,
                                    charge_efficiency=0.9, discharge_efficiency=0.8)}
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.offer})

    def run(roundtrip_at: int | None):
        st = initial_site_state(shape, shares, site="s")
        st = queue_site_change(st, "a", SetCarbonRate(container="w", limit=CarbonRateLimit(
            rate_mg_per_s=0.5, window_s=300)), accepted_k=0)
        st = queue_site_change(st, "b", SetCarbonBudget(budget=CarbonBudget(
            budget_g=0.2, period_s=240)), accepted_k=0)
        out = []
        for k in range(12):
            if k == roundtrip_at:
                st = SiteState.model_validate_json(st.model_dump_json())
            if k == 4:  # pending over the round trip: accepted during tick 4
                st = queue_site_change(st, "b", SetBatteryChargeRate(watts=3.0), accepted_k=4)
            st, res = sstep(shape, shares, st, k, solar=(k * 733_331) % 3_000_000,
                            demand={"a": {"w": 400_000 + 10_000 * k}, "b": {"x": 300_000}},
                            intensity=100.0 + 37 * k, platform_mj=1_000,
                            physical_battery_mj=33_000_000)
            out.append(res.model_dump_json())
        return out, st.model_dump_json()

    base = run(None)
    for at in (1, 5, 11):
        assert run(at) == base


# --- multi-app site: offers, net metering, controller -----------------------------------

B4 = AppShare(battery_capacity_wh=20, battery_max_charge_w=2.0)  # takes 120,000/tick
D4 = AppShare(battery_capacity_wh=20, battery_max_charge_w=1.0)  # takes 60,000/tick
FOUR = {"a": AppShare(solar_fraction=0.3), "b": B4, "c": AppShare(solar_fraction=0.3),
        "d": D4}  # 0.4 of the solar unallocated


def test_offer_order_donors_sorted_then_unallocated_recipients_sorted():
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.offer})
    st = initial_site_state(shape, FOUR, site="s")
    # site 1,000,000: a 300,000 (uses 100,000), c 300,000 (uses 250,000), rest 400,000
    st, res = sstep(shape, FOUR, st, 0, solar=1_000_000,
                    demand={"a": {"x": 100_000}, "c": {"y": 250_000}})
    e = res.entries
    # a offers first: b (sorted first with room) takes 120,000, d 60,000; a curtails
    # 20,000; c and the unallocated solar find no room left
    assert (e["a"].flows.solar_excess_offered, e["a"].flows.solar_excess_curtailed) == (
        180_000, 20_000)
    assert (e["c"].flows.solar_excess_offered, e["c"].flows.solar_excess_curtailed) == (
        0, 50_000)
    assert (e["b"].flows.solar_offered_in, e["d"].flows.solar_offered_in) == (120_000, 60_000)
    assert (res.totals.solar_offered_mj, res.totals.solar_curtailed_mj) == (180_000, 470_000)
    # next tick no app has excess: the unallocated solar is offered, b then d
    st, res = sstep(shape, FOUR, st, 1, solar=1_000_000,
                    demand={"a": {"x": 300_000}, "c": {"y": 300_000}})
    assert (res.entries["b"].flows.solar_offered_in,
            res.entries["d"].flows.solar_offered_in) == (120_000, 60_000)
    assert (res.totals.solar_offered_mj, res.totals.solar_curtailed_mj) == (180_000, 220_000)
    assert st.apps["b"].battery_mj == 21_600_000 + 240_000
    assert res.totals.carbon_ug == 0


def test_net_meter_counts_apps_and_unallocated_over_ticks():
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.net_meter})
    st = initial_site_state(shape, FOUR, site="s")
    st, res = sstep(shape, FOUR, st, 0, solar=1_000_000,
                    demand={"a": {"x": 100_000}, "c": {"y": 250_000}})
    e = res.entries
    assert (e["a"].flows.solar_exported, e["c"].flows.solar_exported) == (200_000, 50_000)
    assert e["b"].flows.solar_offered_in == 0  # no offers under net metering
    assert res.totals.solar_exported_mj == 650_000 and res.totals.solar_curtailed_mj == 0
    st, res = sstep(shape, FOUR, st, 1, solar=2_000_000)
    assert res.totals.solar_exported_mj == 2_000_000
    assert res.cumulative.solar_exported_mj == 2_650_000
    assert st.apps["a"].cumulative.flows.solar_exported == 800_000


def test_controller_uses_the_settings_in_force_next_tick():
    """The aggregates are for the NEXT tick: a change accepted during tick k (queued
    before tick k closes) is in force in k+1, so it must be in tick k's setpoints; else
    the physical battery lags the virtual ones by a tick after every setter call."""
    shares = {"a": A}
    st = initial_site_state(SHAPE, shares, site="s")
    st = st.model_copy(update={"apps": {"a": st.apps["a"].model_copy(
        update={"battery_mj": 20_000_000})}})
    st = queue_site_change(st, "a", SetBatteryChargeRate(watts=2.0), accepted_k=3)
    st, res = sstep(SHAPE, shares, st, 3)
    assert res.entries["a"].settings.charge_rate_w == 0  # not yet in force in tick 3
    assert (res.controller.grid_charge_w, res.controller.max_discharge_w) == (2.0, 0.0)
    st, res = sstep(SHAPE, shares, st, 4)
    assert res.entries["a"].flows.grid_to_battery == 120_000
    assert res.controller.grid_charge_actual_w == 2.0 and res.controller.grid_charge_w == 2.0
    st = queue_site_change(st, "a", SetBatteryChargeRate(watts=0.0), accepted_k=5)
    st = queue_site_change(st, "a", SetBatteryMaxDischarge(watts=5.0), accepted_k=5)
    st, res = sstep(SHAPE, shares, st, 5)
    assert res.entries["a"].flows.grid_to_battery == 120_000  # still Rc in tick 5
    assert (res.controller.grid_charge_w, res.controller.max_discharge_w) == (0.0, 5.0)
    # a change accepted for a later tick is not in the next tick's setpoints
    st = queue_site_change(st, "a", SetBatteryMaxDischarge(watts=1.0), accepted_k=9)
    st, res = sstep(SHAPE, shares, st, 6, demand={"a": {"c": 60_000}})
    assert res.entries["a"].flows.battery_to_load == 60_000
    assert res.controller.max_discharge_w == 5.0


def test_controller_grid_charge_never_exceeds_the_apps_grid_share():
    """Rc above the app's grid share: the virtual battery can only take grid_w from the
    grid, so the physical grid-side setpoint must not ask for more (else drift)."""
    small = AppShare(solar_fraction=0.5, battery_capacity_wh=10, grid_w=1.0)
    shares = {"a": small}
    st = initial_site_state(SHAPE, shares, site="s")
    st = queue_site_change(st, "a", SetBatteryChargeRate(watts=2.0), accepted_k=3)
    st, res = sstep(SHAPE, shares, st, 3)
    assert res.controller.grid_charge_w == 1.0
    st, res = sstep(SHAPE, shares, st, 4)
    assert res.entries["a"].flows.grid_to_battery == 60_000  # 1 W x 60 s
    assert res.controller.grid_charge_actual_w == 1.0
    no_grid = {"a": small.model_copy(update={"grid_w": 0.0})}
    st0 = queue_site_change(initial_site_state(SHAPE, no_grid, site="s"), "a",
                            SetBatteryChargeRate(watts=2.0), accepted_k=1)
    _, res = sstep(SHAPE, no_grid, st0, 1)
    assert res.controller.grid_charge_w == 0.0
