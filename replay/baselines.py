"""Offline baselines for the replay harness: a schedule computed from the whole run's
traces in advance, then replayed through the ordinary policy path (``PolicyRunner``,
``ScaleApp`` commands, the k -> k+1 actuation). Offline, so it sees the future: a
reference to compare online policies with, not a policy one could run live.

``right_sizing`` (``offline: true`` in the experiment file): the offline optimum of the
very cost model ``policies.right_sizing`` builds from the same arguments
(``ReplicaModel.costs``: replicas' energy, delay penalty, switching), solved by the
core's dynamic programme (``ecovisor.core.rightsizing.offline_optimum``) over every tick
of the run, on the *offered* load (the online policy only sees what was served), from
the replicas running at the start, free end. ``--mode carbon`` weights each tick by its
intensity over the run's mean intensity (an oracle reference; the online policy uses
the mean seen so far). No solar share (the experiments here have none).

``suspend_resume`` (``offline: true``, a batch job): the clairvoyant suspend-resume —
the job runs at its base allocation in the ticks of lowest carbon intensity between its
arrival and the end of the run, as many as its work needs, and is suspended in every
other. With the same work and resources (base allocation) no schedule emits less: a
tick at base allocation draws the same energy wherever it is placed, so the carbon is
the sum of the chosen ticks' intensities times that energy, least for the lowest ones.
It shows each policy as a fraction of the saving that was achievable.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ecovisor.core.rightsizing import offline_optimum
from policies.base import Action, AppView, Observation, ResumeContainer, ScaleApp, SuspendContainer
from policies.right_sizing import RightSizing


class ScheduledReplicas:
    """Replays ``schedule[i]`` replicas of ``template`` in tick ``i`` of the run: the
    count of tick 0 is sent at set-up, the count of tick i+1 on tick i's notification
    (so, with the actuators' k -> k+1, each is in force in its own tick)."""

    name = "offline"

    def __init__(self, template: str, schedule: Sequence[int]) -> None:
        self.template, self.schedule = template, [int(x) for x in schedule]
        self._k = 0

    def setup(self, app: AppView) -> list[Action]:
        return [ScaleApp(self.template, self.schedule[0])] if self.schedule else []

    def decide(self, obs: Observation) -> list[Action]:
        self._k += 1
        if self._k < len(self.schedule):
            return [ScaleApp(self.template, self.schedule[self._k])]
        return []


def right_sizing_offline(
    policy: RightSizing,
    app: AppView,
    loads_rps: np.ndarray,
    intensity: np.ndarray,
    x0: int,
) -> ScheduledReplicas:
    """The offline optimum of ``policy``'s cost model over the run, one slot per tick."""
    if policy.slot_ticks != 1:
        raise ValueError("the offline right_sizing baseline needs --slot-ticks 1")
    policy.setup(app)  # sets the slot length from the app's tick
    m = policy.model
    if policy.mode == "carbon":
        mean = float(np.mean(intensity))
        w = intensity / mean if mean > 0 else np.ones(len(intensity))
    else:
        w = np.ones(len(loads_rps))
    costs = m.costs(loads_rps, w, np.zeros(len(loads_rps)))
    x0 = min(max(x0, 0), m.max_replicas)
    sched = offline_optimum(costs, m.beta_on, m.beta_off, x0=x0, x_end=None)
    return ScheduledReplicas(policy.template, list(sched.servers))


class ScheduledSuspend:
    """Replays ``run[i]`` (run or suspended) in tick ``i``: tick i+1's state is sent on
    tick i's notification (the actuators' k -> k+1), to every container of the app."""

    name = "offline"

    def __init__(self, run: Sequence[bool]) -> None:
        self.run = [bool(x) for x in run]
        self._k = 0
        self.app = AppView(app="", containers=())

    def setup(self, app: AppView) -> list[Action]:
        self.app = app  # tick 0: the configured containers (replicas are seen later)
        off = self.run and not self.run[0]
        return [SuspendContainer(c) for c in sorted(app.containers)] if off else []

    def decide(self, obs: Observation) -> list[Action]:
        self._k += 1
        if self._k >= len(self.run):
            return []
        want = self.run[self._k]
        out: list[Action] = []
        for c in sorted(set(self.app.containers) | set(obs.data.containers)):
            cd = obs.data.containers.get(c)
            suspended = bool(cd and cd.suspended)
            if want and suspended:
                out.append(ResumeContainer(c))
            elif not want and not suspended:
                out.append(SuspendContainer(c))
        return out


def lowest_carbon_ticks(intensity: np.ndarray, first: int, need: int) -> list[bool]:
    """Run in the ``need`` ticks of lowest intensity from tick ``first`` on (ties: the
    earlier tick), suspended elsewhere; all of them when fewer remain."""
    n = len(intensity)
    run = [False] * n
    window = np.asarray(intensity[first:], dtype=float)
    order = np.argsort(window, kind="stable")[: max(0, need)]
    for j in order:
        run[first + int(j)] = True
    return run
