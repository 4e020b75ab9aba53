"""The ledger's view history in memory (streams/view_history.py): one site in process,
``--containers`` containers in 10 apps on nodes of 1,000, one version 2 node batch per
node and tick and a carbon intensity sample per tick (bench/ledger_workload.py), closed
tick by tick as the worker does (entries and notifications rendered, then the view
history compacted). The telemetry is built first; every 50 ticks: the process's RSS,
what the view history holds (plain values, compressed blocks) and the time compacting
took; and what the ``counters`` table holds of it, written as the worker writes it at a
persist (streams/counters_table.py, each app's budget): bytes per container and the
ticks it covers. ``--noise 0.3``: each container's power varies by up to 30 % a tick
(the regular counters compress far better than measured ones).

Usage: python bench/bench_view_history.py [--containers 1000] [--ticks 500] [--noise 0]
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ledger_workload import batch_workload, site_yaml  # noqa: E402

from ecovisor.contract.config_file import parse_config  # noqa: E402
from ecovisor.contract.telemetry import TELEMETRY_ADAPTER  # noqa: E402
from ecovisor.core.tick_clock import to_us  # noqa: E402
from streams.counters_table import CountersTable  # noqa: E402
from streams.ledger_worker import SiteLedger  # noqa: E402
from streams.view_history import row_log  # noqa: E402

EVERY = 50  # ticks between two reports


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGESIZE") / 1e6


def held(led: SiteLedger) -> tuple[int, int]:
    """(values not yet in a block, bytes of the compressed blocks) of the view history."""
    sizes = [log.footprint() for logs in (led.entries, led.counters) for log in logs.values()]
    return sum(p for p, _ in sizes), sum(b for _, b in sizes)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=500)
    ap.add_argument("--noise", type=float, default=0.0)
    a = ap.parse_args()
    n = a.containers
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}")  # fmt: skip
    print(f"workload: one site of {n} containers in 10 apps, nodes of 1,000, 1 s ticks, "
          f"{a.ticks} ticks, a carbon sample per tick, power noise {a.noise}; "
          "in process")  # fmt: skip
    t0 = 1_700_000_000.0
    cfg = parse_config(site_yaml(n, "127.0.0.1:1", 1, 1, Path("/tmp/unused"), 0.5, "vh", 1000))
    led = SiteLedger.new(cfg)
    print(f"history_ticks: {led.history_ticks}")
    msgs = batch_workload(n, 1000, a.ticks, t0, "vh", cfg.site.limits.max_message_bytes,
                          noise=a.noise)  # fmt: skip
    table = CountersTable({})
    gc.collect()
    k = None
    compact_s = 0.0
    base = None
    for _, raw in msgs:
        b = TELEMETRY_ADAPTER.validate_json(raw)
        t_us = to_us(b.time.timestamp())
        if b.kind == "carbon":
            led.ingest(b, t_us, None)
            continue
        led.ingest_batch(b, t_us, None)
        if k == t_us // 1_000_000:
            continue
        k = t_us // 1_000_000
        outs, _ = led.close(t_us)
        for o in outs:
            o.value  # noqa: B018  (rendered, as when sent)
        c = time.perf_counter()
        led.compact_history()
        compact_s += time.perf_counter() - c
        ticks = led.clock.next_close - int(t0)
        if ticks and ticks % EVERY == 0:
            gc.collect()
            r = rss_mb()
            base = r if base is None else base
            plain, blocks = held(led)
            print(f"tick {ticks}: RSS {r:.0f} MB ({r - base:+.0f} since tick {EVERY}), "
                  f"view history {sum(map(len, led.entries.values()))} entries, "
                  f"{plain} values plain, {blocks / 1e6:.1f} MB in blocks; compaction "
                  f"{1000 * compact_s / ticks:.2f} ms a tick", flush=True)  # fmt: skip
            for app, log in led.counters.items():
                table.write(app, log, led.table_budget(app))
            kept = []
            for blocks, plain in CountersTable(table.table).read(led.counters).values():
                copy = row_log(10**6)
                copy.load(blocks, plain)
                kept.append(len(copy))
            per = sum(map(len, table.table.values())) / n
            print(f"  counters table: {per:.0f} B per container (budget "
                  f"{led.table_budget('app0') / (n // 10):.0f}), ticks kept "
                  f"{min(kept)}-{max(kept)} of {len(led.counters['app0'])}", flush=True)


if __name__ == "__main__":
    main()
