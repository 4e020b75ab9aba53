"""Carbon-API emulation (docs/emulation.md): per-app endpoints answering in the formats
of the Electricity Maps API v3, the WattTime API v3 and the Carbon Aware SDK Web API,
serving the site's own carbon signal (``emulation_signal``: the intensity the ledger
booked per tick). A carbon-aware application written for one of these APIs runs under
Ecovisor by pointing its base URL at

- ``/v1/apps/{app}/emulate/electricitymaps/v3`` (``auth-token: <app token>``, or the
  bearer),
- ``/v1/apps/{app}/emulate/watttime`` (``/login`` with HTTP Basic, any user name and the
  app token as password, answers the app token; then ``Authorization: Bearer``),
- ``/v1/apps/{app}/emulate/carbon-aware`` (the SDK has no authentication; here the
  app's bearer token is required).

Every answer is the token's app's view: another app's token is 403, as on every route
under ``/v1/apps/{app}``. Ecovisor has one signal per site: the zone, region or location
asked for is echoed, not looked up. Forecasts are the carbon source's published forecast
as the ledger keeps it (``emulation_signal.forecast``); without one, the providers'
empty shapes.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.security import (
    APIKeyHeader,
    HTTPAuthorizationCredentials,
    HTTPBasic,
    HTTPBasicCredentials,
    HTTPBearer,
)
from pydantic import AwareDatetime, BaseModel, BeforeValidator, ConfigDict, Field

from ecovisor.api import emulation_signal as sig
from ecovisor.api.auth import API_PREFIX, AppPath, Me
from ecovisor.api.errors import error_responses
from ecovisor.api.wiring import Ctx
from ecovisor.contract.app_config import AppConfig
from ecovisor.core.units import lbs_per_mwh_to_g_per_kwh

EMAPS = API_PREFIX + "/emulate/electricitymaps/v3"
WATTTIME = API_PREFIX + "/emulate/watttime"
CARBON_AWARE = API_PREFIX + "/emulate/carbon-aware"

router = APIRouter(responses=error_responses(401, 403, 503))
Name = Annotated[str, Query(max_length=128)]
Day = timedelta(hours=24)


def _iso_text(v: Any) -> Any:
    """A query time must be ISO 8601 text (pydantic would also read a bare number as
    seconds since the epoch, which the document's ``date-time`` does not allow)."""
    if isinstance(v, str) and v.strip().lstrip("+-").replace(".", "", 1).isdigit():
        raise ValueError("expected an ISO 8601 date-time with zone, not a number")
    return v


IsoTime = Annotated[AwareDatetime, BeforeValidator(_iso_text)]


def _z(t: datetime) -> str:
    """ISO 8601 UTC with milliseconds and ``Z`` (Electricity Maps' format)."""
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _app_of(ctx: Ctx, app: str, secret: str | None, scheme: str) -> AppConfig:
    """The app whose token is ``secret``, if it is the one in the path (401 / 403)."""
    if not secret:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": scheme})
    found = ctx.cfg.app_for_token(secret)
    if found is None:
        raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": scheme})
    if found.id != app:
        raise HTTPException(403, f"this token belongs to app {found.id!r}, not {app!r}")
    return found


# --------------------------------------------------------------------------------------
# Electricity Maps API v3
# --------------------------------------------------------------------------------------

_auth_token = APIKeyHeader(
    name="auth-token",
    auto_error=False,
    description="Electricity Maps' API key header: the app's token",
)
_bearer = HTTPBearer(auto_error=False)


def emaps_app(
    app: AppPath,
    ctx: Ctx,
    key: Annotated[str | None, Depends(_auth_token)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> AppConfig:
    """The app by the ``auth-token`` header (Electricity Maps' convention) or the bearer."""
    return _app_of(ctx, app, key or (creds.credentials if creds else None), "auth-token")


EmapsApp = Annotated[AppConfig, Depends(emaps_app)]
FactorType = Literal["direct", "lifecycle"]
ZoneKey = Annotated[
    str | None, Query(alias="zoneKey", max_length=128, description="the SDK's name of zone")
]


class EmapsIntensity(BaseModel):
    """Electricity Maps' ``CarbonIntensity`` (gCO2eq/kWh)."""

    model_config = ConfigDict(populate_by_name=True)

    zone: str
    carbon_intensity: float = Field(alias="carbonIntensity", description="gCO2eq/kWh")
    datetime_: str = Field(alias="datetime", description="start of the period (UTC)")
    updated_at: str = Field(alias="updatedAt")
    created_at: str = Field(alias="createdAt")
    emission_factor_type: FactorType = Field(alias="emissionFactorType")
    is_estimated: bool = Field(alias="isEstimated")
    estimation_method: str | None = Field(alias="estimationMethod")
    temporal_granularity: str = Field(alias="temporalGranularity")


class EmapsHistory(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    zone: str
    history: list[EmapsIntensity]
    temporal_granularity: str = Field(alias="temporalGranularity")


class EmapsForecastPoint(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    carbon_intensity: float = Field(alias="carbonIntensity")
    datetime_: str = Field(alias="datetime")


class EmapsForecast(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    zone: str
    updated_at: str | None = Field(None, alias="updatedAt")
    forecast: list[EmapsForecastPoint]


def _emaps(zone: str, p: sig.Point, updated: datetime, factor: FactorType) -> EmapsIntensity:
    return EmapsIntensity(
        zone=zone,
        carbonIntensity=round(p.value, 3),
        datetime=_z(p.start),
        updatedAt=_z(updated),
        createdAt=_z(updated),
        emissionFactorType=factor,
        isEstimated=p.estimated,
        estimationMethod="ECOVISOR_ESTIMATED_TICK" if p.estimated else None,
        temporalGranularity=sig.granularity(p.seconds),
    )


def _zone(
    me: EmapsApp,
    zone: Annotated[str | None, Query(max_length=128)] = None,
    zone_key: ZoneKey = None,
    lat: Annotated[float | None, Query(ge=-90, le=90)] = None,
    lon: Annotated[float | None, Query(ge=-180, le=180)] = None,
) -> str:
    """The zone a request names (``zone``, the SDK's ``zoneKey``; ``lat``/``lon`` are
    accepted and bounded): echoed back, the app's id when it names none (one signal per
    site, docs/emulation.md)."""
    return zone or zone_key or me.id


EmapsZone = Annotated[str, Depends(_zone)]


@router.get(EMAPS + "/carbon-intensity/latest", tags=["emulation"],
            response_model=EmapsIntensity, response_model_by_alias=True)  # fmt: skip
async def emaps_carbon_intensity_latest(
    me: EmapsApp,
    ctx: Ctx,
    zone: EmapsZone,
    emission_factor_type: Annotated[FactorType, Query(alias="emissionFactorType")] = "lifecycle",
) -> Any:
    """Electricity Maps ``GET /v3/carbon-intensity/latest``: the latest tick's intensity."""
    p, updated = await sig.latest(ctx, me)
    return _emaps(zone, p, updated, emission_factor_type)


@router.get(EMAPS + "/carbon-intensity/history", tags=["emulation"],
            response_model=EmapsHistory, response_model_by_alias=True)  # fmt: skip
async def emaps_carbon_intensity_history(
    me: EmapsApp,
    ctx: Ctx,
    zone: EmapsZone,
    emission_factor_type: Annotated[FactorType, Query(alias="emissionFactorType")] = "lifecycle",
) -> Any:
    """Electricity Maps ``GET /v3/carbon-intensity/history``: the 24 hours before the
    latest tick, booked intensity in 5-minute periods (oldest first)."""
    p, updated = await sig.latest(ctx, me)
    end = p.start + timedelta(seconds=p.seconds)
    points = await sig.history(ctx, me, end - Day, end)
    return EmapsHistory(
        zone=zone,
        history=[_emaps(zone, q, updated, emission_factor_type) for q in points],
        temporalGranularity=sig.granularity(max(sig.PERIOD_S, p.seconds)),
    )


@router.get(EMAPS + "/carbon-intensity/forecast", tags=["emulation"],
            response_model=EmapsForecast, response_model_by_alias=True)  # fmt: skip
async def emaps_carbon_intensity_forecast(
    me: EmapsApp,
    ctx: Ctx,
    zone: EmapsZone,
) -> Any:
    """Electricity Maps ``GET /v3/carbon-intensity/forecast``: the points of the carbon
    source's forecast from the latest tick on (``forecast: []`` when it publishes none;
    docs/emulation.md)."""
    p, updated = await sig.latest(ctx, me)
    f = await sig.forecast(ctx, me, since=p.start)
    points = [EmapsForecastPoint(carbonIntensity=round(v, 3), datetime=_z(t)) for t, v in f.points]
    return EmapsForecast(
        zone=zone,
        updatedAt=_z(f.published_at or updated),
        forecast=points,
    )


# --------------------------------------------------------------------------------------
# WattTime API v3
# --------------------------------------------------------------------------------------

_basic = HTTPBasic(auto_error=False, description="WattTime login: any user, the app token")


class WattTimeLogin(BaseModel):
    token: str


SignalType = Literal["co2_moer", "co2_aoer"]
LBS_PER_MWH = 1.0 / lbs_per_mwh_to_g_per_kwh(1.0)  # lbs/MWh per gCO2eq/kWh


class WattTimePoint(BaseModel):
    point_time: str
    value: float


class WattTimeModel(BaseModel):
    date: str | None = None


class WattTimeMeta(BaseModel):
    data_point_period_seconds: float
    region: str
    signal_type: str
    units: str
    model: WattTimeModel = WattTimeModel()
    warnings: list[dict[str, str]] = Field(default_factory=list)
    generated_at: str | None = None
    generated_at_period_seconds: float | None = None


class WattTimeData(BaseModel):
    data: list[WattTimePoint]
    meta: WattTimeMeta


@router.get(WATTTIME + "/login", tags=["emulation"], response_model=WattTimeLogin)
async def watttime_login(
    app: AppPath,
    ctx: Ctx,
    basic: Annotated[HTTPBasicCredentials | None, Depends(_basic)],
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> WattTimeLogin:
    """WattTime ``GET /login``: HTTP Basic with the app's token as password (the user
    name is not checked) answers ``{"token": <the app token>}`` for the bearer calls."""
    secret = basic.password if basic else (creds.credentials if creds else None)
    me = _app_of(ctx, app, secret, "Basic")
    return WattTimeLogin(token=me.token)


def _wt_time(t: datetime) -> str:
    return t.astimezone(UTC).isoformat()


def _meta(region: str, signal: str, units: str, period: float, **kw: Any) -> WattTimeMeta:
    return WattTimeMeta(
        data_point_period_seconds=period, region=region, signal_type=signal, units=units, **kw
    )


def _lbs(v: float) -> float:
    return round(v * LBS_PER_MWH, 3)


@router.get(WATTTIME + "/v3/signal-index", tags=["emulation"], response_model=WattTimeData)
async def watttime_signal_index(
    me: Me,
    ctx: Ctx,
    region: Name,
    signal_type: SignalType = "co2_moer",
) -> WattTimeData:
    """WattTime ``GET /v3/signal-index``: the latest tick's intensity as a percentile
    (0..100) of the booked intensity of the past 24 hours (WattTime ranks against its
    forecast of the next 24 hours; this ranks against what was booked)."""
    p, updated = await sig.latest(ctx, me)
    end = p.start + timedelta(seconds=p.seconds)
    past = [q.value for q in await sig.history(ctx, me, end - Day, end)]
    value = round(sig.percentile(p.value, past), 1)
    meta = _meta(region, signal_type, "percentile", p.seconds, generated_at=_wt_time(updated))
    return WattTimeData(data=[WattTimePoint(point_time=_wt_time(p.start), value=value)], meta=meta)


@router.get(WATTTIME + "/v3/forecast", tags=["emulation"], response_model=WattTimeData)
async def watttime_forecast(
    me: Me,
    ctx: Ctx,
    region: Name,
    signal_type: SignalType = "co2_moer",
    horizon_hours: Annotated[int, Query(ge=0, le=72)] = 24,
) -> WattTimeData:
    """WattTime ``GET /v3/forecast``: the carbon source's forecast from the latest tick
    up to ``horizon_hours`` ahead, in lbs CO2/MWh; ``data: []`` with a ``NO_FORECAST``
    warning in ``meta.warnings`` when it publishes none (docs/emulation.md)."""
    p, updated = await sig.latest(ctx, me)
    f = await sig.forecast(ctx, me, since=p.start)
    until = p.start + timedelta(hours=horizon_hours)
    data = [WattTimePoint(point_time=_wt_time(t), value=_lbs(v)) for t, v in f.points if t <= until]
    warnings = [] if f.points else [{"type": "NO_FORECAST", "message": sig.NO_FORECAST}]
    generated = f.published_at or updated
    meta = _meta(region, signal_type, "lbs_co2_per_mwh", _step(f.points),
                 warnings=warnings, generated_at=_wt_time(generated))  # fmt: skip
    return WattTimeData(data=data, meta=meta)


def _step(points: list[tuple[datetime, float]]) -> float:
    """The forecast's point period (s): the first step, else the emulation's period."""
    if len(points) > 1:
        return (points[1][0] - points[0][0]).total_seconds()
    return sig.PERIOD_S


@router.get(WATTTIME + "/v3/historical", tags=["emulation"], response_model=WattTimeData)
async def watttime_historical(
    me: Me,
    ctx: Ctx,
    region: Name,
    start: IsoTime,
    end: IsoTime,
    signal_type: SignalType = "co2_moer",
) -> WattTimeData:
    """WattTime ``GET /v3/historical``: the booked intensity between start and end in
    5-minute periods, in lbs CO2/MWh (none when end <= start)."""
    points = await sig.history(ctx, me, start, end)
    data = [WattTimePoint(point_time=_wt_time(q.start), value=_lbs(q.value)) for q in points]
    return WattTimeData(data=data, meta=_meta(region, signal_type, "lbs_co2_per_mwh", sig.PERIOD_S))


# --------------------------------------------------------------------------------------
# Carbon Aware SDK Web API
# --------------------------------------------------------------------------------------


class EmissionsData(BaseModel):
    """The Carbon Aware SDK's ``EmissionsData``: rating in gCO2eq/kWh, duration hh:mm:ss."""

    location: str
    time: str
    rating: float
    duration: str


class EmissionsForecast(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    generated_at: str = Field(alias="generatedAt")
    requested_at: str = Field(alias="requestedAt")
    location: str
    data_start_at: str | None = Field(alias="dataStartAt")
    data_end_at: str | None = Field(alias="dataEndAt")
    window_size: int = Field(alias="windowSize")
    optimal_data_points: list[EmissionsData] = Field(alias="optimalDataPoints")
    forecast_data: list[EmissionsData] = Field(alias="forecastData")


def _duration(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _casdk(location: str, p: sig.Point) -> EmissionsData:
    return EmissionsData(location=location, time=_wt_time(p.start),
                         rating=round(p.value, 3), duration=_duration(p.seconds))  # fmt: skip


@router.get(CARBON_AWARE + "/emissions/bylocation", tags=["emulation"],
            response_model=list[EmissionsData])  # fmt: skip
async def carbon_aware_emissions_bylocation(
    me: Me,
    ctx: Ctx,
    location: Name,
    time: IsoTime | None = None,
    to_time: Annotated[IsoTime | None, Query(alias="toTime")] = None,
) -> list[EmissionsData]:
    """Carbon Aware SDK ``GET /emissions/bylocation``: without ``time``, the latest
    tick; with it, the booked intensity from ``time`` to ``toTime`` (default: the latest
    tick's end) in 5-minute periods."""
    p, _ = await sig.latest(ctx, me)
    if time is None:
        return [_casdk(location, p)]
    end = to_time or p.start + timedelta(seconds=p.seconds)
    return [_casdk(location, q) for q in await sig.history(ctx, me, time, end)]


@router.get(CARBON_AWARE + "/emissions/forecasts/current", tags=["emulation"],
            response_model=list[EmissionsForecast], response_model_by_alias=True)  # fmt: skip
async def carbon_aware_forecasts_current(
    me: Me,
    ctx: Ctx,
    location: Annotated[list[str], Query(min_length=1, max_length=16)],
    data_start_at: Annotated[IsoTime | None, Query(alias="dataStartAt")] = None,
    data_end_at: Annotated[IsoTime | None, Query(alias="dataEndAt")] = None,
    window_size: Annotated[int, Query(alias="windowSize", ge=0, le=10_080)] = 0,
) -> Any:
    """Carbon Aware SDK ``GET /emissions/forecasts/current``: one forecast per location
    from the carbon source's forecast (points from the latest tick on, within
    ``dataStartAt``..``dataEndAt`` if given); ``optimalDataPoints`` are the point(s) with
    the lowest rating (``windowSize`` is echoed, not averaged over). Empty lists when the
    source publishes no forecast (docs/emulation.md)."""
    p, updated = await sig.latest(ctx, me)
    f = await sig.forecast(ctx, me, since=p.start)
    pts = [(t, v) for t, v in f.points
           if (data_start_at is None or t >= data_start_at)
           and (data_end_at is None or t <= data_end_at)]  # fmt: skip
    step = _step(f.points)
    now = _wt_time(datetime.now(UTC))
    best = min((v for _, v in pts), default=None)
    out = []
    for loc in location:
        data = [_casdk(loc[:128], sig.Point(t, step, v, False)) for t, v in pts]
        out.append(
            EmissionsForecast(
                generatedAt=_wt_time(f.published_at or updated),
                requestedAt=now,
                location=loc[:128],
                dataStartAt=_wt_time(data_start_at) if data_start_at else None,
                dataEndAt=_wt_time(data_end_at) if data_end_at else None,
                windowSize=window_size,
                optimalDataPoints=[d for d in data if d.rating == round(best or 0, 3)],
                forecastData=data,
            )
        )
    return out
