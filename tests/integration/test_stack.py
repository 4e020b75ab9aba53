"""`ecovisor up/status/down` on a temp state dir with a tiny site on its own free ports."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.admin import KafkaAdminClient

from ecovisor.contract import telemetry, topics
from ecovisor.embedded.servers import free_port
from ecovisor.embedded.stack import pid_alive

pytestmark = pytest.mark.integration


def _cli(*args: str, timeout: float = 90, check: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
    return subprocess.run(
        [sys.executable, "-m", "ecovisor.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=check,
    )


@pytest.fixture()
def site_file(tmp_path: Path) -> Iterator[Path]:
    ports = {k: free_port() for k in ("kafka", "mqtt", "vm", "api", "web")}
    p = tmp_path / "tiny.yaml"
    p.write_text(
        f"""schema_version: 1
site:
  id: tiny
  shape: {{tick_s: 1.0, solar_nameplate_w: 10, battery_capacity_wh: 10, grid_limit_w: 10}}
apps:
  - id: web
    token: tiny-web-token
stack:
  kafka_port: {ports["kafka"]}
  mqtt_port: {ports["mqtt"]}
  victoria_metrics_port: {ports["vm"]}
  api_port: {ports["api"]}
  ledger_web_port: {ports["web"]}
  state_dir: {tmp_path / "state"}
  service_startsecs: 2
"""
    )
    yield p
    _cli("down", "--config", str(p))  # never leave a stack behind a failed test


def _pids(state: Path) -> list[int]:
    data = json.loads((state / "stack.json").read_text())
    return [int(p) for p in data["pids"]] + [int(data["supervisord_pid"])]


def _wait_gone(pids: list[int], timeout: float = 15) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if pid_alive(p)]
        time.sleep(0.1)
    return alive


def test_up_detach_status_down_leaves_no_process(site_file: Path, tmp_path: Path) -> None:
    cfg = str(site_file)
    r = _cli("up", "--detach", "--config", cfg)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"creating {len(topics.all_topics(['web']))} topics" in r.stdout
    deadline = time.monotonic() + 30
    st = _cli("status", "--config", cfg)
    while st.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        st = _cli("status", "--config", cfg)
    assert st.returncode == 0, st.stdout
    rows = {
        ln.split()[0]: ln.split()[1] for ln in st.stdout.splitlines()[1:] if len(ln.split()) > 1
    }
    for svc in ("kafka", "mqtt", "bridge", "ledger"):
        assert rows.get(svc) == "RUNNING", st.stdout
    deadline = time.monotonic() + 60  # the ledger's GET /ready, once it joined its group
    while "ledger: ready (1 site)" not in st.stdout and time.monotonic() < deadline:
        assert "ledger: NOT ready" in st.stdout or "ledger: /ready" in st.stdout, st.stdout
        time.sleep(0.5)
        st = _cli("status", "--config", cfg)
    assert "ledger: ready (1 site)" in st.stdout, st.stdout

    # every topic exists, and the stack's bridge carries telemetry into Kafka
    text = site_file.read_text()
    kport = int(text.split("kafka_port: ")[1].split()[0])
    mport = int(text.split("mqtt_port: ")[1].split()[0])
    boot = f"127.0.0.1:{kport}"
    admin = KafkaAdminClient(bootstrap_servers=boot)
    assert set(topics.all_topics(["web"])) <= set(admin.list_topics())
    admin.close()
    cons = KafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False)
    tp = TopicPartition(topics.TELEMETRY, 0)
    cons.assign([tp])
    cons.seek_to_beginning(tp)
    # the stack's MQTT broker is authenticated: an anonymous client is refused, the app
    # logs in with its token and publishes its own metrics (docs/reliability.md)
    refused: list[Any] = []
    anon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stack-test-anon")
    anon.on_connect = lambda c, u, f, rc, p: refused.append(rc)
    anon.connect("127.0.0.1", mport)
    anon.loop_start()
    deadline = time.monotonic() + 10
    while not refused and time.monotonic() < deadline:
        time.sleep(0.05)
    anon.loop_stop()
    assert refused and refused[0].is_failure, refused
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="stack-test-pub")
    pub.username_pw_set("app-web", "tiny-web-token")
    pub.connect("127.0.0.1", mport)
    pub.loop_start()
    # RUNNING does not mean the bridge has subscribed yet: a message published before
    # its subscription exists is not for it. Publish one a second (new seq each) until
    # one comes through, and check it arrives exactly as sent.
    sent: dict[int, telemetry.AppMetricsTelemetry] = {}
    got: list[bytes] = []
    deadline = time.monotonic() + 20
    while not got and time.monotonic() < deadline:
        seq = len(sent) + 1
        sent[seq] = telemetry.AppMetricsTelemetry(
            site="tiny", time=datetime(2024, 1, 1, tzinfo=UTC), source="app-web", seq=seq,
            app="web", progress=0.5,
        )  # fmt: skip
        pub.publish(topics.mqtt_telemetry("tiny", "app_metrics", "app-web"),
                    sent[seq].to_json(), qos=1)  # fmt: skip
        until = time.monotonic() + 1.0
        while not got and time.monotonic() < until:
            got = [r.value for recs in cons.poll(200).values() for r in recs if r.key == b"tiny"]
    pub.loop_stop()
    cons.close()
    assert got, "no telemetry came through the stack's bridge in 20 s"
    first = telemetry.parse_telemetry(got[0])
    assert first == sent[first.seq]

    # a second `up` refuses to start over a running stack
    again = _cli("up", "--detach", "--config", cfg)
    assert again.returncode != 0 and "already running" in again.stderr

    # another stack on the same ports is refused up front, with the reason
    other = tmp_path / "other.yaml"
    other.write_text(site_file.read_text().replace("/state", "/state-other"))
    clash = _cli("up", "--detach", "--config", str(other))
    assert clash.returncode == 1 and f"kafka port {kport}" in clash.stderr

    state = tmp_path / "state"
    pids = _pids(state)
    assert len(pids) >= 4 and all(pid_alive(p) for p in pids)
    d = _cli("down", "--config", cfg)
    assert d.returncode == 0, d.stdout + d.stderr
    assert _wait_gone(pids) == []
    assert not (state / "supervisord.pid").exists()
    st = _cli("status", "--config", cfg)
    assert st.returncode == 1 and "not running" in st.stdout


def test_foreground_up_stops_everything_on_sigterm(site_file: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecovisor.cli", "up", "--config", str(site_file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    state = tmp_path / "state"
    deadline = time.monotonic() + 40
    pids: list[int] = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            pids = _pids(state)
            if len(pids) >= 4:
                break
        except (OSError, KeyError, ValueError, TypeError):
            pass
        time.sleep(0.2)
    assert len(pids) >= 4 and all(pid_alive(p) for p in pids)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=40)
    assert proc.returncode == 0, out
    assert "stopped." in out
    assert _wait_gone(pids) == []


def test_down_cleans_stale_state_of_a_killed_supervisord(site_file: Path, tmp_path: Path) -> None:
    cfg = str(site_file)
    assert _cli("up", "--detach", "--config", cfg).returncode == 0
    state = tmp_path / "state"
    pids = _pids(state)
    os.kill(pids[-1], signal.SIGKILL)  # supervisord dies; its children are orphaned
    assert _wait_gone(pids[-1:]) == []
    st = _cli("status", "--config", cfg)
    assert st.returncode == 1 and "stale" in st.stdout
    assert _wait_gone(pids) == []  # the orphans were killed from the recorded pids


def test_down_releases_the_cgroups_of_launched_containers(site_file: Path) -> None:
    """A cap written during a run must not outlive it: `down` removes the containers'
    (empty) cgroups, so the next `up` starts them unlimited."""
    cg = f"ecovisor-test-stack-{os.getpid()}/c1"
    cpu_dir = Path("/sys/fs/cgroup/cpu") / cg
    if not Path("/sys/fs/cgroup/cpu").is_dir() or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup v1 cpu hierarchy")
    text = site_file.read_text().replace(
        "    token: tiny-web-token\n",
        "    token: tiny-web-token\n"
        "    containers:\n"
        f"      - {{id: c1, node: n1, backend: {{type: cgroup_v1, cgroup: {cg}}},"
        " command: [python, -c, 'import time; time.sleep(120)']}\n",
    ).replace("  shape:", "  nodes: [{id: n1, cores: 2}]\n  shape:")
    site_file.write_text(text)
    cfg = str(site_file)
    try:
        r = _cli("up", "--detach", "--config", cfg)
        assert r.returncode == 0, r.stdout + r.stderr
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (
            cpu_dir.is_dir() and (cpu_dir / "cgroup.procs").read_text().split()
        ):
            time.sleep(0.2)
        assert (cpu_dir / "cgroup.procs").read_text().split(), "workload not in its cgroup"
        (cpu_dir / "cpu.cfs_quota_us").write_text("20000")  # as a cap would
        assert _cli("down", "--config", cfg).returncode == 0
        for ctl in ("cpu", "cpuacct", "freezer"):
            assert not (Path("/sys/fs/cgroup") / ctl / cg).exists(), ctl
            assert not (Path("/sys/fs/cgroup") / ctl / cg).parent.exists(), f"{ctl} parent"
    finally:
        _cli("down", "--config", cfg)
        for ctl in ("cpu", "cpuacct", "freezer"):
            leaf = Path("/sys/fs/cgroup") / ctl / cg
            for d in (leaf, leaf.parent):
                if d.is_dir():
                    d.rmdir()


V1 = Path("/sys/fs/cgroup")
# the workload leaves a child in its own session: supervisord's group kill misses it, only
# the container's cgroup still knows it (a "leftover process" that `down` must end too)
_FORKING = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)'], "
    "start_new_session=True); time.sleep(600)"
)


def _force_clean(cg: str) -> None:
    """Thaw, kill and remove what a failed test left (a frozen task ignores SIGKILL)."""
    state = V1 / "freezer" / cg / "freezer.state"
    with contextlib.suppress(OSError):
        state.write_text("THAWED")
    procs = V1 / "cpuacct" / cg / "cgroup.procs"
    with contextlib.suppress(OSError):
        for pid in procs.read_text().split():
            with contextlib.suppress(OSError):
                os.kill(int(pid), signal.SIGKILL)
    time.sleep(0.3)
    for ctl in ("cpu", "cpuacct", "freezer"):
        leaf = V1 / ctl / cg
        for d in (leaf, leaf.parent):
            with contextlib.suppress(OSError):
                d.rmdir()


@pytest.mark.parametrize("supervisord", ["alive", "killed"])
def test_down_ends_a_frozen_container_within_a_bound(
    site_file: Path, tmp_path: Path, supervisord: str
) -> None:
    """D1: a container suspended through the API (cgroup v1 freezer FROZEN) ignores
    SIGKILL until thawed. `down` thaws the stack's container cgroups, kills their
    processes (also one outside supervisord's process group) and removes the cgroups,
    within a bound, whether supervisord is alive or was killed first."""
    if not (V1 / "freezer").is_dir() or os.geteuid() != 0:
        pytest.skip("needs root and a cgroup v1 freezer hierarchy")
    cg = f"ecovisor-test-frozen-{os.getpid()}-{supervisord}/c1"
    site_file.write_text(
        site_file.read_text()
        .replace(
            "    token: tiny-web-token\n",
            "    token: tiny-web-token\n"
            "    containers:\n"
            f"      - {{id: c1, node: n1, backend: {{type: cgroup_v1, cgroup: {cg}}},"
            f" command: [python, -c, {json.dumps(_FORKING)}]}}\n",
        )
        .replace("  shape:", "  nodes: [{id: n1, cores: 2}]\n  shape:")
    )
    cfg = str(site_file)
    procs_file = V1 / "cpuacct" / cg / "cgroup.procs"
    try:
        r = _cli("up", "--detach", "--config", cfg)
        assert r.returncode == 0, r.stdout + r.stderr
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            procs_file.is_file() and len(procs_file.read_text().split()) >= 2
        ):
            time.sleep(0.2)
        workload = [int(p) for p in procs_file.read_text().split()]
        assert len(workload) >= 2, "workload and its child not in the cgroup"
        freezer = V1 / "freezer" / cg / "freezer.state"
        freezer.write_text("FROZEN")  # as the actuator does for suspend_container
        deadline = time.monotonic() + 5
        while freezer.read_text().strip() != "FROZEN" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert freezer.read_text().strip() == "FROZEN"
        state = tmp_path / "state"
        pids = _pids(state)
        if supervisord == "killed":
            os.kill(pids[-1], signal.SIGKILL)
            assert _wait_gone(pids[-1:]) == []
        t0 = time.monotonic()
        try:
            d = _cli("down", "--config", cfg, timeout=60)
        except subprocess.TimeoutExpired:
            pytest.fail("`ecovisor down` hung for 60 s on a frozen container")
        took = time.monotonic() - t0
        assert d.returncode == 0, d.stdout + d.stderr
        assert took < 30, f"`ecovisor down` took {took:.1f} s"
        assert _wait_gone(pids + workload, timeout=5) == []
        for ctl in ("cpu", "cpuacct", "freezer"):
            assert not (V1 / ctl / cg).exists(), f"{ctl} cgroup left: {d.stdout}"
    finally:
        _force_clean(cg)
        _cli("down", "--config", cfg)
        _force_clean(cg)
