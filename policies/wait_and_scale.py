"""Wait&Scale (paper §5.1): suspend while the carbon intensity is above a threshold (the
30th percentile of the trailing 48 h by default, §5.1.1) and, below it, run scaled up by
a factor (2x by default) to catch up: vertically (each container gets factor x its base
cores; the ML job ran 4 -> 8 cores) or horizontally (factor x base replicas of a
template; BLAST ran 8 -> 16 cores). Paper result: ML 2x about the carbon of
suspend-resume at x2.58 runtime instead of x7.4; BLAST 2x -30.1 % carbon and -78.15 %
runtime vs suspend-resume, 3x -50.05 % and -83.4 %.

    python -m policies.wait_and_scale --app X [--factor 2] [--base-cpus 1 | --template T
        --base-replicas 1] [--threshold G | --percentile 30 --window-h 48]
"""

from __future__ import annotations

import argparse

from policies.base import (
    Action,
    AppView,
    Observation,
    ResumeContainer,
    ScaleApp,
    ScaleContainer,
    SuspendContainer,
    main,
)
from policies.suspend_resume import CarbonThreshold, threshold_args, threshold_from


class WaitAndScale:
    name = "wait_and_scale"

    def __init__(
        self,
        threshold: CarbonThreshold | None = None,
        factor: float = 2.0,
        base_cpus: float = 1.0,
        template: str | None = None,
        base_replicas: int = 1,
    ) -> None:
        if factor < 1:
            raise ValueError("--factor must be >= 1")
        self.threshold = threshold or CarbonThreshold()
        self.factor, self.base_cpus = factor, base_cpus
        self.template, self.base_replicas = template, base_replicas
        self.app = AppView(app="", containers=())

    def setup(self, app: AppView) -> list[Action]:
        self.app = app
        if self.template and self.template not in app.templates:
            raise ValueError(f"app {app.app!r} has no template {self.template!r}")
        return []

    def decide(self, obs: Observation) -> list[Action]:
        i, thr = self.threshold.observe(obs)
        high = i > thr
        out: list[Action] = []
        for c in self.app.containers:
            cd = obs.data.containers.get(c)
            suspended = bool(cd and cd.suspended)
            if high:
                if not suspended:
                    out.append(SuspendContainer(c))
            else:
                if suspended:
                    out.append(ResumeContainer(c))
                if not self.template:
                    out.append(ScaleContainer(c, self.base_cpus * self.factor))
        if self.template:
            n = 0 if high else round(self.base_replicas * self.factor)
            out.append(ScaleApp(self.template, n))
        return out


def add_args(p: argparse.ArgumentParser) -> None:
    threshold_args(p)
    p.add_argument("--factor", type=float, default=2.0, help="scale-up factor below threshold")
    p.add_argument("--base-cpus", type=float, default=1.0, help="cores per container at 1x")
    p.add_argument("--template", help="scale horizontally with this container template")
    p.add_argument("--base-replicas", type=int, default=1, help="replicas at 1x")


def build(a: argparse.Namespace) -> WaitAndScale:
    return WaitAndScale(threshold_from(a), a.factor, a.base_cpus, a.template, a.base_replicas)


if __name__ == "__main__":
    main("wait_and_scale", build, add_args)
