"""The envelope and the field types of every message of the public contract. The messages
themselves, one pydantic definition each, used by every producer and consumer
(collectors, bridge, ledger, actuators, CLI, REST API), are by kind in ``telemetry``,
``commands``, ``notifications``, ``actuation`` and ``operator_messages``.

Every message carries ``schema_version``, the ``site`` id and an event ``time`` (UTC).
Telemetry also carries a ``source`` id and a per-source ``seq``; commands carry a
``command_id`` (idempotency key) and the app's ``signature`` (``commands``). Units: W,
Wh, J, gCO2eq/kWh, g, mg/s, seconds. See docs/contract.md.

Telemetry, clock messages and commands come from devices and tenants, so they are
bounded here, whoever publishes them (MQTT, Kafka, the API): strict JSON types (no
coercion: ``true`` or ``"5"`` is not a number; an int is a float), finite numbers under a
static ceiling (``MAX_MAGNITUDE``, cumulative counters ``MAX_COUNTER``), bounded lists and
strings. The site's own, lower limits (``SiteLimits``) are applied by the API and the
ledger's validation (``EcovisorConfig.command_bound_error``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, Strict

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
# The event times the ledger's tick arithmetic supports: tick indices are >= 0 (epoch
# based) and a tick's end, converted to UTC, must still be a datetime (year <= 9999).
TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
TIME_MAX = datetime(9998, 1, 1, tzinfo=UTC)


def _in_time_range(t: datetime) -> datetime:
    if not TIME_MIN <= t <= TIME_MAX:
        raise ValueError(f"time {t.isoformat()} is outside 1970-01-01..9998-01-01 (UTC)")
    return t


# A time the ledger does arithmetic on beyond the event time (a forecast point: 0001-01-01
# at +14:00 made every app's state view fail converting it to UTC).
BoundedTime = Annotated[Time, AfterValidator(_in_time_range)]
# Strict JSON types: ``true`` and ``"5"`` are not numbers, ``1`` is not a bool.
STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


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
