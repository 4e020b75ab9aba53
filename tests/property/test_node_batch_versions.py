"""The two forms of a node batch are one message: random node-batch scripts (counters
that grow, reset and jump; containers absent, unknown or listed twice; batches
re-delivered and late) sent as ``batch_version`` 1 and as 2 through the ledger's intake
(JSON, ``LedgerService.telemetry``) give byte-identical ledger entries, the same dead
letters and the same counts. Derandomized, so CI sees the same cases every time."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ecovisor.contract import topics
from ecovisor.contract.bus_access import node_batch_source
from ecovisor.contract.telemetry import NODE_BATCH_MODELS
from tests.unit.test_ledger_intake import Wired, at, carbon, demo

APPS = {"web-1": "web", "web-2": "web", "batch-1": "batch", "ghost": "web"}

# one node tick: its time offset within the tick (s), and per container listed (in order,
# repeats allowed) its counter step (J; negative: a reset to that magnitude)
steps = st.one_of(st.floats(0.0, 50.0), st.floats(-5.0, -0.0), st.just(5e6))
node_ticks = st.tuples(
    st.floats(0.05, 0.9),
    st.lists(st.tuples(st.sampled_from(sorted(APPS)), steps), max_size=6),
    st.sampled_from(["once", "once", "twice", "late"]),
)


def script_messages(ticks: list[Any], version: int) -> list[list[Any]]:
    """The messages to feed, one group per tick: a carbon sample driving the clock, the
    tick's batch (again if re-delivered; a late one stamped in the previous tick)."""
    model = NODE_BATCH_MODELS[version]
    level: dict[str, float] = {}
    groups = []
    for k, (offset, entries, delivery) in enumerate(ticks):
        rows = []
        for c, step in entries:
            level[c] = -step if step < 0 else level.get(c, 0.0) + step
            rows.append((APPS[c], c, 1.0, level[c]))
        t = k + offset if delivery != "late" or k == 0 else k - 1 + offset
        b = model(site="demo", time=at(t), source=node_batch_source("node-1"), seq=k,
                  node="node-1", containers=model.containers_of(rows))  # fmt: skip
        group = [carbon("carbon-1", k, k + 0.01), b]
        if delivery == "twice":
            group.append(b)
        groups.append(group)
    groups.append([carbon("carbon-1", len(ticks), len(ticks) + 5.0)])  # closes every tick
    return groups


def run(ticks: list[Any], version: int) -> Wired:
    w = Wired(demo())
    for group in script_messages(ticks, version):
        w.feed(*group)
    return w


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(st.lists(node_ticks, min_size=1, max_size=8))
def test_v1_and_v2_of_the_same_entries_give_the_same_ledger(ticks: list[Any]) -> None:
    one, two = run(ticks, 1), run(ticks, 2)
    assert one.out(topics.LEDGER) == two.out(topics.LEDGER)
    assert one.dead() == two.dead()
    for name in ("n_samples", "n_late", "n_refused", "n_duplicates"):
        assert getattr(one.led.clock, name) == getattr(two.led.clock, name), name
