"""A Kepler exporter's scrape: node and per-container cumulative joules.

Kepler 0.10+ exposes ``kepler_container_cpu_joules_total`` and the node's
``kepler_node_cpu_joules_total`` / ``kepler_node_cpu_idle_joules_total`` by RAPL zone
(package and dram are summed; core is inside package); older Kepler exposes
``kepler_container_joules_total`` and ``kepler_node_{package,dram}_joules_total`` by mode.
The Prometheus text format is parsed by prometheus_client. See docs/collectors/power.md.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ecovisor.contract.app_config import ContainerBackend

log = logging.getLogger("ecovisor.collectors.kepler")

Sample = tuple[str, dict[str, str], float]


def _samples(text: str) -> list[Sample]:
    return [
        (s.name, s.labels, s.value)
        for family in text_string_to_metric_families(text)
        for s in family.samples
    ]


def parse_prometheus(text: str) -> list[Sample]:
    """(name, labels, value) samples of a Prometheus text exposition. prometheus_client
    rejects a whole exposition for one malformed line; we then keep every line that
    parses, so one bad series does not cost the node its energy for the tick."""
    try:
        return _samples(text)
    except ValueError:
        pass
    out: list[Sample] = []
    for line in text.splitlines():
        try:
            out += _samples(line)
        except ValueError:
            log.debug("skipped a malformed exposition line: %r", line)
    return out


@dataclass
class KeplerReading:
    node_energy_j: float | None
    node_idle_j: float | None
    containers: dict[str, float]  # cumulative J by container_name label
    generation: str  # "0.10+" or "<0.10"


_ZONES = ("package", "dram")
_CONTAINER = {
    "0.10+": "kepler_container_cpu_joules_total",
    "<0.10": "kepler_container_joules_total",
}
_NODE = {
    "0.10+": ("kepler_node_cpu_joules_total",),
    "<0.10": ("kepler_node_package_joules_total", "kepler_node_dram_joules_total"),
}


def _is_idle(generation: str, name: str, labels: dict[str, str]) -> bool:
    if generation == "0.10+":
        return name == "kepler_node_cpu_idle_joules_total"
    return name in _NODE[generation] and labels.get("mode") == "idle"


def read_kepler(text: str) -> KeplerReading:
    """Extract node and per-container cumulative joules from a Kepler scrape."""
    samples = parse_prometheus(text)
    names = {n for n, _, _ in samples}
    gen = "0.10+" if names & {_CONTAINER["0.10+"], *_NODE["0.10+"]} else "<0.10"
    containers: dict[str, float] = {}
    node = idle = None
    for n, lab, v in samples:
        if gen == "0.10+" and lab.get("zone", "package") not in _ZONES:
            continue
        if n == _CONTAINER[gen]:
            key = lab.get("container_name") or lab.get("container_id", "")
            containers[key] = containers.get(key, 0.0) + v
        if n in _NODE[gen]:
            node = (node or 0.0) + v
        if _is_idle(gen, n, lab):
            idle = (idle or 0.0) + v
    return KeplerReading(node, idle, containers, gen)


def scrape_kepler(url: str, timeout_s: float = 5.0) -> KeplerReading:
    r = httpx.get(url, timeout=timeout_s)
    r.raise_for_status()
    return read_kepler(r.text)


def kepler_keys(container: str, b: ContainerBackend) -> set[str]:
    """The Kepler ``container_name`` values that mean the container ``container`` with
    backend ``b``: its id, its LXD instance name or its cgroup's last path element."""
    keys = {container}
    if b.instance:
        keys.add(b.instance)
    if b.cgroup:
        keys.add(b.cgroup.rstrip("/").rsplit("/", 1)[-1])
    return keys
