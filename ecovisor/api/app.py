"""The application-facing REST API (paper §3.2, §4: the prototype exposes a REST API with
the methods of Table 1; Table 2's library functions are served here too).

``create_app(cfg, state, bus)`` assembles the routes of this package around a state
source (``state_source``: the ledger's live views) and a command bus (``command_bus``:
commands out, notifications in). Every route under ``/v1/apps/{app}`` needs the app's
bearer token (``auth``); getters are in ``readings``, setters in ``commands``, the
notification stream in ``stream``. Units: W, Wh, J, gCO2eq/kWh, g, mg/s, s. See
docs/api.md; run with ``python -m ecovisor.api`` (``ecovisor.api.main``).
"""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.exceptions import RequestValidationError

from ecovisor.api import (
    commands,
    dashboard,
    dashboard_site,
    emulation,
    forecasts,
    readings,
    sci,
    stream,
)
from ecovisor.api.auth import Caller
from ecovisor.api.command_bus import CommandBus
from ecovisor.api.errors import (
    TOO_LARGE,
    BodyLimit,
    error_responses,
    unreadable_body_handler,
    validation_error_handler,
)
from ecovisor.api.metrics import instrument as instrument_metrics
from ecovisor.api.models import AppInfo
from ecovisor.api.state_source import StateSource
from ecovisor.api.wiring import Ctx, Wiring
from ecovisor.contract.config import EcovisorConfig

meta = APIRouter(tags=["meta"])


@meta.get("/healthz", responses=TOO_LARGE)
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@meta.get("/v1/whoami", response_model=AppInfo, responses={**error_responses(401), **TOO_LARGE})
async def whoami(me: Caller, ctx: Ctx) -> AppInfo:
    """The application the bearer token belongs to."""
    return AppInfo.of(ctx.cfg, me)


def _api(lifespan: Callable[[FastAPI], AbstractAsyncContextManager[None]] | None) -> FastAPI:
    api = FastAPI(
        title="Ecovisor application API",
        version="1",
        description=(
            "Each application's virtual energy system (paper Tables 1 and 2). "
            "Units: W, Wh, J, gCO2eq/kWh, g, mg/s, s. Bearer token per application."
        ),
        lifespan=lifespan,
    )
    for router in (meta, readings.router, commands.router, stream.router):
        api.include_router(router)
    api.include_router(sci.router)
    api.include_router(forecasts.router)
    api.include_router(emulation.router)
    api.include_router(dashboard_site.apps_router)  # an app's ticks and command log
    api.include_router(dashboard_site.router)  # /v1/site: the operator's token
    dashboard.mount(api)  # GET /dashboard/: the page (docs/dashboard.md)
    # every 422 in the documented shape, serialisable whatever the input was
    api.add_exception_handler(RequestValidationError, validation_error_handler)
    # ... also FastAPI's 400 for a body that is not UTF-8 (the API has no 400 of its own)
    api.add_exception_handler(400, unreadable_body_handler)
    return api


def create_app(cfg: EcovisorConfig, state: StateSource, bus: CommandBus) -> FastAPI:
    """The FastAPI application, wired to a state source and a command bus (started and
    stopped with the app)."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await bus.start()
        try:
            yield
        finally:
            await bus.stop()
            await state.aclose()

    api = _api(lifespan)
    api.add_middleware(BodyLimit, max_bytes=cfg.site.limits.max_message_bytes)
    instrument_metrics(api)  # GET /metrics (docs/metrics.md)
    api.state.wiring = Wiring(cfg, state, bus)
    return api


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document (independent of the site: dumped to docs/openapi.json)."""
    return _api(None).openapi()
