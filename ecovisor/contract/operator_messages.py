"""Messages for the site's operators: dead letters (Kafka ecovisor.deadletter), with the
readable reason of a validation error, and alerts (Kafka ecovisor.alerts). See
docs/contract.md#dead-letters--deadletter-ecovisordeadletter."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ecovisor.contract.envelope import SCHEMA_VERSION, Message, utcnow


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


# A ``token`` field's value wherever it shows (a version 1 command carried the app's
# token in clear); an unterminated one (a cut payload) up to the end
_TOKEN_FIELD = re.compile(rb'("token"\s*:\s*)"(?:[^"\\]|\\.)*"?')


def redact(raw: bytes) -> bytes:
    """``raw`` with the value of any ``token`` field replaced: a dead letter must not
    hand a secret on to whoever reads ``ecovisor.deadletter``."""
    return _TOKEN_FIELD.sub(rb'\1"<redacted>"', raw)


def dead_letter(
    origin: str, reason: str, raw: bytes | str | None, keep: int = DEAD_LETTER_RAW_MAX
) -> DeadLetter:
    """A dead letter for ``raw`` (``None``: a Kafka tombstone), any ``token`` in it
    redacted (``redact``). A long payload is cut to
    its first ``keep`` characters: escaping non-UTF-8 bytes can grow it ~4x, and a dead
    letter the broker refuses as too large would be lost with its reason."""
    if raw is None:
        text = ""
    else:
        raw = redact(raw.encode() if isinstance(raw, str) else raw)
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
        loc = ".".join(str(x) for x in readable_loc(e.get("loc", ()))) or "<root>"
        parts.append(f"{loc}: {e.get('msg')}")
    return "; ".join(parts)


def readable_loc(loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """An error's location without the node batch's inner union tag (the version it was
    read as: ``node_batch.node_batch.site`` and ``node_batch.1.site`` read
    ``node_batch.site``, version 2 ``node_batch.v2.site``)."""
    if len(loc) > 1 and loc[0] == "node_batch" and loc[1] in ("node_batch", 1, 2):
        return ("node_batch", *(("v2",) if loc[1] == 2 else ()), *loc[2:])
    return loc


class Alert(Message):
    kind: Literal["battery_drift", "source_silent", "grid_limit"]
    severity: Literal["warning", "critical"] = "warning"
    message: str
    data: dict[str, Any] = Field(default_factory=dict)
