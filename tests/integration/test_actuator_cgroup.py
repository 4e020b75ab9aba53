"""The container actuator on this machine's real cgroup v1, driven over a real tansu
broker: a ContainerAction published to ecovisor.actuator.containers, the real
``python -m actuators.containers`` process applying it, CPU measured from the cgroup's
own cpuacct.usage (not the machine's), power from the node's power model."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecovisor.adapters.cgroups import CgroupV1Backend, ProcessBackend
from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from tests.fakes.actuator_bus import (
    Bus,
    burner_cgroup,
    mean_cores,
    modelled_power_w,
    remove_tree,
    sample_usage,
    start_service,
    stop_service,
)

pytestmark = pytest.mark.integration

V1 = Path("/sys/fs/cgroup")
if not (V1 / "cpu").is_dir() or not os.access(V1 / "cpu", os.W_OK):
    pytestmark = [pytestmark, pytest.mark.skip(reason="needs a writable cgroup v1 cpu hierarchy")]

CAP_CORES = 0.3  # robust on a shared 2-core machine: well below one free core


class Rig:
    def __init__(self, bootstrap: str, tmp: Path) -> None:
        self.top = f"ecovisor-test-{uuid.uuid4().hex[:10]}"
        self.site = f"t{uuid.uuid4().hex[:8]}"
        self.cfg_path = tmp / "site.yaml"
        self.cfg_path.write_text(
            f"""
schema_version: 1
site:
  id: {self.site}
  shape: {{tick_s: 1.0, idle_attribution: none}}
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
apps:
  - id: web
    token: web-token-123456
    containers:
      - {{id: burn-1, node: n1, backend: {{type: cgroup_v1, cgroup: {self.top}/burn-1}}}}
      - {{id: burn-2, node: n1, backend: {{type: cgroup_v1, cgroup: {self.top}/burn-2}}}}
      - {{id: group-1, node: n1, backend: {{type: process, cgroup: {self.top}/group-1}}}}
      - {{id: ghost, node: n1, backend: {{type: cgroup_v1, cgroup: {self.top}/ghost}}}}
    templates:
      - {{id: worker, node: n1, max_replicas: 3, command: [python, -c, "while True: pass"],
          backend: {{type: process, cgroup: {self.top}/worker}}}}
stack: {{kafka_bootstrap: "{bootstrap}"}}
"""
        )
        self.cfg = load_config(self.cfg_path)
        self.bus = Bus(bootstrap)
        self.log = tmp / "actuator.log"
        self.proc = None

    def start(self) -> None:
        for t in (topics.ACTUATOR_ACKS, topics.CONTAINERS):
            self.bus.tail(t)
        self.proc = start_service("actuators.containers", self.cfg_path, self.log)
        # readiness: a harmless command on a container with no cgroup yields an ack
        ack = self.send("ghost", "resume_container", timeout=30)
        assert not ack.ok and "does not exist" in (ack.error or ""), ack

    def send(self, container: str, action: str, timeout: float = 10.0, **kw):
        return self.bus.send_action(self.site, "web", container, action, timeout, **kw)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            stop_service(self.proc, sig)
            self.proc = None


@pytest.fixture(scope="module")
def rig(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    r = Rig(kafka_bootstrap, tmp_path_factory.mktemp("actuator"))
    try:
        r.start()
        yield r
    finally:
        r.stop()
        for i in range(1, 4):
            ProcessBackend(f"{r.top}/worker-{i}").stop()
        remove_tree(r.top)
        r.bus.close()


def test_power_cap_holds_measured_cpu_and_lifting_it_lets_cpu_rise(rig: Rig) -> None:
    with burner_cgroup(f"{rig.top}/burn-1") as cg:
        cap_w = modelled_power_w(rig.cfg, "burn-1", CAP_CORES)  # 0.5475 W on this node
        t_cmd = time.monotonic()
        ack = rig.send("burn-1", "set_container_powercap", watts=cap_w)
        assert ack.ok, ack
        assert ack.applied["cpu_limit_cores"] == pytest.approx(CAP_CORES, rel=0.01)
        # the quota is in the kernel, written within the first 1-s tick
        assert int((cg.dir("cpu") / "cpu.cfs_quota_us").read_text()) == pytest.approx(
            CAP_CORES * cg.period_us(), rel=0.01
        )
        assert time.monotonic() - t_cmd < 1.0
        # measure from the end of the 2nd tick after the command for 3 s
        samples = sample_usage(cg, 2.0 + 3.0 - (time.monotonic() - t_cmd) + 0.1)
        cores = mean_cores(samples, t_cmd + 2.0, t_cmd + 5.0)
        power = modelled_power_w(rig.cfg, "burn-1", cores)
        print(f"cap {cap_w:.4f} W = {CAP_CORES} cores; measured {cores:.4f} cores, {power:.4f} W")
        assert abs(cores - CAP_CORES) <= 0.1 * CAP_CORES, f"measured {cores:.3f} cores"
        assert abs(power - cap_w) <= 0.1 * cap_w, f"modelled {power:.3f} W vs cap {cap_w:.3f}"

        ack = rig.send("burn-1", "set_container_powercap", watts=None)
        assert ack.ok and ack.applied["cpu_limit_cores"] is None  # no limit before the cap
        assert (cg.dir("cpu") / "cpu.cfs_quota_us").read_text().strip() == "-1"
        samples = sample_usage(cg, 1.5)
        lifted = mean_cores(samples, samples[0].t, samples[-1].t)
        print(f"after lifting the cap: {lifted:.3f} cores")
        assert lifted > 1.5 * CAP_CORES, f"after lifting the cap only {lifted:.3f} cores"


def test_removing_the_cap_restores_previous_limit_and_vertical_scaling(rig: Rig) -> None:
    with burner_cgroup(f"{rig.top}/burn-2") as cg:
        cg.set_cpu_limit(0.8)  # a limit the container had before Ecovisor touched it
        assert rig.send(
            "burn-2", "set_container_powercap", watts=modelled_power_w(rig.cfg, "burn-2", 0.2)
        ).ok
        assert cg.get_cpu_limit() == pytest.approx(0.2, rel=0.01)
        assert rig.send("burn-2", "set_container_powercap", watts=None).ok
        assert cg.get_cpu_limit() == pytest.approx(0.8)
        ack = rig.send("burn-2", "scale_container", cpus=0.5)  # vertical: the new allowance
        assert ack.ok and cg.get_cpu_limit() == pytest.approx(0.5)


def test_suspend_measures_zero_cpu_and_resume_restarts(rig: Rig) -> None:
    with burner_cgroup(f"{rig.top}/group-1", n=2) as cg:
        assert len(cg.procs()) == 2
        ack = rig.send("group-1", "suspend_container")
        assert ack.ok and ack.applied["suspended"] is True
        assert cg.is_frozen()
        s = sample_usage(cg, 1.0)
        assert s[-1].usage_s - s[0].usage_s == 0.0  # not one ns of CPU while frozen
        assert rig.send("group-1", "resume_container").ok
        s = sample_usage(cg, 1.0)
        assert (s[-1].usage_s - s[0].usage_s) / (s[-1].t - s[0].t) > 0.3


def test_missing_cgroup_is_a_reported_failure_and_service_survives(rig: Rig) -> None:
    ack = rig.send("ghost", "set_container_powercap", watts=1.0)
    assert not ack.ok and "does not exist" in (ack.error or "")
    ack = rig.send("nobody", "suspend_container")
    assert not ack.ok and "not in the site configuration" in (ack.error or "")
    assert rig.proc is not None and rig.proc.poll() is None


def test_horizontal_scaling_starts_stops_replicas_and_announces(rig: Rig) -> None:
    ack = rig.send("worker", "scale_app", replicas=2)
    assert ack.ok and ack.applied["added"] == ["worker-1", "worker-2"], ack
    reps = [ProcessBackend(f"{rig.top}/worker-{i}") for i in (1, 2)]
    deadline = time.monotonic() + 5
    while not all(r.procs() for r in reps) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(r.procs() for r in reps)
    ack = rig.send("worker", "scale_app", replicas=0)
    assert ack.ok and sorted(ack.applied["removed"]) == ["worker-1", "worker-2"]
    assert not any(r.exists() for r in reps)
    events = rig.bus.events(0.5)
    seen = [(e.container, e.event) for e in events if e.site == rig.site]
    assert ("worker-1", "added") in seen and ("worker-2", "removed") in seen


def test_replicas_run_as_their_apps_uid(rig: Rig) -> None:
    """The actuator runs as root here: a replica it starts drops to its template's app's
    workload uid (no capability), so it cannot write the cgroup files of other tenants."""
    uid = rig.cfg.workload_uid("web")
    assert rig.send("worker", "scale_app", replicas=1).ok
    rep = ProcessBackend(f"{rig.top}/worker-1")
    try:
        deadline = time.monotonic() + 10
        st: dict[str, str] = {}
        while time.monotonic() < deadline:  # until cgexec has dropped and exec'd
            pids = rep.procs()
            if pids:
                lines = Path(f"/proc/{pids[0]}/status").read_text().splitlines()
                st = {k: v.strip() for k, _, v in (x.partition(":") for x in lines)}
                if st["Uid"].split()[0] != "0":
                    break
            time.sleep(0.05)
        assert st.get("Uid", "").split() == [str(uid)] * 4, st
        assert st["Gid"].split() == [str(uid)] * 4
        assert int(st["CapEff"], 16) == 0 and st["NoNewPrivs"] == "1"
    finally:
        assert rig.send("worker", "scale_app", replicas=0).ok


def test_restart_restores_last_setpoint_from_kafka(rig: Rig) -> None:
    with burner_cgroup(f"{rig.top}/burn-1") as cg:
        cg.set_cpu_limit(None)
        first = rig.send(
            "burn-1", "set_container_powercap", watts=modelled_power_w(rig.cfg, "burn-1", 0.25)
        )
        assert first.ok
        rig.stop(signal.SIGKILL)  # no clean shutdown
        cg.set_cpu_limit(None)  # the limit is lost meanwhile (e.g. cgroup recreated)
        rig.start()  # its readiness probe is answered only after the restore
        assert cg.get_cpu_limit() == pytest.approx(0.25, rel=0.01)
        acks = rig.bus.collect_acks(0.5)
        assert first.command_id not in [a.command_id for a in acks]  # not acked twice
        # and the original limit (unlimited) is still what removing the cap restores
        assert rig.send("burn-1", "set_container_powercap", watts=None).ok
        assert cg.get_cpu_limit() is None


def test_cgexec_runs_the_configured_command_in_the_cgroup(rig: Rig, tmp_path: Path) -> None:
    import subprocess
    import sys

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        rig.cfg_path.read_text().replace(
            "cgroup: " + rig.top + "/burn-1}}",
            "cgroup: "
            + rig.top
            + "/exec-1}, command: [python, -c, 'import time; time.sleep(30)']}",
        )
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "actuators.cgexec", "--config", str(cfg), "--container", "burn-1"]
    )
    cg = CgroupV1Backend(f"{rig.top}/exec-1")
    try:
        deadline = time.monotonic() + 5
        while (not cg.exists() or proc.pid not in cg.procs()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.pid in cg.procs()  # exec kept the pid: supervisors signal it directly
        assert all((cg.dir(c) / "cgroup.procs").read_text().split() for c in ("cpu", "freezer"))
    finally:
        proc.kill()
        proc.wait()
        time.sleep(0.05)
        cg.remove()
