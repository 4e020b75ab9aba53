"""The notification stream: server-sent events carrying only the token's app's
notifications (the paper's ``tick()`` and the change notifications)."""

import json
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Query
from sse_starlette.sse import EventSourceResponse

from ecovisor.api.auth import API_PREFIX as P
from ecovisor.api.auth import Me
from ecovisor.api.wiring import Ctx

router = APIRouter()


@router.get(
    P + "/notifications",
    tags=["notifications"],
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "SSE stream"}},
)
async def notifications(
    me: Me,
    ctx: Ctx,
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
        with ctx.bus.hub.subscribe(me.id) as q:
            yield {"event": "ready", "data": json.dumps({"app": me.id})}
            while True:
                n = await q.get()
                if n.app != me.id or (keep is not None and n.type not in keep):
                    continue
                yield {"event": n.type, "data": n.model_dump_json()}

    return EventSourceResponse(events(), ping=ping_s)
