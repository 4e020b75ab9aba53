"""Attribution of node power and energy to containers, hand-computed.

The seed-001 worked example (Kepler "Idle Power Matters": 16-core server X, P = 200 + 8x
with x in % of node CPU, clients A and B each requesting 8 cores) is a specification:
every cell of its "Power attributed to A" table is reproduced below.
"""

from __future__ import annotations

import json

import pytest

from ecovisor.core.attribution import (
    CounterError,
    CounterSnapshot,
    ReferenceMethod,
    attribute_energy,
    attribute_interval,
    attribute_power,
    attribute_power_reference,
    counter_delta,
    cpu_deltas,
    idle_share_w,
    largest_remainder,
)
from ecovisor.core.power_model import get_preset
from ecovisor.core.shares import IdleAttribution

KEPLER = get_preset("kepler-example-16c")
MICRO = get_preset("ecovisor-microserver")
SIZES = {"A": 8.0, "B": 8.0}  # both clients request 8 of the 16 cores


def pct(x: float) -> float:
    """x % of the 16-core node's CPU, in busy cores."""
    return x / 100 * 16


SITUATIONS = {
    1: {"A": pct(10), "B": pct(10)},  # 360 W
    2: {"A": pct(10)},  # B evicted: 280 W
    3: {"A": pct(10), "B": pct(40)},  # 600 W
    4: {"A": pct(10), "B": pct(5)},  # 320 W
}
NODE_W = {1: 360, 2: 280, 3: 600, 4: 320}


# --- seed 001, cases 1-4 -------------------------------------------------------------------


@pytest.mark.parametrize("case", [1, 2, 3, 4])
def test_seed001_node_power(case: int) -> None:
    a = attribute_power(KEPLER, container_cores=SITUATIONS[case])
    assert a.node.total == NODE_W[case] * 1000  # mW
    assert a.node.idle == 200_000
    assert a.node_power_w() == NODE_W[case]


# Row "by real utilization for dynamic power + by resource request for idle power":
# A gets 80 W dynamic in every case, and 100 W of idle (200 W when alone).
@pytest.mark.parametrize("mode", [IdleAttribution.equal, IdleAttribution.size])
@pytest.mark.parametrize(
    ("case", "a_active", "a_idle", "b_active", "b_idle"),
    [
        (1, 80, 100, 80, 100),
        (2, 80, 200, None, None),
        (3, 80, 100, 320, 100),  # B: 420 W = 320 + 100 (seed text)
        (4, 80, 100, 40, 100),
    ],
)
def test_seed001_idle_isolated(
    mode: IdleAttribution,
    case: int,
    a_active: int,
    a_idle: int,
    b_active: int | None,
    b_idle: int | None,
) -> None:
    a = attribute_power(KEPLER, container_cores=SITUATIONS[case], idle_mode=mode, sizes=SIZES)
    assert a.containers["A"].active == a_active * 1000
    assert a.containers["A"].idle == a_idle * 1000
    assert a.containers["A"].total == (a_active + a_idle) * 1000
    assert a.power_w("A") == a_active + a_idle
    if b_active is not None:
        assert a.containers["B"].active == b_active * 1000
        assert a.containers["B"].idle == b_idle * 1000  # type: ignore[operator]
    assert a.platform.total == 0


@pytest.mark.parametrize("case", [1, 2, 3, 4])
def test_seed001_idle_not_attributed(case: int) -> None:
    # Mode "none": A keeps its 80 W of dynamic power, the 200 W idle is the platform's.
    a = attribute_power(KEPLER, container_cores=SITUATIONS[case])
    assert a.containers["A"].total == 80_000
    assert a.containers["A"].idle == 0
    assert a.platform.idle == 200_000
    assert a.platform.active == 0


@pytest.mark.parametrize(
    ("case", "expected_a_mw"),
    [(1, 180_000), (2, 280_000), (3, 120_000), (4, 213_333)],  # table: 180, 280, 120, 213
)
def test_seed001_by_real_utilization(case: int, expected_a_mw: int) -> None:
    a = attribute_power_reference(ReferenceMethod.usage, KEPLER, container_cores=SITUATIONS[case])
    assert a.containers["A"].total == expected_a_mw
    assert round(a.power_w("A")) == round(expected_a_mw / 1000)
    if case == 3:
        # Seed text: B 480 W; idle by CPU ratio gives A 40 W and B 160 W.
        assert a.containers["B"].total == 480_000
        assert a.containers["A"].idle == 40_000
        assert a.containers["B"].idle == 160_000
    if case == 4:
        assert a.containers["B"].total == 106_667  # 320 000 mW split 2:1, exactly


@pytest.mark.parametrize(
    ("case", "expected_a_w"),
    [(1, 180), (2, 280), (3, 300), (4, 160)],
)
def test_seed001_by_resource_request(case: int, expected_a_w: int) -> None:
    a = attribute_power_reference(
        ReferenceMethod.request, KEPLER, container_cores=SITUATIONS[case], requests=SIZES
    )
    assert a.containers["A"].total == expected_a_w * 1000


def test_seed001_attribution_does_not_change_node_power() -> None:
    for case, cores in SITUATIONS.items():
        for mode in IdleAttribution:
            a = attribute_power(KEPLER, container_cores=cores, idle_mode=mode, sizes=SIZES)
            assert sum(s.total for s in a.containers.values()) + a.platform.total == (
                NODE_W[case] * 1000
            )


# --- energy from cumulative counters ------------------------------------------------------------
#
# Microserver (1.35 W idle, 5 W at 4 busy cores), Δt = 10 s. web-1 used 5 CPU-s, web-2
# 3 CPU-s, the node 10 CPU-s (2 CPU-s of system daemons): u = 10 / 40 = 0.25.
# P = 1.35 + 0.25 * 3.65 = 2.2625 W -> 22 625 mJ; idle 13 500 mJ; active 9 125 mJ.
# Active by CPU share: web-1 4 562.5, web-2 2 737.5, platform 1 825 -> the spare mJ goes
# to the larger remainder, tie -> first in name order: web-1 4 563, web-2 2 737.

CPU = {"web-2": 3.0, "web-1": 5.0}


def test_energy_split_mode_none() -> None:
    a = attribute_energy(MICRO, dt_s=10, container_cpu_s=CPU, node_cpu_s=10)
    assert a.unit == "mJ"
    assert a.source == "model"
    assert a.utilisation == 0.25
    assert (a.node.total, a.node.idle, a.node.active) == (22_625, 13_500, 9_125)
    assert a.containers["web-1"].active == 4_563
    assert a.containers["web-2"].active == 2_737
    assert a.platform.active == 1_825
    assert a.platform.idle == 13_500
    assert list(a.containers) == ["web-1", "web-2"]  # deterministic order
    assert a.power_w("web-1") == pytest.approx(0.4563)


def test_energy_split_equal_and_size() -> None:
    eq = attribute_energy(
        MICRO, dt_s=10, container_cpu_s=CPU, node_cpu_s=10, idle_mode=IdleAttribution.equal
    )
    assert eq.containers["web-1"].idle == 6_750
    assert eq.containers["web-2"].idle == 6_750
    assert eq.platform.idle == 0
    sz = attribute_energy(
        MICRO,
        dt_s=10,
        container_cpu_s=CPU,
        node_cpu_s=10,
        idle_mode=IdleAttribution.size,
        sizes={"web-1": 1.0, "web-2": 2.0},
    )
    assert sz.containers["web-1"].idle == 4_500
    assert sz.containers["web-2"].idle == 9_000
    assert sz.containers["web-2"].total == 2_737 + 9_000


def test_idle_goes_to_idle_containers_too() -> None:
    # Idle power is drawn whatever runs: a container with no CPU still pays its share.
    a = attribute_energy(
        MICRO,
        dt_s=10,
        container_cpu_s={"busy": 4.0, "sleepy": 0.0},
        idle_mode=IdleAttribution.equal,
    )
    assert a.containers["sleepy"].active == 0
    assert a.containers["sleepy"].idle == 6_750


def test_size_mode_needs_sizes() -> None:
    with pytest.raises(ValueError, match="needs a size for: web-2"):
        attribute_energy(
            MICRO, dt_s=1, container_cpu_s=CPU, idle_mode=IdleAttribution.size, sizes={"web-1": 1}
        )
    with pytest.raises(ValueError, match="size must be > 0"):
        attribute_energy(
            MICRO,
            dt_s=1,
            container_cpu_s=CPU,
            idle_mode=IdleAttribution.size,
            sizes={"web-1": 1, "web-2": 0},
        )


def test_measured_energy_is_the_source_of_truth() -> None:
    # RAPL says 30 J over the 10 s: idle stays the model's 13.5 J, active 16.5 J is split
    # 5:3:2 by CPU time.
    a = attribute_energy(MICRO, dt_s=10, container_cpu_s=CPU, node_cpu_s=10, measured_energy_j=30.0)
    assert a.source == "measured"
    assert (a.node.total, a.node.idle, a.node.active) == (30_000, 13_500, 16_500)
    assert a.containers["web-1"].active == 8_250
    assert a.containers["web-2"].active == 4_950
    assert a.platform.active == 3_300
    # Kepler also reports the idle energy: use it.
    k = attribute_energy(
        MICRO,
        dt_s=10,
        container_cpu_s=CPU,
        node_cpu_s=10,
        measured_energy_j=30.0,
        measured_idle_j=12.0,
    )
    assert (k.node.idle, k.node.active) == (12_000, 18_000)
    assert (k.containers["web-1"].active, k.containers["web-2"].active) == (9_000, 5_400)


def test_measured_energy_below_idle_estimate() -> None:
    a = attribute_energy(MICRO, dt_s=10, container_cpu_s=CPU, measured_energy_j=10.0)
    assert (a.node.total, a.node.idle, a.node.active) == (10_000, 10_000, 0)
    assert any("below the idle estimate" in n for n in a.notes)
    with pytest.raises(ValueError, match="needs measured_energy_j"):
        attribute_energy(MICRO, dt_s=10, container_cpu_s=CPU, measured_idle_j=1.0)


def test_measured_active_with_no_busy_cpu_goes_to_platform() -> None:
    a = attribute_energy(MICRO, dt_s=1, container_cpu_s={"c": 0.0}, measured_energy_j=2.0)
    assert a.node.active == 650
    assert a.platform.active == 650
    assert a.containers["c"].active == 0


def test_no_containers_everything_is_platform() -> None:
    a = attribute_energy(MICRO, dt_s=2, container_cpu_s={}, node_cpu_s=2, idle_mode="equal")
    assert a.containers == {}
    assert a.platform.total == a.node.total == 4_525  # u = 2 / (4 * 2) = 0.25 -> 2.2625 W


def test_inconsistent_counters_are_clamped_and_noted() -> None:
    a = attribute_energy(MICRO, dt_s=1, container_cpu_s={"a": 3.0, "b": 2.0}, node_cpu_s=4.5)
    assert a.utilisation == 1.0
    assert a.platform.active == 0
    assert any("exceeds the node" in n for n in a.notes)
    assert any("clamped" in n for n in a.notes)
    assert a.node.total == 5_000
    with pytest.raises(ValueError, match="dt_s"):
        attribute_energy(MICRO, dt_s=0, container_cpu_s={})
    with pytest.raises(ValueError, match="container a"):
        attribute_energy(MICRO, dt_s=1, container_cpu_s={"a": -1.0})


def test_attribution_serialises_with_totals() -> None:
    a = attribute_power(KEPLER, container_cores=SITUATIONS[3], idle_mode="equal", sizes=SIZES)
    data = json.loads(a.model_dump_json())
    assert data["containers"]["B"] == {"active": 320_000, "idle": 100_000, "total": 420_000}
    assert data["method"] == "equal"
    assert data["unit"] == "mW"


# --- counters ----------------------------------------------------------------------------------


def test_counter_delta_and_wrap() -> None:
    assert counter_delta(10.0, 12.5) == 2.5
    # RAPL energy_uj wraps at max_energy_range_uj (here 262 143.328850 J).
    wrap = 262_143.32885
    assert counter_delta(262_140.0, 1.0, wrap=wrap) == pytest.approx(4.32885)
    with pytest.raises(CounterError, match="backwards"):
        counter_delta(5.0, 4.0, name="node energy")
    with pytest.raises(CounterError):
        counter_delta(-1.0, 4.0)


def test_cpu_deltas_handle_new_and_restarted_containers() -> None:
    deltas, restarted = cpu_deltas(
        {"a": 100.0, "b": 50.0, "gone": 7.0}, {"a": 101.5, "b": 0.25, "new": 0.5}
    )
    assert deltas == {"a": 1.5, "b": 0.25, "new": 0.5}
    assert restarted == ("b", "new")


def test_attribute_interval_from_snapshots() -> None:
    before = CounterSnapshot(
        time_s=100.0, containers={"web-1": 50.0, "web-2": 20.0}, node_cpu_s=500.0
    )
    after = CounterSnapshot(
        time_s=110.0, containers={"web-1": 55.0, "web-2": 23.0}, node_cpu_s=510.0
    )
    a = attribute_interval(MICRO, before, after)
    b = attribute_energy(MICRO, dt_s=10, container_cpu_s=CPU, node_cpu_s=10)
    assert a == b


def test_attribute_interval_uses_measured_energy_with_wrap() -> None:
    before = CounterSnapshot(time_s=0, containers={"c": 0.0}, node_energy_j=99.0)
    after = CounterSnapshot(time_s=1, containers={"c": 1.0}, node_energy_j=2.0)
    a = attribute_interval(MICRO, before, after, energy_wrap_j=100.0)
    assert a.source == "measured"
    assert a.node.total == 3_000
    with pytest.raises(CounterError):
        attribute_interval(MICRO, before, after)
    with pytest.raises(ValueError, match="time order"):
        attribute_interval(MICRO, after, before)


def test_attribute_interval_notes_restarts() -> None:
    before = CounterSnapshot(time_s=0, containers={"c": 10.0})
    after = CounterSnapshot(time_s=1, containers={"c": 0.5})
    a = attribute_interval(MICRO, before, after)
    assert any("restarted" in n and "c" in n for n in a.notes)
    assert a.utilisation == 0.125


# --- idle shares and the exact split -------------------------------------------------------------


def test_idle_share_w() -> None:
    assert idle_share_w(KEPLER, IdleAttribution.none, "A", ["A", "B"]) == 0.0
    assert idle_share_w(KEPLER, IdleAttribution.equal, "A", ["A", "B"]) == 100.0
    assert idle_share_w(KEPLER, IdleAttribution.equal, "A", []) == 200.0  # alone
    assert idle_share_w(
        KEPLER, IdleAttribution.size, "A", ["A", "B"], {"A": 8, "B": 24}
    ) == pytest.approx(50.0)


def test_largest_remainder() -> None:
    assert largest_remainder(10, [1, 1, 1]) == [4, 3, 3]  # tie -> lowest index
    assert largest_remainder(10, [1, 1, 2]) == [3, 2, 5]  # 2.5, 2.5, 5 -> tie to index 0
    assert largest_remainder(100, [0.1, 0.2, 0.7]) == [10, 20, 70]
    assert largest_remainder(0, [0, 0]) == [0, 0]
    assert sum(largest_remainder(1_000_003, [1 / 3, 1 / 7, 0.5])) == 1_000_003
    with pytest.raises(ValueError, match="zero weights"):
        largest_remainder(5, [0, 0])
    with pytest.raises(ValueError, match=">= 0"):
        largest_remainder(5, [1, -1])
    with pytest.raises(ValueError, match="finite"):
        largest_remainder(5, [float("inf")])
