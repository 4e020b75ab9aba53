"""Actuation latency: ContainerAction published to Kafka -> CPU quota written to a real
cgroup v1 by the real ``python -m actuators.containers`` process.

Workload: one container (a cgroup v1 with one CPU-burning process) on a private tansu
broker on a free port; N ``set_container_powercap`` actions alternating between 0.2 and
0.4 cores of the "ecovisor-microserver" model, sent one at a time (the next after the
previous ack).
Latency = the ack's ``time`` (stamped by the actuator right after the quota write) minus
the wall-clock time just before the producer send; both clocks are this machine's. Each
quota is also checked in cpu.cfs_quota_us. Needs root and cgroup v1.

    .venv/bin/python bench/bench_actuation.py [--commands 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from ecovisor.adapters.kafka import create_topics
from ecovisor.contract import topics
from ecovisor.contract.actuation import ContainerAction
from ecovisor.contract.config_file import load_config
from ecovisor.contract.envelope import utcnow
from ecovisor.embedded.servers import Server, free_port, tansu_command
from tests.fakes.actuator_bus import (
    Bus,
    burner_cgroup,
    modelled_power_w,
    start_service,
    stop_service,
)


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(p / 100 * (len(s) - 1))))]


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--commands", type=int, default=200)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-actuation-"))
    port = free_port()
    broker = Server(tansu_command(port), port, tmp / "tansu.log").start()
    bootstrap = f"127.0.0.1:{port}"
    create_topics(bootstrap, topics.static_topics())
    top = f"ecovisor-bench-{uuid.uuid4().hex[:8]}"
    cfg_path = tmp / "site.yaml"
    cfg_path.write_text(
        f"""
schema_version: 1
site:
  id: bench
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
apps:
  - id: web
    token: web-token-123456
    containers:
      - {{id: c1, node: n1, backend: {{type: cgroup_v1, cgroup: {top}/c1}}}}
stack: {{kafka_bootstrap: "{bootstrap}"}}
"""
    )
    cfg = load_config(cfg_path)
    bus = Bus(bootstrap)
    bus.tail(topics.ACTUATOR_ACKS)
    proc = start_service("actuators.containers", cfg_path, tmp / "actuator.log")
    lat_write: list[float] = []
    lat_ack: list[float] = []
    mismatches = 0
    try:
        with burner_cgroup(f"{top}/c1") as cg:
            warm = ContainerAction(
                site="bench",
                time=utcnow(),
                command_id="warm",
                app="web",
                container="c1",
                action="set_container_powercap",
                watts=None,  # no cap: restores the baseline
            )
            bus.send(topics.ACTUATOR_CONTAINERS, "bench", warm.to_json())
            bus.wait_ack("warm", timeout=60)
            caps = [modelled_power_w(cfg, "c1", c) for c in (0.2, 0.4)]
            for i in range(args.commands):
                cores = (0.2, 0.4)[i % 2]
                a = ContainerAction(
                    site="bench",
                    time=utcnow(),
                    command_id=f"b{i}",
                    app="web",
                    container="c1",
                    action="set_container_powercap",
                    watts=caps[i % 2],
                )
                t0 = time.time()
                bus.send(topics.ACTUATOR_CONTAINERS, "bench", a.to_json())
                ack = bus.wait_ack(a.command_id, timeout=10)
                t_seen = time.time()
                lat_write.append(ack.time.timestamp() - t0)
                lat_ack.append(t_seen - t0)
                quota = int((cg.dir("cpu") / "cpu.cfs_quota_us").read_text())
                if not ack.ok or abs(quota - cores * cg.period_us()) > 0.01 * cores * 1e5:
                    mismatches += 1
    finally:
        stop_service(proc)
        bus.close()
        broker.stop()
    ms = [x * 1000 for x in lat_write]
    ms_ack = [x * 1000 for x in lat_ack]
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}, Python {platform.python_version()}")
    print("workload: 1 cgroup v1 container with 1 busy process; tansu broker (memory)")
    print(
        f"          {args.commands} set_container_powercap actions, one in flight, "
        "alternating 0.2/0.4 core"
    )
    print(
        f"published -> quota written: p50 {statistics.median(ms):.1f} ms, "
        f"p99 {pct(ms, 99):.1f} ms, max {max(ms):.1f} ms"
    )
    print(
        f"published -> ack consumed:  p50 {statistics.median(ms_ack):.1f} ms, "
        f"p99 {pct(ms_ack, 99):.1f} ms"
    )
    print(f"quota mismatches: {mismatches}")
    return 0 if mismatches == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
