"""Node batches (``NodeBatchTelemetry``, issue 13): the same telemetry sent as per-node
batches and as per-container messages gives identical ledger entries (dedupe, late and
missing data, counter resets and faults included); a bad entry is dead-lettered alone;
the bridge checks each entry (site, app, the node it is placed on) and the batch's
source; the power collector publishes one batch per node per tick by default."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from ecovisor.contract import telemetry, topics
from ecovisor.contract.bus_access import node_batch_source
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.operator_messages import DeadLetter
from ecovisor.contract.telemetry import (
    ContainerCounters,
    ContainerTelemetry,
    NodeBatchTelemetry,
    parse_telemetry_entries,
)
from streams.bridge import Scope, route
from tests.unit.test_ledger_intake import Wired, at, carbon, demo

NODE = "node-1"
APPS = {"web-1": "web", "web-2": "web", "batch-1": "batch"}


def batch(seq: int, t: float, counters: dict[str, float], node: str = NODE,
          site: str = "demo") -> NodeBatchTelemetry:  # fmt: skip
    return NodeBatchTelemetry(
        site=site, time=at(t), source=node_batch_source(node), seq=seq, node=node,
        containers=[ContainerCounters(app=APPS.get(c, "web"), container=c, cpu_s=1.0,
                                      energy_j=j) for c, j in counters.items()],
    )  # fmt: skip


def singles(seqs: dict[str, int], t: float, counters: dict[str, float]) -> list[Any]:
    out = []
    for c, j in counters.items():
        seqs[c] = seqs.get(c, -1) + 1
        out.append(ContainerTelemetry(site="demo", time=at(t), source=f"ctr-{c}", seq=seqs[c],
                                      app=APPS[c], container=c, node=NODE, cpu_s=1.0,
                                      energy_j=j))  # fmt: skip
    return out


# (time s, counters J) per node tick; carbon samples drive the event clock between them
SCRIPT: list[tuple[float, dict[str, float]]] = [
    (0.1, {"web-1": 0.0, "web-2": 0.0, "batch-1": 0.0}),
    (1.1, {"web-1": 3.0, "web-2": 1.5, "batch-1": 2.0}),
    (2.1, {"web-1": 7.0, "batch-1": 4.0}),  # web-2 silent: carried, estimated
    (3.1, {"web-1": 9.5, "web-2": 4.0, "batch-1": 0.5}),  # batch-1 reset: new baseline
    (4.1, {"web-1": 9.0e6, "web-2": 5.0, "batch-1": 1.0}),  # web-1 jump: a fault
    (5.1, {"web-1": 12.0, "web-2": 6.0, "batch-1": 3.0}),
]


def run(as_batches: bool) -> Wired:
    w = Wired(demo())
    seqs: dict[str, int] = {}
    for i, (t, counters) in enumerate(SCRIPT):
        msgs = [batch(10 * i, t, counters)] if as_batches else singles(seqs, t, counters)
        w.feed(carbon("carbon-1", i, t), *msgs)
        if i == 1:  # re-delivered (at-least-once): ignored as duplicates
            w.feed(*msgs)
        if i == 2:
            # late: stamped in tick 1, already closed once the clock passed 2.6 s
            w.feed(carbon("carbon-1", 100, 2.7))
            late = {"web-1": 7.5}
            w.feed(*([batch(25, 1.9, late)] if as_batches else singles(seqs, 1.9, late)))
    w.feed(carbon("carbon-1", 101, 9.0))  # closes every tick
    return w


def test_batches_and_single_messages_give_identical_ledgers() -> None:
    one, many = run(as_batches=True), run(as_batches=False)
    a, b = one.out(topics.LEDGER), many.out(topics.LEDGER)
    assert len(a) == 2 * 8 and a == b  # two apps, ticks 0..7: byte for byte the same
    web = [e for e in one.entries("web")]
    assert sum(e.demand_mj for e in web) > 0
    assert any(e.estimated for e in web)  # web-2 silent in tick 2
    for name in ("n_samples", "n_late", "n_refused"):
        assert getattr(one.led.clock, name) == getattr(many.led.clock, name), name
    assert one.led.clock.n_late == 1 and one.led.clock.guard.n_resets == 1
    assert one.led.clock.n_duplicates == 1 and many.led.clock.n_duplicates == 3
    # the reset and the fault are reported (dead letters) in both, each naming why
    da, db = one.dead(), many.dead()
    assert len(da) == len(db) == 2
    assert "went back" in da[0] and "more than the source can produce" in da[1]
    assert "node_batch 'batch-node-1' seq 30 container 'batch-1'" in da[0]


def test_a_bad_entry_is_dead_lettered_alone() -> None:
    w = Wired(demo())
    good = batch(0, 0.1, {"web-1": 0.0, "web-2": 0.0})
    body = json.loads(good.model_dump_json())
    body["containers"].insert(1, {"app": "web", "container": "web-2", "cpu_s": 1.0,
                                  "energy_j": -5.0})  # fmt: skip
    body["containers"].append(dict(body["containers"][-1]))  # web-2 again
    body["containers"].append({"app": "web", "container": "ghost", "cpu_s": 0, "energy_j": 1})
    w.feed(carbon("carbon-1", 0, 0.1), json.dumps(body).encode())
    later = batch(1, 1.1, {"web-1": 2.0, "web-2": 1.0, "web-1x": 1.0})
    w.feed(carbon("carbon-1", 1, 1.1), later, carbon("carbon-1", 2, 5.0))
    dead = w.dead()
    assert len(dead) == 4, dead
    assert "entry 1: energy_j: Input should be greater than or equal to 0" in dead[0]
    assert "container 'web-2' is listed twice" in dead[1]
    assert "'ghost' is not in the site configuration" in dead[2]
    assert "'web-1x' is not in the site configuration" in dead[3]
    entries = w.entries("web")
    assert entries[1].demand_mj == 3000  # web-1 2 J + web-2 1 J: the batch was taken


def test_a_whole_batch_is_refused_only_for_its_envelope() -> None:
    with pytest.raises(ValidationError):  # too many entries: the batch's own bound
        parse_telemetry_entries(batch(0, 0.1, {f"c{i}": 0.0 for i in range(10_001)})
                                .model_dump_json())  # fmt: skip
    bad_node = batch(0, 0.1, {"web-1": 0.0}, node="node-9")
    w = Wired(demo())
    w.feed(carbon("carbon-1", 0, 0.1), bad_node)
    assert w.dead() == ["node_batch 'batch-node-9' seq 0: node 'node-9' is not in the "
                        "site configuration"]  # fmt: skip


# --- the bridge ---------------------------------------------------------------------------

SITE = """
site:
  id: demo
  nodes: [{id: node-1, cores: 2}, {id: node-2, cores: 2}]
  internal_key: "0123456789abcdef0123456789abcdef"
apps:
  - id: web
    token: web-token-123456
    containers:
      - {id: web-1, node: node-1, backend: {type: cgroup_v1, cgroup: eco/web-1}}
      - {id: web-2, node: node-2, backend: {type: cgroup_v1, cgroup: eco/web-2}}
  - id: batch
    token: batch-token-654321
    containers:
      - {id: batch-1, node: node-1, backend: {type: cgroup_v1, cgroup: eco/batch-1}}
"""


def test_bridge_forwards_batches_and_dead_letters_entries_of_other_nodes() -> None:
    scope = Scope.of(parse_config(SITE))
    assert scope.source_of is not None  # authenticated: sources bound
    b = batch(7, 0.1, {"web-1": 1.0, "web-2": 2.0, "batch-1": 3.0})
    r = route(scope, topics.mqtt_telemetry("demo", "node_batch", b.source), b.to_json())
    assert r.valid and r.topic == topics.TELEMETRY
    fwd = telemetry.parse_telemetry(r.value)
    assert [e.container for e in fwd.containers] == ["web-1", "batch-1"]  # type: ignore[union-attr]
    (dl,) = r.extra
    d = DeadLetter.model_validate_json(dl.value)
    assert dl.topic == topics.DEADLETTER
    assert "entry 1" in d.reason and "placed on node 'node-2', not 'node-1'" in d.reason
    # the batch source of another node: the source binding refuses the whole batch
    forged = b.model_copy(update={"source": node_batch_source("node-2")})
    r = route(scope, topics.mqtt_telemetry("demo", "node_batch", forged.source),
              forged.to_json())  # fmt: skip
    assert not r.valid and "comes from source 'batch-node-1' only" in (r.reason or "")
    # an entry of another app than its container's
    wrong = batch(8, 0.1, {"web-1": 1.0})
    body = json.loads(wrong.model_dump_json())
    body["containers"][0]["app"] = "batch"
    r = route(scope, topics.mqtt_telemetry("demo", "node_batch", wrong.source),
              json.dumps(body).encode())  # fmt: skip
    assert r.valid and telemetry.parse_telemetry(r.value).containers == []  # type: ignore[union-attr]
    assert "belongs to app 'web', not 'batch'" in (r.extra[0].reason or "")


# --- the power collector ----------------------------------------------------------------


def test_collector_publishes_one_batch_per_tick_with_the_per_container_values(
    tmp_path: Any,
) -> None:
    from collectors.power import PowerCollector, split_batches
    from collectors.publisher import Publisher
    from tests.unit.test_collector_power import SITE as POWER_SITE
    from tests.unit.test_collector_power import FakeProc, write

    cfg = parse_config(POWER_SITE.format(idle="equal", root=tmp_path))
    t = [0.0]
    proc = FakeProc()

    def collector(batch: bool) -> PowerCollector:
        pub = Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0)  # never connects
        return PowerCollector(cfg, "n1", pub, proc_stat=proc, clock=lambda: t[0], batch=batch)

    one, many = collector(True), collector(False)
    write(tmp_path / "cpuacct/e/web-1/cpuacct.usage", "0")
    write(tmp_path / "e/b-1/cpu.stat", "usage_usec 0\n")
    for c in (one, many):
        c.tick()
    t[0], proc.value = 20.0, 125.0
    write(tmp_path / "cpuacct/e/web-1/cpuacct.usage", str(5 * 10**9))
    write(tmp_path / "e/b-1/cpu.stat", "usage_usec 15000000\n")
    b, s = one.tick(), many.tick()
    assert b.containers == [] and len(b.batches) == 1
    (msg,) = b.batches
    assert (msg.kind, msg.source, msg.seq, msg.node) == ("node_batch", "batch-n1", 1, "n1")
    got = {e.container: (e.app, e.cpu_s, e.energy_j) for e in msg.containers}
    want = {m.container: (m.app, m.cpu_s, m.energy_j) for m in s.containers}
    assert got == want and got["b-1"][2] > 0
    # a node whose containers do not fit one payload: several batches under the limit
    entries = [ContainerCounters(app="web", container=f"web-{i}", cpu_s=1.5, energy_j=2.5)
               for i in range(1_000)]  # fmt: skip
    parts = split_batches(entries, 10_000)
    assert [e for p in parts for e in p] == entries and len(parts) > 4
    for p in parts:
        m = NodeBatchTelemetry(site="s", time=at(0), source="batch-n1", seq=0, node="n1",
                               containers=p)  # fmt: skip
        assert len(m.to_json()) <= 10_000


def test_bridge_sends_entry_dead_letters_first_and_acknowledges_the_message_once() -> None:
    from types import SimpleNamespace

    from tests.unit.test_bridge_route import Producer, bridge

    b, client = bridge(Producer(lambda t, v: None))
    b.scope = Scope.of(parse_config(SITE.replace('  internal_key: "0123456789abcdef0123456789'
                                                 'abcdef"\n', "")))  # fmt: skip
    msg = batch(3, 0.1, {"web-1": 1.0, "web-2": 2.0})  # web-2 is placed on node-2
    b._on_message(None, None, SimpleNamespace(
        topic=topics.mqtt_telemetry("demo", "node_batch", msg.source), payload=msg.to_json(),
        qos=1, mid=41))  # fmt: skip
    for _ in range(2):
        b._ack_ready()
    assert [t for t, _ in b.producer.sent] == [topics.DEADLETTER, topics.TELEMETRY]
    assert client.acks == [41] and not b.pending
    fwd = telemetry.parse_telemetry(b.producer.sent[1][1])
    assert [e.container for e in fwd.containers] == ["web-1"]  # type: ignore[union-attr]
