"""The core replay engine (``--engine core``): one application, one policy, one run,
in-process, faster than real time, with the live system's accounting and policy code.

Each tick ``i`` of the run:

1. the simulated containers apply the actuator actions (``ContainerAction``) the
   ledger emitted for commands of the previous tick, folded by the actuators' own
   bookkeeping (``actuators.state.ActuatorState``: caps -> the ledger's CPU quota,
   suspend/resume, vertical cores, replicas), so a command decided on tick ``i-1``
   applies from tick ``i``;
2. the workload model runs on the cores each container may use and says which were
   busy; the node's power model turns busy cores into each container's power;
3. telemetry (carbon intensity, solar counter, each container's cumulative energy) goes
   into ``SiteLedger`` (``streams.ledger_worker``), the ledger worker's state machine,
   and the tick is closed there: the ledger entry, the tick notification and the event
   notifications are the ledger's, byte for byte;
4. the notifications go to ``policies.base.PolicyRunner``, the runner of
   ``python -m policies.<name>`` (it builds the ``Observation`` and de-duplicates
   actions); its actions reach ``SiteLedger.command`` as contract commands through
   ``LedgerClient``, an in-process stand-in for ``ecovisor.client``. A web service
   also publishes app metrics (``AppMetricsTelemetry``, as ``collectors.app_metrics``
   does) into the ledger; the runner reads them back as the live one does
   (``policies.base.api_metrics`` over ``get_state``, answered here from the ledger's
   own state view and the API's normalisation of it).

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

from actuators.state import UNKNOWN, ActuatorState
from ecovisor.api.models import AppInfo
from ecovisor.api.state_source import live_state_from_view
from ecovisor.cli.export_format import to_csv
from ecovisor.contract import topics
from ecovisor.contract.bus_access import app_metrics_source
from ecovisor.contract.experiment import (
    TEMPLATE,
    TOKEN,
    AppSpec,
    BlastSpec,
    Experiment,
    MLTrainingSpec,
    PolicySpec,
    WebSpec,
    site_config,
)
from ecovisor.contract.schemas import (
    COMMAND_TYPES,
    AppMetricsTelemetry,
    CarbonTelemetry,
    ContainerAction,
    ContainerTelemetry,
    Notification,
    SolarTelemetry,
    command_fields,
)
from ecovisor.core.workloads import Blast, MLTraining, WebService
from policies.base import SUBSCRIBED_EVENTS, AppView, PolicyRunner, api_metrics
from replay.baselines import right_sizing_offline
from streams.ledger_views import state_view
from streams.ledger_worker import SiteLedger

US = 1_000_000
SAMPLE_BEFORE_END_US = 1_000  # counters are sampled 1 ms before the tick's end


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


def make_workload(app: AppSpec, load_rps: np.ndarray | None = None) -> Workload:
    """The app's workload model; a web service serves ``load_rps`` (requests/s per tick
    from its arrival)."""
    w = app.workload
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


@dataclass
class Ref:
    command_id: str


class LedgerClient:
    """What a policy runner needs of ``ecovisor.client``: ``command(type, **fields)`` and
    one method per command named after it, here publishing straight into the ledger's
    ``SiteLedger.command`` (the validation, settings and actions of the live ledger).
    Commands are stamped 1 µs before the end of the tick whose notification caused
    them, so settings apply from the next tick, as do the containers' actions."""

    def __init__(self, led: SiteLedger, app: str, on_out: Callable[[Any], None]) -> None:
        self.led, self.app, self.on_out = led, app, on_out
        self.site = led.cfg.site.id
        self.now_us = 0
        self.n = 0

    def command(self, type: str, **fields: Any) -> Ref:
        cls = COMMAND_TYPES[type]
        self.n += 1
        cmd = cls(
            site=self.site,
            time=datetime.fromtimestamp((self.now_us - 1) / US, UTC),
            app=self.app,
            token=TOKEN,
            command_id=f"r{self.n}",
            **fields,
        )
        for o in self.led.command(cmd.to_json(), self.now_us):
            self.on_out(o)
        return Ref(cmd.command_id)

    def __getattr__(self, name: str) -> Callable[..., Ref]:
        cls = COMMAND_TYPES.get(name)
        if cls is None:
            raise AttributeError(name)
        names = list(command_fields(cls))
        return lambda *args: self.command(name, **dict(zip(names, args, strict=False)))

    def get_state(self) -> dict[str, Any]:
        """``GET /v1/apps/{app}/state``: the ledger's state view as the API normalises
        it (``LiveState``), app metrics included."""
        view = state_view(self.led, self.app) or {}
        return live_state_from_view(self.app, view).model_dump(mode="json")


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


Workload = MLTraining | Blast | WebService


def _no_quota(container: str, watts: float) -> float:
    raise ValueError("the ledger always computes a cap's quota")  # pragma: no cover


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
    dt_us = round(dt * US)
    site = cfg.site.id
    node = cfg.site.nodes[0]
    model = node.model()
    idle_w = model.idle_power_w
    w = app.workload
    workload = make_workload(app, load_rps)
    web = workload if isinstance(workload, WebService) else None
    if isinstance(w, BlastSpec):
        sim = SimContainers([], w.cores_per_replica, round(w.base_cores / w.cores_per_replica))
    elif isinstance(w, WebSpec):
        sim = SimContainers([], w.cores_per_replica, w.replicas)
    else:
        sim = SimContainers([f"{app.id}-1"], w.base_cores, 0)
    ntopic = topics.notifications(app.id)
    pending_notes: list[Notification] = []

    def on_out(o: Any) -> None:
        if o.topic == topics.ACTUATOR_CONTAINERS:
            sim.pending.append(ContainerAction.model_validate_json(o.value))
        elif o.topic == ntopic:
            pending_notes.append(Notification.model_validate_json(o.value))

    client = LedgerClient(led, app.id, on_out)
    # what the live policy gets from GET /v1/apps/{app}
    info = AppInfo.of(cfg, cfg.apps[0]).model_dump()
    view = AppView.from_info(info)
    spec = app.policies[label]
    policy = build_policy(spec)
    if spec.offline:
        policy = _offline(spec, policy, view, app, workload, carbon, arrival_i)
    runner = PolicyRunner(policy, client, view, api_metrics(client) if web else None)
    client.now_us = t0_us
    runner.start()
    energy_j: dict[str, float] = {}
    seq: dict[str, int] = {}
    solar_j = 0.0
    n = len(carbon)
    ser: dict[str, list[float]] = {
        k: []
        for k in (
            "t",
            "intensity",
            "solar_w",
            "power_w",
            "battery_wh",
            "cores",
            "progress",
            "carbon_g",
            "energy_wh",
            "replicas",
            "p95_ms",
        )
    }
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
        t_start = datetime.fromtimestamp(start_us / US, UTC)
        t_sample_us = end_us - SAMPLE_BEFORE_END_US
        t_sample = datetime.fromtimestamp(t_sample_us / US, UTC)
        led.ingest(
            CarbonTelemetry(
                site=site,
                time=t_start,
                source="trace-carbon",
                seq=i,
                intensity_g_per_kwh=float(carbon[i]),
            ),
            start_us,
            None,
        )
        if exp.site.solar_nameplate_w > 0:
            if i == 0:
                led.ingest(
                    SolarTelemetry(
                        site=site,
                        time=t_start,
                        source="trace-solar",
                        seq=0,
                        power_w=0.0,
                        energy_j=0.0,
                    ),
                    start_us,
                    None,
                )
            solar_j += float(solar_w[i]) * dt
            led.ingest(
                SolarTelemetry(
                    site=site,
                    time=t_sample,
                    source="trace-solar",
                    seq=i + 1,
                    power_w=float(solar_w[i]),
                    energy_j=solar_j,
                ),
                t_sample_us,
                None,
            )
        for c in busy:
            if c not in seq:  # first sight: a zero baseline at the tick's start
                seq[c] = 0
                energy_j[c] = 0.0
                led.ingest(
                    ContainerTelemetry(
                        site=site,
                        time=t_start,
                        source=f"sim-{c}",
                        seq=0,
                        app=app.id,
                        container=c,
                        node=node.id,
                        cpu_s=0.0,
                        energy_j=0.0,
                    ),
                    start_us,
                    None,
                )
        if web is not None and i >= arrival_i:  # the app's own metrics, as a live app
            led.ingest(
                AppMetricsTelemetry(
                    site=site,
                    time=t_sample,
                    source=app_metrics_source(app.id),
                    seq=i - arrival_i,
                    app=app.id,
                    **web.metrics(),
                ),
                t_sample_us,
                None,
            )
        for c in seq:
            b = busy.get(c, 0.0)
            if b > 0:
                energy_j[c] += (model.power_at_busy_cores(b) - idle_w) * dt
            seq[c] += 1
            led.ingest(
                ContainerTelemetry(
                    site=site,
                    time=t_sample,
                    source=f"sim-{c}",
                    seq=seq[c],
                    app=app.id,
                    container=c,
                    node=node.id,
                    cpu_s=0.0,
                    energy_j=energy_j[c],
                ),
                t_sample_us,
                None,
            )
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
                pending_notes.append(Notification.model_validate_json(o.value))
        while pending_notes:
            note = pending_notes.pop(0)
            if note.type == "tick":
                d = note.data
                ser["t"].append(end_us / US)
                ser["intensity"].append(d["grid_carbon_g_per_kwh"])
                ser["solar_w"].append(d["solar_w"])
                ser["power_w"].append(d["app_power_w"])
                ser["battery_wh"].append(d["battery_charge_level_wh"])
                ser["cores"].append(sum(alloc.values()))
                ser["progress"].append(workload.progress if i >= arrival_i else 0.0)
                ser["carbon_g"].append(cum[1] / 1e6)
                ser["energy_wh"].append(cum[0] / 3.6e6)
                ser["replicas"].append(sum(1 for x in alloc.values() if x > 0))
                p95 = web.last_p95_s if web is not None and i >= arrival_i else None
                ser["p95_ms"].append(p95 * 1000 if p95 is not None else 0.0)
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
    arrival = datetime.fromtimestamp((t0_us + arrival_i * dt_us) / US, UTC)
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
        ticks=i + 1,
        commands=client.n,
        series=ser,
        entries_sum=entries_sum,
        slo_violations=web.slo_violations if web is not None else None,
        served=web.served_total if web is not None else 0.0,
        dropped=web.dropped_total if web is not None else 0.0,
        replica_starts=web.starts if web is not None else 0,
    )


def _offline(
    spec: PolicySpec,
    policy: Any,
    view: AppView,
    app: AppSpec,
    workload: Workload,
    carbon: np.ndarray,
    arrival_i: int,
) -> Any:
    """The offline baseline of ``spec`` (replay/baselines.py): the whole run's offered
    load (0 before the arrival) and intensity, known in advance."""
    w = app.workload
    if spec.policy != "right_sizing" or not isinstance(w, WebSpec):
        raise ValueError(f"offline: only right_sizing on a web app (not {spec.policy})")
    assert isinstance(workload, WebService)
    n = len(carbon)
    loads = np.zeros(n)
    r = np.asarray(workload.rates, dtype=float)[: max(0, n - arrival_i)]
    loads[arrival_i : arrival_i + len(r)] = r
    return right_sizing_offline(policy, view, loads, np.asarray(carbon, float), w.replicas)

