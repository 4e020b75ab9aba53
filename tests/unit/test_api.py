"""REST API: tenant isolation on every route (taken from the app itself), every Table 1
and Table 2 function, command publishing and lifecycle waiting. Uses the in-memory test
doubles of the ledger state views and of the Kafka command bus."""

import functools
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from ecovisor.api.app import create_app, openapi_document
from ecovisor.api.state_source import Counters, IntervalCounter
from ecovisor.contract.commands import (
    Command,
    ScaleApp,
    ScaleContainer,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
    SuspendContainer,
    parse_command,
    verify_command,
)
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import ContainerTickData, Notification, TickData
from streams.commands import decide
from tests.fakes.api import (
    InMemoryBus,
    InMemoryStateSource,
    accept_and_apply,
    app_routes,
    route_names,
)

ROOT = Path(__file__).resolve().parents[2]
SITE = """
site:
  id: s1
  shape: {tick_s: 1.0, solar_nameplate_w: 36.0, battery_capacity_wh: 40}
  nodes: [{id: n1, cores: 2}]
apps:
  - id: web
    token: web-token-123456
    shares: {solar_fraction: 0.5, battery_capacity_wh: 20}
    containers:
      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-1}}
      - {id: web-2, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-2}}
    templates:
      - {id: web-worker, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-worker}}
  - id: batch
    token: batch-token-654321
    containers:
      - {id: batch-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/batch-1}}
    templates:
      - {id: batch-worker, node: n1, backend: {type: cgroup_v1, cgroup: eco/batch-worker}}
"""
WEB, BATCH = "web-token-123456", "batch-token-654321"
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def tick_data(**kw: object) -> TickData:
    base: dict[str, object] = dict(
        tick_s=1.0,
        next_solar_w=6.5,
        solar_w=6.0,
        grid_w=1.25,
        grid_carbon_g_per_kwh=312.0,
        battery_charge_level_wh=11.5,
        battery_discharge_rate_w=0.75,
        battery_charge_rate_setting_w=0.0,
        battery_max_discharge_setting_w=20.0,
        app_power_w=7.75,
        unserved_w=0.0,
        carbon_g=0.0001,
        containers={
            "web-1": ContainerTickData(power_w=5.0, powercap_w=6.0),
            "web-2": ContainerTickData(power_w=2.75),
            "web-worker-1": ContainerTickData(power_w=0.0),
        },
    )
    base.update(kw)
    return TickData.model_validate(base)


@pytest.fixture()
def env():
    cfg = parse_config(SITE)
    state = InMemoryStateSource()
    state.set_tick("web", 41, T0, tick_data(), latency_ms=42.0)
    state.set_tick("batch", 41, T0, tick_data(grid_w=99.0, containers={}))
    state.counter_values["web"] = Counters(
        app="web",
        t1=T0,
        t2=T0 + timedelta(seconds=10),
        energy_j=77.5,
        carbon_g=0.0061,
        containers={
            "web-1": IntervalCounter(energy_j=50.0, carbon_g=0.004),
            "web-2": IntervalCounter(energy_j=27.5, carbon_g=0.0021),
        },
    )
    bus = InMemoryBus()
    api = create_app(cfg, state, bus)
    with TestClient(api) as tc:
        yield api, tc, bus, state


def h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


INTERVAL = {"t1": T0.isoformat(), "t2": (T0 + timedelta(seconds=10)).isoformat()}
BODIES = {
    "powercap": {"watts": 3.0},
    "charge_rate": {"watts": 1.0},
    "max_discharge": {"watts": 1.0},
    "carbon_rate": {"mg_per_s": 20.0},
    "carbon_budget": {"grams": 1.0},
    "cpus": {"cpus": 2.0},
    "replicas": {"replicas": 2},
}


def fill(path: str, app: str, container: str, template: str) -> str:
    return path.format(app=app, container=container, template=template)


def call(tc, method: str, path: str, headers: dict[str, str]):
    params = dict(INTERVAL)
    params.update({"from": INTERVAL["t1"], "to": INTERVAL["t2"]})
    last = path.rsplit("/", 1)[-1]
    body = BODIES.get(last) if method in ("PUT", "POST") else None
    return tc.request(method, path, headers=headers, params=params, json=body)


ROUTES = app_routes(create_app(parse_config(SITE), InMemoryStateSource(), InMemoryBus()))


def test_route_list_covers_the_paper_api() -> None:
    names = route_names(create_app(parse_config(SITE), InMemoryStateSource(), InMemoryBus()))
    paper = {
        # Table 1
        "get_solar_power",
        "get_grid_power",
        "get_grid_carbon",
        "get_battery_discharge_rate",
        "get_battery_charge_level",
        "get_container_powercap",
        "get_container_power",
        "set_container_powercap",
        "set_battery_charge_rate",
        "set_battery_max_discharge",
        # Table 2
        "get_container_energy",
        "get_container_carbon",
        "get_app_power",
        "get_app_energy",
        "get_app_carbon",
        "set_carbon_rate",
        "set_carbon_budget",
        # management and notifications
        "suspend_container",
        "resume_container",
        "scale_container",
        "scale_app",
        "remove_container_powercap",
        "notifications",
    }
    assert paper <= names, paper - names
    assert len(ROUTES) >= len(paper)


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_route_refuses_missing_invalid_and_foreign_tokens(env, method, path) -> None:
    _, tc, bus, _ = env
    own = fill(path, "web", "web-1", "web-worker")
    r = call(tc, method, own, {})
    assert r.status_code == 401 and r.json()["detail"] == "missing bearer token"
    r = call(tc, method, own, h("not-a-token-at-all"))
    assert r.status_code == 401 and r.json()["detail"] == "invalid token"
    # batch's token addressing web
    r = call(tc, method, own, h(BATCH))
    assert r.status_code == 403 and "belongs to app 'batch'" in r.json()["detail"]
    # web's token addressing batch, with batch's own container/template names
    other = fill(path, "batch", "batch-1", "batch-worker")
    r = call(tc, method, other, h(WEB))
    assert r.status_code == 403
    # an app that does not exist is just another app
    r = call(tc, method, fill(path, "nobody", "x", "y"), h(WEB))
    assert r.status_code == 403
    assert bus.published == []


CONTAINER_ROUTES = [(m, p) for m, p in ROUTES if "{container}" in p]
TEMPLATE_ROUTES = [(m, p) for m, p in ROUTES if "{template}" in p]


@pytest.mark.parametrize(("method", "path"), CONTAINER_ROUTES)
def test_another_apps_container_is_refused(env, method, path) -> None:
    _, tc, bus, _ = env
    r = call(tc, method, fill(path, "web", "batch-1", ""), h(WEB))
    assert r.status_code == 403
    assert r.json()["detail"] == "container 'batch-1' is not a container of 'web'"
    # a template name of another app is no way in either
    r = call(tc, method, fill(path, "web", "batch-worker", ""), h(WEB))
    assert r.status_code == 403
    r = call(tc, method, fill(path, "web", "nope-9", ""), h(WEB))
    assert r.status_code == 404 and "has no container 'nope-9'" in r.json()["detail"]
    assert bus.published == []


@pytest.mark.parametrize(("method", "path"), TEMPLATE_ROUTES)
def test_another_apps_template_is_refused(env, method, path) -> None:
    _, tc, bus, _ = env
    r = call(tc, method, fill(path, "web", "", "batch-worker"), h(WEB))
    assert r.status_code == 403 and "not a template of 'web'" in r.json()["detail"]
    r = call(tc, method, fill(path, "web", "", "batch-1"), h(WEB))
    assert r.status_code == 403
    r = call(tc, method, fill(path, "web", "", "nope"), h(WEB))
    assert r.status_code == 404
    assert bus.published == []


def test_unknown_route_with_token_is_404_not_leaking(env) -> None:
    _, tc, _, _ = env
    assert tc.get("/v1/apps/web/nothing", headers=h(WEB)).status_code == 404


@pytest.mark.parametrize(
    ("suffix", "value", "unit"),
    [
        ("/solar_power", 6.0, "W"),
        ("/grid_power", 1.25, "W"),
        ("/grid_carbon", 312.0, "gCO2eq/kWh"),
        ("/battery/discharge_rate", 0.75, "W"),
        ("/battery/charge_level", 11.5, "Wh"),
        ("/power", 7.75, "W"),
        ("/containers/web-1/powercap", 6.0, "W"),
        ("/containers/web-2/powercap", None, "W"),
        ("/containers/web-1/power", 5.0, "W"),
        ("/containers/web-2/power", 2.75, "W"),
    ],
)
def test_table1_getters_answer_from_live_state(env, suffix, value, unit) -> None:
    _, tc, _, _ = env
    r = tc.get("/v1/apps/web" + suffix, headers=h(WEB))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["value"] == value and body["unit"] == unit
    assert body["tick"] == 41 and body["app"] == "web"


def test_getters_never_show_another_apps_state(env) -> None:
    _, tc, _, _ = env
    # batch's grid power is 99 W; web's token only ever sees web's 1.25 W
    assert tc.get("/v1/apps/web/grid_power", headers=h(WEB)).json()["value"] == 1.25
    assert tc.get("/v1/apps/batch/grid_power", headers=h(BATCH)).json()["value"] == 99.0


@pytest.mark.parametrize(
    ("suffix", "value", "unit"),
    [
        ("/energy", 77.5, "J"),
        ("/carbon", 0.0061, "g"),
        ("/containers/web-1/energy", 50.0, "J"),
        ("/containers/web-2/carbon", 0.0021, "g"),
    ],
)
def test_table2_interval_queries(env, suffix, value, unit) -> None:
    _, tc, _, state = env
    r = tc.get("/v1/apps/web" + suffix, headers=h(WEB), params=INTERVAL)
    assert r.status_code == 200, r.text
    assert r.json()["value"] == pytest.approx(value) and r.json()["unit"] == unit
    assert state.counter_queries[-1] == ("web", T0, T0 + timedelta(seconds=10))


def test_interval_must_be_ordered_and_zoned(env) -> None:
    _, tc, _, _ = env
    r = tc.get(
        "/v1/apps/web/energy", headers=h(WEB), params={"t1": INTERVAL["t2"], "t2": INTERVAL["t1"]}
    )
    # the documented 422 shape (HTTPValidationError), like every other 422
    assert r.status_code == 422 and r.json()["detail"] == [
        {"loc": ["query", "t2"], "msg": "t2 must be after t1", "type": "value_error"}
    ]
    r = tc.get(
        "/v1/apps/web/energy",
        headers=h(WEB),
        params={"t1": "2024-06-01T12:00:00", "t2": "2024-06-01T12:00:10"},
    )
    assert r.status_code == 422


def test_state_unavailable_is_503_with_reason(env) -> None:
    _, tc, _, state = env
    state.states.clear()
    state.counter_values.clear()
    r = tc.get("/v1/apps/web/solar_power", headers=h(WEB))
    assert r.status_code == 503 and "no state for 'web'" in r.json()["detail"]
    r = tc.get("/v1/apps/web/carbon", headers=h(WEB), params=INTERVAL)
    assert r.status_code == 503


def test_replica_of_a_template_is_addressable_once_live(env) -> None:
    _, tc, bus, _ = env
    r = tc.get("/v1/apps/web/containers/web-worker-1/power", headers=h(WEB))
    assert r.status_code == 200 and r.json()["value"] == 0.0
    r = tc.post("/v1/apps/web/containers/web-worker-1/suspend", headers=h(WEB))
    assert r.status_code == 200 and bus.published[-1].container == "web-worker-1"


SETTERS: list[tuple[str, str, dict | None, type[Command], dict]] = [
    ("PUT", "/containers/web-1/powercap", {"watts": 3.5}, SetContainerPowercap, {"watts": 3.5}),
    ("PUT", "/containers/web-1/powercap", {"watts": None}, SetContainerPowercap, {"watts": None}),
    ("DELETE", "/containers/web-2/powercap", None, SetContainerPowercap, {"watts": None}),
    ("PUT", "/battery/charge_rate", {"watts": 2.0}, SetBatteryChargeRate, {"watts": 2.0}),
    ("PUT", "/battery/max_discharge", {"watts": 4.0}, SetBatteryMaxDischarge, {"watts": 4.0}),
    (
        "PUT",
        "/containers/web-2/carbon_rate",
        {"mg_per_s": 20.0, "window_s": 30},
        SetCarbonRate,
        {"mg_per_s": 20.0, "window_s": 30.0, "container": "web-2"},
    ),
    (
        "PUT",
        "/carbon_budget",
        {"grams": 3.456, "period_s": 7200},
        SetCarbonBudget,
        {"grams": 3.456, "period_s": 7200.0},
    ),
    ("POST", "/containers/web-1/suspend", None, SuspendContainer, {"container": "web-1"}),
    ("PUT", "/containers/web-1/cpus", {"cpus": 1.5}, ScaleContainer, {"cpus": 1.5}),
    ("PUT", "/templates/web-worker/replicas", {"replicas": 3}, ScaleApp, {"replicas": 3}),
]


@pytest.mark.parametrize(("method", "suffix", "body", "cls", "fields"), SETTERS)
def test_setters_publish_the_command_signed_by_the_app(
    env, method, suffix, body, cls, fields
) -> None:
    _, tc, bus, _ = env
    r = tc.request(method, "/v1/apps/web" + suffix, headers=h(WEB), json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "published" and not out["timed_out"]
    [cmd] = bus.published
    assert isinstance(cmd, cls)
    assert cmd.command_id == out["command_id"] and cmd.app == "web" and cmd.site == "s1"
    for k, v in fields.items():
        assert getattr(cmd, k) == v
    # signed with web's token, which is nowhere in what goes on the bus
    wire = cmd.to_json()
    assert verify_command(parse_command(wire), WEB) and not verify_command(cmd, BATCH)
    assert WEB.encode() not in wire and b"token" not in wire
    # and the ledger accepts it as web's (the API's half and the ledger's agree)
    d = decide(parse_config(SITE), wire)
    assert d.accepted and d.notify == ("web",), d.reason


def test_setter_validation_errors_are_422(env) -> None:
    _, tc, bus, _ = env
    r = tc.put("/v1/apps/web/battery/charge_rate", headers=h(WEB), json={"watts": -1})
    assert r.status_code == 422
    r = tc.put("/v1/apps/web/containers/web-1/cpus", headers=h(WEB), json={"cpus": 0})
    assert r.status_code == 422
    assert bus.published == []


def test_wait_returns_the_lifecycle_outcome(env) -> None:
    _, tc, bus, _ = env
    bus.responder = accept_and_apply
    r = tc.put(
        "/v1/apps/web/containers/web-1/powercap",
        headers=h(WEB),
        params={"wait": "true", "timeout": 2},
        json={"watts": 2.5},
    )
    out = r.json()
    assert out["status"] == "applied" and not out["timed_out"]
    assert out["data"]["watts"] == 2.5 and out["command_id"] == bus.published[0].command_id


def test_wait_reports_rejection_with_reason_and_ignores_other_commands(env) -> None:
    _, tc, bus, _ = env

    def reject(cmd: Command) -> list[Notification]:
        base = dict(site="s1", time=T0, app=cmd.app)
        return [
            # noise: another command's outcome on the same topic
            Notification(**base, type="command_applied", command_id="other-id"),
            Notification(
                **base,
                type="command_rejected",
                command_id=cmd.command_id,
                reason="cap 0.1 W is below the idle floor 0.9 W",
            ),
        ]

    bus.responder = reject
    r = tc.put(
        "/v1/apps/web/containers/web-1/powercap",
        headers=h(WEB),
        params={"wait": "true", "timeout": 2},
        json={"watts": 0.1},
    )
    out = r.json()
    assert out["status"] == "rejected" and "idle floor" in out["reason"]


def test_wait_is_bounded(env) -> None:
    _, tc, _, _ = env
    t = datetime.now(UTC)
    r = tc.put(
        "/v1/apps/web/battery/charge_rate",
        headers=h(WEB),
        params={"wait": "true", "timeout": 0.2},
        json={"watts": 1.0},
    )
    took = (datetime.now(UTC) - t).total_seconds()
    assert r.json()["status"] == "published" and r.json()["timed_out"] is True
    assert 0.15 < took < 3
    r = tc.put(
        "/v1/apps/web/battery/charge_rate",
        headers=h(WEB),
        params={"wait": "true", "timeout": 999},
        json={"watts": 1.0},
    )
    assert r.status_code == 422


def test_whoami_and_app_info(env) -> None:
    _, tc, _, _ = env
    info = tc.get("/v1/whoami", headers=h(WEB)).json()
    assert info["app"] == "web" and info["containers"] == ["web-1", "web-2"]
    assert info["templates"] == ["web-worker"]
    # 20 Wh share minus one tick of its solar (0.5 * 36 W * 1 s = 0.005 Wh); reserve 30 %
    assert info["battery_full_wh"] == pytest.approx(20 - 0.005)
    assert info["battery_empty_wh"] == pytest.approx(6.0)
    assert tc.get("/v1/apps/web", headers=h(WEB)).json() == info
    assert tc.get("/v1/whoami").status_code == 401
    st = tc.get("/v1/apps/web/state", headers=h(WEB)).json()
    assert st["app_metrics"] == {"latency_ms": 42.0} and st["data"]["solar_w"] == 6.0


def test_health_needs_no_token(env) -> None:
    _, tc, _, _ = env
    assert tc.get("/healthz").json() == {"status": "ok"}


def test_openapi_is_served_and_docs_copy_is_up_to_date(env) -> None:
    _, tc, _, _ = env
    served = tc.get("/openapi.json").json()
    assert "/v1/apps/{app}/containers/{container}/powercap" in served["paths"]
    assert served["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    on_disk = json.loads((ROOT / "docs" / "openapi.json").read_text())
    assert on_disk == json.loads(json.dumps(openapi_document())), (
        "docs/openapi.json is stale: python -m ecovisor.api --dump-openapi docs/openapi.json"
    )


def test_openapi_documents_units() -> None:
    doc = json.dumps(openapi_document())
    for unit in ("gCO2eq/kWh", "Wh", "mg/s"):
        assert re.search(re.escape(unit), doc)


@functools.cache
def _document() -> dict:
    """The OpenAPI document, made once for every route's check below: it is independent
    of the site, and making it (a whole app) took ~0.5 s, twice per route."""
    return openapi_document()


def _documented(method: str, path: str) -> dict:
    return _document()["paths"][path][method.lower()]["responses"]


@pytest.mark.parametrize(("method", "path"), ROUTES, ids=[f"{m} {p}" for m, p in ROUTES])
def test_every_refusal_of_a_route_is_in_the_document(method, path) -> None:
    """Found by reliability/fuzz_rest.py: the document listed only 200 and 422, so every
    401, 403, 404 and 503 above was an undocumented status code for a client."""
    responses = _documented(method, path)
    names = "{container}" in path or "{template}" in path or path.endswith("/commands")
    for code in ("401", "403", "404") if names else ("401", "403"):
        schema = responses[code]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorDetail"}, (code, schema)
    if not path.endswith("/notifications") and path != "/v1/apps/{app}":
        assert "503" in responses  # the ledger's state or the command bus
    # every 422 names its body (the stream's had a description only)
    schema = responses["422"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/HTTPValidationError"}
    assert "401" in _documented("GET", "/v1/whoami")


def test_a_body_that_is_not_utf8_is_the_one_422(env) -> None:
    """Found by reliability/fuzz_rest.py: FastAPI answered 400 "There was an error
    parsing the body", a status the document does not list, in a shape of its own."""
    _, tc, bus, _ = env
    for body in (b"\xff", b'{"watts": "\xc3"}'):
        r = tc.put(
            "/v1/apps/web/battery/charge_rate",
            content=body,
            headers={**h(WEB), "Content-Type": "application/json"},
        )
        assert r.status_code == 422, r.text
        [item] = r.json()["detail"]
        assert item["loc"] == ["body"] and item["type"] == "json_invalid"
    assert bus.published == []
    # the other refusals are answered as before, headers included
    r = tc.get("/v1/apps/web/solar_power")
    assert r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    assert r.json() == {"detail": "missing bearer token"}


def test_the_generic_command_body_documents_its_type_as_required(env) -> None:
    """Found by reliability/fuzz_rest.py (schemathesis' positive_data_acceptance):
    ``type`` had a default in the document, so ``{"container": "web-1", "watts": 1}``
    was a valid body there, but the API (a union discriminated by ``type``) refuses it."""
    body = openapi_document()["paths"]["/v1/apps/{app}/commands"]["post"]["requestBody"]
    variants = body["content"]["application/json"]["schema"]["oneOf"]
    schemas = openapi_document()["components"]["schemas"]
    for ref in variants:
        variant = schemas[ref["$ref"].rsplit("/", 1)[-1]]
        assert "type" in variant["required"] and "default" not in variant["properties"]["type"]
    _, tc, bus, _ = env
    r = tc.post("/v1/apps/web/commands", headers=h(WEB), json={"container": "web-1", "watts": 1})
    assert r.status_code == 422 and bus.published == []


def test_http_state_source_reads_the_ledger_views() -> None:
    import asyncio

    import httpx

    from ecovisor.api.state_source import HttpStateSource, StateUnavailable

    view = {
        "app": "web",
        "tick": 9,
        "time": T0.isoformat(),
        "tick_data": tick_data().model_dump(mode="json"),
        "app_metrics": {"latency_ms": 55.0, "extra": {"stragglers": 2.0}},
        "settings": {},
    }

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/ecovisor/state/web":
            return httpx.Response(200, json=view)
        if req.url.path == "/ecovisor/counters/web":
            assert req.url.params["t1"] == T0.isoformat()
            return httpx.Response(
                200,
                json={
                    "t1": T0.isoformat(),
                    "t2": T0.isoformat(),
                    "energy_j": 1.5,
                    "carbon_g": 0.25,
                    "containers": {"web-1": {"energy_j": 1.5, "carbon_g": 0.25}},
                    "ticks": [1, 1],
                },
            )
        return httpx.Response(404, json={"error": "no state for app 'x'"})

    async def go() -> None:
        src = HttpStateSource("http://ledger")
        src._http = httpx.AsyncClient(
            base_url="http://ledger", transport=httpx.MockTransport(handler)
        )
        st = await src.state("web")
        assert st.tick == 9 and st.data is not None and st.data.solar_w == 6.0
        assert st.app_metrics == {"latency_ms": 55.0, "stragglers": 2.0}
        c = await src.counters("web", T0, T0 + timedelta(seconds=1))
        assert c.containers["web-1"].carbon_g == 0.25
        with pytest.raises(StateUnavailable, match="no state for app 'x'"):
            await src.state("x")
        await src.aclose()

    asyncio.run(go())


@pytest.mark.parametrize("path", ["/healthz", "/v1/whoami"])
def test_an_oversized_body_on_a_route_without_one_is_a_documented_422(env, path) -> None:
    """Found by hand beside reliability/fuzz_rest.py: the body limit answers 422 on every
    route, but /healthz and /v1/whoami did not document a 422."""
    _, tc, _, _ = env
    r = tc.request("GET", path, content=b"x" * 70_000, headers=h(WEB))
    assert r.status_code == 422, r.text
    schema = _documented("GET", path)["422"]["content"]["application/json"]["schema"]
    assert schema == {"$ref": "#/components/schemas/HTTPValidationError"}


def test_an_app_over_its_command_rate_gets_429_and_another_app_does_not() -> None:
    """An accepted command costs the ledger a snapshot of the site: one app's flood must
    not stall every site of its worker (found by a review). The API keeps a bucket per
    app: site.limits.command_burst at once, max_commands_per_s after."""
    limits = "  limits: {max_commands_per_s: 0.5, command_burst: 2}\n"
    site = SITE.replace("  id: s1\n", "  id: s1\n" + limits)
    cfg = parse_config(site)
    assert cfg.site.limits.command_burst == 2
    bus = InMemoryBus()
    with TestClient(create_app(cfg, InMemoryStateSource(), bus)) as tc:
        put = functools.partial(tc.put, "/v1/apps/web/battery/charge_rate", json={"watts": 1.0})
        assert [put(headers=h(WEB)).status_code for _ in range(2)] == [200, 200]
        r = put(headers=h(WEB))
        assert r.status_code == 429 and "max_commands_per_s" in r.json()["detail"]
        assert 1 <= int(r.headers["Retry-After"]) <= 2
        other = tc.put("/v1/apps/batch/battery/charge_rate", json={"watts": 1.0},
                       headers=h(BATCH))  # fmt: skip
        assert other.status_code == 200
    assert [c.app for c in bus.published] == ["web", "web", "batch"]  # the 429 published nothing
