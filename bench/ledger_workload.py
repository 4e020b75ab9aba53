"""The workloads of bench/bench_ledger.py (and bench_metrics.py): a site of n containers
in 10 apps, the containers' cumulative counters every tick, one message per container or
node batches, and the grid's carbon intensity every tick."""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecovisor.contract import topics  # noqa: E402

SITE = "bench"  # each run uses its own site (own Faust app, tables and state)


def node_of(n: int, per_node: int | None, a: int, c: int) -> str:
    """The node of container ``c<a>-<c>``: n1 only, or ``per_node`` containers a node."""
    return "n1" if per_node is None else f"n{1 + (a * (n // 10) + c) // per_node}"


def site_yaml(
    n: int, bootstrap: str, mqtt_port: int, web: int, state: Path, grace: float, site: str,
    per_node: int | None = None,
) -> str:  # fmt: skip
    apps = ""
    per_app = n // 10
    for a in range(10):
        apps += f"  - id: app{a}\n    token: bench-token-{a:04d}\n"
        apps += "    shares: {solar_fraction: 0.1, battery_capacity_wh: 10.0, grid_w: 1000.0}\n"
        apps += "    containers:\n"
        for c in range(per_app):
            cid = f"c{a}-{c}"
            node = node_of(n, per_node, a, c)
            apps += (
                f"      - {{id: {cid}, node: {node}, backend: {{type: process, "
                f"cgroup: b/{cid}}}}}\n"
            )
    k = 1 if per_node is None else -(-n // per_node)
    nodes = ", ".join(f"{{id: n{i + 1}, cores: 64}}" for i in range(k))
    return f"""schema_version: 1
site:
  id: {site}
  shape: {{tick_s: 1.0, solar_nameplate_w: 100.0, battery_capacity_wh: 100.0}}
  grace_s: {grace}
  nodes: [{nodes}]
apps:
{apps}stack:
  kafka_bootstrap: "{bootstrap}"
  mqtt_port: {mqtt_port}
  ledger_web_port: {web}
  state_dir: "{state}"
"""


def sample(site: str, c: str, app: str, seq: int, t: float, j: float) -> bytes:
    ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1e6):06d}+00:00"
    return (
        f'{{"schema_version":1,"site":"{site}","time":"{ts}","source":"pm-{c}","seq":{seq},'
        f'"kind":"container","app":"{app}","container":"{c}","node":"n1","cpu_s":0.0,'
        f'"energy_j":{j:.3f}}}'
    ).encode()


CARBON_SOURCE = "carbon-bench"


def carbon_sample(site: str, i: int, t: float) -> tuple[str, bytes]:
    """(mqtt topic, payload) of tick ``i``'s grid carbon intensity: 200-499 gCO2eq/kWh,
    a different value every tick (so the ledger books carbon on every container, pushes
    the containers' carbon histories and raises carbon_change events, as on a real site)."""
    from datetime import UTC, datetime

    from ecovisor.contract.telemetry import CarbonTelemetry

    m = CarbonTelemetry(site=site, time=datetime.fromtimestamp(t, UTC), source=CARBON_SOURCE,
                        seq=i, intensity_g_per_kwh=200.0 + (i * 37 % 300))  # fmt: skip
    return topics.mqtt_telemetry(site, "carbon", CARBON_SOURCE), m.to_json()


def workload(
    n: int, ticks: int, per_tick: int, t0: float, site: str = SITE, carbon: bool = True
) -> list[tuple[str, bytes]]:
    """(mqtt topic, payload) of n containers over `ticks` ticks, `per_tick` samples each;
    ``carbon``: with the grid's carbon intensity at the start of every tick."""
    out = []
    per_app = n // 10
    for i in range(ticks * per_tick):
        t = t0 + i / per_tick
        if carbon and i % per_tick == 0:
            out.append(carbon_sample(site, i // per_tick, t))
        for a in range(10):
            for c in range(per_app):
                cid = f"c{a}-{c}"
                j = (i + 1) * (1.0 + c % 7) / per_tick
                out.append(
                    (
                        topics.mqtt_telemetry(site, "container", f"pm-{cid}"),
                        sample(site, cid, f"app{a}", i, t, j),
                    )
                )
    return out


def batch_workload(
    n: int, per_node: int, ticks: int, t0: float, site: str, max_bytes: int, version: int = 2,
    carbon: bool = True, noise: float = 0.0,
) -> list[tuple[str, bytes]]:
    """(mqtt topic, payload) of n containers on nodes of ``per_node``, one node batch (or
    a few, under ``max_bytes``) of ``version`` per node per tick, with the counters of
    ``workload`` (and, ``carbon``, its carbon intensity first in every tick). ``noise``:
    each container's power in a tick is its regular one times 1 + U(-noise, noise)
    (seeded), as measured power varies; 0: the regular counters of ``workload``."""
    import random
    from datetime import UTC, datetime

    from collectors.power import split_batches
    from ecovisor.contract.bus_access import node_batch_source
    from ecovisor.contract.telemetry import NODE_BATCH_MODELS

    model = NODE_BATCH_MODELS[version]

    by_node: dict[str, list[tuple[str, str, int]]] = {}
    for a in range(10):
        for c in range(n // 10):
            by_node.setdefault(node_of(n, per_node, a, c), []).append((f"c{a}-{c}", f"app{a}", c))
    out = []
    seqs: dict[str, int] = {}
    rng = random.Random(7)
    energy: dict[str, float] = {}
    for i in range(ticks):
        t = datetime.fromtimestamp(t0 + i, UTC)
        if carbon:
            out.append(carbon_sample(site, i, t0 + i))
        for node, conts in by_node.items():
            if noise:
                for cid, _, c in conts:
                    w = (1.0 + c % 7) * (1.0 + rng.uniform(-noise, noise))
                    energy[cid] = energy.get(cid, 0.0) + w
                rows = [(app, cid, 0.0, round(energy[cid], 3)) for cid, app, c in conts]
            else:
                rows = [(app, cid, 0.0, round((i + 1) * (1.0 + c % 7), 3))
                        for cid, app, c in conts]  # fmt: skip
            src = node_batch_source(node)
            for part in split_batches(rows, max_bytes, version):
                seq = seqs[src] = seqs.get(src, -1) + 1
                m = model(site=site, time=t, source=src, seq=seq, node=node,
                          containers=model.containers_of(part))  # fmt: skip
                out.append((topics.mqtt_telemetry(site, "node_batch", src), m.to_json()))
    return out
