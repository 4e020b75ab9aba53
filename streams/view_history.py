"""The ledger's view history: per app, the newest ``history_ticks`` ticks' ledger entries
and cumulative counter rows that the state views read (``ledger``, ``counters``:
streams/ledger_views.py). A ``TickLog`` keeps one value per tick, the newest ones as they
are and the older ones in zstd-compressed blocks of ``BLOCK_TICKS`` ticks.

Why blocks: an entry is ~23 kB of JSON at 100 containers an app and a counter row ~15 kB
as Python objects, so 400 ticks of a 1,000-container site were ~160 MB of the worker's
memory, per site (~19 MB in blocks). Consecutive entries of an app differ in a few
digits a line: a block of 16 compresses ~25x (docs/ledger.md "View history in blocks").
Reads decompress the blocks they need; the views are rare next to ticks.
"""

from __future__ import annotations

import json
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import zstandard
from pydantic_core import to_json

BLOCK_TICKS = 16  # ticks per compressed block (the newest up to this many stay plain)
ZSTD_LEVEL = 1  # the blocks compress ~as well at level 3, at ~1.7x the CPU

_compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
_decompressor = zstandard.ZstdDecompressor()


def packed(data: bytes) -> bytes:
    """``data`` zstd-compressed, in a bytes object of its own size. python-zstandard's
    one-shot ``compress`` allocates the worst case (about the input's size) and only
    shortens the object's length: a kept block of ~10 kB held ~50-370 kB, untouched
    pages mostly, but the heap behind them grew all the time (tracemalloc: 104 MB for
    ~5 MB of blocks after 1,300 ticks at 1,000 containers). The copy is the exact size
    and costs ~nothing beside compressing."""
    return bytes(memoryview(_compressor.compress(data)))


def unpacked(data: bytes) -> bytes:
    """The bytes ``packed`` compressed."""
    return _decompressor.decompress(data)


@dataclass(frozen=True)
class Block:
    ks: tuple[int, ...]  # the ticks, ascending
    data: bytes  # zstd of the values' bytes: joined by b"\n", or the log's codec's form


class TickLog:
    """The last ``max_ticks`` values of one kind, one per tick ``k`` (ascending; a tick's
    time is its index's: the caller converts). ``to_bytes``/``from_bytes`` turn a value into
    compact JSON (no newline) and back, or a ``codec`` turns a block's values into bytes
    and back (``from_bytes`` then gets the decoded values); ``read_plain`` is what a read
    returns of a value not yet in a block. ``compact`` moves the plain values into a block once
    there are ``BLOCK_TICKS`` of them: call it where their bytes exist anyway (the worker
    does after sending a tick's outputs), never on a path that must not render them."""

    def __init__(self, max_ticks: int, to_bytes: Callable[[Any], bytes],
                 from_bytes: Callable[[bytes], Any],
                 read_plain: Callable[[Any], Any] = lambda v: v, *,
                 codec: BlockCodec | None = None) -> None:  # fmt: skip
        self.max_ticks = max_ticks
        self._to_bytes, self._from_bytes, self._read_plain = to_bytes, from_bytes, read_plain
        # a block's bytes from its values and back (before zstd); default: each value's
        # bytes on a line, read back one by one with ``from_bytes``
        self.codec = codec
        self._blocks: deque[Block] = deque()
        self._plain: list[tuple[int, Any]] = []
        self._skip = 0  # values of the oldest block beyond max_ticks (not read)
        self._n = 0  # values kept (skipped ones excluded)
        self._cache: tuple[Block, bytes] | None = None  # the last block read, decompressed
        # changes whenever the plain values may have (append, compact, load): what a
        # persisted copy of them compares
        self.version = 0

    def __len__(self) -> int:
        return self._n

    def append(self, k: int, value: Any) -> None:
        """Tick ``k``'s value. A tick already kept is replaced in its place, an earlier
        one not kept goes in its place among the others (a tick closed again: the ledger
        view's entries after a restart)."""
        self.version += 1
        plain = self._plain
        newest = plain[-1][0] if plain else (
            self._blocks[-1].ks[-1] if self._blocks else None)  # fmt: skip
        if newest is None or k > newest:
            plain.append((k, value))
            self._n += 1
            self._trim()
            return
        self._unpack_from(k)  # (rare: back to plain from the block holding k on)
        plain = self._plain
        i = bisect_left(plain, k, key=lambda x: x[0])
        if i < len(plain) and plain[i][0] == k:
            plain[i] = (k, value)
        else:
            plain.insert(i, (k, value))
            self._n += 1
            self._trim()

    def compact(self) -> None:
        """The oldest plain values into blocks of ``BLOCK_TICKS`` (fewer stay plain)."""
        if len(self._plain) >= BLOCK_TICKS:
            self.version += 1
        while len(self._plain) >= BLOCK_TICKS:
            chunk, self._plain = self._plain[:BLOCK_TICKS], self._plain[BLOCK_TICKS:]
            data = self._pack([v for _, v in chunk])
            self._blocks.append(Block(tuple(k for k, _ in chunk), packed(data)))

    def sealed(self) -> list[Block]:
        """The compressed blocks, oldest first (the oldest may hold ticks beyond
        ``max_ticks``: a reader of ``Block.ks`` skips them by keeping the newest)."""
        return list(self._blocks)

    def open_block(self) -> Block | None:
        """The plain values as a block of their own (compressed now; they stay plain
        here), None if there are none: what a persisted copy holds of them."""
        if not self._plain:
            return None
        data = self._pack([v for _, v in self._plain])
        return Block(tuple(k for k, _ in self._plain), packed(data))

    def load(self, blocks: list[Block], plain: list[tuple[int, Any]]) -> None:
        """Fill an empty log from a persisted copy (streams/counters_table.py ``read``):
        ``blocks`` ascending and not overlapping, taken as they are (not decompressed),
        and plain values newer than them; then the newest ``max_ticks`` are kept."""
        if self._n:
            raise ValueError("load fills an empty log")
        kept = list(blocks)
        for a, b in zip(kept, kept[1:], strict=False):
            if b.ks[0] <= a.ks[-1]:
                raise ValueError(f"blocks overlap or are out of order at tick {b.ks[0]}")
        last = kept[-1].ks[-1] if kept else None
        if any(last is not None and k <= last for k, _ in plain):
            raise ValueError("plain values must be newer than the blocks")
        newer = dict(plain)
        self._blocks = deque(kept)
        self._plain = sorted(newer.items(), key=lambda x: x[0])
        self._n = sum(len(b.ks) for b in kept) + len(self._plain)
        self._skip = 0
        self.version += 1
        self._trim()

    def ticks(self) -> list[int]:
        """The kept ticks, ascending (no block is decompressed)."""
        out: list[int] = []
        for i, b in enumerate(self._blocks):
            out.extend(b.ks[self._skip:] if i == 0 else b.ks)
        out.extend(k for k, _ in self._plain)
        return out

    def footprint(self) -> tuple[int, int]:
        """(values kept plain, bytes of the compressed blocks)."""
        return len(self._plain), sum(len(b.data) for b in self._blocks)

    def get(self, k: int) -> Any:
        """Tick ``k``'s value, None if it is not kept."""
        for k2, v in reversed(self._plain):
            if k2 == k:
                return self._read_plain(v)
        at = self.locate(k)
        if at is None:
            return None
        b, j = at
        if self.codec is not None:  # (only this value: a block's are ~2 MB at 1,000 rows)
            return self.codec.decode_one(self._raw(b), j)
        return self._from_bytes(self._values(b)[j])

    def locate(self, k: int) -> tuple[Block, int] | None:
        """The block holding tick ``k`` and its index there; None if ``k`` is plain or
        not kept."""
        for i, b in enumerate(self._blocks):
            if b.ks[0] <= k <= b.ks[-1]:
                j = bisect_left(b.ks, k, self._skip if i == 0 else 0)
                return (b, j) if j < len(b.ks) and b.ks[j] == k else None
        return None

    def items(self, k1: int, k2: int) -> Iterator[tuple[int, Any]]:
        """(k, value) of the kept ticks in [k1, k2], oldest first (only the blocks that
        hold such ticks are decompressed)."""
        for i, b in enumerate(self._blocks):
            if b.ks[-1] < k1 or b.ks[0] > k2:
                continue
            vals = self._values(b)
            for j in range(self._skip if i == 0 else 0, len(b.ks)):
                if k1 <= b.ks[j] <= k2:
                    yield b.ks[j], self._from_bytes(vals[j])
        for k, v in list(self._plain):
            if k1 <= k <= k2:
                yield k, self._read_plain(v)

    # --- internals ---------------------------------------------------------------------

    def _pack(self, values: list[Any]) -> bytes:
        if self.codec is not None:
            return self.codec.encode(values)
        return b"\n".join(self._to_bytes(v) for v in values)

    def _values(self, b: Block) -> list[Any]:
        """A block's items: each value's bytes (``from_bytes`` reads one), or with a
        codec the values themselves, decoded anew on each call (a caller may keep or
        change them; a decoded block of 1,000 containers is ~2 MB of objects, too much
        to hold per log). The decompressed bytes of the last block read are kept."""
        raw = self._raw(b)
        return self.codec.decode(raw) if self.codec is not None else raw.split(b"\n")

    def _raw(self, b: Block) -> bytes:
        if self._cache is None or self._cache[0] is not b:
            self._cache = (b, unpacked(b.data))
        return self._cache[1]

    def _trim(self) -> None:
        while self._n > self.max_ticks:
            if self._blocks:
                self._skip += 1
                if self._skip == len(self._blocks[0].ks):
                    self._blocks.popleft()
                    self._skip = 0
            else:
                del self._plain[0]
            self._n -= 1

    def _unpack_from(self, k: int) -> None:
        """Every block holding tick ``k`` or a later one back into the plain values (the
        skipped values of the oldest block are dropped with it)."""
        while self._blocks and self._blocks[-1].ks[-1] >= k:
            b = self._blocks.pop()
            lo = 0 if self._blocks else self._skip
            vals = self._values(b)
            back = [(b.ks[j], self._from_bytes(vals[j])) for j in range(lo, len(b.ks))]
            if not self._blocks:
                self._skip = 0
            self._plain = back + self._plain
        self._cache = None


class RowsView(Mapping[int, Any]):
    """A ``TickLog`` of counter rows as the read-only ``{k: row}`` the counters view
    takes (streams/ledger_views.py ``counters_view``)."""

    def __init__(self, log: TickLog) -> None:
        self._log = log

    def __getitem__(self, k: int) -> Any:
        v = self._log.get(k)
        if v is None:
            raise KeyError(k)
        return v

    def __iter__(self) -> Iterator[int]:
        return iter(self._log.ticks())

    def __len__(self) -> int:
        return len(self._log)


def row_json(row: Mapping[str, Any]) -> bytes:
    """A counter row as compact JSON: the ``counters`` table's value and the view
    history's block form. pydantic-core's encoder: the bytes ``json.dumps(row,
    separators=(",", ":"))`` gave for these rows of ints and ASCII ids, ~4x faster."""
    return to_json(row)


class BlockCodec(Protocol):
    """How a ``TickLog`` turns a block's values into bytes (before zstd) and back."""

    def encode(self, values: list[Any]) -> bytes: ...

    def decode(self, data: bytes) -> list[Any]: ...

    def decode_one(self, data: bytes, j: int) -> Any: ...


# a counter row's numbers beside its "containers" (streams/ledger_worker.py makes rows)
ROW_FIELDS = ("t_end_us", "ticks", "energy_mj", "carbon_ug")


class RowDeltas:
    """Counter rows of a block as lines: the first as its JSON object, each next one as
    its change from the row before, ``["d", Δt_end_us, Δticks, Δenergy_mj, Δcarbon_ug,
    [Δenergy of each container..., Δcarbon of each container...]]``, when both rows
    have these fields and the same containers in the same order (else its JSON object).
    Cumulative counters grow in every digit; their changes repeat, so zstd finds them:
    on the bench's counters a block takes ~1/3 to 1/6 of its plain rows' size
    (docs/ledger.md, "The counters table within a budget"). Read back exact, with the
    container lines as lists (as from JSON)."""

    @staticmethod
    def encode(rows: list[Any]) -> bytes:
        lines: list[bytes] = []
        prev: Any = None
        for r in rows:
            if prev is not None and _delta_ok(prev, r):
                cur, old = list(r["containers"].values()), list(prev["containers"].values())
                lines.append(to_json([
                    "d", *(r[f] - prev[f] for f in ROW_FIELDS),
                    [c[0] - o[0] for c, o in zip(cur, old, strict=True)]
                    + [c[1] - o[1] for c, o in zip(cur, old, strict=True)]]))  # fmt: skip
            else:
                lines.append(row_json(r))
            prev = r
        return b"\n".join(lines)

    @staticmethod
    def decode(data: bytes) -> list[Any]:
        out: list[Any] = []
        for line in data.split(b"\n"):
            v = json.loads(line)
            if isinstance(v, list):  # a change from the row before
                prev = out[-1]
                names, old = list(prev["containers"]), list(prev["containers"].values())
                n = len(names)
                flat = _change(v, n)
                v = {f: prev[f] + d for f, d in zip(ROW_FIELDS, v[1:5], strict=True)}
                v["containers"] = {c: [o[0] + flat[i], o[1] + flat[n + i]]
                                   for i, (c, o) in enumerate(zip(names, old, strict=True))}
            out.append(v)
        return out

    @staticmethod
    def decode_one(data: bytes, j: int) -> Any:
        return _row_at(data, j)


_ROW_KEYS = {*ROW_FIELDS, "containers"}


def _row_at(data: bytes, j: int) -> Any:
    """``RowDeltas.decode(data)[j]`` without making the other rows: from the last full
    row at or before ``j``, the changes added up as flat lists (one read of a row of
    1,000 containers: ~1.5 ms against ~5.4 ms for its whole block)."""
    lines = data.split(b"\n")
    if not 0 <= j < len(lines):
        raise IndexError(f"row {j} of a block of {len(lines)}")
    i = j
    while i > 0 and lines[i][:1] == b"[":  # a change: back to the full row it follows
        i -= 1
    base = json.loads(lines[i])
    if i == j:
        return base
    names = list(base["containers"])
    n = len(names)
    nums = [base[f] for f in ROW_FIELDS]
    energy = [v[0] for v in base["containers"].values()]
    carbon = [v[1] for v in base["containers"].values()]
    for line in lines[i + 1 : j + 1]:
        v = json.loads(line)
        flat = _change(v, n)
        nums = [a + d for a, d in zip(nums, v[1:5], strict=True)]
        energy = [a + d for a, d in zip(energy, flat[:n], strict=True)]
        carbon = [a + d for a, d in zip(carbon, flat[n:], strict=True)]
    row: dict[str, Any] = dict(zip(ROW_FIELDS, nums, strict=True))
    row["containers"] = {c: [e, g] for c, e, g in zip(names, energy, carbon, strict=True)}
    return row


def _change(v: Any, n: int) -> list[Any]:
    """The per-container changes of a change line ``v`` of a row of ``n`` containers
    (``RowDeltas``); ValueError if ``v`` is not one."""
    if not (isinstance(v, list) and len(v) == 6 and v[0] == "d" and isinstance(v[5], list)
            and len(v[5]) == 2 * n):  # fmt: skip
        raise ValueError("not a counter row's change")
    return v[5]


def _delta_ok(prev: Any, r: Any) -> bool:
    """Both full rows with the same containers in the same order."""
    return (r.keys() == prev.keys() == _ROW_KEYS
            and list(r["containers"]) == list(prev["containers"]))  # fmt: skip


def row_log(max_ticks: int) -> TickLog:
    """A log of counter rows (``{t_end_us, ticks, energy_mj, carbon_ug, containers}``;
    read back as the ``counters`` table's JSON: container lines as lists); blocks in
    ``RowDeltas``."""
    return TickLog(max_ticks, row_json, _same, codec=RowDeltas())


def _same(v: Any) -> Any:
    return v


def entry_log(max_ticks: int) -> TickLog:
    """A log of ledger entries: each an ``Out`` (rendered on compaction) or its bytes;
    read back as bytes."""
    return TickLog(max_ticks, _entry_bytes, bytes, _entry_bytes)


def _entry_bytes(v: Any) -> bytes:
    return v if isinstance(v, bytes) else v.value
