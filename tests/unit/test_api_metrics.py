"""The API's /metrics (ecovisor/api/metrics.py): requests by route template and status,
commands published by type, SSE streams open. Counters are process-wide: each test
compares before and after."""

from __future__ import annotations

import asyncio

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from ecovisor.api.app import create_app, openapi_document
from ecovisor.api.metrics import REGISTRY, SSE_OPEN, MetricsMiddleware
from ecovisor.contract.config_file import parse_config
from tests.fakes.api import InMemoryBus, InMemoryStateSource

SITE = """
site:
  id: s1
  shape: {tick_s: 1.0, battery_capacity_wh: 40}
  nodes: [{id: n1, cores: 2}]
apps:
  - id: web
    token: web-token-123456
    shares: {battery_capacity_wh: 20}
    containers:
      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-1}}
"""
AUTH = {"Authorization": "Bearer web-token-123456"}


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_requests_are_counted_by_route_template_and_status_and_served_as_text() -> None:
    api = create_app(parse_config(SITE), InMemoryStateSource(), InMemoryBus())
    route = "/v1/apps/{app}/battery/charge_rate"
    ok = dict(method="PUT", route=route, status="200")
    bad = dict(method="PUT", route=route, status="401")
    before_ok, before_bad = (
        _value("ecovisor_api_requests_total", **ok),
        _value("ecovisor_api_requests_total", **bad),
    )
    before_cmd = _value("ecovisor_api_commands_published_total",
                        command_type="set_battery_charge_rate")  # fmt: skip
    before_lat = _value("ecovisor_api_request_duration_seconds_count", method="PUT", route=route)
    with TestClient(api) as tc:
        assert tc.put("/v1/apps/web/battery/charge_rate", json={"watts": 1.0},
                      headers=AUTH).status_code == 200  # fmt: skip
        assert tc.put("/v1/apps/web/battery/charge_rate", json={"watts": 1.0}).status_code == 401
        r = tc.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    names = {f.name for f in text_string_to_metric_families(r.text)}
    assert {"ecovisor_api_requests", "ecovisor_api_commands_published",
            "ecovisor_api_sse_streams_open"} <= names  # fmt: skip
    assert _value("ecovisor_api_requests_total", **ok) == before_ok + 1
    assert _value("ecovisor_api_requests_total", **bad) == before_bad + 1
    assert _value("ecovisor_api_request_duration_seconds_count", method="PUT",
                  route=route) == before_lat + 2  # fmt: skip
    # only the published one (the 401 never reached the bus)
    assert _value("ecovisor_api_commands_published_total",
                  command_type="set_battery_charge_rate") == before_cmd + 1  # fmt: skip
    # the app's name is never a label value: the route template is
    assert "/v1/apps/web/" not in r.text


def test_metrics_route_is_not_in_the_openapi_document() -> None:
    assert "/metrics" not in openapi_document()["paths"]


def test_an_sse_response_is_an_open_stream_until_it_ends() -> None:
    seen: list[float] = []

    async def sse_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        sse = [(b"content-type", b"text/event-stream; charset=utf-8")]
        await send({"type": "http.response.start", "status": 200, "headers": sse})
        seen.append(SSE_OPEN._value.get())
        await send({"type": "http.response.body", "body": b"data: x\n\n", "more_body": False})

    async def sink(_message) -> None:  # type: ignore[no-untyped-def]
        return None

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.disconnect"}

    before = SSE_OPEN._value.get()
    scope = {"type": "http", "method": "GET", "path": "/x", "headers": []}
    asyncio.run(MetricsMiddleware(sse_app)(scope, receive, sink))
    assert seen == [before + 1]
    assert SSE_OPEN._value.get() == before
    assert _value("ecovisor_api_requests_total", method="GET", route="<unmatched>",
                  status="200") >= 1  # fmt: skip
