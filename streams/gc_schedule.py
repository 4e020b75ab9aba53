"""When the ledger worker's full garbage collections run: right after a tick's outputs are
sent, not in the middle of closing the next one.

CPython starts a full (generation 2) collection whenever enough objects have survived
younger ones; at 1,000 containers a full collection scans the ledger's state and history
and took 54-114 ms (measured, bench/bench_ledger.py latency run), often while a tick was
being closed: they were the tail of the tick-close latency. Here automatic full
collections are switched off (the generation-2 threshold is raised out of reach; the
young generations still collect as usual) and the worker runs one itself after a
tick's outputs are sent, at most every ``interval_s`` (the time until the next
deadline is the cheapest moment it has), and from its watchdog when no tick closes.
Objects alive at start-up (modules, configuration, Faust) are frozen out of every
collection (``gc.freeze``).
docs/ledger.md, "Tick close on its deadline".
"""

from __future__ import annotations

import gc
import time

# a gen-1 collection count no worker reaches between two scheduled full collections
_NO_AUTOMATIC_FULL = 1_000_000


class FullCollections:
    """Full collections on the worker's schedule (one per process)."""

    def __init__(self, interval_s: float = 5.0) -> None:
        self.interval_s = interval_s
        self.last = time.monotonic()
        self.runs = 0

    def take_over(self) -> None:
        """Freeze what is alive now and stop automatic full collections."""
        gc.collect()
        gc.freeze()
        g0, g1, _ = gc.get_threshold()
        gc.set_threshold(g0, g1, _NO_AUTOMATIC_FULL)

    def maybe_collect(self) -> None:
        """Collect everything if the interval has passed: after a tick's outputs are sent,
        and from the worker's watchdog (every second: so also when no tick closes)."""
        now = time.monotonic()
        if now - self.last >= self.interval_s:
            gc.collect()
            self.last = time.monotonic()
            self.runs += 1


# the process's one schedule (gc is process-wide): taken over by streams.ledger's main,
# run after a tick's outputs (ledger_service) and from the watchdog (ledger_app)
FULL_COLLECTIONS = FullCollections()
