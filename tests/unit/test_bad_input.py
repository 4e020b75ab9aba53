"""Bad input gives a clear error (dead letter or command_rejected with a reason),
never a crash and never silent loss; a single bad timestamp cannot stall or explode the
tick clock."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import Notification
from ecovisor.contract.operator_messages import DeadLetter, dead_letter
from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry
from ecovisor.core.tick_clock import TickClock, to_us
from streams.ledger_worker import SiteLedger
from tests.fakes.commands import signed_json

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.yaml"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW_US = to_us(T0.timestamp())


@pytest.fixture(scope="module")
def cfg() -> EcovisorConfig:
    return parse_config(DEMO.read_text())


def carbon(t: datetime, seq: int, source: str = "c") -> CarbonTelemetry:
    return CarbonTelemetry(site="s", time=t, source=source, seq=seq, intensity_g_per_kwh=100.0)


def outcome(outs: list) -> tuple[str, str]:
    """(topic kind, reason) of the single output of a rejected command."""
    (o,) = outs
    if o.topic == topics.DEADLETTER:
        return "deadletter", DeadLetter.model_validate_json(o.value).reason
    n = Notification.model_validate_json(o.value)
    assert n.type == "command_rejected"
    return "rejected", n.reason or ""


# --- commands: malformed payloads -----------------------------------------------------

BAD_COMMANDS = {
    "tombstone": None,
    "empty": b"",
    "not-utf8": b'\xff\xfe{"app": "web"}',
    "array": b"[1, 2]",
    "deeply-nested": b"[" * 100_000 + b"]" * 100_000,
    "nul": b"\x00",
    "wrong-types": b'{"app": 5, "command_id": {"x": 1}, "type": []}',
}


@pytest.mark.parametrize("name", sorted(BAD_COMMANDS))
def test_malformed_command_is_dead_lettered_with_a_reason(cfg, name: str) -> None:
    led = SiteLedger.new(cfg)
    kind, reason = outcome(led.command(BAD_COMMANDS[name], NOW_US))  # type: ignore[arg-type]
    assert kind == "deadletter" and reason.startswith("invalid command")


def test_command_with_bad_value_is_dead_lettered_with_the_field(cfg) -> None:
    """Out of the contract, a command does not parse, so it cannot be authenticated: no
    app is told (whatever app it names), the dead letter says why."""
    led = SiteLedger.new(cfg)
    for i, watts in enumerate(("-1", "NaN", "1e999", '"lots"')):
        raw = (
            '{"schema_version": 2, "type": "set_battery_charge_rate", "site": "demo",'
            ' "time": "2024-01-01T00:00:00Z", "app": "web", "signature": "' + "0" * 64 + '",'
            f' "watts": {watts}, "command_id": "w{i}"}}'
        ).encode()
        kind, reason = outcome(led.command(raw, NOW_US))
        assert kind == "deadletter" and "watts" in reason, (watts, reason)


def test_version_1_command_is_dead_lettered_without_its_token(cfg) -> None:
    """A command of the old form (its app's token in clear) is refused, and the dead
    letter does not hand the token on."""
    led = SiteLedger.new(cfg)
    token = cfg.app("web").token
    raw = json.dumps({"type": "set_battery_charge_rate", "site": "demo", "app": "web",
                      "time": "2024-01-01T00:00:00Z", "token": token, "watts": 1.0,
                      "command_id": "old"}).encode()  # fmt: skip
    (o,) = led.command(raw, NOW_US)
    assert o.topic == topics.DEADLETTER and token.encode() not in o.value
    dl = DeadLetter.model_validate_json(o.value)
    assert "token" in dl.reason and '"token": "<redacted>"' in dl.raw


def test_huge_command_dead_letter_stays_publishable(cfg) -> None:
    """A near-1 MB payload of non-UTF-8 bytes escapes to ~4x: the dead letter must stay
    small enough to publish (a broker refusing it would stop the command agent)."""
    led = SiteLedger.new(cfg)
    raw = b'{"app": "web", "x": "' + b"\xff" * 900_000 + b'"}'
    (o,) = led.command(raw, NOW_US)
    assert o.topic == topics.DEADLETTER and len(o.value) < 1_000_000
    dl = DeadLetter.model_validate_json(o.value)
    assert "truncated" in dl.raw and dl.raw.startswith('{"app": "web"')


def test_dead_letter_keeps_small_payloads_verbatim() -> None:
    assert dead_letter("o", "r", b'{"a": 1}').raw == '{"a": 1}'


def test_tombstone_and_bad_ack_are_dead_lettered(cfg) -> None:
    led = SiteLedger.new(cfg)
    for raw in (None, b"\xff", b"{}"):
        (o,) = led.ack(raw)  # type: ignore[arg-type]
        assert o.topic == topics.DEADLETTER


def test_command_for_unknown_app_is_dead_lettered_not_dropped(cfg) -> None:
    led = SiteLedger.new(cfg)
    raw = json.dumps(
        {
            "type": "set_battery_charge_rate",
            "site": "demo",
            "time": "2024-01-01T00:00:00Z",
            "app": "ghost",
            "watts": 1,
        }
    )
    kind, reason = outcome(led.command(signed_json("whatever-token", json.loads(raw)), NOW_US))
    assert kind == "deadletter" and "no app 'ghost'" in reason


# --- the tick clock: one bad timestamp -------------------------------------------------


@pytest.mark.timeout(30)
def test_far_future_sample_does_not_close_millions_of_ticks() -> None:
    """With an open tick behind it, a sample 10^6 ticks ahead used to make advance()
    close every empty tick in between (max_gap_ticks was ignored)."""
    clk = TickClock(1.0, 0.5, max_gap_ticks=100)
    clk.offer(carbon(T0, 0))
    clk.offer(carbon(T0 + timedelta(seconds=10**6), 1))
    out = clk.advance(to_us((T0 + timedelta(seconds=10**6 + 5)).timestamp()))
    assert 2 <= len(out) <= 2 * 101 + 2
    assert out[0].k == to_us(T0.timestamp()) // 1_000_000  # the data-bearing tick closed
    assert out[0].intensity_g_per_kwh == 100.0


@pytest.mark.timeout(30)
def test_far_past_first_sample_does_not_close_decades_of_ticks() -> None:
    clk = TickClock(1.0, 0.0, max_gap_ticks=100)
    clk.offer(carbon(datetime(1971, 1, 1, tzinfo=UTC), 0))
    out = clk.advance(NOW_US)
    assert 1 <= len(out) <= 102
    assert out[-1].k == NOW_US // 1_000_000 - 1  # caught up with the driving time


def test_gap_within_max_gap_still_closes_every_tick() -> None:
    """The bound must not change normal operation: gaps up to max_gap close one by one."""
    clk = TickClock(1.0, 0.0, max_gap_ticks=100)
    clk.offer(carbon(T0, 0))
    clk.offer(carbon(T0 + timedelta(seconds=50), 1))
    out = clk.advance(to_us((T0 + timedelta(seconds=51)).timestamp()))
    assert [c.k for c in out] == list(range(NOW_US // 1_000_000, NOW_US // 1_000_000 + 51))


def test_realtime_ledger_refuses_telemetry_far_ahead_of_the_wall_clock(cfg) -> None:
    """In real-time mode the watermark drives tick closing: a sample a day ahead (a bad
    edge clock) would close a day of ticks at once and then hold every real sample as
    'late' in that future tick. It is refused with a reason instead."""
    led = SiteLedger.new(cfg)
    ok = ContainerTelemetry(
        site="demo",
        time=T0,
        source="p",
        seq=1,
        app="web",
        container="web-1",
        cpu_s=0,
        energy_j=1,
    )
    bad = ok.model_copy(update={"seq": 2, "time": T0 + timedelta(days=1)})
    assert led.refuse_reason(ok, now_us=NOW_US) is None
    assert (
        led.refuse_reason(ok.model_copy(update={"time": T0 - timedelta(days=3)}), now_us=NOW_US)
        is None
    )  # late data is accepted (rolls in)
    why = led.refuse_reason(bad, now_us=NOW_US)
    assert why is not None and "ahead" in why
    # small edge clock skew is tolerated
    skewed = ok.model_copy(update={"time": T0 + timedelta(seconds=5)})
    assert led.refuse_reason(skewed, now_us=NOW_US) is None


@pytest.mark.parametrize(
    "ts", ["0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z", "9999-12-31T23:59:59.9-00:00"]
)
def test_event_time_outside_the_tick_range_is_refused_in_every_mode(cfg, ts: str) -> None:
    """A first sample before 1970 made the close fail (tick index < 0) and one in year
    9999 overflowed the tick end: a poison message that stopped the worker on every
    replay. The clock must never see it; the check itself works on such a sample."""
    from ecovisor.contract.telemetry import TELEMETRY_ADAPTER

    t = TELEMETRY_ADAPTER.validate_json(
        '{"kind": "carbon", "site": "demo", "time": "' + ts + '", "source": "c", "seq": 1,'
        ' "intensity_g_per_kwh": 1}'
    )
    led = SiteLedger.new(cfg)
    for now in (None, NOW_US):
        why = led.refuse_reason(t, now)
        assert why is not None and "outside" in why


def test_event_times_inside_the_range_close_normally(cfg) -> None:
    from ecovisor.contract.telemetry import TELEMETRY_ADAPTER

    for ts in ("1970-01-01T00:00:00Z", "9997-12-31T00:00:00Z"):
        t = TELEMETRY_ADAPTER.validate_json(
            '{"kind": "carbon", "site": "demo", "time": "' + ts + '", "source": "c", "seq": 1,'
            ' "intensity_g_per_kwh": 1}'
        )
        led = SiteLedger.new(cfg)
        assert led.refuse_reason(t, None) is None
        led.clock.offer(t)
        outs, rows = led.close(to_us(t.time.timestamp()) + 10_000_000)
        assert rows and outs


# --- REST API bodies ---------------------------------------------------------------------

API_BAD = [
    ("PUT", "/battery/charge_rate", {"watts": -1}),
    ("PUT", "/battery/charge_rate", {"watts": "lots"}),
    ("PUT", "/battery/charge_rate", {"watts": 1, "extra": 1}),
    ("PUT", "/battery/max_discharge", {}),
    ("PUT", "/battery/max_discharge", [1]),
    ("PUT", "/containers/web-1/powercap", {"watts": -0.5}),
    ("PUT", "/containers/web-1/cpus", {"cpus": 0}),
    ("PUT", "/containers/web-1/cpus", {"cpus": 1e9}),
    ("PUT", "/containers/web-1/carbon_rate", {"mg_per_s": 1, "window_s": 0}),
    ("PUT", "/carbon_budget", {"grams": 1, "period_s": -1}),
    ("PUT", "/templates/web-worker/replicas", {"replicas": 10**9}),
    ("PUT", "/templates/web-worker/replicas", {"replicas": 1.5}),
    ("GET", "/energy?t1=2024-01-01T01:00:00Z&t2=2024-01-01T00:00:00Z", None),
    ("GET", "/energy?t1=2024-01-01T00:00:00&t2=2024-01-01T01:00:00Z", None),
    ("GET", "/energy?t1=yesterday&t2=2024-01-01T01:00:00Z", None),
    ("PUT", "/battery/charge_rate?wait=true&timeout=3600", {"watts": 1}),
]


def test_api_bad_bodies_get_422_with_a_reason_and_publish_nothing(cfg) -> None:
    import asyncio

    import httpx

    from ecovisor.api.app import create_app
    from tests.fakes.api import InMemoryBus, InMemoryStateSource

    bus = InMemoryBus()
    api = create_app(cfg, InMemoryStateSource(), bus)
    h = {"Authorization": f"Bearer {cfg.app('web').token}"}

    async def run() -> list[tuple[str, int, str]]:
        out = []
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for method, path, body in API_BAD:
                r = await c.request(method, "/v1/apps/web" + path, json=body, headers=h)
                out.append((path, r.status_code, r.text))
            # a non-JSON / non-UTF-8 body
            r = await c.put(
                "/v1/apps/web/battery/charge_rate",
                content=b"\xff\xfe",
                headers={**h, "Content-Type": "application/json"},
            )
            out.append(("raw bytes", r.status_code, r.text))
        return out

    res = asyncio.run(run())
    assert [(p, s) for p, s, _ in res if s != 422] == []
    assert all('"detail"' in t for _, _, t in res)
    assert bus.published == []
