"""The container actuator under failures: any error of one action is that action's
``ok=False`` acknowledgement (live and on restore), never a crash; actions on another
app's container are refused; horizontal scaling announces every replica it started or
stopped, even when a later one fails, and an LXD copy that exists but is stopped is not
taken for a running replica. Backends on FAKE cgroup trees (temp files) and the loopback
LXD stand-in (tests/fakes/lxd.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from actuators.containers import ContainerActuator
from ecovisor.adapters import cgroups
from ecovisor.adapters.backends import BackendError, ContainerBackend, make_backend
from ecovisor.adapters.cgroups import CgroupV2Backend, ProcessBackend
from ecovisor.contract.actuation import ActuatorAck, ContainerAction, ContainerEvent
from ecovisor.contract.app_config import ContainerBackend as BackendConfig
from ecovisor.contract.config_file import parse_config
from tests.fakes.lxd import FakeLxd
from tests.unit.test_actuator_service import action, mk


def site(root: Path) -> str:
    return f"""
schema_version: 1
site:
  id: s1
  shape: {{idle_attribution: none}}
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
apps:
  - id: web
    token: web-token-123456
    containers:
      - {{id: c1, node: n1, backend: {{type: cgroup_v2, cgroup: c1, root: "{root}"}}}}
      - {{id: c2, node: n1, backend: {{type: cgroup_v2, cgroup: c2, root: "{root}"}}}}
    templates:
      - {{id: worker, node: n1, max_replicas: 2,
          backend: {{type: process, cgroup: worker, root: "{root}"}}, command: [sleep, "60"]}}
  - id: other
    token: other-token-123456
    containers:
      - {{id: o1, node: n1, backend: {{type: cgroup_v2, cgroup: o1, root: "{root}"}}}}
"""


class Sink(list):
    def __call__(self, topic: str, key: str, value: bytes) -> None:
        self.append((topic, value))

    def acks(self) -> dict[str, ActuatorAck]:
        acks = [ActuatorAck.model_validate_json(v) for t, v in self if t.endswith("acks")]
        return {a.command_id: a for a in acks}

    def events(self) -> list[tuple[str, str]]:
        evs = [ContainerEvent.model_validate_json(v) for t, v in self if t == "ecovisor.containers"]
        return [(e.container, e.event) for e in evs]


CAP = 1.825 * 0.5  # 0.5 core with the microserver model over 2 cores


# --- 1. an unexpected error fails its action, not the actuator ------------------------


def blocked_state_dir(tmp_path: Path) -> Path:
    """A baseline file that cannot be written (a file where its directory should be:
    the same for root, which the tests may run as)."""
    (tmp_path / "state").write_text("")
    return tmp_path / "state" / "actuator-containers" / "baselines.json"


def test_unwritable_baseline_file_fails_the_cap_not_the_actuator(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1", "80000 100000")
    d2 = mk(tmp_path, "c2")
    act = ContainerActuator(
        parse_config(site(tmp_path)), sink := Sink(), baseline_file=blocked_state_dir(tmp_path)
    )
    ack = act.handle(action("1", "set_container_powercap", watts=CAP))
    assert ack is not None and not ack.ok and "cannot record baselines" in (ack.error or "")
    assert (d / "cpu.max").read_text() == "80000 100000"  # no cap without its baseline
    assert act.baselines.get("c1") is None  # nothing kept that is not on disk
    ack = act.handle(action("2", "suspend_container", container="c2"))  # still serving
    assert ack is not None and ack.ok and (d2 / "cgroup.freeze").read_text() == "1"
    assert [a.ok for a in sink.acks().values()] == [False, True]


def test_restore_with_an_unwritable_baseline_file_restores_the_rest(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1", "80000 100000")
    d2 = mk(tmp_path, "c2")
    act = ContainerActuator(
        parse_config(site(tmp_path)), sink := Sink(), baseline_file=blocked_state_dir(tmp_path)
    )
    history = [
        action("1", "set_container_powercap", watts=CAP),
        action("2", "suspend_container", container="c2"),
    ]
    assert act.restore(history, []) == 2
    acks = sink.acks()
    assert not acks["1"].ok and "cannot record baselines" in (acks["1"].error or "")
    assert acks["2"].ok and (d2 / "cgroup.freeze").read_text() == "1"
    assert (d / "cpu.max").read_text() == "80000 100000"


class BuggyBackend(CgroupV2Backend):
    """A backend with an error no one anticipated (not a BackendError)."""

    def freeze(self) -> None:
        raise RuntimeError("driver bug")


def buggy_c1(cfg: BackendConfig) -> ContainerBackend:
    if cfg.cgroup == "c1":
        return BuggyBackend(cfg.cgroup, cfg.root)
    return make_backend(cfg)


def test_an_unexpected_error_is_an_ack_live_and_on_restore(tmp_path: Path) -> None:
    mk(tmp_path, "c1")
    d2 = mk(tmp_path, "c2")
    act = ContainerActuator(parse_config(site(tmp_path)), Sink(), buggy_c1)
    ack = act.handle(action("1", "suspend_container"))
    assert ack is not None and not ack.ok
    assert ack.error == "unexpected RuntimeError: driver bug"
    assert act.handle(action("2", "suspend_container", container="c2")).ok  # type: ignore[union-attr]
    # restarted: the same history is replayed; the bad action does not stop the others
    (d2 / "cgroup.freeze").write_text("0")
    again = ContainerActuator(parse_config(site(tmp_path)), sink2 := Sink(), buggy_c1)
    history = [action("1", "suspend_container"), action("2", "suspend_container", container="c2")]
    assert again.restore(history, []) == 2
    assert {c: a.ok for c, a in sink2.acks().items()} == {"1": False, "2": True}
    assert (d2 / "cgroup.freeze").read_text() == "1"
    assert again.handle(action("3", "resume_container", container="c2")).ok  # type: ignore[union-attr]


def test_a_missing_log_dir_fails_the_scale_up(tmp_path: Path) -> None:
    act = ContainerActuator(
        parse_config(site(tmp_path)), sink := Sink(), log_dir=tmp_path / "no-such-dir"
    )
    ack = act.handle(action("s", "scale_app", container="worker", replicas=1))
    assert ack is not None and not ack.ok
    assert "cannot open the replica's log" in (ack.error or "") and "worker-1" in (ack.error or "")
    assert sink.events() == []  # nothing started, nothing announced
    assert not (tmp_path / "cpu" / "worker-1").exists()  # no cgroup left behind


def test_a_replica_is_launched_with_its_apps_workload_uid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a failure, but where replicas are started without one: cgexec, started as root,
    refuses to run a workload without --uid, and drops to it (integration: real uids)."""
    started: list[list[str]] = []

    class Launched:
        pid = 4_194_306  # above any pid_max: nothing real

        def __init__(self, argv: list[str], **kw: object) -> None:
            started.append(argv)

        def poll(self) -> int:
            return 0

    monkeypatch.setattr(cgroups.subprocess, "Popen", Launched)
    cfg = parse_config(site(tmp_path))
    act = ContainerActuator(cfg, sink := Sink())
    ack = act.handle(action("s", "scale_app", container="worker", replicas=1))
    assert ack is not None and ack.ok, ack
    [argv] = started
    uid = cfg.workload_uid("web")
    assert argv[argv.index("--uid") + 1] == str(uid) and argv[-3:] == ["--", "sleep", "60"]
    assert sink.events() == [("worker-1", "added")]


def fake_v1(root: Path, path: str, procs: str) -> None:
    for c in ("cpu", "cpuacct", "freezer"):
        (root / c / path).mkdir(parents=True)
        (root / c / path / "cgroup.procs").write_text(procs)
    (root / "freezer" / path / "freezer.state").write_text("THAWED")


def test_a_refused_signal_is_a_backend_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # above any pid_max (2^22): even unpatched, no real process could be signalled
    pid = 4_194_305
    fake_v1(tmp_path, "worker-1", f"{pid}\n")
    signalled: list[int] = []

    def kill(p: int, sig: int) -> None:
        signalled.append(p)
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(cgroups.os, "kill", kill)
    with pytest.raises(BackendError, match=f"cannot signal pid {pid} of worker-1"):
        ProcessBackend("worker-1", str(tmp_path)).stop(timeout=0.1)
    assert signalled == [pid]


# --- 2. only the owning app's actions act ------------------------------------------------


def test_an_action_on_another_apps_container_is_refused(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1", "80000 100000")
    act = ContainerActuator(parse_config(site(tmp_path)), sink := Sink())
    ack = act.handle(action("x1", "set_container_powercap", app="other", watts=CAP))
    assert ack is not None and not ack.ok
    assert ack.error == "container 'c1' does not belong to app 'other'"
    assert (d / "cpu.max").read_text() == "80000 100000"
    assert act.state.setpoints("c1").cap_w is None  # no setpoint left behind
    ack = act.handle(action("x2", "scale_app", app="other", container="worker", replicas=1))
    assert ack is not None and not ack.ok and "does not belong to app 'other'" in (ack.error or "")
    assert act.state.replicas == {} and sink.events() == []
    # the owner's own actions still act
    assert act.handle(action("w1", "suspend_container")).ok  # type: ignore[union-attr]
    assert (d / "cgroup.freeze").read_text() == "1"


def test_restore_refuses_another_apps_actions(tmp_path: Path) -> None:
    d = mk(tmp_path, "c1", "80000 100000")
    act = ContainerActuator(parse_config(site(tmp_path)), sink := Sink())
    history = [
        action("x1", "suspend_container", app="other"),
        action("w1", "scale_container", cpus=0.5),
    ]
    assert act.restore(history, []) == 2
    acks = sink.acks()
    assert not acks["x1"].ok and "does not belong" in (acks["x1"].error or "")
    assert acks["w1"].ok
    assert (d / "cgroup.freeze").read_text() == "0"
    assert (d / "cpu.max").read_text() == "50000 100000"


# --- 3. horizontal scaling: announced as it happens; LXD up means started ------------------


class FlakyLxd(FakeLxd):
    """The loopback LXD, with requests made to fail: (method, path, body action) -> how
    many more times."""

    def __init__(self) -> None:
        super().__init__()
        self.fail: dict[tuple[str, str, str | None], int] = {}

    def route(self, method: str, path: str, body: Any) -> tuple[int, dict]:
        what = (body or {}).get("name") or (body or {}).get("action")
        if self.fail.get((method, path, what), 0) > 0:
            self.fail[(method, path, what)] -= 1
            return self.error(500, "injected failure")
        return super().route(method, path, body)


@pytest.fixture()
def lxd() -> Iterator[tuple[FlakyLxd, str]]:
    fake = FlakyLxd()
    fake.add("batch", status="Stopped")
    url = fake.start()
    yield fake, url
    fake.stop()


def lxd_site(url: str) -> str:
    return f"""
schema_version: 1
site: {{id: s1, nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]}}
apps:
  - id: web
    token: web-token-123456
    templates:
      - {{id: batch, node: n1, max_replicas: 3,
          backend: {{type: lxd, instance: batch, lxd_endpoint: "{url}"}}}}
"""


def scale(cid: str, replicas: int) -> ContainerAction:
    return action(cid, "scale_app", container="batch", replicas=replicas)


def test_replicas_started_before_a_failure_are_announced(lxd) -> None:
    fake, url = lxd
    fake.fail[("POST", "/1.0/instances", "batch-2")] = 1
    act = ContainerActuator(parse_config(lxd_site(url)), sink := Sink())
    ack = act.handle(scale("s1", 2))
    assert ack is not None and not ack.ok
    assert "replica batch-2" in (ack.error or "") and "added batch-1" in (ack.error or "")
    assert fake.instances["batch-1"]["status"] == "Running"
    assert sink.events() == [("batch-1", "added")]  # running, so announced
    ack = act.handle(scale("s2", 2))
    assert ack is not None and ack.ok and ack.applied["added"] == ["batch-2"]
    assert sink.events() == [("batch-1", "added"), ("batch-2", "added")]


def test_an_lxd_copy_that_never_started_is_started_and_announced(lxd) -> None:
    fake, url = lxd
    # the copy is created, its start fails (as pylxd's timeout would leave it)
    fake.fail[("PUT", "/1.0/instances/batch-1/state", "start")] = 1
    act = ContainerActuator(parse_config(lxd_site(url)), sink := Sink())
    ack = act.handle(scale("s1", 1))
    assert ack is not None and not ack.ok
    assert fake.instances["batch-1"]["status"] == "Stopped" and sink.events() == []
    # existing is not up: the next scale_app starts it (no second copy) and announces it
    ack = act.handle(scale("s2", 1))
    assert ack is not None and ack.ok and ack.applied["added"] == ["batch-1"]
    assert fake.instances["batch-1"]["status"] == "Running"
    assert sink.events() == [("batch-1", "added")]
    assert [b for m, p, b in fake.requests if (m, p) == ("POST", "/1.0/instances")] == [
        {"name": "batch-1", "source": {"type": "copy", "source": "batch"}}
    ]
    # a suspended (frozen) replica is still up: not started again
    fake.instances["batch-1"]["status"] = "Frozen"
    ack = act.handle(scale("s3", 1))
    assert ack is not None and ack.ok and ack.applied["added"] == []
