"""Paper §5.4, Fig. 10(c) as a sweep: experiments/paper-5.4.yaml's parallel job (app
``job``: static vs dynamic solar-following power caps) replayed with the solar array
scaled to each fraction of its nameplate, everything else equal (same seed, same
arrivals), printing per scale the runtime of both policies and the dynamic policy's
runtime improvement. docs/evaluation.md, "§5.4 over the solar scale".

    python experiments/solar_scale.py [--runs 5] [--scales 0.5,0.75,1,1.5,2] [--workers N]
        [--policy-args "--min-cap-w 0.5"] [--workload compute_jitter=0,io_s=0]
        [--tick-s 60] [--details] [--ideal]

The other options test explanations of the trend and change nothing by default:
``--policy-args`` is appended to both policies' arguments (after the file's own, so it
wins: the file ships ``--min-cap-w 0.05``; ``--policy-args "--min-cap-w 0.5"`` gives
the policy's default floor), ``--workload`` sets fields of the job's workload,
``--tick-s`` the site's tick. ``--details`` adds columns over the job's ticks (arrival
to finish): the share of the static policy's ticks with the solar below the caps' floors
(tasks x ``--min-cap-w``: every static cap is then its floor and the floors beyond the
solar come from the grid) and at or above the tasks' power at full speed (no cap binds);
the shares of the job's rounds finished in such ticks; the energy drawn beyond the solar
(grid) Wh; the per-run runtime change (mean ± standard error); and the hours with the
solar at or above the floors (the runtime without the nights).
``--ideal`` runs nothing: one round at a constant supply (nameplate x scale), no lag and
no floors, the dynamic policy's water-filling and the optimum vs equal caps.

Needs ../shared/data beside the clone (the experiment's relative trace paths).
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
from datetime import datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.contract.experiment import Experiment, load_experiment  # noqa: E402
from ecovisor.core.power_model import LinearPowerModel  # noqa: E402
from replay.engine import RunResult, build_policy  # noqa: E402
from replay.runs import run_all  # noqa: E402

POLICIES = ("static-caps", "dynamic-caps")


def job_experiment(base: Experiment, a: argparse.Namespace) -> Experiment:
    """paper-5.4.yaml with app ``job`` and its two cap policies only, and the options."""
    job = next(x for x in base.apps if x.id == "job")
    extra = shlex.split(a.policy_args)
    pols = {k: v.model_copy(update={"args": [*v.args, *extra]}) for k, v in job.policies.items()
            if k in POLICIES}  # fmt: skip
    w = job.workload
    for kv in filter(None, a.workload.split(",")):
        k, _, v = kv.partition("=")
        if k not in type(w).model_fields or k == "type":
            raise SystemExit(f"--workload: {k!r} is not a field of the parallel job")
        w = type(w).model_validate({**w.model_dump(), k: v})
    site = base.site
    if a.tick_s is not None:
        site = site.model_copy(update={"tick_s": a.tick_s})
    job = job.model_copy(update={"policies": pols, "workload": w})
    return base.model_copy(update={"site": site, "apps": [job]})


def full_speed_w(exp: Experiment) -> float:
    """The job's tasks' power at full speed (all base cores busy; the node's model)."""
    w, node = exp.apps[0].workload, exp.site.node
    return w.tasks * w.base_cores * LinearPowerModel(
        cores=node.cores, idle_w=node.idle_w, max_w=node.max_w).w_per_core


def details(exp: Experiment, r: RunResult, floors_w: float) -> dict[str, float]:
    """Over the job's ticks (arrival to finish): the shares of ticks with the solar below
    the caps' floors and at or above the tasks' power at full speed, the shares of its
    rounds finished in such ticks, the energy drawn beyond the solar (grid), Wh, and the
    hours with the solar at or above the floors (the runtime without the nights)."""
    full_w = full_speed_w(exp)
    s = r.series
    t = np.array(s["t"])
    job = t > datetime.fromisoformat(r.arrival).timestamp()
    sol, pw = np.array(s["solar_w"])[job], np.array(s["power_w"])[job]
    done = np.diff(np.concatenate([[0.0], np.array(s["progress"])]))[job]
    floor, full = sol < floors_w, sol >= full_w
    return {
        "ticks_floor": float(np.mean(floor)),
        "ticks_full": float(np.mean(full)),
        "rounds_floor": float(done[floor].sum() / max(done.sum(), 1e-12)),
        "rounds_full": float(done[full].sum() / max(done.sum(), 1e-12)),
        "grid_wh": float(np.clip(pw - sol, 0.0, None).sum() * exp.site.tick_s / 3600),
        "sun_h": float(np.sum(~floor) * exp.site.tick_s / 3600),
    }


def ideal_change(exp: Experiment, supply_w: float, rounds: int = 20_000) -> tuple[float, float]:
    """Runtime changes (%) over equal caps for one round at a constant ``supply_w``, no
    lag and no floors (seeded draws of the round's work): the dynamic policy's water-
    filling (the unfinished tasks share the supply equally, each at most its full-speed
    power) and the optimum knowing the work (every task finishes together, if the
    full-speed limit allows: max(total work x task W / supply, largest work))."""
    w = exp.apps[0].workload
    task_w = full_speed_w(exp) / w.tasks
    rng = np.random.default_rng(0)
    work = np.sort(w.compute_s * (1 + w.compute_jitter * (2 * rng.random((rounds, w.tasks)) - 1)))
    static = work[:, -1] / min(1.0, supply_w / w.tasks / task_w) + w.io_s
    fill = np.full(rounds, w.io_s)
    done = np.zeros(rounds)
    for k in range(w.tasks):  # task k finishes next; tasks - k are still computing
        fill += (work[:, k] - done) / min(1.0, supply_w / (w.tasks - k) / task_w)
        done = work[:, k]
    best = np.maximum(work.sum(axis=1) * task_w / supply_w, work[:, -1]) + w.io_s
    return 100 * (fill.mean() / static.mean() - 1), 100 * (best.mean() / static.mean() - 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scales", default="0.5,0.75,1,1.5,2")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--policy-args", default="", help="appended to both policies' args")
    ap.add_argument("--workload", default="", help="k=v,... fields of the job's workload")
    ap.add_argument("--tick-s", type=float, default=None, help="the site's tick, s")
    ap.add_argument("--details", action="store_true", help="solar, floor and grid columns")
    ap.add_argument("--ideal", action="store_true", help="only the constant-supply bound")
    a = ap.parse_args()
    base = job_experiment(load_experiment(ROOT / "experiments" / "paper-5.4.yaml"), a)
    nameplate = base.site.solar_nameplate_w
    w = base.apps[0].workload
    floors_w = w.tasks * build_policy(base.apps[0].policies["dynamic-caps"]).min_cap
    full_w = full_speed_w(base)
    if a.ideal:
        print("| solar scale | constant supply W | water-filling vs equal | optimum vs equal |")
        print("|---|---|---|---|")
        for scale in (float(x) for x in a.scales.split(",")):
            fill, best = ideal_change(base, nameplate * scale)
            print(f"| {scale:g} | {nameplate * scale:g} | {fill:+.1f} % | {best:+.1f} % |")
        return
    print(f"paper-5.4.yaml app 'job', {a.runs} runs per policy and scale; nameplate "
          f"{nameplate:g} W x scale; runtime h, mean of the runs that finished\n")  # fmt: skip
    if a.policy_args or a.workload or a.tick_s is not None:
        print(f"policy args +{shlex.split(a.policy_args)}; workload {w.model_dump()}; "
              f"tick {base.site.tick_s:g} s\n")  # fmt: skip
    head = "| solar scale | nameplate W | static caps h | dynamic caps h | dynamic vs static |"
    if a.details:
        head += (f" static's ticks: solar < floors ({floors_w:g} W) / >= full speed"
                 f" ({full_w:g} W) |"
                 " rounds done at solar < floors, static / dynamic |"
                 " rounds done at solar >= full speed, static / dynamic |"
                 " grid Wh, static / dynamic | per-run change, mean ± s.e. |"
                 " hours at solar >= floors, static / dynamic (change) |")  # fmt: skip
    print(head)
    print("|---" * head.count(" |") + "|")
    for scale in (float(x) for x in a.scales.split(",")):
        site = base.site.model_copy(update={"solar_nameplate_w": nameplate * scale})
        exp = base.model_copy(update={"site": site})
        hours: dict[str, list[float]] = {}
        det: dict[str, list[dict[str, float]]] = {}
        runs: dict[str, dict[int, float]] = {}  # per policy: run -> runtime h (all runs)
        for r in run_all(exp, runs=a.runs, workers=a.workers, show_progress=False):
            if r.finished:
                hours.setdefault(r.label, []).append(r.runtime_h)
            if a.details:
                det.setdefault(r.label, []).append(details(exp, r, floors_w))
                runs.setdefault(r.label, {})[r.run] = r.runtime_h
        st = statistics.mean(hours["static-caps"]) if hours.get("static-caps") else None
        dy = statistics.mean(hours["dynamic-caps"]) if hours.get("dynamic-caps") else None
        rel = f"{100 * (dy / st - 1):+.1f} %" if st and dy else "n/a"
        row = (f"| {scale:g} | {nameplate * scale:g} | {st or float('nan'):.2f} | "
               f"{dy or float('nan'):.2f} | {rel} |")  # fmt: skip
        if a.details:
            m = {(p, k): statistics.mean(d[k] for d in det[p]) for p in POLICIES for k in det[p][0]}
            s_, d_ = POLICIES
            ch = [100 * (runs[d_][i] / runs[s_][i] - 1) for i in runs[s_]]
            se = statistics.stdev(ch) / len(ch) ** 0.5 if len(ch) > 1 else float("nan")
            row += (f" {m[s_, 'ticks_floor']:.0%} / {m[s_, 'ticks_full']:.0%} |"
                    f" {m[s_, 'rounds_floor']:.0%} / {m[d_, 'rounds_floor']:.0%} |"
                    f" {m[s_, 'rounds_full']:.0%} / {m[d_, 'rounds_full']:.0%} |"
                    f" {m[s_, 'grid_wh']:.0f} / {m[d_, 'grid_wh']:.0f} |"
                    f" {statistics.mean(ch):+.1f} ± {se:.1f} % |"
                    f" {m[s_, 'sun_h']:.1f} / {m[d_, 'sun_h']:.1f}"
                    f" ({100 * (m[d_, 'sun_h'] / m[s_, 'sun_h'] - 1):+.1f} %) |")  # fmt: skip
            left = 2 * a.runs - sum(len(v) for v in hours.values())
            row += f" {left} runs unfinished" if left else ""
        print(row, flush=True)


if __name__ == "__main__":
    main()
