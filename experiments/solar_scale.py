"""Paper §5.4, Fig. 10(c) as a sweep: experiments/paper-5.4.yaml's parallel job (app
``job``: static vs dynamic solar-following power caps) replayed with the solar array
scaled to each fraction of its nameplate, everything else equal (same seed, same
arrivals), printing per scale the runtime of both policies and the dynamic policy's
runtime improvement. docs/evaluation.md, "§5.4 over the solar scale".

    python experiments/solar_scale.py [--runs 5] [--scales 0.5,0.75,1,1.5,2] [--workers N]

Needs ../shared/data beside the clone (the experiment's relative trace paths).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.contract.experiment import load_experiment  # noqa: E402
from replay.runs import run_all  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--scales", default="0.5,0.75,1,1.5,2")
    ap.add_argument("--workers", type=int, default=None)
    a = ap.parse_args()
    base = load_experiment(ROOT / "experiments" / "paper-5.4.yaml")
    job = [x for x in base.apps if x.id == "job"]
    nameplate = base.site.solar_nameplate_w
    print(f"paper-5.4.yaml app 'job', {a.runs} runs per policy and scale; nameplate "
          f"{nameplate:g} W x scale; runtime h, mean of the runs that finished\n")  # fmt: skip
    print("| solar scale | nameplate W | static caps h | dynamic caps h | dynamic vs static |")
    print("|---|---|---|---|---|")
    for scale in (float(x) for x in a.scales.split(",")):
        site = base.site.model_copy(update={"solar_nameplate_w": nameplate * scale})
        exp = base.model_copy(update={"site": site, "apps": job})
        hours: dict[str, list[float]] = {}
        for r in run_all(exp, runs=a.runs, workers=a.workers, show_progress=False):
            if r.finished:
                hours.setdefault(r.label, []).append(r.runtime_h)
        st = statistics.mean(hours["static-caps"]) if hours.get("static-caps") else None
        dy = statistics.mean(hours["dynamic-caps"]) if hours.get("dynamic-caps") else None
        rel = f"{100 * (dy / st - 1):+.1f} %" if st and dy else "n/a"
        print(f"| {scale:g} | {nameplate * scale:g} | {st or float('nan'):.2f} | "
              f"{dy or float('nan'):.2f} | {rel} |")  # fmt: skip


if __name__ == "__main__":
    main()
