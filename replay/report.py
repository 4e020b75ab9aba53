"""The report folder of ``ecovisor evaluate``: ``table.md`` (policy × metric, mean ± std
over runs), ``runs.csv`` (one row per run), ``ledgers/<app>/<policy>/run-NN.csv`` (every
ledger entry, the columns of ``ecovisor export --csv``; written by the engine) and PNG
plots per app of the first run: carbon intensity, solar, power, battery level and
cores (workers) over time, one line per policy (a web service: replicas and p95
response time in place of solar and battery; its SLO columns in the table)."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

from ecovisor.contract.experiment import Experiment
from replay.engine import RunResult
from replay.runs import summary

PLOT_BEFORE_ARRIVAL_S = 12 * 3600.0


def _pm(mean: float, std: float, digits: int) -> str:
    if math.isnan(mean):
        return "n/a"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def table_md(exp: Experiment, results: list[RunResult]) -> str:
    rows = list(summary(results))
    base: dict[str, dict[str, Any]] = {}
    for r in rows:
        base.setdefault(r["app"], r)  # the first policy of each app is the reference
    out = [
        f"# {exp.name}: {results and max(r.run for r in results) + 1} runs per policy",
        "",
        "Mean ± std over the runs that finished (population std); carbon is the "
        "ledger's cumulative total of the app, energy its containers' (the job's "
        "demand). Relative columns compare the means with the app's first policy. "
        "SLO violations: ticks whose p95 response time exceeded the SLO or that dropped "
        "requests, and the requests dropped (% of offered), for web services; n/a for "
        "the batch jobs (no SLO).",
        "",
        "| app | policy | finished | carbon g | energy Wh | runtime h | carbon vs ref | "
        "energy vs ref | runtime vs ref | SLO violations (ticks) | dropped % |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = base[r["app"]]
        dc = (r["carbon_g"] / b["carbon_g"] - 1) * 100 if b["carbon_g"] else float("nan")
        rt = r["runtime_h"] / b["runtime_h"] if b["runtime_h"] else float("nan")
        de = (r["energy_wh"] / b["energy_wh"] - 1) * 100 if b["energy_wh"] else float("nan")
        dc_s = "n/a" if math.isnan(dc) else f"{dc:+.1f} %"
        de_s = "n/a" if math.isnan(de) else f"{de:+.1f} %"
        rt_s = "n/a" if math.isnan(rt) else f"{rt:.2f}×"
        out.append(
            f"| {r['app']} | {r['policy']} | {r['finished']}/{r['runs']} | "
            f"{_pm(r['carbon_g'], r['carbon_g_std'], 3)} | "
            f"{_pm(r['energy_wh'], r['energy_wh_std'], 2)} | "
            f"{_pm(r['runtime_h'], r['runtime_h_std'], 2)} | {dc_s} | {de_s} | {rt_s} | "
            f"{_pm(r['slo_violations'], r['slo_violations_std'], 1)} | "
            f"{_pm(r['dropped_pct'], r['dropped_pct_std'], 3)} |"
        )
    return "\n".join(out) + "\n"


def runs_csv(results: list[RunResult], path: Path) -> None:
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(
            [
                "app",
                "policy",
                "run",
                "arrival",
                "finished",
                "runtime_h",
                "carbon_g",
                "energy_wh",
                "ticks",
                "commands",
                "slo_violations",
                "served",
                "dropped",
                "replica_starts",
            ]
        )
        for r in results:
            w.writerow(
                [
                    r.app,
                    r.label,
                    r.run,
                    r.arrival,
                    int(r.finished),
                    f"{r.runtime_h:.4f}",
                    f"{r.carbon_g:.6f}",
                    f"{r.energy_wh:.6f}",
                    r.ticks,
                    r.commands,
                    "" if r.slo_violations is None else r.slo_violations,
                    f"{r.served:.1f}",
                    f"{r.dropped:.1f}",
                    r.replica_starts,
                ]
            )


def plots(results: list[RunResult], out: Path, run: int = 0) -> list[Path]:
    """One PNG per app: the run ``run`` of every policy, five panels over time."""
    import matplotlib

    matplotlib.use("Agg")
    from datetime import UTC, datetime

    import matplotlib.pyplot as plt

    files = []
    apps = sorted({r.app for r in results}, key=[r.app for r in results].index)
    for app in apps:
        rs = [r for r in results if r.app == app and r.run == run]
        if not rs:
            continue
        fig, axes = plt.subplots(5, 1, figsize=(10, 11), sharex=True)
        panels = [
            ("intensity", "carbon intensity\ngCO2eq/kWh"),
            ("solar_w", "solar W"),
            ("power_w", "app power W"),
            ("battery_wh", "battery Wh"),
            ("cores", "running cores\n(workers)"),
        ]
        if any(r.slo_violations is not None for r in rs):  # web: replicas, p95
            panels[1] = ("replicas", "replicas")
            panels[3] = ("p95_ms", "p95 response\ntime ms")
        arrival = datetime.fromisoformat(rs[0].arrival)
        since = arrival.timestamp() - PLOT_BEFORE_ARRIVAL_S
        longest = max(rs, key=lambda r: len(r.series["t"]))
        for ax, (key, ylabel) in zip(axes, panels, strict=True):
            for r in [longest] if key == "intensity" else rs:
                ts = r.series["t"]
                keep = [j for j, x in enumerate(ts) if x >= since]
                t = [datetime.fromtimestamp(ts[j], UTC) for j in keep]
                ys = [r.series[key][j] for j in keep]
                if key == "intensity":
                    ax.plot(t, ys, color="k", lw=1)
                else:
                    ax.step(t, ys, where="post", lw=1.2, label=r.label, alpha=0.8)
            ax.set_ylabel(ylabel)
            ax.grid(alpha=0.3)
        axes[2].legend(loc="upper right", fontsize=8)
        for ax in axes:
            ax.axvline(arrival, color="grey", ls="--", lw=0.8)
        axes[0].set_title(
            f"{app}, run {run}: job arrives {rs[0].arrival[:16]} (dashed); "
            f"from {PLOT_BEFORE_ARRIVAL_S / 3600:g} h before"
        )
        fig.autofmt_xdate()
        fig.tight_layout()
        p = out / f"{app}-run{run:02d}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        files.append(p)
    return files


def write_report(exp: Experiment, results: list[RunResult], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table_md(exp, results))
    runs_csv(results, out / "runs.csv")
    return [out / "table.md", out / "runs.csv", *plots(results, out)]
