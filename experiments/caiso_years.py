"""Paper §5.1 year by year: experiments/paper-5.1.yaml replayed with its window set to
each CAISO year (2021, 2022, 2023) in turn, everything else equal (same seed, so the
same arrival *positions* within each year), and per year the carbon of every policy
relative to carbon-agnostic, and the share of the achievable saving it gets: (agnostic −
policy) / (agnostic − clairvoyant), the clairvoyant being the offline suspend-resume
(replay/baselines.py). docs/evaluation.md, "Across the three CAISO years".

    python experiments/caiso_years.py [--runs 10] [--workers N]

Needs ../shared/data beside the clone (the experiment's relative trace paths).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.contract.experiment import Window, load_experiment  # noqa: E402
from replay.runs import run_all  # noqa: E402

YEARS = (2021, 2022, 2023)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--workers", type=int, default=None)
    a = ap.parse_args()
    base = load_experiment(ROOT / "experiments" / "paper-5.1.yaml")
    print(f"paper-5.1.yaml, {a.runs} runs per policy and year; carbon vs carbon-agnostic "
          "(mean of the runs' totals); 'of achievable': (agnostic - policy) / "
          "(agnostic - clairvoyant)\n")  # fmt: skip
    print("| year | app | policy | carbon g | vs agnostic | of achievable | runtime h |")
    print("|---|---|---|---|---|---|---|")
    for y in YEARS:
        # the year, less the experiment's last days (the trace ends on Dec 31)
        w = Window(start=datetime(y, 1, 1, tzinfo=UTC), end=datetime(y, 12, 31, tzinfo=UTC))
        exp = base.model_copy(update={"window": w})
        carbon: dict[tuple[str, str], list[float]] = defaultdict(list)
        runtime: dict[tuple[str, str], list[float]] = defaultdict(list)
        for r in run_all(exp, runs=a.runs, workers=a.workers, show_progress=False):
            carbon[(r.app, r.label)].append(r.carbon_g)
            runtime[(r.app, r.label)].append(r.runtime_h)
        for app in [x.id for x in exp.apps]:
            ref = statistics.mean(carbon[(app, "carbon-agnostic")])
            best = statistics.mean(carbon[(app, "clairvoyant")])
            for label in exp.apps[[x.id for x in exp.apps].index(app)].policies:
                c = statistics.mean(carbon[(app, label)])
                share = (ref - c) / (ref - best) if ref > best else float("nan")
                hours = statistics.mean(runtime[(app, label)])
                print(f"| {y} | {app} | {label} | {c:.3f} | {100 * (c / ref - 1):+.1f} % | "
                      f"{100 * share:.0f} % | {hours:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
