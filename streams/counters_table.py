"""The ``counters`` table: each app's view history of counter rows (a ``TickLog``,
streams/view_history.py) as the ledger persists it, so the owner of a site after a
restart or a failover serves the counters view over ticks closed before it took over.

Keys (the table is shared by the sites of a group; an app id belongs to one site):

* ``{app}:b{k}``: a sealed block of the app's log, ``k`` its first tick: the log's own
  compressed bytes (written once, never compressed again).
* ``{app}:open``: the log's values not yet in a block, as one block (compressed again at
  each persist after a change; at most ``BLOCK_TICKS - 1`` ticks).
* ``{app}:{k}``: one counter row as JSON, as versions before 3 December 2026 (evening)
  wrote them: read back, then deleted by the first write.

A block's value: ``{"ks":[...],"prev":p}`` (its ticks, ascending; ``p`` the last tick of
the block sealed before it in the log, null for none), a newline, then zstd of the rows
as ``RowDeltas`` lines (streams/view_history.py: the first row's JSON, then each row's
change from the one before).

Bound: per app, the open block and the newest sealed blocks that fit ``budget`` bytes
together (the first that does not fit ends the copy: what is kept is contiguous). So the
table holds at most ``max(budget, the open block)`` bytes an app, whatever the counters
compress to; the ticks it covers vary with that (docs/ledger.md, "The counters table
within a budget").

Consistency (``read``): the history read back is a chain, from the open block (else the
newest sealed block) back through each block's ``prev``, to the first link missing.
Whatever a crash between two writes left (new sealed blocks without the open block that
links them, old blocks not deleted yet), the chain is one state the log had, with no
tick missing in it; blocks outside the chain are ignored, then deleted by the next write.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import to_json

from streams.view_history import BLOCK_TICKS, ROW_FIELDS, Block, RowDeltas, TickLog, unpacked

OPEN = "open"

# What the table holds of one app: key -> (token, bytes of the value). The token says
# whether the value is still the log's: a sealed block is the ``Block`` object itself
# (a block re-sealed after a tick closed again is a new object), the open block the log's
# ``version`` when written; None: read back from the table, not yet matched.
Held = dict[bytes, tuple[Any, int]]
# What ``read`` gives back per app: the sealed blocks (ascending, a chain) and the plain
# (k, row) values newer than them
Restored = tuple[list[Block], list[tuple[int, Any]]]


def block_value(b: Block, prev: int | None) -> bytes:
    return to_json({"ks": b.ks, "prev": prev}) + b"\n" + b.data


def parse_block(value: bytes) -> tuple[Block, int | None, list[tuple[int, Any]]]:
    """A block, its ``prev`` and its (k, row) values from a table value; ValueError if
    it is not one. Every row is decoded and checked here, so a block that reads back is
    one a view and a re-closed tick can read: a bad one fails here, not on a tick's
    path."""
    head, _, data = value.partition(b"\n")
    meta = json.loads(head)
    ks = tuple(int(k) for k in meta["ks"])
    prev = meta.get("prev")
    if not 0 < len(ks) <= BLOCK_TICKS or list(ks) != sorted(set(ks)):
        raise ValueError(f"a block's ticks must be 1..{BLOCK_TICKS}, ascending")
    if prev is not None and (not _int(prev) or prev >= ks[0]):
        raise ValueError(f"a block's prev must be a tick before its first, got {prev!r}")
    b = Block(ks, bytes(data))
    return b, prev, block_rows(b)


def block_rows(b: Block) -> list[tuple[int, Any]]:
    """A block's (k, row) values, decompressed and decoded (``RowDeltas``); ValueError
    if it does not hold one counter row per tick."""
    try:
        data = unpacked(b.data)
    except Exception as e:  # zstandard.ZstdError: not a frame of ours
        raise ValueError(f"not a compressed block: {e}") from e
    try:
        rows = RowDeltas.decode(data)
    except (KeyError, IndexError, TypeError, AttributeError) as e:
        raise ValueError(f"not a block of counter rows: {e!r}") from e
    if len(rows) != len(b.ks):
        raise ValueError(f"a block of {len(b.ks)} ticks holds {len(rows)} rows")
    if not all(_is_row(r) for r in rows):
        raise ValueError("a block's rows must be counter rows of integers")
    return list(zip(b.ks, rows, strict=True))


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_row(r: Any) -> bool:
    """A counter row's shape, with integers where it has numbers: a value that is not
    one (floats, strings, lists "added" as changes) never reaches the counters view."""
    return (isinstance(r, dict) and isinstance(r.get("containers"), dict)
            and all(_int(r[f]) for f in ROW_FIELDS if f in r)
            and all(isinstance(v, list | tuple) and len(v) == 2 and _int(v[0]) and _int(v[1])
                    for v in r["containers"].values()))  # fmt: skip


def rows_up_to(restored: Restored, k: int) -> Restored:
    """``restored`` without the ticks after ``k``: sealed blocks after it dropped, the
    block holding it (and later ticks) turned back into its rows up to ``k``."""
    blocks, plain = restored
    kept = [b for b in blocks if b.ks[-1] <= k]
    cut = [r for b in blocks if b.ks[0] <= k < b.ks[-1] for r in block_rows(b) if r[0] <= k]
    return kept, cut + [(j, v) for j, v in plain if j <= k]


def chain(sealed: list[tuple[Block, int | None]], start: int | None) -> list[Block]:
    """The sealed blocks linked from ``start`` (a tick: the last of the newest block in
    the chain), each to the one ending at its ``prev``, ascending."""
    by_last = {b.ks[-1]: (b, prev) for b, prev in sealed}
    out: list[Block] = []
    seen: set[int] = set()
    while start is not None and start in by_last and start not in seen:
        seen.add(start)
        b, start = by_last[start]
        out.append(b)
    return out[::-1]


@dataclass
class _Found:
    """What ``CountersTable.read`` found of one app."""

    sealed: list[tuple[Block, int | None]] = field(default_factory=list)
    has_open: bool = False
    open_prev: int | None = None
    open_rows: list[tuple[int, Any]] = field(default_factory=list)
    rows: list[tuple[int, Any]] = field(default_factory=list)  # the old format's


def _app_of(key: bytes) -> tuple[str, str]:
    app, _, rest = key.decode("utf-8", "replace").rpartition(":")
    return app, rest


class KeyIndex:
    """The table's keys by app, shared by the sites of a worker: without it each site's
    ``read`` scanned the group's whole table (53 ms a site at 1,000 sites of 10 apps,
    every site again at each rebalance). Built by one scan at the first read after
    ``invalidate``, which the worker's group calls when it settles after a rebalance (the
    tables' recovery is the only writer besides this worker's own ``write``, which keeps
    the index)."""

    def __init__(self) -> None:
        self.by_app: dict[str, set[bytes]] | None = None

    def invalidate(self) -> None:
        self.by_app = None

    def keys_of(self, table: MutableMapping[bytes, bytes], app: str) -> set[bytes]:
        if self.by_app is None:
            by_app: dict[str, set[bytes]] = {}
            for key in list(table.keys()):
                by_app.setdefault(_app_of(key)[0], set()).add(key)
            self.by_app = by_app
        return self.by_app.get(app, set())

    def add(self, app: str, key: bytes) -> None:
        if self.by_app is not None:
            self.by_app.setdefault(app, set()).add(key)

    def discard(self, app: str, key: bytes) -> None:
        if self.by_app is not None and app in self.by_app:
            self.by_app[app].discard(key)


class CountersTable:
    """The ``counters`` table of one site's apps: ``read`` once when the site is loaded,
    ``write`` each app's log at every persist (only what changed is written). ``index``:
    the worker's shared ``KeyIndex`` (None: one of its own, built at the first read)."""

    def __init__(self, table: MutableMapping[bytes, bytes], index: KeyIndex | None = None
                 ) -> None:  # fmt: skip
        self.table = table
        self.index = index if index is not None else KeyIndex()
        self.held: dict[str, Held] = {}
        self.unreadable: list[str] = []  # values ``read`` left out, with the reason

    def read(self, apps: Iterable[str]) -> dict[str, Restored]:
        """The history the table holds of each of ``apps`` (the site's), as
        ``TickLog.load`` takes it: the chain of sealed blocks (module doc) and the
        plain values newer than its last tick. A value that does not parse is left out
        (and deleted by the next write), its reason in ``unreadable``: never a crash."""
        found: dict[str, _Found] = {}
        table = self.table
        keys = [k for a in sorted(set(apps)) for k in self.index.keys_of(table, a)]
        for key in keys:
            value = table.get(key)
            if value is None:
                continue  # deleted since the index was built
            app, rest = _app_of(key)
            held = self.held.setdefault(app, {})
            held[key] = (None, len(value))
            f = found.setdefault(app, _Found())
            try:
                if rest.startswith("b"):
                    b, prev, _ = parse_block(value)
                    f.sealed.append((b, prev))
                    held[key] = (b, len(value))
                elif rest == OPEN:
                    _, f.open_prev, f.open_rows = parse_block(value)
                    f.has_open = True
                else:
                    row = json.loads(value)
                    if not _is_row(row):
                        raise ValueError("not a counter row of integers")
                    f.rows.append((int(rest), row))
            except Exception as e:  # noqa: BLE001 - any bad value (deep nesting: RecursionError)
                self.unreadable.append(f"{key!r}: {type(e).__name__}: {e}"[:300])
        out: dict[str, Restored] = {}
        for app, f in found.items():
            if f.has_open:  # the open block names the newest sealed block it follows
                start, plain = f.open_prev, f.open_rows
            else:  # none (no plain values at the last write), or the old format
                newest = max((b.ks[-1] for b, _ in f.sealed), default=None)
                start, plain = newest, f.rows
            blocks = chain(f.sealed, start)
            last = blocks[-1].ks[-1] if blocks else None
            out[app] = (blocks, [(k, v) for k, v in plain if last is None or k > last])
        return out

    def write(self, app: str, log: TickLog, budget: int) -> None:
        """Make the table hold ``log``'s open block and its newest sealed blocks within
        ``budget`` bytes (see the module's doc); only changed values are written, new
        sealed blocks before the open block that links them, deletes last."""
        held = self.held.get(app, {})
        want: Held = {}
        writes: list[tuple[bytes, bytes]] = []
        used = 0
        sealed = log.sealed()
        open_key = f"{app}:{OPEN}".encode()
        open_value: bytes | None = None
        was = held.get(open_key)
        if was is not None and was[0] == log.version:
            want[open_key] = was
            used = was[1]
        else:
            ob = log.open_block()
            if ob is not None:
                open_value = block_value(ob, sealed[-1].ks[-1] if sealed else None)
                want[open_key] = (log.version, len(open_value))
                used = len(open_value)
        for i in range(len(sealed) - 1, -1, -1):
            b = sealed[i]
            key = f"{app}:b{b.ks[0]}".encode()
            was = held.get(key)
            if was is not None and was[0] is b:
                size, value = was[1], None
            else:
                value = block_value(b, sealed[i - 1].ks[-1] if i else None)
                size = len(value)
            if used + size > budget:
                break
            used += size
            want[key] = (b, size)
            if value is not None:
                writes.append((key, value))
        table, index = self.table, self.index
        for key, value in reversed(writes):  # sealed blocks, oldest first
            table[key] = value
            index.add(app, key)
        if open_value is not None:
            table[open_key] = open_value
            index.add(app, open_key)
        for key in held.keys() - want.keys():
            if key in table:
                del table[key]
            index.discard(app, key)
        self.held[app] = want

    def bytes_held(self, app: str) -> int:
        """Bytes of the values the table holds of ``app`` (as last written or read)."""
        return sum(size for _, size in self.held.get(app, {}).values())
