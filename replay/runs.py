"""An experiment's run matrix (app × policy × run) through the core engine, in parallel
across CPU cores, with a progress bar; results summarised as mean ± std per app and
policy. docs/evaluation.md."""

from __future__ import annotations

import os
import statistics
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ecovisor.contract.experiment import Experiment, WebSpec
from ecovisor.core.units import US_PER_S
from replay import traces
from replay.engine import RunResult, arrival_tick, run_one


@dataclass(frozen=True)
class Job:
    app: int
    label: str
    run: int
    t0_us: int  # the simulation's first tick (the warm-up's start)
    first: int  # index of t0's tick in the window's tick arrays
    arrival_i: int  # the job's arrival, ticks after t0


@dataclass
class Inputs:
    """The traces of the whole window at Δt (ticks from the window's aligned start);
    per web app (by index) its requests/s per tick from the arrival, one run long."""

    t0_us: int
    carbon: np.ndarray
    solar_w: np.ndarray
    loads: dict[int, np.ndarray] = field(default_factory=dict)


def load_inputs(exp: Experiment) -> Inputs:
    dt = exp.site.tick_s
    start, n = traces.window_ticks(exp)
    secs, g = traces.read_carbon(exp.traces.carbon)
    if start < secs[0] or start + n * dt > secs[-1] + 3600:
        raise ValueError(
            f"the window is not covered by the carbon trace ({secs[0]:.0f}..{secs[-1]:.0f} epoch s)"
        )
    carbon = traces.hold(secs, g, start, n, dt)
    solar = traces.window_solar(exp)
    loads = {}
    horizon = round(exp.arrivals.max_runtime_h * 3600 / dt)
    for ai, app in enumerate(exp.apps):
        w = app.workload
        if isinstance(w, WebSpec):
            loads[ai] = traces.load_rates(w.trace, w.peak_rps, horizon, dt)
    return Inputs(round(start * US_PER_S), carbon, solar, loads)


def jobs(exp: Experiment, inp: Inputs, runs: int) -> list[Job]:
    dt = exp.site.tick_s
    warm = round(exp.arrivals.warmup_h * 3600 / dt)
    horizon = round(exp.arrivals.max_runtime_h * 3600 / dt)
    n = len(inp.carbon)
    out = []
    for r in range(runs):
        arr = arrival_tick(exp, r, warm, n - horizon)
        for ai, app in enumerate(exp.apps):
            for label in app.policies:
                start_us = inp.t0_us + (arr - warm) * round(dt * US_PER_S)
                out.append(Job(ai, label, r, start_us, arr - warm, warm))
    return out


_CTX: dict[str, Any] = {}


def _init(exp: Experiment, inp: Inputs, out: Path | None) -> None:
    _CTX.update(exp=exp, inp=inp, out=out)


def job_args(exp: Experiment, inp: Inputs, job: Job, out: Path | None) -> dict[str, Any]:
    """The arguments of one run (``run_one``, or the pipeline engine's ``run_pipeline``)."""
    app = exp.apps[job.app]
    dt = exp.site.tick_s
    n = round((exp.arrivals.warmup_h + exp.arrivals.max_runtime_h) * 3600 / dt)
    sl = slice(job.first, job.first + n)
    csv = out / "ledgers" / app.id / job.label / f"run-{job.run:02d}.csv" if out else None
    return {"exp": exp, "app": app, "label": job.label, "run": job.run,
            "carbon": inp.carbon[sl], "solar_w": inp.solar_w[sl], "t0_us": job.t0_us,
            "arrival_i": job.arrival_i, "ledger_csv": csv,
            "load_rps": inp.loads.get(job.app)}  # fmt: skip


def _run(job: Job) -> RunResult:
    return run_one(**job_args(_CTX["exp"], _CTX["inp"], job, _CTX["out"]))


def run_all(
    exp: Experiment,
    runs: int | None = None,
    workers: int | None = None,
    out: Path | None = None,
    show_progress: bool = True,
) -> list[RunResult]:
    """Every (app, policy, run) of the experiment; results in job order."""
    inp = load_inputs(exp)
    js = jobs(exp, inp, runs or exp.runs)
    workers = max(1, min(workers or os.cpu_count() or 1, len(js)))
    results: dict[int, RunResult] = {}
    with _progress(show_progress, len(js)) as advance:
        if workers == 1:
            _init(exp, inp, out)
            for i, j in enumerate(js):
                results[i] = _run(j)
                advance()
        else:
            with ProcessPoolExecutor(workers, initializer=_init, initargs=(exp, inp, out)) as ex:
                futs = {ex.submit(_run, j): i for i, j in enumerate(js)}
                for f in as_completed(futs):
                    results[futs[f]] = f.result()
                    advance()
    return [results[i] for i in range(len(js))]


class _progress:
    """A rich progress bar over finished runs (stderr), or nothing."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total
        self.bar: Any = None

    def __enter__(self) -> Any:
        if not self.show:
            return lambda: None
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(
            TextColumn("runs"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            transient=False,
            console=Console(stderr=True),
        )
        self.bar.start()
        task = self.bar.add_task("runs", total=self.total)
        return lambda: self.bar.advance(task)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()


METRICS = ("carbon_g", "energy_wh", "runtime_h")
WEB_METRICS = ("slo_violations", "dropped_pct")


def dropped_pct(r: RunResult) -> float:
    offered = r.served + r.dropped
    return 100 * r.dropped / offered if offered > 0 else 0.0


def summary(results: list[RunResult]) -> Iterator[dict[str, Any]]:
    """Per (app, policy), in first-seen order: n, finished, and mean/std of each metric
    (over runs that finished)."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.app, r.label), []).append(r)
    for (app, label), rs in groups.items():
        done = [r for r in rs if r.finished]
        row: dict[str, Any] = {"app": app, "policy": label, "runs": len(rs), "finished": len(done)}
        for m in METRICS:
            xs = [getattr(r, m) for r in done]
            row[m] = statistics.fmean(xs) if xs else float("nan")
            row[m + "_std"] = statistics.pstdev(xs) if len(xs) > 1 else 0.0
        web = [r for r in done if r.slo_violations is not None]
        for m in WEB_METRICS:  # web services only (nan: no SLO)
            xs = [float(r.slo_violations or 0) if m == "slo_violations" else dropped_pct(r)
                  for r in web]  # fmt: skip
            row[m] = statistics.fmean(xs) if xs else float("nan")
            row[m + "_std"] = statistics.pstdev(xs) if len(xs) > 1 else 0.0
        yield row
