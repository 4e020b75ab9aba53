"""app_step, one rule per test, hand-computed.

Reference share (Δt = 60 s, so 1 W over a tick = 60,000 mJ): 10 Wh battery = 36,000,000
mJ; solar fraction 0.5 of a 100 W array -> headroom 3,000,000 mJ, usable 33,000,000
mJ; reserve 30 % = 10,800,000 mJ; charge limit 0.25 C = 2.5 W = 150,000 mJ per tick;
discharge limit 1 C = 10 W = 600,000 mJ; grid share 20 W = 1,200,000 mJ.
Carbon at I = 400 g/kWh: µg = mJ * 400 / 3600 = mJ / 9.
"""

import pytest

from ecovisor.core.entries import EventKind, LedgerError
from ecovisor.core.settings import apply_settings, queue_change
from ecovisor.core.shares import AppShare, ExcessSolarPolicy, SiteShape
from ecovisor.core.state import (
    AppFlows,
    AppState,
    AppTickInput,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetContainerPowercap,
)
from ecovisor.core.tick import app_step, initial_app_state

SHAPE = SiteShape(tick_s=60, solar_nameplate_w=100, battery_capacity_wh=100)
SHARE = AppShare(solar_fraction=0.5, battery_capacity_wh=10, grid_w=20)
RESERVE = 10_800_000
FULL = 33_000_000


def state(battery_mj=RESERVE, share=SHARE, shape=SHAPE, **settings) -> AppState:
    st = initial_app_state(share, shape, site="s1", app="app1")
    st = st.model_copy(update={"battery_mj": battery_mj})
    if "rc" in settings:
        st = apply_settings(st, SetBatteryChargeRate(watts=settings["rc"]))
    if "rd" in settings:
        st = apply_settings(st, SetBatteryMaxDischarge(watts=settings["rd"]))
    return st


def tick(st, solar=0, demand=0, k=0, intensity=400.0, share=SHARE, shape=SHAPE, **kw):
    demand_mj = demand if isinstance(demand, dict) else {"c1": demand}
    inp = AppTickInput(k=k, t_start=1_700_000_000.0 + 60 * k, solar_mj=solar,
                       intensity_g_per_kwh=intensity, demand_mj=demand_mj, **kw)
    return app_step(share, shape, st, inp)


def flows(**kw) -> AppFlows:
    return AppFlows(**kw)


def kinds(entry):
    return [e.kind for e in entry.events]


def test_solar_first_excess_charges_battery():
    st, e = tick(state(), solar=1_000_000, demand=900_000)
    assert e.flows == flows(solar_to_load=900_000, solar_to_battery=100_000)
    assert (e.battery.before_mj, e.battery.after_mj) == (RESERVE, 10_900_000)
    assert st.battery_mj == 10_900_000
    assert e.total.carbon_ug == 0


def test_excess_above_c_rate_is_curtailed():
    _, e = tick(state(), solar=1_500_000, demand=1_200_000)
    assert e.flows == flows(solar_to_load=1_200_000, solar_to_battery=150_000,
                            solar_excess_curtailed=150_000)


def test_excess_above_room_is_curtailed_and_battery_full():
    st, e = tick(state(32_950_000), solar=1_000_000, demand=800_000)
    assert e.flows == flows(solar_to_load=800_000, solar_to_battery=50_000,
                            solar_excess_curtailed=150_000)
    assert e.battery.after_mj == FULL
    assert EventKind.battery_full in kinds(e)
    # full stays full: no second battery_full
    _, e2 = tick(st, solar=1_000_000, demand=800_000, k=1)
    assert e2.flows.solar_excess_curtailed == 200_000
    assert EventKind.battery_full not in kinds(e2)


def test_zero_solar_deficit_from_battery():
    st, e = tick(state(20_000_000), solar=0, demand=500_000)
    assert e.flows == flows(battery_to_load=500_000)
    assert st.battery_mj == 19_500_000
    assert e.total.carbon_ug == 0
    assert e.limits.discharge_w == 10.0


def test_deficit_above_discharge_limit_from_grid():
    _, e = tick(state(20_000_000), demand=900_000)
    assert e.flows == flows(battery_to_load=600_000, grid_to_load=300_000)
    assert e.total.carbon_ug == 33_333  # 300,000 / 9 = 33,333.3
    assert e.containers["c1"].carbon_ug == 33_333
    assert e.battery_charging.carbon_ug == 0


def test_discharge_stops_at_reserve_and_battery_empty():
    _, e = tick(state(11_000_000), demand=500_000)
    assert e.flows == flows(battery_to_load=200_000, grid_to_load=300_000)
    assert e.battery.after_mj == RESERVE
    assert EventKind.battery_empty in kinds(e)


def test_empty_battery_serves_nothing():
    _, e = tick(state(RESERVE), demand=500_000)
    assert e.flows == flows(grid_to_load=500_000)
    assert EventKind.battery_empty not in kinds(e)  # was already empty


def test_grid_share_exhausted_is_unserved():
    st, e = tick(state(RESERVE), demand=1_500_000)
    assert e.flows == flows(grid_to_load=1_200_000, unserved=300_000)
    assert EventKind.unserved in kinds(e)
    ev = next(x for x in e.events if x.kind == EventKind.unserved)
    assert (ev.value, ev.unit) == (300.0, "J")
    assert e.containers["c1"].unserved_mj == 300_000
    assert e.total.carbon_ug == 133_333  # 1,200,000 / 9
    assert st.cumulative.unserved_ticks == 1


def test_max_discharge_setting_limits_battery():
    _, e = tick(state(20_000_000, rd=5.0), demand=500_000)
    assert e.flows == flows(battery_to_load=300_000, grid_to_load=200_000)
    assert e.settings.max_discharge_w == 5.0


def test_max_discharge_zero_means_no_discharge():
    _, e = tick(state(20_000_000, rd=0.0), demand=500_000)
    assert e.flows == flows(grid_to_load=500_000)


def test_rc_tops_up_from_grid_and_no_discharge():
    st, e = tick(state(20_000_000, rc=2.0), demand=500_000)
    # Rc 2 W = 120,000 mJ; the whole deficit from the grid, battery not discharged
    assert e.flows == flows(grid_to_load=500_000, grid_to_battery=120_000)
    assert e.containers["c1"].carbon_ug == 55_556  # 500,000 / 9 = 55,555.6
    assert e.battery_charging.carbon_ug == 13_333  # 120,000 / 9 = 13,333.3
    assert e.total.carbon_ug == 68_889
    assert e.battery_charging.grid_mj == 120_000
    assert st.battery_mj == 20_120_000
    assert st.settings.charge_rate_w == 2.0  # holds until full
    assert e.limits.charge_rate_w == 2.0 and e.limits.discharge_w == 0.0


def test_rc_limited_by_c_rate():
    _, e = tick(state(20_000_000, rc=10.0), demand=0)
    assert e.flows == flows(grid_to_battery=150_000)  # 2.5 W, not 10 W
    assert e.limits.charge_rate_w == 2.5


def test_rc_solar_first_then_grid():
    _, e = tick(state(20_000_000, rc=2.0), solar=1_000_000, demand=900_000)
    assert e.flows == flows(solar_to_load=900_000, solar_to_battery=100_000,
                            grid_to_battery=20_000)
    assert e.battery_charging.energy_mj == 120_000
    assert e.battery_charging.solar_mj == 100_000


def test_rc_does_not_curtail_solar_it_could_store():
    # Rc 1 W (60,000) below the excess of 100,000: solar still charges up to the C-rate
    _, e = tick(state(20_000_000, rc=1.0), solar=1_000_000, demand=900_000)
    assert e.flows == flows(solar_to_load=900_000, solar_to_battery=100_000)


def test_rc_resets_at_full():
    st, e = tick(state(32_900_000, rc=2.0), demand=0)
    assert e.flows == flows(grid_to_battery=100_000)  # room 100,000 < Rc 120,000
    assert e.battery.after_mj == FULL
    assert st.settings.charge_rate_w == 0.0
    assert e.settings.charge_rate_w == 2.0  # the entry records what it used
    assert EventKind.battery_full in kinds(e)
    _, e2 = tick(st, demand=300_000, k=1)
    assert e2.flows == flows(battery_to_load=300_000)  # back to Rc = 0: discharges


def test_rc_on_a_full_battery_resets_with_battery_full():
    st, e = tick(state(FULL, rc=2.0), demand=0)
    assert e.flows == flows()
    assert st.settings.charge_rate_w == 0.0
    assert EventKind.battery_full in kinds(e)


def test_rc_grid_share_serves_load_first():
    _, e = tick(state(20_000_000, rc=2.0), demand=1_150_000)
    assert e.flows == flows(grid_to_load=1_150_000, grid_to_battery=50_000)


def test_efficiency_below_one_is_an_explicit_loss():
    share = SHARE.model_copy(update={"charge_efficiency": 0.75, "discharge_efficiency": 0.5})
    _, e = tick(state(share=share), solar=1_000_000, demand=900_000, share=share)
    assert e.flows == flows(solar_to_load=900_000, solar_to_battery=100_000,
                            battery_loss=25_000)
    assert e.battery.after_mj == RESERVE + 75_000
    _, e = tick(state(20_000_000, share=share), demand=300_000, share=share)
    assert e.flows == flows(battery_to_load=300_000, battery_loss=300_000)
    assert e.battery.after_mj == 19_400_000
    # 100,000 above the reserve delivers 50,000 and lands exactly on the reserve
    _, e = tick(state(10_900_000, share=share), demand=300_000, share=share)
    assert e.flows == flows(battery_to_load=50_000, grid_to_load=250_000, battery_loss=50_000)
    assert e.battery.after_mj == RESERVE


def test_net_metering_exports_excess():
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.net_meter})
    _, e = tick(state(shape=shape), solar=1_500_000, demand=1_200_000, shape=shape)
    assert e.flows == flows(solar_to_load=1_200_000, solar_to_battery=150_000,
                            solar_exported=150_000)
    assert e.total.carbon_ug == 0


def test_offer_alone_curtails():
    shape = SHAPE.model_copy(update={"excess_solar": ExcessSolarPolicy.offer})
    _, e = tick(state(shape=shape), solar=1_500_000, demand=1_200_000, shape=shape)
    assert e.flows.solar_excess_curtailed == 150_000
    assert e.flows.solar_excess_offered == 0


def test_no_demand_no_containers():
    st, e = tick(state(), demand={})
    assert e.containers == {}
    assert e.demand_mj == 0
    assert e.flows == flows()
    assert st.cumulative.ticks == 1


def test_containers_split_by_demand_and_sum_to_app():
    # S 300k, battery 200k above reserve, grid the rest: D = 300k + 600k
    _, e = tick(state(11_000_000), solar=300_000, demand={"c1": 300_000, "c2": 600_000})
    assert e.flows == flows(solar_to_load=300_000, battery_to_load=200_000,
                            grid_to_load=400_000)
    c1, c2 = e.containers["c1"], e.containers["c2"]
    assert (c1.energy_mj, c1.grid_mj, c1.solar_mj, c1.battery_mj) == (300_000, 133_333,
                                                                      100_000, 66_667)
    assert (c2.energy_mj, c2.grid_mj, c2.solar_mj, c2.battery_mj) == (600_000, 266_667,
                                                                      200_000, 133_333)
    # app load carbon round(400,000/9) = 44,444 split by grid 133,333 : 266,667
    # quotas 14,814.63 and 29,629.37 -> floors 14,814 + 29,629, the spare unit to c1
    assert (c1.carbon_ug, c2.carbon_ug) == (14_815, 29_629)
    assert e.total.carbon_ug == 44_444


def test_estimated_entry_is_marked_and_counted():
    st, e = tick(state(), demand=100, estimated_sources=("node:n1",))
    assert e.estimated and e.estimated_sources == ("node:n1",)
    assert st.cumulative.estimated_ticks == 1
    _, e2 = tick(st, demand=100, k=1)
    assert not e2.estimated


def test_tick_already_accounted_is_refused():
    st, _ = tick(state(), demand=100, k=5)
    with pytest.raises(LedgerError, match="already accounted"):
        tick(st, demand=100, k=5)
    st2, e = tick(st, demand=100, k=7)  # a gap is allowed
    assert st2.next_k == 8 and e.k == 7


def test_change_accepted_during_tick_applies_from_next_tick():
    st = queue_change(state(20_000_000), SetBatteryChargeRate(watts=2.0), accepted_k=3)
    st, e3 = tick(st, demand=100_000, k=3)
    assert e3.settings.charge_rate_w == 0.0
    assert e3.flows == flows(battery_to_load=100_000)
    st, e4 = tick(st, demand=100_000, k=4)
    assert e4.settings.charge_rate_w == 2.0
    assert e4.flows == flows(grid_to_load=100_000, grid_to_battery=120_000)
    assert st.pending == ()


def test_container_caps_recorded_in_settings():
    st = apply_settings(state(), SetContainerPowercap(container="c1", watts=4.0))
    _, e = tick(st, demand=100)
    assert e.settings.container_caps_w == {"c1": 4.0}
    st = apply_settings(st, SetContainerPowercap(container="c1", watts=None))
    assert st.settings.container_caps_w == {}


def test_cumulative_counters_add_up():
    st = state(20_000_000)
    for k in range(3):
        st, e = tick(st, solar=100_000, demand={"c1": 400_000, "c2": 100_000}, k=k)
    assert st.cumulative.ticks == 3
    assert st.cumulative.flows == flows(solar_to_load=300_000, battery_to_load=1_200_000)
    assert st.cumulative.containers["c1"].energy_mj == 1_200_000
    assert st.cumulative.containers["c2"].energy_mj == 300_000
    assert e.cumulative == st.cumulative
