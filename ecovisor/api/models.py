"""Request bodies and responses of the REST API (docs/api.md, docs/openapi.json).
Units: W, Wh, J, gCO2eq/kWh, g, mg/s, s."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ecovisor.contract.config import AppConfig, EcovisorConfig
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


class WattsBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"watts": 5.0}]})
    watts: float = Field(ge=0, allow_inf_nan=False, description="W")


class PowercapBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"watts": 3.0}]})
    watts: float | None = Field(ge=0, allow_inf_nan=False, description="W; null removes the cap")


class CarbonRateBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"mg_per_s": 20.0, "window_s": 60.0}]}
    )
    mg_per_s: float | None = Field(ge=0, allow_inf_nan=False, description="null removes it")
    window_s: float = Field(60.0, gt=0, le=86400)


class CarbonBudgetBody(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"grams": 3.5, "period_s": 3600.0}]}
    )
    grams: float | None = Field(ge=0, allow_inf_nan=False, description="null removes it")
    period_s: float = Field(3600.0, gt=0)


class CpusBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"cpus": 2.0}]})
    cpus: float = Field(gt=0, le=1024)


class ReplicasBody(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"replicas": 2}]})
    replicas: int = Field(ge=0, le=256)


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
