"""Tick assembly: event-time ticks, counters -> per-tick mJ, late/duplicate/missing rules,
snapshot/restore equivalence."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecovisor.contract.telemetry import (
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


# --- hardening: bounded state, counter faults and resets -----------------------------

EPOCH_MS = 1_700_000_000_000  # a first seq as large as epoch ms


def test_dedupe_state_is_o1_per_source_whatever_the_first_seq() -> None:
    """C1: each new source whose first seq was large added ~4,000 'holes' (~61 kB) to
    the snapshot; 20 such sources made it 1.15 MB (over Kafka's 1 MB). Now a source
    costs its highest seq and a small window, and duplicates are still dropped, also
    after a restart from the snapshot."""
    import json

    clock = TickClock(1.0, 0.5)
    for i in range(20):
        assert clock.offer(carbon_of(f"dev-{i}", EPOCH_MS + i, 0.1)) == "ok"
    size = len(json.dumps(clock.snapshot()))
    assert size < 4_000, size  # was 1,150,567 bytes
    clock = TickClock.restore(json.loads(json.dumps(clock.snapshot())))
    assert clock.offer(carbon_of("dev-3", EPOCH_MS + 3, 0.2)) == "duplicate"
    assert clock.offer(carbon_of("dev-3", EPOCH_MS + 1_000, 0.3)) == "ok"
    assert clock.offer(carbon_of("dev-3", EPOCH_MS + 500, 0.4)) == "ok"  # reordered: new
    assert clock.offer(carbon_of("dev-3", EPOCH_MS + 500, 0.4)) == "duplicate"


def carbon_of(source: str, seq: int, t: float) -> CarbonTelemetry:
    return CarbonTelemetry(site="s", time=at(t), source=source, seq=seq, intensity_g_per_kwh=1)


@settings(max_examples=200, deadline=None)
@given(
    n=st.integers(1, 200),
    seed=st.integers(0, 10**6),
    gap=st.sampled_from([1, 7, 1000]),
    cut=st.integers(0, 400),
)
def test_dedupe_window_is_exact(n: int, seed: int, gap: int, cut: int) -> None:
    """Every seq is accepted exactly once however often it is re-delivered, while
    reordering stays within the window; a snapshot/restore anywhere changes nothing."""
    import json

    rng = random.Random(seed)
    seqs = [EPOCH_MS + i * gap for i in range(n)]
    stream = []
    for s in seqs:
        stream.append(s)
        if rng.random() < 0.3:  # re-delivered later, within the window
            stream.insert(len(stream) - rng.randint(0, min(12, len(stream) - 1)), s)
    clock = TickClock(1.0, 0.5)
    accepted = []
    for i, s in enumerate(stream):
        if i == cut:
            clock = TickClock.restore(json.loads(json.dumps(clock.snapshot())))
        if clock.offer(carbon_of("src", s, 0.1)) == "ok":
            accepted.append(s)
    assert sorted(accepted) == seqs


def test_seq_older_than_the_window_is_refused_with_a_reason() -> None:
    clock = TickClock(1.0, 0.5)
    for i in range(100):
        clock.offer(carbon_of("src", i * 2, 0.1))
    assert clock.offer(carbon_of("src", 1, 0.1)) == "refused"  # never seen, but too old
    assert clock.reason is not None and "older than its last 16" in clock.reason
    assert clock.offer(carbon_of("src", 197, 0.1)) == "ok"  # inside the window


def test_sources_are_bounded_and_expire() -> None:
    from ecovisor.core.tick_clock import ClockLimits

    clock = TickClock(1.0, 0.0, limits=ClockLimits(max_sources=3, source_expiry_s=10))
    for i in range(3):
        assert clock.offer(carbon_of(f"d{i}", 1, 0.0)) == "ok"
    assert clock.offer(carbon_of("d3", 1, 0.5)) == "refused"
    assert clock.reason is not None and "max_sources" in clock.reason
    assert set(clock.dedupe) == {"d0", "d1", "d2"}
    # d0 keeps reporting; d1, d2 fall silent for more than 10 s of event time
    for s in range(1, 13):
        clock.offer(carbon_of("d0", 1 + s, float(s)))
        clock.advance(to_us(T0 + s))
    assert set(clock.dedupe) == {"d0"}
    assert clock.offer(carbon_of("d3", 1, 12.5)) == "ok"


def solar_of(seq: int, t: float, j: float, source: str = "pv") -> SolarTelemetry:
    return SolarTelemetry(site="s", time=at(t), source=source, seq=seq, power_w=1, energy_j=j)


def _solar_clock(nameplate: float = 20.0) -> TickClock:
    from ecovisor.core.tick_clock import ClockLimits

    return TickClock(1.0, 0.0, limits=ClockLimits(max_power_w=lambda _k: nameplate))


def test_solar_counter_fault_and_resets_book_nothing() -> None:
    """C3 (B4, ledger side): on a 20 W array a counter going 1000 -> 2000 -> 500 -> 100 J
    booked +1000, +500, +100 J. The jump is a fault (refused, counted); going back is a
    reset (new baseline, nothing booked, counted); honest increments still count."""
    clock = _solar_clock()
    assert clock.offer(solar_of(1, 0.0, 1000.0)) == "ok"
    assert clock.offer(solar_of(2, 1.0, 2000.0)) == "refused"
    assert clock.reason is not None and "more than the source can produce" in clock.reason
    assert clock.offer(solar_of(3, 2.0, 500.0)) == "reset"
    assert clock.reason is not None and "went back" in clock.reason
    assert clock.offer(solar_of(4, 3.0, 100.0)) == "reset"
    assert clock.offer(solar_of(5, 4.0, 110.0)) == "ok"  # +10 J in 1 s: possible
    ticks = clock.advance(to_us(T0 + 5.0))
    assert sum(t.solar_mj for t in ticks) == 10_000
    assert (clock.guard.n_faults, clock.guard.n_resets, clock.n_refused) == (1, 2, 1)


def test_a_jump_confirmed_by_the_next_sample_becomes_the_baseline() -> None:
    """A counter that really jumped (a replaced meter) is not refused forever: the next
    sample consistent with the jump makes it the baseline, the jump itself unbooked.
    A lone spike between honest samples is just refused."""
    clock = _solar_clock()
    clock.offer(solar_of(1, 0.0, 100.0))
    assert clock.offer(solar_of(2, 0.5, 10**6)) == "refused"  # a lone spike
    assert clock.offer(solar_of(3, 1.0, 110.0)) == "ok"
    assert clock.offer(solar_of(4, 1.5, 5000.0)) == "refused"
    assert clock.offer(solar_of(5, 2.0, 5005.0)) == "reset"
    assert clock.offer(solar_of(6, 2.5, 5015.0)) == "ok"
    ticks = clock.advance(to_us(T0 + 5.0))
    assert sum(t.solar_mj for t in ticks) == 20_000  # 100 -> 110 and 5005 -> 5015


def test_huge_counter_is_refused_not_an_overflow() -> None:
    """C3: one solar telemetry from a new source with energy_j = 1e306 raised
    OverflowError (float -> int mJ) and stopped the ledger on every replay."""
    for j in (1e306, float("nan"), -1.0):
        clock = _solar_clock()
        m = SolarTelemetry.model_construct(
            site="s", time=at(0), source="pv", seq=1, power_w=1.0, energy_j=j, kind="solar"
        )
        assert clock.offer(m) == "refused"
        assert clock.reason is not None and "energy_j" in clock.reason
    big = CarbonTelemetry.model_construct(
        site="s", time=at(0), source="c", seq=1, intensity_g_per_kwh=1e306, kind="carbon"
    )
    assert clock.offer(big) == "refused"


def test_counter_guard_survives_a_restart() -> None:
    import json

    clock = _solar_clock()
    clock.offer(solar_of(1, 0.0, 1000.0))
    clock.offer(solar_of(2, 0.5, 10.0))  # reset: baseline 10 J, booked value stays
    clock.advance(to_us(T0 + 1.0))
    clock = TickClock.restore(json.loads(json.dumps(clock.snapshot())), limits=clock.limits)
    assert clock.offer(solar_of(3, 1.5, 5000.0)) == "refused"  # still checked vs 10 J
    assert clock.offer(solar_of(4, 1.6, 15.0)) == "ok"
    (t,) = clock.advance(to_us(T0 + 2.0))
    assert t.solar_mj == 5_000


@pytest.mark.parametrize(("j", "status"), [(500.0, "refused"), (115.0, "ok"), (0.0, "refused")])
def test_out_of_order_counter_sample_must_fit_below_the_newer_one(j: float, status: str) -> None:
    clock = _solar_clock()
    clock.offer(solar_of(1, 0.0, 100.0))
    clock.offer(solar_of(3, 2.0, 130.0))
    assert clock.offer(solar_of(2, 1.0, j)) == status  # 0 J: 130 J in 1 s on 20 W


def test_carbon_samples_per_tick_are_bounded() -> None:
    from ecovisor.core.tick_clock import MAX_INTENSITY_SAMPLES

    clock = TickClock(1.0, 0.0)
    for i in range(MAX_INTENSITY_SAMPLES):
        assert clock.offer(carbon_of("c", i, 0.5)) == "ok"
    assert clock.offer(carbon_of("c", 10**6, 0.5)) == "refused"
    assert clock.offer(carbon_of("c", 10**6 + 1, 1.5)) == "ok"  # the next tick
