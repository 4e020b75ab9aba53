"""How much memory the embedded Kafka broker (tansu, memory storage) takes over time.

    python reliability/broker_memory.py [--minutes 4] [--every 5] [--utilization 0.05]

Starts the demo site (examples/demo-site.yaml) with ``ecovisor up --detach`` on free
ports, a temporary state dir and its own cgroup subtree (the demo workloads run at
``--utilization`` of a core each instead of the demo's 0.3/0.2/0.5, to spare the machine;
the broker's traffic does not depend on it: telemetry, ticks and snapshots are per tick).
Every ``--every`` s it prints the broker's RSS, and at the end the bytes held per topic
(read back from the broker) and the RSS growth rate; then ``ecovisor down``.

Needs root and a cgroup v1 hierarchy for the demo workloads (as `make run` does). Not a
test: a measurement, whose figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.embedded.servers import free_port  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
    return subprocess.run([sys.executable, "-m", "ecovisor.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def site(dst: Path, state: Path, top: str, utilization: float) -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "demo-site.yaml").read_text())
    for app in doc["apps"]:
        for c in app.get("containers", []):
            c["backend"]["cgroup"] = f"{top}/{c['id']}"
            if c.get("command"):
                c["command"] = [*c["command"][:-1], str(utilization)]
    doc["stack"] = {
        "kafka_port": free_port(), "mqtt_port": free_port(),
        "victoria_metrics_port": free_port(), "api_port": free_port(),
        "ledger_web_port": free_port(), "state_dir": str(state),
    }  # fmt: skip
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


def broker_pid(state: Path) -> int:
    import xmlrpc.client  # noqa: F401 (the stack's RPC proxy)

    from ecovisor.embedded.stack import rpc

    return int(rpc(state).supervisor.getProcessInfo("kafka")["pid"])


def topic_bytes(bootstrap: str) -> dict[str, tuple[int, int]]:
    """(records, key+value bytes) per topic, read back from the broker."""
    from kafka import KafkaConsumer, TopicPartition

    out: dict[str, tuple[int, int]] = {}
    cons = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                         consumer_timeout_ms=2000, max_partition_fetch_bytes=8 << 20)  # fmt: skip
    for t in sorted(cons.topics()):
        tps = [TopicPartition(t, p) for p in sorted(cons.partitions_for_topic(t) or ())]
        cons.assign(tps)
        cons.seek_to_beginning(*tps)
        end = cons.end_offsets(tps)
        n = size = 0
        deadline = time.monotonic() + 60
        while any(cons.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in cons.poll(500).values():
                for r in recs:
                    n += 1
                    size += len(r.value or b"") + len(r.key or b"")
        out[t] = (n, size)
    cons.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0)
    ap.add_argument("--every", type=float, default=5.0, help="sampling interval, s")
    ap.add_argument("--utilization", type=float, default=0.05)
    a = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="broker-memory-") as tmp:
        state, cfg = Path(tmp) / "state", Path(tmp) / "site.yaml"
        doc = site(cfg, state, f"ecovisor-broker-memory-{uuid.uuid4().hex[:6]}", a.utilization)
        print(f"workload: the demo site ({len(doc['apps'])} apps, tick "
              f"{doc['site']['shape']['tick_s']} s), containers at {a.utilization} core each, "
              f"{a.minutes} min")  # fmt: skip
        r = cli("up", "--detach", "--config", str(cfg))
        if r.returncode != 0:
            print(r.stdout, r.stderr, file=sys.stderr)
            cli("down", "--config", str(cfg))
            return 1
        try:
            pid = broker_pid(state)
            t0 = time.monotonic()
            first = rss_mb(pid)
            samples = [(0.0, first)]
            print(f"{'t_s':>6}  {'rss_MB':>8}")
            print(f"{0:>6.0f}  {first:>8.1f}")
            while time.monotonic() - t0 < a.minutes * 60:
                time.sleep(a.every)
                t, m = time.monotonic() - t0, rss_mb(pid)
                samples.append((t, m))
                print(f"{t:>6.0f}  {m:>8.1f}", flush=True)
            t_end, last = samples[-1]
            rate = (last - first) / (t_end / 60) if t_end else 0.0
            print(f"broker RSS: {first:.1f} -> {last:.1f} MB in {t_end / 60:.1f} min "
                  f"({rate:+.1f} MB/min), max {max(m for _, m in samples):.1f} MB")  # fmt: skip
            sizes = topic_bytes(f"127.0.0.1:{doc['stack']['kafka_port']}")
            print(f"{'topic':<45} {'records':>9} {'MB':>8}")
            for name, (n, size) in sorted(sizes.items(), key=lambda kv: -kv[1][1]):
                print(f"{name:<45} {n:>9} {size / 1e6:>8.2f}")
        finally:
            d = cli("down", "--config", str(cfg))
            print(d.stdout.strip().splitlines()[-1] if d.stdout.strip() else d.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
