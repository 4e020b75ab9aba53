"""The operator's read routes (``/v1/site/...``, the site's operator token, ``auth.operator``)
and the command log of one app (its own token): what the dashboard (docs/dashboard.md)
shows, in one shape for the live tick, the stream and a time range.

A *point* is one tick of one app (``AppPoint``: its power by source, battery, carbon, in
``TickData``'s field names) or of the whole site (``SitePoint``: the sums over the apps,
and each app's point). Sources, all read the way ``readings`` reads them:

* the latest tick: each app's live state (``StateSource.state``, the ledger's view);
* a time range: each app's kept ledger entries (``StateSource.ledger``);
* live: the apps' ``tick`` notifications from the command bus's hub, joined by tick index
  into one ``site_tick`` event per tick (``TickJoin``); the other notifications (command
  lifecycle, battery, carbon limits) pass through as they are;
* the command log: the lifecycle notifications among the newest ``scan`` notifications
  of each app's topic, read back with ``CommandBus.replay`` (no buffer in the API).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
from collections.abc import AsyncIterator, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query
from pydantic import AwareDatetime, BaseModel, Field, ValidationError
from sse_starlette.sse import EventSourceResponse

from ecovisor.api.auth import API_PREFIX, OPERATOR, Me
from ecovisor.api.command_bus import CommandBus
from ecovisor.api.errors import error_responses
from ecovisor.api.state_source import LiveState, StateUnavailable
from ecovisor.api.wiring import Ctx, Wiring
from ecovisor.contract.notifications import COMMAND_LIFECYCLE, Notification, TickData
from ecovisor.core.entries import AppLedgerEntry
from ecovisor.core.units import mj_to_power, ug_to_g

SITE = "/v1/site"
STATE = error_responses(503)
router = APIRouter(tags=["operator"], dependencies=[OPERATOR],
                   responses=error_responses(401, 403))  # fmt: skip
apps_router = APIRouter(tags=["app"], responses=error_responses(401, 403))

From = Annotated[AwareDatetime, Query(alias="from", description="start, ISO 8601 with zone")]
To = Annotated[AwareDatetime, Query(alias="to", description="end, ISO 8601 with zone")]
Limit = Annotated[int, Query(ge=1, le=1000, description="newest entries to return")]
Scan = Annotated[
    int, Query(ge=1, le=10_000, description="newest notifications of each app's topic to search")
]
MERGED_QUEUE = 1000  # notifications a site stream holds for a slow client (then drops oldest)
JOIN_KEEP = 8  # ticks a site tick waits for its slowest app before it is sent incomplete


class AppPoint(BaseModel):
    """One app's tick: power by source, battery, carbon (``TickData``'s names and units)."""

    app: str
    tick: int
    time: datetime = Field(description="end of the tick")
    tick_s: float
    solar_w: float
    grid_w: float = Field(description="grid power to load and battery, W")
    battery_discharge_rate_w: float
    battery_charge_level_wh: float
    app_power_w: float
    unserved_w: float
    carbon_g: float = Field(description="carbon of this tick, g")
    grid_carbon_g_per_kwh: float
    estimated: bool = False


SUMMED = ("solar_w", "grid_w", "battery_discharge_rate_w", "battery_charge_level_wh",
          "app_power_w", "unserved_w", "carbon_g")  # fmt: skip


class SitePoint(BaseModel):
    """One tick of the site: the sums of its apps' points (the apps' virtual energy
    systems; the platform's idle power is no app's) and each app's point."""

    tick: int
    time: datetime = Field(description="end of the tick")
    tick_s: float
    solar_w: float
    grid_w: float
    battery_discharge_rate_w: float
    battery_charge_level_wh: float = Field(description="Σ of the apps' virtual batteries, Wh")
    app_power_w: float = Field(description="Σ of the apps' power, W")
    unserved_w: float
    carbon_g: float
    grid_carbon_g_per_kwh: float = Field(description="mean over the apps (one grid signal)")
    estimated: bool
    complete: bool = Field(description="false: some app had no data for this tick")
    apps: dict[str, AppPoint]


class SiteApp(BaseModel):
    id: str
    containers: list[str]
    templates: list[str]


class SiteInfo(BaseModel):
    """The site as the operator sees it."""

    site: str
    tick_s: float
    solar_nameplate_w: float
    battery_capacity_wh: float
    grid_limit_w: float | None = Field(description="null: no site grid limit")
    apps: list[SiteApp]


class CommandLog(BaseModel):
    """Command lifecycle notifications, newest first."""

    scanned: int = Field(description="notifications searched (per app: at most scan)")
    entries: list[Notification]


# --- points ------------------------------------------------------------------------------


def point_from_tick(app: str, tick: int, time: datetime, d: TickData) -> AppPoint:
    fields = {f: getattr(d, f) for f in SUMMED}
    return AppPoint(app=app, tick=tick, time=time, tick_s=d.tick_s, estimated=d.estimated,
                    grid_carbon_g_per_kwh=d.grid_carbon_g_per_kwh, **fields)  # fmt: skip


def point_from_entry(e: AppLedgerEntry) -> AppPoint:
    """An app's point from its ledger entry: the fields its ``tick`` notification's
    TickData has for the same tick (streams/tick_notifications.tick_data; a unit test
    checks that they agree)."""
    dt, f = e.tick_s, e.flows
    return AppPoint(
        app=e.app, tick=e.k, time=datetime.fromtimestamp(e.t_start + dt, UTC), tick_s=dt,
        solar_w=mj_to_power(e.solar_mj, dt),
        grid_w=mj_to_power(f.grid_to_load + f.grid_to_battery, dt),
        battery_discharge_rate_w=mj_to_power(f.battery_to_load, dt),
        battery_charge_level_wh=e.battery.after_wh,
        app_power_w=mj_to_power(e.demand_mj, dt),
        unserved_w=mj_to_power(f.unserved, dt),
        carbon_g=ug_to_g(e.total.carbon_ug),
        grid_carbon_g_per_kwh=e.intensity_g_per_kwh,
        estimated=e.estimated,
    )  # fmt: skip


def site_point(tick: int, points: dict[str, AppPoint], n_apps: int) -> SitePoint:
    ps = list(points.values())
    sums = {f: sum(getattr(p, f) for p in ps) for f in SUMMED}
    return SitePoint(
        tick=tick, time=max(p.time for p in ps), tick_s=ps[0].tick_s,
        grid_carbon_g_per_kwh=sum(p.grid_carbon_g_per_kwh for p in ps) / len(ps),
        estimated=any(p.estimated for p in ps), complete=len(ps) >= n_apps,
        apps=dict(sorted(points.items())), **sums,
    )  # fmt: skip


def site_points(points: Iterable[AppPoint], n_apps: int) -> list[SitePoint]:
    """Points of several apps grouped by tick, in tick order."""
    by_tick: dict[int, dict[str, AppPoint]] = {}
    for p in points:
        by_tick.setdefault(p.tick, {})[p.app] = p
    return [site_point(k, by_tick[k], n_apps) for k in sorted(by_tick)]


class TickJoin:
    """The apps' ``tick`` notifications joined by tick index: ``add`` returns the site
    points now complete, in tick order. A tick still missing an app when a later tick
    completes (or ``JOIN_KEEP`` newer ticks wait) goes out first, marked incomplete;
    a notification of a tick already sent is dropped (the chart's x only advances)."""

    def __init__(self, apps: list[str]) -> None:
        self.n_apps = len(apps)
        self.pending: dict[int, dict[str, AppPoint]] = {}
        self.sent = -1

    def add(self, n: Notification) -> list[SitePoint]:
        if n.tick is None or n.tick <= self.sent:
            return []
        try:
            d = TickData.model_validate(n.data)
        except ValidationError:
            return []
        self.pending.setdefault(n.tick, {})[n.app] = point_from_tick(n.app, n.tick, n.time, d)
        done = [k for k, got in self.pending.items() if len(got) >= self.n_apps]
        upto = max(done, default=max(self.pending) - JOIN_KEEP)
        out = []
        for k in sorted(k for k in self.pending if k <= upto):
            out.append(site_point(k, self.pending.pop(k), self.n_apps))
            self.sent = k
        return out


# --- the routes --------------------------------------------------------------------------


async def _state(ctx: Wiring, app: str) -> LiveState:
    try:
        return await ctx.state.state(app)
    except StateUnavailable as e:
        raise HTTPException(503, str(e)) from e


@router.get(SITE, response_model=SiteInfo)
async def get_site(ctx: Ctx) -> SiteInfo:
    """The site: its shape and every app with its containers and templates."""
    cfg = ctx.cfg
    shape = cfg.site.shape
    apps = [SiteApp(id=a.id, containers=[c.id for c in a.containers],
                    templates=[t.id for t in a.templates]) for a in cfg.apps]  # fmt: skip
    return SiteInfo(site=cfg.site.id, tick_s=shape.tick_s, apps=apps,
                    solar_nameplate_w=shape.solar_nameplate_w,
                    battery_capacity_wh=shape.battery_capacity_wh,
                    grid_limit_w=None if math.isinf(shape.grid_limit_w) else shape.grid_limit_w,
                    )  # fmt: skip


@router.get(SITE + "/tick", response_model=SitePoint, responses=STATE)
async def get_site_tick(ctx: Ctx) -> SitePoint:
    """The latest closed tick of the site: every app's latest tick (the newest index;
    ``complete`` false when an app's latest tick is older or missing)."""
    points = []
    for a in ctx.cfg.apps:
        s = await _state(ctx, a.id)
        if s.data is not None and s.tick is not None and s.time is not None:
            points.append(point_from_tick(a.id, s.tick, s.time, s.data))
    if not points:
        raise HTTPException(503, "no tick has closed yet")
    newest = max(p.tick for p in points)
    return site_point(newest, {p.app: p for p in points if p.tick == newest}, len(ctx.cfg.apps))


@router.get(SITE + "/ticks", response_model=list[SitePoint], responses=STATE)
async def get_site_ticks(
    ctx: Ctx, t1: From, t2: To,
    limit: Annotated[int, Query(ge=1, le=100_000, description="newest ticks to return")] = 3600,
) -> list[SitePoint]:  # fmt: skip
    """The site's ticks starting in [from, to) among those the ledger keeps in memory,
    from each app's ledger entries, oldest first (at most ``limit``, the newest)."""
    points: list[AppPoint] = []
    for a in ctx.cfg.apps:
        points += _entry_points(await _ledger(ctx, a.id, t1, t2))
    return site_points(points, len(ctx.cfg.apps))[-limit:]


@apps_router.get(API_PREFIX + "/ticks", response_model=list[AppPoint], responses=STATE)
async def get_app_ticks(
    me: Me, ctx: Ctx, t1: From, t2: To,
    limit: Annotated[int, Query(ge=1, le=100_000, description="newest ticks to return")] = 3600,
) -> list[AppPoint]:  # fmt: skip
    """The app's ticks starting in [from, to) (its kept ledger entries as points: power
    by source, battery, carbon), oldest first (at most ``limit``, the newest)."""
    points = _entry_points(await _ledger(ctx, me.id, t1, t2))
    return sorted(points, key=lambda p: p.tick)[-limit:]


async def _ledger(ctx: Wiring, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
    try:
        return await ctx.state.ledger(app, t1, t2)
    except StateUnavailable as e:
        raise HTTPException(503, str(e)) from e


def _entry_points(entries: list[dict[str, Any]]) -> list[AppPoint]:
    out = []
    for raw in entries:
        with contextlib.suppress(ValidationError):  # an entry of another version: skipped
            out.append(point_from_entry(AppLedgerEntry.model_validate(raw)))
    return out


@router.get(SITE + "/commands", response_model=CommandLog, responses=STATE)
async def get_site_commands(ctx: Ctx, limit: Limit = 100, scan: Scan = 2000) -> CommandLog:
    """The command log of every app: the command lifecycle notifications (accepted,
    rejected, applied, failed; ``command_id``, ``reason``) among the newest ``scan``
    notifications of each app's topic, newest first."""
    return await command_log(ctx.bus, [a.id for a in ctx.cfg.apps], limit, scan)


@apps_router.get(API_PREFIX + "/command_log", response_model=CommandLog, responses=STATE)
async def get_app_command_log(
    me: Me, ctx: Ctx, limit: Limit = 100, scan: Scan = 2000
) -> CommandLog:
    """The app's own command log (as ``/v1/site/commands``, this app only)."""
    return await command_log(ctx.bus, [me.id], limit, scan)


# command-log scans at once per API process: each reads up to ``scan`` records per
# partition from the broker, so one token's burst of requests must not load the API and
# the broker for every tenant (the others queue)
MAX_CONCURRENT_SCANS = 2
_scans: asyncio.Semaphore | None = None


async def command_log(bus: CommandBus, apps: list[str], limit: int, scan: int) -> CommandLog:
    global _scans
    if _scans is None:
        _scans = asyncio.Semaphore(MAX_CONCURRENT_SCANS)
    async with _scans:
        return await _command_log(bus, apps, limit, scan)


async def _command_log(bus: CommandBus, apps: list[str], limit: int, scan: int) -> CommandLog:
    found: list[Notification] = []
    scanned = 0
    try:
        for app in apps:
            for p, (earliest, end) in (await bus.offsets(app)).items():
                start = max(earliest, end - scan)
                scanned += end - start
                async for _, n in bus.replay(app, p, start, end):
                    if n.type in COMMAND_LIFECYCLE and n.app == app:
                        found.append(n)
    except Exception as e:  # the broker: unreachable, or a replay that stalled
        raise HTTPException(503, f"notification topics not readable: {type(e).__name__}") from e
    found.sort(key=lambda n: n.time, reverse=True)
    return CommandLog(scanned=scanned, entries=found[:limit])


@router.get(
    SITE + "/notifications",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
)
async def site_notifications(
    ctx: Ctx,
    ping_s: Annotated[
        float, Query(ge=0.2, le=60, description="keep-alive comment interval, s")
    ] = 15.0,
) -> EventSourceResponse:
    """Server-sent events of the whole site, live only (no ``Last-Event-ID``: reload a
    range from ``/v1/site/ticks`` after a reconnect): ``ready``, then one ``site_tick``
    (a SitePoint) per tick once every app's tick arrived, and every other notification
    of every app as it comes (event name = its type, data = the Notification)."""
    apps = [a.id for a in ctx.cfg.apps]
    hub = ctx.bus.hub

    async def events() -> AsyncIterator[dict[str, str]]:
        merged: asyncio.Queue[Notification] = asyncio.Queue(MERGED_QUEUE)
        with contextlib.ExitStack() as subs:
            queues = [subs.enter_context(hub.subscribe(a)) for a in apps]
            tasks = [asyncio.create_task(_forward(q, merged)) for q in queues]
            try:
                ready = {"site": ctx.cfg.site.id, "apps": apps}
                yield {"event": "ready", "data": json.dumps(ready)}
                join = TickJoin(apps)
                while True:
                    n = await merged.get()
                    if n.type != "tick":
                        yield {"event": n.type, "data": n.model_dump_json()}
                        continue
                    for sp in join.add(n):
                        yield {"event": "site_tick", "data": sp.model_dump_json()}
            finally:
                for t in tasks:
                    t.cancel()

    return EventSourceResponse(events(), ping=ping_s)


async def _forward(src: asyncio.Queue[Notification], dst: asyncio.Queue[Notification]) -> None:
    """One app's queue into the stream's, both bounded: a slow client loses its oldest
    notifications (it is a live view; the range reads them back), never blocks others."""
    while True:
        n = await src.get()
        if dst.full():
            with contextlib.suppress(asyncio.QueueEmpty):
                dst.get_nowait()
        dst.put_nowait(n)
