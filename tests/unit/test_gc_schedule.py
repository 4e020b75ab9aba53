"""The ledger worker's full garbage collections run on its schedule (streams/gc_schedule):
none automatically once it takes over, one when the interval has passed, none before."""

from __future__ import annotations

import gc
import weakref

import pytest

from streams.gc_schedule import FullCollections


@pytest.fixture
def restore_gc():
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_take_over_stops_automatic_full_collections(restore_gc) -> None:
    fc = FullCollections(interval_s=3600)
    fc.take_over()
    assert gc.get_threshold()[2] >= 1_000_000
    assert gc.get_freeze_count() > 0  # what was alive at start-up is out of every scan
    full = []

    def watch(phase: str, info: dict) -> None:
        if phase == "start" and info["generation"] == 2:
            full.append(info)

    gc.callbacks.append(watch)
    try:
        # survivors enough to trigger a full collection under the default thresholds
        # (more than a quarter of the long-lived objects), as the ledger's history does
        kept = [[i] for i in range(len(gc.get_objects()) + 100_000)]
    finally:
        gc.callbacks.remove(watch)
    assert full == []
    del kept


def test_a_full_collection_only_when_the_interval_has_passed(restore_gc) -> None:
    class Node:
        me: object = None

    fc = FullCollections(interval_s=3600)
    node = Node()
    node.me = node  # a cycle: only a collection frees it
    ref = weakref.ref(node)
    gc.collect()  # it survives into the oldest generation: only a full collection now
    del node
    fc.maybe_collect()  # the interval has not passed
    assert fc.runs == 0 and ref() is not None
    fc.last -= 3600
    fc.maybe_collect()
    assert fc.runs == 1 and ref() is None
