"""Workload models of the paper's §5 applications for replay: PURE (no I/O, no clocks).

A model is told, every tick, how many CPU cores each of its containers may use in that
tick (0 when suspended or not running: what the simulated containers derive from the
actuators' setpoints) and answers how many cores were busy in each container over the
tick (the power of the tick follows from the node's power model) while it advances its
own progress. Work is counted in *base-seconds*: one second of the job running at its
base allocation. A job is done when its progress reaches ``work_s``.

Parameters and their sources are listed in docs/evaluation.md (§ Workload models); none
is fitted to the paper's results.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


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


Workload = MLTraining | Blast
