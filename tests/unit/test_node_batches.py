"""Node batches (issue 13; ``batch_version`` 2, the columns, since revision "columns"):
the same telemetry sent as per-node batches of either version and as per-container
messages gives identical ledger entries (dedupe, late and missing data, counter resets
and faults included); a bad entry is dead-lettered alone (in version 2: a bad element of
any column, by its index), columns of unequal lengths refuse the batch; the bridge
checks each entry (site, app, the node it is placed on) and the batch's source and
forwards version 2; the power collector publishes one batch per node per tick by
default, split under the size limit."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import ValidationError

from ecovisor.contract import telemetry, topics
from ecovisor.contract.bus_access import node_batch_source
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.envelope import MAX_COUNTER
from ecovisor.contract.operator_messages import DeadLetter, describe_validation_error
from ecovisor.contract.telemetry import (
    NODE_BATCH_MODELS,
    ContainerTelemetry,
    NodeBatch,
    NodeBatchColumnsTelemetry,
    NodeBatchTelemetry,
    parse_telemetry_entries,
)
from streams.bridge import Scope, route
from tests.unit.test_ledger_intake import Wired, at, carbon, demo

NODE = "node-1"
APPS = {"web-1": "web", "web-2": "web", "batch-1": "batch"}
VERSIONS = sorted(NODE_BATCH_MODELS)  # 1 (a list of objects), 2 (columns)


def batch(seq: int, t: float, counters: dict[str, float], node: str = NODE,
          site: str = "demo", version: int = 2) -> NodeBatch:  # fmt: skip
    model = NODE_BATCH_MODELS[version]
    rows = [(APPS.get(c, "web"), c, 1.0, j) for c, j in counters.items()]
    return model(site=site, time=at(t), source=node_batch_source(node), seq=seq, node=node,
                 containers=model.containers_of(rows))  # fmt: skip


def with_entries(b: NodeBatch, edit: Any) -> bytes:
    """``b``'s JSON with its entries as a list of objects edited by ``edit`` (in place),
    written back in ``b``'s version (version 2: the objects as columns again, so a bad
    value lands in its column at the entry's index)."""
    body = json.loads(b.to_json())
    entries = [e.model_dump(mode="json") for e in map(b.entry, range(b.n_entries))]
    edit(entries)
    if b.batch_version == 2:
        body["containers"] = {k: [e[k] for e in entries] for k in telemetry.COLUMNS}
    else:
        body["containers"] = entries
    return json.dumps(body).encode()


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


def run(version: int | None) -> Wired:
    """SCRIPT fed as node batches of ``version``, or per container (None)."""
    w = Wired(demo())
    seqs: dict[str, int] = {}

    def msgs_of(seq: int, t: float, counters: dict[str, float]) -> list[Any]:
        if version is None:
            return singles(seqs, t, counters)
        return [batch(seq, t, counters, version=version)]

    for i, (t, counters) in enumerate(SCRIPT):
        msgs = msgs_of(10 * i, t, counters)
        w.feed(carbon("carbon-1", i, t), *msgs)
        if i == 1:  # re-delivered (at-least-once): ignored as duplicates
            w.feed(*msgs)
        if i == 2:
            # late: stamped in tick 1, already closed once the clock passed 2.6 s
            w.feed(carbon("carbon-1", 100, 2.7))
            w.feed(*msgs_of(25, 1.9, {"web-1": 7.5}))
    w.feed(carbon("carbon-1", 101, 9.0))  # closes every tick
    return w


@pytest.mark.parametrize("version", VERSIONS)
def test_batches_and_single_messages_give_identical_ledgers(version: int) -> None:
    one, many = run(version), run(None)
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


@pytest.mark.parametrize("version", VERSIONS)
def test_a_bad_entry_is_dead_lettered_alone(version: int) -> None:
    w = Wired(demo())
    good = batch(0, 0.1, {"web-1": 0.0, "web-2": 0.0}, version=version)

    def edit(entries: list[dict[str, Any]]) -> None:
        entries.insert(1, {"app": "web", "container": "web-2", "cpu_s": 1.0, "energy_j": -5.0})
        entries.append(dict(entries[-1]))  # web-2 again
        entries.append({"app": "web", "container": "ghost", "cpu_s": 0, "energy_j": 1})

    w.feed(carbon("carbon-1", 0, 0.1), with_entries(good, edit))
    later = batch(1, 1.1, {"web-1": 2.0, "web-2": 1.0, "web-1x": 1.0}, version=version)
    w.feed(carbon("carbon-1", 1, 1.1), later, carbon("carbon-1", 2, 5.0))
    dead = w.dead()
    assert len(dead) == 4, dead
    assert "entry 1: energy_j: Input should be greater than or equal to 0" in dead[0]
    assert "container 'web-2' is listed twice" in dead[1]
    assert "'ghost' is not in the site configuration" in dead[2]
    assert "'web-1x' is not in the site configuration" in dead[3]
    entries = w.entries("web")
    assert entries[1].demand_mj == 3000  # web-1 2 J + web-2 1 J: the batch was taken
    # the dead letters carry the entries as objects, whatever the version
    raws = [json.loads(DeadLetter.model_validate_json(v).raw)
            for v in w.out(topics.DEADLETTER)[:3]]  # fmt: skip
    assert raws[0] == {"app": "web", "container": "web-2", "cpu_s": 1.0, "energy_j": -5.0}
    assert raws[1] == {"app": "web", "container": "web-2", "cpu_s": 1.0, "energy_j": 0.0}


@pytest.mark.parametrize("version", VERSIONS)
def test_a_whole_batch_is_refused_only_for_its_envelope(version: int) -> None:
    one = batch(0, 0.1, {"web-1": 0.0}, version=version)
    with pytest.raises(ValidationError):  # too many entries: the batch's own bound
        parse_telemetry_entries(with_entries(one, lambda e: e.extend(e * 10_000)))
    bad_node = batch(0, 0.1, {"web-1": 0.0}, node="node-9", version=version)
    w = Wired(demo())
    w.feed(carbon("carbon-1", 0, 0.1), bad_node)
    assert w.dead() == ["node_batch 'batch-node-9' seq 0: node 'node-9' is not in the "
                        "site configuration"]  # fmt: skip


# --- version 2: the columns -------------------------------------------------------------


def v2_body(**cols: list[Any]) -> bytes:
    body = json.loads(batch(5, 0.1, {}).to_json())
    good = {"app": ["web"] * 3, "container": ["web-1", "web-2", "batch-1"],
            "cpu_s": [1.0, 2.0, 3.0], "energy_j": [4.0, 5.0, 6.0]}  # fmt: skip
    body["containers"] = {**good, **cols}
    return json.dumps(body).encode()


def test_v2_parses_to_the_same_rows_as_v1_and_absent_version_means_1() -> None:
    counters = {"web-1": 1.5, "web-2": 0.0, "batch-1": 2.25}
    v1, v2 = batch(3, 0.1, counters, version=1), batch(3, 0.1, counters, version=2)
    p1, p2 = telemetry.parse_telemetry(v1.to_json()), telemetry.parse_telemetry(v2.to_json())
    assert type(p1) is NodeBatchTelemetry and type(p2) is NodeBatchColumnsTelemetry
    assert list(p1.rows()) == list(p2.rows()) == [
        ("web", "web-1", 1.0, 1.5), ("web", "web-2", 1.0, 0.0), ("batch", "batch-1", 1.0, 2.25)]
    assert [p2.entry(i) for i in range(p2.n_entries)] == p1.containers
    assert p1.as_columns() == p2 and p2.as_columns() is p2
    assert len(v2.to_json()) < len(v1.to_json())
    body = json.loads(v1.to_json())
    del body["batch_version"]
    assert telemetry.parse_telemetry(json.dumps(body)) == p1
    # an integer is a valid float, in a column as in an object
    assert list(telemetry.parse_telemetry(v2_body(cpu_s=[1, 2, 3])).rows())[0][2] == 1.0


@pytest.mark.parametrize(
    ("column", "value", "why"),
    [
        ("app", "Web", "app: String should match pattern"),
        ("app", 7, "app: Input should be a valid string"),
        ("container", "", "container: String should match pattern"),
        ("container", "x" * 129, "container: String should match pattern"),
        ("cpu_s", -1.0, "cpu_s: Input should be greater than or equal to 0"),
        ("cpu_s", "5", "cpu_s: Input should be a valid number"),
        ("cpu_s", True, "cpu_s: Input should be a valid number"),
        ("energy_j", MAX_COUNTER * 10, "energy_j: Input should be less than or equal to"),
        ("energy_j", None, "energy_j: Input should be a valid number"),
    ],
)
def test_v2_bounds_each_element_and_a_bad_one_drops_its_entry_alone(
    column: str, value: Any, why: str
) -> None:
    good = json.loads(v2_body())["containers"][column]
    raw = v2_body(**{column: [good[0], value, good[2]]})
    msg, bad = parse_telemetry_entries(raw)
    assert isinstance(msg, NodeBatchColumnsTelemetry)
    assert [r[1] for r in msg.rows()] == ["web-1", "batch-1"]  # entry 1 dropped alone
    ((i, reason, entry),) = bad
    assert i == 1 and reason.startswith(why), reason
    assert entry == {"app": "web", "container": "web-2", "cpu_s": 2.0, "energy_j": 5.0,
                     column: value}  # fmt: skip
    with pytest.raises(ValidationError):  # the strict parse refuses it
        telemetry.parse_telemetry(raw)


def test_v2_errors_in_several_columns_of_one_entry_drop_that_entry_once() -> None:
    raw = v2_body(app=["web", "BAD", "web"], cpu_s=[1.0, -2.0, 3.0], energy_j=[-1.0, 5.0, 6.0])
    msg, bad = parse_telemetry_entries(raw)
    assert [r[1] for r in msg.rows()] == ["batch-1"]
    assert [(i, reason.split(":")[0]) for i, reason, _ in bad] == [(0, "energy_j"), (1, "app")]


@pytest.mark.parametrize(
    "cols",
    [
        {"app": ["web", "web"]},  # shorter
        {"energy_j": [4.0, 5.0, 6.0, 7.0]},  # longer
        {"energy_j": [4.0, 5.0, 6.0, -7.0]},  # longer, its extra element bad too
        {"app": ["web", "web", "web", "BAD"]},  # dropping the bad one would even them out
    ],
)
def test_v2_columns_of_unequal_lengths_refuse_the_batch_with_the_reason(
    cols: dict[str, list[Any]],
) -> None:
    raw = v2_body(**cols)
    with pytest.raises(ValidationError):
        telemetry.parse_telemetry(raw)
    with pytest.raises(ValidationError) as e:  # not taken without the bad elements either
        parse_telemetry_entries(raw)
    assert "columns of unequal lengths (app " in describe_validation_error(e.value)
    scope = Scope.of(parse_config(SITE))
    r = route(scope, topics.mqtt_telemetry("demo", "node_batch", "batch-node-1"), raw)
    assert not r.valid and "columns of unequal lengths (app " in (r.reason or "")
    w = Wired(demo())
    w.feed(carbon("carbon-1", 0, 0.1), raw, carbon("carbon-1", 1, 5.0))
    (dead,) = w.dead()
    assert "node_batch.v2.containers: columns of unequal lengths" in dead
    assert "every entry needs all four" in dead and not w.entries("web")[0].demand_mj


@pytest.mark.parametrize(
    ("containers", "why"),
    [
        ({"app": [], "container": [], "cpu_s": []},
         "node_batch.v2.containers.energy_j: Field required"),
        ({"app": [], "container": [], "cpu_s": [], "energy_j": [], "node": []},
         "node_batch.v2.containers.node: Extra inputs are not permitted"),
        ({"app": "web", "container": [], "cpu_s": [], "energy_j": []},
         "node_batch.v2.containers.app: Input should be a valid array"),
        ({"app": ["web"] * 10_001, "container": ["web-1"] * 10_001, "cpu_s": [0] * 10_001,
          "energy_j": [0] * 10_001}, "node_batch.v2.containers.app: List should have at most"),
        ([{"app": "web", "container": "web-1", "cpu_s": 0, "energy_j": 0}],
         "node_batch.v2.containers: Input should be an object"),
    ],
)  # fmt: skip
def test_v2_malformed_columns_refuse_the_batch(containers: Any, why: str) -> None:
    body = json.loads(batch(5, 0.1, {}).to_json())
    body["containers"] = containers
    with pytest.raises(ValidationError) as e:
        parse_telemetry_entries(json.dumps(body))
    assert why in describe_validation_error(e.value)


@pytest.mark.parametrize("version", [0, 3, "2", None])
def test_an_unknown_batch_version_is_refused(version: Any) -> None:
    body = json.loads(v2_body())
    body["batch_version"] = version
    with pytest.raises(ValidationError) as e:
        parse_telemetry_entries(json.dumps(body))
    why = describe_validation_error(e.value)
    assert why == "node_batch: batch_version must be 1 (or absent) or 2"


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


@pytest.mark.parametrize("version", VERSIONS)
def test_bridge_forwards_batches_and_dead_letters_entries_of_other_nodes(version: int) -> None:
    scope = Scope.of(parse_config(SITE))
    assert scope.source_of is not None  # authenticated: sources bound
    b = batch(7, 0.1, {"web-1": 1.0, "web-2": 2.0, "batch-1": 3.0}, version=version)
    r = route(scope, topics.mqtt_telemetry("demo", "node_batch", b.source), b.to_json())
    assert r.valid and r.topic == topics.TELEMETRY
    fwd = telemetry.parse_telemetry(r.value)
    assert isinstance(fwd, NodeBatchColumnsTelemetry)  # forwarded as version 2, always
    assert list(fwd.rows()) == [("web", "web-1", 1.0, 1.0), ("batch", "batch-1", 1.0, 3.0)]
    assert (fwd.source, fwd.seq, fwd.time, fwd.node) == (b.source, b.seq, b.time, b.node)
    (dl,) = r.extra
    d = DeadLetter.model_validate_json(dl.value)
    assert dl.topic == topics.DEADLETTER
    assert "entry 1" in d.reason and "placed on node 'node-2', not 'node-1'" in d.reason
    assert json.loads(d.raw) == [{"app": "web", "container": "web-2", "cpu_s": 1.0,
                                  "energy_j": 2.0}]  # fmt: skip
    # the batch source of another node: the source binding refuses the whole batch
    forged = b.model_copy(update={"source": node_batch_source("node-2")})
    r = route(scope, topics.mqtt_telemetry("demo", "node_batch", forged.source),
              forged.to_json())  # fmt: skip
    assert not r.valid and "comes from source 'batch-node-1' only" in (r.reason or "")
    # an entry of another app than its container's
    wrong = batch(8, 0.1, {"web-1": 1.0}, version=version)

    def other_app(entries: list[dict[str, Any]]) -> None:
        entries[0]["app"] = "batch"

    r = route(scope, topics.mqtt_telemetry("demo", "node_batch", wrong.source),
              with_entries(wrong, other_app))  # fmt: skip
    fwd = telemetry.parse_telemetry(r.value)
    assert r.valid and isinstance(fwd, NodeBatch) and fwd.n_entries == 0
    assert "belongs to app 'web', not 'batch'" in (r.extra[0].reason or "")


@pytest.mark.parametrize("version", VERSIONS)
def test_bridge_dead_letters_invalid_and_foreign_entries_by_their_index_as_sent(
    version: int,
) -> None:
    """Invalid entries (the parse drops them) and foreign ones (the site's rules) in one
    dead letter, each by its index in the batch as sent, the raw entries with it."""
    scope = Scope.of(parse_config(SITE))
    b = batch(9, 0.1, {"web-1": 1.0, "web-2": 2.0, "batch-1": 3.0}, version=version)

    def edit(entries: list[dict[str, Any]]) -> None:
        entries[0]["energy_j"] = -1.0  # invalid: entry 0

    r = route(scope, topics.mqtt_telemetry("demo", "node_batch", b.source), with_entries(b, edit))
    assert r.valid
    fwd = telemetry.parse_telemetry(r.value)
    assert isinstance(fwd, NodeBatch) and [row[1] for row in fwd.rows()] == ["batch-1"]
    (dl,) = r.extra
    d = DeadLetter.model_validate_json(dl.value)
    assert d.reason.startswith("node_batch: 2 entries not taken: entry 0: energy_j: Input "
                               "should be greater than or equal to 0; entry 1: container "
                               "'web-2' is placed on node 'node-2'")  # fmt: skip
    assert [e["container"] for e in json.loads(d.raw)] == ["web-1", "web-2"]


# --- the power collector ----------------------------------------------------------------


@pytest.mark.parametrize("version", [None, *VERSIONS])
def test_collector_publishes_one_batch_per_tick_with_the_per_container_values(
    tmp_path: Any, version: int | None
) -> None:
    from collectors.power import PowerCollector
    from collectors.publisher import Publisher
    from tests.unit.test_collector_power import SITE as POWER_SITE
    from tests.unit.test_collector_power import FakeProc, write

    cfg = parse_config(POWER_SITE.format(idle="equal", root=tmp_path))
    t = [0.0]
    proc = FakeProc()

    def collector(batch: bool) -> PowerCollector:
        pub = Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0)  # never connects
        more = {} if version is None else {"batch_version": version}
        return PowerCollector(cfg, "n1", pub, proc_stat=proc, clock=lambda: t[0], batch=batch,
                              **more)  # fmt: skip

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
    assert msg.batch_version == (version or 2)  # version 2 by default
    got = {c: (app, cpu, j) for app, c, cpu, j in msg.rows()}
    want = {m.container: (m.app, m.cpu_s, m.energy_j) for m in s.containers}
    assert got == want and got["b-1"][2] > 0


# awkward floats: pydantic writes 1e-05 as 0.00001 (longer than Python's repr), integers
# as 5.0
FLOATS = [0.0, 5, 1.5, 0.1 + 0.2, 1e-05, 1.2345678901234567e-7, 9.99e14, 123456789.123, 1e15,
          999_999_999_999_999.9]


def rows_of(n: int, long_ids: bool = False) -> list[telemetry.Row]:
    pad = "x" * 100 if long_ids else ""
    return [(f"app{i % 7}" + pad[:50], f"c{i}-" + pad, FLOATS[i % len(FLOATS)],
             FLOATS[(i * 5 + 3) % len(FLOATS)]) for i in range(n)]  # fmt: skip


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("long_ids", [False, True])
def test_the_collectors_split_keeps_every_batch_under_max_bytes(
    version: int, long_ids: bool
) -> None:
    from collectors.power import row_bytes, split_batches

    model = NODE_BATCH_MODELS[version]
    rows = rows_of(3_000, long_ids)
    for max_bytes in (1_024, 10_000, 65_536):
        parts = split_batches(rows, max_bytes, version)
        assert [r for p in parts for r in p] == rows and len(parts) > 1
        sizes = []
        for p in parts:
            m = model(site="s" * 128, time=at(0.123456), source="s" * 128, seq=2**63 - 1,
                      node="n" * 128, containers=model.containers_of(p))  # fmt: skip
            sizes.append(len(m.to_json()))
            assert sizes[-1] <= max_bytes
        # packed: each batch but the last is full (the next row would not have fitted; the
        # envelope bound counts a time zone offset, 5 bytes more than Z, and a separator
        # too many per list)
        assert min(sizes[:-1]) > max_bytes - max(row_bytes(rows, version)) - 5 - 4


@pytest.mark.parametrize("version", VERSIONS)
def test_row_bytes_is_what_each_row_adds_to_the_json(version: int) -> None:
    from collectors.power import row_bytes

    model = NODE_BATCH_MODELS[version]
    rows = rows_of(50, long_ids=True)

    def size(rs: list[telemetry.Row]) -> int:
        return len(model(site="s", time=at(0), source="b", seq=1, node="n",
                         containers=model.containers_of(rs)).to_json())  # fmt: skip

    # one separator per element is counted: n - 1 are written per list (1 list or 4)
    lists = 1 if version == 1 else 4
    assert size(rows) == size([]) + sum(row_bytes(rows, version)) - lists


@pytest.mark.parametrize("version", VERSIONS)
def test_bridge_sends_entry_dead_letters_first_and_acknowledges_the_message_once(
    version: int,
) -> None:
    from types import SimpleNamespace

    from tests.unit.test_bridge_route import Producer, bridge

    b, client = bridge(Producer(lambda t, v: None))
    b.scope = Scope.of(parse_config(SITE.replace('  internal_key: "0123456789abcdef0123456789'
                                                 'abcdef"\n', "")))  # fmt: skip
    msg = batch(3, 0.1, {"web-1": 1.0, "web-2": 2.0}, version=version)  # web-2: on node-2
    b._on_message(None, None, SimpleNamespace(
        topic=topics.mqtt_telemetry("demo", "node_batch", msg.source), payload=msg.to_json(),
        qos=1, mid=41))  # fmt: skip
    for _ in range(2):
        b._ack_ready()
    assert [t for t, _ in b.producer.sent] == [topics.DEADLETTER, topics.TELEMETRY]
    assert client.acks == [41] and not b.pending
    fwd = telemetry.parse_telemetry(b.producer.sent[1][1])
    assert [row[1] for row in fwd.rows()] == ["web-1"]  # type: ignore[union-attr]


def test_dead_letter_reasons_name_the_field_without_the_union_tag() -> None:
    """A batch read as version 1 or 2 says which field failed as before the versions:
    ``node_batch.site``, not ``node_batch.node_batch.site`` (the union's inner tag)."""
    import pydantic

    from ecovisor.contract.operator_messages import describe_validation_error
    from ecovisor.contract.telemetry import TELEMETRY_ADAPTER

    envelope = ('"schema_version":1,"kind":"node_batch","time":"2024-01-01T00:00:00Z",'
                '"source":"batch-n1","seq":1,"node":"n1"')
    cases = {
        "{" + envelope + ',"containers":[]}': "node_batch.site: Field required",
        "{" + envelope + ',"batch_version":1,"containers":[]}': "node_batch.site: Field required",
        "{" + envelope + ',"batch_version":2,"containers":{"app":[],"container":[],'
        '"cpu_s":[],"energy_j":[]}}': "node_batch.v2.site: Field required",
    }
    for raw, reason in cases.items():
        with pytest.raises(pydantic.ValidationError) as e:
            TELEMETRY_ADAPTER.validate_json(raw)
        assert describe_validation_error(e.value) == reason
