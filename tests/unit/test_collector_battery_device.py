"""Battery charge controller device stand-in (SIMULATION): each behaviour on the pure
model, with times passed in (no clock)."""

from __future__ import annotations

import pytest

from collectors.battery_device import SimulatedBattery, SimulatedOptions, validate_options
from ecovisor.contract.actuation import BatterySetpoint
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.site_config import SourceConfig

H = 3600.0  # one hour in seconds
_n = 0


def sp(charge: float = 0.0, max_dis: float = 1e9, net: float = 0.0) -> BatterySetpoint:
    global _n
    _n += 1
    return BatterySetpoint(
        site="s",
        time=utcnow(),
        command_id=f"c{_n}",
        charge_rate_w=charge,
        max_discharge_w=max_dis,
        net_power_w=net,
    )


def batt(stored: float = 50.0, cap: float = 100.0, **kw: float) -> SimulatedBattery:
    return SimulatedBattery(capacity_wh=cap, stored_wh=stored, **kw)


def test_capacity_and_soc_from_options() -> None:
    b = SimulatedBattery.from_options(SimulatedOptions(initial_soc=0.6), 40.0)
    st = b.step(0.0, 1.0)
    assert st.capacity_wh == 40.0
    assert st.stored_wh == pytest.approx(24.0)
    assert st.power_w == 0.0


def test_charging_clipped_at_max_charge_c_rate() -> None:
    b = batt(stored=50.0)
    b.receive(sp(charge=1000.0), 0.0)
    st = b.step(0.0, 60.0)
    assert st.power_w == pytest.approx(25.0)  # 0.25 C of 100 Wh
    assert st.stored_wh == pytest.approx(50.0 + 25.0 * 60 / H)


def test_charging_clipped_at_room() -> None:
    b = batt(stored=99.0)
    b.receive(sp(charge=20.0), 0.0)
    st = b.step(0.0, H)  # 20 Wh wanted, 1 Wh of room
    assert st.power_w == pytest.approx(1.0)
    assert st.stored_wh == pytest.approx(100.0)


def test_discharge_clipped_at_max_discharge_c_rate() -> None:
    b = batt(stored=90.0)
    b.receive(sp(net=-500.0), 0.0)
    st = b.step(0.0, 60.0)
    assert st.power_w == pytest.approx(-100.0)  # 1 C of 100 Wh
    assert st.stored_wh == pytest.approx(90.0 - 100.0 * 60 / H)


def test_discharge_clipped_at_setpoint_max_discharge() -> None:
    b = batt(stored=90.0)
    b.receive(sp(net=-50.0, max_dis=7.0), 0.0)
    assert b.step(0.0, 60.0).power_w == pytest.approx(-7.0)


def test_discharge_stops_at_min_soc() -> None:
    b = batt(stored=31.0)
    b.receive(sp(net=-50.0), 0.0)
    st = b.step(0.0, H)  # only 1 Wh above the 30 % reserve
    assert st.power_w == pytest.approx(-1.0)
    assert st.stored_wh == pytest.approx(30.0)
    assert b.step(H, H).power_w == 0.0  # empty: no more discharge


def test_efficiency_on_charge_and_discharge() -> None:
    b = batt(stored=50.0, charge_efficiency=0.9, discharge_efficiency=0.8)
    b.receive(sp(charge=10.0), 0.0)
    st = b.step(0.0, H)
    assert st.stored_wh == pytest.approx(59.0)  # 10 Wh in, 9 Wh stored
    b.receive(sp(net=-8.0), 0.0)
    st = b.step(0.0, H)
    assert st.power_w == pytest.approx(-8.0)
    assert st.stored_wh == pytest.approx(49.0)  # 8 Wh out costs 10 Wh stored


def test_solar_side_charging_and_curtailment_when_full() -> None:
    b = batt(stored=98.0)
    b.receive(sp(net=10.0), 0.0)  # 10 W of solar surplus offered, no grid charging
    st = b.step(0.0, 360.0)  # 1 Wh of it fits in 0.1 h
    assert st.power_w == pytest.approx(10.0)
    assert st.curtailed_w == 0.0
    st = b.step(360.0, 720.0)  # 1 Wh of room left, 2 Wh offered
    assert st.power_w == pytest.approx(5.0)
    assert st.curtailed_w == pytest.approx(5.0)
    st = b.step(1080.0, 360.0)  # full: everything curtailed
    assert st.power_w == 0.0
    assert st.curtailed_w == pytest.approx(10.0)


def test_solar_side_charging_beyond_c_rate_is_curtailed() -> None:
    b = batt(stored=50.0)
    b.receive(sp(net=40.0), 0.0)
    st = b.step(0.0, 1.0)
    assert st.power_w == pytest.approx(25.0)
    assert st.curtailed_w == pytest.approx(15.0)


def test_grid_side_charging_until_full_then_resets() -> None:
    b = batt(stored=90.0)
    b.receive(sp(charge=10.0, net=-30.0), 0.0)
    st = b.step(0.0, 1800.0)  # charges at the rate, does not discharge
    assert st.power_w == pytest.approx(10.0)
    assert st.charge_setpoint_w == 10.0
    assert st.stored_wh == pytest.approx(95.0)
    st = b.step(1800.0, 1800.0)  # reaches full in this step
    assert st.stored_wh == pytest.approx(100.0)
    assert st.charge_setpoint_w == 0.0  # "until full": the rate reset
    st = b.step(3600.0, 60.0)  # with the rate reset, the net request discharges
    assert st.power_w == pytest.approx(-30.0)


def test_setpoint_latency() -> None:
    b = batt(stored=50.0, latency_s=2.0)
    b.receive(sp(charge=10.0), now_s=100.0)
    assert b.step(101.0, 1.0).power_w == 0.0  # not yet in effect
    assert b.step(101.9, 0.9).power_w == 0.0
    assert b.step(102.0, 0.1).power_w == pytest.approx(10.0)


def test_duplicate_setpoint_is_applied_once() -> None:
    b = batt(stored=50.0, latency_s=1.0)
    s = sp(charge=10.0)
    b.receive(s, 0.0)
    b.step(1.0, 1.0)
    b.receive(sp(charge=0.0), 1.0)
    b.receive(s, 1.5)  # QoS 1 redelivery of the old setpoint
    assert b.step(3.0, 2.0).power_w == 0.0


def test_validate_options_one_line_errors() -> None:
    assert isinstance(validate_options(SourceConfig(type="simulated")), SimulatedOptions)
    with pytest.raises(ConfigError, match="unknown"):
        validate_options(SourceConfig(type="powerwall"))
    with pytest.raises(ConfigError, match="min_soc"):
        validate_options(SourceConfig(type="simulated", options={"min_soc": 2}))
    with pytest.raises(ConfigError, match="capacity_w"):
        validate_options(SourceConfig(type="simulated", options={"capacity_w": 2}))


def test_seen_setpoint_ids_stay_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """One setpoint per tick, for as long as the device runs: only the last ids are kept
    (the product's one rule, ecovisor.core.recent_ids), enough for QoS 1 redelivery."""
    from ecovisor.core.recent_ids import RecentIds

    monkeypatch.setattr(RecentIds, "DEFAULT_LIMIT", 50)
    b = batt(stored=50.0)
    sps = [sp(charge=float(k)) for k in range(120)]
    for k, s in enumerate(sps):
        b.receive(s, float(k))
    assert len(b._seen) == 50
    b.step(200.0, 1.0)  # all applied: the last one is in force
    b.receive(sps[-1].model_copy(update={"charge_rate_w": 0.0}), 201.0)  # a redelivery
    b.receive(sps[100], 201.0)
    assert b._pending == [] and b.step(202.0, 1.0).charge_setpoint_w == 119.0
