"""Counter samples that are backdated, replayed, or arrive after their source was
forgotten: none may book energy twice or book energy the source could not produce
(docs/ledger.md#ticks, the counter fault check and the replay floor). Each scenario
booked more than the meter read before the fix (or, for a counter back from a long
silence, less: its catch-up was dropped with its forgotten baseline)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry, SolarTelemetry
from ecovisor.core.tick_clock import ClockLimits, TickClock, to_us
from streams.ledger_worker import SiteLedger
from tests.unit.test_ledger_intake import at, demo

LONG_AGO = datetime(1971, 1, 1, tzinfo=UTC)


def web1(seq: int, t: float, j: float, when: datetime | None = None,
         source: str = "ctr-web-1") -> ContainerTelemetry:  # fmt: skip
    return ContainerTelemetry(site="demo", time=when or at(t), source=source, seq=seq,
                              app="web", container="web-1", node="node-1", cpu_s=0.0,
                              energy_j=j)  # fmt: skip


def pv(seq: int, t: float, j: float, when: datetime | None = None,
       source: str = "pv-1") -> SolarTelemetry:  # fmt: skip
    return SolarTelemetry(site="demo", time=when or at(t), source=source, seq=seq,
                          power_w=5.0, energy_j=j)  # fmt: skip


def co2(seq: int, t: float) -> CarbonTelemetry:
    return CarbonTelemetry(site="demo", time=at(t), source="carbon-1", seq=seq,
                           intensity_g_per_kwh=200.0)  # fmt: skip


def feed(led: SiteLedger, m: Any) -> str | None:
    """One message through the worker's intake (event mode), then the ticks it closes."""
    why = led.ingest(m, to_us(m.time.timestamp()), led.event_now())
    led.close(led.event_now())  # type: ignore[arg-type]
    return why


def drive(led: SiteLedger, t0: float, t1: float, step: float = 1.0, seq0: int = 1) -> int:
    """Carbon samples every ``step`` s from ``t0`` to ``t1``: the event clock moves and
    ticks close. Returns the next carbon seq."""
    seq, t = seq0, t0
    while t <= t1:
        assert feed(led, co2(seq, t)) is None
        seq, t = seq + 1, t + step
    return seq


def web1_booked_j(led: SiteLedger) -> float:
    return led.state.apps["web"].cumulative.containers["web-1"].energy_mj / 1e3


# --- backdated samples: the allowance counts from the newest sample ------------------------


def test_a_sample_dated_1971_is_refused_and_opens_no_jump() -> None:
    """The reviewer's repro: web-1 on a 5 W node; +1e9 J is refused, but seq 7 dated
    1971-01-01 (unchanged value) moved the guard's time back 53 years, and seq 8 "now"
    with +1e9 J was booked (1,000,000,020 J)."""
    led = SiteLedger.new(demo())
    for s in range(5):
        assert feed(led, web1(s + 1, s, 5.0 * s)) is None
        feed(led, co2(s + 1, s))
    assert "more than the source can produce" in (feed(led, web1(6, 5, 1e9)) or "")
    why = feed(led, web1(7, 0, 20.0, when=LONG_AGO))
    assert why is not None and "too old to be told from a replay" in why
    why = feed(led, web1(8, 6, 1e9 + 20))
    assert why is not None and "more than the source can produce" in why
    drive(led, 7, 12, seq0=20)
    assert web1_booked_j(led) == 20.0


def test_a_backdated_sample_within_the_floor_does_not_widen_the_allowance() -> None:
    """Backdated by 30 min only (inside source_expiry_s, so not refused as a replay):
    the guard's time still never goes back. Before: +1,000 J in 2 s on a 5 W node was
    booked (the allowance counted 30 min)."""
    led = SiteLedger.new(demo())
    drive(led, 0, 1900, step=50, seq0=1000)  # the clock well past 30 min
    for s in range(5):
        assert feed(led, web1(s + 1, 1900 + s, 5.0 * s)) is None
    assert feed(led, web1(6, 100, 20.0)) is None  # late (rolls in), unchanged value
    why = feed(led, web1(7, 1906, 1020.0))
    assert why is not None and "more than the source can produce" in why
    assert feed(led, web1(8, 1907, 25.0)) is None  # honest samples go on
    drive(led, 1908, 1912, seq0=2000)
    assert web1_booked_j(led) == 25.0


def test_a_backdated_reset_does_not_widen_the_allowance() -> None:
    """A reset (value back to 0) dated 30 min back rebased the counter at that time:
    the next sample's allowance counted 30 min. The rebase keeps the newest time."""
    clock = TickClock(1.0, 0.0, limits=ClockLimits(max_power_w=lambda _k: 5.0))
    base = 1_700_000_000.0
    for s in range(5):
        clock.offer(_c(s + 1, base + 1800 + s, 5.0 * s))
    assert clock.offer(_c(6, base + 10, 0.0)) == "reset"  # late, within the floor
    assert clock.offer(_c(7, base + 1806, 1000.0)) == "refused"
    assert clock.reason is not None and "more than the source can produce" in clock.reason
    ticks = clock.advance(to_us(base + 1810))
    assert sum(sum(d.values()) for t in ticks for d in t.demand_mj.values()) == 20_000


def _c(seq: int, t: float, j: float, source: str = "src") -> ContainerTelemetry:
    return ContainerTelemetry(site="s", time=datetime.fromtimestamp(t, UTC), source=source,
                              seq=seq, app="a", container="c1", cpu_s=0, energy_j=j)  # fmt: skip


def test_phantom_solar_dated_1971_is_not_split_to_every_app() -> None:
    """Solar counters too: the same two samples booked 5e8 J of solar to each app."""
    led = SiteLedger.new(demo())
    for s in range(3):
        assert feed(led, pv(s + 1, s, 5.0 * s)) is None
        feed(led, co2(s + 1, s))
    assert "too old" in (feed(led, pv(4, 0, 10.0, when=LONG_AGO)) or "")
    assert "more than the source can produce" in (feed(led, pv(5, 3, 1e9)) or "")
    drive(led, 4, 9, seq0=10)
    for app in ("web", "batch"):
        assert led.state.apps[app].cumulative.solar_mj <= 5_000  # 10 J over two apps


# --- sources forgotten: replays refused, baselines of configured counters kept ---------------


def _silent_web1(replay: list[ContainerTelemetry]) -> SiteLedger:
    """web-1 meters 0..45 J over t = 0..9, falls silent for ~90 s (past source_expiry_s
    30 s: its dedupe state goes; past 60 ticks: its counter is no longer estimated),
    then ``replay`` is delivered and the meter reads 50 J at t = 101."""
    led = SiteLedger.new(demo("source_expiry_s: 30"))
    for s in range(10):
        assert feed(led, web1(s + 1, s, 5.0 * s)) is None
        feed(led, co2(s + 1, s))
    nxt = drive(led, 10, 100, seq0=11)
    assert "ctr-web-1" not in led.clock.dedupe  # forgotten
    for m in replay:
        why = feed(led, m)
        assert why is not None and "too old to be told from a replay" in why, why
    assert feed(led, web1(11, 101, 50.0)) is None
    drive(led, 102, 106, seq0=nxt)
    return led


def test_a_replayed_sample_of_a_forgotten_source_is_refused() -> None:
    """The reviewer's repro: seq 1 (t = 0, 0 J) replayed after its source was forgotten
    was taken as the counter's new baseline, and 50 J were booked on top of the 45 J
    already booked: 95 J for a meter that read 50 J."""
    led = _silent_web1([web1(1, 0, 0.0), web1(5, 4, 20.0)])
    assert web1_booked_j(led) == 50.0


def test_a_counter_back_from_a_long_silence_books_its_catch_up() -> None:
    """The configured counter's baseline outlives its source: the 5 J metered while it
    was silent are booked when it reports again (they were lost: 45 J for 50 J)."""
    led = _silent_web1([])
    assert web1_booked_j(led) == 50.0
    assert "c:web-1" in led.clock.counters and not led.clock.dormant


def test_dormant_baselines_survive_a_restart() -> None:
    led = SiteLedger.new(demo("source_expiry_s: 30"))
    for s in range(10):
        feed(led, web1(s + 1, s, 5.0 * s))
        feed(led, co2(s + 1, s))
    nxt = drive(led, 10, 100, seq0=11)
    led = SiteLedger.restore(led.cfg, led.snapshot())
    assert "too old" in (feed(led, web1(1, 0, 0.0)) or "")
    assert feed(led, web1(11, 101, 50.0)) is None
    drive(led, 102, 106, seq0=nxt)
    assert web1_booked_j(led) == 50.0


def test_a_source_restarted_from_a_lower_seq_after_it_was_forgotten_is_followed() -> None:
    """A collector that numbers from 1 again once its source is forgotten: every sample
    it sends is newer than all the counter took (the floor), so it is followed by time,
    not held 'out of order' until its seqs pass the old ones."""
    led = SiteLedger.new(demo("source_expiry_s: 30"))
    for s in range(10):
        feed(led, web1(100 + s, s, 5.0 * s))
        feed(led, co2(s + 1, s))
    nxt = drive(led, 10, 100, seq0=11)
    assert feed(led, web1(1, 101, 50.0)) is None
    assert feed(led, web1(2, 102, 52.0)) is None
    drive(led, 103, 106, seq0=nxt)
    assert web1_booked_j(led) == 52.0


def test_a_counter_reset_during_a_long_silence_books_nothing_for_it() -> None:
    led = SiteLedger.new(demo("source_expiry_s: 30"))
    for s in range(10):
        feed(led, web1(s + 1, s, 5.0 * s))
        feed(led, co2(s + 1, s))
    nxt = drive(led, 10, 100, seq0=11)
    assert "went back" in (feed(led, web1(11, 101, 2.0)) or "")  # reported, taken
    assert feed(led, web1(12, 102, 6.0)) is None
    drive(led, 103, 106, seq0=nxt)
    assert web1_booked_j(led) == 45.0 + 4.0


def test_late_samples_roll_in_down_to_the_floor_and_no_further() -> None:
    """Late but recent samples still roll into the oldest open tick; the floor is
    source_expiry_s before it, exactly."""
    clock = TickClock(1.0, 0.0, limits=ClockLimits(source_expiry_s=30))
    base = 1_700_000_000.0
    for s in range(100):
        clock.offer(
            CarbonTelemetry(
                site="s",
                time=datetime.fromtimestamp(base + s, UTC),
                source="co2",
                seq=s,
                intensity_g_per_kwh=1.0,
            )
        )
        clock.advance(to_us(base + s))
    assert clock.next_close is not None
    floor = clock.next_close * 1_000_000 - 30_000_000
    assert clock.offer(_c(1, floor / 1e6, 1.0)) == "late"
    older = _c(1, floor / 1e6 - 1e-6, 1.0, source="other")
    assert clock.offer(older) == "refused" and "too old" in (clock.reason or "")
    assert "other" not in clock.dedupe  # refused before it could add a source


def test_an_unconfigured_solar_source_is_forgotten_once_below_the_floor() -> None:
    """Only the configured counters are kept for good (bounded by the configuration);
    another solar source's baseline goes once all it took is below the floor, and its
    old samples are refused by then. The configured array's is kept."""
    led = SiteLedger.new(demo("source_expiry_s: 30"))
    for s in range(5):
        assert feed(led, pv(s + 1, s, 1.0 * s, source="pv-9")) is None
        assert feed(led, pv(s + 1, s, 1.0 * s)) is None
        feed(led, co2(s + 1, s))
    drive(led, 5, 80, seq0=10)
    assert "too old" in (feed(led, pv(1, 0, 0.0, source="pv-9")) or "")
    clock = led.clock
    assert "s:pv-9" not in clock.dormant and "s:pv-9" not in clock.guard.latest
    assert "s:pv-1" in clock.dormant and "s:pv-1" in clock.guard.latest
    snap = json.loads(led.snapshot())["clock"]
    assert "s:pv-9" not in json.dumps(snap)
