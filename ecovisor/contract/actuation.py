"""Actuator messages (Kafka ecovisor.actuator.*; MQTT
ecovisor/<site>/control/battery/<device>): what the ledger routes to the actuators,
their acknowledgements, the signatures of all three, and the container events of
horizontal scaling (Kafka ecovisor.containers). See docs/contract.md#actuator-messages."""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field, model_validator

from ecovisor.contract.envelope import MAX_SEQ, Amount, AppId, Finite, Ident, Message, NonNeg

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


def mac(message: BaseModel, key: str) -> str:
    """HMAC-SHA256 over the canonical JSON (sorted keys, no spaces) of every field but
    ``signature``: computed on the parsed message, so both ends agree whatever the bytes."""
    body = message.model_dump(mode="json", exclude={"signature"})
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key.encode(), canon.encode(), hashlib.sha256).hexdigest()


def sign(message: SignedMessage, key: str) -> SignedMessage:
    """``message`` with its ``signature`` under the site's internal key."""
    return message.model_copy(update={"signature": mac(message, key)})


def verify(message: ContainerAction | BatterySetpoint | ActuatorAck, key: str) -> bool:
    """Whether ``message`` carries a valid signature under ``key`` (constant time)."""
    sig = message.signature
    return sig is not None and hmac.compare_digest(sig, mac(message, key))


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
