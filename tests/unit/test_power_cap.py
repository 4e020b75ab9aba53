"""Power caps enforced as CPU quotas through the power model, hand-computed."""

from __future__ import annotations

import math

import pytest

from ecovisor.core.power_cap import (
    DEFAULT_PERIOD_US,
    CapRejected,
    CapRejectReason,
    cap_floor_w,
    cgroup_v1_values,
    cores_to_quota_us,
    cpu_max_value,
    max_power_at_quota,
    parse_cpu_max,
    quota_for_cap,
    quota_for_container_cap,
)
from ecovisor.core.power_model import PolynomialPowerModel, get_preset
from ecovisor.core.shares import IdleAttribution

MICRO = get_preset("ecovisor-microserver")  # 0.9125 W per busy core
KEPLER = get_preset("kepler-example-16c")  # 50 W per busy core


def test_microserver_cap_equal_idle_share() -> None:
    # Two containers, idle split equally: idle share 0.675 W. Cap 3 W leaves 2.325 W of
    # active power = 2.325 / 0.9125 = 2.547945... cores -> 254 794 µs per 100 ms.
    q = quota_for_cap(MICRO, 3.0, idle_share_w=0.675)
    assert q.quota_us == 254_794
    assert q.period_us == DEFAULT_PERIOD_US
    assert q.cores == pytest.approx(2.54794)
    assert q.binding
    assert q.max_power_w <= 3.0
    assert q.max_power_w == pytest.approx(3.0, abs=1e-5)
    assert q.cpu_max() == "254794 100000"
    assert q.cgroup_v1() == (254_794, 100_000)


def test_microserver_cap_no_idle_share() -> None:
    # Idle attribution "none": the cap covers only active power. 1 W / 0.9125 W per core.
    q = quota_for_cap(MICRO, 1.0)
    assert q.quota_us == math.floor(1.0 / 0.9125 * 100_000)  # 109 589
    assert q.idle_share_w == 0.0


def test_seed001_container_cap() -> None:
    # Kepler example, A and B with equal idle shares (100 W each). A cap of 180 W leaves
    # 80 W of dynamic power = 1.6 cores = 10 % of the node: exactly situation I.
    q = quota_for_container_cap(
        KEPLER, 180.0, container="A", members=["A", "B"], idle_mode=IdleAttribution.equal
    )
    assert q.idle_share_w == 100.0
    assert q.quota_us == 160_000
    assert q.cpu_max() == "160000 100000"
    # Alone on the node A carries all 200 W of idle: 280 W allows the same 1.6 cores.
    alone = quota_for_container_cap(
        KEPLER, 280.0, container="A", members=["A"], idle_mode=IdleAttribution.size, sizes={"A": 8}
    )
    assert alone.quota_us == 160_000


def test_forward_max_power() -> None:
    assert max_power_at_quota(MICRO, 1.0) == pytest.approx(0.9125)
    assert max_power_at_quota(MICRO, 2.0, idle_share_w=0.675) == pytest.approx(2.5)
    assert max_power_at_quota(MICRO, None) == pytest.approx(3.65)  # all 4 cores
    assert max_power_at_quota(MICRO, 10.0) == pytest.approx(3.65)  # clamped to 4 cores
    assert max_power_at_quota(MICRO, 0.0, idle_share_w=0.5) == 0.5
    assert max_power_at_quota(MICRO, 3.0, max_cores=2) == pytest.approx(1.825)
    with pytest.raises(ValueError):
        max_power_at_quota(MICRO, -1.0)


def test_round_trip_quota_power_quota() -> None:
    for quota_us in (1_000, 12_345, 100_000, 254_794, 399_999):
        p = max_power_at_quota(MICRO, quota_us / 100_000, idle_share_w=0.3)
        q = quota_for_cap(MICRO, p, idle_share_w=0.3)
        assert q.quota_us == quota_us
        assert q.max_power_w <= p


def test_cap_below_idle_floor_is_rejected_with_reason() -> None:
    with pytest.raises(CapRejected) as info:
        quota_for_cap(MICRO, 0.5, idle_share_w=0.675)
    err = info.value
    assert err.reason is CapRejectReason.below_idle_floor
    assert err.cap_w == 0.5
    assert err.floor_w == pytest.approx(0.675 + 0.01 * 0.9125)
    assert "idle floor 0.675 W" in str(err)


def test_cap_below_minimum_quota_is_rejected_with_reason() -> None:
    # Above the idle share but below the power at 1 ms per 100 ms period.
    floor = cap_floor_w(MICRO, idle_share_w=0.675)
    assert floor == pytest.approx(0.684125)
    with pytest.raises(CapRejected) as info:
        quota_for_cap(MICRO, 0.68, idle_share_w=0.675)
    assert info.value.reason is CapRejectReason.below_min_quota
    assert "1000 µs" in str(info.value)
    q = quota_for_cap(MICRO, floor, idle_share_w=0.675)
    assert q.quota_us == 1_000  # the kernel's minimum


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_invalid_caps(bad: float) -> None:
    with pytest.raises(CapRejected) as info:
        quota_for_cap(MICRO, bad)
    assert info.value.reason is CapRejectReason.invalid


def test_none_removes_the_cap() -> None:
    q = quota_for_cap(MICRO, None, idle_share_w=0.675)
    assert q.quota_us is None
    assert q.cores is None
    assert not q.binding
    assert q.cpu_max() == "max 100000"
    assert q.cgroup_v1() == (-1, 100_000)
    assert q.max_power_w == pytest.approx(0.675 + 3.65)


def test_non_binding_cap_is_clamped_to_cores() -> None:
    q = quota_for_cap(MICRO, 100.0)
    assert q.quota_us == 400_000  # the node's 4 cores
    assert not q.binding
    assert quota_for_cap(MICRO, 100.0, max_cores=2).quota_us == 200_000
    assert quota_for_cap(MICRO, 100.0, max_cores=64).quota_us == 400_000
    assert quota_for_cap(MICRO, 100.0, period_us=50_000).cpu_max() == "200000 50000"


def test_other_periods() -> None:
    q = quota_for_cap(MICRO, 1.0, period_us=10_000)
    assert q.quota_us == 10_958  # floor(1.0958904 * 10 000)
    with pytest.raises(ValueError, match="period"):
        quota_for_cap(MICRO, 1.0, period_us=999)
    with pytest.raises(ValueError, match="period"):
        quota_for_cap(MICRO, 1.0, period_us=1_000_001)


def test_curved_model_with_other_load() -> None:
    # Concave curve: the first cores cost more. With others busy, a container's CPU
    # share of active power changes, but the cap still holds under the model.
    m = PolynomialPowerModel(coefficients=(50, 200, -80), cores=8)
    for others in (0.0, 2.0, 6.0):
        q = quota_for_cap(m, 90.0, idle_share_w=10.0, other_busy_cores=others)
        assert q.binding
        assert q.quota_us is not None
        p = max_power_at_quota(
            m, q.quota_us / q.period_us, idle_share_w=10.0, other_busy_cores=others
        )
        assert p <= 90.0
        nxt = max_power_at_quota(
            m, (q.quota_us + 1) / q.period_us, idle_share_w=10.0, other_busy_cores=others
        )
        assert nxt > 90.0  # the largest such quota


def test_cgroup_helpers() -> None:
    assert cgroup_v1_values(50_000) == (50_000, 100_000)
    assert cgroup_v1_values(None, 20_000) == (-1, 20_000)
    assert cpu_max_value(150_000) == "150000 100000"
    assert cpu_max_value(None) == "max 100000"
    assert parse_cpu_max("max 100000") == (None, 100_000)
    assert parse_cpu_max("25000 50000\n") == (25_000, 50_000)
    assert parse_cpu_max("max") == (None, 100_000)
    assert cores_to_quota_us(1.5) == 150_000
    assert cores_to_quota_us(0.001) == 1_000  # kernel minimum
    with pytest.raises(ValueError, match=">= 1000"):
        cpu_max_value(999)
    with pytest.raises(ValueError):
        parse_cpu_max("1 2 3")
    with pytest.raises(ValueError):
        cores_to_quota_us(0)
