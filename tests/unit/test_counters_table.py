"""The ``counters`` table (streams/counters_table.py): what a new owner reads back is the
newest contiguous part of the view history the old owner had when it last wrote, within
the byte budget; old-format rows are read and replaced; leftovers of a crash between
two writes never make a gap."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.counters_table import CountersTable, block_value, parse_block
from streams.view_history import BLOCK_TICKS, Block, TickLog, packed, row_json, row_log


def _row(k: int, n: int = 5, seed: int = 0) -> dict:
    rnd = random.Random(k * 1_000 + seed)
    conts = {f"c{i}": [k * 1_000 + rnd.randrange(1_000), k * 7 + rnd.randrange(9)]
             for i in range(n)}  # fmt: skip
    return {"t_end_us": k * 1_000_000, "ticks": k + 1,
            "energy_mj": sum(e for e, _ in conts.values()),
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
            open_bytes = len(block_value(open_b, None)) + 8 if open_b else 0  # (its prev)
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
    block_bytes = len(block_value(log.sealed()[-1], 79))
    table: dict[bytes, bytes] = {}
    ct = CountersTable(table)
    ct.write("a", log, budget=3 * block_bytes + len(block_value(log.open_block(), 95)))
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


def test_leftovers_of_a_crash_between_writes_are_not_read() -> None:
    # a write that sealed ticks 16-31 and 128-143 (the ticks between over the budget)
    # crashed before its open block and its deletes: the old open block still links the
    # old blocks; the new ones are not read (a hole 32-127 otherwise)
    old = {b"a:b0": block_value(_block(range(0, 16)), None),
           b"a:open": block_value(_block(range(16, 20)), 15),
           b"a:b16": block_value(_block(range(16, 32)), 15),
           b"a:b128": block_value(_block(range(128, 144)), 127)}  # fmt: skip
    assert _restored(old, "a", 400).ticks() == list(range(0, 20))
    # the new open block written too: its chain, down to the first block not kept
    new = {**old, b"a:open": block_value(_block(range(144, 150)), 143)}
    assert _restored(new, "a", 400).ticks() == list(range(128, 150))


def test_a_value_that_does_not_parse_is_left_out_with_its_reason() -> None:
    short = Block((16, 17), packed(row_json(_row(16))))  # two ticks, one row
    table = {b"a:b0": block_value(_block(range(0, 16)), None),
             b"a:b16": block_value(short, 15),
             b"a:open": b'{"ks":[32],"prev":15}\nnot zstd',
             b"a:xyz": b"{}", b"a:b99": b"no header"}  # fmt: skip
    changes = ["d", 1.5, 1, 1, 1, [1] * 10]  # a float "change": not a row of integers
    table[b"a:b40"] = block_value(Block((40, 41), packed(row_json(_row(40)) + b"\n"
                                                         + row_json(changes))), 39)  # fmt: skip
    table[b"a:b60"] = b'{"ks":[60],"prev":null}\n' + packed(b"[" * 200_000)  # deep nesting
    table[b"a:7"] = b'{"energy_mj":"1","carbon_ug":0,"containers":{}}'  # old format, a str
    ct = CountersTable(table)
    restored = ct.read(["a"])
    assert [b.ks[0] for b in restored["a"][0]] == [0] and restored["a"][1] == []
    assert sum("RecursionError" in u for u in ct.unreadable) == 1
    assert sum("counter row" in u and "of integers" in u for u in ct.unreadable) == 3
    assert len(ct.unreadable) == 7
    assert any("holds 1 rows" in u for u in ct.unreadable)
    assert any("not a compressed block" in u for u in ct.unreadable)
    log = row_log(400)
    log.load(*restored["a"])
    log.append(16, _row(16))  # a tick closed again over what the bad block held: fine
    log.compact()
    ct.write("a", log, 10**9)
    assert sorted(table) == [b"a:b0", b"a:open"]  # the unreadable ones deleted


class _Recording(dict):
    """A table that records its writes (to replay a prefix of one: a crash)."""

    def __init__(self, *a: object) -> None:
        super().__init__(*a)
        self.ops: list[tuple] = []

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.ops.append((key, value))
        super().__setitem__(key, value)

    def __delitem__(self, key: bytes) -> None:
        self.ops.append((key, None))
        super().__delitem__(key)


def _is_run_of(got: list[int], of: list[int]) -> bool:
    """``got`` is a contiguous part of ``of`` (empty included)."""
    if not got:
        return True
    if got[0] not in of:
        return False
    i = of.index(got[0])
    return of[i:i + len(got)] == got


@settings(max_examples=150, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from([1, 1, 1, 1, 1, 1, -2, 7]),
                              st.integers(0, 10**6), st.integers(0, 5)),
                    min_size=120, max_size=300),
       every=st.sampled_from([4, 16, 64]),
       max_ticks=st.sampled_from([BLOCK_TICKS, 53, 400]),
       budget=st.sampled_from([1_500, 3_000, 6_000, 10**9]))  # fmt: skip
def test_after_a_crash_in_any_write_a_new_owner_reads_one_run_of_ticks(
        ops: list, every: int, max_ticks: int, budget: int) -> None:
    """A worker closes ticks (the next, two back: closed again, or a jump: ticks the
    clock skipped), compacts, writes at random points; a crash stops a write after
    any number of its operations, then a new owner reads the table and goes on. What
    it reads is always a contiguous run of the ticks the old owner had (untrimmed by
    ``max_ticks``) at the last complete write or at a crashed one since (never a hole),
    with their values."""
    table = _Recording()
    ct = CountersTable(table)
    log = row_log(max_ticks)
    k, states = 100, [[]]
    shadow: set[int] = set()  # the ticks of this owner's log, untrimmed
    for step, r, cut in ops:
        # one write (plain, crashing or followed by a restart) every ~``every`` ticks:
        # rare writes seal many blocks in between, more than the budget keeps
        what = ("write", "crash", "restart")[r % 3] if r % every < 3 else ""
        k = max(0, k + step)
        log.append(k, _row(k))
        log.compact()
        shadow.add(k)
        if what == "":
            continue
        before = dict(table)
        table.ops.clear()
        ct.write("a", log, budget)
        # the table holds the last complete write's state, or a crashed one's since
        states = [*states, sorted(shadow)] if what == "crash" else [sorted(shadow)]
        if what == "crash":  # only the first ``cut`` operations of the write happened
            table = _Recording(before)
            for key, value in ct.table.ops[:cut]:
                if value is None:
                    del table[key]
                else:
                    table[key] = value
        if what in ("crash", "restart"):
            ct = CountersTable(table)
            log = row_log(max_ticks)
            log.load(*ct.read(["a"]).get("a", ([], [])))
            got = log.ticks()
            assert any(_is_run_of(got, s) for s in states), (got, states)
            assert dict(log.items(0, 10**9)) == {x: _row(x) for x in got}
            k = got[-1] if got else k  # the snapshot's tick (later ones close again)
            shadow = set(got)


def test_a_block_value_round_trips() -> None:
    b = _block(range(5, 21))
    assert parse_block(block_value(b, 2)) == (b, 2, [(k, _row(k)) for k in range(5, 21)])
    with pytest.raises(ValueError, match="ticks must be 1..16"):  # a block holds 16 at most
        parse_block(block_value(_block(range(0, BLOCK_TICKS + 1)), None))


def test_a_restored_history_is_cut_at_the_snapshot_and_must_agree_with_it() -> None:
    from streams.ledger_worker import SiteLedger
    from tests.unit.test_ledger_views import K0, _ledger

    snap_led = _ledger(6)  # the snapshot: ticks 0-5 closed
    snap = snap_led.snapshot()
    later = _ledger(9)  # the table: written at a later persist (ticks 0-8)

    def restored(logs: dict) -> list[int]:
        table: dict[bytes, bytes] = {}
        ct = CountersTable(table)
        for app, log in logs.items():
            ct.write(app, log, 10**9)
        led = SiteLedger.restore(snap_led.cfg, snap)
        led.restore_counters(CountersTable(table).read(led.app_cfg))
        return led.counters["web"].ticks() if "web" in led.counters else []

    assert restored(later.counters) == [K0 + k for k in range(6)]  # the rest closes again
    sealed = _ledger(20)
    sealed.compact_history()  # a block of ticks 0-15 across the snapshot's tick
    assert len(sealed.counters["web"].sealed()) == 1
    assert restored(sealed.counters) == [K0 + k for k in range(6)]
    # another run's rows (other counters at the snapshot's tick): not restored
    other = row_log(400)
    for k, row in later.counters["web"].items(0, 10**12):
        other.append(k, {**row, "energy_mj": row["energy_mj"] + 1})
    assert restored({"web": other}) == []
    # a table behind the snapshot (its last writes lost): not restored (a hole would follow)
    behind = row_log(400)
    for k, row in later.counters["web"].items(0, K0 + 3):
        behind.append(k, row)
    assert restored({"web": behind}) == []
    # no tick in the snapshot at all: nothing in the table can be this run's
    fresh = SiteLedger.new(snap_led.cfg)
    table: dict[bytes, bytes] = {}
    CountersTable(table).write("web", later.counters["web"], 10**9)
    fresh.restore_counters(CountersTable(table).read(fresh.app_cfg))
    assert "web" not in fresh.counters


@settings(max_examples=60, deadline=None)
@given(ticks=st.lists(st.integers(1, 40), min_size=1, max_size=4),
       deletes=st.lists(st.integers(0, 200), max_size=5))  # fmt: skip
def test_the_shared_key_index_reads_what_a_scan_reads(ticks: list, deletes: list) -> None:
    """The worker's sites share one ``KeyIndex`` of the group's table: each site's read
    through it finds what a scan of the whole table finds, after its own writes (kept by
    the index) and, once invalidated (a new assignment), after another writer's."""
    from streams.counters_table import KeyIndex

    table: dict[bytes, bytes] = {b"old:7": b'{"containers": {}}'}
    index = KeyIndex()
    tables = {}
    for i, n in enumerate(ticks):
        app = f"app{i}"
        log = row_log(400)
        for k in range(n):
            log.append(k, _row(k, seed=i))
            log.compact()
        tables[app] = CountersTable(table, index)
        tables[app].read([app])  # the index is built at the first read
        tables[app].write(app, log, 10**9)
    for app in tables:
        assert CountersTable(table, index).read([app]) == CountersTable(table).read([app])
    # another writer (a recovery) changes the table: seen once invalidated
    keys = sorted(table)
    for j in deletes:
        table.pop(keys[j % len(keys)], None)
    table[b"app0:b900"] = b"not a block"
    index.invalidate()
    for app in [*tables, "old"]:
        via, scan = CountersTable(table, index), CountersTable(table)
        assert via.read([app]) == scan.read([app]) and via.unreadable == scan.unreadable
