"""Application-specific dynamic carbon budget (paper §5.2): instead of a fixed rate at
all times, the app gets a budget equal to that rate x the horizon (20 mg/s x 48 h by
default) and scales its workers to meet a latency SLO (p95 60 ms by default; 70 ms for
the paper's second app) from its own metrics. When load or carbon is low it runs fewer
workers and spends less than the rate, banking credit; it spends the credit (over at
most --credit-spend-h) to exceed the rate when load and carbon are both high, and falls
back to what the remaining budget sustains when the budget is nearly spent (or the
ecovisor notifies carbon_budget_near/exceeded). Paper result: -22.8 % / -23.4 % carbon vs
the static rate limit, SLO always met.

    python -m policies.dynamic_budget --app X [--slo-ms 60] [--rate-mg-s 20] [--horizon-h 48]
        [--template T] [--worker-w W]
"""

from __future__ import annotations

import argparse
import math

from policies.base import (
    Action,
    AppView,
    Observation,
    SetCarbonBudget,
    grid_w_for_rate,
    main,
    running_containers,
    set_workers,
)


class DynamicBudget:
    name = "dynamic_budget"
    needs_metrics = True  # the app's metrics each tick (Policy)

    def __init__(
        self,
        slo_ms: float = 60.0,
        rate_mg_per_s: float = 20.0,
        horizon_s: float = 48 * 3600.0,
        template: str | None = None,
        worker_w: float = 2.0,
        min_workers: int = 1,
        max_workers: int = 8,
        low_water: float = 0.5,
        near_fraction: float = 0.05,
        credit_spend_s: float = 3600.0,
    ) -> None:
        if slo_ms <= 0 or rate_mg_per_s < 0 or horizon_s <= 0 or worker_w <= 0:
            raise ValueError("SLO, horizon and worker power must be > 0, rate >= 0")
        if not 0 < low_water < 1 or min_workers > max_workers:
            raise ValueError("need 0 < low_water < 1 and min_workers <= max_workers")
        self.slo, self.rate, self.horizon = slo_ms, rate_mg_per_s, horizon_s
        self.template, self.worker_w = template, worker_w
        self.min_w, self.max_w, self.low_water = min_workers, max_workers, low_water
        self.near_fraction, self.credit_spend_s = near_fraction, credit_spend_s
        self.app = AppView(app="", containers=())
        self.workers = min_workers
        self.spent_g = 0.0
        self.elapsed_s = 0.0

    @property
    def budget_g(self) -> float:
        return self.rate * self.horizon / 1000

    @property
    def credit_g(self) -> float:
        """Banked carbon: what the static rate would have allowed so far, minus spent."""
        return self.rate * self.elapsed_s / 1000 - self.spent_g

    def setup(self, app: AppView) -> list[Action]:
        self.app = app
        if not self.template:
            self.max_w = min(self.max_w, len(app.containers))
            self.min_w = min(self.min_w, self.max_w)
            self.workers = min(self.workers, self.max_w)
        return [SetCarbonBudget(self.budget_g, self.horizon)]

    def allowed_rate(self, obs: Observation) -> float:
        """mg/s this tick may run at: the rate plus banked credit spread over
        credit_spend_s, and no more than the remaining budget sustains when near."""
        rate = self.rate + max(self.credit_g, 0.0) * 1000 / self.credit_spend_s
        remaining = self.budget_g - self.spent_g
        near = remaining <= self.near_fraction * self.budget_g or bool(
            obs.events & {"carbon_budget_near", "carbon_budget_exceeded"}
        )
        if near:
            left_s = max(self.horizon - self.elapsed_s, obs.data.tick_s)
            rate = min(rate, max(remaining, 0.0) * 1000 / left_s)
        return rate

    def decide(self, obs: Observation) -> list[Action]:
        d = obs.data
        self.spent_g += d.carbon_g
        self.elapsed_s += d.tick_s
        # per-worker power: measured when workers run, else the configured estimate
        per = d.app_power_w / self.workers if self.workers and d.app_power_w > 0 else self.worker_w
        allowed_w = d.next_solar_w + grid_w_for_rate(
            self.allowed_rate(obs), d.grid_carbon_g_per_kwh
        )
        affordable = self.max_w if math.isinf(allowed_w) else int(allowed_w // per)
        wanted = self.workers
        # the SLO is on the p95: the app's p95 metric when it reports one
        # (collectors.app_metrics: latency_p95_ms), else its mean latency
        lat = obs.metrics.get("latency_p95_ms", obs.latency_ms)
        if lat is not None:
            if lat > self.slo:
                wanted = self.workers + max(1, math.ceil(self.workers * (lat / self.slo - 1)))
            elif lat < self.low_water * self.slo:
                wanted = self.workers - 1
        self.workers = max(self.min_w, min(self.max_w, wanted, affordable))
        return set_workers(self.app, self.workers, self.template, running_containers(self.app, d))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--slo-ms", type=float, default=60.0, help="p95 latency SLO, ms")
    p.add_argument("--rate-mg-s", type=float, default=20.0, help="budget = rate x horizon")
    p.add_argument("--horizon-h", type=float, default=48.0)
    p.add_argument("--template", help="workers are replicas of this template")
    p.add_argument("--worker-w", type=float, default=2.0, help="estimated W per worker")
    p.add_argument("--min-workers", type=int, default=1)
    p.add_argument("--max-workers", type=int, default=8)
    p.add_argument("--credit-spend-h", type=float, default=1.0)


def build(a: argparse.Namespace) -> DynamicBudget:
    return DynamicBudget(
        slo_ms=a.slo_ms,
        rate_mg_per_s=a.rate_mg_s,
        horizon_s=a.horizon_h * 3600,
        template=a.template,
        worker_w=a.worker_w,
        min_workers=a.min_workers,
        max_workers=a.max_workers,
        credit_spend_s=a.credit_spend_h * 3600,
    )


if __name__ == "__main__":
    main("dynamic_budget", build, add_args)
