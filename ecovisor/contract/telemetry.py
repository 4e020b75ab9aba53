"""Telemetry messages (MQTT ecovisor/<site>/telemetry/<kind>/<source>, bridged to
ecovisor.telemetry) and the virtual-time clock message of ecovisor.telemetry: one
pydantic definition per kind, their union and its parsers. See docs/contract.md."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from ecovisor.contract.envelope import (
    MAX_LIST,
    MAX_SEQ,
    SCHEMA_VERSION,
    STRICT,
    Amount,
    AppId,
    Counter,
    Ident,
    Message,
    Signed,
    Time,
)


class Telemetry(Message):
    model_config = STRICT

    source: Ident = Field(description="stable id of the publishing device or collector")
    seq: int = Field(
        ge=0, le=MAX_SEQ, description="per-source sequence number; duplicates are ignored"
    )


class SolarTelemetry(Telemetry):
    kind: Literal["solar"] = "solar"
    power_w: Amount = Field(description="instantaneous AC power of the whole site array")
    energy_j: Counter = Field(description="cumulative energy counter since the source started")
    forecast: list[tuple[Time, Amount]] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="(time, W) points of the array's power where the source has them",
    )


class CarbonTelemetry(Telemetry):
    kind: Literal["carbon"] = "carbon"
    intensity_g_per_kwh: Amount
    signal: Literal["average", "marginal"] = "average"
    stale: bool = Field(False, description="true when the last good value is carried forward")
    forecast: list[tuple[Time, Amount]] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="(time, gCO2eq/kWh) points where the source has them",
    )


class BatteryTelemetry(Telemetry):
    kind: Literal["battery"] = "battery"
    stored_wh: Amount
    capacity_wh: Amount
    power_w: Signed = Field(description="net battery power, + charging, - discharging")
    charge_setpoint_w: Amount = 0.0
    max_discharge_setpoint_w: Amount = 0.0
    curtailed_w: Amount = 0.0


class NodeTelemetry(Telemetry):
    kind: Literal["node"] = "node"
    node: Ident
    cores: int = Field(ge=1, le=1_048_576)
    cpu_busy_s: Counter = Field(description="cumulative busy CPU seconds, all cores")
    energy_j: Counter = Field(description="cumulative node energy (RAPL or power model)")
    idle_energy_j: Counter = Field(0.0, description="cumulative idle part of energy_j")
    meter: Literal["model", "rapl", "kepler"] = "model"


class ContainerTelemetry(Telemetry):
    kind: Literal["container"] = "container"
    app: AppId
    container: Ident
    node: Ident | None = None
    cpu_s: Counter = Field(description="cumulative CPU seconds of the container")
    energy_j: Counter = Field(
        description="cumulative energy attributed to the container (active + idle share)"
    )


class ContainerCounters(BaseModel):
    """One container's cumulative counters inside a ``NodeBatchTelemetry``: the fields
    of ``ContainerTelemetry`` that are the container's own (the batch carries the rest)."""

    model_config = STRICT

    app: AppId
    container: Ident
    cpu_s: Counter = Field(description="cumulative CPU seconds of the container")
    energy_j: Counter = Field(
        description="cumulative energy attributed to the container (active + idle share)"
    )


NODE_BATCH_VERSION = 1  # docs/contract.md#node-batches


class NodeBatchTelemetry(Telemetry):
    """Every container of one node in one message per tick (the way Kepler exports per
    node): one ``source`` + ``seq`` for the whole batch, so the ledger dedupes it once.
    ``ContainerTelemetry`` (one message per container) stays accepted."""

    kind: Literal["node_batch"] = "node_batch"
    batch_version: Literal[1] = NODE_BATCH_VERSION
    node: Ident = Field(description="the node every container of the batch is placed on")
    containers: list[ContainerCounters] = Field(
        max_length=MAX_LIST, description="at most 10,000 containers, each at most once"
    )


class AppMetricsTelemetry(Telemetry):
    kind: Literal["app_metrics"] = "app_metrics"
    app: AppId
    latency_ms: Amount | None = None
    progress: Annotated[float, Field(ge=0.0, le=1.0)] | None = None
    functional_units_total: Counter | None = Field(
        None, description="cumulative functional units R (for SCI), e.g. requests served"
    )
    extra: dict[Annotated[str, Field(max_length=128)], Signed] = Field(
        default_factory=dict, max_length=100
    )


AnyTelemetry = Annotated[
    SolarTelemetry
    | CarbonTelemetry
    | BatteryTelemetry
    | NodeTelemetry
    | ContainerTelemetry
    | NodeBatchTelemetry
    | AppMetricsTelemetry,
    Field(discriminator="kind"),
]
TELEMETRY_ADAPTER: TypeAdapter[AnyTelemetry] = TypeAdapter(AnyTelemetry)


class ClockMessage(BaseModel):
    """Virtual-time control on ``ecovisor.telemetry`` (Kafka only, never MQTT): advance a
    site's event-time watermark to ``time``, closing every tick whose end + grace <=
    ``time`` (the ledger's ``--clock event`` mode, for replays)."""

    model_config = STRICT

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["clock"] = "clock"
    site: Ident
    time: Time
    source: Ident | None = Field(
        None, description="who drives the clock; accepted only from the site's replay source"
    )


def parse_telemetry(raw: bytes | str) -> AnyTelemetry:
    """Parse and validate one telemetry payload (raises pydantic.ValidationError)."""
    return TELEMETRY_ADAPTER.validate_json(raw)


# (index in the batch as sent, reason, the entry as sent) of a batch entry not taken
BadEntry = tuple[int, str, Any]


def parse_telemetry_entries(raw: bytes | str) -> tuple[AnyTelemetry, list[BadEntry]]:
    """``parse_telemetry``, except that a node batch whose only errors are in some of its
    entries is taken without them: the batch and, per bad entry, its index, reason and
    raw value (a dead letter each). Any other error raises ValidationError."""
    try:
        return TELEMETRY_ADAPTER.validate_json(raw), []
    except ValidationError as e:
        errors = e.errors()
        bad: dict[int, str] = {}
        for err in errors:
            loc = err.get("loc", ())
            if len(loc) < 3 or loc[:2] != ("node_batch", "containers") or not isinstance(
                loc[2], int
            ):
                raise
            field_name = ".".join(str(x) for x in loc[3:]) or "<entry>"
            bad.setdefault(loc[2], f"{field_name}: {err.get('msg')}")
        body = json.loads(raw)
        entries = body["containers"]
        body["containers"] = [x for i, x in enumerate(entries) if i not in bad]
        msg = TELEMETRY_ADAPTER.validate_json(json.dumps(body))
        return msg, [(i, why, entries[i]) for i, why in sorted(bad.items())]
