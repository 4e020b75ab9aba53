"""System-level static carbon rate limit (paper §5.2, the baseline of carbon budgeting):
cap the app's carbon at a fixed rate at all times, 20 mg CO2/s by default. The allowed
grid power at intensity I is rate x 3600 / I W; with the next tick's solar on top it is
the app's power allowance, split equally over its containers as power caps
(application-agnostic), or turned into a number of workers (--template or containers,
--worker-w W each). The rate is also registered with set_carbon_rate so the ecovisor
tracks and notifies it.

    python -m policies.static_rate_limit --app X [--rate-mg-s 20] [--template T --worker-w W]
"""

from __future__ import annotations

import argparse
import math

from policies.base import (
    Action,
    AppView,
    Observation,
    SetCarbonRate,
    SetContainerPowercap,
    grid_w_for_rate,
    main,
    running_containers,
    set_workers,
)

DEFAULT_RATE_MG_S = 20.0


def quantize(w: float, step: float = 0.05) -> float:
    """Round a cap down to a step so small carbon wiggles do not re-send caps."""
    return math.floor(w / step + 1e-9) * step


class StaticRateLimit:
    name = "static_rate_limit"

    def __init__(
        self,
        rate_mg_per_s: float = DEFAULT_RATE_MG_S,
        workers: bool = False,
        template: str | None = None,
        worker_w: float = 2.0,
        max_workers: int = 8,
        min_cap_w: float = 0.05,
    ) -> None:
        if rate_mg_per_s < 0 or worker_w <= 0:
            raise ValueError("--rate-mg-s must be >= 0 and --worker-w > 0")
        self.rate, self.workers, self.template = rate_mg_per_s, workers or bool(template), template
        self.worker_w, self.max_workers, self.min_cap_w = worker_w, max_workers, min_cap_w
        self.app = AppView(app="", containers=())

    def setup(self, app: AppView) -> list[Action]:
        self.app = app
        n = max(1, len(app.containers))
        return [SetCarbonRate(c, self.rate / n) for c in app.containers]

    def allowance_w(self, obs: Observation) -> float:
        return obs.data.next_solar_w + grid_w_for_rate(self.rate, obs.data.grid_carbon_g_per_kwh)

    def decide(self, obs: Observation) -> list[Action]:
        allow = self.allowance_w(obs)
        if self.workers:
            limit = self.max_workers if self.template else len(self.app.containers)
            n = limit if math.isinf(allow) else min(limit, int(allow // self.worker_w))
            return set_workers(self.app, n, self.template, running_containers(self.app, obs.data))
        running = sorted(running_containers(self.app, obs.data)) or list(self.app.containers)
        if not running:
            return []
        if math.isinf(allow):
            return [SetContainerPowercap(c, None) for c in running]
        cap = max(self.min_cap_w, quantize(allow / len(running)))
        return [SetContainerPowercap(c, cap) for c in running]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rate-mg-s", type=float, default=DEFAULT_RATE_MG_S, help="mg CO2/s")
    p.add_argument("--workers", action="store_true", help="limit workers instead of caps")
    p.add_argument("--template", help="workers are replicas of this template")
    p.add_argument("--worker-w", type=float, default=2.0, help="power of one worker, W")
    p.add_argument("--max-workers", type=int, default=8)


def build(a: argparse.Namespace) -> StaticRateLimit:
    return StaticRateLimit(a.rate_mg_s, a.workers, a.template, a.worker_w, a.max_workers)


if __name__ == "__main__":
    main("static_rate_limit", build, add_args)
