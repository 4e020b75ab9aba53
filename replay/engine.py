"""The core replay engine (``--engine core``): one application, one policy, one run,
in-process, faster than real time, with the live system's accounting and policy code.

Each tick ``i`` of the run:

1. the simulated containers (``replay.sim_containers``) apply the actuator actions
   (``ContainerAction``) the ledger emitted for commands of the previous tick, folded
   by the actuators' own bookkeeping (``actuators.state.ActuatorState``: caps -> the
   ledger's CPU quota, suspend/resume, vertical cores, replicas), so a command decided
   on tick ``i-1`` applies from tick ``i``;
2. the workload model runs on the cores each container may use and says which were
   busy; the node's power model turns busy cores into each container's power;
3. telemetry (``replay.tick_telemetry``: carbon intensity, solar counter, each
   container's cumulative energy) goes into ``SiteLedger`` (``streams.ledger_worker``),
   the ledger worker's state machine, and the tick is closed there: the ledger entry,
   the tick notification and the event notifications are the ledger's own (the policy
   gets the ledger's ``Notification`` objects, equal to their JSON parsed back);
4. the notifications go to ``policies.base.PolicyRunner``, the runner of
   ``python -m policies.<name>`` (it builds the ``Observation`` and de-duplicates
   actions); its actions reach ``SiteLedger.command`` as contract commands through
   ``replay.ledger_client.LedgerClient``, an in-process stand-in for
   ``ecovisor.client``. A web service also publishes app metrics
   (``AppMetricsTelemetry``, as ``collectors.app_metrics`` does) into the ledger; the
   runner reads them back as the live one does (``policies.base.api_metrics`` over
   ``get_state``, answered here from the ledger's own state view and the API's
   normalisation of it).

docs/evaluation.md.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from ecovisor.api.models import AppInfo
from ecovisor.cli.export_format import to_csv
from ecovisor.contract import topics
from ecovisor.contract.actuation import ContainerAction
from ecovisor.contract.experiment import (
    AppSpec,
    Experiment,
    MLTrainingSpec,
    ParallelJobSpec,
    PolicySpec,
    SparkSpec,
    WebSpec,
    parallel_tasks,
    site_config,
)
from ecovisor.contract.notifications import Notification
from ecovisor.core.parallel_job import ParallelJob
from ecovisor.core.spark_job import SparkJob
from ecovisor.core.units import US_PER_S
from ecovisor.core.workloads import Blast, MLTraining, WebService
from policies.base import (
    SUBSCRIBED_EVENTS,
    AppView,
    PolicyRunner,
    api_forecasts,
    api_metrics,
    reads,
)
from replay.ledger_client import LedgerClient
from replay.offline import offline_policy
from replay.sim_containers import sim_for
from replay.tick_telemetry import TickTelemetry
from streams.ledger_out import Out
from streams.ledger_worker import SiteLedger


def build_policy(spec: PolicySpec) -> Any:
    """The policy object ``python -m policies.<policy> ARGS`` builds: the module's own
    ``add_args`` parser and ``build``."""
    mod = importlib.import_module(f"policies.{spec.policy}")
    p = argparse.ArgumentParser(prog=f"policies.{spec.policy}", add_help=False)
    add = getattr(mod, "add_args", None)
    if add is not None:
        add(p)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            ns = p.parse_args(spec.args)
    except SystemExit:
        raise ValueError(f"policy {spec.policy}: {err.getvalue().strip()}") from None
    return mod.build(ns)


def make_workload(app: AppSpec, load_rps: np.ndarray | None = None, seed: int = 0) -> Workload:
    """The app's workload model; a web service serves ``load_rps`` (requests/s per tick
    from its arrival); the parallel job draws its stragglers from ``seed``."""
    w = app.workload
    if isinstance(w, SparkSpec):
        return SparkJob(n_tasks=w.n_tasks, task_s=w.task_s, worker_cores=w.worker_cores)
    if isinstance(w, ParallelJobSpec):
        return ParallelJob(
            tasks=parallel_tasks(app.id, w), iterations=w.iterations, compute_s=w.compute_s,
            io_s=w.io_s, compute_jitter=w.compute_jitter, base_cores=w.base_cores,
            straggler_p=w.straggler_p,
            straggler_factor=w.straggler_factor, seed=seed,
        )  # fmt: skip
    if isinstance(w, WebSpec):
        if load_rps is None:
            raise ValueError(f"app {app.id}: a web service needs its load trace")
        return WebService(
            rates=[float(x) for x in load_rps],
            demand_s=w.demand_ms / 1000,
            idle_cores=w.idle_cores,
            start_core_s=w.start_core_s,
            max_utilisation=w.max_utilisation,
            slo_s=w.slo_p95_ms / 1000,
        )
    if isinstance(w, MLTrainingSpec):
        return MLTraining(
            work_s=w.work_h * 3600, base_cores=w.base_cores, serial_fraction=w.serial_fraction
        )
    return Blast(work_s=w.work_h * 3600, base_cores=w.base_cores, queue_limit=w.queue_limit)


Workload = MLTraining | Blast | WebService | SparkJob | ParallelJob


def reporting(workload: Workload) -> Any:
    """The model when it reports app metrics (published as a live app would), else None."""
    return workload if isinstance(workload, WebService | SparkJob | ParallelJob) else None


@dataclass
class RunResult:
    """One run. Carbon: the ledger's cumulative total for the app at the end (its
    containers and any grid charging of its battery); energy: its containers'
    cumulative energy (the job's demand, served by solar, battery or grid); runtime:
    arrival to the finishing instant (or the time simulated, when not finished);
    ``series``: per tick (tick end ``t``, epoch s); ``entries_sum``: the entries' totals
    summed (a cross-check, only when the ledger CSV is written)."""

    app: str
    label: str
    run: int
    arrival: str
    finished: bool
    runtime_h: float
    carbon_g: float
    energy_wh: float
    ticks: int
    commands: int
    series: dict[str, list[float]] = field(default_factory=dict)
    entries_sum: dict[str, float] = field(default_factory=dict)
    # web service only (None / 0 for the batch jobs): ticks violating the SLO, requests
    # served and dropped, replica start-ups
    slo_violations: int | None = None
    served: float = 0.0
    dropped: float = 0.0
    replica_starts: int = 0


def arrival_tick(exp: Experiment, run: int, first: int, last: int) -> int:
    """The run's arrival as a tick index of the window (uniform in [first, last])."""
    rng = np.random.default_rng(exp.arrivals.seed + run)
    return int(rng.integers(first, max(first, last) + 1))


def run_one(
    exp: Experiment,
    app: AppSpec,
    label: str,
    run: int,
    carbon: np.ndarray,
    solar_w: np.ndarray,
    t0_us: int,
    arrival_i: int,
    ledger_csv: Path | None = None,
    progress: Callable[[int], None] | None = None,
    load_rps: np.ndarray | None = None,
) -> RunResult:
    """One run: ``carbon`` and ``solar_w`` are per-tick values from the simulation's
    first tick (``t0_us``, the warm-up's start); the job arrives at tick ``arrival_i``;
    a web service serves ``load_rps`` (per tick from the arrival)."""
    cfg = site_config(exp, app)
    led = SiteLedger.new(cfg)
    dt = cfg.site.shape.tick_s
    dt_us = round(dt * US_PER_S)
    workload = make_workload(app, load_rps, seed=exp.arrivals.seed + run)
    web = workload if isinstance(workload, WebService) else None
    reports = reporting(workload)
    sim = sim_for(app)
    ntopic = topics.notifications(app.id)
    pending_notes: list[Notification] = []

    def on_out(o: Out) -> None:
        if o.topic == topics.ACTUATOR_CONTAINERS:
            sim.pending.append(ContainerAction.model_validate_json(o.value))
        elif o.topic == ntopic:
            pending_notes.append(notification(o))

    client = LedgerClient(led, app.id, on_out)
    # what the live policy gets from GET /v1/apps/{app}
    info = AppInfo.of(cfg, cfg.apps[0]).model_dump()
    view = AppView.from_info(info)
    runner = policy_runner(exp, app, label, client, view, workload, carbon, arrival_i)
    client.now_us = t0_us
    runner.start()
    tel = TickTelemetry(cfg, app.id, exp.site.solar_nameplate_w > 0, carbon,
                        exp.traces.carbon.forecast_h)  # fmt: skip
    n = len(carbon)
    ser = new_series()
    entries: list[bytes] = []
    entries_sum = {"energy_mj": 0.0, "carbon_ug": 0.0}
    cum = (0, 0)
    finished_tick: int | None = None
    i = 0
    for i in range(n):
        start_us = t0_us + i * dt_us
        end_us = start_us + dt_us
        sim.apply_pending()
        alloc = sim.cores()
        if i >= arrival_i and not workload.done:
            busy = workload.step(alloc, dt)
            if workload.done:
                finished_tick = i
        else:
            busy = dict.fromkeys(alloc, 0.0)
        # --- telemetry of the tick
        metrics = reports.metrics() if reports is not None and i >= arrival_i else None
        sent = tel.tick(i, start_us, dt_us, float(carbon[i]), float(solar_w[i]), busy, metrics,
                        i - arrival_i)  # fmt: skip
        for m, t_us in sent:
            why = led.ingest(m, t_us, None)
            if why is not None:  # the run's own telemetry: a refusal is a bug, never data
                raise RuntimeError(f"tick {i}: the ledger refused the replay's {m.kind} "
                                   f"telemetry: {why}")
        # --- close the tick in the ledger; its notifications go to the policy
        outs, rows = led.close(end_us)
        for _app, _k, row in rows:
            # energy: the containers' (the job's demand); carbon: the app's total
            cum = (sum(line[0] for line in row["containers"].values()), row["carbon_ug"])
        client.now_us = end_us
        for o in outs:
            if o.topic == topics.LEDGER:
                if ledger_csv is not None:  # kept (and summed, a cross-check) for the CSV
                    entries.append(o.value)
                    e = json.loads(o.value)
                    entries_sum["energy_mj"] += e["demand_mj"]
                    entries_sum["carbon_ug"] += e["total"]["carbon_ug"]
            elif o.topic == ntopic:
                pending_notes.append(notification(o))
        while pending_notes:
            note = pending_notes.pop(0)
            if note.type == "tick":
                p95 = web.last_p95_s if web is not None and i >= arrival_i else None
                prog = workload.progress if i >= arrival_i else 0.0
                add_tick(ser, note.data, end_us, alloc, prog, cum, p95)
                runner.on_tick(note)
            elif note.type in SUBSCRIBED_EVENTS:
                runner.on_notification(note)
        if progress is not None:
            progress(1)
        if finished_tick is not None:
            break
    if ledger_csv is not None:
        ledger_csv.parent.mkdir(parents=True, exist_ok=True)
        ledger_csv.write_text(to_csv([json.loads(r) for r in entries]))
    arrival = datetime.fromtimestamp((t0_us + arrival_i * dt_us) / US_PER_S, UTC)
    return run_result(app, label, run, arrival, workload, cum, i + 1, client.n, ser, entries_sum)


def notification(o: Out) -> Notification:
    """The notification the ledger sent: the message itself when the ledger made it
    (its JSON never rendered: a live policy parses that JSON back to an equal message),
    else its bytes parsed."""
    m = o.message
    return m if isinstance(m, Notification) else Notification.model_validate_json(o.value)


SERIES = ("t", "intensity", "solar_w", "power_w", "battery_wh", "cores", "progress",
          "carbon_g", "energy_wh", "replicas", "p95_ms")  # fmt: skip


def new_series() -> dict[str, list[float]]:
    return {k: [] for k in SERIES}


def add_tick(
    ser: dict[str, list[float]],
    d: dict[str, Any],
    end_us: int,
    alloc: dict[str, float],
    progress: float,
    cum: tuple[int, int],
    p95_s: float | None,
) -> None:
    """One tick of a run's series: ``d`` the tick notification's data, ``alloc`` the
    containers' cores, ``cum`` the app's cumulative (container energy mJ, carbon µg)."""
    ser["t"].append(end_us / US_PER_S)
    ser["intensity"].append(d["grid_carbon_g_per_kwh"])
    ser["solar_w"].append(d["solar_w"])
    ser["power_w"].append(d["app_power_w"])
    ser["battery_wh"].append(d["battery_charge_level_wh"])
    ser["cores"].append(sum(alloc.values()))
    ser["progress"].append(progress)
    ser["carbon_g"].append(cum[1] / 1e6)
    ser["energy_wh"].append(cum[0] / 3.6e6)
    ser["replicas"].append(sum(1 for x in alloc.values() if x > 0))
    ser["p95_ms"].append(p95_s * 1000 if p95_s is not None else 0.0)


def run_result(
    app: AppSpec,
    label: str,
    run: int,
    arrival: datetime,
    workload: Workload,
    cum: tuple[int, int],
    ticks: int,
    commands: int,
    ser: dict[str, list[float]],
    entries_sum: dict[str, float],
) -> RunResult:
    """A run's result from its workload model and the ledger's cumulative totals."""
    web = workload if isinstance(workload, WebService) else None
    done_s = workload.finished_at_s
    return RunResult(
        app=app.id,
        label=label,
        run=run,
        arrival=arrival.isoformat(),
        finished=done_s is not None,
        runtime_h=(done_s if done_s is not None else workload.elapsed_s) / 3600,
        carbon_g=cum[1] / 1e6,
        energy_wh=cum[0] / 3.6e6,
        ticks=ticks,
        commands=commands,
        series=ser,
        entries_sum=entries_sum,
        slo_violations=web.slo_violations if web is not None else None,
        served=web.served_total if web is not None else 0.0,
        dropped=web.dropped_total if web is not None else 0.0,
        replica_starts=web.starts if web is not None else 0,
    )


def policy_runner(
    exp: Experiment,
    app: AppSpec,
    label: str,
    client: Any,
    view: AppView,
    workload: Workload,
    carbon: np.ndarray,
    arrival_i: int,
) -> PolicyRunner:
    """The runner of the run's policy (both engines): the policy ``python -m
    policies.<name>`` builds (or its offline baseline), with the app's metrics when the
    workload reports them and the forecasts when the experiment publishes one."""
    spec = app.policies[label]
    policy = build_policy(spec)
    if spec.offline:
        policy = offline_policy(exp, spec, policy, view, app, workload, carbon, arrival_i)
    # the reads the live runner makes (policies.base.reads), where the replay has them
    needs_metrics, needs_forecasts = reads(policy)
    metrics = api_metrics(client) if needs_metrics and reporting(workload) else None
    forecasts = api_forecasts(client) if needs_forecasts and exp.traces.carbon.forecast_h else None
    return PolicyRunner(policy, client, view, metrics, forecasts)
