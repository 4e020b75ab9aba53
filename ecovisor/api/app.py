"""The application-facing REST API (paper §3.2, §4: the prototype exposes a REST API with
the methods of Table 1; Table 2's library functions are served here too).

Every route under ``/v1/apps/{app}`` needs ``Authorization: Bearer <token>``; the token's
application (``config.app_for_token``) is the only app it can address: no or an unknown
token gives 401, another app (or another app's container or template) gives 403.

Getters answer from the ledger worker's live state view, interval queries from its
counters (exact at tick resolution), setters publish an ``ecovisor.schemas`` command on
``ecovisor.commands`` with the app's token and return its ``command_id``; ``?wait=true``
waits (bounded) for the lifecycle outcome on the app's notification topic. The
notification stream is server-sent events carrying only that app's notifications.

Units: W, Wh, J, gCO2eq/kWh, g, mg/s, s. See docs/api.md.

Run: ``python -m ecovisor.api --config FILE`` (uvicorn on 127.0.0.1:stack.api_port).
"""

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal, Protocol

import httpx
from fastapi import Depends, FastAPI, HTTPException, Path, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from sse_starlette.sse import EventSourceResponse

from ecovisor.contract import topics
from ecovisor.contract.config import AppConfig, ConfigError, EcovisorConfig
from ecovisor.contract.schemas import (
    COMMAND_LIFECYCLE,
    Command,
    Notification,
    ResumeContainer,
    ScaleApp,
    ScaleContainer,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
    SuspendContainer,
    TickData,
    parse_notification,
    utcnow,
)

API_PREFIX = "/v1/apps/{app}"
FINAL_OUTCOMES = ("command_rejected", "command_applied", "command_failed")
MAX_WAIT_S = 30.0

# ---------------------------------------------------------------------------------------
# State views (the ledger worker's web views) behind a small interface
# ---------------------------------------------------------------------------------------


class StateUnavailable(Exception):
    """The live state or counters cannot be read (ledger not reachable, no tick yet)."""


class LiveState(BaseModel):
    """An app's live state as the API needs it, normalised from the ledger's view."""

    model_config = ConfigDict(extra="forbid")

    app: str
    tick: int | None = Field(None, description="index of the latest closed tick")
    time: AwareDatetime | None = Field(None, description="end of the latest closed tick")
    data: TickData | None = Field(None, description="the latest tick's TickData")
    app_metrics: dict[str, float | None] = Field(
        default_factory=dict, description="latest app metrics (latency_ms, progress, ...)"
    )
    view: dict[str, Any] = Field(default_factory=dict, description="the ledger's raw view")


class IntervalCounter(BaseModel):
    energy_j: float
    carbon_g: float


class Counters(BaseModel):
    """Energy and carbon of an app and each container between two tick boundaries."""

    app: str
    t1: AwareDatetime = Field(description="tick boundary actually used for the start")
    t2: AwareDatetime = Field(description="tick boundary actually used for the end")
    energy_j: float
    carbon_g: float
    containers: dict[str, IntervalCounter] = Field(default_factory=dict)


class StateSource(Protocol):
    """Read access to the ledger's per-app state. The production implementation is
    ``HttpStateSource``; tests use an in-memory double."""

    async def state(self, app: str) -> LiveState: ...

    async def counters(self, app: str, t1: datetime, t2: datetime) -> Counters: ...

    async def ledger(self, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def live_state_from_view(app: str, view: dict[str, Any]) -> LiveState:
    """Normalise the ledger's ``/ecovisor/state/{app}`` JSON (docs/ledger.md). Tolerant
    of where the last TickData sits so the API does not break on an additive change."""
    data = _first(view, "tick_data", "last_tick_data", "data", "last_tick")
    tick_data = None
    if isinstance(data, dict):
        try:
            tick_data = TickData.model_validate(data)
        except ValidationError as e:
            raise StateUnavailable(f"ledger state of {app!r} has no valid TickData: {e}") from e
    tick = _first(view, "tick", "last_tick_index")
    metrics = dict(_first(view, "app_metrics", "metrics") or {})
    if isinstance(metrics.get("extra"), dict):  # AppMetricsTelemetry.extra, flattened
        metrics.update(metrics.pop("extra"))
    return LiveState(
        app=app,
        tick=tick if isinstance(tick, int) else None,
        time=_first(view, "time", "tick_end", "t_end"),
        data=tick_data,
        app_metrics={k: v for k, v in metrics.items() if isinstance(v, int | float | None)},
        view=view,
    )


class HttpStateSource:
    """The ledger worker's state views over loopback HTTP (no auth: loopback only)."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            r = await self._http.get(path, params=params)
        except httpx.HTTPError as e:
            raise StateUnavailable(f"ledger state views not reachable at {self.base_url}") from e
        if r.status_code >= 400:
            try:
                why = str(r.json().get("error", r.text))
            except (ValueError, AttributeError):
                why = r.text
            raise StateUnavailable(f"ledger: {why[:200]}")
        return r.json()

    async def state(self, app: str) -> LiveState:
        return live_state_from_view(app, await self._get(f"/ecovisor/state/{app}"))

    async def counters(self, app: str, t1: datetime, t2: datetime) -> Counters:
        raw = await self._get(
            f"/ecovisor/counters/{app}", {"t1": t1.isoformat(), "t2": t2.isoformat()}
        )
        try:
            return Counters.model_validate({"app": app, **raw})
        except ValidationError as e:
            raise StateUnavailable(f"ledger counters for {app!r} unreadable: {e}") from e

    async def ledger(self, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
        raw = await self._get(
            f"/ecovisor/ledger/{app}", {"from": t1.isoformat(), "to": t2.isoformat()}
        )
        entries = raw.get("entries", raw) if isinstance(raw, dict) else raw
        return list(entries)

    async def aclose(self) -> None:
        await self._http.aclose()


# ---------------------------------------------------------------------------------------
# Commands out, notifications in
# ---------------------------------------------------------------------------------------


class NotificationHub:
    """In-process fan-out of notifications to SSE streams and command waiters, per app."""

    def __init__(self, queue_size: int = 1000) -> None:
        self._subs: dict[str, set[asyncio.Queue[Notification]]] = {}
        self._queue_size = queue_size

    def dispatch(self, n: Notification) -> None:
        for q in list(self._subs.get(n.app, ())):
            if q.full():  # a slow reader loses its oldest event rather than stalling all
                with contextlib.suppress(asyncio.QueueEmpty):
                    q.get_nowait()
            q.put_nowait(n)

    @contextlib.contextmanager
    def subscribe(self, app: str) -> Any:
        q: asyncio.Queue[Notification] = asyncio.Queue(self._queue_size)
        self._subs.setdefault(app, set()).add(q)
        try:
            yield q
        finally:
            self._subs[app].discard(q)

    def subscribers(self, app: str) -> int:
        return len(self._subs.get(app, ()))


class CommandBus(Protocol):
    """Publishes commands and feeds the app notifications into ``hub``."""

    hub: NotificationHub

    async def start(self) -> None: ...

    async def publish(self, cmd: Command) -> None: ...

    async def stop(self) -> None: ...


class KafkaBus:
    """aiokafka producer to ``ecovisor.commands`` and a partition-assigned consumer of every
    configured app's notification topic (no consumer group: tansu rejects
    kafka-python groups and the API wants every notification, not a share)."""

    def __init__(self, bootstrap: str, apps: list[str], create_topics: bool = True) -> None:
        self.bootstrap, self.apps = bootstrap, apps
        self.hub = NotificationHub()
        self._create = create_topics
        self._producer: Any = None
        self._consumer: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

        names = [topics.notifications(a) for a in self.apps]
        if self._create:  # tansu does not auto-create; idempotent
            from ecovisor.adapters.kafka import create_topics

            await asyncio.to_thread(create_topics, self.bootstrap, [topics.COMMANDS, *names])
        self._producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        await self._producer.start()
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, group_id=None, enable_auto_commit=False
        )
        await self._consumer.start()
        await self._consumer.topics()  # fetch metadata so partitions are known
        tps = [
            TopicPartition(t, p)
            for t in names
            for p in sorted(self._consumer.partitions_for_topic(t) or {0})
        ]
        self._consumer.assign(tps)
        await self._consumer.seek_to_end(*tps)
        for tp in tps:  # resolve positions now: nothing published after start is missed
            await self._consumer.position(tp)
        self._task = asyncio.create_task(self._pump())

    async def _pump(self) -> None:
        async for msg in self._consumer:
            try:
                n = parse_notification(msg.value)
            except ValidationError:
                continue  # the ledger dead-letters bad messages; the API just skips them
            self.hub.dispatch(n)

    async def publish(self, cmd: Command) -> None:
        await self._producer.send_and_wait(
            topics.COMMANDS, value=cmd.to_json(), key=cmd.app.encode()
        )

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for c in (self._consumer, self._producer):
            if c is not None:
                with contextlib.suppress(Exception):
                    await c.stop()


# ---------------------------------------------------------------------------------------
# Request and response models
# ---------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------
# The app
# ---------------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False)
AppPath = Annotated[str, Path(description="application id (must be the token's app)")]
Wait = Annotated[bool, Query(description="wait for the lifecycle outcome")]
Timeout = Annotated[float, Query(gt=0, le=MAX_WAIT_S, description="max seconds to wait")]
T1 = Annotated[AwareDatetime, Query(description="interval start, ISO 8601 with zone")]
T2 = Annotated[AwareDatetime, Query(description="interval end, ISO 8601 with zone")]


def create_app(cfg: EcovisorConfig, state: StateSource, bus: CommandBus) -> FastAPI:
    """The FastAPI application, wired to a state source and a command bus."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        try:
            yield
        finally:
            await bus.stop()
            await state.aclose()

    api = FastAPI(
        title="Ecovisor application API",
        version="1",
        description=(
            "Each application's virtual energy system (paper Tables 1 and 2). "
            "Units: W, Wh, J, gCO2eq/kWh, g, mg/s, s. Bearer token per application."
        ),
        lifespan=lifespan,
    )

    def authenticate(
        creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> AppConfig:
        if creds is None or creds.scheme.lower() != "bearer":
            raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
        found = cfg.app_for_token(creds.credentials)
        if found is None:
            raise HTTPException(401, "invalid token", headers={"WWW-Authenticate": "Bearer"})
        return found

    def this_app(app: AppPath, me: Annotated[AppConfig, Depends(authenticate)]) -> AppConfig:
        if app != me.id:
            raise HTTPException(403, f"this token belongs to app {me.id!r}, not {app!r}")
        return me

    Me = Annotated[AppConfig, Depends(this_app)]

    def own_container(me: AppConfig, container: str, live: LiveState | None = None) -> str:
        if any(c.id == container for c in me.containers):
            return container
        if live and live.data and container in live.data.containers:
            return container  # a replica started by scale_app
        if cfg.owner_of(container) or any(t.id == container for a in cfg.apps for t in a.templates):
            raise HTTPException(403, f"container {container!r} is not a container of {me.id!r}")
        raise HTTPException(404, f"app {me.id!r} has no container {container!r}")

    def own_template(me: AppConfig, template: str) -> str:
        if any(t.id == template for t in me.templates):
            return template
        if any(t.id == template for a in cfg.apps for t in a.templates) or cfg.owner_of(template):
            raise HTTPException(403, f"template {template!r} is not a template of {me.id!r}")
        raise HTTPException(404, f"app {me.id!r} has no container template {template!r}")

    async def check_container(me: AppConfig, container: str) -> str:
        """Configured containers, else replicas the live state knows (scale_app)."""
        if any(c.id == container for c in me.containers):
            return container
        s = None
        with contextlib.suppress(StateUnavailable):
            s = await state.state(me.id)
        return own_container(me, container, s)

    async def live(me: AppConfig) -> tuple[LiveState, TickData]:
        try:
            s = await state.state(me.id)
        except StateUnavailable as e:
            raise HTTPException(503, str(e)) from e
        if s.data is None:
            raise HTTPException(503, f"no tick has closed yet for app {me.id!r}")
        return s, s.data

    def reading(s: LiveState, d: TickData, value: float | None, unit: str, **kw: Any) -> Reading:
        return Reading(
            app=s.app,
            value=value,
            unit=unit,
            tick=s.tick,
            time=s.time,
            estimated=d.estimated,
            **kw,
        )

    async def container_data(me: AppConfig, container: str) -> tuple[LiveState, TickData, Any]:
        s, d = await live(me)
        own_container(me, container, s)
        c = d.containers.get(container)
        if c is None:
            raise HTTPException(503, f"no data yet for container {container!r}")
        return s, d, c

    async def interval(me: AppConfig, t1: datetime, t2: datetime) -> Counters:
        if t2 <= t1:
            raise HTTPException(422, "t2 must be after t1")
        try:
            return await state.counters(me.id, t1, t2)
        except StateUnavailable as e:
            raise HTTPException(503, str(e)) from e

    async def send(me: AppConfig, cmd: Command, wait: bool, timeout: float) -> CommandResult:
        typ = str(getattr(cmd, "type", ""))
        with bus.hub.subscribe(me.id) as q:  # before publishing: no outcome can be missed
            try:
                await bus.publish(cmd)
            except Exception as e:  # noqa: BLE001 - any broker error is a 503 to the app
                raise HTTPException(503, f"command bus unavailable: {e}") from e
            result = CommandResult(command_id=cmd.command_id, type=typ, status="published")
            if not wait:
                return result
            deadline = asyncio.get_running_loop().time() + timeout
            while True:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    return result.model_copy(update={"timed_out": True})
                try:
                    n = await asyncio.wait_for(q.get(), left)
                except TimeoutError:
                    return result.model_copy(update={"timed_out": True})
                if n.command_id != cmd.command_id or n.type not in COMMAND_LIFECYCLE:
                    continue
                result = CommandResult(
                    command_id=cmd.command_id,
                    type=typ,
                    status=n.type.removeprefix("command_"),  # type: ignore[arg-type]
                    reason=n.reason,
                    data=n.data,
                )
                if n.type in FINAL_OUTCOMES:
                    return result

    def envelope(me: AppConfig) -> dict[str, Any]:
        return {"site": cfg.site.id, "time": utcnow(), "app": me.id, "token": me.token}

    # --- unauthenticated -------------------------------------------------------------
    @api.get("/healthz", tags=["meta"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/v1/whoami", tags=["meta"], response_model=AppInfo)
    async def whoami(me: Annotated[AppConfig, Depends(authenticate)]) -> AppInfo:
        """The application the bearer token belongs to."""
        return _info(cfg, me)

    # --- Table 1 getters ---------------------------------------------------------------
    P = API_PREFIX

    @api.get(P, tags=["app"], response_model=AppInfo)
    async def get_app_info(me: Me) -> AppInfo:
        """The app's containers, templates and configured shares."""
        return _info(cfg, me)

    @api.get(P + "/state", tags=["app"], response_model=LiveState)
    async def get_state(me: Me) -> LiveState:
        """The app's full live state (latest TickData, settings, metrics)."""
        s, _ = await live(me)
        return s

    @api.get(P + "/solar_power", tags=["table1"], response_model=Reading)
    async def get_solar_power(me: Me) -> Reading:
        """Virtual solar power of the latest tick (W); ``next`` is in get_state."""
        s, d = await live(me)
        return reading(s, d, d.solar_w, "W")

    @api.get(P + "/grid_power", tags=["table1"], response_model=Reading)
    async def get_grid_power(me: Me) -> Reading:
        """Virtual grid power of the latest tick (W, to load and battery)."""
        s, d = await live(me)
        return reading(s, d, d.grid_w, "W")

    @api.get(P + "/grid_carbon", tags=["table1"], response_model=Reading)
    async def get_grid_carbon(me: Me) -> Reading:
        """Grid carbon intensity, time-weighted mean of the latest tick (gCO2eq/kWh)."""
        s, d = await live(me)
        return reading(s, d, d.grid_carbon_g_per_kwh, "gCO2eq/kWh")

    @api.get(P + "/battery/discharge_rate", tags=["table1"], response_model=Reading)
    async def get_battery_discharge_rate(me: Me) -> Reading:
        """Actual virtual battery discharge rate of the latest tick (W)."""
        s, d = await live(me)
        return reading(s, d, d.battery_discharge_rate_w, "W")

    @api.get(P + "/battery/charge_level", tags=["table1"], response_model=Reading)
    async def get_battery_charge_level(me: Me) -> Reading:
        """Energy stored in the virtual battery (Wh, not %)."""
        s, d = await live(me)
        return reading(s, d, d.battery_charge_level_wh, "Wh")

    @api.get(P + "/containers/{container}/powercap", tags=["table1"], response_model=Reading)
    async def get_container_powercap(me: Me, container: str) -> Reading:
        """A container's power cap in force (W; null = no cap)."""
        s, d, c = await container_data(me, container)
        return reading(s, d, c.powercap_w, "W", container=container)

    @api.get(P + "/containers/{container}/power", tags=["table1"], response_model=Reading)
    async def get_container_power(me: Me, container: str) -> Reading:
        """A container's power over the latest tick (W, active + attributed idle)."""
        s, d, c = await container_data(me, container)
        return reading(s, d, c.power_w, "W", container=container)

    # --- Table 1 setters ---------------------------------------------------------------
    @api.put(P + "/containers/{container}/powercap", tags=["table1"], response_model=CommandResult)
    async def set_container_powercap(
        me: Me, container: str, body: PowercapBody, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """Set a container's power cap (W); ``null`` removes it."""
        await check_container(me, container)
        cmd = SetContainerPowercap(**envelope(me), container=container, watts=body.watts)
        return await send(me, cmd, wait, timeout)

    @api.delete(
        P + "/containers/{container}/powercap", tags=["table1"], response_model=CommandResult
    )
    async def remove_container_powercap(
        me: Me, container: str, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """Remove a container's power cap (same as setting null)."""
        await check_container(me, container)
        cmd = SetContainerPowercap(**envelope(me), container=container, watts=None)
        return await send(me, cmd, wait, timeout)

    @api.put(P + "/battery/charge_rate", tags=["table1"], response_model=CommandResult)
    async def set_battery_charge_rate(
        me: Me, body: WattsBody, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """Charge the virtual battery at this rate (W) until full; 0 = solar only."""
        cmd = SetBatteryChargeRate(**envelope(me), watts=body.watts)
        return await send(me, cmd, wait, timeout)

    @api.put(P + "/battery/max_discharge", tags=["table1"], response_model=CommandResult)
    async def set_battery_max_discharge(
        me: Me, body: WattsBody, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """Maximum virtual battery discharge rate (W)."""
        cmd = SetBatteryMaxDischarge(**envelope(me), watts=body.watts)
        return await send(me, cmd, wait, timeout)

    # --- Table 2 library functions -----------------------------------------------------
    @api.get(P + "/power", tags=["table2"], response_model=Reading)
    async def get_app_power(me: Me) -> Reading:
        """The app's power (W): sum of its containers over the latest tick."""
        s, d = await live(me)
        return reading(s, d, d.app_power_w, "W")

    @api.get(P + "/energy", tags=["table2"], response_model=IntervalReading)
    async def get_app_energy(me: Me, t1: T1, t2: T2) -> IntervalReading:
        """The app's energy (J) between tick boundaries t1 and t2."""
        c = await interval(me, t1, t2)
        return IntervalReading(app=me.id, t1=c.t1, t2=c.t2, value=c.energy_j, unit="J")

    @api.get(P + "/carbon", tags=["table2"], response_model=IntervalReading)
    async def get_app_carbon(me: Me, t1: T1, t2: T2) -> IntervalReading:
        """The app's carbon (g CO2eq) between tick boundaries t1 and t2."""
        c = await interval(me, t1, t2)
        return IntervalReading(app=me.id, t1=c.t1, t2=c.t2, value=c.carbon_g, unit="g")

    async def container_interval(
        me: AppConfig, container: str, t1: datetime, t2: datetime
    ) -> tuple[Counters, IntervalCounter]:
        await check_container(me, container)
        c = await interval(me, t1, t2)
        k = c.containers.get(container, IntervalCounter(energy_j=0.0, carbon_g=0.0))
        return c, k

    @api.get(P + "/containers/{container}/energy", tags=["table2"], response_model=IntervalReading)
    async def get_container_energy(me: Me, container: str, t1: T1, t2: T2) -> IntervalReading:
        """A container's energy (J) between tick boundaries t1 and t2."""
        c, k = await container_interval(me, container, t1, t2)
        return IntervalReading(
            app=me.id, container=container, t1=c.t1, t2=c.t2, value=k.energy_j, unit="J"
        )

    @api.get(P + "/containers/{container}/carbon", tags=["table2"], response_model=IntervalReading)
    async def get_container_carbon(me: Me, container: str, t1: T1, t2: T2) -> IntervalReading:
        """A container's carbon (g CO2eq) between tick boundaries t1 and t2."""
        c, k = await container_interval(me, container, t1, t2)
        return IntervalReading(
            app=me.id, container=container, t1=c.t1, t2=c.t2, value=k.carbon_g, unit="g"
        )

    @api.put(
        P + "/containers/{container}/carbon_rate", tags=["table2"], response_model=CommandResult
    )
    async def set_carbon_rate(
        me: Me, container: str, body: CarbonRateBody, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """A container's carbon rate (mg/s over window_s); the ecovisor tracks and notifies."""
        await check_container(me, container)
        cmd = SetCarbonRate(
            **envelope(me), container=container, mg_per_s=body.mg_per_s, window_s=body.window_s
        )
        return await send(me, cmd, wait, timeout)

    @api.put(P + "/carbon_budget", tags=["table2"], response_model=CommandResult)
    async def set_carbon_budget(
        me: Me, body: CarbonBudgetBody, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """The app's carbon budget (g per period_s); the ecovisor tracks and notifies."""
        cmd = SetCarbonBudget(**envelope(me), grams=body.grams, period_s=body.period_s)
        return await send(me, cmd, wait, timeout)

    @api.get(P + "/ledger", tags=["table2"])
    async def get_ledger(
        me: Me,
        t1: Annotated[AwareDatetime, Query(alias="from")],
        t2: Annotated[AwareDatetime, Query(alias="to")],
    ) -> list[dict[str, Any]]:
        """The app's ledger entries between two times (one per tick)."""
        try:
            return await state.ledger(me.id, t1, t2)
        except StateUnavailable as e:
            raise HTTPException(503, str(e)) from e

    # --- container management ----------------------------------------------------------
    @api.post(
        P + "/containers/{container}/suspend", tags=["containers"], response_model=CommandResult
    )
    async def suspend_container(
        me: Me, container: str, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """Suspend (freeze) a container."""
        await check_container(me, container)
        return await send(me, SuspendContainer(**envelope(me), container=container), wait, timeout)

    @api.post(
        P + "/containers/{container}/resume", tags=["containers"], response_model=CommandResult
    )
    async def resume_container(
        me: Me, container: str, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """Resume a suspended container."""
        await check_container(me, container)
        return await send(me, ResumeContainer(**envelope(me), container=container), wait, timeout)

    @api.put(P + "/containers/{container}/cpus", tags=["containers"], response_model=CommandResult)
    async def scale_container(
        me: Me, container: str, body: CpusBody, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """Vertical scaling: the container's CPU allowance in cores."""
        await check_container(me, container)
        cmd = ScaleContainer(**envelope(me), container=container, cpus=body.cpus)
        return await send(me, cmd, wait, timeout)

    @api.put(
        P + "/templates/{template}/replicas", tags=["containers"], response_model=CommandResult
    )
    async def scale_app(
        me: Me, template: str, body: ReplicasBody, wait: Wait = False, timeout: Timeout = 5.0
    ) -> CommandResult:
        """Horizontal scaling: run this many replicas of a container template."""
        own_template(me, template)
        cmd = ScaleApp(**envelope(me), template=template, replicas=body.replicas)
        return await send(me, cmd, wait, timeout)

    # --- notifications -----------------------------------------------------------------
    @api.get(
        P + "/notifications",
        tags=["notifications"],
        response_class=EventSourceResponse,
        responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
    )
    async def notifications(
        me: Me,
        request: Request,
        types: Annotated[
            str | None, Query(description="comma-separated notification types to keep")
        ] = None,
        ping_s: Annotated[
            float, Query(ge=0.2, le=60, description="keep-alive comment interval, s")
        ] = 15.0,
    ) -> EventSourceResponse:
        """Server-sent events: one event per notification of this app only (event name =
        notification type, data = the Notification JSON)."""
        keep = {t.strip() for t in types.split(",")} if types else None

        async def events() -> AsyncIterator[dict[str, str]]:
            with bus.hub.subscribe(me.id) as q:
                yield {"event": "ready", "data": json.dumps({"app": me.id})}
                while True:
                    n = await q.get()
                    if n.app != me.id or (keep is not None and n.type not in keep):
                        continue
                    yield {"event": n.type, "data": n.model_dump_json()}

        return EventSourceResponse(events(), ping=ping_s)

    return api


def _info(cfg: EcovisorConfig, me: AppConfig) -> AppInfo:
    sh, shape = me.shares, cfg.site.shape
    headroom_wh = shape.solar_nameplate_w * sh.solar_fraction * shape.tick_s / 3600
    return AppInfo(
        battery_full_wh=max(0.0, sh.battery_capacity_wh - headroom_wh),
        battery_empty_wh=sh.reserve_soc * sh.battery_capacity_wh,
        app=me.id,
        site=cfg.site.id,
        tick_s=cfg.site.shape.tick_s,
        containers=[c.id for c in me.containers],
        templates=[t.id for t in me.templates],
        shares=me.shares.model_dump(),
    )


def app_routes(api: FastAPI) -> list[tuple[str, str]]:
    """(method, path) of every per-app route (used by the isolation tests)."""
    out = []
    for r in api.routes:
        path = getattr(r, "path", "")
        if path.startswith(API_PREFIX):
            for m in sorted(getattr(r, "methods", ()) or ()):
                if m != "HEAD":
                    out.append((m, path))
    return out


class _NoState:
    async def state(self, app: str) -> LiveState:
        raise StateUnavailable("no state source")

    async def counters(self, app: str, t1: datetime, t2: datetime) -> Counters:
        raise StateUnavailable("no state source")

    async def ledger(self, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
        raise StateUnavailable("no state source")

    async def aclose(self) -> None:
        return None


class _NoBus:
    def __init__(self) -> None:
        self.hub = NotificationHub()

    async def start(self) -> None:
        return None

    async def publish(self, cmd: Command) -> None:
        raise RuntimeError("no command bus")

    async def stop(self) -> None:
        return None


# ---------------------------------------------------------------------------------------
# Test doubles (unit tests, policy tests, docs examples): no ledger, no broker
# ---------------------------------------------------------------------------------------


class InMemoryStateSource:
    """Test double of the ledger's state views: states and counters set by the test."""

    def __init__(self) -> None:
        self.states: dict[str, LiveState] = {}
        self.counter_values: dict[str, Counters] = {}
        self.ledgers: dict[str, list[dict[str, Any]]] = {}
        self.counter_queries: list[tuple[str, datetime, datetime]] = []

    def set_tick(self, app: str, tick: int, time: datetime, data: TickData, **metrics: float):
        self.states[app] = LiveState(app=app, tick=tick, time=time, data=data, app_metrics=metrics)

    async def state(self, app: str) -> LiveState:
        if app not in self.states:
            raise StateUnavailable(f"no state for {app!r}")
        return self.states[app]

    async def counters(self, app: str, t1: datetime, t2: datetime) -> Counters:
        self.counter_queries.append((app, t1, t2))
        if app not in self.counter_values:
            raise StateUnavailable(f"no counters for {app!r}")
        return self.counter_values[app]

    async def ledger(self, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
        return list(self.ledgers.get(app, []))

    async def aclose(self) -> None:
        return None


class InMemoryBus:
    """Test double of the Kafka command bus: records published commands; ``responder``
    (a stand-in for the ledger) may answer each command with lifecycle notifications."""

    def __init__(self, responder: Callable[[Command], list[Notification]] | None = None) -> None:
        self.hub = NotificationHub()
        self.published: list[Command] = []
        self.responder = responder

    async def start(self) -> None:
        return None

    async def publish(self, cmd: Command) -> None:
        self.published.append(cmd)
        if self.responder is not None:
            replies = self.responder(cmd)

            async def later() -> None:
                for n in replies:
                    await asyncio.sleep(0)
                    self.hub.dispatch(n)

            asyncio.get_running_loop().create_task(later())

    async def stop(self) -> None:
        return None


def accept_and_apply(cmd: Command) -> list[Notification]:
    """A responder for InMemoryBus: accepted, then applied with the command's fields."""
    base = {"site": cmd.site, "time": utcnow(), "app": cmd.app, "command_id": cmd.command_id}
    applied = cmd.model_dump(exclude={"token", "site", "time", "app", "command_id"})
    return [
        Notification(**base, type="command_accepted"),
        Notification(**base, type="command_applied", data=applied),
    ]


def openapi_document(cfg: EcovisorConfig | None = None) -> dict[str, Any]:
    """The OpenAPI document (independent of the site: dumped to docs/openapi.json)."""
    from ecovisor.contract.config import SiteConfig

    cfg = cfg or EcovisorConfig(site=SiteConfig(id="site"))
    return create_app(cfg, _NoState(), _NoBus()).openapi()


def _die(msg: str) -> None:
    print(f"ecovisor.api: {msg}", file=sys.stderr)
    raise SystemExit(2)


def main(argv: list[str] | None = None, serve: Callable[..., None] | None = None) -> None:
    from ecovisor.contract.config import config_path, kafka_bootstrap, load_config

    p = argparse.ArgumentParser(prog="python -m ecovisor.api", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="site configuration (default $ECOVISOR_CONFIG)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, help="default stack.api_port")
    p.add_argument("--ledger-url", help="ledger state views (default loopback ledger_web_port)")
    p.add_argument("--dump-openapi", metavar="PATH", help="write the OpenAPI JSON and exit")
    a = p.parse_args(argv)
    if a.dump_openapi:
        doc = json.dumps(openapi_document(), indent=2, sort_keys=True) + "\n"
        if a.dump_openapi == "-":
            sys.stdout.write(doc)
        else:
            with open(a.dump_openapi, "w") as fh:
                fh.write(doc)
        return
    try:
        cfg = load_config(config_path(a.config))
    except ConfigError as e:
        _die(str(e).replace("\n", " "))
        return
    ledger_url = a.ledger_url or f"http://127.0.0.1:{cfg.stack.ledger_web_port}"
    api = create_app(
        cfg, HttpStateSource(ledger_url), KafkaBus(kafka_bootstrap(cfg), [x.id for x in cfg.apps])
    )
    port = a.port or cfg.stack.api_port
    if serve is None:
        import uvicorn

        # uvicorn handles SIGTERM/SIGINT: stops accepting, runs the lifespan shutdown
        uvicorn.run(api, host=a.host, port=port, log_level="info")
    else:
        serve(api, host=a.host, port=port)


if __name__ == "__main__":
    main()
