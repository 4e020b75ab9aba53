"""What ``ecovisor replay`` and ``ecovisor evaluate`` do (the Typer commands in
``ecovisor/cli/replay.py`` load this module by name: it sits above the services)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from ecovisor.contract.experiment import Experiment, load_experiment
from replay.engine import RunResult
from replay.report import table_md, write_report
from replay.runs import run_all

ENGINES = ("core", "pipeline")


def _run(
    exp: Experiment,
    runs: int | None,
    workers: int | None,
    out: Path | None,
    progress: bool,
    engine: str = "core",
) -> tuple[list[RunResult], float]:
    if engine not in ENGINES:
        raise ValueError(f"engine {engine!r}: one of {', '.join(ENGINES)}")
    t = time.perf_counter()
    if engine == "pipeline":  # the real services, one run after the other (docs/replay-pipeline.md)
        from replay.pipeline_runs import results_of, run_all_pipeline

        rs = results_of(run_all_pipeline(exp, runs=runs, out=out, show_progress=progress))
    else:
        rs = run_all(exp, runs=runs, workers=workers, out=out, show_progress=progress)
    return rs, time.perf_counter() - t


def replay(
    path: str, runs: int | None, engine: str, out: str | None, workers: int | None, progress: bool
) -> str:
    """Run the experiment; the summary table (Markdown) as text. With ``out``: also
    ``results.jsonl`` (one line per run, with its per-tick series) and the ledgers."""
    exp = load_experiment(path)
    outp = Path(out) if out else None
    rs, wall = _run(exp, runs, workers, outp, progress, engine)
    if outp is not None:
        outp.mkdir(parents=True, exist_ok=True)
        with (outp / "results.jsonl").open("w") as f:
            for r in rs:
                f.write(json.dumps(asdict(r), separators=(",", ":")) + "\n")
    ticks = sum(r.ticks for r in rs)
    return (
        table_md(exp, rs) + f"\n{len(rs)} runs, {ticks} app-ticks in {wall:.1f} s "
        f"({ticks / wall:.0f} app-ticks/s)\n"
    )


def evaluate(
    path: str,
    runs: int | None,
    out: str,
    workers: int | None,
    progress: bool,
    engine: str = "core",
) -> str:
    exp = load_experiment(path)
    outp = Path(out)
    rs, wall = _run(exp, runs, workers, outp, progress, engine)
    files = write_report(exp, rs, outp)
    ticks = sum(r.ticks for r in rs)
    return (
        table_md(exp, rs)
        + f"\n{len(rs)} runs, {ticks} app-ticks in {wall:.1f} s\n"
        + "wrote "
        + ", ".join(str(f) for f in files)
        + f" and {outp / 'ledgers'}/\n"
    )
