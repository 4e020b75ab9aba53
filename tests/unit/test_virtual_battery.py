"""Virtual battery arithmetic and limits, hand-computed (Δt = 60 s: 1 W = 60,000 mJ)."""

import pytest

from ecovisor.core.apportion import largest_remainder, split_flows
from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.virtual_battery import (
    battery_limits,
    charge_input_capacity,
    deliverable,
    draw_for,
    initial_stored_mj,
    max_input_for_room,
    stored_gain,
)

SHAPE = SiteShape(tick_s=60, solar_nameplate_w=100, battery_capacity_wh=100)
SHARE = AppShare(solar_fraction=0.5, battery_capacity_wh=10, grid_w=20)


def test_limits_of_a_share():
    lim = battery_limits(SHARE, SHAPE)
    assert lim.capacity_mj == 36_000_000  # 10 Wh
    assert lim.headroom_mj == 3_000_000  # 0.5 * 100 W * 60 s
    assert lim.usable_mj == 33_000_000
    assert lim.reserve_mj == 10_800_000  # 30 % of capacity
    assert lim.charge_in_mj == 150_000  # 0.25 C = 2.5 W
    assert lim.discharge_out_mj == 600_000  # 1 C = 10 W


def test_configured_power_limits_below_c_rate_win():
    share = SHARE.model_copy(update={"battery_max_charge_w": 1.0, "battery_max_discharge_w": 4.0})
    lim = battery_limits(share, SHAPE)
    assert (lim.charge_in_mj, lim.discharge_out_mj) == (60_000, 240_000)


def test_no_battery_share():
    lim = battery_limits(AppShare(solar_fraction=0.5), SHAPE)
    assert (lim.capacity_mj, lim.usable_mj, lim.reserve_mj) == (0, 0, 0)
    assert charge_input_capacity(0, 0, lim) == 0


def test_reserve_above_usable_is_rejected():
    # 1 Wh = 3.6e6 mJ; headroom 0.5*100 W*60 s = 3e6 -> usable 0.6e6 < reserve 1.08e6
    with pytest.raises(ValueError, match="reserve"):
        battery_limits(AppShare(solar_fraction=0.5, battery_capacity_wh=1), SHAPE)


def test_initial_store_default_and_clamped():
    lim = battery_limits(SHARE, SHAPE)
    assert initial_stored_mj(SHARE, lim) == 10_800_000
    assert initial_stored_mj(SHARE.model_copy(update={"initial_soc": 0.9}), lim) == 32_400_000
    assert initial_stored_mj(SHARE.model_copy(update={"initial_soc": 1.0}), lim) == 33_000_000
    assert initial_stored_mj(SHARE.model_copy(update={"initial_soc": 0.1}), lim) == 10_800_000


def test_efficiency_one_is_identity():
    assert stored_gain(123, 1.0) == 123
    assert max_input_for_room(500, 1.0) == 500
    assert draw_for(77, 1.0) == 77
    assert deliverable(77, 1.0) == 77


def test_charging_with_loss_fills_room_exactly():
    # eta 0.75: input 40 -> 30 stored; 41 -> floor(30.75) = 30; 42 -> 31 (too much)
    assert stored_gain(40, 0.75) == 30
    assert stored_gain(41, 0.75) == 30
    assert max_input_for_room(30, 0.75) == 41
    assert max_input_for_room(0, 0.75) == 0
    assert max_input_for_room(-5, 0.75) == 0


def test_discharging_with_loss():
    # eta 0.5: deliver 30 needs a draw of 60; a draw of 61 still delivers only 30
    assert draw_for(30, 0.5) == 60
    assert deliverable(61, 0.5) == 30
    assert deliverable(0, 0.5) == 0
    assert deliverable(-3, 0.5) == 0
    assert draw_for(0, 0.5) == 0


def test_charge_input_capacity_is_c_rate_or_room():
    lim = battery_limits(SHARE, SHAPE)
    assert charge_input_capacity(10_800_000, 0, lim) == 150_000  # C-rate
    assert charge_input_capacity(32_950_000, 0, lim) == 50_000  # room
    assert charge_input_capacity(10_800_000, 100_000, lim) == 50_000  # already charged 100k
    assert charge_input_capacity(33_000_000, 0, lim) == 0  # full


def test_largest_remainder_exact_and_tie_break_by_name():
    assert largest_remainder(10, {"b": 1, "a": 1, "c": 1}) == {"a": 4, "b": 3, "c": 3}
    assert largest_remainder(0, {"a": 0}) == {"a": 0}
    assert largest_remainder(7, {"a": 0, "b": 2}) == {"a": 0, "b": 7}
    with pytest.raises(ValueError):
        largest_remainder(1, {"a": 0})


def test_split_flows_keeps_both_margins():
    # 400k grid over demands 300k/600k: 133,333.3 / 266,666.7 -> c2 gets the extra unit
    parts = split_flows({"c1": 300_000, "c2": 600_000},
                        {"grid": 400_000, "solar": 300_000, "battery": 200_000, "unserved": 0})
    assert parts["c1"] == {"grid": 133_333, "solar": 100_000, "battery": 66_667, "unserved": 0}
    assert parts["c2"] == {"grid": 266_667, "solar": 200_000, "battery": 133_333, "unserved": 0}
