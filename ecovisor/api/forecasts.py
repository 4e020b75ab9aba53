"""The site's carbon-intensity forecast as its carbon source published it
(``CarbonTelemetry.forecast``, kept by the ledger in every app's state view:
``emulation_signal.forecast``). Solar: the solar collector publishes no forecast, so
there is no solar forecast route (only ``next_solar_w``, the next tick, in the state).
docs/api.md#forecasts."""

from fastapi import APIRouter
from pydantic import AwareDatetime, BaseModel, Field

from ecovisor.api import emulation_signal as sig
from ecovisor.api.auth import API_PREFIX, Me
from ecovisor.api.errors import error_responses
from ecovisor.api.wiring import Ctx

router = APIRouter(responses=error_responses(401, 403, 503))


class ForecastPoint(BaseModel):
    time: AwareDatetime
    value: float = Field(description="gCO2eq/kWh")


class CarbonForecast(BaseModel):
    """The newest forecast of the site's carbon source (empty ``points``: none)."""

    app: str
    unit: str = "gCO2eq/kWh"
    published_at: AwareDatetime | None = Field(None, description="its sample's event time")
    source: str | None = None
    signal: str | None = Field(None, description="average or marginal")
    points: list[ForecastPoint]


@router.get(API_PREFIX + "/carbon_forecast", tags=["forecasts"], response_model=CarbonForecast)
async def get_carbon_forecast(me: Me, ctx: Ctx) -> CarbonForecast:
    """The site's carbon-intensity forecast as its carbon source last published it."""
    f = await sig.forecast(ctx, me)
    return CarbonForecast(
        app=me.id,
        published_at=f.published_at,
        source=f.source,
        signal=f.signal,
        points=[ForecastPoint(time=t, value=v) for t, v in f.points],
    )
