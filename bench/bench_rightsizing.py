"""Benchmark of right-sizing (ecovisor/core/rightsizing.py).

Workload: the seed's cost model (f(λ) = λ·max{1/(1−λ) − 1.5, 0} + 1, C = 1,
β_on = β_off = 6), N = 100 servers, T = 10,000 slots of the seed-example "fluctuating"
load (i.i.d. uniform in [1, N − 1], seed 0). Timed, best of --repeat runs, one core:

* the offline optimum (O(T·N) DP: prefix/suffix minima, then the backtrack);
* the same DP with the naive O(N²) transition (every previous count, as a matrix), to
  show what the O(N) transition saves; both must give the same cost;
* building the T × (N+1) cost matrix from f;
* LCP, per slot (its two prefix problems advanced by one slot each);
* receding horizon control with a 24-slot window, per slot;
* T = 500, N = 1000: both programmes again, where the O(N) transition pays.

Run: python bench/bench_rightsizing.py [--slots 10000] [--servers 100] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecovisor.core.rightsizing import (  # noqa: E402
    SEED_COST,
    LazyCapacityProvisioning,
    offline_optimum,
    operating_costs,
    receding_horizon,
    seed_example_loads,
)


def best_of(repeat: int, fn: Callable[[], object]) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def naive_optimum_cost(g: np.ndarray, b_on: float, b_off: float) -> float:
    """The DP with the O(N²) transition (cost only): min over every previous count."""
    m = g.shape[1]
    h = np.arange(m)
    d = h[:, None] - h[None, :]  # d[new, old]
    switch = b_on * np.maximum(d, 0) + b_off * np.maximum(-d, 0)
    prev = np.full(m, np.inf)
    prev[0] = 0.0
    for row in g:
        prev = (prev[None, :] + switch).min(axis=1) + row
    return float((prev + b_off * h).min())  # then every server off


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--slots", type=int, default=10_000)
    ap.add_argument("--servers", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    t, n = a.slots, a.servers

    print(
        f"machine: {platform.platform()}; {platform.processor() or platform.machine()}; "
        f"os.cpu_count()={os.cpu_count()}; Python {platform.python_version()}; "
        f"numpy {np.__version__}"
    )
    print(f"workload: T = {t} slots, N = {n} servers, seed f, beta_on = beta_off = 6")
    loads = seed_example_loads("fluctuating", n=n, t=t, seed=0)

    tb, g = best_of(a.repeat, lambda: operating_costs(SEED_COST, loads, n))
    print(f"cost matrix (T x (N+1) from f):        {tb * 1e3:8.1f} ms")

    td, s = best_of(a.repeat, lambda: offline_optimum(g, 6.0, 6.0))
    print(f"offline optimum, O(T*N) DP + backtrack: {td * 1e3:8.1f} ms   cost {s.cost:.6f}")  # type: ignore[union-attr]

    tn, c = best_of(1, lambda: naive_optimum_cost(g, 6.0, 6.0))
    same = abs(c - s.cost) <= 1e-9 * s.cost  # type: ignore[union-attr,operator]
    print(f"same DP, naive O(T*N^2) transition:    {tn * 1e3:8.1f} ms   cost {c:.6f} "
          f"({'equal' if same else 'DIFFERENT'})")  # fmt: skip

    def run_lcp() -> None:
        alg = LazyCapacityProvisioning(n, 12.0)
        for row in g:
            alg.step(row)

    tl, _ = best_of(a.repeat, run_lcp)
    print(f"LCP:                                   {tl / t * 1e6:8.1f} us per slot")

    w, tr_slots = 24, min(t, 2000)
    tr, _ = best_of(1, lambda: receding_horizon(g[:tr_slots], w, 6.0, 6.0))
    print(f"RHC, window {w} (first {tr_slots} slots):  {tr / tr_slots * 1e6:8.1f} us per slot")

    # where the O(N) transition pays: many servers
    t2, n2 = 500, 1000
    g2 = operating_costs(SEED_COST, seed_example_loads("fluctuating", n=n2, t=t2), n2)
    td2, s2 = best_of(a.repeat, lambda: offline_optimum(g2, 6.0, 6.0))
    tn2, c2 = best_of(1, lambda: naive_optimum_cost(g2, 6.0, 6.0))
    same2 = abs(c2 - s2.cost) <= 1e-9 * s2.cost  # type: ignore[union-attr,operator]
    print(f"T = {t2}, N = {n2}: O(T*N) DP {td2 * 1e3:.1f} ms, naive O(T*N^2) {tn2 * 1e3:.1f} ms "
          f"({'equal' if same2 else 'DIFFERENT'} cost)")  # fmt: skip
    if not (same and same2):
        raise SystemExit("the O(T*N) and O(T*N^2) programmes disagree")


if __name__ == "__main__":
    main()
