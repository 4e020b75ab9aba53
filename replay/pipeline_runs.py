"""An experiment's run matrix through the pipeline engine (``--engine pipeline``): the
runs one after the other (each drives the real services in lock-step; parallel runs
would only share the same cores), on one embedded broker started for them all (or a
given bootstrap), each run on its own site with its own ledger and API processes. A
progress bar over runs and over the current run's ticks on stderr."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ecovisor.contract.experiment import Experiment
from replay.engine import RunResult
from replay.pipeline import PipelineRun, run_pipeline
from replay.pipeline_stack import PipelineStack
from replay.runs import job_args, jobs, load_inputs


def run_all_pipeline(
    exp: Experiment,
    runs: int | None = None,
    out: Path | None = None,
    show_progress: bool = True,
    bootstrap: str | None = None,
) -> list[PipelineRun]:
    """Every (app, policy, run) of the experiment, in job order; the services' logs in
    ``out/pipeline/`` when ``out`` is given (else a temporary folder)."""
    inp = load_inputs(exp)
    js = jobs(exp, inp, runs or exp.runs)
    dt = exp.site.tick_s
    per_run = round((exp.arrivals.warmup_h + exp.arrivals.max_runtime_h) * 3600 / dt)
    with tempfile.TemporaryDirectory(prefix="ecovisor-pipeline-") as tmp:
        base = out / "pipeline" if out is not None else Path(tmp)
        with PipelineStack(base, bootstrap) as broker, _Bars(show_progress, len(js)) as bars:
            boot = broker.start_broker()
            results = []
            for j in js:
                a = job_args(exp, inp, j, out)
                bars.new_run(f"{a['app'].id}/{j.label} run {j.run}", per_run)
                wd = base / f"{a['app'].id}-{j.label}-run{j.run:02d}"
                results.append(run_pipeline(**a, bootstrap=boot, workdir=wd,
                                            progress=bars.tick))  # fmt: skip
                bars.run_done()
    return results


def results_of(runs: list[PipelineRun]) -> list[RunResult]:
    return [r.result for r in runs]


class _Bars:
    """Two rich progress bars on stderr (runs; ticks of the current run), or none."""

    def __init__(self, show: bool, total: int) -> None:
        self.show, self.total = show, total
        self.bar: Any = None
        self.runs: Any = None
        self.ticks: Any = None

    def __enter__(self) -> _Bars:
        if self.show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(TextColumn("{task.description}"), BarColumn(),
                                MofNCompleteColumn(), TimeElapsedColumn(),
                                console=Console(stderr=True))  # fmt: skip
            self.bar.start()
            self.runs = self.bar.add_task("runs", total=self.total)
        return self

    def new_run(self, name: str, max_ticks: int) -> None:
        if self.bar is not None:
            if self.ticks is not None:
                self.bar.remove_task(self.ticks)
            self.ticks = self.bar.add_task(f"ticks {name}", total=max_ticks)

    def tick(self, n: int = 1) -> None:
        if self.bar is not None and self.ticks is not None:
            self.bar.advance(self.ticks, n)

    def run_done(self) -> None:
        if self.bar is not None:
            self.bar.advance(self.runs)

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()
