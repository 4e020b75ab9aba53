"""The ledger's intake and its state under hostile input (docs/reliability.md, the
ledger's section): bounded snapshot (C1), counters the source cannot have produced
(C3), the replay clock (S1), samples ahead of the site's clock (B4), and a crash that
is reported as one (F). The Faust wiring (``LedgerService``) runs against an in-memory
producer and tables: what it would send is what these tests read."""

from __future__ import annotations

import asyncio
import json
import time
import types
import weakref
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from ecovisor.contract import topics
from ecovisor.contract.commands import SetBatteryChargeRate
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import Notification
from ecovisor.contract.operator_messages import DeadLetter
from ecovisor.contract.telemetry import (
    CarbonTelemetry,
    ClockMessage,
    ContainerTelemetry,
    SolarTelemetry,
)
from ecovisor.core.entries import AppLedgerEntry
from ecovisor.core.tick_clock import to_us
from streams.ledger_commands import SEEN_COMMANDS_PER_APP
from streams.ledger_service import LedgerService, run_guarded
from streams.ledger_worker import SiteLedger
from tests.fakes.commands import signed

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.yaml"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
T0_US = to_us(T0.timestamp())
EPOCH_MS = 1_700_000_000_000


def demo(limits: str = "") -> EcovisorConfig:
    text = DEMO.read_text()
    if limits:
        text = text.replace("  grace_s: 0.5\n", f"  grace_s: 0.5\n  limits: {{{limits}}}\n")
    return parse_config(text)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def carbon(source: str, seq: int, t: float) -> CarbonTelemetry:
    return CarbonTelemetry(site="demo", time=at(t), source=source, seq=seq,
                           intensity_g_per_kwh=200.0)  # fmt: skip


def solar(seq: int, t: float, j: float) -> SolarTelemetry:
    return SolarTelemetry(site="demo", time=at(t), source="pv-1", seq=seq, power_w=5.0,
                          energy_j=j)  # fmt: skip


def container(c: str, seq: int, t: float, j: float, app: str = "web") -> ContainerTelemetry:
    return ContainerTelemetry(site="demo", time=at(t), source=f"pm-{c}", seq=seq, app=app,
                              container=c, node="node-1", cpu_s=0.0, energy_j=j)  # fmt: skip


def clock_msg(t: datetime, source: str | None = "replay") -> ClockMessage:
    return ClockMessage(site="demo", time=t, source=source)


# --- the Faust wiring against in-memory fakes ---------------------------------------------


@dataclass
class Record:
    value: bytes | None
    offset: int


class FakeProducer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, *_: Any) -> Any:
        self.sent.append((topic, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class FakeApp:
    def __init__(self) -> None:
        self.producer = FakeProducer()
        self.crashed: BaseException | None = None

    async def crash(self, e: BaseException) -> None:
        self.crashed = e


class Wired:
    """A LedgerService on fakes; ``feed`` publishes messages to it as one batch."""

    def __init__(self, cfg: EcovisorConfig, mode: str = "event") -> None:
        self.loop = asyncio.new_event_loop()  # one loop: sends are confirmed in it
        weakref.finalize(self, self.loop.close)
        self.app = FakeApp()
        self.svc = LedgerService(cfg, self.app, {}, {}, mode)  # type: ignore[arg-type]
        self.led = self.svc.loaded()
        self.offset = 0

    def feed(self, *msgs: Any) -> None:
        recs = []
        for m in msgs:
            raw = m if isinstance(m, bytes) else m.model_dump_json().encode()
            recs.append(Record(raw, self.offset))
            self.offset += 1
        self.run(self.svc.telemetry(self.led, 0, recs))

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def out(self, topic: str) -> list[bytes]:
        return [v for t, _, v in self.app.producer.sent if t == topic]

    def dead(self) -> list[str]:
        return [DeadLetter.model_validate_json(v).reason for v in self.out(topics.DEADLETTER)]

    def entries(self, app: str = "web") -> list[AppLedgerEntry]:
        es = [AppLedgerEntry.model_validate_json(v) for v in self.out(topics.LEDGER)]
        return [e for e in es if e.app == app]


# --- C1: the snapshot stays small ----------------------------------------------------------

SNAPSHOT_BOUND = 512_000  # bytes: half of Kafka's default 1 MB message limit


def test_snapshot_is_bounded_with_max_sources_and_many_commands() -> None:
    """C1: the snapshot (one Kafka record) went over 1 MB (MessageSizeTooLargeError, a
    crash loop): ~61 kB of dedupe 'holes' per new source with an epoch-ms first seq and
    ~59 B per remembered command id (10,000 kept). The worst case of the default limits
    now: max_sources sources with the longest names, each with a full reordering window
    of far-apart seqs; every app far past its command window with the longest ids;
    token-less junk too."""
    cfg = demo()
    led = SiteLedger.new(cfg)
    n = cfg.site.limits.max_sources
    for i in range(n):
        for j in range(20):  # far-apart seqs, reordered: fills the window of each
            seq = 2**62 - 2**32 + (2**32 // 20) * ((j * 7) % 20)
            name = f"device-{i:04d}-" + "x" * 116  # 128 characters, the longest Ident
            led.ingest(carbon(name, seq, 0.1), T0_US + 100_000, None)
    extra = led.ingest(carbon("one-too-many", 1, 0.1), T0_US + 100_000, None)
    assert extra is not None and "max_sources" in extra
    tokens = {a.id: a.token for a in cfg.apps}
    for k in range(3 * SEEN_COMMANDS_PER_APP):
        for app, token in tokens.items():
            cid = f"{app}-{k:06d}-" + "y" * 110  # ~128 characters
            cmd = signed(SetBatteryChargeRate, site="demo", time=at(0.2), app=app, token=token,
                                               watts=1e9, command_id=cid[:128])  # fmt: skip
            led.command(cmd.to_json(), T0_US + 200_000)
        led.command(f'{{"junk": {k}}}'.encode(), T0_US + 200_000)
    led.close(T0_US + 1_600_000)
    size = len(led.snapshot())
    assert size < SNAPSHOT_BOUND, size
    assert all(len(v) <= SEEN_COMMANDS_PER_APP for v in led.seen_commands.values())
    assert len(led.clock.dedupe) == n
    assert all(len(d.recent) == led.clock.limits.dedupe_window for d in led.clock.dedupe.values())


def test_twenty_new_sources_with_epoch_ms_seqs() -> None:
    """The demo-stack case: 20 sources, one message each, was a 1.55 MB snapshot."""
    w = Wired(demo())
    w.feed(*[carbon(f"dev-{i}", EPOCH_MS + i, 0.1) for i in range(20)])
    assert len(w.led.snapshot()) < 20_000
    w.feed(carbon("dev-7", EPOCH_MS + 7, 0.2))  # a duplicate: still dropped ...
    led = SiteLedger.restore(w.led.cfg, w.led.snapshot())  # ... also after a restart
    assert led.ingest(carbon("dev-7", EPOCH_MS + 7, 0.2), T0_US, None) is None
    assert led.clock.n_duplicates == 2 and led.clock.n_samples == 20


def test_one_huge_seq_of_a_known_source_is_held_not_taken() -> None:
    """Fuzz seed 2: one message naming the honest source with seq 1.7e12 was accepted,
    and every later honest seq was refused as "too old" until the source expired. A jump
    of more than 2^32 is now held; an in-sequence seq drops it, the next seq above it
    confirms it (a real renumbering loses one message), and a restart keeps it held."""
    led = SiteLedger.new(demo())
    for seq in range(5):
        assert led.ingest(carbon("co2", seq, 0.1 * seq), T0_US, None) is None
    why = led.ingest(carbon("co2", EPOCH_MS, 0.6), T0_US, None)
    assert why is not None and "held until" in why
    for seq in range(5, 9):  # the honest source goes on
        assert led.ingest(carbon("co2", seq, 0.1 * seq), T0_US, None) is None
    assert led.clock.dedupe["co2"].hwm == 8 and led.clock.n_samples == 9
    # a real renumbering: two messages far above, the second confirms
    assert led.ingest(carbon("co2", EPOCH_MS, 0.9), T0_US, None) is not None
    led = SiteLedger.restore(led.cfg, led.snapshot())  # held across a restart
    assert led.ingest(carbon("co2", EPOCH_MS + 1, 0.95), T0_US, None) is None
    assert led.clock.dedupe["co2"].hwm == EPOCH_MS + 1
    assert "older than" in (led.ingest(carbon("co2", 9, 0.99), T0_US, None) or "")


def test_another_apps_command_flood_does_not_evict_an_apps_ids() -> None:
    """Command ids are remembered per app: a re-delivered command of web stays a no-op
    however many commands batch (or junk without a token) sends in between."""
    cfg = demo()
    led = SiteLedger.new(cfg)
    web = cfg.app("web").token
    mine = signed(SetBatteryChargeRate, site="demo", time=at(0.2), app="web", token=web, watts=1.0,
                                        command_id="w-1")  # fmt: skip
    assert led.command(mine.to_json(), T0_US)
    tok = cfg.app("batch").token
    for k in range(10_001):  # out of bounds: rejected, but remembered
        cmd = signed(SetBatteryChargeRate, site="demo", time=at(0.2), app="batch", token=tok,
                                           watts=1e9, command_id=f"b-{k}")  # fmt: skip
        led.command(cmd.to_json(), T0_US)
    assert led.command(mine.to_json(), T0_US) == []


def test_settings_flood_is_rejected_not_a_crash() -> None:
    """More queued settings changes than the core holds (MAX_PENDING per app) raised
    LedgerError out of the command agent; now the extra ones are rejected with the
    reason, to the app."""
    from ecovisor.core.state import MAX_PENDING

    cfg = demo()
    led = SiteLedger.new(cfg)
    token = cfg.app("web").token
    outs = []
    for k in range(MAX_PENDING + 3):
        cmd = signed(SetBatteryChargeRate, site="demo", time=at(0.2), app="web", token=token,
                                           watts=1.0, command_id=f"c-{k}")  # fmt: skip
        outs += led.command(cmd.to_json(), T0_US + 200_000)
    notes = [Notification.model_validate_json(o.value) for o in outs]
    rejected = [n for n in notes if n.type == "command_rejected"]
    assert len(rejected) == 3 and "retry after it" in (rejected[0].reason or "")
    assert len(led.pending_settings) == MAX_PENDING


# --- C3: counters the source cannot have produced --------------------------------------------


def test_solar_counter_faults_and_resets_are_dead_lettered_and_not_booked() -> None:
    """C3 / B4 (ledger side): on the demo's 20 W array 1000 -> 2000 -> 500 -> 100 J
    booked +1000, +500, +100 J. Now: the jump is dead-lettered, each reset too (taken
    as the new baseline), and no solar is booked."""
    w = Wired(demo())
    w.feed(carbon("co2", 1, 0.0), solar(1, 0.0, 1000.0), solar(2, 1.0, 2000.0),
           solar(3, 2.0, 500.0), solar(4, 3.0, 100.0), carbon("co2", 2, 6.0))  # fmt: skip
    reasons = w.dead()
    assert len(reasons) == 3
    assert "more than the source can produce" in reasons[0]
    assert all("went back" in r for r in reasons[1:])
    assert sum(e.flows.solar_to_load + e.flows.solar_to_battery for e in w.entries()) == 0
    assert w.led.clock.solar_prev_mj == 0


def test_huge_solar_counter_from_a_new_source_is_refused_not_a_crash() -> None:
    """C3: energy_j = 1e306 from a new source raised OverflowError on every replay. It
    is refused at the edge (the contract) and, should it get past, by the clock."""
    w = Wired(demo())
    raw = solar(1, 0.0, 0.0).to_json().replace(b'"energy_j":0.0', b'"energy_j":1e306')
    w.feed(carbon("co2", 1, 0.0), raw, carbon("co2", 2, 3.0))
    assert len(w.dead()) == 1 and "energy_j" in w.dead()[0]
    assert w.entries()  # ticks still close
    led = SiteLedger.new(demo())
    m = SolarTelemetry.model_construct(site="demo", time=at(0), source="pv-9", seq=1,
                                       power_w=1.0, energy_j=1e306, kind="solar")  # fmt: skip
    assert "energy_j" in (led.ingest(m, T0_US, None) or "")


def test_container_counter_beyond_its_nodes_peak_is_refused() -> None:
    w = Wired(demo())  # node-1: ecovisor-microserver, 5 W at full load
    w.feed(container("web-1", 1, 0.0, 0.0), container("web-1", 2, 0.5, 3.0),
           container("web-1", 3, 1.0, 1000.0), container("web-1", 4, 1.5, 5.0),
           carbon("co2", 1, 3.0))  # fmt: skip
    assert len(w.dead()) == 1 and "web-1" in w.dead()[0]
    assert sum(e.demand_mj for e in w.entries()) == 5_000


def test_telemetry_of_unconfigured_container_node_or_app_is_dead_lettered() -> None:
    """Nothing could be booked from it, and its keys must not grow the state."""
    from ecovisor.contract.telemetry import AppMetricsTelemetry, NodeTelemetry

    w = Wired(demo())
    node = NodeTelemetry(site="demo", time=at(0), source="n", seq=1, node="node-9", cores=2,
                         cpu_busy_s=0.0, energy_j=0.0)  # fmt: skip
    metrics = AppMetricsTelemetry(site="demo", time=at(0), source="m", seq=1, app="ghost")
    w.feed(container("evil-1", 1, 0.0, 0.0), node, metrics)
    assert [r.split(" ")[0] for r in w.dead()] == ["container", "node", "app"]
    assert w.led.clock.n_samples == 0


# --- S1: the replay clock --------------------------------------------------------------------


def test_clock_messages_need_event_mode_and_the_replay_source() -> None:
    far = datetime(9000, 1, 1, tzinfo=UTC)
    realtime = Wired(demo("replay_clock_source: replay"), mode="realtime")
    realtime.feed(carbon("co2", 1, 0.0), clock_msg(at(5)))
    assert "wall clock" in realtime.dead()[0]
    closed = Wired(demo())  # no replay source configured: refused
    closed.feed(carbon("co2", 1, 0.0), clock_msg(far))
    assert "replay_clock_source" in closed.dead()[0]
    assert closed.led.clock.next_close == T0_US // 1_000_000  # nothing closed
    w = Wired(demo("replay_clock_source: replay"))
    w.feed(clock_msg(at(5)))  # before any telemetry
    w.feed(carbon("co2", 1, 0.0), clock_msg(at(5), source="other"), clock_msg(far),
           clock_msg(at(5), source=None))  # fmt: skip
    assert len(w.dead()) == 4, w.dead()
    assert "before any telemetry" in w.dead()[0]
    assert "only 'replay'" in w.dead()[1] and "clock_max_step_s" in w.dead()[2]
    assert w.led.clock.next_close == T0_US // 1_000_000


def test_one_far_future_clock_record_does_not_stop_the_ledger() -> None:
    """S1: a clock record at 9000-01-01 moved the ledger to tick 221845391998; nothing
    closed again, also after a restart. Now it is dead-lettered; the replay source's
    own clock closes ticks, monotone and within clock_max_step_s, across a restart."""
    cfg = demo("replay_clock_source: replay, clock_max_step_s: 3600")
    w = Wired(cfg)
    w.feed(carbon("co2", 1, 0.0), clock_msg(datetime(9000, 1, 1, tzinfo=UTC)))
    w.feed(clock_msg(at(2.6)))  # ticks 0 and 1 close (end + 0.5 s grace)
    assert [e.k - T0_US // 1_000_000 for e in w.entries()] == [0, 1]
    w.feed(clock_msg(at(2.0)))  # backwards
    assert "goes back" in w.dead()[-1]
    w2 = Wired(cfg)  # a restart from the snapshot keeps the clock and its checks
    w2.svc.snapshots[b"demo"] = w.led.snapshot()
    w2.led = w2.svc.ledger = None  # type: ignore[assignment]
    w2.led = w2.svc.loaded()
    w2.offset = w.offset  # a restart reads on after the snapshot's offset
    w2.feed(clock_msg(at(2.0)), clock_msg(at(7200.0)), carbon("co2", 2, 3.0), clock_msg(at(4.6)))
    assert len(w2.dead()) == 2
    assert [e.k - T0_US // 1_000_000 for e in w2.entries()] == [2, 3]


# --- B4 (time): samples ahead of the site's clock ------------------------------------------


def test_event_mode_refuses_samples_beyond_clock_skew_of_the_watermark() -> None:
    w = Wired(demo("clock_skew_s: 30"))
    w.feed(carbon("co2", 1, 0.0), carbon("co2", 2, 31.0), carbon("co2", 3, 2.0))
    assert len(w.dead()) == 1 and "ahead of the site's clock" in w.dead()[0]
    assert w.led.clock.watermark_us == to_us(at(2.0).timestamp())  # not moved by it
    assert [e.k - T0_US // 1_000_000 for e in w.entries()] == [0]


def test_realtime_sample_ahead_of_the_wall_clock_does_not_close_ticks_early() -> None:
    """B4: one sample 25 s ahead closed 24 empty ticks at once (the timer closed up to
    max(wall clock, watermark)). It now waits in its own tick; only the wall clock
    closes ticks. One further ahead than clock_skew_s is dead-lettered."""
    w = Wired(demo(), mode="realtime")
    wall = T0_US + 100_000
    w.led.ingest(carbon("co2", 1, 0.1), wall, wall)
    w.led.ingest(carbon("co2", 2, 25.0), wall + 24_900_000, wall)
    w.run(w.svc.on_timer(T0_US + 1_600_000))
    assert [e.k - T0_US // 1_000_000 for e in w.entries()] == [0]
    hour = carbon("co2", 3, 3600.0)
    why = w.led.ingest(hour, to_us(hour.time.timestamp()), wall)
    assert why is not None and "300 s" in why


# --- F: a crash is a crash ---------------------------------------------------------------------


def test_an_unhandled_error_is_recorded_and_stops_the_worker() -> None:
    w = Wired(demo())

    async def broken() -> None:
        raise RuntimeError("boom")

    w.run(run_guarded(w.svc, "telemetry", broken()))
    assert isinstance(w.svc.failure, RuntimeError)
    assert w.app.crashed is w.svc.failure


def test_snapshot_round_trip_keeps_everything_bounded_state_needs() -> None:
    cfg = demo("replay_clock_source: replay")
    w = Wired(cfg)
    w.feed(carbon("co2", 1, 0.0), solar(1, 0.0, 10.0), solar(2, 0.5, 5.0), clock_msg(at(0.2)))
    led = SiteLedger.restore(cfg, w.led.snapshot())
    assert led.snapshot() == w.led.snapshot()
    assert json.loads(led.snapshot())["clock_us"] == to_us(at(0.2).timestamp())


def test_an_error_on_one_message_dead_letters_it_and_the_worker_goes_on() -> None:
    """No single message may stop the ledger: a bug met by one telemetry message,
    command or ack dead-letters that message with the error; the next ones are
    processed (only sending, persisting or a tick's accounting failing stops it)."""
    w = Wired(demo())
    real = w.led.ingest

    def flaky(t: Any, t_us: int, now: int | None) -> str | None:
        if t.seq == 2:
            raise ValueError("a bug")
        return real(t, t_us, now)

    w.led.ingest = flaky  # type: ignore[method-assign]
    w.feed(carbon("co2", 1, 0.0), carbon("co2", 2, 0.5), carbon("co2", 3, 3.0))
    assert w.dead() == ["internal error on this message: ValueError('a bug')"]
    assert w.entries() and w.svc.failure is None

    def broken(_raw: bytes, _now: int) -> list:
        raise KeyError("x")

    (o,) = w.svc.one_message(topics.COMMANDS, b"{}", broken, b"{}", 0)
    dl = DeadLetter.model_validate_json(o.value)
    assert o.topic == topics.DEADLETTER and dl.origin == topics.COMMANDS
    assert "KeyError" in dl.reason


def test_a_snapshot_of_the_previous_format_restores() -> None:
    """A v1 snapshot (one list of command keys, dedupe as [hwm, holes], 4 stats), as the
    previous worker wrote it, restores: its seen seqs and command ids still dedupe."""
    cfg = demo()
    led = SiteLedger.new(cfg)
    led.ingest(carbon("co2", 5, 0.0), T0_US, None)
    d = json.loads(led.snapshot())
    d["v"] = 1
    d.pop("clock_us")
    d["seen_commands"] = [["web|web|w-1", "web"], ["raw|" + "0" * 64, ""]]
    d["clock"]["dedupe"] = {"co2": [7, [0, 1, 2, 3, 4, 6]]}  # 5 and 7 were seen
    d["clock"]["stats"] = d["clock"]["stats"][:4]
    d["clock"].pop("latest")
    old = SiteLedger.restore(cfg, json.dumps(d).encode())
    assert old.ingest(carbon("co2", 5, 0.1), T0_US, None) is None
    assert old.ingest(carbon("co2", 7, 0.1), T0_US, None) is None
    assert old.clock.n_duplicates == 2
    assert old.ingest(carbon("co2", 6, 0.1), T0_US, None) is None  # a hole: new
    assert old.clock.n_duplicates == 2
    mine = signed(SetBatteryChargeRate, site="demo", time=at(0.2), app="web",
                                        token=cfg.app("web").token, watts=1.0,
                                        command_id="w-1")  # fmt: skip
    assert old.command(mine.to_json(), T0_US) == []  # remembered across the upgrade


class CountingTable(dict):  # type: ignore[type-arg]
    """A Faust table stand-in that counts writes (each is one changelog record)."""

    writes = 0

    def __setitem__(self, k: Any, v: Any) -> None:
        self.writes += 1
        super().__setitem__(k, v)


def test_snapshots_are_written_at_most_every_persist_interval(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """L1: a snapshot per tick was most of the embedded broker's growth (it keeps every
    record). 120 ticks closed one wall second apart: at most one snapshot per
    PERSIST_INTERVAL_S (5 s) -> <= 25, was 120."""
    import streams.ledger_service as la

    wall = [1000.0]
    monkeypatch.setattr(la.time, "monotonic", lambda: wall[0])
    w = Wired(demo())
    snaps = CountingTable()
    w.svc.snapshots = snaps
    for s in range(121):
        w.feed(container("web-1", s + 1, s + 0.5, 0.5 * s))
        wall[0] += 1.0
    ticks = len(w.entries())
    assert ticks >= 115, ticks
    assert 0 < snaps.writes <= ticks / 5 + 1, (snaps.writes, ticks)


# --- commands after a (re)start in event mode ----------------------------------------------


def test_event_mode_takes_a_command_only_after_the_telemetry_already_in_kafka() -> None:
    """Regression (found by reliability/chaos.py): a command is anchored to the driving
    time, capped at its own tick. Right after a (re)start the event clock is the
    snapshot's (older after a SIGKILL) or none, so a charge rate accepted during tick 9
    applied from an earlier tick, to ticks the uninterrupted worker had already closed
    without it. The command now waits until the telemetry consumer has read to the end of
    its partition (``caught_up``), and then applies from tick 10."""
    cfg = demo()
    w = Wired(cfg)
    k0 = int(T0.timestamp())
    cmd = signed(SetBatteryChargeRate, site="demo", time=at(9.75), app="web", command_id="c-9",
                                       token=cfg.app("web").token, watts=1.0)  # fmt: skip

    def samples(ticks: range) -> list[Any]:
        out: list[Any] = []
        for i in ticks:
            for half in (0.0, 0.5):
                n = int(2 * (i + half))
                out += [solar(n + 1, i + half, 0.5 * n), container("web-1", n + 1, i + half, n)]
        return out

    async def started() -> None:
        task = asyncio.ensure_future(w.svc.command(cmd.to_json()))
        await asyncio.sleep(0.01)
        assert not task.done()  # nothing read yet: the command waits
        recs = [Record(m.model_dump_json().encode(), i) for i, m in enumerate(samples(range(10)))]
        w.offset = len(recs)
        await w.svc.telemetry(w.led, 0, recs)  # the telemetry already in Kafka (to 9.5)
        assert not task.done()
        w.svc.caught_up.set()  # what consume_telemetry does at the partition's end
        await asyncio.wait_for(task, 5)

    w.run(started())
    notes = [Notification.model_validate_json(v) for v in w.out(topics.notifications("web"))]
    assert [n.type for n in notes if n.command_id == "c-9"] == ["command_accepted"]
    w.feed(*samples(range(10, 12)))  # closes ticks 9 and 10
    rates = {e.k - k0: e.settings.charge_rate_w for e in w.entries()}
    assert rates == {**{k: 0.0 for k in range(10)}, 10: 1.0}


def test_a_snapshot_never_counts_a_close_whose_outputs_are_still_being_sent() -> None:
    """A command's snapshot (persist) while a tick close is still handing its outputs to
    the producer would mark those ticks closed with outputs unsent: a crash then loses
    them (the restart will not close them again). The service's lock orders them: the
    snapshot comes after every output of the close (found in review)."""
    cfg = demo()
    w = Wired(cfg, mode="realtime")
    sent = w.app.producer.sent
    inner = w.app.producer.send

    async def slow_send(*a: Any) -> Any:
        await asyncio.sleep(0)  # a real producer yields while it enqueues
        return await inner(*a)

    w.app.producer.send = slow_send  # type: ignore[method-assign]
    w.feed(carbon("co2", 1, 0.0), container("web-1", 1, 0.0, 0.0),
           container("web-1", 2, 0.9, 4.0))  # fmt: skip
    seen_at_snapshot: list[int] = []

    class Table(dict):  # type: ignore[type-arg]
        def __setitem__(self, k: Any, v: Any) -> None:
            seen_at_snapshot.append(len(sent))
            super().__setitem__(k, v)

    w.svc.snapshots = Table()
    w.svc.last_persist = time.monotonic()  # the close itself does not snapshot now
    cmd = signed(SetBatteryChargeRate, site="demo", time=at(1.2), app="web", command_id="c-1",
                                       token=cfg.app("web").token, watts=1.0)  # fmt: skip
    close_done: list[int] = []

    async def close() -> None:
        await w.svc.close_ticks(w.led, T0_US + 1_600_000)
        close_done.append(len(sent))

    async def both() -> None:
        await asyncio.gather(close(), w.svc.command(cmd.to_json()))

    w.run(both())
    assert any(t == topics.LEDGER for t, _, _ in sent)  # the close booked tick 0
    assert len(seen_at_snapshot) == 1  # the command's snapshot
    # it counted the closed tick only after the close had handed over every output
    assert close_done and seen_at_snapshot[0] >= close_done[0]


def test_caught_up_means_the_end_offset_taken_at_assignment_was_read() -> None:
    """Event mode: a partition's sites take commands once the worker has handed on the
    telemetry event just below the partition's end offset taken when it was assigned
    (``LedgerGroup.note_offset``); a site made later on that partition starts caught up."""
    from streams.ledger_group import LedgerGroup, SiteGroup

    cfg = demo()
    made: list[Any] = []

    def make(c: Any) -> Any:
        svc = types.SimpleNamespace(caught_up=asyncio.Event(), loaded=lambda: None,
                                    unacked=[], leave=lambda moved: None)  # fmt: skip
        made.append(svc)
        return svc

    active: set[int] = set()
    g = LedgerGroup(SiteGroup.of([cfg]), lambda: active, make)
    assert g.service("demo") is None  # not assigned: not owned
    active.add(0)
    svc = g.service("demo")
    g.catch_up_to[0] = 7
    g.note_offset(0, 5)
    assert not svc.caught_up.is_set()
    g.note_offset(0, 6)
    assert svc.caught_up.is_set()
    g.revoke({0})
    assert g.services == {} and 0 not in g.caught_up
    g.mark_caught_up(0)
    assert g.service("demo").caught_up.is_set() and len(made) == 2


def test_view_history_is_bounded_by_container_ticks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The soak at 1,000 containers: 3,600 ticks of entries and counter rows per app
    grew the ledger by ~19 MB/min toward ~1.1 GB. The history is now bounded by
    container-ticks per site (at least 60 ticks, at most 3,600)."""
    import streams.ledger_worker as lw

    assert lw.history_ticks(3) == 3_600 and lw.history_ticks(1_000) == 400
    assert lw.history_ticks(100_000) == lw.HISTORY_MIN_TICKS
    monkeypatch.setattr(lw, "HISTORY_CONTAINER_TICKS", 300)  # the demo's 3 -> 100 ticks
    w = Wired(demo())
    assert w.led.history_ticks == 100
    for s in range(131):
        w.feed(container("web-1", s + 1, s + 0.5, 0.5 * s))
    assert len(w.entries()) >= 125  # every tick was booked and sent
    assert len(w.led.entries["web"]) == 100 and len(w.led.counters["web"]) == 100
    ks = w.led.counters["web"].ticks()
    assert ks == w.led.entries["web"].ticks() and ks[-1] - ks[0] == 99  # the newest
    assert ks[-1] == w.led.clock.next_close - 1


def test_a_container_reported_under_another_app_is_booked_to_its_owner() -> None:
    """The configuration decides who owns a container, never the telemetry: web's
    samples that also claim batch-1 (every web container reported, so the tick's
    report for web is a superset of what web owns) book batch-1 to batch."""
    w = Wired(demo())
    w.feed(*(container(c, s, t, j) for s, (t, j) in enumerate([(0.0, 0.0), (1.0, 2.0)], 1)
             for c in ("web-1", "web-2", "batch-1")),  # batch-1 sent with app="web"
           carbon("co2", 1, 2.5))  # fmt: skip
    web, batch = w.entries("web"), w.entries("batch")
    assert [e.demand_mj for e in web] == [0, 4_000]
    assert set(web[-1].containers) == {"web-1", "web-2"}
    assert [e.demand_mj for e in batch] == [0, 2_000] and set(batch[-1].containers) == {"batch-1"}
