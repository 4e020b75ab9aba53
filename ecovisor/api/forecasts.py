"""The site's carbon-intensity and solar-power forecasts as their sources published them
(``CarbonTelemetry.forecast``, ``SolarTelemetry.forecast``, kept by the ledger in every
app's state view: ``emulation_signal.forecast``). The solar forecast is the site array's
power; the app's share of it follows from its solar share (``/info``).
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
    return carbon_answer(me.id, await sig.forecast(ctx, me))


def carbon_answer(app: str, f: sig.Forecast) -> CarbonForecast:
    """The route's answer for a kept carbon forecast (also the replay's LedgerClient)."""
    return CarbonForecast(
        app=app,
        published_at=f.published_at,
        source=f.source,
        signal=f.signal,
        points=[ForecastPoint(time=t, value=v) for t, v in f.points],
    )


class SolarForecastPoint(BaseModel):
    time: AwareDatetime
    value: float = Field(description="W, the site array's AC power")


class SolarForecast(BaseModel):
    """The newest forecast of the site's solar source (empty ``points``: none)."""

    app: str
    unit: str = "W"
    published_at: AwareDatetime | None = Field(None, description="its sample's event time")
    source: str | None = None
    points: list[SolarForecastPoint]


@router.get(API_PREFIX + "/solar_forecast", tags=["forecasts"], response_model=SolarForecast)
async def get_solar_forecast(me: Me, ctx: Ctx) -> SolarForecast:
    """The site array's power forecast as its solar source last published it."""
    return solar_answer(me.id, await sig.forecast(ctx, me, kind="solar"))


def solar_answer(app: str, f: sig.Forecast) -> SolarForecast:
    """The route's answer for a kept solar forecast (also the replay's LedgerClient)."""
    return SolarForecast(
        app=app,
        published_at=f.published_at,
        source=f.source,
        points=[SolarForecastPoint(time=t, value=v) for t, v in f.points],
    )
