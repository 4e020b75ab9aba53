"""Zero-carbon solar + battery (paper §5.3): the app runs on its solar share and virtual
battery only (no grid charging: charge rate 0), with the battery supplying a minimum
guaranteed power of ``base_workers x worker_w`` (max discharge set to it).

- static (system-level): a fixed number of workers (4 in the paper) whenever solar plus
  battery can guarantee their power; when the battery is empty and solar is short,
  only what solar carries (at night: none, "checkpoint and wait until morning").
- dynamic (the Spark-specific policy): the same, plus opportunistic workers on excess
  solar whenever the battery is full (that solar would otherwise be curtailed). Paper
  result: -39 % Spark runtime.

    python -m policies.solar_battery --app X [--mode static|dynamic] [--base-workers 4]
        [--worker-w W] [--max-workers 8] [--template T]
"""

from __future__ import annotations

import argparse

from policies.base import (
    Action,
    AppView,
    Observation,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    main,
    running_containers,
    set_workers,
)


class SolarBattery:
    name = "solar_battery"

    def __init__(
        self,
        mode: str = "dynamic",
        base_workers: int = 4,
        worker_w: float = 2.0,
        max_workers: int = 8,
        template: str | None = None,
    ) -> None:
        if mode not in ("static", "dynamic"):
            raise ValueError("--mode must be static or dynamic")
        if worker_w <= 0 or base_workers < 0 or max_workers < base_workers:
            raise ValueError("need worker_w > 0 and 0 <= base_workers <= max_workers")
        self.mode, self.base, self.worker_w = mode, base_workers, worker_w
        self.max_w, self.template = max_workers, template
        self.app = AppView(app="", containers=())

    @property
    def guaranteed_w(self) -> float:
        return self.base * self.worker_w

    def setup(self, app: AppView) -> list[Action]:
        self.app = app
        if not self.template:  # without a template the workers are the configured containers
            self.max_w = min(self.max_w, len(app.containers))
            self.base = min(self.base, self.max_w)
        return [SetBatteryChargeRate(0.0), SetBatteryMaxDischarge(self.guaranteed_w)]

    def workers(self, obs: Observation) -> int:
        d = obs.data
        battery_w = 0.0 if obs.battery_empty else d.battery_max_discharge_setting_w
        if d.next_solar_w + battery_w >= self.guaranteed_w - 1e-9:
            n = self.base
        else:
            n = int(d.next_solar_w // self.worker_w)  # battery empty: what solar carries
        if self.mode == "dynamic" and obs.battery_full:
            n += int(max(0.0, d.next_solar_w - self.guaranteed_w) // self.worker_w)
        return max(0, min(n, self.max_w))

    def decide(self, obs: Observation) -> list[Action]:
        n = self.workers(obs)
        return set_workers(self.app, n, self.template, running_containers(self.app, obs.data))


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["static", "dynamic"], default="dynamic")
    p.add_argument("--base-workers", type=int, default=4)
    p.add_argument("--worker-w", type=float, default=2.0, help="power of one worker, W")
    p.add_argument("--max-workers", type=int, default=8)
    p.add_argument("--template", help="workers are replicas of this template")


def build(a: argparse.Namespace) -> SolarBattery:
    return SolarBattery(a.mode, a.base_workers, a.worker_w, a.max_workers, a.template)


if __name__ == "__main__":
    main("solar_battery", build, add_args)
