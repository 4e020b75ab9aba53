"""Notifications (Kafka ecovisor.notifications.<app>): the notification types, the
command lifecycle and the ``data`` of a ``tick``. See
docs/contract.md#notifications-ecovisornotificationsapp."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

from ecovisor.contract.envelope import AppId, Ident, Message, NonNeg

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
