"""Server and container power collector (Kepler-style).

Reads cumulative counters and publishes cumulative counters:
- per container: CPU seconds from cgroup v1 ``cpuacct.usage`` (ns), cgroup v2
  ``cpu.stat`` ``usage_usec``, or an LXD instance's ``state().cpu['usage']`` (pylxd);
- per node: busy CPU seconds from ``/proc/stat``; energy from RAPL
  (``/sys/class/powercap/intel-rapl:N/energy_uj``, wrap-around at
  ``max_energy_range_uj``) when the node's meter is ``rapl``, otherwise from the node's
  power model (ecovisor.power_model);
- alternatively (meter ``kepler``) a running Kepler exporter's Prometheus metrics:
  ``kepler_container_joules_total`` (Kepler < 0.10) or ``kepler_container_cpu_joules_total``
  (0.10+) and the node counters of the same generation.

Each tick the node's energy is split over its containers with ecovisor.attribution
(active by CPU-time share, idle by the site's idle attribution mode; what is not
attributed is the platform's) and the per-container running sums are published as
``ContainerTelemetry.energy_j``; the node's as ``NodeTelemetry``.

Run: ``python -m collectors.power --config site.yaml [--node ID]``.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from collectors.common import cli_main, make_publisher, one_line, run_every
from collectors.publisher import Publisher
from ecovisor.adapters.backends import BackendError, CgroupV1Backend, CgroupV2Backend
from ecovisor.contract.config import ConfigError, ContainerConfig, EcovisorConfig, NodeConfig
from ecovisor.contract.schemas import ContainerTelemetry, NodeTelemetry
from ecovisor.core.attribution import CounterSnapshot, PowerModel, attribute_interval
from ecovisor.core.shares import IdleAttribution
from ecovisor.core.units import MJ_PER_J

log = logging.getLogger("ecovisor.collectors.power")

POWERCAP_ROOT = "/sys/class/powercap"

# --------------------------------------------------------------------------------------
# Meters (interfaces + readers). Each returns a cumulative value or None if unavailable.
# --------------------------------------------------------------------------------------


class CpuMeter(ABC):
    """Cumulative CPU seconds of one container."""

    @abstractmethod
    def cpu_s(self) -> float | None: ...


class CgroupV1Cpu(CpuMeter):
    """cgroup v1: ``<root>/cpuacct/<path>/cpuacct.usage`` in nanoseconds, read by the
    actuators' backend so the collector and the actuator agree on one reader."""

    def __init__(self, path: str, root: str | None = None) -> None:
        self._cg = CgroupV1Backend(path, root)

    def cpu_s(self) -> float | None:
        try:
            return self._cg.usage_s()
        except (BackendError, ValueError):
            return None


class CgroupV2Cpu(CpuMeter):
    """cgroup v2: ``usage_usec`` in ``<root>/<path>/cpu.stat`` (the actuators' reader)."""

    def __init__(self, path: str, root: str | None = None) -> None:
        self._cg = CgroupV2Backend(path, root)

    def cpu_s(self) -> float | None:
        try:
            return self._cg.usage_s()
        except (BackendError, ValueError):
            return None


class LxdCpu(CpuMeter):
    """An LXD instance's CPU usage (ns) through pylxd."""

    def __init__(self, instance: str, endpoint: str | None = None, client: Any = None) -> None:
        self.instance, self.endpoint, self._client = instance, endpoint, client

    def cpu_s(self) -> float | None:
        try:
            if self._client is None:
                import pylxd

                self._client = (
                    pylxd.Client(endpoint=self.endpoint) if self.endpoint else (pylxd.Client())
                )
            state = self._client.instances.get(self.instance).state()
            return int(state.cpu["usage"]) / 1e9
        except Exception as e:  # pylxd raises many types; an absent instance is not fatal
            log.debug("lxd %s: %s", self.instance, e)
            return None


def cpu_meter(c: ContainerConfig) -> CpuMeter:
    b = c.backend
    if b.type in ("cgroup_v1", "process"):
        assert b.cgroup
        return CgroupV1Cpu(b.cgroup, b.root)
    if b.type == "cgroup_v2":
        assert b.cgroup
        return CgroupV2Cpu(b.cgroup, b.root)
    assert b.instance
    return LxdCpu(b.instance, b.lxd_endpoint)


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
# Kepler exporter (Prometheus text format)
# --------------------------------------------------------------------------------------

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)(\s+\d+)?$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse_prometheus(text: str) -> list[tuple[str, dict[str, str], float]]:
    """(name, labels, value) samples of a Prometheus text exposition."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = {
            k: v.replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
            for k, v in _LABEL.findall(m.group(3) or "")
        }
        try:
            out.append((m.group(1), labels, float(m.group(4))))
        except ValueError:
            continue
    return out


@dataclass
class KeplerReading:
    node_energy_j: float | None
    node_idle_j: float | None
    containers: dict[str, float]  # cumulative J by container_name label
    generation: str  # "0.10+" or "<0.10"


_ZONES = ("package", "dram")


def read_kepler(text: str) -> KeplerReading:
    """Extract node and per-container cumulative joules from a Kepler scrape."""
    samples = parse_prometheus(text)
    names = {n for n, _, _ in samples}
    containers: dict[str, float] = {}
    node = idle = None
    if "kepler_container_cpu_joules_total" in names or "kepler_node_cpu_joules_total" in names:
        gen = "0.10+"
        for n, lab, v in samples:
            zone = lab.get("zone", "package")
            if zone not in _ZONES:
                continue
            if n == "kepler_container_cpu_joules_total":
                key = lab.get("container_name") or lab.get("container_id", "")
                containers[key] = containers.get(key, 0.0) + v
            elif n == "kepler_node_cpu_joules_total":
                node = (node or 0.0) + v
            elif n == "kepler_node_cpu_idle_joules_total":
                idle = (idle or 0.0) + v
    else:
        gen = "<0.10"
        for n, lab, v in samples:
            if n == "kepler_container_joules_total":
                key = lab.get("container_name") or lab.get("container_id", "")
                containers[key] = containers.get(key, 0.0) + v
            elif n in ("kepler_node_package_joules_total", "kepler_node_dram_joules_total"):
                node = (node or 0.0) + v
                if lab.get("mode") == "idle":
                    idle = (idle or 0.0) + v
    return KeplerReading(node, idle, containers, gen)


def scrape_kepler(url: str, timeout_s: float = 5.0) -> KeplerReading:
    r = httpx.get(url, timeout=timeout_s)
    r.raise_for_status()
    return read_kepler(r.text)


# --------------------------------------------------------------------------------------
# Per-node accounting (pure apart from the meters it is given)
# --------------------------------------------------------------------------------------


def node_model(node: NodeConfig) -> PowerModel:
    """The node's power model: the one definition the ledger and actuators use too."""
    try:
        return node.model()
    except (KeyError, ValueError) as e:
        raise ConfigError(f"site.nodes[{node.id}].power_model: {one_line(e)}") from None


@dataclass
class ContainerRef:
    app: str
    config: ContainerConfig
    meter: CpuMeter


@dataclass
class NodeSample:
    node: NodeTelemetry | None
    containers: list[ContainerTelemetry]


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
                if ref.config.id not in self.missing:
                    log.warning("container %s: no CPU counter (not running?)", ref.config.id)
                self.missing.add(ref.config.id)
                continue
            self.missing.discard(ref.config.id)
            cpu[ref.config.id] = v
        energy = self.node_energy.energy_j() if self.node_energy else None
        snap = CounterSnapshot(
            time_s=now_s, containers=cpu, node_cpu_s=self.node_cpu(), node_energy_j=energy
        )
        return snap, cpu

    def step(self, now_s: float) -> tuple[CounterSnapshot, dict[str, float]]:
        """Read the counters and add this interval's attributed energy to the sums."""
        snap, cpu = self.sample(now_s)
        if self.prev is not None and snap.time_s > self.prev.time_s:
            sizes = {r.config.id: r.config.size for r in self.containers}
            att = attribute_interval(
                self.model, self.prev, snap, idle_mode=self.idle_mode, sizes=sizes
            )
            self.node_mj += att.node.total
            self.idle_mj += att.node.idle
            for name, share in att.containers.items():
                self.energy_mj[name] = self.energy_mj.get(name, 0) + share.total
        self.prev = snap
        return snap, cpu


@dataclass
class KeplerAccount:
    """Kepler meter: energies come from the exporter's counters (already attributed)."""

    node: NodeConfig
    containers: list[ContainerRef]
    url: str
    node_cpu: Callable[[], float | None]
    scrape: Callable[[str], KeplerReading] = scrape_kepler

    def keys(self, ref: ContainerRef) -> set[str]:
        b = ref.config.backend
        keys = {ref.config.id}
        if b.instance:
            keys.add(b.instance)
        if b.cgroup:
            keys.add(b.cgroup.rstrip("/").rsplit("/", 1)[-1])
        return keys


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
    ) -> None:
        self.cfg, self.publisher, self.clock = cfg, publisher, clock
        self.node = cfg.node(node_id)
        self.proc = proc_stat or ProcStat()
        refs = [
            ContainerRef(a.id, c, cpu_meter(c))
            for a in cfg.apps
            for c in a.containers
            if c.node == node_id
        ]
        self.source = f"{node_id}"
        self.meter = self.node.meter
        if self.meter == "kepler":
            if not self.node.kepler_url:
                raise ConfigError(f"site.nodes[{node_id}]: meter kepler needs kepler_url")
            self.kepler = KeplerAccount(self.node, refs, self.node.kepler_url, self._busy, scrape)
        else:
            rapl = None
            if self.meter == "rapl":
                rapl = Rapl(rapl_root)
                if not rapl.zones():
                    raise ConfigError(
                        f"site.nodes[{node_id}]: meter rapl but no RAPL zones under {rapl_root}"
                    )
            self.account = NodeAccount(
                self.node,
                node_model(self.node),
                cfg.site.shape.idle_attribution,
                refs,
                self._busy,
                rapl,
            )
        self.refs = refs

    def _busy(self) -> float | None:
        try:
            return self.proc.busy_s()
        except (OSError, ValueError):
            return None

    def tick(self) -> NodeSample:
        if self.meter == "kepler":
            return self._tick_kepler()
        acc = self.account
        snap, cpu = acc.step(self.clock())
        out: list[ContainerTelemetry] = []
        node_msg = self.publisher.publish(
            NodeTelemetry,
            f"node-{self.node.id}",
            node=self.node.id,
            cores=self.node.cores,
            cpu_busy_s=snap.node_cpu_s or 0.0,
            energy_j=acc.node_mj / MJ_PER_J,
            idle_energy_j=acc.idle_mj / MJ_PER_J,
            meter=self.meter,
        )
        for ref in self.refs:
            if ref.config.id not in cpu:
                continue
            m = self.publisher.publish(
                ContainerTelemetry,
                f"ctr-{ref.config.id}",
                app=ref.app,
                container=ref.config.id,
                node=self.node.id,
                cpu_s=cpu[ref.config.id],
                energy_j=acc.energy_mj.get(ref.config.id, 0) / MJ_PER_J,
            )
            if m is not None:
                out.append(m)  # type: ignore[arg-type]
        return NodeSample(node_msg, out)  # type: ignore[arg-type]

    def _tick_kepler(self) -> NodeSample:
        k = self.kepler
        try:
            reading = k.scrape(k.url)
        except (httpx.HTTPError, OSError) as e:
            log.warning("kepler %s: %s", k.url, e)
            return NodeSample(None, [])
        node_msg = None
        if reading.node_energy_j is not None:
            node_msg = self.publisher.publish(
                NodeTelemetry,
                f"node-{self.node.id}",
                node=self.node.id,
                cores=self.node.cores,
                cpu_busy_s=self._busy() or 0.0,
                energy_j=reading.node_energy_j,
                idle_energy_j=reading.node_idle_j or 0.0,
                meter="kepler",
            )
        out = []
        for ref in self.refs:
            found = [v for key, v in reading.containers.items() if key in k.keys(ref)]
            if not found:
                continue
            cpu = ref.meter.cpu_s()
            m = self.publisher.publish(
                ContainerTelemetry,
                f"ctr-{ref.config.id}",
                app=ref.app,
                container=ref.config.id,
                node=self.node.id,
                cpu_s=cpu if cpu is not None and math.isfinite(cpu) else 0.0,
                energy_j=sum(found),
            )
            if m is not None:
                out.append(m)
        return NodeSample(node_msg, out)  # type: ignore[arg-type]


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


def validate_options(cfg: EcovisorConfig) -> None:
    """Used by ``ecovisor config check``: every node's power model resolves and every
    kepler node has a URL."""
    for n in cfg.site.nodes:
        node_model(n)
        if n.meter == "kepler" and not n.kepler_url:
            raise ConfigError(f"site.nodes[{n.id}]: meter kepler needs kepler_url")


def _add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--node", help="node id in site.nodes (default: hostname or the only one)")
    p.add_argument("--tick-s", type=float, help="publish period (default site.shape.tick_s)")


def _run(cfg: EcovisorConfig, args: argparse.Namespace, stop: threading.Event) -> None:
    validate_options(cfg)
    node_id = pick_node(cfg, args.node)
    pub = make_publisher(cfg, "power", node_id)
    coll = PowerCollector(cfg, node_id, pub)
    pub.start()
    period = args.tick_s or cfg.site.shape.tick_s
    log.info(
        "node %s (%s meter): %d containers, every %.3g s",
        node_id,
        coll.meter,
        len(coll.refs),
        period,
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
    "CgroupV1Cpu",
    "CgroupV2Cpu",
    "CpuMeter",
    "EnergyMeter",
    "KeplerReading",
    "LxdCpu",
    "NodeAccount",
    "PowerCollector",
    "ProcStat",
    "Rapl",
    "WrappingCounter",
    "parse_prometheus",
    "read_kepler",
]
