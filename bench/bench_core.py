"""Benchmark of the pure ledger core: app-ticks accounted per second.

Workload: one site, Δt = 1 s, 1 / 10 / 100 apps, 3 containers each, every app with a
battery share and a grid share; solar, intensity and demand vary every tick; a quarter
of the apps charge from the grid (Rc > 0) and half have a carbon-rate limit on a
container; excess solar is offered to other apps; the site grid limit binds on some
ticks; the physical battery reading is given (drift check). Inputs are built before
timing. "site_step" is the core alone; "+ JSON" adds serialising the tick's result to
JSON (what the stream processor writes to Kafka) and the state to JSON (what a table
snapshot stores).

Run: python bench/bench_core.py [--seconds S]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecovisor.core.settings import apply_settings  # noqa: E402
from ecovisor.core.shares import AppShare, ExcessSolarPolicy, SiteShape  # noqa: E402
from ecovisor.core.state import CarbonRateLimit, SetBatteryChargeRate, SetCarbonRate, SiteTickInput
from ecovisor.core.tick import initial_site_state, site_step  # noqa: E402


def make_site(n_apps: int):
    shape = SiteShape(
        tick_s=1.0,
        solar_nameplate_w=20.0 * n_apps,
        battery_capacity_wh=20.0 * n_apps,
        grid_limit_w=12.0 * n_apps,
        excess_solar=ExcessSolarPolicy.offer,
    )
    shares = {
        f"app{i:03d}": AppShare(solar_fraction=0.99 / n_apps, battery_capacity_wh=20.0,
                                grid_w=10.0, initial_soc=0.6)
        for i in range(n_apps)
    }
    state = initial_site_state(shape, shares, site="bench")
    apps = dict(state.apps)
    for i, a in enumerate(sorted(apps)):
        if i % 4 == 0:
            apps[a] = apply_settings(apps[a], SetBatteryChargeRate(watts=2.0))
        if i % 2 == 0:
            apps[a] = apply_settings(apps[a], SetCarbonRate(
                container="c0", limit=CarbonRateLimit(rate_mg_per_s=0.5)))
    return shape, shares, state.model_copy(update={"apps": apps})


def make_inputs(shares, n_ticks: int, n_apps: int) -> list[SiteTickInput]:
    out = []
    for k in range(n_ticks):
        phase = k % 120
        out.append(SiteTickInput(
            k=k,
            t_start=1_700_000_000.0 + k,
            site_solar_mj=(phase * 150 + 7 * k % 1000) * n_apps,  # 0 .. ~18 W per app
            intensity_g_per_kwh=200.0 + (k * 37 % 300),
            demand_mj={
                a: {f"c{j}": 1_000 + (k * (i + 3) * (j + 1) * 7919) % 4_000 for j in range(3)}
                for i, a in enumerate(shares)
            },
            platform_mj=500 * n_apps,
            physical_battery_mj=None if k % 10 else 0,
        ))
    return out


def bench(n_apps: int, seconds: float, with_json: bool) -> tuple[float, int]:
    shape, shares, state = make_site(n_apps)
    n_ticks = max(20, int(4000 / n_apps))
    inputs = make_inputs(shares, n_ticks, n_apps)
    done = 0
    t0 = time.perf_counter()
    while True:
        st = state
        for inp in inputs:
            st, res = site_step(shape, shares, st, inp)
            if with_json:
                res.model_dump_json()
                st.model_dump_json()
            done += 1
            if time.perf_counter() - t0 >= seconds:
                elapsed = time.perf_counter() - t0
                return done * n_apps / elapsed, done


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seconds", type=float, default=3.0, help="per measurement")
    args = p.parse_args()
    print("Ecovisor core benchmark: app-ticks per second (site_step, one process)")
    print(f"machine: {platform.platform()}; {platform.machine()}; os.cpu_count()={os.cpu_count()}; "
          f"Python {platform.python_version()}")
    print("workload: Δt 1 s, 3 containers per app, battery + grid share per app, 1/4 apps "
          "with Rc > 0, 1/2 with a carbon-rate limit, excess solar offered, site grid "
          "limit binding on some ticks")
    print(f"{'apps/site':>10} {'site_step':>14} {'+ JSON out':>14}")
    for n in (1, 10, 100):
        core, _ = bench(n, args.seconds, with_json=False)
        js, _ = bench(n, args.seconds, with_json=True)
        print(f"{n:>10} {core:>14,.0f} {js:>14,.0f}")


if __name__ == "__main__":
    main()
