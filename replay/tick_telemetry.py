"""``TickTelemetry``: what the collectors would send for a tick of a replayed run, as
contract messages with their event times; the core engine ingests them into the ledger's
state machine, the pipeline engine publishes them (replay/engine.py, replay/pipeline.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np

from collectors.power import split_batches
from ecovisor.contract.bus_access import app_metrics_source, node_batch_source
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.telemetry import (
    NODE_BATCH_MODELS,
    NODE_BATCH_VERSION,
    AppMetricsTelemetry,
    CarbonTelemetry,
    SolarTelemetry,
)
from ecovisor.core.units import US_PER_S

SAMPLE_BEFORE_END_US = 1_000  # counters are sampled 1 ms before the tick's end


def metrics_fields(m: dict[str, float]) -> dict[str, Any]:
    """A model's flat metrics as ``AppMetricsTelemetry`` fields: its named fields, the
    rest in ``extra`` (which the API flattens back, as for a live app)."""
    named = AppMetricsTelemetry.model_fields
    out: dict[str, Any] = {k: v for k, v in m.items() if k in named}
    extra = {k: v for k, v in m.items() if k not in named}
    if extra:
        out["extra"] = extra
    return out


class TickTelemetry:
    """What the collectors would send for a tick, as contract messages with their event
    time (µs), in the order sent: the carbon intensity at the tick's start; the solar
    counter (a zero baseline first) and, 1 ms before the tick's end, the app's metrics
    and each container's cumulative energy from the node's power model, P(busy) -
    P(idle), in node batches as the power collector sends them (a batch of zero
    baselines at the tick's start for the containers first seen in it). The core
    engine ingests them into ``SiteLedger``; the pipeline engine publishes them."""

    def __init__(
        self,
        cfg: EcovisorConfig,
        app: str,
        solar: bool,
        carbon: np.ndarray | None = None,
        forecast_h: float = 0.0,
    ) -> None:
        node = cfg.site.nodes[0]
        # the carbon forecast published with each tick: the trace's next ``forecast_h``
        # hours, one point an hour (or a tick, if longer), each at its tick's start
        self.carbon = carbon
        self.fc_at: list[datetime] | None = None
        self.fc_v: list[float] = []
        dt_s = cfg.site.shape.tick_s
        self.fc_step = max(1, round(3600 / dt_s))
        self.fc_ticks = int(forecast_h * 3600 // dt_s) if carbon is not None else 0
        self.site, self.app, self.node, self.solar = cfg.site.id, app, node.id, solar
        self.model = node.model()
        self.dt = cfg.site.shape.tick_s
        self.energy_j: dict[str, float] = {}  # every container seen: cumulative J
        self.batch_source = node_batch_source(node.id)
        self.batch_seq = 0
        self.max_bytes = cfg.site.limits.max_message_bytes
        self.solar_j = 0.0

    def tick(
        self,
        i: int,
        start_us: int,
        dt_us: int,
        intensity: float,
        solar_w: float,
        busy: dict[str, float],
        metrics: dict[str, float] | None,
        metrics_seq: int,
    ) -> list[tuple[Any, int]]:
        site, app, dt = self.site, self.app, self.dt
        t_start = datetime.fromtimestamp(start_us / US_PER_S, UTC)
        t_sample_us = start_us + dt_us - SAMPLE_BEFORE_END_US
        t_sample = datetime.fromtimestamp(t_sample_us / US_PER_S, UTC)
        fc: list[tuple[datetime, float]] = []
        if self.fc_ticks and self.carbon is not None:
            last = min(len(self.carbon) - 1, i + self.fc_ticks)
            if self.fc_at is None:  # every tick's start and intensity, made once a run
                t0 = start_us - i * dt_us
                self.fc_at = [datetime.fromtimestamp((t0 + j * dt_us) / US_PER_S, UTC)
                              for j in range(len(self.carbon))]  # fmt: skip
                self.fc_v = [float(x) for x in self.carbon]
            at, v = self.fc_at, self.fc_v
            fc = [(at[j], v[j]) for j in range(i + self.fc_step, last + 1, self.fc_step)]
        out: list[tuple[Any, int]] = [
            (CarbonTelemetry(site=site, time=t_start, source="trace-carbon", seq=i,
                             intensity_g_per_kwh=intensity, forecast=fc), start_us)
        ]  # fmt: skip
        if self.solar:
            if i == 0:
                out.append((SolarTelemetry(site=site, time=t_start, source="trace-solar", seq=0,
                                           power_w=0.0, energy_j=0.0), start_us))  # fmt: skip
            self.solar_j += solar_w * dt
            sample = SolarTelemetry(site=site, time=t_sample, source="trace-solar", seq=i + 1,
                                    power_w=solar_w, energy_j=self.solar_j)  # fmt: skip
            out.append((sample, t_sample_us))
        energy_j = self.energy_j
        new = [c for c in busy if c not in energy_j]
        if new:  # first sight: a zero baseline at the tick's start
            for c in new:
                energy_j[c] = 0.0
            out.extend(self._batches(new, start_us))
        if metrics is not None:  # the app's own metrics, as a live app
            out.append((AppMetricsTelemetry(site=site, time=t_sample, seq=metrics_seq, app=app,
                                            source=app_metrics_source(app),
                                            **metrics_fields(metrics)), t_sample_us))  # fmt: skip
        idle_w = self.model.idle_power_w
        power = self.model.power_at_busy_cores
        for c, b in busy.items():
            if b > 0:
                energy_j[c] += (power(b) - idle_w) * dt
        # every container ever seen, every tick (one scaled away keeps its counter)
        out.extend(self._batches(list(energy_j), t_sample_us))
        return out

    def _batches(self, containers: list[str], t_us: int) -> list[tuple[Any, int]]:
        """The node's counters of ``containers`` at ``t_us`` as the power collector sends
        them (``NODE_BATCH_VERSION``): node batches under the site's message size limit,
        one seq each."""
        t = datetime.fromtimestamp(t_us / US_PER_S, UTC)
        app, energy_j = self.app, self.energy_j
        rows = [(app, c, 0.0, energy_j[c]) for c in containers]
        model = NODE_BATCH_MODELS[NODE_BATCH_VERSION]
        out: list[tuple[Any, int]] = []
        for chunk in split_batches(rows, self.max_bytes, NODE_BATCH_VERSION):
            self.batch_seq += 1
            out.append((model(site=self.site, time=t, source=self.batch_source,
                              seq=self.batch_seq, node=self.node,
                              containers=model.containers_of(chunk)), t_us))  # fmt: skip
        return out
