"""Cost of one scrape of the ledger's /metrics (streams/ledger_metrics.py), in process:
the bench site of bench_ledger.py (10 apps, N containers), a few ticks closed through
the real ``SiteLedger``, then the registry rendered ``--scrapes`` times.

Usage: python bench/bench_metrics.py [--containers 1000] [--ticks 5] [--scrapes 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ledger_workload import site_yaml, workload  # noqa: E402

from ecovisor.contract.config_file import parse_config  # noqa: E402
from ecovisor.contract.telemetry import TELEMETRY_ADAPTER  # noqa: E402
from ecovisor.core.tick_clock import to_us  # noqa: E402
from streams.ledger_metrics import exposition, ledger_registry  # noqa: E402
from streams.ledger_worker import SiteLedger  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=5)
    ap.add_argument("--scrapes", type=int, default=50)
    a = ap.parse_args()
    cfg = parse_config(site_yaml(a.containers, "127.0.0.1:1", 1, 1, Path("/tmp"), 0.5, "bench"))
    led = SiteLedger.new(cfg)
    t0 = 1_700_000_000.0
    for _, raw in workload(a.containers, a.ticks, 1, t0, "bench"):
        t = TELEMETRY_ADAPTER.validate_json(raw)
        led.ingest(t, to_us(t.time.timestamp()), to_us(t0))
    led.close(to_us(t0 + a.ticks + 1))
    reg, _ = ledger_registry(lambda: led, "bench", 0.5)
    times, size = [], 0
    for _ in range(a.scrapes):
        s = time.perf_counter()
        body = exposition(reg)
        times.append(time.perf_counter() - s)
        size = len(body)
    lines = [x for x in body.decode().splitlines() if x and not x.startswith("#")]
    print(json.dumps({
        "containers": a.containers,
        "series": len(lines),
        "bytes": size,
        "scrape_ms_median": round(statistics.median(times) * 1000, 2),
        "scrape_ms_max": round(max(times) * 1000, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
