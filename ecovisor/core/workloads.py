"""Workload models of the paper's §5 applications for replay: PURE (no I/O, no clocks).

A model is told, every tick, how many CPU cores each of its containers may use in that
tick (0 when suspended or not running: what the simulated containers derive from the
actuators' setpoints) and answers how many cores were busy in each container over the
tick (the power of the tick follows from the node's power model) while it advances its
own progress. Work is counted in *base-seconds*: one second of the job running at its
base allocation. A job is done when its progress reaches ``work_s``; the web service
is done when its request-rate trace is used up.

Parameters and their sources are listed in docs/evaluation.md (§ Workload models); none
is fitted to the paper's results.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


def amdahl_speedup(cores: float, serial_fraction: float) -> float:
    """Speed-up on ``cores`` relative to one core (Amdahl's law): 1 / (s + (1 - s)/n).
    0 cores: 0."""
    if cores <= 0:
        return 0.0
    return 1.0 / (serial_fraction + (1.0 - serial_fraction) / cores)


@dataclass
class _Job:
    work_s: float  # total work, base-seconds
    done_s: float = 0.0  # work done so far, base-seconds
    finished_at_s: float | None = None  # job time (s since arrival) it finished
    elapsed_s: float = 0.0  # job time simulated so far

    @property
    def done(self) -> bool:
        return self.finished_at_s is not None

    @property
    def progress(self) -> float:
        return min(1.0, self.done_s / self.work_s) if self.work_s > 0 else 1.0

    def _advance(self, speed: float, dt_s: float) -> float:
        """Advance by ``dt_s`` at ``speed`` base-seconds per second; return the fraction
        of the tick the job was running (1 unless it finished inside the tick)."""
        if self.done:
            return 0.0
        left = self.work_s - self.done_s
        if speed <= 0:
            self.elapsed_s += dt_s
            return 0.0
        need = left / speed
        if need <= dt_s:
            self.done_s = self.work_s
            self.finished_at_s = self.elapsed_s + need
            self.elapsed_s += dt_s
            return need / dt_s
        self.done_s += speed * dt_s
        self.elapsed_s += dt_s
        return 1.0


@dataclass
class MLTraining(_Job):
    """Data-parallel training with synchronisation (paper §5.1.1: PyTorch ResNet34 on
    CIFAR100, 4 cores at base, scaled vertically to 8 and 12 cores by Wait&Scale).

    One container; speed at ``c`` cores relative to base = S(c) / S(base_cores), with
    S Amdahl's speed-up of serial fraction ``serial_fraction`` (the synchronisation
    part that does not shrink with more cores). Every allocated core is busy while the
    job runs (synchronous SGD workers spin/compute through the barrier: an assumption,
    docs/evaluation.md)."""

    base_cores: float = 4.0
    serial_fraction: float = 0.1

    def step(self, cores: Mapping[str, float], dt_s: float) -> dict[str, float]:
        total = sum(cores.values())
        speed = amdahl_speedup(total, self.serial_fraction) / amdahl_speedup(
            self.base_cores, self.serial_fraction
        )
        frac = self._advance(speed, dt_s)
        return {c: n * frac for c, n in cores.items()}


@dataclass
class Blast(_Job):
    """Embarrassingly parallel search fed by one central task queue (paper §5.1.1:
    NCBI-BLAST, elastic BLAST-470, 8 cores at base, scaled horizontally to 16/24/32).

    Throughput is linear in the running cores up to ``queue_limit`` × ``base_cores``
    (§5.1.2: the central queue server becomes a bottleneck beyond 3× workers); cores
    beyond that wait on the queue and are idle (no dynamic power). Busy cores are spread
    evenly over the running containers."""

    base_cores: float = 8.0
    queue_limit: float = 3.0

    def step(self, cores: Mapping[str, float], dt_s: float) -> dict[str, float]:
        total = sum(cores.values())
        useful = min(total, self.queue_limit * self.base_cores)
        frac = self._advance(useful / self.base_cores, dt_s)
        share = (useful / total) if total > 0 else 0.0
        return {c: n * share * frac for c, n in cores.items()}


P95_FACTOR = math.log(20.0)  # -ln(1 - 0.95): the 95th percentile of Exp(1)


def mm1_sojourn_p95_s(service_s: float, rho: float) -> float:
    """95th percentile of the response (sojourn) time of an M/M/1 FCFS queue with mean
    service time ``service_s`` at utilisation ``rho``: the sojourn time is exponential
    with rate mu - lambda = (1 - rho)/service_s (a textbook result, e.g. Kleinrock,
    Queueing Systems Vol. I, 1975), so t95 = service_s * ln 20 / (1 - rho). inf at
    rho >= 1."""
    if rho >= 1.0:
        return math.inf
    return service_s * P95_FACTOR / (1.0 - max(rho, 0.0))


@dataclass
class WebService:
    """A request-serving web service, horizontally scaled (replicas of a template).

    ``rates`` is the offered load, requests/s, one value per tick from the arrival; the
    run is done when the trace is used up. Each running replica keeps ``idle_cores``
    busy with no request (its runtime: event loop, health checks, GC) and serves with
    the rest of its cores; a request needs ``demand_s`` CPU seconds. Load is balanced
    evenly over the serving cores (Poisson splitting keeps each core's arrivals
    Poisson) and each serving core is an M/M/1 FCFS server: utilisation rho =
    admitted / (serving cores / demand_s), p95 response time
    ``mm1_sojourn_p95_s(demand_s, rho)``, mean demand_s / (1 - rho). Requests beyond
    ``max_utilisation`` of the capacity are **dropped** (admission control keeps the
    queues stable) and counted. A tick violates the SLO when its p95 exceeds
    ``slo_s`` or it dropped requests. Busy cores of a replica: idle_cores + rho ×
    (cores - idle_cores), plus, in the first tick a replica runs (not the ones running
    at arrival), ``start_core_s`` / dt of start-up work, at most its cores. Fractional
    serving cores are taken as a continuous number of servers (same rho and p95).
    ``functional_units_total`` (requests served, cumulative) is the app metric."""

    rates: Sequence[float]
    demand_s: float = 0.02
    idle_cores: float = 0.2
    start_core_s: float = 30.0
    max_utilisation: float = 0.95
    slo_s: float = 0.2
    tick: int = 0
    elapsed_s: float = 0.0
    finished_at_s: float | None = None
    served_total: float = 0.0
    dropped_total: float = 0.0
    slo_violations: int = 0
    starts: int = 0
    last_p95_s: float | None = None
    last_mean_s: float | None = None
    _running: set[str] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.demand_s <= 0 or self.idle_cores < 0 or self.start_core_s < 0:
            raise ValueError("need demand_s > 0, idle_cores >= 0, start_core_s >= 0")
        if not 0 < self.max_utilisation < 1 or self.slo_s <= 0:
            raise ValueError("need 0 < max_utilisation < 1 and slo_s > 0")

    @property
    def done(self) -> bool:
        return self.finished_at_s is not None

    @property
    def progress(self) -> float:
        return min(1.0, self.tick / len(self.rates)) if len(self.rates) else 1.0

    def capacity_rps(self, cores: float) -> float:
        """Requests/s a replica of ``cores`` serves at utilisation 1."""
        return max(cores - self.idle_cores, 0.0) / self.demand_s

    def step(self, cores: Mapping[str, float], dt_s: float) -> dict[str, float]:
        running = {c for c, n in cores.items() if n > 0}
        new = set() if self._running is None else running - self._running
        self._running = running
        self.starts += len(new)
        offered = float(self.rates[self.tick]) if self.tick < len(self.rates) else 0.0
        cap = sum(self.capacity_rps(cores[c]) for c in running)
        admitted = min(offered, self.max_utilisation * cap)
        dropped = offered - admitted
        rho = admitted / cap if cap > 0 else 0.0
        self.served_total += admitted * dt_s
        self.dropped_total += dropped * dt_s
        if admitted > 0:
            self.last_p95_s = mm1_sojourn_p95_s(self.demand_s, rho)
            self.last_mean_s = self.demand_s / (1.0 - rho)
        else:
            self.last_p95_s = self.last_mean_s = None
        if dropped > 0 or (self.last_p95_s or 0.0) > self.slo_s:
            self.slo_violations += 1
        busy: dict[str, float] = {}
        for c, n in cores.items():
            if c not in running:
                busy[c] = 0.0
                continue
            idle = min(self.idle_cores, n)
            b = idle + rho * (n - idle)
            if c in new:
                b += self.start_core_s / dt_s
            busy[c] = min(b, n)
        self.tick += 1
        self.elapsed_s += dt_s
        if self.tick >= len(self.rates):
            self.finished_at_s = self.elapsed_s
        return busy

    def metrics(self) -> dict[str, float]:
        """The app metrics a live service would publish (collectors.app_metrics):
        cumulative requests served, the mean and p95 response time of the tick, ms."""
        m = {"functional_units_total": self.served_total}
        if self.last_mean_s is not None:
            m["latency_ms"] = self.last_mean_s * 1000
        if self.last_p95_s is not None:  # collectors.app_metrics' name for the p95
            m["latency_p95_ms"] = self.last_p95_s * 1000
        return m


Workload = MLTraining | Blast | WebService
