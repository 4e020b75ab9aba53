"""The paper's §5.4 synthetic parallel job as a replay workload model: PURE (no I/O, no
clocks; its randomness is a seeded generator of its own).

One task per node container (``tasks``, 10 in the paper) runs ``iterations`` rounds.
A round: every task computes ``compute_s`` seconds of work at ``base_cores`` (speed =
its cores / base_cores, so a power cap that lowers its cores slows it) — times a factor
drawn uniformly from [1 - compute_jitter, 1 + compute_jitter] per task and round (tasks'
partitions are rarely equal) — then waits at a barrier for the slowest task, then all
do ``io_s`` seconds of I/O together (the paper's "periodically synchronizes across tasks
and performs I/O"). Waiting and I/O keep no core
busy (what makes a server below its allocation waste energy, §5.4).

Stragglers: in each round each task is, with probability ``straggler_p``, a straggler
that computes ``straggler_factor`` times slower (the paper injects straggler tasks at
random). Straggler mitigation (the third policy): any other running container (a
replica started from the app's template) runs a copy of an unfinished straggler task of
the round, from the start, at normal speed; the task is done when the first copy
finishes, and the other copy's work is wasted ("at most one replica task will finish").
``stragglers`` (the round's unfinished stragglers, replicated or not) is published as an
app metric, the one the straggler_replicas policy reads (no more replicas than that).

Time inside a tick is exact (event by event). Parameters: docs/evaluation.md (§ Workload
models); the paper states the structure, not the numbers: the defaults are our stated
assumptions, not fitted to its figures.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

_EPS = 1e-12


@dataclass
class ParallelJob:
    tasks: Sequence[str]
    iterations: int = 50
    compute_s: float = 60.0
    io_s: float = 10.0
    compute_jitter: float = 0.0
    base_cores: float = 1.0
    straggler_p: float = 0.0
    straggler_factor: float = 3.0
    seed: int = 0
    elapsed_s: float = 0.0
    finished_at_s: float | None = None
    round: int = 0
    replica_wins: int = 0
    wasted_work_s: float = 0.0
    _left: dict[str, float] = field(default_factory=dict, repr=False)  # task -> work left
    _work: dict[str, float] = field(default_factory=dict, repr=False)
    _slow: set[str] = field(default_factory=set, repr=False)
    _copies: dict[str, tuple[str, float]] = field(default_factory=dict, repr=False)
    _io_left: float = 0.0
    _rng: random.Random = field(default_factory=random.Random, repr=False)

    def __post_init__(self) -> None:
        if not self.tasks or self.iterations <= 0 or self.compute_s <= 0 or self.io_s < 0:
            raise ValueError("need tasks, iterations > 0, compute_s > 0, io_s >= 0")
        if not 0 <= self.compute_jitter < 1:
            raise ValueError("need 0 <= compute_jitter < 1")
        if not 0 <= self.straggler_p <= 1 or self.straggler_factor < 1 or self.base_cores <= 0:
            raise ValueError("need 0 <= straggler_p <= 1, straggler_factor >= 1, base_cores > 0")
        self._rng = random.Random(self.seed)
        self._start_round()

    def _start_round(self) -> None:
        j = self.compute_jitter
        rnd = self._rng.random
        self._left = {t: self.compute_s * (1 + j * (2 * rnd() - 1)) for t in self.tasks}
        self._work = dict(self._left)  # this round's work of each task
        self._slow = {t for t in self.tasks if self._rng.random() < self.straggler_p}
        self._copies = {}

    # --- what an offline planner may read (replay/solar_baselines.py): the seeded job's
    # current round, in seconds at full speed; not for online policies
    def work_left(self, slowed: bool = True) -> dict[str, float]:
        """Each unfinished task's work left in this round (a straggler's scaled by its
        factor unless ``slowed`` is False: as a replica runs it)."""
        f = self.straggler_factor
        return {t: v * (f if slowed and t in self._slow else 1.0) for t, v in self._left.items()}

    def round_work(self, slowed: bool = True) -> dict[str, float]:
        """Each task's whole work of this round, scaled as ``work_left``."""
        f = self.straggler_factor
        return {t: v * (f if slowed and t in self._slow else 1.0) for t, v in self._work.items()}

    @property
    def io_left_s(self) -> float:
        """The I/O phase still to run before the next round, s (0 while computing)."""
        return self._io_left

    def next_round(self) -> None:
        """Draw the next round now (what the model does at the barrier): for planning on
        a copy."""
        self._start_round()

    @property
    def done(self) -> bool:
        return self.finished_at_s is not None

    @property
    def progress(self) -> float:
        return min(1.0, self.round / self.iterations)

    def _speed(self, task: str, cores: float) -> float:
        s = cores / self.base_cores
        return s / self.straggler_factor if task in self._slow else s

    def _assign_replicas(self, cores: Mapping[str, float]) -> None:
        """Give each idle replica container a copy of an unreplicated straggler."""
        for r in [r for r, (t, _) in self._copies.items() if cores.get(r, 0.0) <= 0 or
                  t not in self._left]:  # fmt: skip
            self.wasted_work_s += self._copies.pop(r)[1]  # stopped or its task is done
        replicated = {t for t, _ in self._copies.values()}
        todo = sorted(t for t in self._slow if t in self._left and t not in replicated)
        for r in sorted(c for c, n in cores.items() if n > 0 and c not in self.tasks):
            if not todo:
                break
            if r not in self._copies:
                self._copies[r] = (todo.pop(0), 0.0)

    def step(self, cores: Mapping[str, float], dt_s: float) -> dict[str, float]:
        busy_s = dict.fromkeys(cores, 0.0)
        t = 0.0
        while t < dt_s - _EPS and not self.done:
            if self._io_left > 0:  # the round's I/O: every task waits on it, no core busy
                d = min(self._io_left, dt_s - t)
                self._io_left -= d
                t += d
                if self._io_left <= _EPS:
                    self._io_left = 0.0
                    self.round += 1
                    if self.round >= self.iterations:
                        self.finished_at_s = self.elapsed_s + t
                    else:
                        self._start_round()
                continue
            self._assign_replicas(cores)
            # rates of progress of every computing copy: originals and replicas
            rates = {tk: self._speed(tk, cores.get(tk, 0.0)) for tk in self._left}
            rep_rates = {r: cores[r] / self.base_cores for r in self._copies}
            # time until the first copy finishes (or the tick ends)
            d = dt_s - t
            for tk, rate in rates.items():
                if rate > 0:
                    d = min(d, self._left[tk] / rate)
            for r, (_tk, done) in self._copies.items():
                if rep_rates[r] > 0:
                    d = min(d, (self._work[_tk] - done) / rep_rates[r])
            for tk, rate in rates.items():
                if rate > 0:
                    self._left[tk] -= rate * d
                    busy_s[tk] = busy_s.get(tk, 0.0) + cores[tk] * d
            for r, (tk, done) in list(self._copies.items()):
                self._copies[r] = (tk, done + rep_rates[r] * d)
                busy_s[r] = busy_s.get(r, 0.0) + cores[r] * d
            t += d
            for r, (tk, done) in list(self._copies.items()):
                if tk in self._left and done >= self._work[tk] - _EPS:
                    self.wasted_work_s += self._work[tk] - self._left[tk]  # the original's
                    del self._left[tk]
                    del self._copies[r]
                    self.replica_wins += 1
            for tk in [tk for tk, left in self._left.items() if left <= _EPS]:
                del self._left[tk]
            if not self._left:  # barrier reached: the round's I/O starts
                for r in list(self._copies):
                    self.wasted_work_s += self._copies.pop(r)[1]
                self._io_left = self.io_s if self.io_s > 0 else _EPS
            elif d <= 0 and all(v <= 0 for v in rates.values()) and not rep_rates:
                break  # nothing can run: the tick passes with no progress
        self.elapsed_s += dt_s
        return {c: busy_s.get(c, 0.0) / dt_s for c in cores}

    def metrics(self) -> dict[str, float]:
        """What a live job would publish as app metrics (collectors.app_metrics)."""
        # every unfinished straggler, replicated or not: the replicas a policy should keep
        stragglers = [t for t in self._slow if t in self._left]
        return {
            "functional_units_total": float(self.round),
            "stragglers": float(len(stragglers)),
        }
