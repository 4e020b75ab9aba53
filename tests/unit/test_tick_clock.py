"""Tick assembly: event-time ticks, counters -> per-tick mJ, late/duplicate/missing rules,
snapshot/restore equivalence."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from ecovisor.contract.schemas import (
    BatteryTelemetry,
    CarbonTelemetry,
    ContainerTelemetry,
    SolarTelemetry,
)
from ecovisor.core.tick_clock import TickClock, to_us

T0 = 1_700_000_000.0  # a tick boundary for Δt = 1 s


def at(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, UTC)


def cont(c: str, seq: int, t: float, j: float, app: str = "a") -> ContainerTelemetry:
    return ContainerTelemetry(
        site="s",
        time=at(t),
        source=f"src-{c}",
        seq=seq,
        app=app,
        container=c,
        cpu_s=0,
        energy_j=j,
    )


def carbon(seq: int, t: float, v: float) -> CarbonTelemetry:
    return CarbonTelemetry(site="s", time=at(t), source="co2", seq=seq, intensity_g_per_kwh=v)


def close_all(clock: TickClock, until_s: float) -> list:
    return clock.advance(to_us(T0 + until_s))


def test_counter_deltas_and_grace() -> None:
    clock = TickClock(1.0, 0.5)
    k0 = int(T0)
    assert clock.offer(cont("c1", 0, 0.1, 100.0)) == "ok"  # baseline
    assert clock.offer(cont("c1", 1, 0.9, 101.5)) == "ok"
    assert clock.offer(cont("c1", 2, 1.9, 104.0)) == "ok"
    # tick 0 ends at 1.0; with 0.5 s grace it is still open at 1.4
    assert close_all(clock, 1.4) == []
    (t0,) = close_all(clock, 1.5)
    # first sight: energy since the source's earliest sample of the tick
    assert t0.k == k0 and t0.demand_mj == {"a": {"c1": 1_500}}
    (t1,) = close_all(clock, 2.5)
    assert t1.k == k0 + 1 and t1.demand_mj == {"a": {"c1": 2_500}}  # 104.0 - 101.5 J


def test_duplicates_ignored_and_late_rolls_forward() -> None:
    clock = TickClock(1.0, 0.2)
    clock.offer(cont("c1", 0, 0.0, 0.0))
    clock.offer(cont("c1", 1, 0.5, 1.0))
    assert clock.offer(cont("c1", 1, 0.5, 1.0)) == "duplicate"
    close_all(clock, 1.2)  # tick 0 closed
    # a sample of tick 0 arriving after its close: rolled into tick 1
    assert clock.offer(cont("c1", 2, 0.9, 2.0)) == "late"
    clock.offer(cont("c1", 3, 1.5, 3.0))
    (t1,) = close_all(clock, 2.2)
    assert t1.late == 1 and t1.demand_mj["a"]["c1"] == 2_000  # 3.0 - 1.0 J, nothing lost
    assert clock.n_duplicates == 1 and clock.n_late == 1


def test_missing_source_carried_and_estimated() -> None:
    clock = TickClock(1.0, 0.0)
    clock.offer(cont("c1", 0, 0.0, 10.0))
    clock.offer(cont("c2", 0, 0.0, 10.0, app="b"))
    clock.offer(carbon(0, 0.0, 200.0))
    clock.offer(cont("c1", 1, 1.0, 11.0))  # c2 and carbon silent in tick 1
    clock.offer(cont("c1", 2, 2.0, 12.0))
    clock.offer(cont("c2", 1, 2.0, 13.0, app="b"))  # c2 comes back: catch-up in tick 2
    ticks = close_all(clock, 3.0)
    assert [t.k - int(T0) for t in ticks] == [0, 1, 2]
    t1 = ticks[1]
    assert t1.app_estimated_sources == {"b": ("c2",)}
    assert "carbon:co2" in t1.estimated_sources
    assert t1.intensity_g_per_kwh == 200.0  # carried
    assert ticks[2].demand_mj == {"a": {"c1": 1_000}, "b": {"c2": 3_000}}
    assert clock.n_estimated >= 2


def test_intensity_time_weighted() -> None:
    clock = TickClock(10.0, 0.0)
    clock.offer(carbon(0, 0.0, 100.0))
    clock.offer(carbon(1, 2.5, 300.0))
    (t,) = clock.advance(to_us(T0 + 10.0))
    assert t.intensity_g_per_kwh == (100.0 * 2.5 + 300.0 * 7.5) / 10.0
    clock.offer(carbon(2, 15.0, 500.0))
    (t,) = clock.advance(to_us(T0 + 20.0))
    assert t.intensity_g_per_kwh == (300.0 * 5 + 500.0 * 5) / 10.0  # carried in at start


def test_solar_buffered_one_tick_and_battery() -> None:
    clock = TickClock(1.0, 0.0)

    def solar(seq: int, t: float, j: float) -> SolarTelemetry:
        return SolarTelemetry(site="s", time=at(t), source="pv", seq=seq, power_w=5, energy_j=j)

    clock.offer(solar(0, 0.0, 0.0))
    clock.offer(solar(1, 0.99, 5.0))
    clock.offer(
        BatteryTelemetry(
            site="s", time=at(0.5), source="bat", seq=0, stored_wh=7.0, capacity_wh=40, power_w=0
        )
    )
    clock.offer(solar(2, 1.99, 9.0))
    t0, t1 = clock.advance(to_us(T0 + 2.0))
    assert (t0.solar_mj, t0.solar_prev_mj) == (5_000, 0)
    assert (t1.solar_mj, t1.solar_prev_mj) == (4_000, 5_000)  # the core gets k-1's solar
    assert t1.battery_stored_wh == 7.0 and "battery:bat" in t1.estimated_sources


def _stream(seed: int) -> list[ContainerTelemetry]:
    rng = random.Random(seed)
    msgs = []
    energy = {"c1": 0.0, "c2": 0.0}
    seq = {"c1": 0, "c2": 0}
    for i in range(60):
        t = i * 0.25
        for c in energy:
            energy[c] += rng.uniform(0, 3)
            msgs.append(cont(c, seq[c], t, round(energy[c], 3)))
            seq[c] += 1
    # shuffle locally (out of order within 1 s) and duplicate some
    out = []
    for m in msgs:
        out.append(m)
        if rng.random() < 0.1:
            out.append(m)
    for i in range(0, len(out) - 3, 3):
        if rng.random() < 0.3:
            out[i], out[i + 2] = out[i + 2], out[i]
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), cut=st.integers(1, 130))
def test_snapshot_restore_is_exact(seed: int, cut: int) -> None:
    """Feeding a stream straight through, or snapshotting after any message and
    continuing from the restored clock, gives identical closed ticks and totals."""
    msgs = _stream(seed)
    cut = min(cut, len(msgs) - 1)

    def run(split: int | None) -> list:
        clock = TickClock(1.0, 0.3)
        out = []
        for i, m in enumerate(msgs):
            clock.offer(m)
            out.extend(clock.advance(clock.watermark_us or 0))
            if split is not None and i == split:
                clock = TickClock.restore(clock.snapshot())
        out.extend(clock.advance(to_us(T0 + 100)))
        return out

    a, b = run(None), run(cut)
    assert a == b
    total = sum(v for t in a for d in t.demand_mj.values() for v in d.values())
    last: dict[str, int] = {}
    first: dict[str, int] = {}
    for m in msgs:
        last[m.container] = max(last.get(m.container, 0), round(m.energy_j * 1000))
        if m.seq == 0:
            first[m.container] = round(m.energy_j * 1000)
    assert total == sum(last[c] - first[c] for c in last)  # telescoping counters, exact
