"""The getters (paper Tables 1 and 2): one value of the latest closed tick, energy and
carbon between two tick boundaries, and the app's facts, live state and ledger.

Each reading is one field of the ledger's ``TickData`` (or of its interval counters),
so the routes are generated from the tables below: a new reading is one row.
"""

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime

from ecovisor.api.auth import API_PREFIX as P
from ecovisor.api.auth import Me, own_container
from ecovisor.api.errors import error_responses, unprocessable
from ecovisor.api.models import AppInfo, IntervalReading, Reading
from ecovisor.api.state_source import Counters, IntervalCounter, LiveState, StateUnavailable
from ecovisor.api.wiring import Ctx, Wiring
from ecovisor.contract.app_config import AppConfig
from ecovisor.contract.notifications import ContainerTickData, TickData

T1 = Annotated[AwareDatetime, Query(description="interval start, ISO 8601 with zone")]
T2 = Annotated[AwareDatetime, Query(description="interval end, ISO 8601 with zone")]

router = APIRouter(responses=error_responses(401, 403))  # every route: the token, its app
STATE = error_responses(503)  # routes answering from the ledger's state views
CONTAINER = error_responses(404, 503)  # ... for a container of the app


@dataclass(frozen=True)
class Getter:
    """One route answering one field of the latest tick (or of the interval counters)."""

    name: str  # the paper's function name: route name and operationId
    path: str  # below /v1/apps/{app} (or below .../containers/{container})
    field: str  # attribute of TickData, ContainerTickData or Counters
    unit: str
    doc: str
    tag: str = "table1"


# fmt: off
APP_READINGS = (
    Getter("get_solar_power", "/solar_power", "solar_w", "W",
           "Virtual solar power of the latest tick (W); ``next`` is in get_state."),
    Getter("get_grid_power", "/grid_power", "grid_w", "W",
           "Virtual grid power of the latest tick (W, to load and battery)."),
    Getter("get_grid_carbon", "/grid_carbon", "grid_carbon_g_per_kwh", "gCO2eq/kWh",
           "Grid carbon intensity, time-weighted mean of the latest tick (gCO2eq/kWh)."),
    Getter("get_battery_discharge_rate", "/battery/discharge_rate",
           "battery_discharge_rate_w", "W",
           "Actual virtual battery discharge rate of the latest tick (W)."),
    Getter("get_battery_charge_level", "/battery/charge_level", "battery_charge_level_wh",
           "Wh", "Energy stored in the virtual battery (Wh, not %)."),
    Getter("get_app_power", "/power", "app_power_w", "W",
           "The app's power (W): sum of its containers over the latest tick.", "table2"),
)
CONTAINER_READINGS = (
    Getter("get_container_powercap", "/powercap", "powercap_w", "W",
           "A container's power cap in force (W; null = no cap)."),
    Getter("get_container_power", "/power", "power_w", "W",
           "A container's power over the latest tick (W, active + attributed idle)."),
)
APP_INTERVALS = (
    Getter("get_app_energy", "/energy", "energy_j", "J",
           "The app's energy (J) between tick boundaries t1 and t2.", "table2"),
    Getter("get_app_carbon", "/carbon", "carbon_g", "g",
           "The app's carbon (g CO2eq) between tick boundaries t1 and t2.", "table2"),
)
CONTAINER_INTERVALS = (
    Getter("get_container_energy", "/energy", "energy_j", "J",
           "A container's energy (J) between tick boundaries t1 and t2.", "table2"),
    Getter("get_container_carbon", "/carbon", "carbon_g", "g",
           "A container's carbon (g CO2eq) between tick boundaries t1 and t2.", "table2"),
)
# fmt: on


async def live(ctx: Wiring, me: AppConfig) -> tuple[LiveState, TickData]:
    """The app's live state and its latest TickData, or 503 with the reason."""
    try:
        s = await ctx.state.state(me.id)
    except StateUnavailable as e:
        raise HTTPException(503, str(e)) from e
    if s.data is None:
        raise HTTPException(503, f"no tick has closed yet for app {me.id!r}")
    return s, s.data


def reading(s: LiveState, d: TickData, value: float | None, unit: str, **kw: Any) -> Reading:
    return Reading(
        app=s.app, value=value, unit=unit, tick=s.tick, time=s.time, estimated=d.estimated, **kw
    )


async def container_data(
    ctx: Wiring, me: AppConfig, container: str
) -> tuple[LiveState, TickData, ContainerTickData]:
    own_container(ctx.cfg, me, container)
    s, d = await live(ctx, me)
    c = d.containers.get(container)
    if c is None:
        raise HTTPException(503, f"no data yet for container {container!r}")
    return s, d, c


async def interval(ctx: Wiring, me: AppConfig, t1: datetime, t2: datetime) -> Counters:
    """The ledger's counters between the tick boundaries around t1..t2, or 422/503."""
    if t2 <= t1:
        raise unprocessable(("query", "t2"), "t2 must be after t1")
    try:
        return await ctx.state.counters(me.id, t1, t2)
    except StateUnavailable as e:
        raise HTTPException(503, str(e)) from e


def _add(
    path: str,
    g: Getter,
    endpoint: Callable[..., Awaitable[Any]],
    model: type,
    responses: dict[int | str, dict[str, Any]],
) -> None:
    router.add_api_route(
        path,
        endpoint,
        methods=["GET"],
        name=g.name,
        description=g.doc,
        tags=[g.tag],
        response_model=model,
        responses=responses,
    )


def _app_reading(g: Getter) -> None:
    async def endpoint(me: Me, ctx: Ctx) -> Reading:
        s, d = await live(ctx, me)
        return reading(s, d, getattr(d, g.field), g.unit)

    _add(P + g.path, g, endpoint, Reading, STATE)


def _container_reading(g: Getter) -> None:
    async def endpoint(me: Me, ctx: Ctx, container: str) -> Reading:
        s, d, c = await container_data(ctx, me, container)
        return reading(s, d, getattr(c, g.field), g.unit, container=container)

    _add(P + "/containers/{container}" + g.path, g, endpoint, Reading, CONTAINER)


def _app_interval(g: Getter) -> None:
    async def endpoint(me: Me, ctx: Ctx, t1: T1, t2: T2) -> IntervalReading:
        c = await interval(ctx, me, t1, t2)
        return IntervalReading(app=me.id, t1=c.t1, t2=c.t2, value=getattr(c, g.field), unit=g.unit)

    _add(P + g.path, g, endpoint, IntervalReading, STATE)


def _container_interval(g: Getter) -> None:
    async def endpoint(me: Me, ctx: Ctx, container: str, t1: T1, t2: T2) -> IntervalReading:
        own_container(ctx.cfg, me, container)
        c = await interval(ctx, me, t1, t2)
        k = c.containers.get(container, IntervalCounter(energy_j=0.0, carbon_g=0.0))
        return IntervalReading(
            app=me.id, container=container, t1=c.t1, t2=c.t2, value=getattr(k, g.field), unit=g.unit
        )

    _add(P + "/containers/{container}" + g.path, g, endpoint, IntervalReading, CONTAINER)


@router.get(P, tags=["app"], response_model=AppInfo)
async def get_app_info(me: Me, ctx: Ctx) -> AppInfo:
    """The app's containers, templates and configured shares."""
    return AppInfo.of(ctx.cfg, me)


@router.get(P + "/state", tags=["app"], response_model=LiveState, responses=STATE)
async def get_state(me: Me, ctx: Ctx) -> LiveState:
    """The app's full live state (latest TickData, settings, metrics)."""
    s, _ = await live(ctx, me)
    return s


for _g in APP_READINGS:
    _app_reading(_g)
for _g in CONTAINER_READINGS:
    _container_reading(_g)
for _g in APP_INTERVALS:
    _app_interval(_g)
for _g in CONTAINER_INTERVALS:
    _container_interval(_g)


@router.get(P + "/ledger", tags=["table2"], responses=STATE)
async def get_ledger(
    me: Me,
    ctx: Ctx,
    t1: Annotated[AwareDatetime, Query(alias="from")],
    t2: Annotated[AwareDatetime, Query(alias="to")],
) -> list[dict[str, Any]]:
    """The app's ledger entries between two times (one per tick)."""
    try:
        return await ctx.state.ledger(me.id, t1, t2)
    except StateUnavailable as e:
        raise HTTPException(503, str(e)) from e
