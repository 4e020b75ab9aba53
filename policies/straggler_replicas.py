"""Straggler replicas on excess solar (paper §5.4): a parallel job tracks the progress
of its tasks and issues a replica for slow tasks, but only when there is excess solar
that would otherwise be curtailed (the battery is full, or the app has no battery).
Replicas are added while the next tick's solar exceeds the app's power by a replica's
power, and removed when the app's power exceeds its solar. When the app reports a
``stragglers`` metric, no more replicas than stragglers are started.

    python -m policies.straggler_replicas --app X --template T [--replica-w W]
        [--max-replicas 4]
"""

from __future__ import annotations

import argparse
import math

from policies.base import Action, AppView, Observation, ScaleApp, main


class StragglerReplicas:
    name = "straggler_replicas"
    needs_metrics = True  # the app's metrics each tick (Policy)

    def __init__(self, template: str, replica_w: float = 2.0, max_replicas: int = 4) -> None:
        if replica_w <= 0 or max_replicas < 0:
            raise ValueError("need --replica-w > 0 and --max-replicas >= 0")
        self.template, self.replica_w, self.max_replicas = template, replica_w, max_replicas
        self.replicas = 0
        self.app = AppView(app="", containers=())

    def setup(self, app: AppView) -> list[Action]:
        self.app = app
        if self.template not in app.templates:
            raise ValueError(f"app {app.app!r} has no template {self.template!r}")
        return [ScaleApp(self.template, 0)]

    def decide(self, obs: Observation) -> list[Action]:
        d = obs.data
        would_curtail = obs.battery_full or self.app.battery_full_wh <= 0
        excess = d.next_solar_w - d.app_power_w
        n = self.replicas
        if excess < 0:  # replicas would now draw on battery or grid: shed them
            n -= math.ceil(-excess / self.replica_w - 1e-9)
        elif would_curtail:
            n += int(excess // self.replica_w)
        limit = self.max_replicas
        stragglers = obs.metrics.get("stragglers")
        if stragglers is not None:
            limit = min(limit, int(stragglers))
        self.replicas = max(0, min(n, limit))
        return [ScaleApp(self.template, self.replicas)]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", required=True, help="replicas are started from this template")
    p.add_argument("--replica-w", type=float, default=2.0, help="power of one replica, W")
    p.add_argument("--max-replicas", type=int, default=4)


def build(a: argparse.Namespace) -> StragglerReplicas:
    return StragglerReplicas(a.template, a.replica_w, a.max_replicas)


if __name__ == "__main__":
    main("straggler_replicas", build, add_args)
