"""The notification stream: server-sent events carrying only the token's app's
notifications (the paper's ``tick()`` and the change notifications), at least once.

Every event carries an ``id``: the stream's position in the app's notification topic,
``<partition>:<offset>`` of the last notification sent (one pair per partition, comma
separated; Ecovisor's topics have one). A client that reconnects with that id in
``Last-Event-ID`` first gets every notification after it, read back from the topic (not
from a buffer in the API: memory stays bounded), then the live ones, with no gap and no
repeat. Notifications the broker no longer has (retention, a restarted in-memory broker)
are announced by a ``gap`` event, never skipped silently."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator, Callable
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette.sse import EventSourceResponse

from ecovisor.api.auth import API_PREFIX as P
from ecovisor.api.auth import Me
from ecovisor.api.command_bus import CommandBus
from ecovisor.api.errors import error_responses, unprocessable, validation_response
from ecovisor.api.wiring import Ctx
from ecovisor.contract.notifications import NOTIFICATION_TYPES, Notification

log = logging.getLogger("ecovisor.api.stream")
router = APIRouter()

MAX_EVENT_ID = 256  # characters of a Last-Event-ID (one "p:o" pair per partition)
_PAIR = re.compile(r"(\d{1,9}):(-1|\d{1,18})", re.ASCII)
_LOC = ["header", "last-event-id"]


def parse_event_id(raw: str) -> dict[int, int]:
    """``"0:41"`` (or ``"0:41,1:7"``) → {partition: offset of the last event seen}."""
    if len(raw) > MAX_EVENT_ID:
        raise unprocessable(_LOC, f"longer than {MAX_EVENT_ID} characters")
    out: dict[int, int] = {}
    for pair in raw.split(","):
        m = _PAIR.fullmatch(pair.strip())
        if m is None:
            raise unprocessable(
                _LOC, "expected <partition>:<offset>[,...] as sent in an event id, "
                f"got {raw[:40]!r}"
            )  # fmt: skip
        out[int(m[1])] = int(m[2])
    return out


def event_id(sent: dict[int, int]) -> str:
    return ",".join(f"{p}:{o}" for p, o in sorted(sent.items()))


@router.get(
    P + "/notifications",
    tags=["notifications"],
    response_class=EventSourceResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "SSE stream"},
        **validation_response("a Last-Event-ID that is not an event id of this stream"),
        **error_responses(401, 403),
    },
)
async def notifications(
    me: Me,
    ctx: Ctx,
    types: Annotated[
        str | None,
        Query(max_length=512, description="comma-separated notification types to keep"),
    ] = None,
    ping_s: Annotated[
        float, Query(ge=0.2, le=60, description="keep-alive comment interval, s")
    ] = 15.0,
    last_event_id: Annotated[
        str | None,
        Header(description="resume after this event id (sent by SSE clients on reconnect)"),
    ] = None,
) -> EventSourceResponse:
    """Server-sent events: one event per notification of this app only (event name =
    notification type, data = the Notification JSON, id = its position); with
    ``Last-Event-ID``, every notification after that id first."""
    keep = {t.strip() for t in types.split(",")} if types else None
    if keep and not keep <= NOTIFICATION_TYPES:
        raise unprocessable(("query", "types"),
                            f"unknown notification types {sorted(keep - NOTIFICATION_TYPES)}")
    resume = parse_event_id(last_event_id) if last_event_id and last_event_id.strip() else None
    bus = ctx.bus
    if resume:
        parts = await bus.offsets(me.id)
        unknown = sorted(set(resume) - set(parts))
        if unknown:
            raise unprocessable(
                _LOC, f"no partition {unknown[0]} in the notification topic of {me.id!r} "
                f"(it has {sorted(parts)})"
            )  # fmt: skip

    def wanted(n: Notification) -> bool:
        return n.app == me.id and (keep is None or n.type in keep)

    async def events() -> AsyncIterator[dict[str, str]]:
        with bus.hub.stream(me.id) as sub:
            # positions read after subscribing: whatever is past them reaches the queue.
            # `sent`: the id (last position the client has); `skip`: up to where a
            # catch-up (or the client, when resuming) has it, so the queue's copies go
            parts = await bus.offsets(me.id)
            sent = {p: end - 1 for p, (_, end) in parts.items()} | (resume or {})
            skip = dict(resume or {})
            ready = {"app": me.id, "resumed": resume is not None}
            first = {"event": "ready", "data": json.dumps(ready)}
            yield first | ({"id": event_id(sent)} if sent else {})
            async for ev in _catch_up(bus, me.id, sent, skip, parts, wanted):
                yield ev
            while True:
                pos, n = await sub.queue.get()
                if sub.overflowed:  # this stream fell behind: read the dropped part back
                    sub.overflowed = False
                    now = await bus.offsets(me.id)
                    async for ev in _catch_up(bus, me.id, sent, skip, now, wanted):
                        yield ev
                if pos is not None:
                    p, off = pos
                    if off <= skip.get(p, -1):
                        continue  # the client has it already (a catch-up sent it)
                    sent[p] = off
                if wanted(n):
                    ev = {"event": n.type, "data": n.model_dump_json()}
                    yield ev | ({"id": event_id(sent)} if pos is not None else {})

    return EventSourceResponse(events(), ping=ping_s)


async def _catch_up(
    bus: CommandBus,
    app: str,
    sent: dict[int, int],
    skip: dict[int, int],
    parts: dict[int, tuple[int, int]],
    wanted: Callable[[Notification], bool],
) -> AsyncIterator[dict[str, str]]:
    """Events for every notification after ``sent`` up to the ends in ``parts``, read
    back from the topic; ``sent`` and ``skip`` advance as they go. A part the broker no
    longer has becomes one ``gap`` event with the reason."""
    for p, (earliest, end) in sorted(parts.items()):
        start = sent.get(p, end - 1) + 1
        reason = None
        if start > end:  # ids past the end: the log restarted (an in-memory broker did)
            reason, lost_to = "the notification log restarted; replaying it from its start", None
            start = earliest
        elif start < earliest:
            reason, lost_to = "older notifications were deleted by retention", earliest
        if reason:
            log.warning("stream of %s at partition %d offset %d: %s", app, p, start, reason)
            gap = {"app": app, "partition": p, "from": sent.get(p, -1) + 1, "to": lost_to,
                   "reason": reason}  # fmt: skip
            yield {"event": "gap", "data": json.dumps(gap)}
            start = max(start, earliest)
            sent[p] = skip[p] = start - 1
        async for off, n in bus.replay(app, p, start, end):
            sent[p] = skip[p] = off
            if wanted(n):
                yield {"event": n.type, "data": n.model_dump_json(), "id": event_id(sent)}
