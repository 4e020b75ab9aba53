"""Tenant isolation of the workloads cgexec starts, on this machine's real cgroup v1 (the
suite runs as root here): a workload runs as its app's own unprivileged uid, with no
capability and no_new_privs, inside its cgroup, and cannot write any cgroup file (another
app's freezer or quota, its own cap), signal another app's workload or a root process, nor
read their environment. Template replicas (``ProcessBackend.spawn``) too. The actuator's
scale path: test_actuator_cgroup.py::test_replicas_run_as_their_apps_uid."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ecovisor.adapters.cgroups import CgroupV1Backend, ProcessBackend, kill_all
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import load_config
from tests.fakes.actuator_bus import remove_tree

pytestmark = pytest.mark.integration

V1 = Path("/sys/fs/cgroup")
if os.geteuid() != 0 or not (V1 / "freezer").is_dir() or not os.access(V1 / "cpu", os.W_OK):
    pytestmark = [pytestmark, pytest.mark.skip(reason="needs root and cgroup v1 hierarchies")]

SLEEP = "import time; time.sleep(60)"
# Run as the web app's workload: tries what another tenant must not be able to do and
# prints what happened to each attempt ("ok" or the exception's name), then stays up.
PROBE = r"""
import json, os, sys, time
other, root, files = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
def attempt(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return type(e).__name__
def write(path, value):
    with open(path, "w") as fh:
        fh.write(value)
out = {
    "signal other app": attempt(lambda: os.kill(other, 0)),
    "signal root": attempt(lambda: os.kill(root, 0)),
    "environ other app": attempt(lambda: open(f"/proc/{other}/environ", "rb").read()),
    "environ root": attempt(lambda: open(f"/proc/{root}/environ", "rb").read()),
}
for path in files:  # harmless values: before the fix these writes succeeded
    out[path] = attempt(lambda p=path: write(p, "THAWED" if p.endswith("state") else "-1"))
print(json.dumps(out), flush=True)
time.sleep(60)
"""


def status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def wait_exec(pid: int, marker: str, timeout: float = 10.0) -> None:
    """Until the launcher has exec'd the workload (its command line shows ``marker``, no
    longer cgexec's)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if marker.encode() in cmdline and b"actuators.cgexec" not in cmdline:
                return
        time.sleep(0.02)
    raise AssertionError(f"pid {pid} did not exec {marker!r} within {timeout} s")


class Site:
    def __init__(self, tmp: Path) -> None:
        self.top = f"ecovisor-test-{uuid.uuid4().hex[:10]}"
        self.path = tmp / "site.yaml"
        self.path.write_text(f"""
schema_version: 1
site:
  id: iso
  nodes: [{{id: n1, cores: 2}}]
apps:
  - id: web
    token: web-token-123456
    containers:
      - {{id: web-1, node: n1, backend: {{type: cgroup_v1, cgroup: {self.top}/web-1}},
          command: [python, -c, "{SLEEP}"]}}
  - id: batch
    token: batch-token-123456
    containers:
      - {{id: batch-1, node: n1, backend: {{type: cgroup_v1, cgroup: {self.top}/batch-1}},
          command: [python, -c, "{SLEEP}"]}}
""")
        self.cfg: EcovisorConfig = load_config(self.path)
        self.procs: list[subprocess.Popen[bytes]] = []

    def cgexec(self, *args: str, **kw) -> subprocess.Popen[bytes]:
        p = subprocess.Popen([sys.executable, "-m", "actuators.cgexec", *args], cwd="/", **kw)
        self.procs.append(p)
        return p

    def cgroup(self, name: str) -> CgroupV1Backend:
        return CgroupV1Backend(f"{self.top}/{name}")

    def close(self) -> None:
        for p in self.procs:
            with contextlib.suppress(OSError):
                p.kill()
            p.wait()
            if p.stdout:
                p.stdout.close()
        for name in ("web-1", "batch-1", "replica-1", "refused"):
            kill_all(self.cgroup(name))
        time.sleep(0.05)
        remove_tree(self.top)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Site]:
    s = Site(tmp_path)
    try:
        yield s
    finally:
        s.close()


def test_each_apps_workload_runs_as_its_own_uid_and_cannot_touch_another(site: Site) -> None:
    web_uid, batch_uid = site.cfg.workload_uid("web"), site.cfg.workload_uid("batch")
    assert web_uid != batch_uid and min(web_uid, batch_uid) >= 1000
    batch = site.cgexec("--config", str(site.path), "--container", "batch-1")
    wait_exec(batch.pid, "time.sleep")
    batch_cg, web_cg = site.cgroup("batch-1"), site.cgroup("web-1")
    targets = [
        batch_cg.dir("freezer") / "freezer.state",  # freeze another tenant
        batch_cg.dir("cpu") / "cpu.cfs_quota_us",  # cap another tenant
        batch_cg.dir("cpu") / "cgroup.procs",  # move into another tenant's container
        web_cg.dir("cpu") / "cpu.cfs_quota_us",  # lift its own cap
        V1 / "freezer" / "cgroup.procs",  # leave its container
    ]
    web = site.cgexec(
        "--config", str(site.path), "--container", "web-1", "--",
        "python", "-c", PROBE, str(batch.pid), str(os.getpid()), *map(str, targets),
        stdout=subprocess.PIPE,
    )  # fmt: skip
    assert web.stdout is not None
    ready, _, _ = select.select([web.stdout], [], [], 20)
    assert ready, "the probe printed nothing"
    attempts = json.loads(web.stdout.readline())

    for pid, cg, uid in ((web.pid, web_cg, web_uid), (batch.pid, batch_cg, batch_uid)):
        st = status(pid)
        assert st["Uid"].split() == [str(uid)] * 4, st["Uid"]
        assert st["Gid"].split() == [str(uid)] * 4, st["Gid"]
        assert st["Groups"] == ""
        assert int(st["CapEff"], 16) == 0 and int(st["CapPrm"], 16) == 0
        assert st["NoNewPrivs"] == "1"
        assert pid in cg.procs()  # joined (as root) before dropping
    assert attempts == {
        "signal other app": "PermissionError",
        "signal root": "PermissionError",
        "environ other app": "PermissionError",
        "environ root": "PermissionError",
        **{str(t): "PermissionError" for t in targets},
    }
    assert web.pid in web_cg.procs() and not batch_cg.is_frozen()


def test_a_replica_started_by_the_process_backend_runs_as_the_given_uid(site: Site) -> None:
    uid = site.cfg.workload_uid("web")
    b = ProcessBackend(f"{site.top}/replica-1")
    pid = b.spawn([sys.executable, "-c", SLEEP], uid=uid)
    try:
        wait_exec(pid, "time.sleep")
        st = status(pid)
        assert st["Uid"].split() == [str(uid)] * 4 and int(st["CapEff"], 16) == 0
        assert b.procs() == [pid]
    finally:
        b.stop()


def test_as_root_without_a_uid_nothing_runs(site: Site) -> None:
    p = site.cgexec("--cgroup", f"{site.top}/refused", "--", "/bin/true",
                    stderr=subprocess.PIPE)  # fmt: skip
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert err.decode().strip() == (
        "actuators.cgexec: started as root: give --uid (the app's workload uid); "
        "cgexec does not run a workload as root"
    )


def test_a_command_the_apps_uid_cannot_run_is_a_one_line_error(site: Site, tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)  # root's: the workload's uid cannot enter it
    script = private / "work.sh"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    p = site.cgexec("--cgroup", f"{site.top}/refused", "--uid", "200777", "--", str(script),
                    stderr=subprocess.PIPE)  # fmt: skip
    _, err = p.communicate(timeout=30)
    assert p.returncode == 2
    assert err.decode() == (
        f"actuators.cgexec: cannot run {script} as uid 200777: Permission denied\n"
    )


def test_not_started_as_root_it_keeps_its_user_and_sets_no_new_privs() -> None:
    uid = 200_778
    fake = Path(tempfile.mkdtemp(prefix="ecovisor-fake-cgroup-"))  # a cgroupfs-shaped tree
    try:
        os.chown(fake, uid, uid)
        p = subprocess.run(
            [sys.executable, "-m", "actuators.cgexec", "--cgroup", "w", "--root", str(fake),
             "--uid", "4242", "--", "/bin/cat", "/proc/self/status"],
            user=uid, group=uid, extra_groups=[], cwd="/", capture_output=True, text=True,
            timeout=30,
        )  # fmt: skip
        assert p.returncode == 0, p.stderr
        st = {k: v.strip() for k, _, v in (x.partition(":") for x in p.stdout.splitlines())}
        assert st["Uid"].split() == [str(uid)] * 4  # it cannot switch: --uid is not used
        assert st["NoNewPrivs"] == "1"
        assert (fake / "cpu" / "w" / "cgroup.procs").read_text().strip().isdigit()
    finally:
        shutil.rmtree(fake)


def test_a_workload_gets_none_of_the_launchers_secrets(
    site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The actuator holds the internal key (and `ecovisor up` whatever tokens the operator
    exported): a replica it starts must not find them in its own environment."""
    monkeypatch.setenv("ECOVISOR_INTERNAL_KEY", "internal-key-of-the-platform")
    monkeypatch.setenv("ECOVISOR_WEB_TOKEN", "web-token-123456")
    monkeypatch.setenv("ECOVISOR_CONFIG", str(site.path))
    monkeypatch.setenv("LC_ALL", "C.UTF-8")
    b = ProcessBackend(f"{site.top}/replica-1")
    pid = b.spawn([sys.executable, "-c", SLEEP], uid=site.cfg.workload_uid("web"))
    try:
        wait_exec(pid, "time.sleep")
        env = dict(
            x.split("=", 1) for x in Path(f"/proc/{pid}/environ").read_text().split("\0") if x
        )
        assert "ECOVISOR_INTERNAL_KEY" not in env and "ECOVISOR_WEB_TOKEN" not in env
        assert env["ECOVISOR_CONFIG"] == str(site.path) and env["LC_ALL"] == "C.UTF-8"
        assert env["PATH"] == os.environ["PATH"]
    finally:
        b.stop()
