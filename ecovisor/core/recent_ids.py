"""The services' de-duplication by id with bounded memory: the last ``limit`` ids seen.

The actuators see one command id per command, the battery path one setpoint id per tick,
for as long as they run: a plain set of every id grows without bound (the battery path
alone about 100 MB per million ticks). Duplicates are retries and redeliveries, which
come soon after the original, so remembering the most recent ids is enough; a duplicate
older than the last ``limit`` ids is no longer recognised.
"""

from __future__ import annotations

from collections import OrderedDict


class RecentIds:
    """The last ``limit`` distinct ids added (oldest first sight forgotten first);
    ``id in ids`` and ``ids.add(id)`` in O(1)."""

    DEFAULT_LIMIT = 100_000

    def __init__(self, limit: int | None = None) -> None:
        self.limit = self.DEFAULT_LIMIT if limit is None else limit
        if self.limit < 1:
            raise ValueError(f"RecentIds needs room for at least one id, got {self.limit}")
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, id_: object) -> bool:
        return id_ in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, id_: str) -> None:
        self._ids[id_] = None
        while len(self._ids) > self.limit:
            self._ids.popitem(last=False)
