"""The app's containers as the actuators would run them, simulated for both replay
engines (replay/engine.py, replay/pipeline.py): the actuators' own bookkeeping
(``actuators.state.ActuatorState``) decides how many cores each container may use."""

from __future__ import annotations

from actuators.state import UNKNOWN, ActuatorState
from ecovisor.contract.actuation import ContainerAction
from ecovisor.contract.experiment import (
    TEMPLATE,
    AppSpec,
    BlastSpec,
    ParallelJobSpec,
    SparkSpec,
    WebSpec,
    parallel_tasks,
)


class SimContainers:
    """The app's containers as the actuators would run them: actions folded into the
    actuators' ``ActuatorState``; a container may use its base cores (the workload's),
    or its ``scale_container`` cores, at most its cap's quota, none while suspended; a
    template's replicas 1..n run."""

    def __init__(self, configured: list[str], base_cores: float, replicas: int) -> None:
        self.configured = configured
        self.base = base_cores
        self.state = ActuatorState()
        if replicas:
            self.state.replicas[TEMPLATE] = replicas
        self.pending: list[ContainerAction] = []

    def apply_pending(self) -> None:
        for a in self.pending:
            self.state.fold(a, _no_quota)
        self.pending.clear()

    def names(self) -> list[str]:
        n = self.state.replicas.get(TEMPLATE, 0)
        return self.configured + [f"{TEMPLATE}-{i}" for i in range(1, n + 1)]

    def cores(self) -> dict[str, float]:
        out = {}
        for c in self.names():
            sp = self.state.setpoints(c)
            if sp.baseline == UNKNOWN:
                sp.baseline = self.base
            lim = sp.effective_limit()
            out[c] = 0.0 if sp.suspended else float(lim if lim is not None else self.base)
        return out


def _no_quota(container: str, watts: float) -> float:
    raise ValueError("the ledger always computes a cap's quota")  # pragma: no cover


def sim_for(app: AppSpec) -> SimContainers:
    """The app's containers at the start of a run (both engines)."""
    w = app.workload
    if isinstance(w, SparkSpec):  # no workers until the policy starts them
        return SimContainers([], w.worker_cores, 0)
    if isinstance(w, ParallelJobSpec):
        return SimContainers(parallel_tasks(app.id, w), w.base_cores, 0)
    if isinstance(w, BlastSpec):
        return SimContainers([], w.cores_per_replica, round(w.base_cores / w.cores_per_replica))
    if isinstance(w, WebSpec):
        return SimContainers([], w.cores_per_replica, w.replicas)
    return SimContainers([f"{app.id}-1"], w.base_cores, 0)
