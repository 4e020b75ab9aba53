"""Solar-following power caps across containers (paper §5.4): a parallel job runs on its
solar share alone, the sum of its containers' power caps never exceeding the next
tick's solar (known one tick ahead, §3.2).

- static (system-level): the supply split equally (the paper's static caps).
- dynamic (application policy): caps follow each container's demand so that every
  container uses nearly all of its allocation (servers are most efficient at 100 %):
  water-filling on last tick's power plus a probing headroom; what busy containers
  cannot use goes to the others. Paper result: better runtime and energy efficiency,
  more so as solar gets scarcer.

    python -m policies.solar_following_caps --app X [--mode dynamic|static]
        [--min-cap-w 0.5] [--headroom 0.1] [--with-battery]
"""

from __future__ import annotations

import argparse

from policies.base import (
    Action,
    AppView,
    Observation,
    SetContainerPowercap,
    main,
    running_containers,
)


def water_fill(supply: float, demand: dict[str, float]) -> dict[str, float]:
    """Max-min fair allocation of ``supply`` to ``demand``; leftover shared equally."""
    alloc: dict[str, float] = {}
    left, todo = supply, sorted(demand, key=lambda c: (demand[c], c))
    while todo:
        fair = left / len(todo)
        c = todo[0]
        if demand[c] <= fair:
            alloc[c] = demand[c]
            left -= demand[c]
            todo.pop(0)
        else:
            for c in todo:
                alloc[c] = fair
            return alloc
    extra = left / len(alloc) if alloc else 0.0
    return {c: v + extra for c, v in alloc.items()}


class SolarFollowingCaps:
    name = "solar_following_caps"

    def __init__(
        self,
        mode: str = "dynamic",
        min_cap_w: float = 0.5,
        headroom: float = 0.1,
        with_battery: bool = False,
        step_w: float = 0.01,
    ) -> None:
        if mode not in ("static", "dynamic"):
            raise ValueError("--mode must be static or dynamic")
        self.mode, self.min_cap, self.headroom = mode, min_cap_w, headroom
        self.with_battery, self.step = with_battery, step_w
        self.app = AppView(app="", containers=())

    def setup(self, app: AppView) -> list[Action]:
        self.app = app
        return []

    def caps(self, obs: Observation) -> dict[str, float]:
        d = obs.data
        supply = d.next_solar_w
        if self.with_battery and not obs.battery_empty:
            supply += d.battery_max_discharge_setting_w
        names = sorted(running_containers(self.app, d))
        if not names:
            return {}
        if self.mode == "static":
            alloc = {c: supply / len(names) for c in names}
        else:
            demand = {
                c: (d.containers[c].power_w if c in d.containers else 0.0) * (1 + self.headroom)
                for c in names
            }
            alloc = water_fill(supply, demand)
        # never below the floor; round down so the sum stays within the supply
        return {
            c: max(self.min_cap, int(v / self.step + 1e-9) * self.step) for c, v in alloc.items()
        }

    def decide(self, obs: Observation) -> list[Action]:
        return [SetContainerPowercap(c, round(w, 6)) for c, w in sorted(self.caps(obs).items())]


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["static", "dynamic"], default="dynamic")
    p.add_argument("--min-cap-w", type=float, default=0.5, help="never cap below this, W")
    p.add_argument("--headroom", type=float, default=0.1, help="probe above last power")
    p.add_argument("--with-battery", action="store_true", help="add the battery's max discharge")


def build(a: argparse.Namespace) -> SolarFollowingCaps:
    return SolarFollowingCaps(a.mode, a.min_cap_w, a.headroom, a.with_battery)


if __name__ == "__main__":
    main("solar_following_caps", build, add_args)
