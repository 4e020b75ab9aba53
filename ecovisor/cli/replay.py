"""``ecovisor replay`` and ``ecovisor evaluate``: run an experiment file (docs/
evaluation.md) over real traces with the core engine (or the pipeline engine: the real
services, docs/replay-pipeline.md). The core engine drives the services'
pure parts (the ledger's state machine, the policies, the actuators' bookkeeping), so it
lives above them in the top-level ``replay`` package and is loaded here by module name
at run time (like ``ecovisor config check`` loads the collectors): not an import the
layer contracts see."""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer

from ecovisor.cli.options import fail
from ecovisor.contract.config_file import ConfigError

RunsOpt = Annotated[
    int | None, typer.Option("--runs", min=1, max=1000, help="runs (default: the file's)")
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", min=1, max=512, help="processes (default: CPU cores)")
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="no progress bar")]
EngineOpt = Annotated[
    str,
    typer.Option(
        "--engine",
        help="core (in-process, parallel) or pipeline (the real ledger, API and policy "
        "runner on the embedded broker, event-time clock, one run at a time)",
    ),
]


def _impl() -> Any:
    return importlib.import_module("replay.cli")


def replay(
    experiment: Annotated[str, typer.Argument(help="experiment file (YAML)")],
    runs: RunsOpt = None,
    engine: EngineOpt = "core",
    out: Annotated[str | None, typer.Option("--out", help="folder for results and ledgers")] = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Replay an experiment: every app x policy x run; print the summary table."""
    try:
        typer.echo(_impl().replay(experiment, runs, engine, out, workers, not quiet), nl=False)
    except (ConfigError, ValueError) as e:
        raise fail(str(e), 2) from None
    except RuntimeError as e:  # the pipeline engine's services failed (their logs named)
        raise fail(str(e), 1) from None


def evaluate(
    experiment: Annotated[str, typer.Argument(help="experiment file (YAML)")],
    out: Annotated[str, typer.Option("--out", help="report folder")],
    runs: RunsOpt = None,
    workers: WorkersOpt = None,
    quiet: QuietOpt = False,
    engine: EngineOpt = "core",
) -> None:
    """Run an experiment and write a report: table.md, runs.csv, ledger CSVs, PNG plots."""
    try:
        typer.echo(_impl().evaluate(experiment, runs, out, workers, not quiet, engine), nl=False)
    except (ConfigError, ValueError) as e:
        raise fail(str(e), 2) from None
    except RuntimeError as e:
        raise fail(str(e), 1) from None
