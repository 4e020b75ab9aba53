"""End to end: the demo site as a user runs it, through the real CLI.

A copy of examples/demo-site.yaml, rewritten only where it must be so it can run next
to a live demo (free ports, a temp state_dir, its own cgroup subtree); its collectors,
simulated battery device and CPU-burning workloads in cgroups are kept. ``ecovisor up
--detach`` → ``ecovisor status`` → ``ecovisor tail notifications --app web --json``
shows a tick whose data is a valid TickData → the ledger topic has entries for both
apps → ``ecovisor down`` leaves no process and no cgroup of the test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecovisor.adapters.cgroups import V1_CONTROLLERS, CgroupV1Backend
from ecovisor.contract import topics
from ecovisor.contract.notifications import Notification, TickData
from ecovisor.embedded.servers import free_port
from ecovisor.embedded.stack import pid_alive
from tests.fakes.actuator_bus import remove_tree
from tests.integration.e2e_helpers import (
    ROOT,
    LineReader,
    TopicReader,
    cgroup_dirs,
    clean_env,
    cli,
    stop_proc,
)

pytestmark = pytest.mark.integration

V1 = Path("/sys/fs/cgroup")
if not (V1 / "cpu").is_dir() or not os.access(V1 / "cpu", os.W_OK):
    pytestmark = [pytestmark, pytest.mark.skip(reason="needs a writable cgroup v1 cpu hierarchy")]

DEMO = ROOT / "examples" / "demo-site.yaml"
FIRST_TICK_S = 60.0


def demo_copy(dst: Path, top: str, state_dir: Path) -> dict[str, Any]:
    """The demo configuration on free ports, a temp state dir and cgroups under ``top``."""
    doc = yaml.safe_load(DEMO.read_text())
    for app in doc["apps"]:
        for c in app.get("containers", []):
            b = c["backend"]
            assert b["type"] == "cgroup_v1" and b["cgroup"].startswith("ecovisor/demo/"), b
            b["cgroup"] = f"{top}/{b['cgroup'].rsplit('/', 1)[1]}"
    assert "stack" not in doc or not doc["stack"].get("kafka_bootstrap")
    doc["stack"] = {
        **doc.get("stack", {}),
        "kafka_port": free_port(),
        "mqtt_port": free_port(),
        "victoria_metrics_port": free_port(),
        "api_port": free_port(),
        "ledger_web_port": free_port(),
        "state_dir": str(state_dir),
        "service_startsecs": 2,  # RUNNING (and `status` healthy) 2 s after a start
    }
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


def _stack_pids(state_dir: Path) -> list[int]:
    data = json.loads((state_dir / "stack.json").read_text())
    return [int(p) for p in data["pids"]] + [int(data["supervisord_pid"])]


def _wait_gone(pids: list[int], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    alive = [p for p in pids if pid_alive(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if pid_alive(p)]
    return alive


def _web_powered(line: str) -> bool:
    n = json.loads(line)
    if n.get("type") != "tick":
        return False
    conts = n["data"].get("containers", {})
    return all(conts.get(c, {}).get("power_w", 0) > 0 for c in ("web-1", "web-2"))


@pytest.fixture()
def demo(tmp_path: Path) -> Iterator[dict[str, Any]]:
    top = f"ecovisor-e2e-demo-{uuid.uuid4().hex[:8]}"
    state = tmp_path / "state"
    cfg = tmp_path / "demo-site.yaml"
    doc = demo_copy(cfg, top, state)
    conts = [c for a in doc["apps"] for c in a.get("containers", [])]
    groups = {c["id"]: CgroupV1Backend(c["backend"]["cgroup"]) for c in conts}
    try:
        yield {"cfg": cfg, "doc": doc, "top": top, "state": state, "groups": groups}
    finally:
        cli("down", "--config", str(cfg), timeout=60)  # never leave a stack behind
        for g in groups.values():  # a workload that outlived its supervisor
            for pid in g.procs() if g.exists() else []:
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)
        remove_tree(top)


def test_demo_up_status_tail_ledger_down(demo: dict[str, Any]) -> None:
    cfg, state, doc = str(demo["cfg"]), demo["state"], demo["doc"]
    apps = [a["id"] for a in doc["apps"]]
    site = doc["site"]["id"]
    t_up, wall_up = time.monotonic(), time.time()
    r = cli("up", "--detach", "--config", cfg, timeout=90)
    t_started = time.monotonic() - t_up
    assert r.returncode == 0, r.stdout + r.stderr

    st = cli("status", "--config", cfg)
    deadline = time.monotonic() + 20
    while st.returncode != 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        st = cli("status", "--config", cfg)
    assert st.returncode == 0, st.stdout + st.stderr
    services = {ln.split()[0] for ln in st.stdout.splitlines()[1:] if ln.split()}
    want = {"kafka", "mqtt", "bridge", "ledger", "actuator-containers", "actuator-battery"}
    want |= {"collector-solar", "collector-carbon", "collector-battery", "collector-power"}
    want |= {f"container-{c}" for c in demo["groups"]}
    assert want <= services, st.stdout

    # the workloads really run inside the test's own cgroups (cgexec joins after its
    # imports, which may take a few seconds on a loaded machine)
    deadline = time.monotonic() + 20
    empty = list(demo["groups"])
    while empty and time.monotonic() < deadline:
        empty = [c for c, g in demo["groups"].items() if not (g.exists() and g.procs())]
        time.sleep(0.2)
    assert not empty, f"no process in the cgroups of {empty}"

    # an app's view: the CLI's own tail, bounded
    tail = subprocess.Popen(
        [sys.executable, "-m", "ecovisor.cli", "tail", "notifications", "--app", "web",
         "--json", "--from-beginning", "--config", cfg],
        cwd=ROOT, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        text=True, start_new_session=True,
    )  # fmt: skip
    try:
        lines = LineReader(tail)
        got = lines.wait_for(lambda ln: '"type":"tick"' in ln, FIRST_TICK_S)
        # and, a few ticks on, the web workloads' measured power (collectors.power ->
        # MQTT -> bridge -> ledger) in the app's own tick data
        powered = lines.wait_for(_web_powered, max(FIRST_TICK_S - (time.monotonic() - t_up), 1))
    finally:
        stop_proc(tail, timeout=5)
    assert got is not None, f"no tick notification for web within {FIRST_TICK_S} s"
    t_tick, line = got
    note = Notification.model_validate_json(line)
    assert note.app == "web" and note.type == "tick" and note.tick is not None
    data = TickData.model_validate(note.data)
    assert data.tick_s == doc["site"]["shape"]["tick_s"]
    print(
        f"\n`up --detach` returned after {t_started:.1f} s; first tick notification for web "
        f"read {t_tick - t_up:.1f} s after `up`; it closed tick {note.tick} ending "
        f"{note.time.timestamp() - wall_up:.1f} s after `up` (app_power_w "
        f"{data.app_power_w:.3f}, grid carbon {data.grid_carbon_g_per_kwh:.1f} g/kWh)"
    )

    assert powered is not None, "no tick with the web workloads' power"
    p = TickData.model_validate(json.loads(powered[1])["data"])
    print(
        f"first tick with web power {powered[0] - t_up:.1f} s after `up`: "
        + ", ".join(f"{c} {v.power_w:.3f} W" for c, v in sorted(p.containers.items()))
    )

    # the ledger topic has entries for both apps
    boot = f"127.0.0.1:{doc['stack']['kafka_port']}"
    led = TopicReader(boot, topics.LEDGER, site, from_beginning=True)
    try:
        entries = led.wait(
            lambda xs: set(apps) <= {e.get("app") for e in xs}, 30, "entries of both apps"
        )
    finally:
        led.close()
    print(f"ledger entries so far: {len(entries)} ({', '.join(sorted(apps))})")

    # down: every recorded process (services, workloads, supervisord) and the cgroups go
    pids = _stack_pids(state)
    workloads = [p for g in demo["groups"].values() for p in g.procs()]
    assert workloads and set(workloads) <= set(pids)  # cgexec keeps the supervised pid
    assert len(pids) >= len(want) + 1 and all(pid_alive(p) for p in pids)
    d = cli("down", "--config", cfg, timeout=60)
    assert d.returncode == 0, d.stdout + d.stderr
    assert _wait_gone(pids, 15) == [], "processes left after `ecovisor down`"
    left = [str(g.dir(c)) for g in demo["groups"].values() for c in V1_CONTROLLERS]
    assert [d for d in left if Path(d).is_dir()] == [], "cgroups left after `ecovisor down`"
    parents = cgroup_dirs(demo["top"])  # the grouping directory above the containers'
    print(f"empty parent cgroup dirs left by `ecovisor down`: {[str(p) for p in parents]}")
    st = cli("status", "--config", cfg)
    assert st.returncode == 1 and "not running" in st.stdout
    print(f"whole run {time.monotonic() - t_up:.1f} s")
