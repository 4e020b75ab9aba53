"""Request bodies and responses of the REST API (docs/api.md, docs/openapi.json).
Units: W, Wh, J, gCO2eq/kWh, g, mg/s, s."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, create_model

from ecovisor.contract.app_config import AppConfig
from ecovisor.contract.commands import COMMAND_TYPES, Command, command_fields, command_type
from ecovisor.contract.config import EcovisorConfig
from ecovisor.core.units import mj_to_wh
from ecovisor.core.virtual_battery import battery_limits


class Reading(BaseModel):
    """One value of the app's live state, from the latest closed tick."""

    app: str
    value: float | None
    unit: str
    tick: int | None = None
    time: datetime | None = None
    estimated: bool = False
    container: str | None = None


class IntervalReading(BaseModel):
    """Energy or carbon between two tick boundaries (exact at tick resolution)."""

    app: str
    container: str | None = None
    t1: datetime
    t2: datetime
    value: float
    unit: str


class CommandResult(BaseModel):
    command_id: str
    type: str
    status: Literal["published", "accepted", "rejected", "applied", "failed"] = Field(
        description="last lifecycle step seen; 'published' when not waited for"
    )
    timed_out: bool = Field(False, description="true when ?wait gave up before the outcome")
    reason: str | None = None
    data: dict[str, Any] = Field(default_factory=dict)


# --- command bodies: derived from the contract, so a command has one definition -------


def command_body(cls: type[Command], path_params: tuple[str, ...] = (),
                 with_type: bool = False) -> type[BaseModel]:
    """A request body for command ``cls``: its own fields (types, bounds, defaults and
    descriptions as in the contract) minus those the route takes from its path; with
    ``with_type`` also its ``type`` tag (the generic ``POST .../commands`` body)."""
    fields: dict[str, Any] = {
        name: (f.annotation, f)
        for name, f in command_fields(cls).items() if name not in path_params
    }
    if with_type:  # required: the discriminator (the document must not call it optional)
        fields = {"type": (Literal[command_type(cls)], ...), **fields}  # type: ignore[valid-type]
    suffix = "Request" if with_type else "Body"
    # strict like the contract: ``true`` or ``"5"`` is not a number (an int is a float)
    return create_model(  # type: ignore[call-overload,no-any-return]
        f"{cls.__name__}{suffix}", __config__=ConfigDict(extra="forbid", strict=True), **fields
    )


# The generic endpoint's body: any command of the contract, told apart by ``type``.
CommandRequest = Annotated[
    Union[tuple(command_body(c, with_type=True) for c in COMMAND_TYPES.values())],  # type: ignore[valid-type]  # noqa: UP007
    Field(discriminator="type"),
]


class AppInfo(BaseModel):
    app: str
    site: str
    tick_s: float
    containers: list[str]
    templates: list[str]
    shares: dict[str, Any]
    battery_full_wh: float = Field(description="usable capacity: share minus one tick of solar")
    battery_empty_wh: float = Field(description="the reserve ('empty')")

    @classmethod
    def of(cls, cfg: EcovisorConfig, me: AppConfig) -> AppInfo:
        # "full" and "empty" exactly as the ledger's tick applies them
        limits = battery_limits(me.shares, cfg.site.shape)
        return cls(
            battery_full_wh=mj_to_wh(limits.usable_mj),
            battery_empty_wh=mj_to_wh(limits.reserve_mj),
            app=me.id,
            site=cfg.site.id,
            tick_s=cfg.site.shape.tick_s,
            containers=[c.id for c in me.containers],
            templates=[t.id for t in me.templates],
            shares=me.shares.model_dump(),
        )
