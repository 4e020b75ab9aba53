"""Replay engine throughput (``--engine core``): app-ticks per second.

One app-tick = one application's tick through the whole loop: workload model, simulated
containers, telemetry into ``SiteLedger``, the tick closed by the ledger (entry,
notifications), the policy runner's decision and its commands back into the ledger.

Measured on the §5.1 experiment (experiments/paper-5.1.yaml: 9 app × policy pairs per
run, 300 s ticks, 48 h warm-up before each job): wall time and CPU time of the process
(1 worker, so the CPU time is the engine's, not the machine's other load), then the
same runs over all cores (wall time only).

``--experiment`` benches another experiment file, e.g. the web service of
experiments/right-sizing-web.yaml (its policies also read the app metrics back from the
ledger every tick, and the offline baseline solves its DP once per run).

Usage: python bench/bench_replay.py [--runs 2] [--workers N] [--experiment FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.contract.experiment import load_experiment  # noqa: E402
from replay.runs import load_inputs, run_all  # noqa: E402

EXPERIMENT = ROOT / "experiments" / "paper-5.1.yaml"


def _cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    c = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime + c.ru_utime + c.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--experiment", type=Path, default=EXPERIMENT)
    a = ap.parse_args()
    exp = load_experiment(a.experiment)
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    pairs = sum(len(x.policies) for x in exp.apps)
    print(
        f"workload: {a.experiment.name}, {a.runs} runs x {pairs} app/policy pairs, "
        f"tick {exp.site.tick_s:g} s, warm-up {exp.arrivals.warmup_h:g} h, one app per site"
    )
    t = time.perf_counter()
    load_inputs(exp)
    print(f"traces read and resampled: {time.perf_counter() - t:.2f} s (not counted below)")
    for workers in (1, a.workers) if a.workers > 1 else (1,):
        c0, t0 = _cpu_s(), time.perf_counter()
        rs = run_all(exp, runs=a.runs, workers=workers, show_progress=False)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        ticks = sum(r.ticks for r in rs)
        print(
            f"{workers} worker(s): {ticks} app-ticks in {wall:.1f} s wall = "
            f"{ticks / wall:.0f} app-ticks/s; CPU {cpu:.1f} s = {ticks / cpu:.0f} app-ticks "
            f"per CPU-second (includes reading the traces once per run_all)"
        )


if __name__ == "__main__":
    main()
