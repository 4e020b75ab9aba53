"""site_step: multiplexing several apps, hand-computed (Δt = 60 s, 1 W = 60,000 mJ).

App a: solar 0.5 of 100 W, 10 Wh (usable 33,000,000, reserve 10,800,000), charge 2.5 W
= 150,000/tick, discharge 10 W = 600,000, grid 20 W = 1,200,000.
App b: solar 0.3, 20 Wh (capacity 72,000,000, headroom 1,800,000, usable 70,200,000,
reserve 21,600,000), charge 5 W = 300,000, discharge 20 W = 1,200,000, grid 10 W =
600,000. 0.2 of the solar is unallocated. Intensity 400 g/kWh: µg = mJ / 9.
"""

import pytest
from pydantic import ValidationError

from ecovisor.core.entries import LedgerError, SiteAlertKind, SiteTickResult
from ecovisor.core.settings import queue_site_change
from ecovisor.core.shares import AppShare, ExcessSolarPolicy, SiteShape
from ecovisor.core.site_totals import site_violations
from ecovisor.core.solar_share import distribute_offers, split_solar
from ecovisor.core.state import (
    AppFlows,
    AppTickInput,
    SetBatteryChargeRate,
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

SHAPE = SiteShape(tick_s=60, solar_nameplate_w=100, battery_capacity_wh=100)
SHARES = {
    "a": AppShare(solar_fraction=0.5, battery_capacity_wh=10, grid_w=20),
    "b": AppShare(solar_fraction=0.3, battery_capacity_wh=20, grid_w=10),
}
RES_A, RES_B = 10_800_000, 21_600_000


def site(shape=SHAPE, shares=SHARES, **batteries) -> SiteState:
    st = initial_site_state(shape, shares, site="s1")
    if batteries:
        apps = {a: s.model_copy(update={"battery_mj": batteries.get(a, s.battery_mj)})
                for a, s in st.apps.items()}
        st = st.model_copy(update={"apps": apps})
    return st


def step(st, shape=SHAPE, shares=SHARES, k=0, solar=0, demand=None, intensity=400.0, **kw):
    inp = SiteTickInput(k=k, t_start=60.0 * k, site_solar_mj=solar,
                        intensity_g_per_kwh=intensity, demand_mj=demand or {}, **kw)
    new, res = site_step(shape, shares, st, inp)
    assert site_violations(st, res) == []
    return new, res


def test_solar_split_largest_remainder_with_unallocated():
    parts, rest = split_solar(1_000_001, SHARES)
    assert parts == {"a": 500_001, "b": 300_000}  # a's remainder .5 beats .3 and .2
    assert rest == 200_000
    with pytest.raises(ValueError, match="sum to"):
        split_solar(1, {"x": AppShare(solar_fraction=0.7), "y": AppShare(solar_fraction=0.4)})


def test_validate_site_names_every_problem():
    shares = {"x": AppShare(solar_fraction=0.7, battery_capacity_wh=90),
              "y": AppShare(solar_fraction=0.4, battery_capacity_wh=20)}
    with pytest.raises(ValueError) as e:
        validate_site(SHAPE, shares)
    assert "solar fractions" in str(e.value) and "battery shares sum to 110" in str(e.value)


def test_curtail_is_default_and_unallocated_is_curtailed():
    _, r = step(site(), solar=4_000_000, demand={"a": {"a1": 1_000_000}, "b": {"b1": 1_200_000}})
    a, b = r.entries["a"], r.entries["b"]
    assert a.solar_mj == 2_000_000 and b.solar_mj == 1_200_000
    assert a.flows == AppFlows(solar_to_load=1_000_000, solar_to_battery=150_000,
                               solar_excess_curtailed=850_000)
    assert b.flows == AppFlows(solar_to_load=1_200_000)
    assert r.totals.solar_unallocated_mj == 800_000
    assert r.totals.solar_curtailed_mj == 850_000 + 800_000


def test_offer_excess_to_other_batteries_in_sorted_order():
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.offer})
    _, r = step(site(shape), shape, solar=4_000_000,
                demand={"a": {"a1": 1_000_000}, "b": {"b1": 1_200_000}})
    a, b = r.entries["a"], r.entries["b"]
    # a: 850,000 left after its own C-rate; b can still take its 300,000 C-rate
    assert a.flows == AppFlows(solar_to_load=1_000_000, solar_to_battery=150_000,
                               solar_excess_offered=300_000, solar_excess_curtailed=550_000)
    assert b.flows == AppFlows(solar_to_load=1_200_000, solar_offered_in=300_000)
    assert b.battery.after_mj == RES_B + 300_000
    assert b.battery_charging.solar_mj == 300_000 and b.battery_charging.carbon_ug == 0
    # unallocated 800,000 finds no room left: curtailed
    assert r.totals.solar_offered_mj == 300_000
    assert r.totals.solar_curtailed_mj == 550_000 + 800_000


def test_offer_unallocated_solar_to_apps():
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.offer})
    # no demand, no own solar use beyond C-rate: site solar 500,000 -> a 250,000
    # (takes 150,000, offers 100,000 to b), b 150,000 (all stored), unallocated 100,000
    _, r = step(site(shape), shape, solar=500_000)
    a, b = r.entries["a"], r.entries["b"]
    assert a.flows == AppFlows(solar_to_battery=150_000, solar_excess_offered=100_000)
    # b: own 150,000 + 100,000 from a + 50,000 of the unallocated = its 300,000 C-rate
    assert b.flows == AppFlows(solar_to_battery=150_000, solar_offered_in=150_000)
    assert r.totals.solar_offered_mj == 150_000
    assert r.totals.solar_curtailed_mj == 50_000


def test_distribute_offers_never_to_self_and_in_order():
    given, received = distribute_offers([("b", 10), ("_unallocated", 5)],
                                        {"a": 4, "b": 100, "c": 20})
    assert given == {"b": 10, "_unallocated": 5}
    assert received == {"a": 4, "b": 5, "c": 6}


def test_net_meter_exports_apps_and_unallocated():
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.net_meter})
    _, r = step(site(shape), shape, solar=4_000_000,
                demand={"a": {"a1": 1_000_000}, "b": {"b1": 1_200_000}})
    assert r.entries["a"].flows.solar_exported == 850_000
    assert r.totals.solar_exported_mj == 850_000 + 800_000
    assert r.totals.solar_curtailed_mj == 0
    assert r.totals.carbon_ug == 0


def test_platform_idle_from_grid():
    _, r = step(site(), demand={"a": {"a1": 90_000}}, platform_mj=360_000)
    assert r.platform.energy_mj == 360_000 and r.platform.grid_mj == 360_000
    assert r.platform.carbon_ug == 40_000  # 360,000 / 9
    assert r.totals.load_mj == 90_000 + 360_000
    assert r.totals.carbon_ug == 10_000 + 40_000
    assert r.platform.cumulative.carbon_ug == 40_000


def test_site_grid_limit_cuts_battery_charging_then_load_in_proportion():
    shape = SHAPE.model_copy(update={"grid_limit_w": 25.0})  # 1,500,000 mJ
    st = queue_site_change(site(shape), "a", SetBatteryChargeRate(watts=2.0), accepted_k=0)
    _, r = step(st, shape, k=1, demand={"a": {"a1": 1_000_000}, "b": {"b1": 600_000}},
                platform_mj=100_000)
    a, b = r.entries["a"], r.entries["b"]
    # wanted: a 1,000,000 + 120,000 (Rc), b 600,000, platform 100,000 = 1,820,000
    # over by 320,000: a's grid->battery 120,000 goes first, then 200,000 of load
    # split 1,000,000 : 600,000 -> 125,000 and 75,000 unserved
    assert a.flows == AppFlows(grid_to_load=875_000, unserved=125_000)
    assert b.flows == AppFlows(grid_to_load=525_000, unserved=75_000)
    assert (a.grid_cut_mj, b.grid_cut_mj) == (245_000, 75_000)
    assert r.platform.grid_mj == 100_000
    assert r.totals.grid_mj == 1_500_000
    assert [x.kind for x in r.alerts] == [SiteAlertKind.grid_limit]
    assert r.alerts[0].value == 320.0  # J


def test_site_grid_limit_cuts_platform_last():
    shape = SHAPE.model_copy(update={"grid_limit_w": 1.0})  # 60,000 mJ
    _, r = step(site(shape), shape, platform_mj=100_000)
    assert (r.platform.grid_mj, r.platform.unserved_mj) == (60_000, 40_000)
    assert r.totals.unserved_mj == 40_000


def test_drift_alert_raised_and_cleared():
    virtual = RES_A + RES_B  # nothing moves: no demand, no solar
    st, r = step(site(), physical_battery_mj=virtual + 1_800_000)  # exactly 0.5 Wh
    assert r.drift.alert is False and r.alerts == ()
    st, r = step(st, k=1, physical_battery_mj=virtual + 1_800_001)
    assert r.drift.alert is True and r.drift.diff_mj == 1_800_001
    assert [x.kind for x in r.alerts] == [SiteAlertKind.battery_drift]
    st, r = step(st, k=2, physical_battery_mj=virtual - 1_800_001)
    assert r.alerts == ()  # still drifting: no repeat
    st, r = step(st, k=3, physical_battery_mj=virtual)
    assert [x.kind for x in r.alerts] == [SiteAlertKind.battery_drift_cleared]
    st, r = step(st, k=4)
    assert r.drift is None


def test_controller_aggregates():
    st = queue_site_change(site(b=RES_B + 600_000), "a", SetBatteryChargeRate(watts=2.0), 0)
    _, r = step(st, k=1)
    c = r.controller
    assert r.entries["a"].flows == AppFlows(grid_to_battery=120_000)
    assert c.net_battery_w == 2.0 and c.grid_charge_actual_w == 2.0
    assert c.grid_charge_w == 2.0  # a keeps Rc 2 W (not full)
    assert c.max_discharge_w == 10.0  # b: 600,000 above reserve over 60 s = 10 W < 20 W


def test_site_step_equals_app_step_for_a_lone_app():
    shares = {"solo": AppShare(solar_fraction=1.0, battery_capacity_wh=10, grid_w=20)}
    shape = SHAPE.model_copy(update={"solar_nameplate_w": 50})
    st = initial_site_state(shape, shares, site="s1")
    app_st = initial_app_state(shares["solo"], shape, site="s1", app="solo")
    for k, (solar, demand) in enumerate([(1_500_000, 1_200_000), (0, 900_000), (200, 0)]):
        st, r = step(st, shape, shares, k=k, solar=solar, demand={"solo": {"c": demand}})
        app_st, e = app_step(shares["solo"], shape, app_st, AppTickInput(
            k=k, t_start=60.0 * k, solar_mj=solar, intensity_g_per_kwh=400.0,
            demand_mj={"c": demand}))
        assert r.entries["solo"] == e
    assert st.apps["solo"] == app_st


def test_site_refuses_bad_input():
    st, _ = step(site(), k=3)
    with pytest.raises(LedgerError, match="already accounted"):
        step(st, k=3)
    with pytest.raises(LedgerError, match="unknown apps"):
        step(st, k=4, demand={"zzz": {"c": 1}})
    with pytest.raises(LedgerError, match="do not match"):
        step(st, k=4, shares={"a": SHARES["a"]})


def test_estimated_sources_site_and_app():
    _, r = step(site(), demand={"a": {"a1": 10}}, estimated_sources=("solar:pv-1",),
                app_estimated_sources={"a": ("node:n1",)})
    assert r.entries["a"].estimated_sources == ("node:n1", "solar:pv-1")
    assert r.entries["b"].estimated_sources == ("solar:pv-1",)
    assert r.estimated_sources == ("node:n1", "solar:pv-1")


def test_result_and_state_json_round_trip_and_tamper_check():
    st, r = step(site(b=30_000_000), solar=123_457, demand={"a": {"a1": 7, "a2": 900_001},
                                                            "b": {"b1": 2_000_000}})
    assert SiteState.model_validate(st.model_dump(mode="json")) == st
    js = r.model_dump(mode="json")
    assert SiteTickResult.model_validate(js) == r
    js["entries"]["a"]["flows"]["grid_to_load"] += 1  # a tampered entry does not balance
    with pytest.raises(ValidationError, match="does not balance"):
        SiteTickResult.model_validate(js)


# --- platform idle served from unused solar before the grid (audit A1) -------------------


def test_platform_takes_unallocated_solar_then_apps_excess_before_curtailing():
    # site solar 1,000,000, no app load: a 500,000 (stores 150,000, excess 350,000),
    # b 300,000 (stores its 300,000 C-rate), unallocated 200,000. Platform 360,000: the
    # unallocated 200,000, then 160,000 of a's excess; nothing from the grid
    _, r = step(site(), solar=1_000_000, platform_mj=360_000)
    a = r.entries["a"]
    assert a.flows == AppFlows(solar_to_battery=150_000, solar_to_platform=160_000,
                               solar_excess_curtailed=190_000)
    assert r.entries["b"].flows == AppFlows(solar_to_battery=300_000)
    p = r.platform
    assert (p.solar_mj, p.grid_mj, p.unserved_mj, p.carbon_ug) == (360_000, 0, 0, 0)
    assert p.cumulative.solar_mj == 360_000
    t = r.totals
    assert (t.platform_solar_mj, t.platform_grid_mj, t.grid_mj) == (360_000, 0, 0)
    assert t.solar_curtailed_mj == 190_000 and t.carbon_ug == 0


def test_platform_uses_all_unused_solar_then_the_grid():
    # 550,000 of unused solar (unallocated 200,000 + a's 350,000) for 1,000,000 of idle
    _, r = step(site(), solar=1_000_000, platform_mj=1_000_000)
    p = r.platform
    assert (p.solar_mj, p.grid_mj, p.carbon_ug) == (550_000, 450_000, 50_000)
    assert r.entries["a"].flows.solar_to_platform == 350_000
    assert r.totals.solar_curtailed_mj == 0  # nothing curtailed while the grid serves


def test_platform_splits_apps_excess_in_proportion():
    # a excess 850,000, b excess 300,000, unallocated 400,000; platform 700,000: the
    # unallocated 400,000, then 300,000 over 850,000 : 300,000 -> 221,739.13 : 78,260.87
    _, r = step(site(), solar=2_000_000, platform_mj=700_000)
    assert r.entries["a"].flows.solar_to_platform == 221_739
    assert r.entries["b"].flows.solar_to_platform == 78_261
    assert r.platform.solar_mj == 700_000 and r.platform.grid_mj == 0


def test_platform_is_served_before_solar_is_offered_or_exported():
    # docs §7 example: a's excess 850,000, unallocated 800,000; platform 1,000,000 takes
    # the unallocated 800,000 and 200,000 of a's excess; a offers 300,000 to b's battery
    # and curtails 350,000 (offer) or exports 650,000 (net_meter)
    demand = {"a": {"a1": 1_000_000}, "b": {"b1": 1_200_000}}
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.offer})
    _, r = step(site(shape), shape, solar=4_000_000, demand=demand, platform_mj=1_000_000)
    assert r.entries["a"].flows == AppFlows(
        solar_to_load=1_000_000, solar_to_battery=150_000, solar_to_platform=200_000,
        solar_excess_offered=300_000, solar_excess_curtailed=350_000)
    assert r.entries["b"].flows.solar_offered_in == 300_000
    assert (r.platform.solar_mj, r.platform.grid_mj) == (1_000_000, 0)
    assert r.totals.solar_curtailed_mj == 350_000
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.net_meter})
    _, r = step(site(shape), shape, solar=4_000_000, demand=demand, platform_mj=1_000_000)
    assert r.entries["a"].flows.solar_exported == 650_000
    assert r.totals.solar_exported_mj == 650_000 and r.totals.grid_mj == 0


def test_platform_solar_lowers_its_grid_need_under_the_site_grid_limit():
    shape = SHAPE.model_copy(update={"grid_limit_w": 1.0})  # 60,000 mJ
    # site solar 250,000: a stores its 125,000, b its 75,000, unallocated 50,000
    _, r = step(site(shape), shape, solar=250_000, platform_mj=100_000)
    p = r.platform
    assert (p.solar_mj, p.grid_mj, p.unserved_mj) == (50_000, 50_000, 0)
    assert r.alerts == ()


def test_platform_entry_refuses_a_tampered_balance():
    _, r = step(site(), solar=1_000_000, platform_mj=360_000)
    js = r.model_dump(mode="json")
    js["platform"]["grid_mj"] += 1
    with pytest.raises(ValidationError, match="platform"):
        SiteTickResult.model_validate(js)
