"""``offline: true`` in an experiment file: the policy's offline baseline, built from the
same arguments and the whole run's traces instead of the policy itself, then replayed
through the ordinary policy path (docs/evaluation.md#the-experiment-file):

| policy | app | baseline |
|---|---|---|
| ``suspend_resume`` | ML training, BLAST | the clairvoyant suspend-resume (``replay.baselines``) |
| ``right_sizing`` | web | the offline optimum of its cost model (``replay.baselines``) |
| ``dynamic_budget`` | web | the least-carbon SLO-meeting replicas (``replay.baselines``) |
| ``solar_battery`` | Spark | the fastest zero-grid schedule (``replay.solar_baselines``) |
| ``solar_following_caps`` | parallel job | the fastest caps in the policies' envelope (idem) |
| ``straggler_replicas`` | parallel job | the most replicas at every tick (idem) |
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ecovisor.contract.experiment import (
    AppSpec,
    Experiment,
    ParallelJobSpec,
    PolicySpec,
    SparkSpec,
    WebSpec,
    site_config,
)
from ecovisor.core.parallel_job import ParallelJob
from ecovisor.core.spark_job import SparkJob
from ecovisor.core.units import power_to_mj
from ecovisor.core.virtual_battery import battery_limits
from ecovisor.core.workloads import Blast, MLTraining, WebService
from policies.base import AppView
from replay.baselines import (
    ScheduledReplicas,
    ScheduledSuspend,
    lowest_carbon_ticks,
    right_sizing_offline,
    web_slo_offline,
)
from replay.solar_baselines import Battery, ClairvoyantCaps, ClairvoyantSpark

OFFLINE = {
    "suspend_resume": (MLTraining, Blast),
    "right_sizing": (WebService,),
    "dynamic_budget": (WebService,),
    "solar_battery": (SparkJob,),
    "solar_following_caps": (ParallelJob,),
    "straggler_replicas": (ParallelJob,),
}


def offline_policy(
    exp: Experiment,
    spec: PolicySpec,
    policy: Any,
    view: AppView,
    app: AppSpec,
    workload: Any,
    carbon: np.ndarray,
    arrival_i: int,
) -> Any:
    """The offline baseline of ``spec`` (``policy`` built from its arguments) for one
    run: ``carbon`` one intensity per tick of the run, the job arriving at tick
    ``arrival_i``; ``workload`` the run's fresh model (its load, its seeded work)."""
    kinds = OFFLINE.get(spec.policy, ())
    if not isinstance(workload, kinds):
        raise ValueError(
            "offline: suspend_resume on ML training or BLAST, right_sizing or dynamic_budget "
            "on a web app, solar_battery on Spark, solar_following_caps or straggler_replicas "
            f"on a parallel job (not {spec.policy} on {app.workload.type})"
        )
    carbon = np.asarray(carbon, float)
    n = len(carbon)
    w = app.workload
    if isinstance(workload, MLTraining | Blast):
        # base-allocation ticks the work needs (a job ends inside its last tick)
        need = math.ceil(workload.work_s / (view.tick_s or 1.0) - 1e-9)
        return ScheduledSuspend(lowest_carbon_ticks(carbon, arrival_i, need))
    cfg = site_config(exp, app)
    model = cfg.site.nodes[0].model()
    core_w = model.power_at_busy_cores(1.0) - model.idle_power_w
    if isinstance(workload, WebService) and isinstance(w, WebSpec):
        if spec.policy == "right_sizing":
            loads = np.zeros(n)
            r = np.asarray(workload.rates, dtype=float)[: max(0, n - arrival_i)]
            loads[arrival_i : arrival_i + len(r)] = r
            return right_sizing_offline(policy, view, loads, carbon, w.replicas)
        if exp.site.solar_nameplate_w > 0 or exp.site.battery_capacity_wh > 0:
            raise ValueError("offline dynamic_budget: a grid-only site (no solar, no battery)")
        if not policy.template:
            raise ValueError("offline dynamic_budget: needs --template (the replicas)")
        most = min(policy.max_w, w.max_replicas)
        return web_slo_offline(policy.template, workload, w.cores_per_replica, most,
                               w.replicas, carbon, arrival_i, core_w, exp.site.tick_s,
                               policy.slo / 1000)  # fmt: skip
    if isinstance(workload, SparkJob) and isinstance(w, SparkSpec):
        if not policy.template:
            raise ValueError("offline solar_battery: needs --template (the workers)")
        most = min(policy.max_w, w.max_workers)
        worker_w = model.power_at_busy_cores(w.worker_cores) - model.idle_power_w
        share = cfg.shares()[app.id]
        discharge_w = min(share.discharge_limit_w, most * worker_w)
        battery = Battery(battery_limits(share, cfg.site.shape),
                          power_to_mj(discharge_w, exp.site.tick_s))  # fmt: skip
        block = math.ceil(w.task_s / exp.site.tick_s - 1e-9)  # one task at one worker
        return ClairvoyantSpark(exp, policy.template, most, worker_w, battery, discharge_w,
                                block, arrival_i, n)  # fmt: skip
    assert isinstance(workload, ParallelJob) and isinstance(w, ParallelJobSpec)
    if spec.policy == "straggler_replicas":
        return ScheduledReplicas(policy.template, [min(policy.max_replicas, w.max_replicas)] * n)
    if policy.with_battery:
        raise ValueError("offline solar_following_caps: without --with-battery")
    idle = {c: cfg.cap_quota(c, None).idle_share_w for c in workload.tasks}
    return ClairvoyantCaps(exp, workload, model, idle, policy.min_cap, arrival_i, n)
