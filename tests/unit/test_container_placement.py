"""The configured placement decides a container's node, never its telemetry: the
platform's energy is its node's minus its containers', so a container counted against
another node (or none) was booked twice, once to its app and once in the platform's
idle energy (docs/ledger.md#ticks). A message naming another node is dead-lettered."""

from __future__ import annotations

from typing import Any

import pytest

from ecovisor.contract.bus_access import node_batch_source
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.telemetry import (
    CarbonTelemetry,
    ContainerTelemetry,
    NodeBatchColumnsTelemetry,
    NodeTelemetry,
)
from ecovisor.core.tick_clock import to_us
from streams.ledger_worker import SiteLedger
from tests.unit.test_ledger_intake import DEMO, at

# the demo site with a second node, a container of batch's on it and a template of web's
# (its replicas web-w-1, web-w-2 placed on node-2)
NODE_2 = """    - id: node-2
      cores: 2
      power_model: {preset: ecovisor-microserver}
"""
TEMPLATE = """    templates:
      - id: web-w
        node: node-2
        max_replicas: 2
        backend: {type: cgroup_v1, cgroup: ecovisor/demo/web-w}
"""


def two_nodes() -> EcovisorConfig:
    y = DEMO.read_text()
    y = y.replace("      power_model: {preset: ecovisor-microserver}\n",
                  "      power_model: {preset: ecovisor-microserver}\n" + NODE_2, 1)  # fmt: skip
    y = y.replace("        node: node-1\n        backend: {type: cgroup_v1, cgroup: "
                  "ecovisor/demo/batch-1}", "        node: node-2\n        backend: "
                  "{type: cgroup_v1, cgroup: ecovisor/demo/batch-1}")  # fmt: skip
    y = y.replace("  - id: batch\n", TEMPLATE + "  - id: batch\n", 1)
    cfg = parse_config(y)
    places = cfg.placements()
    assert places["batch-1"].node == places["web-w-2"].node == "node-2"
    return cfg


def node(n: str, seq: int, t: float, j: float) -> NodeTelemetry:
    return NodeTelemetry(site="demo", time=at(t), source=f"node-{n}", seq=seq, node=n,
                         cores=2, cpu_busy_s=0.0, energy_j=j)  # fmt: skip


def ctr(c: str, seq: int, t: float, j: float, on: str | None, app: str = "web"
        ) -> ContainerTelemetry:  # fmt: skip
    return ContainerTelemetry(site="demo", time=at(t), source=f"ctr-{c}", seq=seq, app=app,
                              container=c, node=on, cpu_s=0.0, energy_j=j)  # fmt: skip


def co2(seq: int, t: float) -> CarbonTelemetry:
    return CarbonTelemetry(site="demo", time=at(t), source="carbon-1", seq=seq,
                           intensity_g_per_kwh=100.0)  # fmt: skip


def run(led: SiteLedger, msgs_at: Any, ticks: int = 6) -> tuple[list[str | None], int, int]:
    """``msgs_at(s)``: the messages of second s; returns every ingest's answer, the
    platform energy booked and the nodes' metered energy in the closed ticks (mJ)."""
    answers: list[str | None] = []
    platform = metered = 0
    for s in range(ticks):
        for m in [*msgs_at(s), co2(s, s)]:
            answers.append(led.ingest(m, to_us(m.time.timestamp()), led.event_now()))
        for ct in led.clock.advance(led.event_now()):  # type: ignore[arg-type]
            platform += ct.platform_mj
            metered += sum(ct.node_mj.values())
            led._account(ct)
    return answers, platform, metered


def booked(led: SiteLedger, app: str = "web") -> int:
    return led.state.apps[app].cumulative.demand_mj


@pytest.mark.parametrize("claimed", ["node-1", "node-2", None])
def test_a_container_is_booked_against_its_placements_node(claimed: str | None) -> None:
    """The reviewer's repro: web-1 (on node-1, metered 4 J/s; web-1 3 J/s) claiming
    node-2 booked web 9 J + platform 12 J = 21 J against 12 J metered (node-2's meter
    never reported). Not naming a node did the same. Now a wrong node is dead-lettered,
    no node means the placement's, and app + platform never exceed the node's meter."""
    led = SiteLedger.new(two_nodes())
    answers, platform, metered = run(
        led, lambda s: [node("node-1", s, s, 4.0 * s), ctr("web-1", s, s, 3.0 * s, claimed)]
    )
    assert metered == 4_000 * 3  # ticks 0..3 closed, the first from a zero baseline
    refused = [a for a in answers if a is not None]
    if claimed == "node-2":
        assert len(refused) == 6
        assert all("'web-1' is placed on node 'node-1'" in a and "not 'node-2'" in a
                   for a in refused)  # fmt: skip
        assert booked(led) == 0 and platform == metered
    else:
        assert refused == []
        assert booked(led) == 3_000 * 3 and platform == 1_000 * 3
    assert booked(led) + platform == metered


def test_a_batch_entry_of_a_container_placed_on_another_node_is_dead_lettered() -> None:
    """Node batches were checked by the bridge only (a producer writing to Kafka
    directly was trusted): node-2's batch listing web-1 (on node-1) subtracted web-1's
    energy from node-2 and left it in node-1's platform energy."""
    led = SiteLedger.new(two_nodes())

    def batch(s: int) -> list[Any]:
        rows = [("web", "web-1", 0.0, 3.0 * s), ("batch", "batch-1", 0.0, 1.0 * s),
                ("web", "web-w-2", 0.0, 0.5 * s)]  # fmt: skip
        return [node("node-1", s, s, 4.0 * s), node("node-2", s, s, 2.0 * s),
                NodeBatchColumnsTelemetry(site="demo", time=at(s), seq=s, node="node-2",
                                          source=node_batch_source("node-2"),
                                          containers=NodeBatchColumnsTelemetry.containers_of(
                                              rows))]  # fmt: skip

    reports = []
    for s in range(6):
        for m in [*batch(s), co2(s, s)]:
            if m.kind == "node_batch":
                reports += led.ingest_batch(m, to_us(m.time.timestamp()), led.event_now())
            else:
                assert led.ingest(m, to_us(m.time.timestamp()), led.event_now()) is None
        led.close(led.event_now())  # type: ignore[arg-type]
    assert [i for i, _ in reports] == [0] * 6
    assert all("'web-1' is placed on node 'node-1'" in why for _, why in reports)
    cum = led.state.apps
    assert cum["batch"].cumulative.demand_mj == 1_000 * 3  # the other entries are taken
    assert cum["web"].cumulative.containers["web-w-2"].energy_mj == 500 * 3
    assert "web-1" not in cum["web"].cumulative.containers
    # node-1: all platform (web-1 never taken); node-2: 2 J/s - 1 J/s - 0.5 J/s
    assert led.state.platform.energy_mj == (4_000 + 500) * 3


def test_the_clock_never_stores_the_telemetrys_node_under_a_placement() -> None:
    """The core's own rule: with a placement it ignores the message's node, also after
    a restart from a snapshot written by a ledger that had stored a claimed one."""
    led = SiteLedger.new(two_nodes())
    m = ctr("web-1", 1, 0, 0.0, None)
    led.ingest(m, to_us(m.time.timestamp()), None)
    snap = led.snapshot().replace(b'"container_nodes":{}', b'"container_nodes":{"web-1":"node-2"}')
    led = SiteLedger.restore(led.cfg, snap)
    (ct,) = led.clock.advance(to_us(at(1.5).timestamp()))
    assert ct.container_nodes["web-1"] == "node-1"
