"""Clairvoyant baselines of the solar experiments (paper §5.3 and §5.4): schedules planned
from the whole run's solar trace (and, for the parallel job, its seeded work) and
replayed through the ordinary policy path (``PolicyRunner``, commands, the actuators'
k -> k+1), as those of ``replay/baselines.py``. Offline: references, not policies that
could run live. docs/evaluation.md#paper-53-and-54-vs-this-project.

The plan needs the run's solar, which the policy runner is not given: it is planned at
the first tick notification, whose tick index (start // Δt) places the run in the
experiment's window, from ``traces.window_solar`` (the computation the runs' inputs use).
So the first tick (a warm-up tick in these experiments) runs on the set-up commands.

``solar_battery`` offline (Spark on its solar share and battery, §5.3). The metric is the
runtime (every policy keeps grid carbon near zero), so the baseline is the **fastest
zero-grid schedule** we can construct with the same workers (at most ``--max-workers``),
panel and battery: the battery is never charged from the grid and no tick may draw grid
power (in the ledger's own battery arithmetic, ``Battery``). Workers run in blocks of one
task length from the arrival, so a worker is never stopped mid-task and no work is lost;
each block runs the most workers whose energy solar and the battery cover in every tick
of the block (planned at the block's start from the battery level the ledger reports).
That is a **heuristic**, not a proven optimum: ``spark_runtime_bound`` is a proven lower
bound (no schedule with zero grid energy finishes sooner), and docs/evaluation.md reports
both.

``solar_following_caps`` offline (the parallel job, §5.4). The baseline is the **fastest
schedule within the power the solar-following policies allow themselves**: in every tick
at most the tick's solar, or ``tasks x --min-cap-w`` when solar is below that (the caps'
floors). With the job's seeded work known, each tick's caps give the tasks' speeds of
the level algorithm (``tick_speeds``: a round that can finish in the tick finishes as
early as the power allows, every task at once; otherwise the tasks with the most work
left get the power first). A heuristic too (caps are constant over a tick);
``caps_runtime_bound`` is the proven lower bound for that power envelope.

``straggler_replicas`` offline (the stragglers job, §5.4; built in ``replay.offline``):
the most replicas (``--max-replicas``) in every tick. A replica copies a straggler from
its round's start; an idle replica draws nothing in the model, so keeping them all up
finishes every straggler as early as any replica schedule can (up to the model's
assignment of replicas in task-name order when a round has more stragglers than
replicas) and draws less energy than letting the straggler run 3x slower. It needs no
foresight; it differs from the online policy by ignoring its "only on excess solar" rule.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ecovisor.contract.experiment import Experiment
from ecovisor.core.parallel_job import ParallelJob
from ecovisor.core.power_cap import DEFAULT_PERIOD_US, MIN_QUOTA_US, max_power_at_quota
from ecovisor.core.units import MJ_PER_WH, power_to_mj
from ecovisor.core.virtual_battery import (
    BatteryLimits,
    charge_input_capacity,
    deliverable,
    draw_for,
    stored_gain,
)
from policies.base import (
    Action,
    AppView,
    Observation,
    ScaleApp,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetContainerPowercap,
)
from replay import traces

_WINDOW_SOLAR: dict[str, np.ndarray] = {}


def run_solar(exp: Experiment, k0: int, n: int) -> np.ndarray:
    """The solar (W) the ledger books in each of the ``n`` ticks of a run from the
    ledger's tick index ``k0`` (a tick's start // Δt). The run is given the slice of
    ``traces.window_solar`` from ``k0``; the ledger books in tick k the solar measured in
    tick k-1 (``ClosedTick.solar_prev_mj``: known one tick ahead, what the policies see
    as ``next_solar_w``), none in a run's first tick."""
    key = exp.model_dump_json(include={"site", "traces", "window"})
    if key not in _WINDOW_SOLAR:
        _WINDOW_SOLAR.clear()
        _WINDOW_SOLAR[key] = traces.window_solar(exp)
    start, _ = traces.window_ticks(exp)
    first = round(k0 - start / exp.site.tick_s)
    out = _WINDOW_SOLAR[key][max(first, 0) : first + n]
    if first < 0 or len(out) < n:
        raise ValueError("the run lies outside the experiment's window")
    return np.concatenate([[0.0], out[:-1]])


@dataclass(frozen=True)
class Battery:
    """An app's virtual battery as the ledger runs it with charge rate 0 (no grid
    charging; ``ecovisor.core.tick._plan``): solar serves the load first, excess solar
    charges within the C-rate and the room, the deficit is discharged within the max
    discharge in force and above the reserve, the rest is grid."""

    limits: BatteryLimits
    discharge_mj: int  # the max discharge in force, over one tick

    def available(self, level_mj: int) -> int:
        """What the battery can deliver to the load in a tick."""
        above = max(0, level_mj - self.limits.reserve_mj)
        return min(self.discharge_mj, deliverable(above, self.limits.discharge_efficiency))

    def tick(self, level_mj: int, solar_mj: int, demand_mj: int) -> tuple[int, int]:
        """(battery level after, grid energy) of one tick, mJ."""
        lim = self.limits
        s2l = min(solar_mj, demand_mj)
        s2b = min(solar_mj - s2l, charge_input_capacity(level_mj, 0, lim))
        deficit = demand_mj - s2l
        b2l = min(deficit, self.available(level_mj)) if deficit > 0 else 0
        drawn = draw_for(b2l, lim.discharge_efficiency)
        return level_mj - drawn + stored_gain(s2b, lim.charge_efficiency), deficit - b2l


def block_workers(
    battery: Battery, level_mj: int, solar_mj: Sequence[int], worker_mj: int, max_workers: int
) -> int:
    """The most workers (<= ``max_workers``) that solar and the battery carry through
    every tick of ``solar_mj`` with no grid energy."""
    for n in range(max_workers, 0, -1):
        level, ok = level_mj, True
        for s in solar_mj:
            level, grid = battery.tick(level, s, n * worker_mj)
            if grid > 0:
                ok = False
                break
        if ok:
            return n
    return 0


def spark_runtime_bound(
    battery: Battery, level_mj: int, solar_w: Sequence[float], tick_s: float, work_j: float,
    max_w: float,
) -> float:  # fmt: skip
    """Seconds from the arrival (``solar_w`` and ``level_mj`` from there) before which no
    zero-grid schedule can have drawn ``work_j``, the job's energy with no work lost
    (every base-second of work costs a busy worker's power), at most ``max_w`` at a time.
    Each tick draws the most it can (``max_w``, or solar plus what the battery delivers):
    drawing earlier never lowers what can be drawn later (it leaves room in the battery
    for excess solar), so this greedy fluid schedule has drawn the most by every instant.
    Integer workers, lost work and the block structure are relaxed away: a lower bound."""
    need = work_j * 1000
    cap = power_to_mj(max_w, tick_s)
    done = 0.0
    for i, s_w in enumerate(solar_w):
        s = power_to_mj(s_w, tick_s)
        c = min(cap, s + battery.available(level_mj))
        if c > 0 and done + c >= need:
            return (i + (need - done) / c) * tick_s
        level_mj, _ = battery.tick(level_mj, s, c)
        done += c
    return math.inf


class ClairvoyantSpark:
    """The §5.3 baseline (module docstring): block by block, the most workers that run
    on solar and the battery alone, from the battery level each notification reports."""

    name = "offline"

    def __init__(
        self,
        exp: Experiment,
        template: str,
        max_workers: int,
        worker_w: float,
        battery: Battery,
        discharge_w: float,
        block: int,
        arrival_i: int,
        n_ticks: int,
        margin_mj: int = 2,
    ) -> None:
        self.exp, self.template, self.max_workers = exp, template, max_workers
        self.dt = exp.site.tick_s
        # a worker's telemetry and the solar counter are rounded to mJ by the ledger
        self.worker_mj = power_to_mj(worker_w, self.dt) + margin_mj
        self.margin_mj = margin_mj
        self.battery, self.discharge_w, self.block = battery, discharge_w, max(1, block)
        self.arrival_i, self.n = arrival_i, n_ticks
        self.solar_mj: list[int] | None = None
        self.workers: dict[int, int] = {}  # block start tick -> workers (for reports)
        self._k = 0

    def setup(self, app: AppView) -> list[Action]:
        return [SetBatteryChargeRate(0.0), SetBatteryMaxDischarge(self.discharge_w),
                ScaleApp(self.template, 0)]  # fmt: skip

    def decide(self, obs: Observation) -> list[Action]:
        i, self._k = self._k, self._k + 1
        if self.solar_mj is None:
            w = run_solar(self.exp, (obs.tick or 0) - i, self.n)
            self.solar_mj = [max(0, power_to_mj(x, self.dt) - self.margin_mj) for x in w]
        nxt, start = i + 1, max(self.arrival_i, 1)
        if nxt < start or nxt >= self.n or (nxt - start) % self.block:
            return []
        level = round(obs.data.battery_charge_level_wh * MJ_PER_WH)
        n = block_workers(self.battery, level, self.solar_mj[nxt : nxt + self.block],
                          self.worker_mj, self.max_workers)  # fmt: skip
        self.workers[nxt] = n
        return [ScaleApp(self.template, n)]


def tick_speeds(
    remaining: Mapping[str, float], horizon_s: float, capacity: float
) -> dict[str, float]:
    """Speeds in [0, 1] (1 = a task's base cores) for one tick of ``horizon_s`` seconds
    of computing, their sum at most ``capacity``; ``remaining`` is each task's work left
    in seconds at speed 1. When the round can end within the tick, every task ends at the
    same, earliest instant (speeds proportional to the work left); otherwise the level
    algorithm: the tasks with the most work left get speed first, down to a common level."""
    out = dict.fromkeys(remaining, 0.0)
    act = {k: r for k, r in remaining.items() if r > 0}
    if not act or horizon_s <= 0 or capacity <= 0:
        return out
    tau = max(sum(act.values()) / capacity, max(act.values()))
    if tau <= horizon_s:
        out.update({k: r / tau for k, r in act.items()})
        return out
    target = min(capacity, sum(min(1.0, r / horizon_s) for r in act.values()))

    def speeds(level: float) -> dict[str, float]:
        return {k: min(1.0, max(0.0, (r - level) / horizon_s)) for k, r in act.items()}

    lo, hi = 0.0, max(act.values())
    for _ in range(60):  # the largest level whose speeds still use the target
        mid = (lo + hi) / 2
        if sum(speeds(mid).values()) >= target:
            lo = mid
        else:
            hi = mid
    out.update(speeds(lo))
    return out


def _left(job: ParallelJob) -> dict[str, float]:
    """Each task's work left in the round, seconds at full speed (the baseline knows
    the seeded job's future)."""
    return job.work_left()


def round_works(job: ParallelJob, slowed: bool = True) -> list[list[float]]:
    """Every round's work per task the seeded job will draw: seconds at full speed of
    the task itself (a straggler's slowed by its factor), or of a copy (``slowed``
    False: as a replica runs it)."""
    j = copy.deepcopy(job)
    out = []
    for r in range(j.iterations):
        out.append(list(j.round_work(slowed).values()))
        if r + 1 < j.iterations:
            j.next_round()
    return out


def caps_runtime_bound(
    works: Sequence[Sequence[float]], io_s: float, capacity: Sequence[float], tick_s: float
) -> float:
    """Seconds from the arrival before which no schedule finishes the rounds ``works``
    (each task's work, seconds at full speed) when tick i allows ``capacity[i]`` tasks'
    worth of full-speed power. A round can end by T only if, for every j, its j largest
    tasks (each at most at full speed, together at most the capacity) fit: sum of the j
    largest <= integral of min(j, capacity) to T; then its I/O. Starting a round earlier
    never ends it later, so round by round this is a lower bound."""
    t = 0.0
    for ws in works:
        end = t
        for j, need in enumerate(np.cumsum(sorted(ws, reverse=True)), start=1):
            end = max(end, _earliest(t, float(need), j, capacity, tick_s))
        t = end + io_s
    return t


def _earliest(s: float, need: float, j: int, capacity: Sequence[float], dt: float) -> float:
    acc, i = 0.0, int(s // dt)
    while i < len(capacity):
        a = max(s, i * dt)
        rate = min(float(j), capacity[i])
        if rate > 0 and acc + rate * ((i + 1) * dt - a) >= need:
            return a + (need - acc) / rate
        acc += rate * ((i + 1) * dt - a)
        i += 1
    return math.inf


class ClairvoyantCaps:
    """The §5.4 caps baseline (module docstring): per tick the caps of the level
    algorithm's speeds within the envelope, planned on a copy of the seeded job."""

    name = "offline"

    def __init__(
        self,
        exp: Experiment,
        job: ParallelJob,
        model: Any,
        idle_w: Mapping[str, float],
        min_cap_w: float,
        arrival_i: int,
        n_ticks: int,
    ) -> None:
        self.exp, self.job, self.model = exp, copy.deepcopy(job), model
        self.tasks = list(job.tasks)
        self.idle_w = dict(idle_w)  # each task's idle share in its cap (0: attribution none)
        self.min_cap_w, self.arrival_i, self.n = min_cap_w, arrival_i, n_ticks
        self.dt = exp.site.tick_s
        self.core_w = model.power_at_busy_cores(1.0) - model.idle_power_w
        self.floor_w = len(self.tasks) * min_cap_w
        # tick 0 (set-up): each task at the quota of its floor cap, within the envelope
        q0 = {c: self._quota_at(c, min_cap_w) for c in self.tasks}
        self.first = {c: self._cap_of(c, q) for c, q in q0.items()}
        self.first_cores = {c: min(job.base_cores, q / DEFAULT_PERIOD_US) for c, q in q0.items()}
        self.caps: list[dict[str, float]] = []
        self.planned_s: float | None = None  # the plan's runtime (the replay's, exactly)
        self._k = 0

    def envelope_w(self, solar_w: float) -> float:
        return max(solar_w, self.floor_w)

    def setup(self, app: AppView) -> list[Action]:
        return [SetContainerPowercap(c, w) for c, w in self.first.items()]

    def decide(self, obs: Observation) -> list[Action]:
        i, self._k = self._k, self._k + 1
        if not self.caps:
            self.plan(run_solar(self.exp, (obs.tick or 0) - i, self.n))
        if i + 1 >= len(self.caps):
            return []
        return [SetContainerPowercap(c, w) for c, w in self.caps[i + 1].items()]

    def plan(self, solar_w: Sequence[float]) -> None:
        """Caps of every tick, by simulating a copy of the job under them."""
        job = copy.deepcopy(self.job)
        self.caps = [self.first] * self.n
        for t in range(self.arrival_i, self.n):
            if job.done:
                break
            cores = self.first_cores
            if t >= 1:
                self.caps[t], cores = self._allocate(job, self.envelope_w(solar_w[t]))
            job.step(cores, self.dt)
        self.planned_s = job.finished_at_s

    def _quota_at(self, c: str, cap_w: float) -> int:
        """A quota (µs) whose modelled power is at most ``cap_w``, at least the minimum."""
        per_core = self.core_w
        q = math.floor((cap_w - self.idle_w.get(c, 0.0)) / per_core * DEFAULT_PERIOD_US)
        return min(self._max_q(), max(MIN_QUOTA_US, q))

    def _max_q(self) -> int:
        return round(self.job.base_cores * DEFAULT_PERIOD_US)

    def _cap_of(self, c: str, q_us: int) -> float:
        return max_power_at_quota(self.model, q_us / DEFAULT_PERIOD_US,
                                  idle_share_w=self.idle_w.get(c, 0.0))  # fmt: skip

    def _allocate(
        self, job: ParallelJob, env_w: float
    ) -> tuple[dict[str, float], dict[str, float]]:
        """One tick's caps and the cores they give: caps on the quota grid (a cap equal
        to a quota's modelled power gives exactly that quota)."""
        peek, h = job, self.dt
        io = job.io_left_s
        if io > 0:  # the round's I/O first: plan on the next round's work
            peek = copy.deepcopy(job)
            peek.step(dict.fromkeys(self.tasks, 0.0), min(io, self.dt))
            h = self.dt - min(io, self.dt)
        base = self.job.base_cores
        floor_cores = MIN_QUOTA_US / DEFAULT_PERIOD_US
        budget = (env_w - sum(self.idle_w.get(c, 0.0) for c in self.tasks)) / self.core_w
        capacity = max(0.0, budget - len(self.tasks) * floor_cores) / base
        v = tick_speeds({} if peek.done else _left(peek), h, capacity)
        caps, cores = {}, {}
        for c in self.tasks:
            q = min(self._max_q(), MIN_QUOTA_US + math.floor(v.get(c, 0.0) * base
                                                               * DEFAULT_PERIOD_US))  # fmt: skip
            caps[c] = self._cap_of(c, q)
            cores[c] = min(base, q / DEFAULT_PERIOD_US)
        return caps, cores
