"""docs/contract.md documents every message of ecovisor.schemas, and its examples are valid."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pydantic
import pytest

from ecovisor.contract import schemas, topics

DOC = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()
ABSTRACT = {"Message", "Telemetry", "Command"}  # envelopes, documented under Conventions
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\n```json\n(.*?)\n```", re.S)


def _models() -> dict[str, type[pydantic.BaseModel]]:
    return {
        n: o
        for n, o in vars(schemas).items()
        if inspect.isclass(o)
        and issubclass(o, pydantic.BaseModel)
        and o.__module__ == schemas.__name__
    }


def _examples() -> dict[str, str]:
    return {name: body for name, body in EXAMPLE.findall(DOC)}


@pytest.mark.parametrize("name", sorted(_models()))
def test_every_model_is_documented(name: str) -> None:
    assert f"`{name}`" in DOC, f"{name} is not described in docs/contract.md"
    if name not in ABSTRACT:
        assert name in _examples(), f"{name} has no JSON example in docs/contract.md"


@pytest.mark.parametrize("name", sorted(_examples()))
def test_examples_validate_against_their_model(name: str) -> None:
    model = _models()[name]
    body = _examples()[name]
    parsed = model.model_validate_json(body)
    # the example shows every field (it was generated from the model)
    assert set(json.loads(body)) == set(parsed.model_dump())


def test_telemetry_and_command_examples_parse_through_the_unions() -> None:
    ex = _examples()
    for name in ("SolarTelemetry", "CarbonTelemetry", "BatteryTelemetry", "NodeTelemetry",
                 "ContainerTelemetry", "AppMetricsTelemetry"):  # fmt: skip
        assert type(schemas.parse_telemetry(ex[name])).__name__ == name
    for name, cls in ((c.__name__, c) for c in schemas.COMMAND_TYPES.values()):
        assert isinstance(schemas.parse_command(ex[name]), cls)


def test_every_topic_kind_and_command_type_is_documented() -> None:
    for t in topics.static_topics():
        assert f"`{t}`" in DOC, t
    assert f"`{topics.NOTIFICATIONS_PREFIX}<app>`" in DOC
    for kind in topics.TELEMETRY_KINDS:
        assert f"`kind: {kind}`" in DOC, kind
    for typ in schemas.COMMAND_TYPES:
        assert f"| `{typ}` |" in DOC, typ
    for typ in schemas.NotificationType.__args__:  # type: ignore[attr-defined]
        assert f"`{typ}`" in DOC, typ


def test_validation_errors_read_well() -> None:
    with pytest.raises(pydantic.ValidationError) as e:
        schemas.parse_telemetry(b'{"kind": "solar", "site": "s", "power_w": -1}')
    reason = schemas.describe_validation_error(e.value)
    assert "power_w" in reason and "greater than or equal to 0" in reason


# A ContainerAction as an earlier ledger wrote it: the actuator replays its topic from
# the beginning on start, so these keep parsing, to the command's name.
_ACTION = {"site": "s", "time": "2024-06-01T12:00:00Z", "command_id": "c", "app": "web",
           "container": "web-1"}  # fmt: skip


@pytest.mark.parametrize(
    ("old", "extra", "new", "watts"),
    [
        ("set_cap", {"watts": 3.5, "quota_us": 191780}, "set_container_powercap", 3.5),
        ("remove_cap", {}, "set_container_powercap", None),
        ("remove_cap", {"watts": 3.5}, "set_container_powercap", None),  # removes, whatever
        ("suspend", {}, "suspend_container", None),
        ("resume", {}, "resume_container", None),
        ("scale", {"cpus": 0.5}, "scale_container", None),
        ("scale_app", {"replicas": 2}, "scale_app", None),
    ],
)
def test_container_action_old_names_parse_to_the_command_names(
    old: str, extra: dict, new: str, watts: float | None
) -> None:
    raw = json.dumps({**_ACTION, "action": old, **extra})
    a = schemas.ContainerAction.model_validate_json(raw)  # as the actuator reads its topic
    assert (a.action, a.watts) == (new, watts)
    # the new form, every other field carried over unchanged
    assert a == schemas.ContainerAction(**{**_ACTION, **extra, "action": new, "watts": watts})
    assert a == schemas.ContainerAction.model_validate(json.loads(raw))  # dict input too


@pytest.mark.parametrize(
    ("action", "extra"),
    [
        ("set_container_powercap", {"watts": 3.5, "quota_us": 191780, "period_us": 100000}),
        ("set_container_powercap", {"watts": None}),
        ("suspend_container", {}),
        ("resume_container", {}),
        ("scale_container", {"cpus": 0.5}),
        ("scale_app", {"replicas": 2}),
    ],
)
def test_container_action_round_trips(action: str, extra: dict) -> None:
    a = schemas.ContainerAction.model_validate({**_ACTION, "action": action, **extra})
    assert a.action == action
    assert schemas.ContainerAction.model_validate_json(a.to_json()) == a


@pytest.mark.parametrize("action", ["set_carbon_rate", ["set_cap"], None])
def test_container_action_rejects_unknown_names(action: object) -> None:
    with pytest.raises(pydantic.ValidationError):  # a validation error, never a crash
        schemas.ContainerAction.model_validate({**_ACTION, "action": action})


def test_signature_survives_the_wire_and_binds_every_field() -> None:
    key = "site-internal-key-0123456789"
    for name in ("ContainerAction", "BatterySetpoint", "ActuatorAck"):
        model = _models()[name]
        msg = model.model_validate_json(_examples()[name]).model_copy(update={"signature": None})
        assert not schemas.verify(msg, key)  # unsigned
        signed = schemas.sign(msg, key)
        # re-parsed from its bytes (and from reformatted JSON): still valid
        assert schemas.verify(model.model_validate_json(signed.to_json()), key)
        assert schemas.verify(model.model_validate(json.loads(signed.to_json())), key)
        assert not schemas.verify(signed, "another-key-0123456789")
        tampered = signed.model_copy(update={"command_id": "other-id"})
        assert not schemas.verify(tampered, key)
