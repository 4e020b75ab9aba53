"""Telemetry messages (MQTT ecovisor/<site>/telemetry/<kind>/<source>, bridged to
ecovisor.telemetry) and the virtual-time clock message of ecovisor.telemetry: one
pydantic definition per kind, their union and its parsers. See docs/contract.md."""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Collection, Iterable, Iterator
from operator import attrgetter
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError, core_schema

from ecovisor.contract.envelope import (
    MAX_LIST,
    MAX_SEQ,
    SCHEMA_VERSION,
    STRICT,
    Amount,
    AppId,
    BoundedTime,
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
    forecast: list[tuple[BoundedTime, Amount]] = Field(
        default_factory=list,
        max_length=MAX_LIST,
        description="(time, W) points of the array's power where the source has them",
    )


class CarbonTelemetry(Telemetry):
    kind: Literal["carbon"] = "carbon"
    intensity_g_per_kwh: Amount
    signal: Literal["average", "marginal"] = "average"
    stale: bool = Field(False, description="true when the last good value is carried forward")
    forecast: list[tuple[BoundedTime, Amount]] = Field(
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
    """One container's cumulative counters in a node batch: the fields of
    ``ContainerTelemetry`` that are the container's own (the batch carries the rest).
    A ``NodeBatchTelemetry`` lists them; every node batch reads its entries back as
    them (``NodeBatch.entry``) or as ``Row`` tuples (``NodeBatch.rows``)."""

    model_config = STRICT

    app: AppId
    container: Ident
    cpu_s: Counter = Field(description="cumulative CPU seconds of the container")
    energy_j: Counter = Field(
        description="cumulative energy attributed to the container (active + idle share)"
    )


# One entry of a node batch, whatever its batch_version: (app, container, cpu_s, energy_j)
Row = tuple[str, str, float, float]
# The columns of ``ContainerColumns``, in the order of a ``Row``
COLUMNS = ("app", "container", "cpu_s", "energy_j")
_ROW_OF = attrgetter(*COLUMNS)  # a ContainerCounters' Row
NODE_BATCH_VERSION = 2  # what producers send by default; docs/contract.md#node-batches


class NodeBatch(Telemetry):
    """Every container of one node in one message per tick (the way Kepler exports per
    node): one ``source`` + ``seq`` for the whole batch, so the ledger dedupes it once.
    Abstract: a batch is a ``NodeBatchTelemetry`` (``batch_version`` 1, a list of
    ``ContainerCounters``; absent means 1) or a ``NodeBatchColumnsTelemetry``
    (``batch_version`` 2, the same entries as four columns). Consumers read either
    through ``rows`` / ``entry`` / ``n_entries``, never through ``containers``.
    ``ContainerTelemetry`` (one message per container) stays accepted."""

    kind: Literal["node_batch"] = "node_batch"
    batch_version: int
    node: Ident = Field(description="the node every container of the batch is placed on")

    @abstractmethod
    def rows(self) -> Iterator[Row]:
        """The entries in order as (app, container, cpu_s, energy_j) tuples."""

    @property
    @abstractmethod
    def n_entries(self) -> int:
        """How many entries."""

    @abstractmethod
    def entry(self, i: int) -> ContainerCounters:
        """Entry ``i`` (0-based, in order) as one ``ContainerCounters``."""

    def as_columns(self, drop: Collection[int] = ()) -> NodeBatchColumnsTelemetry:
        """This batch in ``batch_version`` 2 (itself, if already so and ``drop`` is empty),
        without the entries at the indices ``drop``; the values are the ones validated."""
        if not drop and isinstance(self, NodeBatchColumnsTelemetry):
            return self
        rows = self.rows()
        if drop:
            rows = (r for i, r in enumerate(rows) if i not in drop)
        cols = ContainerColumns.model_construct(**dict(zip(COLUMNS, columns(rows), strict=True)))
        fields = {k: getattr(self, k) for k in (*Telemetry.model_fields, "node")}
        return NodeBatchColumnsTelemetry.model_construct(containers=cols, **fields)


class NodeBatchTelemetry(NodeBatch):
    """A node batch, ``batch_version`` 1: the entries as a list of ``ContainerCounters``."""

    batch_version: Literal[1] = 1
    containers: list[ContainerCounters] = Field(
        max_length=MAX_LIST, description="at most 10,000 containers, each at most once"
    )

    def rows(self) -> Iterator[Row]:
        return map(_ROW_OF, self.containers)  # C-level: ~10 % fewer instructions than a genexpr

    @property
    def n_entries(self) -> int:
        return len(self.containers)

    def entry(self, i: int) -> ContainerCounters:
        return self.containers[i]

    @classmethod
    def containers_of(cls, rows: Iterable[Row]) -> list[ContainerCounters]:
        """The ``containers`` field of these rows (validated)."""
        return [ContainerCounters(app=a, container=c, cpu_s=cpu, energy_j=j)
                for a, c, cpu, j in rows]  # fmt: skip


class ContainerColumns(BaseModel):
    """The entries of a ``NodeBatchColumnsTelemetry``: entry *i* is (``app[i]``,
    ``container[i]``, ``cpu_s[i]``, ``energy_j[i]``), each element bounded as the field of
    ``ContainerCounters``; four columns of the same length (else the batch is refused)."""

    model_config = STRICT

    app: list[AppId] = Field(max_length=MAX_LIST)
    container: list[Ident] = Field(max_length=MAX_LIST)
    cpu_s: list[Counter] = Field(
        max_length=MAX_LIST, description="cumulative CPU seconds of each container"
    )
    energy_j: list[Counter] = Field(
        max_length=MAX_LIST,
        description="cumulative energy attributed to each container (active + idle share)",
    )

    @model_validator(mode="after")
    def _equal_lengths(self) -> ContainerColumns:
        why = unequal_columns(len(self.app), len(self.container), len(self.cpu_s),
                              len(self.energy_j))  # fmt: skip
        if why is not None:
            raise PydanticCustomError("unequal_columns", why)
        return self


def columns(rows: Iterable[Row]) -> list[list[Any]]:
    """Rows as the four columns (``COLUMNS`` order)."""
    return [list(c) for c in zip(*rows, strict=True)] or [[], [], [], []]


def unequal_columns(*lengths: int) -> str | None:
    """Why columns of these lengths (in ``COLUMNS`` order) are not one batch, else None."""
    if len(set(lengths)) <= 1:
        return None
    return (
        "columns of unequal lengths ("
        + ", ".join(f"{k} {n}" for k, n in zip(COLUMNS, lengths, strict=True))
        + "): every entry needs all four"
    )


class NodeBatchColumnsTelemetry(NodeBatch):
    """A node batch, ``batch_version`` 2: the same entries as ``NodeBatchTelemetry``'s, as
    columns (``ContainerColumns``): a quarter of the parse and half the bytes."""

    batch_version: Literal[2] = 2
    containers: ContainerColumns = Field(
        description="at most 10,000 containers (the columns' length), each at most once"
    )

    def rows(self) -> Iterator[Row]:
        c = self.containers
        return zip(c.app, c.container, c.cpu_s, c.energy_j, strict=True)

    @property
    def n_entries(self) -> int:
        return len(self.containers.app)

    def entry(self, i: int) -> ContainerCounters:
        c = self.containers
        return ContainerCounters.model_construct(
            app=c.app[i], container=c.container[i], cpu_s=c.cpu_s[i], energy_j=c.energy_j[i]
        )

    @classmethod
    def containers_of(cls, rows: Iterable[Row]) -> ContainerColumns:
        """The ``containers`` field of these rows (validated)."""
        return ContainerColumns(**dict(zip(COLUMNS, columns(rows), strict=True)))


NODE_BATCH_MODELS: dict[int, type[NodeBatchTelemetry] | type[NodeBatchColumnsTelemetry]] = {
    1: NodeBatchTelemetry,
    2: NodeBatchColumnsTelemetry,
}


class _ByBatchVersion:
    """The node batch of a payload by its ``batch_version``, absent meaning 1. A tagged
    union whose tag is found at the first of ``batch_version`` and ``kind`` that the
    payload has (pydantic-core's path choices): no Python call and no conversion of the
    payload, unlike a callable ``Discriminator`` (which turns the whole batch into Python
    objects first: +40 % of the parse, measured). The identity after-validator keeps it
    one choice of the ``kind`` union (else pydantic would merge the two unions)."""

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        v1 = handler.generate_schema(NodeBatchTelemetry)
        by_version = core_schema.tagged_union_schema(
            choices={
                1: v1,
                2: handler.generate_schema(NodeBatchColumnsTelemetry),
                "node_batch": v1,
            },
            discriminator=[["batch_version"], ["kind"]],
            custom_error_type="batch_version",
            custom_error_message="batch_version must be 1 (or absent) or 2",
        )
        return core_schema.no_info_after_validator_function(_same, by_version)


def _same(m: Any) -> Any:
    return m


AnyNodeBatch = Annotated[NodeBatchTelemetry | NodeBatchColumnsTelemetry, _ByBatchVersion()]


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
    | AnyNodeBatch
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
    raw value (a dead letter each; a ``batch_version`` 2 entry as the object of its four
    elements). An error in element *i* of any column of a ``batch_version`` 2 batch is
    entry *i*'s; columns of unequal lengths refuse the batch. Any other error raises
    ValidationError."""
    try:
        return TELEMETRY_ADAPTER.validate_json(raw), []
    except ValidationError as e:
        bad: dict[int, str] = {}
        for err in e.errors():
            at = _entry_error(err.get("loc", ()))
            if at is None:
                raise
            bad.setdefault(at[0], f"{at[1]}: {err.get('msg')}")
        body = json.loads(raw)
        entries = body["containers"]
        if isinstance(entries, dict):  # batch_version 2: every column a list (else raised)
            cols = [entries[k] for k in COLUMNS]
            why = unequal_columns(*map(len, cols))
            if why is not None:  # before dropping: that could even the lengths out
                raise ValidationError.from_exception_data(NodeBatchColumnsTelemetry.__name__, [
                    InitErrorDetails(type=PydanticCustomError("unequal_columns", why),
                                     loc=("node_batch", 2, "containers"),
                                     input={k: len(c) for k, c in zip(COLUMNS, cols, strict=True)})
                ]) from None  # fmt: skip
            raws = {i: dict(zip(COLUMNS, (c[i] for c in cols), strict=True)) for i in bad}
            body["containers"] = {k: [x for i, x in enumerate(c) if i not in bad]
                                  for k, c in zip(COLUMNS, cols, strict=True)}  # fmt: skip
        else:
            raws = {i: entries[i] for i in bad}
            body["containers"] = [x for i, x in enumerate(entries) if i not in bad]
        msg = TELEMETRY_ADAPTER.validate_json(json.dumps(body))
        return msg, [(i, why, raws[i]) for i, why in sorted(bad.items())]


def _entry_error(loc: tuple[int | str, ...]) -> tuple[int, str] | None:
    """(index, field) of a validation error inside one entry of a node batch, else None.
    Locations: ``node_batch``, the version's tag (1, or ``node_batch`` when absent; 2),
    ``containers``, then the index and field (version 1) or the column and index (2)."""
    if len(loc) < 4 or loc[0] != "node_batch" or loc[2] != "containers":
        return None
    if loc[1] == 2:
        if len(loc) == 5 and loc[3] in COLUMNS and type(loc[4]) is int:
            return loc[4], str(loc[3])
        return None
    if type(loc[3]) is int:
        return loc[3], ".".join(str(x) for x in loc[4:]) or "<entry>"
    return None
