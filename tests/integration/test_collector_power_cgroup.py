"""Power collector on this machine: a busy process in a REAL cgroup v1 (cpuacct), and the
Kepler alternative scraped over REAL HTTP on loopback from a fixture built from Kepler's
metric documentation."""

from __future__ import annotations

import contextlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from collectors.power import CpuMeter, PowerCollector
from collectors.publisher import Publisher
from ecovisor.adapters.cgroups import CgroupV1Backend
from ecovisor.contract.config_file import parse_config

pytestmark = pytest.mark.integration

CPUACCT = Path("/sys/fs/cgroup/cpuacct")
FIXTURES = Path(__file__).parent.parent / "fixtures" / "collectors"


@pytest.fixture()
def real_cgroup() -> Iterator[str]:
    if os.geteuid() != 0 or not (CPUACCT / "cpuacct.usage").exists():
        pytest.skip("needs root and a cgroup v1 cpuacct hierarchy at /sys/fs/cgroup/cpuacct")
    rel = f"ecovisor-test-{os.getpid()}"
    d = CPUACCT / rel
    d.mkdir()
    try:
        yield rel
    finally:
        # move anything left back to the root before removing the cgroup
        for pid in (d / "cgroup.procs").read_text().split():
            with contextlib.suppress(OSError):
                (CPUACCT / "cgroup.procs").write_text(pid)
        d.rmdir()


def test_busy_process_in_real_cgroup_v1(real_cgroup: str) -> None:
    meter = CpuMeter(CgroupV1Backend(real_cgroup))
    assert meter.cpu_s() == 0.0
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        (CPUACCT / real_cgroup / "cgroup.procs").write_text(str(child.pid))
        start_cpu, start = meter.cpu_s(), time.monotonic()
        time.sleep(1.5)
        used, wall = meter.cpu_s() - start_cpu, time.monotonic() - start  # type: ignore[operator]
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    # one busy thread on a 2-core machine: about one CPU-second per wall second
    assert 0.6 * wall < used <= 1.05 * wall, (used, wall)


def test_collector_publishes_real_cgroup_energy(real_cgroup: str, tmp_path: Path) -> None:
    cfg = parse_config(
        f"""
site:
  id: s
  shape: {{idle_attribution: equal}}
  nodes: [{{id: n1, cores: 2}}]
apps:
  - id: web
    token: web-token-123
    containers:
      - {{id: web-1, node: n1, backend: {{type: cgroup_v1, cgroup: {real_cgroup}}}}}
"""
    )
    pub = Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0)
    coll = PowerCollector(cfg, "n1", pub, batch=False)
    child = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        (CPUACCT / real_cgroup / "cgroup.procs").write_text(str(child.pid))
        coll.tick()
        time.sleep(1.0)
        s = coll.tick()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    (c,) = s.containers
    assert s.node is not None
    assert 0.5 < c.cpu_s < 1.5
    # the container's energy is inside the node's, and above its idle share alone
    assert 0 < c.energy_j <= s.node.energy_j
    assert c.energy_j > s.node.idle_energy_j


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200 if self.path == "/metrics" else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize("fixture", ["kepler-0.10.prom", "kepler-0.7.prom"])
def test_kepler_exporter_over_loopback_http(fixture: str) -> None:
    _Handler.body = (FIXTURES / fixture).read_bytes()
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/metrics"
    cfg = parse_config(
        f"""
site:
  id: s
  nodes: [{{id: n1, cores: 2, meter: kepler, kepler_url: "{url}"}}]
apps:
  - id: web
    token: web-token-123
    containers:
      - {{id: web-1, node: n1, backend: {{type: cgroup_v1, cgroup: none/web-1}}}}
"""
    )
    try:
        coll = PowerCollector(cfg, "n1", Publisher("s", "127.0.0.1", 1, client_id="t"), batch=False)
        s = coll.tick()
    finally:
        srv.shutdown()
        srv.server_close()
    assert s.node is not None and s.node.meter == "kepler"
    assert s.node.energy_j > 0
    (c,) = s.containers
    assert c.container == "web-1" and c.app == "web"
    assert c.energy_j == pytest.approx(14.0 if fixture == "kepler-0.10.prom" else 25.0)
