"""The actuator services' logic with injected I/O: container backends on a FAKE cgroup v2
tree (temp files), Kafka and MQTT replaced by lists."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from actuators.battery import BatteryActuator
from actuators.containers import ContainerActuator, parse_action
from actuators.state import ActuatorState
from ecovisor.contract.actuation import ActuatorAck, BatterySetpoint, ContainerAction
from ecovisor.contract.commands import SetContainerPowercap
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.envelope import utcnow
from streams.commands import validate
from tests.fakes.commands import signed


def site(root: Path, idle: str = "none") -> str:
    return f"""
schema_version: 1
site:
  id: s1
  shape: {{idle_attribution: {idle}}}
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
  battery: {{type: simulated, id: bat-1}}
apps:
  - id: web
    token: web-token-123456
    containers:
      - {{id: c1, node: n1, backend: {{type: cgroup_v2, cgroup: c1, root: "{root}"}}}}
      - {{id: c2, node: n1, backend: {{type: cgroup_v2, cgroup: c2, root: "{root}"}}}}
"""


def mk(root: Path, name: str, cpu_max: str = "max 100000") -> Path:
    d = root / name
    d.mkdir()
    (d / "cpu.max").write_text(cpu_max)
    (d / "cgroup.freeze").write_text("0")
    return d


def quota(d: Path) -> int:
    """cpu.max quota in µs (the cap inverse rounds down to whole µs: allow 1 µs)."""
    q, period = (d / "cpu.max").read_text().split()
    assert period == "100000"
    return int(q)


def action(cid: str, act: str, container: str = "c1", app: str = "web", **kw) -> ContainerAction:
    return ContainerAction(
        site="s1", time=utcnow(), command_id=cid, app=app, container=container, action=act, **kw
    )


class Sink(list):
    def __call__(self, topic: str, key: str, value: bytes) -> None:
        self.append((topic, value))

    def acks(self) -> list[ActuatorAck]:
        return [ActuatorAck.model_validate_json(v) for t, v in self if t.endswith("acks")]


def test_cap_through_power_model_and_removal_restores_previous_limit(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1", "120000 100000")
    mk(tmp_path, "c2")
    act = ContainerActuator(parse_config(site(tmp_path)), Sink())
    # microserver over 2 cores: (5 - 1.35) / 2 = 1.825 W per busy core
    ack = act.handle(action("a", "set_container_powercap", watts=1.825 * 0.4))
    assert ack is not None and ack.ok
    assert abs(quota(d) - 40000) <= 1
    ack = act.handle(action("b", "set_container_powercap", watts=None))
    assert ack is not None and ack.ok and ack.applied["cpu_limit_cores"] == pytest.approx(1.2)
    assert (d / "cpu.max").read_text() == "120000 100000"


def test_vertical_allowance_and_cap_take_the_lower(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1")
    act = ContainerActuator(parse_config(site(tmp_path)), Sink())
    assert act.handle(action("v", "scale_container", cpus=0.5)).ok  # type: ignore[union-attr]
    assert (d / "cpu.max").read_text() == "50000 100000"
    assert act.handle(action("c", "set_container_powercap", watts=10.0)).ok  # type: ignore[union-attr]
    assert (d / "cpu.max").read_text() == "50000 100000"  # cap not binding below 0.5 core
    assert act.handle(action("c2", "set_container_powercap", watts=1.825 * 0.2)).ok  # type: ignore[union-attr]
    assert abs(quota(d) - 20000) <= 1
    assert act.handle(action("r", "set_container_powercap", watts=None)).ok  # type: ignore[union-attr]
    assert (d / "cpu.max").read_text() == "50000 100000"  # back to the vertical allowance


def test_idempotent_by_command_id_and_other_sites_ignored(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1")
    sink = Sink()
    act = ContainerActuator(parse_config(site(tmp_path)), sink)
    assert act.handle(action("same", "set_container_powercap", watts=1.825 * 0.3)) is not None
    (d / "cpu.max").write_text("max 100000")  # if re-applied, this would change
    assert act.handle(action("same", "set_container_powercap", watts=1.825 * 0.3)) is None
    assert (d / "cpu.max").read_text() == "max 100000"
    other = action("o", "suspend_container").model_copy(update={"site": "elsewhere"})
    assert act.handle(other) is None
    assert [a.command_id for a in sink.acks()] == ["same"]


def test_failures_are_acks_not_exceptions(tmp_path: Path) -> None:
    mk(tmp_path, "c1")
    # idle attribution "equal": each of 2 containers carries 1.35 / 2 W of idle power
    act = ContainerActuator(parse_config(site(tmp_path, idle="equal")), Sink())
    ack = act.handle(action("low", "set_container_powercap", watts=0.5))
    assert ack is not None and not ack.ok and "idle floor" in (ack.error or "")
    ack = act.handle(action("gone", "suspend_container", container="c2"))  # c2 has no cgroup
    assert ack is not None and not ack.ok and "does not exist" in (ack.error or "")
    ack = act.handle(action("unk", "suspend_container", container="zz"))
    assert ack is not None and not ack.ok and "not in the site configuration" in (ack.error or "")


def test_restore_replays_latest_setpoints_with_baseline_from_acks(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1", "80000 100000")
    first = ContainerActuator(parse_config(site(tmp_path)), sink1 := Sink())
    history = [
        action("1", "set_container_powercap", watts=1.825 * 0.5),
        action("2", "suspend_container"),
        action("3", "set_container_powercap", watts=1.825 * 0.25),
    ]
    for a in history[:2]:
        first.handle(a)
    # the process died after writing #3 to Kafka but before handling it; the cgroup
    # meanwhile lost its limit and its freeze
    (d / "cpu.max").write_text("max 100000")
    (d / "cgroup.freeze").write_text("0")
    second = ContainerActuator(parse_config(site(tmp_path)), sink2 := Sink())
    assert second.restore(history, sink1.acks()) == 3
    assert abs(quota(d) - 25000) <= 1
    assert (d / "cgroup.freeze").read_text() == "1"
    assert [a.command_id for a in sink2.acks()] == ["3"]  # only the unacknowledged one
    assert second.handle(history[0]) is None  # replayed ids stay deduplicated
    second.handle(action("4", "set_container_powercap", watts=None))
    assert (d / "cpu.max").read_text() == "80000 100000"  # the original, from the acks


def old_action(cid: str, name: str, **kw: Any) -> ContainerAction:
    """An action as an earlier ledger wrote it to the topic (old name), parsed as the
    actuator parses what it consumes."""
    raw = {"site": "s1", "time": "2024-06-01T12:00:00Z", "command_id": cid, "app": "web"}
    parsed = parse_action(json.dumps({**raw, "container": "c1", "action": name, **kw}).encode())
    assert parsed is not None
    return parsed


def test_actions_under_old_names_have_the_same_effect(tmp_path: Path) -> None:
    """The actuator replays its topic from the beginning: actions written under the old
    names still apply, replayed or live, and are acknowledged under the new ones."""
    d = mk(tmp_path, "c1", "80000 100000")
    act = ContainerActuator(parse_config(site(tmp_path)), sink := Sink())
    history = [old_action("1", "set_cap", watts=1.825 * 0.25), old_action("2", "suspend")]
    assert act.restore(history, []) == 2
    assert abs(quota(d) - 25000) <= 1
    assert (d / "cgroup.freeze").read_text() == "1"
    assert act.handle(old_action("3", "resume")).ok  # type: ignore[union-attr]
    assert (d / "cgroup.freeze").read_text() == "0"
    assert act.handle(old_action("4", "scale", cpus=0.5)).ok  # type: ignore[union-attr]
    assert abs(quota(d) - 25000) <= 1  # the cap is still the lower
    assert act.handle(old_action("5", "remove_cap")).ok  # type: ignore[union-attr]
    assert (d / "cpu.max").read_text() == "50000 100000"  # back to the vertical allowance
    assert [a.applied["action"] for a in sink.acks()] == [
        "set_container_powercap",
        "suspend_container",
        "resume_container",
        "scale_container",
        "set_container_powercap",
    ]


def test_state_fold_leaves_state_unchanged_when_the_cap_is_rejected() -> None:
    st = ActuatorState()

    def reject(container: str, watts: float) -> float:
        raise ValueError("below floor")

    st.fold(action("a", "scale_container", cpus=1.0), reject)
    with pytest.raises(ValueError):
        st.fold(action("b", "set_container_powercap", watts=0.1), reject)
    assert st.setpoints("c1").cap_cores is None and st.setpoints("c1").effective_limit() == 1.0


def setpoint(cid: str, rate: float, device: str | None = None) -> BatterySetpoint:
    return BatterySetpoint(
        site="s1",
        time=utcnow(),
        command_id=cid,
        charge_rate_w=rate,
        max_discharge_w=5.0,
        device=device,
    )


def test_battery_forwards_to_device_topic_and_reports_transport_failure(tmp_path: Path) -> None:
    sent: list[tuple[str, bytes]] = []
    broken = False

    def send(topic: str, payload: bytes) -> None:
        if broken:
            raise TimeoutError("MQTT broker did not confirm within 5 s")
        sent.append((topic, payload))

    act = BatteryActuator(parse_config(site(tmp_path)), send, sink := Sink())
    ack = act.handle(setpoint("b1", 3.0))
    assert ack is not None and ack.ok and ack.applied["device"] == "bat-1"
    assert sent[0][0] == "ecovisor/s1/control/battery/bat-1"
    assert BatterySetpoint.model_validate_json(sent[0][1]).charge_rate_w == 3.0
    assert act.handle(setpoint("b1", 3.0)) is None  # duplicate
    broken = True
    ack = act.handle(setpoint("b2", 4.0))
    assert ack is not None and not ack.ok and "did not confirm" in (ack.error or "")
    assert [a.ok for a in sink.acks()] == [True, False]


def test_battery_restore_resends_latest_and_acks_the_unacknowledged(tmp_path: Path) -> None:
    sent: list[tuple[str, bytes]] = []
    act = BatteryActuator(
        parse_config(site(tmp_path)), lambda t, p: sent.append((t, p)), s := Sink()
    )
    hist = [setpoint("x1", 1.0), setpoint("x2", 2.0), setpoint("x3", 3.0)]
    assert act.restore(hist, acked={"x1"}) == 3
    assert [BatterySetpoint.model_validate_json(p).command_id for _, p in sent] == ["x3"]
    acks = {a.command_id: a for a in s.acks()}
    assert set(acks) == {"x2", "x3"} and acks["x3"].ok and not acks["x2"].ok


TEMPLATE = """    templates:
      - {id: worker, node: n1, max_replicas: 3,
         backend: {type: process, cgroup: worker}, command: [sleep, "60"]}
"""


# 5.0: the node's peak (microserver preset), above what c1 can draw; a cap above the
# peak is refused by validation (EcovisorConfig.command_bound_error)
@pytest.mark.parametrize("watts", [0.9, 1.2345, 2.0, 5.0])
def test_validation_and_enforcement_use_the_same_quota(tmp_path: Path, watts: float) -> None:
    """The ledger computes the cap's quota once and the actuator writes exactly it; an
    action without the quota (an older ledger) gets the same one from the same rule,
    whatever replicas run on the node (one member set: the configured containers)."""

    d = mk(tmp_path, "c1")
    mk(tmp_path, "c2")
    cfg = parse_config(site(tmp_path, idle="equal") + TEMPLATE)
    decision = validate(
        cfg,
        signed(
            SetContainerPowercap,
            site="s1",
            time=utcnow(),
            app="web",
            token="web-token-123456",
            container="c1",
            watts=watts,
        ),
    )
    assert decision.accepted, decision.reason
    (act_msg,) = decision.actions
    expected = cfg.cap_quota("c1", watts)
    assert (act_msg.quota_us, act_msg.period_us) == (expected.quota_us, expected.period_us)

    act = ContainerActuator(cfg, Sink())
    act.state.replicas["worker"] = 2  # running replicas do not change the quota
    ack = act.handle(act_msg)
    assert ack is not None and ack.ok, ack
    assert quota(d) == act_msg.quota_us  # exactly, not within 1 µs

    (d / "cpu.max").write_text("max 100000")
    old = act_msg.model_copy(update={"command_id": "old", "quota_us": None, "period_us": None})
    ack = act.handle(old)
    assert ack is not None and ack.ok, ack
    assert quota(d) == act_msg.quota_us


def test_a_carried_quota_is_written_as_is(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1")
    act = ContainerActuator(parse_config(site(tmp_path)), Sink())
    # the actuator does not recompute: 12345 µs is what it writes, whatever the watts
    ack = act.handle(
        action("q", "set_container_powercap", watts=3.0, quota_us=12_345, period_us=100_000)
    )
    assert ack is not None and ack.ok and ack.applied["cap_cores"] == pytest.approx(0.12345)
    assert (d / "cpu.max").read_text() == "12345 100000"
    # a quota for another period is converted to the cgroup's own period
    ack = act.handle(
        action("p", "set_container_powercap", watts=3.0, quota_us=25_000, period_us=50_000)
    )
    assert ack is not None and ack.ok
    assert (d / "cpu.max").read_text() == "50000 100000"


# --- authentication on the bus (internal key) -------------------------------------------

KEY = "site-internal-key-0123456789"


def keyed(root: Path) -> str:
    """The site with an internal key: actions must be signed by the ledger."""
    return site(root).replace("  id: s1\n", f"  id: s1\n  internal_key: {KEY}\n", 1)


def dead_letters(sink: Sink) -> list[dict[str, Any]]:
    return [json.loads(v) for t, v in sink if t == "ecovisor.deadletter"]


@pytest.mark.parametrize("signature", [None, "0" * 64, "sign-with-other-key"])
def test_forged_action_has_no_effect_and_is_dead_lettered(
    tmp_path: Path, signature: str | None
) -> None:
    """B1: an unsigned or wrongly signed action on ecovisor.actuator.containers neither
    freezes nor re-quotas a container, is not acknowledged ok, and is dead-lettered."""
    from ecovisor.contract.actuation import sign, verify

    d = mk(tmp_path, "c1", "120000 100000")
    mk(tmp_path, "c2")
    sink = Sink()
    act = ContainerActuator(parse_config(keyed(tmp_path)), sink)
    forgeries = [("f1", "suspend_container", {}),
                 ("f2", "set_container_powercap", {"watts": 0.5, "quota_us": 1000})]  # fmt: skip
    for cid, kind, kw in forgeries:
        forged = action(cid, kind, **kw)
        if signature == "sign-with-other-key":
            forged = sign(forged, "another-key-0123456789")
        elif signature is not None:
            forged = forged.model_copy(update={"signature": signature})
        assert act.handle(forged) is None
    assert (d / "cgroup.freeze").read_text() == "0"
    assert (d / "cpu.max").read_text() == "120000 100000"
    assert sink.acks() == []
    dls = dead_letters(sink)
    assert [x["reason"] for x in dls] == ["bad or missing signature"] * 2
    assert all(x["origin"] == "ecovisor.actuator.containers" for x in dls)
    # the genuine command with a forged copy's id is not shadowed by it, and is applied
    ack = act.handle(sign(action("f1", "suspend_container"), KEY))
    assert ack is not None and ack.ok and verify(ack, KEY)  # acks are signed
    assert (d / "cgroup.freeze").read_text() == "1"


def test_replayed_unsigned_history_is_refused_with_a_key(tmp_path: Path) -> None:
    """Old (pre-key) or forged actions in the topic's history are not re-applied."""
    from ecovisor.contract.actuation import sign

    d = mk(tmp_path, "c1", "120000 100000")
    mk(tmp_path, "c2")
    sink = Sink()
    act = ContainerActuator(parse_config(keyed(tmp_path)), sink)
    history = [action("old", "suspend_container"),
               sign(action("new", "scale_container", cpus=0.5), KEY)]  # fmt: skip
    assert act.restore(history, []) == 1
    assert (d / "cgroup.freeze").read_text() == "0"
    assert quota(d) == 50000
    assert [a.command_id for a in sink.acks()] == ["new"]


def test_forged_battery_setpoint_is_not_forwarded(tmp_path: Path) -> None:
    from ecovisor.contract.actuation import sign, verify

    sent: list[tuple[str, bytes]] = []
    sink = Sink()
    act = BatteryActuator(parse_config(keyed(tmp_path)), lambda t, p: sent.append((t, p)), sink)
    sp = BatterySetpoint(site="s1", time=utcnow(), command_id="t1", charge_rate_w=5,
                         max_discharge_w=9)  # fmt: skip
    assert act.handle(sp) is None
    assert sent == [] and sink.acks() == []
    assert [x["reason"] for x in dead_letters(sink)] == ["bad or missing signature"]
    ack = act.handle(sign(sp, KEY))
    assert ack is not None and ack.ok and verify(ack, KEY) and len(sent) == 1


class Killed(BaseException):
    """The process dying (SIGKILL) at this point."""


def test_killed_between_the_quota_write_and_its_ack_keeps_the_original_limit(
    tmp_path: Path,
) -> None:
    """The first cap on a container records the limit it had before (the baseline) only
    in its acknowledgement. Killed after writing the quota but before the ack reached
    Kafka (a window of a few ms, found while building reliability/chaos.py), the
    restarted actuator finds no ack, reads the cap it wrote itself as the baseline, and
    lifting the cap later restored the cap: the container stayed capped. The baseline is
    now on disk (actuators/baselines.py) before the cap is written."""
    d = mk(tmp_path, "c1", "80000 100000")
    cap = action("1", "set_container_powercap", watts=1.825 * 0.5)

    def dies_on_ack(topic: str, key: str, value: bytes) -> None:
        raise Killed

    kept = tmp_path / "state" / "baselines.json"
    first = ContainerActuator(parse_config(site(tmp_path)), dies_on_ack, baseline_file=kept)
    with pytest.raises(Killed):
        first.handle(cap)
    assert abs(quota(d) - 50000) <= 1  # the cap was written
    second = ContainerActuator(parse_config(site(tmp_path)), sink := Sink(), baseline_file=kept)
    assert second.restore([cap], []) == 1
    assert [a.command_id for a in sink.acks()] == ["1"]
    second.handle(action("2", "set_container_powercap", watts=None))
    assert (d / "cpu.max").read_text() == "80000 100000"  # the limit before the cap


def test_baselines_of_an_earlier_stack_are_forgotten(tmp_path: Path) -> None:
    """The file outlives an embedded broker (reset by down/up): a container no action in
    the topic's history touches gets a fresh baseline at its next first cap."""
    d = mk(tmp_path, "c1", "80000 100000")
    kept = tmp_path / "state" / "baselines.json"
    kept.parent.mkdir(parents=True)
    kept.write_text('{"c1": {"cpus": 0.3, "raw": "30000 100000"}}')
    act = ContainerActuator(parse_config(site(tmp_path)), Sink(), baseline_file=kept)
    assert act.restore([], []) == 0
    act.handle(action("1", "set_container_powercap", watts=1.825 * 0.5))
    act.handle(action("2", "set_container_powercap", watts=None))
    assert (d / "cpu.max").read_text() == "80000 100000"
