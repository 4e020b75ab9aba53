"""The API's own Prometheus metrics, served at ``GET /metrics`` (unauthenticated: they
name routes, statuses and command types, never an app, a token or a value of an app's
energy): requests by route template and status, their latency, the SSE notification
streams open, the commands published by type. ``instrument(api)`` adds the middleware
and the route. Every metric: docs/metrics.md."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from fastapi import Request, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    generate_latest,
)

# the ASGI types (starlette's, spelt out: fastapi is the declared dependency)
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
REQUESTS = Counter(
    "ecovisor_api_requests",
    "HTTP requests answered, by method, route template and status",
    ["method", "route", "status"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "ecovisor_api_request_duration_seconds",
    "Time from a request to the end of its response, by method and route template (an "
    "SSE stream: how long it stayed open)",
    ["method", "route"],
    registry=REGISTRY,
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 600.0),
)
SSE_OPEN = Gauge(
    "ecovisor_api_sse_streams_open",
    "Server-sent event streams (notification streams) open now",
    registry=REGISTRY,
)
COMMANDS = Counter(
    "ecovisor_api_commands_published",
    "Commands the API published on ecovisor.commands, by command type",
    ["command_type"],
    registry=REGISTRY,
)
UNMATCHED = "<unmatched>"  # requests no route matched: one label value, not their paths


def command_published(command_type: str) -> None:
    COMMANDS.labels(command_type).inc()


class MetricsMiddleware:
    """Pure ASGI (it must not buffer an SSE stream): counts each HTTP request when its
    response ends, labelled with the matched route's template."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # an exception before any response
        sse = False

        async def watch(message: Message) -> None:
            nonlocal status, sse
            if message["type"] == "http.response.start":
                status = message["status"]
                for name, value in message.get("headers", ()):
                    if name.lower() == b"content-type" and value.startswith(b"text/event-stream"):
                        sse = True
                        SSE_OPEN.inc()
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if sse:
                SSE_OPEN.dec()
            route = scope.get("route")
            path = getattr(route, "path", None) or UNMATCHED
            method = scope.get("method", "")
            REQUESTS.labels(method, path, str(status)).inc()
            LATENCY.labels(method, path).observe(time.perf_counter() - start)


async def metrics_page(_: Request) -> Response:
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)


def instrument(api: Any) -> None:
    """Count ``api``'s requests and serve ``GET /metrics`` (not in the OpenAPI document)."""
    api.add_middleware(MetricsMiddleware)
    api.add_route("/metrics", metrics_page, methods=["GET"], include_in_schema=False)
