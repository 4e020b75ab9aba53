"""System-wide suspend-resume (WaitAWhile; paper §5.1): suspend every container while
the grid's carbon intensity is above a threshold, resume when it falls to or below it.
The threshold is system-wide: a fixed gCO2eq/kWh, or by default the 30th percentile of
the intensity over the trailing 48 h (§5.1.1; the BLAST run used the 33rd percentile of
the trace). Paper result: carbon -24.5 % / -25.0 %, runtime x7.4 / x5.1.

    python -m policies.suspend_resume --app X [--threshold G | --percentile 30 --window-h 48]
        [--forecast-h H]

With ``--forecast-h H`` (and a carbon source that publishes a forecast) it suspends only
when the next H hours hold a point cleaner than now: above the threshold with nothing
cleaner ahead, waiting only delays the job.
"""

from __future__ import annotations

import argparse
from datetime import timedelta

from policies.base import (
    Action,
    AppView,
    Observation,
    ResumeContainer,
    SuspendContainer,
    TrailingPercentile,
    main,
)

DEFAULT_PERCENTILE = 30.0
DEFAULT_WINDOW_S = 48 * 3600.0


class CarbonThreshold:
    """A fixed threshold, or a percentile of the trailing window (pure)."""

    def __init__(
        self,
        fixed_g_per_kwh: float | None = None,
        percentile: float = DEFAULT_PERCENTILE,
        window_s: float = DEFAULT_WINDOW_S,
    ) -> None:
        self.fixed = fixed_g_per_kwh
        self.trail = TrailingPercentile(window_s, percentile)

    def observe(self, obs: Observation) -> tuple[float, float]:
        """(intensity now, threshold) including this tick in the history."""
        i = obs.data.grid_carbon_g_per_kwh
        self.trail.add(obs.time, i)
        return i, self.fixed if self.fixed is not None else self.trail.value()


class SuspendResume:
    name = "suspend_resume"

    def __init__(
        self, threshold: CarbonThreshold | None = None, forecast_s: float = 0.0
    ) -> None:
        self.threshold = threshold or CarbonThreshold()
        # with a forecast: suspend only when some point of the next ``forecast_s`` is
        # cleaner than now (waiting for nothing cleaner only delays the job)
        self.forecast_s = forecast_s
        self.needs_forecasts = forecast_s > 0  # (Policy)
        self.app = AppView(app="", containers=())
        self.last_threshold: float | None = None

    def setup(self, app: AppView) -> list[Action]:
        self.app = app
        return []

    def decide(self, obs: Observation) -> list[Action]:
        i, thr = self.threshold.observe(obs)
        self.last_threshold = thr
        high = i > thr
        if high and self.forecast_s > 0 and obs.carbon_forecast:
            until = obs.time + timedelta(seconds=self.forecast_s)
            ahead = [v for t, v in obs.carbon_forecast if obs.time < t <= until]
            if ahead and min(ahead) >= i:
                high = False
        names = sorted(set(self.app.containers) | set(obs.data.containers))
        out: list[Action] = []
        for c in names:
            cd = obs.data.containers.get(c)
            suspended = bool(cd and cd.suspended)
            if high and not suspended:
                out.append(SuspendContainer(c))
            elif not high and suspended:
                out.append(ResumeContainer(c))
        return out


def threshold_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threshold", type=float, help="fixed threshold, gCO2eq/kWh")
    p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE)
    p.add_argument("--window-h", type=float, default=DEFAULT_WINDOW_S / 3600)


def threshold_from(a: argparse.Namespace) -> CarbonThreshold:
    if not 0 <= a.percentile <= 100 or a.window_h <= 0:
        raise ValueError("--percentile must be in [0, 100] and --window-h > 0")
    return CarbonThreshold(a.threshold, a.percentile, a.window_h * 3600)


def add_args(p: argparse.ArgumentParser) -> None:
    threshold_args(p)
    p.add_argument(
        "--forecast-h", type=float, default=0.0,
        help="with the site's carbon forecast: suspend only if the next H hours hold a "
        "cleaner point than now (0: no forecast)",
    )  # fmt: skip


def build(a: argparse.Namespace) -> SuspendResume:
    if a.forecast_h < 0:
        raise ValueError("--forecast-h must be >= 0")
    return SuspendResume(threshold_from(a), a.forecast_h * 3600)


if __name__ == "__main__":
    main("suspend_resume", build, add_args)
