"""The ``counters`` table (streams/counters_table.py): what a new owner reads back is the
newest contiguous part of the view history the old owner had when it last wrote, within
the byte budget; old-format rows are read and replaced; leftovers of a crash between
two writes never make a gap."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.counters_table import CountersTable, block_value, parse_block
from streams.view_history import BLOCK_TICKS, Block, TickLog, packed, row_json, row_log


def _row(k: int, n: int = 5, seed: int = 0) -> dict:
    rnd = random.Random(k * 1_000 + seed)
    conts = {f"c{i}": [k * 1_000 + rnd.randrange(1_000), k * 7 + rnd.randrange(9)]
             for i in range(n)}  # fmt: skip
    return {"t_end_us": k * 1_000_000, "energy_mj": sum(e for e, _ in conts.values()),
            "carbon_ug": sum(g for _, g in conts.values()), "containers": conts}  # fmt: skip


def _restored(table: dict, app: str, max_ticks: int) -> TickLog:
    blocks, plain = CountersTable(table).read([app]).get(app, ([], []))
    log = row_log(max_ticks)
    log.load(blocks, plain)
    return log


def _app_bytes(table: dict, app: str) -> int:
    return sum(len(v) for k, v in table.items() if k.decode().rpartition(":")[0] == app)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(st.sampled_from([1, 1, 1, 1, 1, 0, -2]), min_size=1, max_size=120),
       writes=st.lists(st.booleans(), min_size=120, max_size=120),
       max_ticks=st.sampled_from([BLOCK_TICKS, 3 * BLOCK_TICKS + 5, 400]),
       budget=st.sampled_from([0, 600, 2_000, 10**9]))  # fmt: skip
def test_a_new_owner_reads_the_newest_ticks_the_table_kept(steps: list, writes: list,
                                                           max_ticks: int, budget: int) -> None:
    """Ticks closed in order (0: the same tick again, -2: two back, as after a restart),
    compacted after each as the worker does, written at random points."""
    log = row_log(max_ticks)
    table: dict[bytes, bytes] = {b"other:b0": b"another site's", b"other:3": b"{}"}
    ct = CountersTable(table)
    k = 100
    at_write: dict[int, dict] = {}
    for step, write in zip(steps, writes, strict=False):
        k = max(0, k + step)
        log.append(k, _row(k))
        log.compact()
        if write:
            ct.write("a", log, budget)
            at_write = dict(log.items(0, 10**9))
            open_b = log.open_block()
            open_bytes = len(block_value(open_b)) if open_b else 0
            assert _app_bytes(table, "a") <= max(budget, open_bytes)
            assert ct.bytes_held("a") == _app_bytes(table, "a")
    assert table[b"other:b0"] == b"another site's" and table[b"other:3"] == b"{}"
    got = dict(_restored(table, "a", max_ticks).items(0, 10**9))
    ks = sorted(got)
    if at_write:
        newest = max(at_write)
        assert not ks or ks[-1] == newest  # the newest written tick, or nothing
        assert ks == sorted(at_write)[len(at_write) - len(ks):]  # contiguous, newest ones
        assert all(got[x] == at_write[x] for x in ks)
        if budget == 10**9:
            assert ks == sorted(at_write)  # all of it, when it fits
    else:
        assert ks == []


def test_the_budget_keeps_the_newest_blocks_and_the_open_ones() -> None:
    log = row_log(400)
    for k in range(100):
        log.append(k, _row(k, n=50))
        log.compact()
    block_bytes = len(block_value(log.sealed()[-1]))
    table: dict[bytes, bytes] = {}
    ct = CountersTable(table)
    ct.write("a", log, budget=3 * block_bytes + len(block_value(log.open_block())))
    ks = _restored(table, "a", 400).ticks()
    assert ks[-1] == 99 and len(ks) >= 2 * BLOCK_TICKS + 100 % BLOCK_TICKS
    assert ks == list(range(ks[0], 100))
    ct.write("a", log, budget=10**9)  # a larger budget writes the older blocks too
    assert _restored(table, "a", 400).ticks() == list(range(100))
    ct.write("a", log, budget=0)  # nothing fits: the open ticks are kept all the same
    assert _restored(table, "a", 400).ticks() == list(range(96, 100))


def test_only_what_changed_is_written() -> None:
    log = row_log(400)
    for k in range(40):
        log.append(k, _row(k))
        log.compact()
    writes: list[bytes] = []

    class Recording(dict):
        def __setitem__(self, key: bytes, value: bytes) -> None:
            writes.append(key)
            super().__setitem__(key, value)

    table = Recording()
    ct = CountersTable(table)
    ct.write("a", log, 10**9)
    assert sorted(writes) == [b"a:b0", b"a:b16", b"a:open"]
    writes.clear()
    ct.write("a", log, 10**9)
    assert writes == []
    log.append(40, _row(40))
    log.compact()
    ct.write("a", log, 10**9)
    assert writes == [b"a:open"]
    # a new owner holds what it read: its first write rewrites only the open block
    writes.clear()
    ct2 = CountersTable(table)
    log2 = row_log(400)
    log2.load(*ct2.read(["a"])["a"])
    ct2.write("a", log2, 10**9)
    assert writes == [b"a:open"]


def test_rows_of_the_old_format_are_read_then_replaced() -> None:
    table = {f"a:{k}".encode(): row_json(_row(k)) for k in range(20, 40)}
    ct = CountersTable(table)
    log = row_log(400)
    log.load(*ct.read(["a"])["a"])
    assert log.ticks() == list(range(20, 40))
    assert log.get(33) == _row(33)
    log.compact()
    ct.write("a", log, 10**9)
    assert sorted(table) == [b"a:b20", b"a:open"]
    assert dict(_restored(table, "a", 400).items(0, 99)) == {k: _row(k) for k in range(20, 40)}


def _block(ks: range) -> Block:
    return Block(tuple(ks), packed(b"\n".join(row_json(_row(k)) for k in ks)))


def test_leftovers_of_a_crash_between_writes_make_no_gap() -> None:
    # an old block re-sealed from a later tick (its oldest ticks trimmed) beside the new
    # one, and an open block the newer sealed block covers
    table = {b"a:b0": block_value(_block(range(0, 16))),
             b"a:b16": block_value(_block(range(16, 32))),
             b"a:b20": block_value(_block(range(20, 36))),
             b"a:open": block_value(_block(range(32, 38)))}  # fmt: skip
    ks = _restored(table, "a", 400).ticks()
    assert ks == list(range(20, 38))


def test_a_value_that_does_not_parse_is_left_out_with_its_reason() -> None:
    table = {b"a:b0": block_value(_block(range(0, 16))), b"a:open": b'{"ks":[16]}\nnot zstd',
             b"a:xyz": b"{}", b"a:b99": b"no header"}  # fmt: skip
    ct = CountersTable(table)
    restored = ct.read(["a"])
    assert [b.ks[0] for b in restored["a"][0]] == [0] and restored["a"][1] == []
    assert len(ct.unreadable) == 3 and any("not a compressed block" in u for u in ct.unreadable)
    log = row_log(400)
    log.load(*restored["a"])
    ct.write("a", log, 10**9)
    assert sorted(table) == [b"a:b0"]  # the unreadable ones deleted


def test_a_block_value_round_trips() -> None:
    b = _block(range(5, 21))
    assert parse_block(block_value(b)) == b
