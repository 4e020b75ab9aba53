"""The ledger's view history (streams/view_history.py): a ``TickLog`` keeps the newest
``max_ticks`` values, plain or in compressed blocks, and reads back exactly what a plain
``{k: value}`` of the same ticks would (hypothesis against that model)."""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from streams.ledger_out import Out
from streams.view_history import BLOCK_TICKS, RowsView, entry_log, row_json, row_log


def _row(k: int) -> dict:
    return {"energy_mj": k * 10, "carbon_ug": k, "containers": {"c1": [k * 10, k]}}


# steps between ticks (mostly the next; 0 and -3: a tick closed again, kept or not),
# or a compaction
ops = st.lists(st.one_of(st.tuples(st.just("tick"), st.sampled_from([1, 1, 1, 1, 2, 5, 0, -3])),
                         st.just(("compact", 0))), min_size=20, max_size=160)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(ops=ops, max_ticks=st.sampled_from([1, 3, BLOCK_TICKS, BLOCK_TICKS + 5, 40]),
       each=st.booleans())
def test_a_tick_log_reads_as_the_dict_of_its_newest_ticks(ops: list, max_ticks: int,
                                                           each: bool) -> None:
    """``each``: compacted after every tick, as the worker does after each close."""
    log = row_log(max_ticks)
    want: dict[int, dict] = {}
    k = 10
    for op, step in ops:
        if op == "compact" or each:
            log.compact()
        if op == "compact":
            continue
        k = max(0, k + step)
        v = _row(k) if step else {**_row(k), "again": True}  # a tick again: replaced
        want[k] = v
        while len(want) > max_ticks:
            del want[min(want)]
        log.append(k, v)
        assert log.ticks() == sorted(want) and len(log) == len(want)
    rows = RowsView(log)
    assert dict(rows.items()) == want  # (through blocks: JSON, so the lists compare equal)
    for k2 in range(k + 2):
        assert log.get(k2) == want.get(k2)
    lo, hi = k - 7, k - 2
    assert list(log.items(lo, hi)) == [(x, want[x]) for x in sorted(want) if lo <= x <= hi]


def test_entries_are_rendered_only_when_compacted_or_read() -> None:
    rendered: list[int] = []

    def render(m: dict) -> bytes:
        rendered.append(m["k"])
        return json.dumps(m).encode()

    log = entry_log(100)
    for k in range(BLOCK_TICKS + 3):
        log.append(k, Out("t", None, message={"k": k}, render=render))
    assert rendered == []  # (the replay never renders the entries it does not write)
    log.compact()  # the oldest BLOCK_TICKS into a block; 3 stay plain
    assert rendered == list(range(BLOCK_TICKS))
    assert [json.loads(v)["k"] for _, v in log.items(2, 20)] == list(range(2, 19))
    assert rendered == list(range(BLOCK_TICKS + 3))  # read: rendered


def test_blocks_keep_the_history_small() -> None:
    """400 ticks of a 100-container app's rows: the blocks hold a small part of the JSON."""
    log = row_log(400)
    raw = 0
    for k in range(400):
        row = {"energy_mj": k * 5000, "carbon_ug": k * 37,
               "containers": {f"c{i}": [k * (1000 + i), k * (7 + i % 3)] for i in range(100)}}
        raw += len(json.dumps(row, separators=(",", ":")))
        log.append(k, row)
        log.compact()
    held = log.footprint()[1]
    assert held < raw / 4
    assert log.get(0)["containers"]["c5"] == [0, 0] and log.get(399)["carbon_ug"] == 399 * 37


def test_blocks_hold_no_more_memory_than_their_bytes() -> None:
    """What the blocks allocate is what ``footprint`` counts: python-zstandard's
    ``compress`` returns an object that keeps the worst case's allocation (~the input's
    size) behind a short length, so ~60 kB of blocks held ~300 kB."""
    import tracemalloc

    rows = [{"energy_mj": k * 5000, "carbon_ug": k * 37,
             "containers": {f"c{i}": [k * (1000 + i), k * 7] for i in range(100)}}
            for k in range(160)]
    log = row_log(400)
    for k, row in enumerate(rows):
        log.append(k, row)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        log.compact()  # 10 blocks (the rows stay alive in ``rows``)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    plain, held = log.footprint()
    assert plain == 0 and held > 0
    # each block: its bytes, an object header, the block and its tuple of ticks
    assert grown < held + 10 * 1_000


@given(st.dictionaries(st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9_.:-]{0,20}\Z"),
                       st.tuples(st.integers(0, 2**62), st.integers(0, 2**62)), max_size=20),
       st.integers(0, 2**62), st.integers(0, 2**62))
def test_a_row_is_written_as_before(conts: dict, e: int, g: int) -> None:
    """The counters table's bytes: what ``json.dumps`` compact wrote for the same row
    (container ids are ASCII by the contract's pattern)."""
    row = {"energy_mj": e, "carbon_ug": g, "containers": conts}
    assert row_json(row) == json.dumps(row, separators=(",", ":")).encode()


_names = st.sampled_from(["c1", "c2", "web-1", "x", 'q"\n\\', "é😀", ""])
_line = st.tuples(st.integers(-(2**70), 2**70), st.integers(0, 2**53)).flatmap(
    lambda t: st.sampled_from([list(t), t]))  # as from JSON, or as the worker keeps them
_full_row = st.fixed_dictionaries({
    "t_end_us": st.integers(0, 2**62), "ticks": st.integers(1, 2**40),
    "energy_mj": st.integers(0, 2**53), "carbon_ug": st.integers(0, 2**53),
    "containers": st.dictionaries(_names, _line, max_size=4)})  # fmt: skip
_other_row = st.fixed_dictionaries({  # the table's old rows: no ticks
    "energy_mj": st.integers(0, 2**53), "carbon_ug": st.integers(0, 2**53),
    "containers": st.dictionaries(_names, _line, max_size=4)})  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(rows=st.lists(st.one_of(_full_row, _other_row), min_size=1, max_size=BLOCK_TICKS),
       same=st.booleans())
def test_a_block_of_counter_rows_reads_back_exactly(rows: list, same: bool) -> None:
    """``RowDeltas``: rows of any containers (names with quotes, newlines, non-ASCII;
    lines as lists or tuples; ``same``: every full row with the first one's containers,
    so most are written as changes, counters going down as well as up) read back equal
    (lines as lists, as from JSON)."""
    from streams.view_history import RowDeltas

    if same:
        first = rows[0]["containers"]
        rows = [{**r, "containers": {c: [v[0] + i, v[1] * i] for c, v in first.items()}}
                if "ticks" in r else r for i, r in enumerate(rows)]  # fmt: skip
    data = RowDeltas.encode(rows)
    want = [json.loads(row_json(r)) for r in rows]
    assert RowDeltas.decode(data) == want
    assert [RowDeltas.decode_one(data, j) for j in range(len(rows))] == want  # one by one
    if same and len(rows) > 1 and all("ticks" in r for r in rows):
        assert data.count(b'"d"') == len(rows) - 1  # written as changes


def test_counter_rows_in_blocks_take_less_room_as_changes() -> None:
    """Cumulative counters that grow steadily: their changes compress far better."""
    from streams.view_history import RowDeltas, packed

    rows = [{"t_end_us": k * 10**6, "ticks": k, "energy_mj": 9_000 * k, "carbon_ug": 77 * k,
             "containers": {f"c{i}": [(90 + i) * k, (7 + i % 3) * k] for i in range(100)}}
            for k in range(1, BLOCK_TICKS + 1)]  # fmt: skip
    plain = len(packed(b"\n".join(row_json(r) for r in rows)))
    assert len(packed(RowDeltas.encode(rows))) * 3 < plain
