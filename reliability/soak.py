"""Soak: the embedded stack at 1,000 containers for 30 minutes, with the memory of every
process and the ledger's lag over time.

    python reliability/soak.py [--containers 1000] [--apps 10] [--minutes 30] [--every 30]

Starts a site of ``--containers`` containers in ``--apps`` apps on one node (64 cores)
with the real services of ``ecovisor up --detach`` (tansu, mosquitto with the site's
ACLs, bridge, ledger, history when VictoriaMetrics is installed, actuators, the power
collector reading every container's real cgroup v1 counters each tick, a synthetic
carbon signal, the API) on free ports and a temporary state dir. The containers are
empty cgroups this script makes (and removes): the power collector measures them as it
would measure real ones (1,000 samples a second through MQTT and the bridge), at ~0 W.

Every ``--every`` s it prints the RSS (MB) of each supervised process and the ledger's
lag: for the newest tick notification of the first app, the time it was read minus the
tick's end (the configured grace, 0.5 s, is part of it: the ledger waits on purpose).
At the end: RSS first → last and its slope per process, lag p50/p99/max, the records per
topic, then ``ecovisor down``. Needs root and cgroup v1 (as ``make run``). Not a test:
a measurement, whose figures are in docs/reliability.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.contract import topics  # noqa: E402
from ecovisor.embedded.servers import free_port  # noqa: E402
from reliability.broker_memory import cli, rss_mb, topic_bytes  # noqa: E402

CGROUP_V1 = Path("/sys/fs/cgroup")


def site(dst: Path, state: Path, top: str, n: int, apps: int) -> dict[str, Any]:
    per = n // apps
    doc: dict[str, Any] = {
        "schema_version": 1,
        "site": {
            "id": "soak",
            "shape": {"tick_s": 1.0, "solar_nameplate_w": 0.0, "battery_capacity_wh": 0.0},
            "grace_s": 0.5,
            "nodes": [{"id": "n1", "cores": 64}],
            "carbon": {"type": "synthetic", "id": "co2",
                       "options": {"mean": 250, "amplitude": 120, "period_s": 1440}},
        },  # fmt: skip
        "apps": [
            {
                "id": f"app{a}",
                "token": f"soak-token-{a:04d}",
                "shares": {"grid_w": 1000.0},
                "containers": [
                    {"id": f"c{a}-{i}", "node": "n1",
                     "backend": {"type": "cgroup_v1", "cgroup": f"{top}/c{a}-{i}"}}
                    for i in range(per)
                ],  # fmt: skip
            }
            for a in range(apps)
        ],
        "stack": {
            "kafka_port": free_port(), "mqtt_port": free_port(),
            "victoria_metrics_port": free_port(), "api_port": free_port(),
            "ledger_web_port": free_port(), "state_dir": str(state),
        },  # fmt: skip
    }
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return doc


def cgroup_dirs(doc: dict[str, Any]) -> list[Path]:
    return [CGROUP_V1 / ctl / c["backend"]["cgroup"] for a in doc["apps"]
            for c in a["containers"] for ctl in ("cpu", "cpuacct", "freezer")]  # fmt: skip


def processes(state: Path) -> dict[str, int]:
    from ecovisor.embedded.stack import rpc

    return {p["name"]: int(p["pid"]) for p in rpc(state).supervisor.getAllProcessInfo()
            if p["pid"]}  # fmt: skip


class LagWatch(threading.Thread):
    """Reads one app's notifications from the end; records (read at - tick end) of
    each tick notification."""

    def __init__(self, bootstrap: str, app: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                               fetch_max_wait_ms=50)  # fmt: skip
        tp = TopicPartition(topics.notifications(app), 0)
        self.c.assign([tp])
        self.c.seek_to_end(tp)
        self.c.position(tp)
        self.lags: list[float] = []
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            for recs in self.c.poll(200).values():
                now = time.time()
                for r in recs:
                    n = json.loads(r.value)
                    if n.get("type") != "tick" or n.get("tick") is None:
                        continue
                    # tick k covers [k, k+1) * tick_s since the epoch
                    self.lags.append(now - (n["tick"] + 1) * n["data"]["tick_s"])
        self.c.close()


def pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))] if s else float("nan")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--apps", type=int, default=10)
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--every", type=float, default=30.0, help="sampling interval, s")
    a = ap.parse_args()
    print(f"machine: {platform.platform()}, {os.cpu_count()} cores, python "
          f"{platform.python_version()}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        state, cfg = Path(tmp) / "state", Path(tmp) / "site.yaml"
        top = f"ecovisor-soak-{uuid.uuid4().hex[:6]}"
        doc = site(cfg, state, top, a.containers, a.apps)
        dirs = cgroup_dirs(doc)
        for d in dirs:
            d.mkdir(parents=True, exist_ok=True)
        print(f"workload: {a.containers} containers (empty cgroup v1 groups) in {a.apps} apps, "
              f"1 node, tick 1 s, synthetic carbon, {a.minutes} min")  # fmt: skip
        r = cli("up", "--detach", "--config", str(cfg), timeout=300)
        if r.returncode != 0:
            print(r.stdout, r.stderr, file=sys.stderr)
            cli("down", "--config", str(cfg))
            return 1
        watch: LagWatch | None = None
        try:
            time.sleep(10)  # services start (the ledger joins its group)
            watch = LagWatch(f"127.0.0.1:{doc['stack']['kafka_port']}", "app0")
            watch.start()
            procs = processes(state)
            names = sorted(procs)
            rss: dict[str, list[float]] = {n: [] for n in names}
            t0 = time.monotonic()
            print("t_s  lag_p99_s  " + "  ".join(names))
            seen = 0
            while True:
                for n in names:
                    try:
                        rss[n].append(rss_mb(procs[n]))
                    except OSError:
                        rss[n].append(float("nan"))  # the process is gone (restarted?)
                recent = watch.lags[seen:]
                seen = len(watch.lags)
                t = time.monotonic() - t0
                print(f"{t:>4.0f}  {pct(recent, 0.99):>9.2f}  "
                      + "  ".join(f"{rss[n][-1]:.1f}" for n in names), flush=True)
                if t >= a.minutes * 60:
                    break
                time.sleep(a.every)
            minutes = (time.monotonic() - t0) / 60
            print(f"\nRSS (MB) over {minutes:.1f} min: first -> last (slope MB/min), max")
            for n in names:
                xs = rss[n]
                slope = (xs[-1] - xs[0]) / minutes if minutes else 0.0
                print(f"  {n:<22} {xs[0]:>7.1f} -> {xs[-1]:>7.1f} ({slope:+.2f}), "
                      f"max {max(xs):.1f}")  # fmt: skip
            lags = watch.lags
            print(f"ledger lag (tick notification read - tick end, incl. 0.5 s grace): "
                  f"{len(lags)} ticks, p50 {pct(lags, 0.5):.2f} s, p99 {pct(lags, 0.99):.2f} s, "
                  f"max {max(lags, default=float('nan')):.2f} s, mean "
                  f"{statistics.fmean(lags) if lags else float('nan'):.2f} s")  # fmt: skip
            now = processes(state)
            restarted = [n for n in names if now.get(n) != procs[n]]
            print(f"processes restarted during the soak: {restarted or 'none'}")
            sizes = topic_bytes(f"127.0.0.1:{doc['stack']['kafka_port']}")
            print(f"{'topic':<45} {'records':>9} {'MB':>8}")
            for name, (k, size) in sorted(sizes.items(), key=lambda kv: -kv[1][1])[:12]:
                print(f"{name:<45} {k:>9} {size / 1e6:>8.2f}")
        finally:
            if watch is not None:
                watch.halt.set()
            d = cli("down", "--config", str(cfg), timeout=120)
            print(d.stdout.strip().splitlines()[-1] if d.stdout.strip() else d.stderr)
            tops = [CGROUP_V1 / ctl / top for ctl in ("cpu", "cpuacct", "freezer")]
            for p in [*sorted(dirs, reverse=True), *tops]:
                with contextlib.suppress(OSError):
                    p.rmdir()
    return 0


if __name__ == "__main__":
    sys.exit(main())
