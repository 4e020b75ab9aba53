"""The real pipeline a chaos run drives (reliability/chaos.py): fresh brokers (tansu,
mosquitto), topics and cgroups, the product services as restartable process groups, and
a tail of every topic the comparison reads."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ecovisor.adapters.backends import BackendError
from ecovisor.adapters.cgroups import CgroupV1Backend
from ecovisor.adapters.kafka import create_topics
from ecovisor.contract import notifications, telemetry, topics
from ecovisor.contract.config_file import load_config
from ecovisor.embedded.servers import (
    Server,
    free_port,
    mosquitto_path,
    mqtt_command,
    tansu_command,
)
from reliability.chaos_workload import APPS, SITE, T0, Step, at, site_yaml

ROOT = Path(__file__).resolve().parents[1]
WAIT_S = 120.0  # any single wait of the harness (a service that does not recover)

MODULES = {
    "bridge": ("streams.bridge",),
    "ledger": ("streams.ledger", "--clock", "event", "--loglevel", "info"),
    "actuator": ("actuators.containers",),
}
# the line each service logs once it is up (after every restart)
READY = {
    "bridge": "MQTT connected to",
    "ledger": "loaded (restored=",
    "actuator": "; consuming",
}
START_ORDER = ("ledger", "actuator", "bridge")


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def anonymous_mqtt(port: int, state: Path) -> list[str]:
    """mosquitto with our own configuration (anonymous, persistence for the bridge's
    session, in-flight window 100 as the embedded stack), else the stack's command."""
    mos = mosquitto_path()
    if not mos:
        return mqtt_command(port, state)
    state.mkdir(parents=True, exist_ok=True)
    conf = state / "mosquitto.conf"
    user = f"user {os.environ.get('USER') or 'root'}\n" if os.geteuid() == 0 else ""
    conf.write_text(
        f"listener {port} 127.0.0.1\n{user}allow_anonymous true\npersistence true\n"
        f"persistence_location {state}/\nautosave_interval 1\n"
        "max_queued_messages 100000\nmax_inflight_messages 100\n"
    )
    return [mos, "-c", str(conf)]


class Service:
    """One product service as a process group, restartable; readiness from its log."""

    def __init__(self, name: str, cfg: Path, log: Path) -> None:
        self.name, self.cfg, self.log = name, cfg, log
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.ready_at: dict[int, float] = {}  # start number -> when its ready line showed
        self._seen = 0  # ready lines read so far
        self._pos = 0
        self._lock = threading.Lock()
        self.killed = False

    def start(self) -> None:
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", *MODULES[self.name], "--config", str(self.cfg)],
                cwd=ROOT, env=clean_env(), stdout=fh, stderr=subprocess.STDOUT,
                start_new_session=True,
            )  # fmt: skip
        with self._lock:
            self.starts += 1
            self.killed = False

    def ready(self) -> bool:
        """Whether the current start has logged its ready line (also polled every 50 ms
        by the pipeline's monitor, which times it)."""
        with self._lock:
            with self.log.open("rb") as fh:
                fh.seek(self._pos)
                chunk = fh.read()
            cut = chunk.rfind(b"\n") + 1
            self._pos += cut
            self._seen += chunk[:cut].count(READY[self.name].encode())
            ok = self._seen >= self.starts
            if ok and self.starts not in self.ready_at:
                self.ready_at[self.starts] = time.monotonic()
            return ok

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        with self._lock:
            self.killed = True  # until the next start: not a crash
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)

    def crashed(self) -> str | None:
        """Why the current start exited by itself, if it did."""
        with self._lock:
            if self.killed or self.proc is None or self.proc.poll() is None:
                return None
            return f"{self.name} exited by itself (code {self.proc.returncode}); see {self.log}"

    def stop(self) -> None:
        """At the end of a run (its outcome already read): no orderly shutdown needed."""
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


@dataclass
class Record:
    at: float  # monotonic arrival at the tail
    key: bytes | None
    value: bytes


class Tail(threading.Thread):
    """Every topic the comparison needs, read from the beginning (assigned partitions:
    tansu has no working consumer groups for kafka-python), with arrival times."""

    TOPICS = (
        topics.LEDGER,
        topics.TELEMETRY,
        topics.DEADLETTER,
        topics.ACTUATOR_BATTERY,
        topics.ACTUATOR_ACKS,
        topics.ACTUATOR_CONTAINERS,
        *(topics.notifications(a) for a in APPS),
    )

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        from kafka import KafkaConsumer, TopicPartition

        self.c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                               fetch_max_wait_ms=50, max_partition_fetch_bytes=8 << 20)  # fmt: skip
        tps = [TopicPartition(t, p) for t in self.TOPICS for p in self._parts(t)]
        self.c.assign(tps)
        self.c.seek_to_beginning(*tps)
        self.lock = threading.Lock()
        self.records: dict[str, list[Record]] = {t: [] for t in self.TOPICS}
        self.forwarded: dict[tuple[str, int], int] = {}  # (source, seq) -> copies
        self.ledger_k: dict[str, int] = {}  # app -> highest k seen
        self.outcomes: dict[str, list[dict[str, Any]]] = {}  # command_id -> lifecycle
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def _parts(self, topic: str) -> list[int]:
        parts = self.c.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(f"topic {topic} does not exist")
        return sorted(parts)

    def run(self) -> None:
        try:
            while not self.halt.is_set():
                for tp, recs in self.c.poll(timeout_ms=100).items():
                    now = time.monotonic()
                    for r in recs:
                        self._take(tp.topic, Record(now, r.key, r.value))
        except BaseException as e:  # reported by the harness
            self.error = e
        finally:
            self.c.close()

    def _take(self, topic: str, r: Record) -> None:
        with self.lock:
            self.records[topic].append(r)
            if topic == topics.TELEMETRY:
                d = json.loads(r.value)
                if "seq" in d:
                    ident = (d["source"], d["seq"])
                    self.forwarded[ident] = self.forwarded.get(ident, 0) + 1
            elif topic == topics.LEDGER:
                d = json.loads(r.value)
                self.ledger_k[d["app"]] = max(self.ledger_k.get(d["app"], -1), d["k"])
            elif topic.startswith(topics.NOTIFICATIONS_PREFIX):
                d = json.loads(r.value)
                if d.get("command_id") and d["type"] in notifications.COMMAND_LIFECYCLE:
                    self.outcomes.setdefault(d["command_id"], []).append(d)

    def closed(self) -> int:
        """The highest trace tick (0-based) closed for every app (-1: none)."""
        with self.lock:
            if len(self.ledger_k) < len(APPS):
                return -1
            return min(self.ledger_k.values()) - T0

    def snapshot(self, topic: str) -> list[Record]:
        with self.lock:
            return list(self.records[topic])

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def first_tick_after(tail: Tail, t: float, beyond: int) -> float | None:
    """Arrival of the first ledger entry after ``t`` of a trace tick beyond ``beyond``."""
    for r in tail.snapshot(topics.LEDGER):
        if r.at >= t and json.loads(r.value)["k"] - T0 > beyond:
            return r.at
    return None


def wait(
    what: str,
    pred: Callable[[], bool],
    timeout: float = WAIT_S,
    every: float = 0.02,
    failed: Callable[[], str | None] = lambda: None,
) -> None:
    """Until ``pred()``; a TimeoutError after ``timeout``, a RuntimeError as soon as
    ``failed()`` names a failure (a service that exited by itself)."""
    deadline = time.monotonic() + timeout
    while not pred():
        why = failed()
        if why is not None:
            raise RuntimeError(f"{why} (while waiting for {what})")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


class Pipeline:
    """Fresh brokers, topics, cgroups and services for one run."""

    def __init__(self, work: Path, name: str, top: str) -> None:
        self.work = work / name
        self.work.mkdir(parents=True)
        self.name, self.top = name, top
        self.servers: list[Server] = []
        self.services: dict[str, Service] = {}
        self.tail: Tail | None = None
        self.pub: Any = None
        self.prod: Any = None
        self.infos: list[Any] = []
        self.cgroups = False
        self.published = 0  # trace tick the publisher reached
        self.halt = threading.Event()
        self.crash: str | None = None  # the first service that exited by itself

    def up(self) -> None:
        kport, mport = free_port(), free_port()
        self.servers.append(Server(tansu_command(kport), kport, self.work / "tansu.log").start())
        cmd = anonymous_mqtt(mport, self.work / "mqtt")
        self.servers.append(Server(cmd, mport, self.work / "mqtt.log").start())
        self.bootstrap = f"127.0.0.1:{kport}"
        self.cfg_path = self.work / "site.yaml"
        self.cfg_path.write_text(
            site_yaml(self.bootstrap, mport, free_port(), self.work / "state", self.top)
        )
        cfg = load_config(self.cfg_path)
        create_topics(self.bootstrap, topics.all_topics([a.id for a in cfg.apps]))
        from streams.ledger_app import prepare_topics

        prepare_topics(cfg, self.bootstrap)
        self.cgroups = make_cgroups(self.top)
        self.tail = Tail(self.bootstrap)
        self.tail.start()
        for s in START_ORDER:
            self.services[s] = Service(s, self.cfg_path, self.work / f"{s}.log")
            self.services[s].start()
        threading.Thread(target=self._monitor, daemon=True).start()
        for s in START_ORDER:
            self.wait(f"{s} to start", self.services[s].ready)
        from kafka import KafkaProducer

        self.prod = KafkaProducer(bootstrap_servers=self.bootstrap, acks="all", linger_ms=0)
        self._connect_mqtt(mport)

    def _monitor(self) -> None:
        """Time each service's ready line (every 50 ms) until the run is down; a service
        that exits by itself fails the run (``crash``, raised by ``wait``)."""
        while not self.halt.is_set():
            for svc in list(self.services.values()):
                with contextlib.suppress(OSError):
                    svc.ready()
                why = svc.crashed()
                if why is not None and self.crash is None:
                    self.crash = why
            self.halt.wait(0.05)

    def wait(self, what: str, pred: Callable[[], bool], timeout: float = WAIT_S,
             every: float = 0.02) -> None:  # fmt: skip
        wait(what, pred, timeout, every, failed=lambda: self.crash)

    def _connect_mqtt(self, port: int) -> None:
        import paho.mqtt.client as mqtt

        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-{uuid.uuid4().hex[:8]}")
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.pub = c
        # the bridge's first subscription is asynchronous and MQTT drops what is published
        # before it: probe with telemetry of a container the site does not have until
        # the bridge dead-letters one (it never reaches the ledger)
        probe = f"probe-{uuid.uuid4().hex[:6]}"
        n = 0

        def probed() -> bool:
            nonlocal n
            n += 1
            m = telemetry.ContainerTelemetry(site=SITE, time=at(0), source=f"ctr-{probe}", seq=n,
                                             app="a", container=probe, node="n1", cpu_s=0.0,
                                             energy_j=0.0)  # fmt: skip
            c.publish(topics.mqtt_telemetry(SITE, "container", m.source), m.to_json(), qos=1)
            assert self.tail is not None
            return any(probe.encode() in r.value
                       for r in self.tail.snapshot(topics.DEADLETTER))  # fmt: skip

        self.wait("the bridge's subscription", probed, every=0.3)

    def publish(self, s: Step) -> None:
        self.infos.append(self.pub.publish(s.topic, s.payload, qos=1))
        if len(self.infos) > 500:
            self.flush_mqtt()

    def flush_mqtt(self) -> None:
        for info in self.infos:
            info.wait_for_publish(WAIT_S)
        self.infos = []

    def forwarded(self, idents: set[tuple[str, int]]) -> Callable[[], bool]:
        assert self.tail is not None
        tail = self.tail

        def done() -> bool:
            with tail.lock:
                return idents.issubset(tail.forwarded.keys())

        return done

    def to_kafka(self, topic: str, key: bytes, value: bytes) -> None:
        self.prod.send(topic, value, key=key).get(30)

    def down(self) -> None:
        self.halt.set()
        for s in self.services.values():
            s.stop()
        if self.pub is not None:
            self.pub.loop_stop()
            self.pub.disconnect()
        if self.prod is not None:
            self.prod.close(5)
        if self.tail is not None:
            self.tail.stop()
        for srv in reversed(self.servers):
            srv.stop()


def make_cgroups(top: str) -> bool:
    """Each container's cgroup v1 (the actuator writes its quota); False when this
    machine has no writable cgroup v1 cpu hierarchy (the actuator then acknowledges
    every cap with ok=False, in both runs alike)."""
    if not os.access("/sys/fs/cgroup/cpu", os.W_OK):
        return False
    try:
        for cs in APPS.values():
            for c in cs:
                CgroupV1Backend(f"{top}/{c}").create()
    except BackendError:
        return False
    return True


def read_quotas(top: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for cs in APPS.values():
        for c in cs:
            b = CgroupV1Backend(f"{top}/{c}")
            out[c] = b.get_cpu_limit() if b.exists() else None
    return out


def remove_cgroups(top: str) -> None:
    for cs in APPS.values():
        for c in cs:
            with contextlib.suppress(BackendError, OSError):
                CgroupV1Backend(f"{top}/{c}").remove()
    with contextlib.suppress(BackendError, OSError):
        CgroupV1Backend(top).remove()
