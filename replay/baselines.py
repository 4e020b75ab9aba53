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

``dynamic_budget`` (``offline: true``, a web app; paper §5.2): the least-carbon replica
schedule that meets the SLO in every tick, from the *offered* load known in advance.
Per tick the fewest replicas with which the web model (``WebService``) drops nothing and
keeps its modelled p95 within the SLO (``slo_replicas``); above that floor, the count of
every tick is chosen by the core's dynamic programme to minimise the carbon of the
replicas' idle cores (idle_cores x Δt per replica and tick) and of their start-up work
(``start_core_s`` per replica started), each weighted by its tick's intensity. With the
node's linear power model the served requests' energy is the same in every schedule, so
that objective is the run's carbon up to a constant: no schedule of this model meets the
SLO in every tick with less (exact over integer replica counts; a start-up clipped to the
replica's cores would cost less than modelled, not the case at these utilisations).
Grid power only: a site with solar or a battery is refused. Policies that violate the SLO
in some ticks are not bounded by it in those ticks.

The solar jobs' baselines (§5.3, §5.4) are in ``replay/solar_baselines.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ecovisor.core.rightsizing import offline_optimum
from ecovisor.core.workloads import P95_FACTOR, WebService, mm1_sojourn_p95_s
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


def slo_replicas(
    web: WebService, cores: float, max_replicas: int, slo_s: float | None = None
) -> list[int]:
    """Per tick of ``web.rates`` the fewest replicas of ``cores`` cores with which the
    model serves the offered load within the SLO (``slo_s``, default the model's):
    nothing dropped and the modelled p95 at most the SLO (checked with the model's own
    arithmetic); 0 with no load; ``max_replicas`` when even that is not enough (the tick
    violates, as for any schedule)."""
    slo = web.slo_s if slo_s is None else min(slo_s, web.slo_s)
    cap1 = web.capacity_rps(cores)
    rho_max = min(web.max_utilisation, 1.0 - web.demand_s * P95_FACTOR / slo)
    if cap1 <= 0 or rho_max <= 0:
        raise ValueError("no replica count meets the SLO: it is below an idle server's p95")

    def meets(load: float, n: int) -> bool:
        cap = sum([cap1] * n)  # as WebService.step sums its replicas' capacities
        admitted = min(load, web.max_utilisation * cap)
        p95 = mm1_sojourn_p95_s(web.demand_s, admitted / cap)
        return admitted >= load and p95 <= slo

    out = []
    for load in web.rates:
        if load <= 0:
            out.append(0)
            continue
        n = max(1, math.ceil(load / (cap1 * rho_max) - 1e-9))
        while n < max_replicas and not meets(float(load), n):
            n += 1
        out.append(min(n, max_replicas))
    return out


def web_slo_offline(
    template: str,
    web: WebService,
    cores: float,
    max_replicas: int,
    x0: int,
    intensity: np.ndarray,
    arrival_i: int,
    core_w: float,
    tick_s: float,
    slo_s: float | None = None,
) -> ScheduledReplicas:
    """The least-carbon SLO-meeting replica schedule over the run's ticks (``intensity``
    one per tick; the load from ``arrival_i``), from ``x0`` replicas; ``core_w`` the
    node's power per busy core (W); the SLO the stricter of ``slo_s`` and the model's."""
    n = len(intensity)
    need = np.zeros(n, dtype=int)
    floor = slo_replicas(web, cores, max_replicas, slo_s)[: max(0, n - arrival_i)]
    need[arrival_i : arrival_i + len(floor)] = floor
    g_per_j = np.asarray(intensity, float) / 3.6e6
    idle_j = core_w * min(web.idle_cores, cores) * tick_s  # one replica, one tick
    costs = np.outer(g_per_j, np.arange(max_replicas + 1) * idle_j)
    costs[np.arange(max_replicas + 1)[None, :] < need[:, None]] = np.inf
    costs[:arrival_i] = 0.0  # before the arrival the model does not run
    beta_on = g_per_j * core_w * web.start_core_s
    beta_on[: arrival_i + 1] = 0.0  # replicas running at the arrival are not started
    x0 = min(max(x0, 0), max_replicas)
    sched = offline_optimum(costs, beta_on, 0.0, x0=x0, x_end=None)
    return ScheduledReplicas(template, list(sched.servers))
