"""Server and container power collector (Kepler-style).

Reads cumulative counters and publishes cumulative counters:
- per container: CPU seconds read by the container's backend (the actuators' own
  reader): cgroup v1 ``cpuacct.usage`` (ns), cgroup v2 ``cpu.stat`` ``usage_usec``, or
  an LXD instance's ``state().cpu['usage']`` (pylxd);
- per node: busy CPU seconds from ``/proc/stat``; energy from RAPL
  (``/sys/class/powercap/intel-rapl:N/energy_uj``, wrap-around at
  ``max_energy_range_uj``) when the node's meter is ``rapl``, otherwise from the node's
  power model (``NodeConfig.model()``, the one the ledger and actuators use);
- alternatively (meter ``kepler``) a running Kepler exporter's Prometheus metrics
  (collectors.kepler).

The containers measured are every container the site can have on the node
(``EcovisorConfig.placements()``: the configured ones and each replica slot of a
template); one without a counter (a replica not running) is skipped that tick.

Each tick the node's energy is split over its containers with ecovisor.core.attribution
(active by CPU-time share, idle by the site's idle attribution mode; what is not
attributed is the platform's) and the per-container running sums are published, by
default as one node batch per node per tick, ``NodeBatchColumnsTelemetry``
(``batch_version`` 2; ``--batch-version 1``: ``NodeBatchTelemetry``, for a bridge and
ledger older than version 2), split over several when the node's containers would
exceed ``site.limits.max_message_bytes``; with ``--per-container`` as one
``ContainerTelemetry`` per container; the node's own counters as ``NodeTelemetry``.

Run: ``python -m collectors.power --config site.yaml [--node ID] [--per-container]
[--batch-version 1|2]``.
See docs/collectors/power.md.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import socket
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import httpx
from pydantic import BaseModel
from pydantic_core import to_json

from collectors.common import cli_main, make_publisher, refusal, run_every
from collectors.kepler import KeplerReading, kepler_keys, scrape_kepler
from collectors.publisher import Publisher
from ecovisor.adapters.backends import BackendError, ContainerBackend, make_backend
from ecovisor.contract.app_config import ContainerBackend as BackendConfig
from ecovisor.contract.bus_access import (
    container_source,
    node_batch_source,
    node_source,
    node_username,
)
from ecovisor.contract.config import EcovisorConfig, Placement
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.envelope import MAX_LIST, MAX_SEQ
from ecovisor.contract.site_config import NodeConfig
from ecovisor.contract.telemetry import (
    NODE_BATCH_MODELS,
    NODE_BATCH_VERSION,
    ContainerCounters,
    ContainerTelemetry,
    NodeBatch,
    NodeTelemetry,
    Row,
)
from ecovisor.core.attribution import CounterSnapshot, PowerModel, attribute_interval
from ecovisor.core.shares import IdleAttribution
from ecovisor.core.units import MJ_PER_J

log = logging.getLogger("ecovisor.collectors.power")

POWERCAP_ROOT = "/sys/class/powercap"

# --------------------------------------------------------------------------------------
# Meters (interfaces + readers). Each returns a cumulative value or None if unavailable.
# --------------------------------------------------------------------------------------


class CpuMeter:
    """Cumulative CPU seconds of one container, read by the actuators' backend for its
    type, so the collector and the actuators agree on one reader. None when unreadable
    (container not running, LXD unreachable): the collector skips it this tick."""

    def __init__(self, backend: ContainerBackend) -> None:
        self.backend = backend

    def cpu_s(self) -> float | None:
        try:
            return self.backend.usage_s()
        except (BackendError, ValueError) as e:
            log.debug("%s: %s", self.backend.name, e)
            return None


def cpu_meter(backend: BackendConfig) -> CpuMeter:
    return CpuMeter(make_backend(backend))


# /proc/stat fields after "cpu": user nice system idle iowait irq softirq steal guest guest_nice
_BUSY_FIELDS = (0, 1, 2, 5, 6, 7)  # guest time is already inside user/nice


class ProcStat:
    """Node busy CPU seconds (all cores) and core count from /proc/stat."""

    def __init__(self, path: str = "/proc/stat", hz: int | None = None) -> None:
        self.path = Path(path)
        self.hz = hz or os.sysconf("SC_CLK_TCK")

    def busy_s(self) -> float:
        for line in self.path.read_text().splitlines():
            if line.startswith("cpu "):
                vals = [int(x) for x in line.split()[1:]]
                return sum(vals[i] for i in _BUSY_FIELDS if i < len(vals)) / self.hz
        raise ValueError(f"{self.path}: no aggregate 'cpu' line")

    def cores(self) -> int:
        return sum(1 for line in self.path.read_text().splitlines() if re.match(r"cpu\d+ ", line))


class WrappingCounter:
    """Turns a counter that wraps at ``wrap`` into a monotone running sum."""

    def __init__(self) -> None:
        self.last: float | None = None
        self.total = 0.0

    def update(self, value: float, wrap: float | None) -> float:
        if self.last is not None:
            if value >= self.last:
                self.total += value - self.last
            elif wrap:
                self.total += value + wrap - self.last
            # without a wrap range a backwards step is a reset: count nothing
        self.last = value
        return self.total


class EnergyMeter(ABC):
    """Cumulative node energy in J."""

    @abstractmethod
    def energy_j(self) -> float | None: ...


class Rapl(EnergyMeter):
    """Sum of the top-level RAPL zones (packages, and psys if present) under powercap.

    Sub-zones (``intel-rapl:0:0`` core, ...) are inside their package and not added.
    Each zone's ``energy_uj`` wraps at its ``max_energy_range_uj``.
    """

    def __init__(self, root: str = POWERCAP_ROOT) -> None:
        self.root = Path(root)
        self._zones: dict[str, WrappingCounter] = {}

    def zones(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if re.fullmatch(r"intel-rapl:\d+", p.name))

    def energy_j(self) -> float | None:
        zones = self.zones()
        if not zones:
            return None
        total = 0.0
        for z in zones:
            try:
                uj = int((z / "energy_uj").read_text())
                wrap_file = z / "max_energy_range_uj"
                wrap = int(wrap_file.read_text()) if wrap_file.exists() else None
            except (OSError, ValueError):
                return None
            total += self._zones.setdefault(z.name, WrappingCounter()).update(uj, wrap)
        return total / 1e6


# --------------------------------------------------------------------------------------
# Per-node accounting (pure apart from the meters it is given)
# --------------------------------------------------------------------------------------


@dataclass
class ContainerRef:
    """A container measured on this node: its placement (owner, backend, size; a
    configured container or a template's replica slot) and its CPU meter."""

    place: Placement
    meter: CpuMeter

    @property
    def id(self) -> str:
        return self.place.container

    @property
    def app(self) -> str:
        return self.place.app

    @property
    def is_replica(self) -> bool:
        return self.place.template is not None


@dataclass
class NodeSample:
    node: NodeTelemetry | None
    containers: list[ContainerTelemetry]  # per-container mode
    batches: list[NodeBatch] = field(default_factory=list)  # batch mode


def _envelope_bytes(version: int) -> int:
    """The JSON of the largest node batch of ``version`` without entries: 128-character
    site, source and node ids, the largest seq, a time with microseconds and an offset
    (an upper bound: a batch's JSON is this plus its entries' ``row_bytes``)."""
    t = datetime(9999, 12, 31, 23, 59, 59, 999_999, timezone(-timedelta(hours=23, minutes=59)))
    big = {"site": "s" * 128, "time": t, "source": "s" * 128, "seq": MAX_SEQ, "node": "n" * 128}
    m = NODE_BATCH_MODELS[version]
    return len(m(**big, containers=m.containers_of([])).to_json())


BATCH_ENVELOPE_BYTES = {v: _envelope_bytes(v) for v in NODE_BATCH_MODELS}
# JSON bytes of an entry besides its ids and numbers, with its separator(s): version 1
# {"app":"","container":"","cpu_s":,"energy_j":}, (47); version 2 "", in the two id
# columns and , in the two number columns (8). Checked against the models by
# tests/unit/test_node_batches.py::test_row_bytes_is_what_each_row_adds_to_the_json.
ROW_OVERHEAD = {1: 47, 2: 8}


def row_bytes(rows: Sequence[Row], version: int = NODE_BATCH_VERSION) -> list[int]:
    """What each row adds to a node batch's JSON in ``version``, exactly as the model
    writes it (floats as pydantic writes them, e.g. 1e-05 as 0.00001; ids are ASCII by
    their pattern, no escapes; + 1 separator per element, so a sum is an upper bound)."""
    if not rows:
        return []
    floats = [
        [len(x) for x in to_json([float(r[k]) for r in rows])[1:-1].split(b",")] for k in (2, 3)
    ]
    extra = ROW_OVERHEAD[version]
    return [
        len(r[0]) + len(r[1]) + cpu + j + extra
        for r, cpu, j in zip(rows, floats[0], floats[1], strict=True)
    ]


def split_batches(
    rows: Sequence[Row], max_bytes: int, version: int = NODE_BATCH_VERSION
) -> list[list[Row]]:
    """Rows in order, cut into node batches of ``version`` whose JSON stays under
    ``max_bytes`` (the bridge refuses a larger payload) and ``MAX_LIST`` entries."""
    out: list[list[Row]] = [[]]
    envelope = size = BATCH_ENVELOPE_BYTES[version]
    for r, n in zip(rows, row_bytes(rows, version), strict=True):
        if out[-1] and (size + n > max_bytes or len(out[-1]) >= MAX_LIST):
            out.append([])
            size = envelope
        out[-1].append(r)
        size += n
    return [b for b in out if b]


@dataclass
class NodeAccount:
    """Running sums of one node: energy (mJ) attributed to each container and the node."""

    node: NodeConfig
    model: PowerModel
    idle_mode: IdleAttribution
    containers: list[ContainerRef]
    node_cpu: Callable[[], float | None]
    node_energy: EnergyMeter | None = None
    prev: CounterSnapshot | None = None
    energy_mj: dict[str, int] = field(default_factory=dict)
    node_mj: int = 0
    idle_mj: int = 0
    missing: set[str] = field(default_factory=set)

    def sample(self, now_s: float) -> tuple[CounterSnapshot, dict[str, float]]:
        cpu: dict[str, float] = {}
        for ref in self.containers:
            v = ref.meter.cpu_s()
            if v is None:
                if ref.id not in self.missing:
                    # a replica slot without a counter is a replica not running: normal
                    level = logging.DEBUG if ref.is_replica else logging.WARNING
                    log.log(level, "container %s: no CPU counter (not running?)", ref.id)
                self.missing.add(ref.id)
                continue
            self.missing.discard(ref.id)
            cpu[ref.id] = v
        energy = self.node_energy.energy_j() if self.node_energy else None
        snap = CounterSnapshot(
            time_s=now_s, containers=cpu, node_cpu_s=self.node_cpu(), node_energy_j=energy
        )
        return snap, cpu

    def step(self, now_s: float) -> tuple[CounterSnapshot, dict[str, float]]:
        """Read the counters and add this interval's attributed energy to the sums."""
        snap, cpu = self.sample(now_s)
        if self.prev is not None and snap.time_s > self.prev.time_s:
            sizes = {r.id: r.place.size for r in self.containers}
            att = attribute_interval(
                self.model, self.prev, snap, idle_mode=self.idle_mode, sizes=sizes
            )
            self.node_mj += att.node.total
            self.idle_mj += att.node.idle
            for name, share in att.containers.items():
                self.energy_mj[name] = self.energy_mj.get(name, 0) + share.total
        self.prev = snap
        return snap, cpu


class PowerCollector:
    """Publishes NodeTelemetry and ContainerTelemetry for one node every tick."""

    def __init__(
        self,
        cfg: EcovisorConfig,
        node_id: str,
        publisher: Publisher,
        *,
        proc_stat: ProcStat | None = None,
        rapl_root: str = POWERCAP_ROOT,
        clock: Callable[[], float] = time.monotonic,
        scrape: Callable[[str], KeplerReading] = scrape_kepler,
        batch: bool = True,
        batch_version: int = NODE_BATCH_VERSION,
    ) -> None:
        self.cfg, self.publisher, self.clock, self.scrape = cfg, publisher, clock, scrape
        self.batch = batch  # one node batch per tick, else one message a container
        self.batch_version = batch_version
        self.node = cfg.node(node_id)
        self.proc = proc_stat or ProcStat()
        # every container the site can have on this node (the one ownership rule):
        # configured ones first, then the templates' replica slots
        places = [p for p in cfg.placements().values() if p.node == node_id]
        self.refs = [
            ContainerRef(p, cpu_meter(p.backend))
            for p in sorted(places, key=lambda p: p.template is not None)
        ]
        self._refused: set[str] = set()  # Kepler values refused, logged once until good
        self.meter = self.node.meter
        if self.meter == "kepler":
            check_kepler_url(self.node)
            return
        rapl = None
        if self.meter == "rapl":
            rapl = Rapl(rapl_root)
            if not rapl.zones():
                raise ConfigError(
                    f"site.nodes[{node_id}]: meter rapl but no RAPL zones under {rapl_root}"
                )
        self.account = NodeAccount(
            self.node,
            self.node.model(),
            cfg.site.shape.idle_attribution,
            self.refs,
            self._busy,
            rapl,
        )

    def _busy(self) -> float | None:
        try:
            return self.proc.busy_s()
        except (OSError, ValueError):
            return None

    def tick(self) -> NodeSample:
        return self._tick_kepler() if self.meter == "kepler" else self._tick_accounted()

    def _tick_accounted(self) -> NodeSample:
        acc = self.account
        snap, cpu = acc.step(self.clock())
        node_msg = self._publish_node(
            snap.node_cpu_s, acc.node_mj / MJ_PER_J, acc.idle_mj / MJ_PER_J
        )
        readings = [
            (ref, cpu[ref.id], acc.energy_mj.get(ref.id, 0) / MJ_PER_J)
            for ref in self.refs
            if ref.id in cpu
        ]
        return self._publish_containers(node_msg, readings)

    def _tick_kepler(self) -> NodeSample:
        """Kepler's energies are already attributed: published as they are."""
        url = self.node.kepler_url or ""
        try:
            reading = self.scrape(url)
        except (httpx.HTTPError, OSError) as e:
            log.warning("kepler %s: %s", url, e)
            return NodeSample(None, [])
        node_msg = None
        node_j, idle_j = reading.node_energy_j, reading.node_idle_j or 0.0
        if (
            node_j is not None
            and self._kepler_ok(f"node {self.node.id}", NodeTelemetry, "energy_j", node_j)
            and self._kepler_ok(f"node {self.node.id}", NodeTelemetry, "idle_energy_j", idle_j)
        ):
            node_msg = self._publish_node(self._busy(), node_j, idle_j)
        readings = []
        for ref in self.refs:
            keys = kepler_keys(ref.id, ref.place.backend)
            found = [v for key, v in reading.containers.items() if key in keys]
            energy_j = sum(found)
            if found and self._kepler_ok(ref.id, ContainerCounters, "energy_j", energy_j):
                cpu = ref.meter.cpu_s()
                cpu_s = cpu if cpu is not None and math.isfinite(cpu) else 0.0
                readings.append((ref, cpu_s, energy_j))
        return self._publish_containers(node_msg, readings)

    def _kepler_ok(self, what: str, model: type[BaseModel], name: str, value: float) -> bool:
        """Whether the contract takes this Kepler value (a NaN, a negative or an
        out-of-bound counter is not); a refused one is skipped this tick, logged once
        until the value is good again."""
        key, why = f"{what} {name}", refusal(model, name, value)
        if why is None:
            self._refused.discard(key)
            return True
        level = logging.DEBUG if key in self._refused else logging.WARNING
        log.log(level, "kepler %s: %s %r refused (%s); skipped", what, name, value, why)
        self._refused.add(key)
        return False

    def _publish_containers(
        self, node_msg: NodeTelemetry | None, readings: list[tuple[ContainerRef, float, float]]
    ) -> NodeSample:
        """The containers' counters of this tick: one batch (or a few, under the size
        limit), or one message per container."""
        if not self.batch:
            out = [self._publish_container(ref, c, e) for ref, c, e in readings]
            return NodeSample(node_msg, [m for m in out if m is not None])
        rows = [(ref.app, ref.id, c, e) for ref, c, e in readings]
        model = NODE_BATCH_MODELS[self.batch_version]
        limit = self.cfg.site.limits.max_message_bytes
        sent = []
        for chunk in split_batches(rows, limit, self.batch_version):
            msg = self.publisher.publish(
                model, node_batch_source(self.node.id), node=self.node.id,
                containers=model.containers_of(chunk),
            )  # fmt: skip
            if msg is not None:
                sent.append(msg)
        return NodeSample(node_msg, [], sent)  # type: ignore[arg-type]

    def _publish_node(
        self, cpu_busy_s: float | None, energy_j: float, idle_energy_j: float
    ) -> NodeTelemetry | None:
        return self.publisher.publish(  # type: ignore[return-value]
            NodeTelemetry,
            node_source(self.node.id),
            node=self.node.id,
            cores=self.node.cores,
            cpu_busy_s=cpu_busy_s or 0.0,
            energy_j=energy_j,
            idle_energy_j=idle_energy_j,
            meter=self.meter,
        )

    def _publish_container(
        self, ref: ContainerRef, cpu_s: float, energy_j: float
    ) -> ContainerTelemetry | None:
        return self.publisher.publish(  # type: ignore[return-value]
            ContainerTelemetry,
            container_source(ref.id),
            app=ref.app,
            container=ref.id,
            node=self.node.id,
            cpu_s=cpu_s,
            energy_j=energy_j,
        )


def pick_node(cfg: EcovisorConfig, explicit: str | None) -> str:
    ids = [n.id for n in cfg.site.nodes]
    if explicit:
        if explicit not in ids:
            raise ConfigError(f"--node {explicit!r} is not in site.nodes ({', '.join(ids)})")
        return explicit
    if not ids:
        raise ConfigError("site.nodes is empty: nothing to measure")
    host = socket.gethostname()
    if host in ids:
        return host
    if len(ids) == 1:
        return ids[0]
    raise ConfigError(f"several nodes ({', '.join(ids)}): pass --node ID")


def check_kepler_url(node: NodeConfig) -> None:
    if node.meter == "kepler" and not node.kepler_url:
        raise ConfigError(f"site.nodes[{node.id}]: meter kepler needs kepler_url")


def validate_options(cfg: EcovisorConfig) -> None:
    """Used by ``ecovisor config check``: every kepler node has a URL. (Power models are
    checked when the configuration is parsed; ``NodeConfig.model()`` resolves them.)"""
    for n in cfg.site.nodes:
        check_kepler_url(n)


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", help="node id in site.nodes (default: hostname or the only one)")
    p.add_argument("--tick-s", type=float, help="publish period (default site.shape.tick_s)")
    p.add_argument(
        "--per-container",
        action="store_true",
        help="one ContainerTelemetry per container (default: one node batch per node per tick)",
    )
    p.add_argument(
        "--batch-version",
        type=int,
        choices=sorted(NODE_BATCH_MODELS),
        default=NODE_BATCH_VERSION,
        help=f"node batch form: 2, columns, or 1, a list of objects (for a bridge and "
        f"ledger older than version 2); default {NODE_BATCH_VERSION}",
    )


def _run(cfg: EcovisorConfig, args: argparse.Namespace, stop: threading.Event) -> None:
    validate_options(cfg)
    node_id = pick_node(cfg, args.node)
    pub = make_publisher(cfg, "power", node_id, node_username(node_id))
    coll = PowerCollector(
        cfg, node_id, pub, batch=not args.per_container, batch_version=args.batch_version
    )
    pub.start()
    period = args.tick_s or cfg.site.shape.tick_s
    log.info(
        "node %s (%s meter): %d containers (%d of them replica slots), every %.3g s, %s",
        node_id,
        coll.meter,
        len(coll.refs),
        sum(r.is_replica for r in coll.refs),
        period,
        f"one batch (version {args.batch_version}) per tick"
        if coll.batch
        else "one message per container",
    )
    try:
        run_every(period, stop, coll.tick)
    finally:
        pub.close()


def main(argv: list[str] | None = None) -> int:
    return cli_main("power", argv, _run, _add_args)


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = [
    "CpuMeter",
    "EnergyMeter",
    "NodeAccount",
    "PowerCollector",
    "ProcStat",
    "Rapl",
    "WrappingCounter",
]
