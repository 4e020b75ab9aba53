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

A block's value: ``{"ks":[...]}`` (its ticks, ascending), a newline, then zstd of the
rows' compact JSON joined by newlines.

Bound: per app, the open block and the newest sealed blocks that fit ``budget`` bytes
together (the first that does not fit ends the copy: what is kept is contiguous). So the
table holds at most ``max(budget, the open block)`` bytes an app, whatever the counters
compress to; the ticks it covers vary with that (docs/ledger.md, "The counters table
within a budget"). Write order keeps a crash between two writes gap-free: new sealed
blocks, then the open block, then the deletes (``TickLog.load`` reads what is left).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, MutableMapping
from typing import Any

from pydantic_core import to_json

from streams.view_history import Block, TickLog, unpacked

OPEN = "open"

# What the table holds of one app: key -> (token, bytes of the value). The token says
# whether the value is still the log's: a sealed block is the ``Block`` object itself
# (a block re-sealed after a tick closed again is a new object), the open block the log's
# ``version`` when written; None: read back from the table, not yet matched.
Held = dict[bytes, tuple[Any, int]]
# What ``read`` gives back per app: the sealed blocks and the plain (k, row) values
Restored = tuple[list[Block], list[tuple[int, Any]]]


def block_value(b: Block) -> bytes:
    return to_json({"ks": b.ks}) + b"\n" + b.data


def parse_block(value: bytes) -> Block:
    head, _, data = value.partition(b"\n")
    ks = tuple(int(k) for k in json.loads(head)["ks"])
    if not ks or list(ks) != sorted(set(ks)):
        raise ValueError("a block's ticks must be ascending and not empty")
    return Block(ks, bytes(data))


def block_rows(b: Block) -> list[tuple[int, Any]]:
    """A block's (k, row) values, decompressed and parsed."""
    try:
        vals = unpacked(b.data).split(b"\n")
    except Exception as e:  # zstandard.ZstdError: not a frame of ours
        raise ValueError(f"not a compressed block: {e}") from e
    if len(vals) != len(b.ks):
        raise ValueError(f"a block of {len(b.ks)} ticks holds {len(vals)} rows")
    return [(k, json.loads(v)) for k, v in zip(b.ks, vals, strict=True)]


class CountersTable:
    """The ``counters`` table of one site's apps: ``read`` once when the site is loaded,
    ``write`` each app's log at every persist (only what changed is written)."""

    def __init__(self, table: MutableMapping[bytes, bytes]) -> None:
        self.table = table
        self.held: dict[str, Held] = {}
        self.unreadable: list[str] = []  # values ``read`` left out, with the reason

    def read(self, apps: Iterable[str]) -> dict[str, Restored]:
        """The blocks and rows the table holds of ``apps`` (the site's), as ``TickLog.load``
        takes them. A value that does not parse is left out (and deleted by the next
        write), its reason in ``unreadable``: never a crash."""
        wanted = set(apps)
        out: dict[str, Restored] = {}
        for key, value in list(self.table.items()):
            app, _, rest = key.decode("utf-8", "replace").rpartition(":")
            if app not in wanted:
                continue  # another site's (the table is the group's)
            held = self.held.setdefault(app, {})
            held[key] = (None, len(value))
            blocks, plain = out.setdefault(app, ([], []))
            try:
                if rest.startswith("b"):
                    b = parse_block(value)
                    blocks.append(b)
                    held[key] = (b, len(value))
                elif rest == OPEN:
                    plain.extend(block_rows(parse_block(value)))
                else:
                    plain.append((int(rest), json.loads(value)))
            except (ValueError, KeyError, TypeError) as e:
                self.unreadable.append(f"{key!r}: {e}")
        return out

    def write(self, app: str, log: TickLog, budget: int) -> None:
        """Make the table hold ``log``'s open block and its newest sealed blocks within
        ``budget`` bytes (see the module's doc); only changed values are written."""
        held = self.held.get(app, {})
        want: Held = {}
        writes: list[tuple[bytes, bytes]] = []
        used = 0
        open_key = f"{app}:{OPEN}".encode()
        open_value: bytes | None = None
        prev = held.get(open_key)
        if prev is not None and prev[0] == log.version:
            want[open_key] = prev
            used = prev[1]
        else:
            ob = log.open_block()
            if ob is not None:
                open_value = block_value(ob)
                want[open_key] = (log.version, len(open_value))
                used = len(open_value)
        for b in reversed(log.sealed()):
            key = f"{app}:b{b.ks[0]}".encode()
            prev = held.get(key)
            if prev is not None and prev[0] is b:
                size, value = prev[1], None
            else:
                value = block_value(b)
                size = len(value)
            if used + size > budget:
                break
            used += size
            want[key] = (b, size)
            if value is not None:
                writes.append((key, value))
        table = self.table
        for key, value in reversed(writes):  # sealed blocks, oldest first
            table[key] = value
        if open_value is not None:
            table[open_key] = open_value
        for key in held.keys() - want.keys():
            if key in table:
                del table[key]
        self.held[app] = want

    def bytes_held(self, app: str) -> int:
        """Bytes of the values the table holds of ``app`` (as last written or read)."""
        return sum(size for _, size in self.held.get(app, {}).values())
