"""Lower bounds on the runtime of the §5.3 and §5.4 experiments, per run: what no
schedule with the same resources can beat, beside which the replayed clairvoyant
baselines (heuristics, ``offline: true``; replay/solar_baselines.py) are judged.
docs/evaluation.md, "Beyond the paper: the achievable runtime".

* spark (paper-5.3.yaml): the fluid zero-grid bound (``spark_runtime_bound``): the job's
  energy at one busy worker per base-second, drawn as early as solar and the battery
  (from its level at the arrival, after the warm-up) allow, at most 10 workers at once;
* job (paper-5.4.yaml): ``caps_runtime_bound`` within the caps' envelope (each tick's
  solar, or the tasks x --min-cap-w floors of the app's offline ``solar_following_caps``
  below it: 10 x 0.05 W in the shipped file), the job's seeded rounds known;
* stragglers: every round at least its largest task's work at full speed (a replica
  copies a straggler at normal speed), plus its I/O.

    python experiments/clairvoyant_bounds.py [--runs 10]

Needs ../shared/data beside the clone (the experiments' relative trace paths).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.contract.experiment import (  # noqa: E402
    AppSpec,
    Experiment,
    ParallelJobSpec,
    SparkSpec,
    load_experiment,
    site_config,
)
from ecovisor.core.parallel_job import ParallelJob  # noqa: E402
from ecovisor.core.units import power_to_mj  # noqa: E402
from ecovisor.core.virtual_battery import battery_limits, initial_stored_mj  # noqa: E402
from replay.engine import build_policy, make_workload  # noqa: E402
from replay.runs import jobs, load_inputs  # noqa: E402
from replay.solar_baselines import (  # noqa: E402
    Battery,
    caps_runtime_bound,
    round_works,
    spark_runtime_bound,
)


def bound_h(exp: Experiment, app: AppSpec, solar_w: list[float], arrival_i: int,
            seed: int) -> float:  # fmt: skip
    """The runtime bound (h) of one run; ``solar_w`` the solar the ledger books per tick
    of the run (the trace one tick late, none in the first tick)."""
    w, dt = app.workload, exp.site.tick_s
    cfg = site_config(exp, app)
    model = cfg.site.nodes[0].model()
    core_w = model.power_at_busy_cores(1.0) - model.idle_power_w
    if isinstance(w, SparkSpec):
        share = cfg.shares()[app.id]
        lim = battery_limits(share, cfg.site.shape)
        bat = Battery(lim, power_to_mj(share.discharge_limit_w, dt))
        level = initial_stored_mj(share, lim)
        for s in solar_w[:arrival_i]:  # the warm-up: no load, solar charges the battery
            level, _ = bat.tick(level, power_to_mj(s, dt), 0)
        worker_w = model.power_at_busy_cores(w.worker_cores) - model.idle_power_w
        work_j = w.n_tasks * w.task_s * worker_w
        return spark_runtime_bound(bat, level, solar_w[arrival_i:], dt, work_j,
                                   w.max_workers * worker_w) / 3600  # fmt: skip
    assert isinstance(w, ParallelJobSpec)
    job = make_workload(app, seed=seed)
    assert isinstance(job, ParallelJob)
    if w.straggler_p > 0:
        return sum(max(r) + w.io_s for r in round_works(job, slowed=False)) / 3600
    task_w = w.base_cores * core_w
    # the floors of the app's offline solar_following_caps (its --min-cap-w, as the
    # replayed baseline reads it)
    spec = next(s for s in app.policies.values()
                if s.offline and s.policy == "solar_following_caps")  # fmt: skip
    floor_w = w.tasks * build_policy(spec).min_cap
    cap = [max(s, floor_w) / task_w for s in solar_w[arrival_i:]]
    return caps_runtime_bound(round_works(job), w.io_s, cap, dt) / 3600


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=None)
    a = ap.parse_args()
    print("| experiment | app | runtime bound h (mean ± std) | per run |")
    print("|---|---|---|---|")
    for name in ("paper-5.3.yaml", "paper-5.4.yaml"):
        exp = load_experiment(ROOT / "experiments" / name)
        inp = load_inputs(exp)
        n = round((exp.arrivals.warmup_h + exp.arrivals.max_runtime_h) * 3600 / exp.site.tick_s)
        for ai, app in enumerate(exp.apps):
            first_label = next(iter(app.policies))
            hs = []
            for j in jobs(exp, inp, a.runs or exp.runs):
                if j.app != ai or j.label != first_label:
                    continue
                run = [0.0, *inp.solar_w[j.first : j.first + n - 1]]  # booked a tick late
                hs.append(bound_h(exp, app, run, j.arrival_i, exp.arrivals.seed + j.run))
            per = ", ".join(f"{h:.3f}" for h in hs)
            print(f"| {name} | {app.id} | {statistics.fmean(hs):.2f} ± "
                  f"{statistics.pstdev(hs):.2f} | {per} |")  # fmt: skip


if __name__ == "__main__":
    main()
