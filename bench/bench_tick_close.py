"""Per-tick step at 1,000 containers: ms per tick (p50 / p99) of the pure core
(``site_step``) and of the ledger worker's ``SiteLedger.close`` end to end (tick clock
close, ``site_step``, entry JSON, tick notification and events, counter rows, setpoint).

Workloads (one site, Δt = 1 s, offer policy, site grid limit binding on some ticks, a
quarter of the apps with Rc > 0, half with a carbon-rate limit on one container):
10 apps x 100 containers and 100 apps x 10 containers. ``site_step``: the tick inputs
are built before timing. ``close``: every container's sample (and a solar and a carbon
sample) of tick k is offered to the clock before timing; only ``close()`` is timed.

The containers' carbon histories grow over the first ~250 ticks at Δt = 1 s (later ticks
cost more); 200 ticks per row by default. Reports wall and this process's CPU time: on
a shared machine the CPU figures are the steadier.

Run: python bench/bench_tick_close.py [--ticks 200]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ecovisor.contract.config_file import parse_config  # noqa: E402
from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry, SolarTelemetry  # noqa: E402
from ecovisor.core.settings import apply_settings  # noqa: E402
from ecovisor.core.shares import AppShare, ExcessSolarPolicy, SiteShape  # noqa: E402
from ecovisor.core.state import (  # noqa: E402
    CarbonRateLimit,
    SetBatteryChargeRate,
    SetCarbonRate,
    SiteState,
    SiteTickInput,
)
from ecovisor.core.tick import initial_site_state, site_step  # noqa: E402
from ecovisor.core.tick_clock import to_us  # noqa: E402
from streams.ledger_worker import SiteLedger  # noqa: E402

WORKLOADS = ((10, 100), (100, 10))  # (apps, containers per app): 1,000 containers
T0 = datetime(2024, 1, 1, tzinfo=UTC)


def _with_settings(state: SiteState) -> SiteState:
    apps = dict(state.apps)
    for i, a in enumerate(sorted(apps)):
        if i % 4 == 0:
            apps[a] = apply_settings(apps[a], SetBatteryChargeRate(watts=2.0))
        if i % 2 == 0:
            apps[a] = apply_settings(apps[a], SetCarbonRate(
                container=f"{a}-c0", limit=CarbonRateLimit(rate_mg_per_s=0.5)))
    return state.model_copy(update={"apps": apps})


def core_site(n_apps: int, per_app: int) -> tuple[SiteShape, dict[str, AppShare], SiteState]:
    n = n_apps * per_app  # ~1.25 W per container; the site grid limit binds on dark ticks
    shape = SiteShape(tick_s=1.0, solar_nameplate_w=2.0 * n, battery_capacity_wh=2.0 * n,
                      grid_limit_w=1.2 * n, excess_solar=ExcessSolarPolicy.offer)
    shares = {f"app{i:03d}": AppShare(solar_fraction=0.99 / n_apps,
                                      battery_capacity_wh=2.0 * per_app,
                                      grid_w=1.5 * per_app, initial_soc=0.6)
              for i in range(n_apps)}
    return shape, shares, _with_settings(initial_site_state(shape, shares, site="bench"))


def core_inputs(apps: list[str], per_app: int, n_ticks: int) -> list[SiteTickInput]:
    n_apps = len(apps)
    scale = 1_000_000 // (n_apps * per_app)  # ~1 W per container on average
    return [SiteTickInput(
        k=k, t_start=1_700_000_000.0 + k,
        site_solar_mj=(k % 120 * 20 + 7 * k % 1000) * n_apps * per_app,  # 0 .. ~3 W each
        intensity_g_per_kwh=200.0 + (k * 37 % 300),
        demand_mj={a: {f"{a}-c{j}": scale * (1 + (k * (i + 3) * (j + 1) * 7919) % 4) // 2
                       for j in range(per_app)} for i, a in enumerate(apps)},
        platform_mj=500 * n_apps,
        physical_battery_mj=None if k % 10 else 0,
    ) for k in range(n_ticks)]


Timing = tuple[list[float], list[float]]  # (wall ms, CPU ms of this process) per tick


def bench_core(n_apps: int, per_app: int, n_ticks: int) -> Timing:
    shape, shares, state = core_site(n_apps, per_app)
    inputs = core_inputs(sorted(shares), per_app, n_ticks)
    wall, cpu = [], []
    for inp in inputs:
        t, c = time.perf_counter(), time.process_time()
        state, _ = site_step(shape, shares, state, inp)
        wall.append((time.perf_counter() - t) * 1e3)
        cpu.append((time.process_time() - c) * 1e3)
    return wall, cpu


def site_yaml(n_apps: int, per_app: int) -> str:
    n = n_apps * per_app
    apps = ""
    for a in range(n_apps):
        app = f"app{a:03d}"
        apps += (f"  - id: {app}\n    token: bench-token-{a:04d}\n"
                 f"    shares: {{solar_fraction: {0.99 / n_apps}, battery_capacity_wh: "
                 f"{2.0 * per_app}, grid_w: {1.5 * per_app}, initial_soc: 0.6}}\n"
                 "    containers:\n")
        for c in range(per_app):
            apps += (f"      - {{id: {app}-c{c}, node: n1, "
                     f"backend: {{type: process, cgroup: b/{app}-{c}}}}}\n")
    return f"""schema_version: 1
site:
  id: bench
  shape: {{tick_s: 1.0, solar_nameplate_w: {2.0 * n}, battery_capacity_wh: {2.0 * n},
          grid_limit_w: {1.2 * n}, excess_solar: offer}}
  grace_s: 0.5
  nodes: [{{id: n1, cores: 1024}}]
apps:
{apps}"""


def bench_close(n_apps: int, per_app: int, n_ticks: int) -> Timing:
    led = SiteLedger.new(parse_config(site_yaml(n_apps, per_app)))
    led.state = _with_settings(led.state)
    apps = sorted(led.shares)
    n = n_apps * per_app
    # samples of tick k at k + 0.5 s (k = 0 is every counter's baseline)
    ticks = []
    joules = dict.fromkeys((f"{a}-c{j}" for a in apps for j in range(per_app)), 0.0)
    for k in range(n_ticks + 1):
        t = T0 + timedelta(seconds=k + 0.5)
        msgs = []
        for i, a in enumerate(apps):
            for j in range(per_app):
                c = f"{a}-c{j}"
                joules[c] += (1 + (k * (i + 3) * (j + 1) * 7919) % 4) / 2
                msgs.append(ContainerTelemetry(site="bench", time=t, source=f"p-{c}", seq=k,
                                               app=a, container=c, cpu_s=0.0,
                                               energy_j=round(joules[c], 3)))
        msgs.append(SolarTelemetry(site="bench", time=t, source="sol", seq=k,
                                   power_w=(k % 120) * 0.02 * n,
                                   energy_j=sum((x % 120) * 0.02 * n for x in range(k))))
        msgs.append(CarbonTelemetry(site="bench", time=t, source="co2", seq=k,
                                    intensity_g_per_kwh=200.0 + (k * 37 % 300)))
        ticks.append(msgs)
    wall, cpu = [], []
    for k, msgs in enumerate(ticks):
        for m in msgs:
            led.clock.offer(m)
        now = to_us((T0 + timedelta(seconds=k + 1.5)).timestamp())
        t, c = time.perf_counter(), time.process_time()
        outs, _ = led.close(now)
        if k:  # tick 0 only sets baselines
            wall.append((time.perf_counter() - t) * 1e3)
            cpu.append((time.process_time() - c) * 1e3)
    return wall, cpu


def _pct(ms: list[float], q: float) -> float:
    s = sorted(ms)
    return s[min(len(s) - 1, int(q * len(s)))]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--ticks", type=int, default=200)
    args = p.parse_args()
    print("Per-tick step at 1,000 containers: ms per tick")
    print(f"machine: {platform.platform()}; {platform.machine()}; os.cpu_count()={os.cpu_count()}; "
          f"Python {platform.python_version()}; load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"workload: Δt 1 s, offer policy, site grid limit, 1/4 apps Rc > 0, 1/2 apps a "
          f"carbon-rate limit; {args.ticks} ticks per row")
    print("wall ms per tick (p50, p99) and this process's CPU ms per tick (p50, mean): on a "
          "shared machine the CPU figures are the steadier")
    print(f"{'apps x containers':>18} {'what':>16} {'p50':>8} {'p99':>8} {'CPU p50':>8} "
          f"{'CPU mean':>8}")
    for n_apps, per_app in WORKLOADS:
        for name, fn in (("site_step", bench_core), ("SiteLedger.close", bench_close)):
            wall, cpu = fn(n_apps, per_app, args.ticks)
            print(f"{f'{n_apps} x {per_app}':>18} {name:>16} {statistics.median(wall):>8.2f} "
                  f"{_pct(wall, 0.99):>8.2f} {statistics.median(cpu):>8.2f} "
                  f"{statistics.fmean(cpu):>8.2f}")


if __name__ == "__main__":
    main()
