"""The app's Software Carbon Intensity, SCI = (E·I + M) / R (Green Software Foundation),
over an interval (docs/api.md#sci): E·I is the app's carbon the ledger booked between
the tick boundaries around t1..t2 (the interval counters), M the app's share of the
site's embodied hardware carbon (``site.embodied``, ``EcovisorConfig.embodied_shares``)
over the same interval, R the functional units the caller counts. The arithmetic is
``core.sci.sci`` (pure, integer µg)."""

from typing import Annotated

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, Field

from ecovisor.api.auth import API_PREFIX, Me
from ecovisor.api.errors import error_responses
from ecovisor.api.readings import T1, T2, interval
from ecovisor.api.wiring import Ctx
from ecovisor.core.sci import embodied_ug, sci
from ecovisor.core.units import UG_PER_G

router = APIRouter(responses=error_responses(401, 403, 503))


class HardwareShare(BaseModel):
    name: str
    resource_share: float = Field(description="the app's share of the hardware (0..1)")
    embodied_g: float = Field(description="its part of M over the interval (g)")


class SciReading(BaseModel):
    """SCI of one app over an interval; carbon in g CO2eq."""

    app: str
    t1: AwareDatetime = Field(description="tick boundary actually used for the start")
    t2: AwareDatetime = Field(description="tick boundary actually used for the end")
    interval_s: float
    energy_j: float = Field(description="E, the app's energy over the interval (J)")
    operational_g: float = Field(description="E·I, the app's booked carbon (g)")
    embodied_g: float = Field(description="M, the app's embodied share (g)")
    functional_units: float = Field(description="R")
    sci_g_per_unit: float = Field(description="(E·I + M) / R, g CO2eq per functional unit")
    unit: str = "gCO2eq/unit"
    hardware: list[HardwareShare] = Field(default_factory=list)


Units = Annotated[
    float,
    Query(gt=0, le=1e15, description="R: functional units over the interval (default 1)"),
]


@router.get(API_PREFIX + "/sci", tags=["table2"], response_model=SciReading)
async def get_app_sci(
    me: Me, ctx: Ctx, t1: T1, t2: T2, functional_units: Units = 1.0
) -> SciReading:
    """The app's SCI = (E·I + M) / R between tick boundaries t1 and t2."""
    c = await interval(ctx, me, t1, t2)
    seconds = max(0.0, (c.t2 - c.t1).total_seconds())
    shares = ctx.cfg.embodied_shares(me.id)
    r = sci(round(c.carbon_g * UG_PER_G), seconds, shares, functional_units)
    return SciReading(
        app=me.id,
        t1=c.t1,
        t2=c.t2,
        interval_s=seconds,
        energy_j=c.energy_j,
        operational_g=r.operational_ug / UG_PER_G,
        embodied_g=r.embodied_ug / UG_PER_G,
        functional_units=functional_units,
        sci_g_per_unit=r.sci_g_per_unit,
        hardware=[
            HardwareShare(
                name=h.name,
                resource_share=h.resource_share,
                embodied_g=embodied_ug([h], seconds) / UG_PER_G,
            )
            for h in shares
        ],  # fmt: skip
    )
