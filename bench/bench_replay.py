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

Then the pipeline engine (``--engine pipeline``, docs/replay-pipeline.md): one app ×
policy, run 0, its first ``--pipeline-ticks`` ticks on the real services (own tansu,
ledger and API processes; lock-step per tick): ticks per second of wall time, the
services' start-up not counted. ``--pipeline-ticks 0`` skips it; ``--skip-core`` runs
only it.

Usage: python bench/bench_replay.py [--runs 2] [--workers N] [--experiment FILE]
       [--pipeline-app ml] [--pipeline-policy suspend-resume] [--pipeline-ticks 300]
       [--skip-core]
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.contract.experiment import load_experiment  # noqa: E402
from replay.runs import job_args, jobs, load_inputs, run_all  # noqa: E402

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
    ap.add_argument("--pipeline-app", default=None, help="default: the first app")
    ap.add_argument("--pipeline-policy", default="suspend-resume",
                    help="a policy label of the app (default suspend-resume, else its first)")
    ap.add_argument("--pipeline-ticks", type=int, default=300)
    ap.add_argument("--skip-core", action="store_true")
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
    for workers in () if a.skip_core else (1, a.workers) if a.workers > 1 else (1,):
        c0, t0 = _cpu_s(), time.perf_counter()
        rs = run_all(exp, runs=a.runs, workers=workers, show_progress=False)
        wall, cpu = time.perf_counter() - t0, _cpu_s() - c0
        ticks = sum(r.ticks for r in rs)
        print(
            f"{workers} worker(s): {ticks} app-ticks in {wall:.1f} s wall = "
            f"{ticks / wall:.0f} app-ticks/s; CPU {cpu:.1f} s = {ticks / cpu:.0f} app-ticks "
            f"per CPU-second (includes reading the traces once per run_all)"
        )
    if a.pipeline_ticks > 0:
        bench_pipeline(exp, a.pipeline_app, a.pipeline_policy, a.pipeline_ticks)


def bench_pipeline(exp: Any, app_id: str | None, label: str, max_ticks: int) -> None:
    """Run 0 of one app x policy, cut to ``max_ticks``, through the pipeline engine."""
    from replay.pipeline import run_pipeline

    inp = load_inputs(exp)
    ai = next((i for i, x in enumerate(exp.apps) if x.id == app_id), 0)
    app = exp.apps[ai]
    if label not in app.policies:
        label = next(iter(app.policies))
    job = next(j for j in jobs(exp, inp, 1) if j.app == ai and j.label == label)
    args = job_args(exp, inp, job, None)
    # the run from a quarter of max_ticks before the job's arrival (warm-up cut short)
    keep = min(job.arrival_i, max_ticks // 4)
    cut = slice(job.arrival_i - keep, job.arrival_i - keep + max_ticks)
    args["carbon"], args["solar_w"] = args["carbon"][cut], args["solar_w"][cut]
    args["t0_us"] += (job.arrival_i - keep) * round(exp.site.tick_s * 1_000_000)
    args["arrival_i"] = keep
    print(
        f"pipeline: app {app.id} ({app.workload.type}), policy {label}, run 0, at most "
        f"{max_ticks} ticks (the job arrives at tick {keep}); own tansu + ledger + API "
        f"processes on this machine; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    t = time.perf_counter()
    r = run_pipeline(**args)
    total = time.perf_counter() - t
    print(
        f"pipeline: {r.result.ticks} ticks, {r.result.commands} commands in {r.wall_s:.1f} s "
        f"= {r.result.ticks / r.wall_s:.1f} ticks/s (lock-step; start-up and stop of the "
        f"services {total - r.wall_s:.1f} s not counted)"
    )
    steady = r.wall_s - r.first_tick_s
    if r.result.ticks > 1 and steady > 0:
        print(
            f"pipeline: after the first tick ({r.first_tick_s:.2f} s: the services' first "
            f"fetches): {(r.result.ticks - 1) / steady:.1f} ticks/s"
        )


if __name__ == "__main__":
    main()
