"""The public message contract: one pydantic definition per message, used by every
producer and consumer (collectors, bridge, ledger, actuators, CLI, REST API).

Every message carries ``schema_version``, the ``site`` id and an event ``time`` (UTC).
Telemetry also carries a ``source`` id and a per-source ``seq``; commands carry a
``command_id`` (idempotency key) and the app's ``token``. Units: W, Wh, J, gCO2eq/kWh,
g, mg/s, seconds. See docs/contract.md.

Telemetry, clock messages and commands come from devices and tenants, so they are
bounded here, whoever publishes them (MQTT, Kafka, the API): strict JSON types (no
coercion: ``true`` or ``"5"`` is not a number; an int is a float), finite numbers under a
static ceiling (``MAX_MAGNITUDE``, cumulative counters ``MAX_COUNTER``), bounded lists and
strings. The site's own, lower limits (``SiteLimits``) are applied by the API and the
ledger's validation (``EcovisorConfig.command_bound_error``).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import uuid
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeVar, get_args

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo

from ecovisor.core.units import MAX_COUNTER, MAX_MAGNITUDE

SCHEMA_VERSION = 1
_ID = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"
AppId = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")]
Ident = Annotated[str, Field(pattern=_ID)]


def is_ident(value: object) -> bool:
    """Is ``value`` a valid id (site, source, container, command id): the ``Ident`` rule."""
    return isinstance(value, str) and re.fullmatch(_ID, value) is not None
# Outputs of the ledger (notifications, setpoints): finite, unbounded (a bound there
# could only turn a large but valid tick into a crash).
NonNeg = Annotated[float, Field(ge=0.0, allow_inf_nan=False)]
Finite = Annotated[float, Field(allow_inf_nan=False)]

# Inputs (telemetry, commands): a static ceiling far above any physical value (1 TW,
# 1e12 g), low enough that the ledger's integer mJ / µg arithmetic (x1e3, x1e6) stays
# finite and exact to the unit. Cumulative counters get more room: 1e15 J is 32 years
# at 1 MW, and 1e18 mJ is still an exact float-to-int conversion away from overflow.
MAX_SEQ = 2**63 - 1  # an int64: every store (Faust tables, JSON) keeps it exactly
MAX_PERIOD_S = 366 * 86_400.0  # a carbon budget period: at most a (leap) year
MAX_LIST = 10_000  # items of any list or dict in one message
Amount = Annotated[float, Field(ge=0.0, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Signed = Annotated[float, Field(ge=-MAX_MAGNITUDE, le=MAX_MAGNITUDE, allow_inf_nan=False)]
Counter = Annotated[float, Field(ge=0.0, le=MAX_COUNTER, allow_inf_nan=False)]
# Strict models still read a time from an ISO string (JSON, and Python-side construction).
Time = Annotated[AwareDatetime, Strict(False)]
# Strict JSON types: ``true`` and ``"5"`` are not numbers, ``1`` is not a bool.
_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


def parse_time(text: str) -> datetime:
    """An ISO 8601 time as the edge writes it ('Z' allowed); a naive time is UTC."""
    t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def utcnow() -> datetime:
    """Wall-clock time for stamping messages at the edge (never used by the ledger)."""
    return datetime.now(UTC)


class Message(BaseModel):
    """Envelope fields common to every message."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    site: Ident
    time: Time = Field(description="event time, timezone-aware (UTC recommended)")

    def to_json(self) -> bytes:
        return self.model_dump_json().encode()


# ---------------------------------------------------------------------------------------
# Telemetry (MQTT ecovisor/<site>/telemetry/<kind>/<source>, bridged to ecovisor.telemetry)
# ---------------------------------------------------------------------------------------


class Telemetry(Message):
    model_config = _STRICT

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

    model_config = _STRICT

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

    model_config = _STRICT

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


# ---------------------------------------------------------------------------------------
# Commands (Kafka ecovisor.commands)
# ---------------------------------------------------------------------------------------


def new_command_id() -> str:
    return str(uuid.uuid4())


class Command(Message):
    model_config = _STRICT

    command_id: Ident = Field(default_factory=new_command_id)
    app: AppId
    token: str = Field(
        min_length=1, max_length=4096, repr=False, description="the app's credential"
    )


# Every number of a command: finite, under the static ceiling (even a command published
# straight on Kafka cannot overflow the ledger); the site's limits are lower (SiteLimits).
class SetContainerPowercap(Command):
    type: Literal["set_container_powercap"] = "set_container_powercap"
    container: Ident = Field(description="container id")
    watts: Amount | None = Field(
        description="cap in W, at most the node's peak modelled power; null removes the cap"
    )


class SetBatteryChargeRate(Command):
    type: Literal["set_battery_charge_rate"] = "set_battery_charge_rate"
    watts: Amount = Field(
        description="charge at this rate until full (0 = solar-only); at most the share's limit"
    )


class SetBatteryMaxDischarge(Command):
    type: Literal["set_battery_max_discharge"] = "set_battery_max_discharge"
    watts: Amount = Field(description="max discharge rate in W; at most the share's limit")


class SetCarbonRate(Command):
    type: Literal["set_carbon_rate"] = "set_carbon_rate"
    container: Ident = Field(description="container id")
    mg_per_s: Amount | None = Field(
        description="carbon rate limit, at most site.limits.max_carbon_rate_mg_per_s; "
        "null removes it"
    )
    window_s: Annotated[float, Field(gt=0, le=86400, allow_inf_nan=False)] = Field(
        60.0, description="sliding window of the rate, s"
    )


class SetCarbonBudget(Command):
    type: Literal["set_carbon_budget"] = "set_carbon_budget"
    grams: Amount | None = Field(
        description="app carbon budget per period, at most site.limits.max_carbon_budget_g; "
        "null removes it"
    )
    period_s: Annotated[float, Field(gt=0, le=MAX_PERIOD_S, allow_inf_nan=False)] = Field(
        3600.0, description="the budget resets every period, s (at most 366 days)"
    )


class SuspendContainer(Command):
    type: Literal["suspend_container"] = "suspend_container"
    container: Ident = Field(description="container id")


class ResumeContainer(Command):
    type: Literal["resume_container"] = "resume_container"
    container: Ident = Field(description="container id")


class ScaleContainer(Command):
    """Vertical scaling: change a container's CPU allowance (cores)."""

    type: Literal["scale_container"] = "scale_container"
    container: Ident = Field(description="container id")
    cpus: Annotated[float, Field(gt=0, le=1024, allow_inf_nan=False)] = Field(
        description="CPU allowance in cores, at most the node's cores"
    )


class ScaleApp(Command):
    """Horizontal scaling: run this many replicas of the app's container template."""

    type: Literal["scale_app"] = "scale_app"
    template: Ident = Field(description="container template id")
    replicas: Annotated[int, Field(ge=0, le=256)] = Field(
        description="replicas to run, at most the template's max_replicas"
    )


AnyCommand = Annotated[
    SetContainerPowercap
    | SetBatteryChargeRate
    | SetBatteryMaxDischarge
    | SetCarbonRate
    | SetCarbonBudget
    | SuspendContainer
    | ResumeContainer
    | ScaleContainer
    | ScaleApp,
    Field(discriminator="type"),
]
COMMAND_ADAPTER: TypeAdapter[AnyCommand] = TypeAdapter(AnyCommand)
COMMAND_TYPES: dict[str, type[Command]] = {
    c.model_fields["type"].default: c
    for c in (
        SetContainerPowercap,
        SetBatteryChargeRate,
        SetBatteryMaxDischarge,
        SetCarbonRate,
        SetCarbonBudget,
        SuspendContainer,
        ResumeContainer,
        ScaleContainer,
        ScaleApp,
    )
}


def parse_command(raw: bytes | str) -> AnyCommand:
    return COMMAND_ADAPTER.validate_json(raw)


# The envelope every command carries; the rest of a command's fields are its own (what
# the API body, the CLI options, the client arguments and a policy action hold).
COMMAND_ENVELOPE = frozenset(("schema_version", "site", "time", "command_id", "app", "token"))


def command_type(cls: type[Command]) -> str:
    """A command's one name: its wire ``type`` (also the client method, the policy
    action's ``type`` and, with dashes, the CLI subcommand)."""
    return str(cls.model_fields["type"].default)


def command_fields(cls: type[Command]) -> dict[str, FieldInfo]:
    """The command's own fields (not the envelope, not ``type``), in declaration order."""
    return {
        name: f for name, f in cls.model_fields.items()
        if name not in COMMAND_ENVELOPE and name != "type"
    }


# ---------------------------------------------------------------------------------------
# Notifications (Kafka ecovisor.notifications.<app>)
# ---------------------------------------------------------------------------------------

NotificationType = Literal[
    "tick",
    "solar_change",
    "carbon_change",
    "battery_full",
    "battery_empty",
    "unserved",
    "carbon_rate_near",
    "carbon_rate_exceeded",
    "carbon_budget_near",
    "carbon_budget_exceeded",
    "command_accepted",
    "command_rejected",
    "command_applied",
    "command_failed",
]
NOTIFICATION_TYPES: frozenset[str] = frozenset(get_args(NotificationType))
COMMAND_LIFECYCLE = ("command_accepted", "command_rejected", "command_applied", "command_failed")
# A command's lifecycle ends with exactly one of these (after an optional accepted).
COMMAND_OUTCOMES = ("command_rejected", "command_applied", "command_failed")
COMMAND_SUCCEEDED = "command_applied"


class Notification(Message):
    """One notification to one application. ``data`` holds the type-specific fields
    documented in docs/contract.md (for ``tick``: see TickData)."""

    app: AppId
    type: NotificationType
    tick: int | None = Field(None, description="tick index the notification refers to")
    command_id: Ident | None = None
    reason: str | None = Field(None, description="why a command was rejected or failed")
    data: dict[str, Any] = Field(default_factory=dict)


class ContainerTickData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    power_w: NonNeg
    powercap_w: NonNeg | None = None
    suspended: bool = False
    carbon_mg_per_s: NonNeg = 0.0
    carbon_rate_limit_mg_per_s: NonNeg | None = None


class TickData(BaseModel):
    """The ``data`` of a ``tick`` notification: what a policy needs for its next move."""

    model_config = ConfigDict(extra="forbid")

    tick_s: float
    next_solar_w: NonNeg = Field(description="the app's solar for the next tick (buffered)")
    solar_w: NonNeg
    grid_w: NonNeg
    grid_carbon_g_per_kwh: NonNeg
    battery_charge_level_wh: NonNeg
    battery_discharge_rate_w: NonNeg
    battery_charge_rate_setting_w: NonNeg
    battery_max_discharge_setting_w: NonNeg
    app_power_w: NonNeg
    unserved_w: NonNeg
    carbon_g: NonNeg = Field(description="carbon of this tick")
    carbon_budget_g: NonNeg | None = None
    carbon_budget_used_g: NonNeg | None = None
    containers: dict[str, ContainerTickData] = Field(default_factory=dict)
    estimated: bool = False


def parse_notification(raw: bytes | str) -> Notification:
    return Notification.model_validate_json(raw)


# ---------------------------------------------------------------------------------------
# Actuators (Kafka ecovisor.actuator.*; MQTT ecovisor/<site>/control/battery/<device>)
# ---------------------------------------------------------------------------------------


ContainerActionName = Literal[
    "set_container_powercap",
    "suspend_container",
    "resume_container",
    "scale_container",
    "scale_app",
]

# Action names written by earlier ledgers. The actuator replays its topic from the
# beginning on start, so those messages must keep parsing: mapped to the command's name.
# HMAC-SHA256 of an internal actuator message (hex), keyed by the site's internal key
Signature = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$", description="HMAC-SHA256, hex")]

_LEGACY_ACTIONS: dict[str, str] = {
    "set_cap": "set_container_powercap",
    "remove_cap": "set_container_powercap",
    "suspend": "suspend_container",
    "resume": "resume_container",
    "scale": "scale_container",
}


class ContainerAction(Message):
    """An accepted container command routed by the ledger to the actuators. ``action`` is
    the ``type`` of the command that caused it; ``set_container_powercap`` with ``watts``
    null removes the cap, as in the command."""

    command_id: Ident
    app: AppId
    container: Ident
    action: ContainerActionName
    # bounded like the commands they come from (an actuator reads this topic too)
    watts: Amount | None = None
    cpus: Annotated[float, Field(gt=0, le=1024, allow_inf_nan=False)] | None = None
    replicas: Annotated[int, Field(ge=0, le=256)] | None = None
    # set_container_powercap: the CPU quota the ledger computed when it accepted the cap
    # (the one cap -> quota computation); the actuator writes it as is. Absent from
    # actions of older ledgers: the actuator then computes it by the same rule.
    quota_us: Annotated[int, Field(ge=1_000, le=MAX_SEQ)] | None = Field(
        None,
        description="set_container_powercap: CPU µs per period_us that hold the container "
        "at the cap",
    )
    period_us: Annotated[int, Field(ge=1_000, le=1_000_000)] | None = Field(
        None, description="set_container_powercap: the CFS period of quota_us (default 100000 µs)"
    )
    signature: Signature | None = None

    @model_validator(mode="before")
    @classmethod
    def _legacy_action(cls, data: Any) -> Any:
        """Map an old action name to the command's; ``remove_cap`` is a null cap."""
        old = data.get("action") if isinstance(data, dict) else None
        # anything else (a new name, or garbage such as a list, unhashable) is left to
        # the field's own validation: a ValidationError, never a crash
        if not isinstance(old, str) or old not in _LEGACY_ACTIONS:
            return data
        data = {**data, "action": _LEGACY_ACTIONS[old]}
        if old == "remove_cap":
            data["watts"] = None
        return data


class BatterySetpoint(Message):
    """Aggregate battery controller setpoints of a site (Σ over its apps)."""

    command_id: Ident
    device: Ident | None = None
    charge_rate_w: NonNeg = Field(description="Σ grid->battery charge rates")
    max_discharge_w: NonNeg = Field(description="Σ max-discharge limits")
    net_power_w: Finite = Field(0.0, description="expected net battery power, + charging")
    tick: int | None = None
    signature: Signature | None = None


class ActuatorAck(Message):
    command_id: Ident
    app: AppId | None = None
    actuator: Ident
    ok: bool
    applied: dict[str, Any] = Field(default_factory=dict, description="value actually applied")
    error: str | None = None
    signature: Signature | None = None


SignedMessage = TypeVar("SignedMessage", "ContainerAction", "BatterySetpoint", "ActuatorAck")


def _mac(message: BaseModel, key: str) -> str:
    """HMAC-SHA256 over the canonical JSON (sorted keys, no spaces) of every field but
    ``signature``: computed on the parsed message, so both ends agree whatever the bytes."""
    body = message.model_dump(mode="json", exclude={"signature"})
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key.encode(), canon.encode(), hashlib.sha256).hexdigest()


def sign(message: SignedMessage, key: str) -> SignedMessage:
    """``message`` with its ``signature`` under the site's internal key."""
    return message.model_copy(update={"signature": _mac(message, key)})


def verify(message: ContainerAction | BatterySetpoint | ActuatorAck, key: str) -> bool:
    """Whether ``message`` carries a valid signature under ``key`` (constant time)."""
    sig = message.signature
    return sig is not None and hmac.compare_digest(sig, _mac(message, key))


BAD_SIGNATURE = "bad or missing signature"


class ContainerEvent(Message):
    """A container started or removed by horizontal scaling (Kafka ecovisor.containers),
    so collectors start/stop measuring it and the ledger attributes it to its app."""

    app: AppId
    container: Ident
    event: Literal["added", "removed"]
    template: Ident | None = None
    node: Ident | None = None
    backend: dict[str, Any] = Field(
        default_factory=dict, description="backend config: type, cgroup/root or instance"
    )
    command_id: Ident | None = Field(None, description="the scale_app command that caused it")


# ---------------------------------------------------------------------------------------
# Dead letters and alerts
# ---------------------------------------------------------------------------------------


class DeadLetter(BaseModel):
    """A message that could not be accepted, with the reason and the raw payload."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = SCHEMA_VERSION
    time: AwareDatetime
    origin: str = Field(description="where it came from, e.g. 'mqtt:<topic>' or a Kafka topic")
    reason: str
    raw: str = Field(description="raw payload, UTF-8 with invalid bytes escaped")

    @field_validator("reason")
    @classmethod
    def _short_reason(cls, v: str) -> str:
        return v if len(v) <= 4000 else v[:3997] + "..."


DEAD_LETTER_RAW_MAX = 65_536  # characters of the raw payload kept in a dead letter


def dead_letter(
    origin: str, reason: str, raw: bytes | str | None, keep: int = DEAD_LETTER_RAW_MAX
) -> DeadLetter:
    """A dead letter for ``raw`` (``None``: a Kafka tombstone). A long payload is cut to
    its first ``keep`` characters: escaping non-UTF-8 bytes can grow it ~4x, and a dead
    letter the broker refuses as too large would be lost with its reason."""
    if raw is None:
        text = ""
    else:
        # decode no more than can be kept (a payload may be megabytes): a byte is at
        # least a quarter of a character, escaped or not
        head = raw[: 4 * keep + 4] if isinstance(raw, bytes) else raw
        text = head.decode("utf-8", "backslashreplace") if isinstance(head, bytes) else head
    if len(text) > keep:
        text = text[:keep] + f"...(truncated, {len(raw or '')} bytes in all)"
    return DeadLetter(time=utcnow(), origin=origin, reason=reason, raw=text)


def describe_validation_error(err: ValidationError) -> str:
    """A one-line readable reason from a pydantic error."""
    parts = []
    for e in err.errors()[:5]:
        loc = ".".join(str(x) for x in e.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)


class Alert(Message):
    kind: Literal["battery_drift", "source_silent", "grid_limit"]
    severity: Literal["warning", "critical"] = "warning"
    message: str
    data: dict[str, Any] = Field(default_factory=dict)
