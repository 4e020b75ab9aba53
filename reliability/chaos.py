"""Chaos with the event clock: SIGKILL each service at random points; the outcome must be
identical to the fault-free run.

    python reliability/chaos.py [--kills 20] [--seed 1] [--ticks 300]
                                [--services bridge,ledger,actuator] [--rate 6] [--keep]

A deterministic workload goes through the REAL pipeline with the event-time clock
(``streams.ledger --clock event``): telemetry of two apps' containers, solar and carbon
published on MQTT with QoS 1 (so the bridge is in the path), with duplicates, late
samples and gaps in the data bridged by replay clock messages
(``site.limits.replay_clock_source``, published on Kafka as docs/ledger.md says); and
app commands on ``ecovisor.commands`` (power caps through the container actuator onto
real cgroup v1 quotas, battery charge rates applied by the ledger, a rejected one).

Two runs, each on fresh brokers (tansu, mosquitto) and a fresh state dir:

1. fault-free;
2. the same workload while each chosen service is SIGKILLed (``os.killpg``, its whole
   process group) at ``--kills`` random points, each time restarted at once, as
   supervisord would. The schedule comes from ``--seed``: per service, the trace positions
   (ticks) to kill at and a delay after the service was last ready; a service is killed
   again only once its previous restart is ready (its log says so), so some kills land
   while it replays its backlog, none while it is still importing Python.

The telemetry publisher is NOT killed: it stands for the edge devices (MQTT QoS 1 to a
broker that keeps the bridge's persistent session); the brokers are not killed either.
What an edge restart does to its sequence numbers is a different question.

Compared, as downstream readers see it (consumers de-duplicate by (site, app, tick):
docs/ledger.md "Guarantees"): every app's ledger entry per tick (byte for byte; every
re-emitted copy must equal the first), the cumulative totals per app, the tick
notifications and events, the battery setpoints, every command's lifecycle notifications
(the time of an actuator's acknowledgement is wall time: left out), every published
telemetry message forwarded at least once, and the final CPU quota of each container's
cgroup. Figures: kills per service, ticks, wall time, recovery after each restart
(ready, and the first new tick closed), mismatches, the machine. Exit 1 on any
mismatch or a service that does not recover.

Not a test by itself: the short version is tests/integration/test_chaos.py; the figures
of the full run are in docs/reliability.md ("Chaos: SIGKILL with the event clock").
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from ecovisor.adapters.backends import BackendError  # noqa: E402
from ecovisor.adapters.cgroups import CgroupV1Backend  # noqa: E402
from ecovisor.adapters.kafka import create_topics  # noqa: E402
from ecovisor.contract import schemas, topics  # noqa: E402
from ecovisor.contract.config import load_config  # noqa: E402
from ecovisor.embedded.servers import (  # noqa: E402
    Server,
    free_port,
    mosquitto_path,
    mqtt_command,
    tansu_command,
)

SITE = "chaos"
T0 = 1_700_000_000  # a tick boundary (Δt = 1 s); tick k0 = T0
APPS = {"a": ["a-1", "a-2"], "b": ["b-1", "b-2"]}
TOKENS = {"a": "chaos-token-app-a-0001", "b": "chaos-token-app-b-0002"}
CLOCK_SOURCE = "chaos-replay"
INTERNAL_KEY = "chaos-internal-key-not-secret-0001"
GAP_TICKS = 8  # silent ticks (> clock_skew_s): bridged by a clock message
CLOCK_SKEW_S = 5.0
BACKLOG_TICKS = 4  # the publisher runs at most this far ahead of the ledger's last tick
KILL_SLACK_TICKS = 8  # ... and this far past a kill position not yet reached
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


def at(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, UTC)


# --- the workload ------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One thing the edge / the apps do, in trace order."""

    kind: str  # "mqtt" | "clock" | "command"
    tick: int  # trace tick (0-based) the step belongs to
    topic: str = ""
    payload: bytes = b""
    ident: tuple[str, int] | None = None  # (source, seq) of telemetry
    command: schemas.Command | None = None


@dataclass
class Workload:
    ticks: int
    steps: list[Step]
    commands: list[schemas.Command]
    gaps: list[tuple[int, int]]  # [first silent tick, first tick with data again)
    telemetry: int  # distinct (source, seq) published
    duplicates: int
    late: int


def site_yaml(bootstrap: str, mqtt_port: int, web_port: int, state: Path, top: str) -> str:
    apps = ""
    for app, conts in APPS.items():
        apps += (
            f"  - id: {app}\n    token: {TOKENS[app]}\n"
            "    shares: {solar_fraction: 0.5, battery_capacity_wh: 8.0, grid_w: 20.0}\n"
            "    containers:\n"
        )
        for c in conts:
            backend = f"{{type: cgroup_v1, cgroup: {top}/{c}}}"
            apps += f"      - {{id: {c}, node: n1, backend: {backend}}}\n"
    return f"""schema_version: 1
site:
  id: {SITE}
  shape: {{tick_s: 1.0, solar_nameplate_w: 20.0, battery_capacity_wh: 16.0,
           idle_attribution: none}}
  grace_s: 0.5
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
  limits: {{replay_clock_source: {CLOCK_SOURCE}, clock_skew_s: {CLOCK_SKEW_S}}}
  internal_key: {INTERNAL_KEY}
apps:
{apps}stack:
  kafka_bootstrap: "{bootstrap}"
  mqtt_port: {mqtt_port}
  ledger_web_port: {web_port}
  state_dir: "{state}"
"""


def gaps_of(ticks: int) -> list[tuple[int, int]]:
    starts = [int(ticks * f) for f in (0.35, 0.7)] if ticks >= 100 else []
    if 30 <= ticks < 100:
        starts = [int(ticks * 0.5)]
    return [(g, g + GAP_TICKS) for g in starts]


def make_commands(ticks: int) -> list[tuple[int, schemas.Command]]:
    """(trace tick, command): power caps through the actuator, battery charge rates
    applied by the ledger, one refused (app b capping app a's container)."""

    def cap(app: str, n: int, container: str, watts: float | None) -> schemas.Command:
        return schemas.SetContainerPowercap(site=SITE, time=at(0), command_id=f"chaos-{n}",
                                            app=app, token=TOKENS[app], container=container,
                                            watts=watts)  # fmt: skip

    def charge(app: str, n: int, watts: float) -> schemas.Command:
        return schemas.SetBatteryChargeRate(site=SITE, time=at(0), command_id=f"chaos-{n}",
                                            app=app, token=TOKENS[app], watts=watts)  # fmt: skip

    plan = [
        (0.15, cap("a", 1, "a-1", 1.0)),
        (0.3, charge("b", 2, 1.5)),
        (0.45, cap("b", 3, "a-2", 1.0)),  # not b's container: command_rejected
        (0.6, cap("a", 4, "a-2", 0.8)),
        (0.75, cap("a", 5, "a-1", None)),  # removes the cap: the actuator restores -1
        (0.9, charge("b", 6, 0.0)),
    ]
    if ticks < 60:
        plan = [plan[0], plan[1], plan[3], plan[4]]
    gaps = gaps_of(ticks)
    out: list[tuple[int, schemas.Command]] = []
    for f, cmd in plan:
        c = max(2, int(ticks * f))
        while c in {t for t, _ in out} or any(g0 - 1 <= c < g1 + 1 for g0, g1 in gaps):
            c += 1
        if c < ticks - 1:
            out.append((c, cmd))
    return out


def workload(ticks: int, seed: int) -> Workload:
    """The trace: per tick two samples (at +0 and +0.5 s) of every container and the
    solar meter (cumulative counters), one carbon intensity; ~3 % duplicates, a late
    sample every 17 ticks, silent gaps bridged by a clock message; commands in lockstep
    (published once the tick before closed, in the tick of their event time)."""
    rng = random.Random(seed)
    gaps = gaps_of(ticks)
    cmds = dict(make_commands(ticks))
    steps: list[Step] = []
    seqs: dict[str, int] = {}
    counters: dict[str, float] = {}
    held: list[Step] = []
    dups = late = 0
    conts = [(app, c) for app, cs in APPS.items() for c in cs]

    def telemetry(i: int, m: Any) -> Step:
        return Step("mqtt", i, topics.mqtt_telemetry(SITE, m.kind, m.source), m.to_json(),
                    (m.source, m.seq))  # fmt: skip

    def seq(source: str) -> int:
        seqs[source] = seqs.get(source, -1) + 1
        return seqs[source]

    for i in range(ticks):
        if any(g0 <= i < g1 for g0, g1 in gaps):
            continue
        if any(i == g1 for _, g1 in gaps):  # the replay bridges the gap with its clock
            # (its step belongs to the last tick with data: the publisher's backlog
            # bound must not wait for ticks only this message can close)
            cm = schemas.ClockMessage(site=SITE, time=at(i - 0.5), source=CLOCK_SOURCE)
            steps.append(Step("clock", i - GAP_TICKS - 1, payload=cm.model_dump_json().encode()))
        for half in (0.0, 0.5):
            t = i + half
            batch: list[Step] = []
            counters["solar"] = counters.get("solar", 0.0) + rng.uniform(0.0, 2.4)
            batch.append(telemetry(i, schemas.SolarTelemetry(
                site=SITE, time=at(t), source="solar", seq=seq("solar"), power_w=8.0,
                energy_j=round(counters["solar"], 3))))  # fmt: skip
            if half == 0.0:
                batch.append(telemetry(i, schemas.CarbonTelemetry(
                    site=SITE, time=at(t), source="carbon", seq=seq("carbon"),
                    intensity_g_per_kwh=round(rng.uniform(100.0, 450.0), 1))))  # fmt: skip
            for app, c in conts:
                src = f"ctr-{c}"
                counters[src] = counters.get(src, 0.0) + rng.uniform(0.05, 0.75)
                batch.append(telemetry(i, schemas.ContainerTelemetry(
                    site=SITE, time=at(t), source=src, seq=seq(src), app=app, container=c,
                    node="n1", cpu_s=0.0, energy_j=round(counters[src], 3))))  # fmt: skip
            for s in batch:
                if half == 0.5 and i % 17 == 5 and s.ident and s.ident[0] == "ctr-b-1":
                    held.append(s)  # published after the next tick's second half: late
                    continue
                steps.append(s)
                if rng.random() < 0.03:
                    steps.append(s)  # an edge re-send: same source and seq
                    dups += 1
            if half == 0.5 and held and held[0].tick < i:
                for h in held:
                    steps.append(Step("mqtt", i, h.topic, h.payload, h.ident))
                    late += 1
                held = []
        if i in cmds:
            steps.append(Step("command", i, command=cmds[i]))
    for h in held:
        steps.append(Step("mqtt", ticks - 1, h.topic, h.payload, h.ident))
        late += 1
    end = schemas.ClockMessage(site=SITE, time=at(ticks + 0.5), source=CLOCK_SOURCE)
    steps.append(Step("clock", ticks - 1, payload=end.model_dump_json().encode()))
    n = len({s.ident for s in steps if s.ident})
    return Workload(ticks, steps, [c for _, c in sorted(cmds.items())], gaps, n, dups, late)


# --- the pipeline ----------------------------------------------------------------------


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
                if d.get("command_id") and d["type"] in schemas.COMMAND_LIFECYCLE:
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


@dataclass
class Kill:
    service: str
    position: int  # trace tick at or after which it is due
    delay_s: float  # after the service's last restart is ready
    done: threading.Event = field(default_factory=threading.Event)
    at: float = 0.0
    published_tick: int = -1  # where the publisher was
    closed_tick: int = -1  # the ledger's last closed tick (trace index)
    start_no: int = 0  # the service's start that followed the kill
    ready_s: float | None = None  # restart -> ready line
    first_tick_s: float | None = None  # restart -> first tick beyond closed_tick
    during_recovery: bool = False  # before the previous restart closed a new tick


def schedule(services: list[str], kills: int, ticks: int, seed: int) -> list[Kill]:
    """Per service (its own random stream of the seed): ``kills`` trace positions in the
    middle 90 % of the trace, each with a delay of 0-1.5 s after the service is ready."""
    out = []
    lo, hi = max(1, int(ticks * 0.05)), max(2, int(ticks * 0.95))
    for s in services:
        rng = random.Random(f"{seed}:{s}")
        pos = sorted(rng.randrange(lo, hi) for _ in range(kills))
        out += [Kill(s, p, round(rng.uniform(0.0, 1.5), 3)) for p in pos]
    return out


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
            m = schemas.ContainerTelemetry(site=SITE, time=at(0), source=f"ctr-{probe}", seq=n,
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


# --- one run ---------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one run produced, as a downstream reader sees it."""

    entries: dict[tuple[str, int], set[bytes]]
    notes: dict[tuple[str, int], set[bytes]]  # tick notifications and events
    setpoints: dict[int, set[bytes]]
    lifecycle: dict[str, set[str]]  # command_id -> normalised lifecycle notifications
    final: dict[str, str]  # command_id -> its outcome
    totals: dict[str, dict[str, int]]
    quotas: dict[str, float | None]
    forwarded: dict[tuple[str, int], int]
    copies: dict[str, int]  # records per topic, duplicates included
    dead_letters: int
    wall_s: float
    kills: list[Kill]
    cgroups: bool


def run_once(
    wl: Workload, work: Path, name: str, top: str, kills: list[Kill], rate: float | None,
    log: Callable[[str], None],
) -> Outcome:  # fmt: skip
    t_start = time.monotonic()
    p = Pipeline(work, name, top)
    errors: list[BaseException] = []
    try:
        p.up()
        assert p.tail is not None
        tail = p.tail
        threads = [
            threading.Thread(
                target=_chaos,
                args=(p, [k for k in kills if k.service == s], errors, log),
                daemon=True,
            )  # fmt: skip
            for s in sorted({k.service for k in kills})
        ]
        for th in threads:
            th.start()
        sent: set[tuple[str, int]] = set()
        pending = sorted(kills, key=lambda k: k.position)
        t_pub = time.monotonic()
        for s in wl.steps:
            if errors:
                raise errors[0]
            if s is wl.steps[-1]:  # every kill happens before the last ticks can close
                p.published = wl.ticks
                for k in pending:
                    p.wait(f"kill of {k.service} at {k.position}", k.done.is_set,
                         timeout=4 * WAIT_S)  # fmt: skip
            if s.tick > p.published:
                p.published = s.tick
                # the edge's pace; at most BACKLOG_TICKS ahead of the ledger; and not past
                # a kill position that is not yet done
                if rate:
                    now = time.monotonic()
                    t_pub = max(t_pub + 1.0 / rate, now)
                    time.sleep(t_pub - now)
                p.wait(f"the ledger to close trace tick {s.tick - BACKLOG_TICKS}",
                     lambda s=s: tail.closed() >= s.tick - BACKLOG_TICKS)  # fmt: skip
                for k in pending:
                    if k.position <= s.tick - KILL_SLACK_TICKS:
                        p.wait(f"kill of {k.service} at {k.position}", k.done.is_set,
                             timeout=4 * WAIT_S)  # fmt: skip
            if s.kind == "mqtt":
                p.publish(s)
                assert s.ident is not None
                sent.add(s.ident)
            elif s.kind == "clock":
                # deterministic only once everything before it is in Kafka
                p.flush_mqtt()
                p.wait("the bridge to forward the data before a clock message",
                     p.forwarded(set(sent)))  # fmt: skip
                p.to_kafka(topics.TELEMETRY, SITE.encode(), s.payload)
            else:
                assert s.command is not None
                # lockstep: the tick before closed, so the ledger is in the command's tick
                p.flush_mqtt()
                p.wait(f"the ledger to close trace tick {s.tick - 1}",
                     lambda s=s: tail.closed() >= s.tick - 1)  # fmt: skip
                cmd = s.command.model_copy(update={"time": at(s.tick + 0.75)})
                p.to_kafka(topics.COMMANDS, cmd.app.encode(), cmd.to_json())
                cid = cmd.command_id
                p.wait(f"the ledger to accept or reject {cid}", lambda cid=cid: any(
                    n["type"] in ("command_accepted", "command_rejected")
                    for n in tail.outcomes.get(cid, [])))  # fmt: skip
        p.published = wl.ticks + KILL_SLACK_TICKS + 1
        for th in threads:
            th.join(4 * WAIT_S)
        if errors:
            raise errors[0]
        p.wait("every tick closed", lambda: tail.closed() >= wl.ticks - 1)

        def outcomes_final() -> bool:
            with tail.lock:
                got = tail.outcomes
                return all(
                    any(n["type"] in schemas.COMMAND_OUTCOMES for n in got.get(c.command_id, []))
                    for c in wl.commands
                )

        p.wait("every command's outcome", outcomes_final)
        for name_, svc in p.services.items():
            if not svc.alive():
                raise RuntimeError(f"{name_} exited (code {svc.proc and svc.proc.returncode})")
        quiet(tail)
        if tail.error is not None:
            raise tail.error
        out = outcome(p, wl, kills, time.monotonic() - t_start)
        dump(out, p.work / "outcome.json")
        return out
    finally:
        p.down()
        remove_cgroups(top)


def quiet(tail: Tail, for_s: float = 1.0) -> None:
    """Until no new record arrived for ``for_s`` (re-emitted ticks included)."""

    def count() -> int:
        with tail.lock:
            return sum(len(v) for v in tail.records.values())

    last, since = count(), time.monotonic()
    while time.monotonic() - since < for_s:
        time.sleep(0.1)
        n = count()
        if n != last:
            last, since = n, time.monotonic()


def _chaos(p: Pipeline, kills: list[Kill], errors: list[BaseException],
           log: Callable[[str], None]) -> None:  # fmt: skip
    """Kill one service at its scheduled points, restarting it at once each time (as
    supervisord would): the next kill only once the restart is ready, after the kill's
    delay."""
    assert p.tail is not None
    tail = p.tail
    try:
        prev: Kill | None = None
        for n, k in enumerate(kills, 1):
            svc = p.services[k.service]
            p.wait(f"trace tick {k.position}", lambda k=k: p.published >= k.position,
                 timeout=6 * WAIT_S)  # fmt: skip
            p.wait(f"{svc.name} to recover from its restart", svc.ready)
            time.sleep(k.delay_s)
            if not svc.alive():
                code = svc.proc.returncode if svc.proc else None
                raise RuntimeError(f"{svc.name} exited by itself (code {code})")
            k.published_tick = p.published
            k.closed_tick = tail.closed()
            if prev is not None:
                k.during_recovery = _first_tick_after(tail, prev.at, prev.closed_tick) is None
            svc.kill()
            k.at = time.monotonic()
            svc.start()
            k.start_no = svc.starts
            k.done.set()
            early = ", before a new tick since the last restart" if k.during_recovery else ""
            log(f"  killed {svc.name} #{n} at trace tick {k.published_tick} (ledger closed "
                f"{k.closed_tick}){early}")  # fmt: skip
            prev = k
        if prev is not None:
            p.wait(
                f"{prev.service} to recover from its last restart", p.services[prev.service].ready
            )
    except BaseException as e:
        errors.append(e)
        for k in kills:
            k.done.set()


def _first_tick_after(tail: Tail, t: float, beyond: int) -> float | None:
    """Arrival of the first ledger entry after ``t`` of a trace tick beyond ``beyond``."""
    for r in tail.snapshot(topics.LEDGER):
        if r.at >= t and json.loads(r.value)["k"] - T0 > beyond:
            return r.at
    return None


def outcome(p: Pipeline, wl: Workload, kills: list[Kill], wall_s: float) -> Outcome:
    assert p.tail is not None
    tail = p.tail
    entries: dict[tuple[str, int], set[bytes]] = {}
    for r in tail.snapshot(topics.LEDGER):
        d = json.loads(r.value)
        entries.setdefault((d["app"], d["k"]), set()).add(r.value)
    notes: dict[tuple[str, int], set[bytes]] = {}
    lifecycle: dict[str, set[str]] = {}
    final: dict[str, str] = {}
    for a in APPS:
        for r in tail.snapshot(topics.notifications(a)):
            d = json.loads(r.value)
            if d["type"] in schemas.COMMAND_LIFECYCLE:
                if (d.get("data") or {}).get("actuator") not in (None, "ledger"):
                    d.pop("time")  # the actuator's acknowledgement: wall time
                # (the runs' cgroup trees differ when they run side by side)
                text = json.dumps(d, sort_keys=True).replace(p.top, "TOP")
                lifecycle.setdefault(d["command_id"], set()).add(text)
                if d["type"] in schemas.COMMAND_OUTCOMES:
                    final.setdefault(d["command_id"], d["type"])
            else:
                notes.setdefault((a, d["tick"]), set()).add(r.value)
    setpoints: dict[int, set[bytes]] = {}
    for r in tail.snapshot(topics.ACTUATOR_BATTERY):
        d = json.loads(r.value)
        setpoints.setdefault(int(d["command_id"].rsplit("-", 1)[1]), set()).add(r.value)
    totals = {}
    for a in APPS:
        last = max(k for app, k in entries if app == a)
        tot = json.loads(min(entries[(a, last)]))["cumulative"]["total"]
        totals[a] = {"energy_mj": tot["energy_mj"], "carbon_ug": tot["carbon_ug"]}
    for k in kills:  # restart -> ready; restart -> first new tick closed
        ready = p.services[k.service].ready_at.get(k.start_no)
        k.ready_s = None if ready is None else ready - k.at
        first = _first_tick_after(tail, k.at, k.closed_tick)
        k.first_tick_s = None if first is None else first - k.at
    with tail.lock:
        forwarded = dict(tail.forwarded)
        copies = {t: len(v) for t, v in tail.records.items()}
    return Outcome(entries, notes, setpoints, lifecycle, final, totals, read_quotas(p.top),
                   forwarded, copies, copies[topics.DEADLETTER], wall_s, kills,
                   p.cgroups)  # fmt: skip


def dump(o: Outcome, path: Path) -> None:
    """What a run produced, for a look after the fact (``--keep``)."""
    kills = [
        {f: getattr(k, f) for f in ("service", "position", "delay_s", "published_tick",
                                    "closed_tick", "ready_s", "first_tick_s", "during_recovery")}
        for k in o.kills
    ]  # fmt: skip
    doc = {
        "wall_s": o.wall_s,
        "totals": o.totals,
        "final": o.final,
        "lifecycle": {c: sorted(v) for c, v in o.lifecycle.items()},
        "quotas": o.quotas,
        "copies": o.copies,
        "ticks_with_differing_copies": [
            f"{a}:{k}" for (a, k), v in o.entries.items() if len(v) > 1
        ],
        "kills": kills,
    }
    path.write_text(json.dumps(doc, indent=1, default=str))


# --- the comparison --------------------------------------------------------------------


def compare(wl: Workload, ref: Outcome, got: Outcome) -> list[str]:
    """Every difference a downstream reader would see; [] when identical."""
    bad: list[str] = []
    want_keys = {(a, T0 + i) for a in APPS for i in range(wl.ticks)}
    for name, o in (("fault-free", ref), ("chaos", got)):
        missing = sorted(want_keys - o.entries.keys())
        if missing:
            bad.append(f"{name}: {len(missing)} tick(s) without a ledger entry, first {missing[0]}")
        extra = sorted(o.entries.keys() - want_keys)
        if extra:
            bad.append(f"{name}: {len(extra)} unexpected ledger entries, first {extra[0]}")
        for key, versions in sorted(o.entries.items()):
            if len(versions) > 1:
                bad.append(f"{name}: tick {key} re-emitted with different content")
        lost = [i for i in {s.ident for s in wl.steps if s.ident} if i not in o.forwarded]
        if lost:
            bad.append(f"{name}: {len(lost)} telemetry message(s) never reached Kafka: {lost[:3]}")
    for key in sorted(ref.entries.keys() & got.entries.keys()):
        if ref.entries[key] != got.entries[key]:
            bad.append(f"ledger entry {key} differs from the fault-free run")
    for a in APPS:
        if ref.totals[a] != got.totals[a]:
            bad.append(f"app {a}: totals {got.totals[a]} != fault-free {ref.totals[a]}")
    for what, r, g in (
        ("tick notifications/events", ref.notes, got.notes),
        ("battery setpoints", ref.setpoints, got.setpoints),
        ("command lifecycle", ref.lifecycle, got.lifecycle),
    ):
        for key in sorted(r.keys() | g.keys(), key=str):
            if r.get(key) != g.get(key):  # type: ignore[call-overload]
                bad.append(f"{what} of {key} differ from the fault-free run")
    want_final = {c.command_id for c in wl.commands}
    for name, o in (("fault-free", ref), ("chaos", got)):
        if set(o.final) != want_final:
            bad.append(f"{name}: outcomes for {sorted(o.final)}, expected {sorted(want_final)}")
    if ref.final != got.final:
        bad.append(f"command outcomes {got.final} != fault-free {ref.final}")
    if ref.quotas != got.quotas:
        bad.append(f"final cgroup quotas {got.quotas} != fault-free {ref.quotas}")
    return bad


# --- report ----------------------------------------------------------------------------


@dataclass
class Report:
    workload: Workload
    ref: Outcome
    got: Outcome
    mismatches: list[str]
    services: list[str]
    kills_per_service: int
    seed: int

    def kills_done(self) -> dict[str, int]:
        out = {s: 0 for s in self.services}
        for k in self.got.kills:
            if k.at:
                out[k.service] += 1
        return out


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{platform.platform()}, {os.cpu_count()} CPUs ({cpu or platform.machine()}), "
            f"Python {platform.python_version()}")  # fmt: skip


def stats(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    xs = sorted(xs)
    med = xs[len(xs) // 2]
    return f"median {med:.2f} s, max {xs[-1]:.2f} s (n={len(xs)})"


def total(t: dict[str, int]) -> str:
    return f"{t['energy_mj'] / 1000:.3f} J, {t['carbon_ug'] / 1e6:.6f} g"


def render(r: Report) -> str:
    wl, ref, got = r.workload, r.ref, r.got
    n_entries = sum(len(v) for v in got.entries.values())
    lines = [
        f"machine: {machine()}",
        f"workload: {wl.ticks} ticks of 1 s (event time), apps {', '.join(APPS)} with "
        f"{sum(len(c) for c in APPS.values())} containers, solar, carbon; "
        f"{wl.telemetry} telemetry messages over MQTT QoS 1 (+{wl.duplicates} edge duplicates, "
        f"{wl.late} late), {len(wl.gaps)} gap(s) of {GAP_TICKS} ticks bridged by clock "
        f"messages, {len(wl.commands)} commands; seed {r.seed}",
        "not killed: the telemetry publisher (it stands for the edge devices) and the brokers",
        f"fault-free run: {ref.wall_s:.1f} s wall; chaos run: {got.wall_s:.1f} s wall",
        f"kills done: {r.kills_done()} (asked {r.kills_per_service} per service)",
    ]
    for s in r.services:
        ks = [k for k in got.kills if k.service == s and k.at]
        ready = stats([k.ready_s for k in ks if k.ready_s is not None])
        first = stats([k.first_tick_s for k in ks if k.first_tick_s is not None])
        lines.append(
            f"  {s}: ready after restart {ready}; first new tick closed after restart {first}; "
            f"{sum(k.during_recovery for k in ks)} kill(s) before the previous restart had "
            f"closed a new tick"
        )
    dup_fwd = sum(n - 1 for n in got.forwarded.values())
    lines += [
        f"chaos run: {len(got.entries)} ledger keys, {n_entries} distinct entries, "
        f"{got.copies[topics.LEDGER]} ledger records (re-emitted: "
        f"{got.copies[topics.LEDGER] - len(got.entries)}; fault-free: "
        f"{ref.copies[topics.LEDGER] - len(ref.entries)}); telemetry copies in Kafka beyond "
        f"one per message: {dup_fwd} (fault-free: {sum(n - 1 for n in ref.forwarded.values())}); "
        f"dead letters {got.dead_letters} (fault-free {ref.dead_letters})",
        "totals per app (chaos / fault-free): "
        + "; ".join(f"{a}: {total(got.totals[a])} / {total(ref.totals[a])}" for a in APPS),
        f"command outcomes: {got.final}",
        f"final cgroup quotas (cores): {got.quotas}"
        + ("" if got.cgroups else " (no writable cgroup v1 here: caps acknowledged ok=False)"),
        f"mismatches: {len(r.mismatches)}",
        *(f"  MISMATCH {m}" for m in r.mismatches),
    ]
    return "\n".join(lines)


def run(
    kills: int = 20,
    seed: int = 1,
    ticks: int = 300,
    services: tuple[str, ...] = ("bridge", "ledger", "actuator"),
    rate: float | None = 6.0,
    work: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
    parallel: bool = False,
) -> Report:
    """Both runs and their comparison; ``parallel``: the fault-free run side by side
    with the chaos run (its own brokers and cgroups; for the short test), else first."""
    for s in services:
        if s not in MODULES:
            raise ValueError(f"unknown service {s!r}; one of {sorted(MODULES)}")
    wl = workload(ticks, seed)
    own = work is None
    base = Path(tempfile.mkdtemp(prefix="ecovisor-chaos-")) if work is None else work
    top = f"ecovisor-chaos-{uuid.uuid4().hex[:8]}"
    tops = (f"{top}-ref", f"{top}-kil") if parallel else (top, top)
    plan = schedule(list(services), kills, ticks, seed)
    try:
        if parallel:
            log("fault-free and chaos runs side by side ...")
            box: list[Outcome | BaseException] = []

            def fault_free() -> None:
                try:
                    box.append(run_once(wl, base, "fault-free", tops[0], [], None, log))
                except BaseException as e:
                    box.append(e)

            th = threading.Thread(target=fault_free, daemon=True)
            th.start()
            got = run_once(wl, base, "chaos", tops[1], plan, rate, log)
            th.join(10 * WAIT_S)
            if not box or isinstance(box[0], BaseException):
                raise box[0] if box else TimeoutError("the fault-free run did not end")
            ref = box[0]
        else:
            log("fault-free run ...")
            ref = run_once(wl, base, "fault-free", tops[0], [], None, log)
            log(f"  {ref.wall_s:.1f} s; chaos run ...")
            got = run_once(wl, base, "chaos", tops[1], plan, rate, log)
        return Report(wl, ref, got, compare(wl, ref, got), list(services), kills, seed)
    finally:
        for t in set(tops):
            remove_cgroups(t)
        if own:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python reliability/chaos.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs per service (default 20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ticks", type=int, default=300, help="trace length in 1-s ticks")
    ap.add_argument("--services", default="bridge,ledger,actuator",
                    help="comma-separated, of: bridge, ledger, actuator")  # fmt: skip
    ap.add_argument(
        "--rate",
        type=float,
        default=6.0,
        help="trace ticks per wall second the edge publishes in the chaos run",
    )
    ap.add_argument("--keep", metavar="DIR", help="keep logs and state in DIR")
    a = ap.parse_args(argv)
    services = tuple(s.strip() for s in a.services.split(",") if s.strip())
    work = None
    if a.keep:
        work = Path(a.keep)
        work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    try:
        rep = run(a.kills, a.seed, a.ticks, services, a.rate, work,
                  log=lambda m: print(m, flush=True))  # fmt: skip
    except (TimeoutError, RuntimeError) as e:
        keep = "" if a.keep else " (the logs are deleted: rerun with --keep DIR to keep them)"
        print(f"FAILED: {e}{keep}", file=sys.stderr)
        return 1
    print(render(rep))
    print(f"total wall time {time.monotonic() - t:.1f} s")
    return 1 if rep.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
