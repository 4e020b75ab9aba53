"""SiteLedger (the worker's state, no I/O): who owns telemetry, and the lifecycle of
settings changes that the ledger applies itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ecovisor.contract import topics
from ecovisor.contract.commands import SetBatteryChargeRate
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import Notification
from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry
from ecovisor.core.tick_clock import to_us
from streams.ledger_worker import SiteLedger
from tests.fakes.commands import signed

SITE = """
site:
  id: s
  shape: {tick_s: 1.0, battery_capacity_wh: 20}
  nodes: [{id: n1, cores: 2}]
apps:
  - id: web
    token: web-token-123
    shares: {battery_capacity_wh: 10, grid_w: 50}
    containers:
      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: t/web-1}}
    templates:
      - {id: worker, node: n1, backend: {type: process, cgroup: t/worker}, max_replicas: 2}
  - id: batch
    token: batch-token-123
    shares: {battery_capacity_wh: 10, grid_w: 50}
    containers:
      - {id: batch-1, node: n1, backend: {type: cgroup_v1, cgroup: t/batch-1}}
"""
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _container(app: str, c: str, seq: int, t: datetime, j: float) -> ContainerTelemetry:
    return ContainerTelemetry(site="s", time=t, source=f"p-{c}", seq=seq, app=app,
                              container=c, cpu_s=0, energy_j=j)  # fmt: skip


def _notes(outs: list, app: str) -> list[Notification]:
    return [
        Notification.model_validate_json(o.value)
        for o in outs
        if o.topic == topics.notifications(app)
    ]


def _demand(outs: list, app: str) -> dict[str, int]:
    from ecovisor.core.entries import AppLedgerEntry

    for o in outs:
        if o.topic == topics.LEDGER:
            e = AppLedgerEntry.model_validate_json(o.value)
            if e.app == app:
                return {c: line.energy_mj for c, line in e.containers.items()}
    raise AssertionError(f"no ledger entry for {app}")


def test_telemetry_cannot_book_energy_to_an_app_by_naming_it() -> None:
    """The configuration decides ownership: an unknown container claiming app 'batch'
    is ignored, and a replica of web's template is web's whatever the telemetry says."""
    led = SiteLedger.new(parse_config(SITE))
    t1 = T0 + timedelta(seconds=1)
    for c, claimed in (("web-1", "web"), ("evil-1", "batch"), ("worker-2", "batch"),
                       ("worker-3", "web")):  # fmt: skip
        led.clock.offer(_container(claimed, c, 1, T0 + timedelta(milliseconds=100), 0.0))
        led.clock.offer(_container(claimed, c, 2, t1 - timedelta(milliseconds=100), 2.0))
    outs, _ = led.close(to_us(t1.timestamp()) + 5_000_000)
    assert _demand(outs, "web") == {"web-1": 2000, "worker-2": 2000}  # worker-3 > max
    assert _demand(outs, "batch") == {}


def test_settings_change_is_applied_by_the_ledger_when_in_force() -> None:
    """No actuator acks a charge rate: the ledger answers command_applied at the first
    tick whose entry used it, so `--wait` and `?wait=true` get a final outcome."""
    cfg = parse_config(SITE)
    led = SiteLedger.new(cfg)
    led.clock.offer(CarbonTelemetry(site="s", time=T0, source="c", seq=1,
                                    intensity_g_per_kwh=100))  # fmt: skip
    now = to_us(T0.timestamp()) + 200_000
    cmd = signed(SetBatteryChargeRate, site="s", time=T0, app="web", token="web-token-123",
                                       command_id="cr-1", watts=2.0)  # fmt: skip
    out = led.command(cmd.to_json(), now)
    assert [n.type for n in _notes(out, "web")] == ["command_accepted"]
    # tick k (accepted) closes: not yet in force
    led.clock.offer(CarbonTelemetry(site="s", time=T0 + timedelta(seconds=1), source="c",
                                    seq=2, intensity_g_per_kwh=100))  # fmt: skip
    out, _ = led.close(to_us(T0.timestamp()) + 1_600_000)
    assert "command_applied" not in [n.type for n in _notes(out, "web")]
    # a restart in between keeps the pending outcome
    led = SiteLedger.restore(cfg, led.snapshot())
    led.clock.offer(CarbonTelemetry(site="s", time=T0 + timedelta(seconds=2), source="c",
                                    seq=3, intensity_g_per_kwh=100))  # fmt: skip
    out, _ = led.close(to_us(T0.timestamp()) + 2_600_000)
    applied = [n for n in _notes(out, "web") if n.type == "command_applied"]
    assert len(applied) == 1 and applied[0].command_id == "cr-1"
    assert applied[0].data["settings"]["charge_rate_w"] == 2.0
    assert applied[0].data["actuator"] == "ledger"
    assert _notes(out, "batch") == [] or all(
        n.type != "command_applied" for n in _notes(out, "batch")
    )
    # and only once
    led.clock.offer(CarbonTelemetry(site="s", time=T0 + timedelta(seconds=3), source="c",
                                    seq=4, intensity_g_per_kwh=100))  # fmt: skip
    out, _ = led.close(to_us(T0.timestamp()) + 3_600_000)
    assert "command_applied" not in [n.type for n in _notes(out, "web")]


# --- authentication on the bus (internal key) -------------------------------------------

KEY = "site-internal-key-0123456789"
KEYED_SITE = SITE.replace("  id: s\n", f"  id: s\n  internal_key: {KEY}\n", 1)


def _suspend(led: SiteLedger) -> list:
    from ecovisor.contract.commands import SuspendContainer

    cmd = signed(SuspendContainer, site="s", time=T0, app="web", token="web-token-123",
                                   command_id="sus-1", container="web-1")  # fmt: skip
    return led.command(cmd.to_json(), to_us(T0.timestamp()) + 200_000)


def test_ledger_signs_actions_and_setpoints() -> None:
    from ecovisor.contract.actuation import BatterySetpoint, ContainerAction, verify

    led = SiteLedger.new(parse_config(KEYED_SITE))
    acts = [o for o in _suspend(led) if o.topic == topics.ACTUATOR_CONTAINERS]
    assert len(acts) == 1 and verify(ContainerAction.model_validate_json(acts[0].value), KEY)
    led.clock.offer(CarbonTelemetry(site="s", time=T0, source="c", seq=1,
                                    intensity_g_per_kwh=100))  # fmt: skip
    out, _ = led.close(to_us(T0.timestamp()) + 1_600_000)
    sps = [BatterySetpoint.model_validate_json(o.value) for o in out
           if o.topic == topics.ACTUATOR_BATTERY]  # fmt: skip
    assert sps and all(verify(sp, KEY) for sp in sps)


def test_forged_ack_tells_the_app_nothing() -> None:
    """B2: an ack without the actuators' signature (or a wrong one) is dead-lettered with
    the reason; no command_failed reaches the app. A signed ack still does."""
    from ecovisor.contract.actuation import ActuatorAck, sign

    led = SiteLedger.new(parse_config(KEYED_SITE))
    _suspend(led)
    ack = ActuatorAck(site="s", time=T0, command_id="sus-1", app="web", actuator="containers",
                      ok=False, error="forged")  # fmt: skip
    for forged in (ack, sign(ack, "another-key-0123456789")):
        out = led.ack(forged.to_json())
        assert _notes(out, "web") == []
        assert [o.topic for o in out] == [topics.DEADLETTER]
        assert b"bad or missing signature" in out[0].value
    out = led.ack(sign(ack.model_copy(update={"ok": True, "error": None}), KEY).to_json())
    assert [n.type for n in _notes(out, "web")] == ["command_applied"]
