"""Bounds at the edge (hardening): every number of a telemetry message, a command and an
API body is finite, of its own JSON type (no coercion) and within a bound; a command's
values are also within the site's limits; the largest accepted values cannot overflow
the ledger. Out of bounds is a 422 (with the documented error shape) or a rejection with
the reason, never a crash."""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pydantic
import pytest

from ecovisor.api.app import create_app
from ecovisor.contract import commands, operator_messages, topics
from ecovisor.contract.commands import parse_command
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.operator_messages import DeadLetter
from ecovisor.contract.telemetry import (
    CarbonTelemetry,
    ContainerTelemetry,
    SolarTelemetry,
    parse_telemetry,
)
from ecovisor.core import units
from ecovisor.core.carbon_limits import budget_ug
from ecovisor.core.state import CarbonBudget
from ecovisor.core.tick_clock import to_us
from streams.commands import decide
from streams.ledger_worker import SiteLedger
from tests.fakes.api import InMemoryBus, InMemoryStateSource
from tests.fakes.commands import signed_json

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-site.yaml"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW_US = to_us(T0.timestamp())


@pytest.fixture(scope="module")
def cfg() -> EcovisorConfig:
    return parse_config(DEMO.read_text())


def tel(**over: Any) -> bytes:
    base: dict[str, Any] = {"kind": "solar", "site": "demo", "time": "2024-01-01T00:00:00Z",
                            "source": "pv", "seq": 1, "power_w": 1.5, "energy_j": 10}  # fmt: skip
    return json.dumps({**base, **over}).encode()


def cmd(cfg: EcovisorConfig, typ: str, app: str = "web", **fields: Any) -> bytes:
    """The command as its app sends it (signed with its token)."""
    body = {"type": typ, "site": "demo", "time": T0.isoformat(), "app": app,
            "command_id": f"c-{typ}", **fields}  # fmt: skip
    return signed_json(cfg.app(app).token, body)


def raw_json(obj: dict[str, Any], **literal: str) -> bytes:
    """JSON with some values written literally (Infinity, 1e400, huge ints)."""
    text = json.dumps({**obj, **{k: f"@{k}@" for k in literal}})
    for k, v in literal.items():
        text = text.replace(f'"@{k}@"', v)
    return text.encode()


# --- the contract: static ceilings, finiteness --------------------------------------------

TELEMETRY_OUT_OF_BOUNDS = {
    "energy counter 1e308 (x1000 to mJ overflows)": ({"energy_j": 1e308}, "energy_j"),
    "power 1e13 W": ({"power_w": 1e13}, "power_w"),
    "seq beyond int64": ({"seq": 2**70}, "seq"),
    "intensity 1e300": ({"kind": "carbon", "intensity_g_per_kwh": 1e300, "power_w": None,
                         "energy_j": None}, "intensity_g_per_kwh"),  # fmt: skip
    "a forecast of 100k points": (
        {"kind": "carbon", "intensity_g_per_kwh": 1, "power_w": None, "energy_j": None,
         "forecast": [["2024-01-01T00:00:00Z", 1]] * 100_000},  # fmt: skip
        "forecast",
    ),
}


@pytest.mark.parametrize("name", sorted(TELEMETRY_OUT_OF_BOUNDS))
def test_telemetry_numbers_have_a_static_ceiling(name: str) -> None:
    over, field = TELEMETRY_OUT_OF_BOUNDS[name]
    body = json.loads(tel(**over))
    body = {k: v for k, v in body.items() if v is not None}
    with pytest.raises(pydantic.ValidationError) as e:
        parse_telemetry(json.dumps(body))
    assert field in operator_messages.describe_validation_error(e.value)


@pytest.mark.parametrize("literal", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_telemetry_refuses_non_finite_numbers(literal: str) -> None:
    body = json.loads(tel())
    with pytest.raises(pydantic.ValidationError) as e:
        parse_telemetry(raw_json(body, energy_j=literal))
    assert "energy_j" in operator_messages.describe_validation_error(e.value)


def test_counters_up_to_the_ceiling_are_accepted() -> None:
    m = parse_telemetry(tel(energy_j=units.MAX_COUNTER, power_w=units.MAX_MAGNITUDE))
    assert isinstance(m, SolarTelemetry) and m.energy_j == units.MAX_COUNTER


@pytest.mark.parametrize("kind", ["solar", "carbon"])
@pytest.mark.parametrize(
    ("at", "ok"),
    [("0001-01-01T00:00:00+14:00", False), ("1969-12-31T23:59:59Z", False),
     ("9999-12-31T23:00:00-12:00", False), ("1970-01-01T00:00:00Z", True),
     ("9998-01-01T00:00:00Z", True)],
)  # fmt: skip
def test_forecast_times_are_within_the_ledgers_range(kind: str, at: str, ok: bool) -> None:
    """A forecast point of year 1 at +14:00 was accepted, and every app's state view then
    failed converting it to UTC (found by a review)."""
    body = {**json.loads(tel()), "kind": kind, "forecast": [[at, 1.0]]}
    if kind == "carbon":
        del body["power_w"], body["energy_j"]
        body["intensity_g_per_kwh"] = 1.0
    raw = json.dumps(body).encode()
    if ok:
        m = parse_telemetry(raw)
        assert isinstance(m, CarbonTelemetry | SolarTelemetry) and len(m.forecast) == 1
        return
    with pytest.raises(pydantic.ValidationError) as e:
        parse_telemetry(raw)
    assert "forecast" in operator_messages.describe_validation_error(e.value)


COMMAND_OUT_OF_BOUNDS = [
    ("set_carbon_budget", {"grams": 1e305}, "grams"),
    ("set_carbon_budget", {"grams": 1, "period_s": 1e305}, "period_s"),
    ("set_carbon_rate", {"container": "web-1", "mg_per_s": 1e305}, "mg_per_s"),
    ("set_container_powercap", {"container": "web-1", "watts": 1e13}, "watts"),
    ("set_battery_charge_rate", {"watts": 1e300}, "watts"),
    ("set_battery_max_discharge", {"watts": 1e300}, "watts"),
]


@pytest.mark.parametrize(("typ", "fields", "field"), COMMAND_OUT_OF_BOUNDS)
def test_command_numbers_have_a_static_ceiling(cfg, typ: str, fields: dict, field: str) -> None:
    """Even a command published straight on Kafka (no API in front) cannot carry a number
    the ledger's integer arithmetic overflows on."""
    with pytest.raises(pydantic.ValidationError) as e:
        parse_command(cmd(cfg, typ, **fields))
    assert field in operator_messages.describe_validation_error(e.value)


@pytest.mark.parametrize("literal", ["Infinity", "NaN", "1e400"])
def test_command_period_must_be_finite(cfg, literal: str) -> None:
    body = json.loads(cmd(cfg, "set_carbon_budget", grams=1))
    with pytest.raises(pydantic.ValidationError):
        parse_command(raw_json(body, period_s=literal))


# --- strict types: no coercion -------------------------------------------------------------

TELEMETRY_WRONG_TYPES = {
    "true for a float": ({"power_w": True}, "power_w"),
    "string '5' for a float": ({"energy_j": "5"}, "energy_j"),
    "float for the int seq": ({"seq": 1.0}, "seq"),
    "string for the int seq": ({"seq": "1"}, "seq"),
    "int for a string source": ({"source": 7}, "source"),
    "int for a bool": ({"kind": "carbon", "intensity_g_per_kwh": 1, "stale": 1}, "stale"),
    "string for a bool": ({"kind": "carbon", "intensity_g_per_kwh": 1, "stale": "true"},
                          "stale"),  # fmt: skip
}


@pytest.mark.parametrize("name", sorted(TELEMETRY_WRONG_TYPES))
def test_telemetry_of_the_wrong_json_type_is_refused(name: str) -> None:
    over, field = TELEMETRY_WRONG_TYPES[name]
    body = json.loads(tel(**over))
    if body["kind"] == "carbon":
        body.pop("power_w"), body.pop("energy_j")
    with pytest.raises(pydantic.ValidationError) as e:
        parse_telemetry(json.dumps(body))
    assert field in operator_messages.describe_validation_error(e.value)


def test_json_ints_for_floats_and_iso_times_stay_accepted() -> None:
    m = parse_telemetry(tel(power_w=3, energy_j=0))
    assert isinstance(m, SolarTelemetry) and m.power_w == 3.0 and isinstance(m.power_w, float)
    assert m.time == T0
    c = parse_telemetry(
        tel(kind="carbon", intensity_g_per_kwh=200, power_w=None, energy_j=None,
            forecast=[["2024-01-01T01:00:00+01:00", 180]])  # fmt: skip
        .replace(b'"power_w": null, ', b"").replace(b'"energy_j": null, ', b"")
    )
    assert isinstance(c, CarbonTelemetry) and c.forecast == [(T0, 180.0)]
    # Python-side construction still parses an ISO time (collectors, tests)
    assert CarbonTelemetry(site="s", time="2024-01-01T00:00:00Z", source="c", seq=0,  # type: ignore[arg-type]
                           intensity_g_per_kwh=1).time == T0  # fmt: skip


@pytest.mark.parametrize(("value", "ok"), [("1", True), ("1.5", True), ("true", False),
                                           ('"5"', False), ("null", False)])  # fmt: skip
def test_command_numbers_are_not_coerced(cfg, value: str, ok: bool) -> None:
    body = json.loads(cmd(cfg, "set_battery_charge_rate", watts=0))
    raw = raw_json(body, watts=value)
    if ok:
        assert parse_command(raw).watts == float(value)  # type: ignore[union-attr]
    else:
        with pytest.raises(pydantic.ValidationError):
            parse_command(raw)
        d = decide(cfg, raw)  # unparsed, it is nobody's: dead-lettered with the reason
        assert not d.accepted and d.notify == () and "watts" in (d.reason or "")


# --- the ledger's validation applies the site's limits --------------------------------------


@pytest.mark.parametrize(
    ("typ", "fields", "needle"),
    [
        ("set_carbon_budget", {"grams": 2e6}, "max_carbon_budget_g"),
        ("set_carbon_rate", {"container": "web-1", "mg_per_s": 2e6}, "max_carbon_rate_mg_per_s"),
        # microserver preset: 5 W at full load; no container can draw more than its node
        ("set_container_powercap", {"container": "web-1", "watts": 5.5}, "peak"),
        ("scale_container", {"container": "web-1", "cpus": 3}, "cores"),
        ("set_battery_charge_rate", {"watts": 6}, "limit 5 W"),
        ("set_battery_max_discharge", {"watts": 21}, "limit 20 W"),
    ],
)
def test_validation_applies_site_limits_with_a_one_line_reason(
    cfg, typ: str, fields: dict, needle: str
) -> None:
    d = decide(cfg, cmd(cfg, typ, **fields))
    assert not d.accepted and d.notify == ("web",)
    assert needle in (d.reason or "") and "\n" not in (d.reason or ""), d.reason


def test_values_at_the_site_limits_are_accepted(cfg) -> None:
    lim = cfg.site.limits
    for typ, fields in [
        ("set_carbon_budget", {"grams": lim.max_carbon_budget_g}),
        ("set_carbon_rate", {"container": "web-1", "mg_per_s": lim.max_carbon_rate_mg_per_s}),
        ("set_container_powercap", {"container": "web-1", "watts": 5.0}),
        ("scale_container", {"container": "web-1", "cpus": 2}),
    ]:
        d = decide(cfg, cmd(cfg, typ, **fields))
        assert d.accepted, (typ, d.reason)


def raised_limits() -> EcovisorConfig:
    """The demo site with its carbon limits at the contract's static ceiling."""
    limits = "  limits: {max_carbon_budget_g: 1.0e12, max_carbon_rate_mg_per_s: 1.0e12}\n"
    return parse_config(DEMO.read_text().replace("  grace_s: 0.5\n", "  grace_s: 0.5\n" + limits))


def test_limits_can_be_raised_up_to_the_static_ceiling() -> None:
    big = raised_limits()
    assert big.site.limits.max_carbon_budget_g == units.MAX_MAGNITUDE
    d = decide(big, cmd(big, "set_carbon_budget", grams=1e12))
    assert d.accepted, d.reason


# --- C2: the largest accepted values cannot stop the ledger ---------------------------------


def _drive(led: SiteLedger, ticks: int, energy: float = 1.0) -> list:
    outs: list = []
    for s in range(ticks):
        t = T0 + timedelta(seconds=s)
        led.clock.offer(CarbonTelemetry(site="demo", time=t, source="c", seq=s,
                                        intensity_g_per_kwh=units.MAX_MAGNITUDE))  # fmt: skip
        joules = min(s * energy, units.MAX_COUNTER)
        led.clock.offer(ContainerTelemetry(site="demo", time=t, source="p", seq=s,
                                           app="web", container="web-1", cpu_s=s,
                                           energy_j=joules))  # fmt: skip
    o, _ = led.close(NOW_US + (ticks + 2) * 1_000_000)
    outs += o
    return outs


def test_c2_huge_budget_is_rejected_and_ticks_go_on(cfg) -> None:
    """Before: grams 1e305 was accepted, and the next tick raised OverflowError (budget in
    µg), stopping the ledger for every tenant."""
    led = SiteLedger.new(cfg)
    # out of the contract, it cannot even be built to be signed: dead-lettered
    raw = json.loads(cmd(cfg, "set_carbon_budget", grams=1.0))
    (out,) = led.command(json.dumps({**raw, "grams": 1e305}).encode(), NOW_US)
    dl = DeadLetter.model_validate_json(out.value)
    assert out.topic == topics.DEADLETTER and "grams" in dl.reason
    outs = _drive(led, 5)
    assert sum(1 for o in outs if o.topic == "ecovisor.ledger") >= 4


def test_largest_accepted_values_do_not_overflow_the_core() -> None:
    big = raised_limits()
    assert budget_ug(CarbonBudget(budget_g=units.MAX_MAGNITUDE)) == 10**18
    led = SiteLedger.new(big)
    period = commands.SetCarbonBudget.model_fields["period_s"].metadata
    max_period = next(m.le for m in period if getattr(m, "le", None) is not None)
    for raw in (
        cmd(big, "set_carbon_budget", grams=1e12, period_s=max_period),
        cmd(big, "set_carbon_rate", container="web-1", mg_per_s=1e12, window_s=86_400),
        cmd(big, "set_container_powercap", container="web-1", watts=5.0),
    ):
        outs = led.command(raw, NOW_US)
        assert any(b"command_accepted" in o.value for o in outs), outs
    # the largest counter jump and intensity the contract accepts
    outs = _drive(led, 5, energy=units.MAX_COUNTER)
    assert sum(1 for o in outs if o.topic == "ecovisor.ledger") >= 4


# --- the REST API: bounds, strict bodies, the documented 422 ---------------------------------


def _api_calls(cfg: EcovisorConfig, calls: list[tuple[str, str, Any]]) -> tuple[list, list]:
    bus = InMemoryBus()
    api = create_app(cfg, InMemoryStateSource(), bus)
    h = {"Authorization": f"Bearer {cfg.app('web').token}"}

    async def run() -> list[tuple[str, int, Any]]:
        out = []
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for method, path, body in calls:
                if isinstance(body, bytes):
                    hj = {**h, "Content-Type": "application/json"}
                    r = await c.request(method, "/v1/apps/web" + path, content=body, headers=hj)
                else:
                    r = await c.request(method, "/v1/apps/web" + path, json=body, headers=h)
                out.append((path, r.status_code, r.json()))
        return out

    return asyncio.run(run()), bus.published


API_OUT_OF_BOUNDS: list[tuple[str, str, Any, str]] = [
    # C2: the repro, then the site limit, then the generic endpoint
    ("PUT", "/carbon_budget", {"grams": 1e305}, "grams"),
    ("PUT", "/carbon_budget", {"grams": 2e6}, "max_carbon_budget_g"),
    ("PUT", "/carbon_budget", {"grams": 1, "period_s": 1e305}, "period_s"),
    ("POST", "/commands", {"type": "set_carbon_budget", "grams": 1e305}, "grams"),
    ("PUT", "/containers/web-1/carbon_rate", {"mg_per_s": 2e6}, "max_carbon_rate_mg_per_s"),
    ("PUT", "/containers/web-1/powercap", {"watts": 1e9}, "peak"),
    ("POST", "/commands", {"type": "set_container_powercap", "container": "web-1",
                           "watts": 50}, "peak"),  # fmt: skip
    ("PUT", "/containers/web-1/cpus", {"cpus": 3}, "cores"),
    ("PUT", "/battery/max_discharge", {"watts": 1e300}, "watts"),
    # strict bodies: no coercion
    ("PUT", "/battery/charge_rate", {"watts": True}, "watts"),
    ("PUT", "/battery/charge_rate", {"watts": "5"}, "watts"),
    ("PUT", "/carbon_budget", b'{"grams": Infinity}', ""),
    ("PUT", "/carbon_budget", b'{"grams": 1e400}', ""),
    # the API's own checks
    ("GET", "/energy?t1=2024-01-01T01:00:00Z&t2=2024-01-01T00:00:00Z", None, "t2"),
]


def test_api_refuses_out_of_bounds_bodies_with_422_and_publishes_nothing(cfg) -> None:
    res, published = _api_calls(cfg, [(m, p, b) for m, p, b, _ in API_OUT_OF_BOUNDS])
    assert [(p, s) for p, s, _ in res if s != 422] == []
    for (_, _, _, needle), (_, _, body) in zip(API_OUT_OF_BOUNDS, res, strict=True):
        msgs = " ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in body["detail"])
        assert needle in msgs, (needle, body)
    assert published == []


def test_api_accepts_values_at_the_bounds(cfg) -> None:
    ok = [
        ("PUT", "/carbon_budget", {"grams": 1e6, "period_s": 3600}),
        ("PUT", "/containers/web-1/carbon_rate", {"mg_per_s": 1e6}),
        ("PUT", "/containers/web-1/powercap", {"watts": 5}),
        ("PUT", "/containers/web-1/cpus", {"cpus": 2}),
        ("PUT", "/battery/charge_rate", {"watts": 5}),
    ]
    res, published = _api_calls(cfg, ok)
    assert [(p, s) for p, s, _ in res if s != 200] == []
    assert len(published) == len(ok)


def _check(schema: dict[str, Any], value: Any, doc: dict[str, Any], where: str = "$") -> None:
    """Just enough JSON Schema (the subset FastAPI's error models use)."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return _check(doc["components"]["schemas"][name], value, doc, where)
    if "anyOf" in schema:
        errors = []
        for alt in schema["anyOf"]:
            try:
                return _check(alt, value, doc, where)
            except AssertionError as e:
                errors.append(str(e))
        raise AssertionError(f"{where}: matches no alternative: {errors}")
    kinds = {"object": dict, "array": list, "string": str, "integer": int, "number": float | int}
    if "type" in schema:
        assert isinstance(value, kinds[schema["type"]]), f"{where}: {value!r} not {schema['type']}"
    for key in schema.get("required", ()):
        assert key in value, f"{where}: missing {key!r}"
    for key, sub in schema.get("properties", {}).items():
        if isinstance(value, dict) and key in value:
            _check(sub, value[key], doc, f"{where}.{key}")
    if schema.get("type") == "array" and "items" in schema:
        for i, item in enumerate(value):
            _check(schema["items"], item, doc, f"{where}[{i}]")
    return None


def test_every_422_matches_the_documented_error_model(cfg) -> None:
    """The OpenAPI document promises HTTPValidationError (``detail``: an array of
    ``{loc, msg, type}``) for a 422: the API's own checks used to answer a string."""
    doc = json.loads((ROOT / "docs" / "openapi.json").read_text())
    from tests.unit.test_bad_input import API_BAD

    calls = [(m, p, b) for m, p, b, _ in API_OUT_OF_BOUNDS] + API_BAD
    calls.append(("PUT", "/battery/charge_rate", b"\xff\xfe"))
    res, _ = _api_calls(cfg, calls)
    for (method, _, _), (path, status, body) in zip(calls, res, strict=True):
        assert status == 422, (path, status)
        op = _operation(doc, method, "/v1/apps/web" + path.split("?")[0])
        schema = op["responses"]["422"]["content"]["application/json"]["schema"]
        _check(schema, body, doc, f"{method} {path}")
        assert body["detail"] and all(e["msg"] for e in body["detail"])


def _operation(doc: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    """The documented operation serving a concrete path."""
    for template, ops in doc["paths"].items():
        pattern = re.sub(r"\\{[^}]+\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path) and method.lower() in ops:
            return ops[method.lower()]
    raise AssertionError(f"{method} {path} is not in docs/openapi.json")


# --- payload size: site.limits.max_message_bytes for commands too ------------------------


def test_oversized_command_payload_is_refused_before_parsing(cfg) -> None:
    """A valid command padded past max_message_bytes was parsed and accepted."""
    lim = cfg.site.limits.max_message_bytes
    raw = cmd(cfg, "set_battery_charge_rate", watts=1)
    padded = raw[:-1] + b" " * lim + b"}"
    d = decide(cfg, padded)
    assert not d.accepted and d.notify == ()  # dead-lettered: nothing parsed, no one told
    assert f"{len(padded)} bytes" in (d.reason or "") and "max_message_bytes" in (d.reason or "")
    at_limit = raw[:-1] + b" " * (lim - len(raw)) + b"}"
    assert len(at_limit) == lim and decide(cfg, at_limit).accepted


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_api_refuses_a_body_over_max_message_bytes_with_the_documented_422(
    cfg, chunked: bool
) -> None:
    lim = cfg.site.limits.max_message_bytes
    body = b'{"watts": 1' + b" " * (2 * lim) + b"}"
    bus = InMemoryBus()
    api = create_app(cfg, InMemoryStateSource(), bus)
    h = {"Authorization": f"Bearer {cfg.app('web').token}", "Content-Type": "application/json"}

    async def chunks() -> Any:
        for i in range(0, len(body), 4096):
            yield body[i : i + 4096]

    async def run() -> httpx.Response:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            content: Any = chunks() if chunked else body
            return await c.put("/v1/apps/web/battery/charge_rate", content=content, headers=h)

    r = asyncio.run(run())
    assert r.status_code == 422, r.text
    (item,) = r.json()["detail"]
    assert item["loc"] == ["body"] and "max_message_bytes" in item["msg"]
    assert bus.published == []
