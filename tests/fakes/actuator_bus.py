"""Helpers for tests and benchmarks that drive the real actuator process over Kafka and
measure real cgroups: start/stop ``python -m actuators.containers``, publish actions,
wait for acknowledgements, sample a cgroup's CPU. Reused by the end-to-end tests (the
ledger routing ``ecovisor.commands`` to the actuator topic) and bench/bench_actuation.py.
Nothing here runs in production."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ecovisor.adapters.cgroups import CgroupV1Backend, ProcessBackend
from ecovisor.contract import topics
from ecovisor.contract.actuation import ActuatorAck, ContainerAction, ContainerEvent, sign
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.envelope import utcnow
from ecovisor.core.power_cap import max_power_at_quota

BUSY_LOOP = [sys.executable, "-c", "while True: pass"]
# The burners' uid when the tests run as root (cgexec drops to it; no app of the test
# sites has it: their uids are EcovisorConfig.workload_uid's, >= 200000)
BURNER_UID = 199_999
T = TypeVar("T")


def modelled_power_w(cfg: EcovisorConfig, container: str, busy_cores: float) -> float:
    """Modelled power of a container using ``busy_cores`` alone on its node: its active
    power under the node model plus its idle share (0 under attribution ``none``), i.e.
    the cap that the product turns into a quota of ``busy_cores``. States what a cap
    means in CPU in the tests, the benchmark and the docs' examples."""
    model = cfg.node(cfg.placements()[container].node).model()
    idle = cfg.cap_quota(container, None).idle_share_w
    return max_power_at_quota(model, busy_cores, idle_share_w=idle)


def start_service(module: str, config: Path, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    """Start ``python -m <module> --config <config>`` in its own session."""
    fh = log.open("ab")
    try:
        return subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(config), *extra],
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        fh.close()


def stop_service(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout=10.0) -> int:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class Bus:
    """A producer and partition-assigned tail consumers on one broker."""

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        self._tails: dict[str, KafkaConsumer] = {}

    def tail(self, topic: str) -> KafkaConsumer:
        """A consumer positioned at the current end of ``topic`` (created once)."""
        c = self._tails.get(topic)
        if c is None:
            c = KafkaConsumer(
                bootstrap_servers=self.bootstrap, enable_auto_commit=False, fetch_max_wait_ms=20
            )
            parts = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic))]
            c.assign(parts)
            c.seek_to_end(*parts)
            for tp in parts:
                c.position(tp)  # resolve now, so later records are not skipped
            self._tails[topic] = c
        return c

    def send(self, topic: str, key: str, value: bytes) -> None:
        self.producer.send(topic, key=key.encode(), value=value)
        self.producer.flush()

    def wait_for(
        self, topic: str, match: Callable[[bytes], bool], timeout: float = 10.0
    ) -> tuple[bytes, float]:
        """The first record on ``topic`` (after the tail was opened) that matches, and
        the wall-clock time it was seen."""
        c = self.tail(topic)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for records in c.poll(timeout_ms=100).values():
                for r in records:
                    if match(r.value):
                        return r.value, time.time()
        raise TimeoutError(f"no matching record on {topic} within {timeout} s")

    def wait_ack(self, command_id: str, timeout: float = 10.0) -> ActuatorAck:
        def match(v: bytes) -> bool:
            return f'"command_id":"{command_id}"'.encode() in v

        raw, _ = self.wait_for(topics.ACTUATOR_ACKS, match, timeout)
        return ActuatorAck.model_validate_json(raw)

    def send_action(
        self,
        site: str,
        app: str,
        container: str,
        action: str,
        timeout: float = 10.0,
        key: str | None = None,
        **kw: Any,
    ) -> ActuatorAck:
        """Publish a ContainerAction to the actuator topic (signed with ``key``, the
        site's internal key, if given) and wait for its ack. Also the readiness probe for
        a freshly started service: a ``resume_container`` of any configured container is
        harmless and is acknowledged only after the restore from Kafka."""
        a = ContainerAction(
            site=site,
            time=utcnow(),
            command_id=f"{action}-{uuid.uuid4().hex[:12]}",
            app=app,
            container=container,
            action=action,  # type: ignore[arg-type]
            **kw,
        )
        a = sign(a, key) if key else a
        self.send(topics.ACTUATOR_CONTAINERS, site, a.to_json())
        return self.wait_ack(a.command_id, timeout)

    def collect(self, topic: str, seconds: float, parse: Callable[[bytes], T]) -> list[T]:
        """Every record on ``topic`` (after the tail was opened) within ``seconds``."""
        c = self.tail(topic)
        out: list[T] = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for records in c.poll(timeout_ms=100).values():
                out += [parse(r.value) for r in records]
        return out

    def collect_acks(self, seconds: float) -> list[ActuatorAck]:
        return self.collect(topics.ACTUATOR_ACKS, seconds, ActuatorAck.model_validate_json)

    def events(self, seconds: float) -> list[ContainerEvent]:
        return self.collect(topics.CONTAINERS, seconds, ContainerEvent.model_validate_json)

    def close(self) -> None:
        for c in self._tails.values():
            c.close()
        self.producer.close()


@dataclass
class CpuSample:
    t: float  # time.monotonic()
    usage_s: float


def sample_usage(cg: CgroupV1Backend, seconds: float, every: float = 0.1) -> list[CpuSample]:
    """cpuacct.usage of a cgroup sampled every ``every`` s for ``seconds``."""
    out = [CpuSample(time.monotonic(), cg.usage_s())]
    end = out[0].t + seconds
    while time.monotonic() < end:
        time.sleep(every)
        out.append(CpuSample(time.monotonic(), cg.usage_s()))
    return out


def mean_cores(samples: list[CpuSample], t0: float, t1: float) -> float:
    """Mean CPU (cores) over [t0, t1] from the samples nearest inside that window."""
    inside = [s for s in samples if t0 <= s.t <= t1]
    if len(inside) < 2:
        raise ValueError("fewer than two samples in the window")
    a, b = inside[0], inside[-1]
    return (b.usage_s - a.usage_s) / (b.t - a.t)


@contextlib.contextmanager
def burner_cgroup(path: str, n: int = 1) -> Iterator[ProcessBackend]:
    """A real cgroup v1 container with ``n`` CPU-burning processes; always removed."""
    b = ProcessBackend(path)
    try:
        for _ in range(n):
            b.spawn(BUSY_LOOP, uid=BURNER_UID)
        deadline = time.monotonic() + 10
        while len(b.procs()) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        yield b
    finally:
        b.stop()
        remove_tree(path.split("/")[0])


def remove_tree(top: str, root: str = "/sys/fs/cgroup") -> None:
    """Remove an (empty) cgroup subtree in every v1 controller, deepest first."""
    for ctrl in ("cpu", "cpuacct", "freezer"):
        base = Path(root) / ctrl / top
        if not base.is_dir():
            continue
        dirs = sorted((p for p in base.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts))
        for d in [*dirs, base]:
            with contextlib.suppress(OSError):
                d.rmdir()
