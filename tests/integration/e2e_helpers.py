"""Small helpers for the cross-component end-to-end tests: processes started with a clean
environment (no ECOVISOR_* from the caller's shell, so a test never talks to a running
demo), the real CLI as a subprocess, topic readers on assigned partitions (tansu has no
working consumer groups for kafka-python), a bounded line reader for streaming CLI output,
and a cgroup sampler that records CPU usage and the CFS quota together."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ecovisor.adapters.cgroups import CgroupV1Backend
from ecovisor.contract import topics
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.telemetry import CarbonTelemetry
from ecovisor.embedded.servers import stop_process

ROOT = Path(__file__).resolve().parents[2]


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def start_module(module: str, cfg: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    """``python -m <module> --config <cfg> ...`` in its own session (killable as a group)."""
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(cfg), *args],
            cwd=ROOT,
            env=clean_env(),
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_proc(p: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL of its whole process group if it does not exit in time."""
    stop_process(p, timeout)


def cli(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """The real ``ecovisor`` CLI (``python -m ecovisor.cli``), bounded in time."""
    return subprocess.run(
        [sys.executable, "-m", "ecovisor.cli", *args],
        cwd=ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


class CarbonFeeder(threading.Thread):
    """Carbon-intensity telemetry at wall-clock times straight onto ecovisor.telemetry
    (what the MQTT bridge forwards from a carbon collector). The ledger's tick clock
    starts with the first telemetry it sees; with the real-time clock it then closes
    every tick on time whether or not more telemetry arrives."""

    def __init__(self, bootstrap: str, site: str, every_s: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        self.site, self.every_s = site, every_s
        self.halt = threading.Event()

    def run(self) -> None:
        seq = 0
        while not self.halt.is_set():
            m = CarbonTelemetry(
                site=self.site, time=utcnow(), source="e2e-co2", seq=seq, intensity_g_per_kwh=300
            )
            self.prod.send(topics.TELEMETRY, m.to_json(), key=self.site.encode())
            self.prod.flush()
            seq += 1
            self.halt.wait(self.every_s)

    def stop(self) -> None:
        self.halt.set()
        self.join(5)
        self.prod.close()


class TopicReader:
    """JSON records of one topic (all partitions) on assigned partitions, from the
    beginning or from the end at construction, optionally only one site's."""

    def __init__(
        self, bootstrap: str, topic: str, site: str | None = None, from_beginning: bool = False
    ) -> None:
        self.c = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=50
        )
        parts = self.c.partitions_for_topic(topic) or set()
        if not parts:
            self.c.close()
            raise RuntimeError(f"topic {topic} does not exist on {bootstrap}")
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        self.c.assign(tps)
        if from_beginning:
            self.c.seek_to_beginning(*tps)
        else:
            self.c.seek_to_end(*tps)
        for tp in tps:
            self.c.position(tp)  # resolve now: nothing published later is skipped
        self.site = site
        self.items: list[dict[str, Any]] = []

    def poll(self, timeout_ms: int = 100) -> list[dict[str, Any]]:
        for batch in self.c.poll(timeout_ms=timeout_ms).values():
            for r in batch:
                try:
                    item = json.loads(r.value)
                except ValueError:
                    continue
                if self.site is None or item.get("site") == self.site:
                    self.items.append(item)
        return self.items

    def wait(
        self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float, what: str = ""
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.poll()):
                return self.items
        tail = str(self.items[-3:])[:600]
        raise AssertionError(f"timed out after {timeout} s waiting for {what}; last: {tail}")

    def close(self) -> None:
        self.c.close()


def lifecycle(items: list[dict[str, Any]], command_id: str) -> list[dict[str, Any]]:
    """The notifications about one command, in topic order."""
    return [n for n in items if n.get("command_id") == command_id]


class LineReader:
    """Lines of a streaming subprocess's stdout, read by a thread so the test can wait
    with a deadline instead of blocking on a pipe."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.q: queue.Queue[tuple[float, str]] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.q.put((time.monotonic(), line.rstrip("\n")))

    def wait_for(self, pred: Callable[[str], bool], timeout: float) -> tuple[float, str] | None:
        """The first line matching ``pred`` and when it was read, or None at the deadline."""
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                t, line = self.q.get(timeout=min(left, 0.5))
            except queue.Empty:
                if self.proc.poll() is not None and self.q.empty():
                    return None
                continue
            if pred(line):
                return t, line
        return None


@dataclass
class CgSample:
    t: float  # time.monotonic()
    usage_s: float  # cpuacct.usage in s
    quota_us: int  # cpu.cfs_quota_us (-1 = unlimited)


def sample_cgroup(cg: CgroupV1Backend, until: float, every: float = 0.05) -> list[CgSample]:
    """CPU usage and CFS quota of a cgroup, sampled until the monotonic time ``until``."""
    quota = cg.dir("cpu") / "cpu.cfs_quota_us"
    out: list[CgSample] = []
    while True:
        out.append(CgSample(time.monotonic(), cg.usage_s(), int(quota.read_text())))
        if out[-1].t >= until:
            return out
        time.sleep(min(every, max(until - time.monotonic(), 0.0)))


def mean_cores(samples: list[CgSample], t0: float, t1: float) -> float:
    """Mean CPU (cores) between the first sample at/after t0 and the last at/before t1."""
    inside = [s for s in samples if t0 <= s.t <= t1]
    if len(inside) < 2:
        raise ValueError("fewer than two samples in the window")
    a, b = inside[0], inside[-1]
    return (b.usage_s - a.usage_s) / (b.t - a.t)


def cgroup_dirs(top: str, root: str = "/sys/fs/cgroup") -> list[Path]:
    """Every directory of a cgroup subtree in the v1 controllers the backends use."""
    return [
        Path(root) / c / top
        for c in ("cpu", "cpuacct", "freezer")
        if (Path(root) / c / top).is_dir()
    ]
