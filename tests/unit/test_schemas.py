"""docs/contract.md documents every message of the contract (ecovisor.contract's message
modules), and its examples are valid."""

from __future__ import annotations

import importlib
import inspect
import json
import pkgutil
import re
from pathlib import Path

import pydantic
import pytest

import ecovisor.contract
from ecovisor.contract import (
    actuation,
    commands,
    envelope,
    notifications,
    operator_messages,
    telemetry,
    topics,
)

DOC = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text()
ABSTRACT = {"Message", "Telemetry", "Command", "NodeBatch"}  # envelopes and bases, no example
EXAMPLE = re.compile(r"<!-- example: (\w+) -->\n```json\n(.*?)\n```", re.S)


# The modules of the message contract: the envelope, then one module per kind of message.
MESSAGE_MODULES = (envelope, telemetry, commands, notifications, actuation, operator_messages)


def _models() -> dict[str, type[pydantic.BaseModel]]:
    return {
        n: o
        for m in MESSAGE_MODULES
        for n, o in vars(m).items()
        if inspect.isclass(o)
        and issubclass(o, pydantic.BaseModel)
        and o.__module__ == m.__name__
    }


def test_every_module_defining_a_message_is_walked() -> None:
    for info in pkgutil.iter_modules(ecovisor.contract.__path__, "ecovisor.contract."):
        m = importlib.import_module(info.name)
        defines = [o for o in vars(m).values() if inspect.isclass(o)
                   and issubclass(o, envelope.Message) and o.__module__ == m.__name__]  # fmt: skip
        assert not defines or m in MESSAGE_MODULES, f"{info.name} is not in MESSAGE_MODULES"


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
                 "ContainerTelemetry", "NodeBatchTelemetry", "NodeBatchColumnsTelemetry",
                 "AppMetricsTelemetry"):  # fmt: skip
        assert type(telemetry.parse_telemetry(ex[name])).__name__ == name
    # the two node batch examples are the same batch; batch_version absent means 1
    v1, v2 = (telemetry.parse_telemetry(ex[n])
              for n in ("NodeBatchTelemetry", "NodeBatchColumnsTelemetry"))  # fmt: skip
    assert isinstance(v1, telemetry.NodeBatch) and isinstance(v2, telemetry.NodeBatch)
    assert list(v1.rows()) == list(v2.rows()) and v1.as_columns() == v2
    unversioned = {k: v for k, v in json.loads(ex["NodeBatchTelemetry"]).items()
                   if k != "batch_version"}  # fmt: skip
    assert telemetry.parse_telemetry(json.dumps(unversioned)) == v1
    for name, cls in ((c.__name__, c) for c in commands.COMMAND_TYPES.values()):
        assert isinstance(commands.parse_command(ex[name]), cls)


def test_every_topic_kind_and_command_type_is_documented() -> None:
    for t in topics.static_topics():
        assert f"`{t}`" in DOC, t
    assert f"`{topics.NOTIFICATIONS_PREFIX}<app>`" in DOC
    for kind in topics.TELEMETRY_KINDS:
        assert f"`kind: {kind}`" in DOC, kind
    for typ in commands.COMMAND_TYPES:
        assert f"| `{typ}` |" in DOC, typ
    for typ in notifications.NotificationType.__args__:  # type: ignore[attr-defined]
        assert f"`{typ}`" in DOC, typ


def test_validation_errors_read_well() -> None:
    with pytest.raises(pydantic.ValidationError) as e:
        telemetry.parse_telemetry(b'{"kind": "solar", "site": "s", "power_w": -1}')
    reason = operator_messages.describe_validation_error(e.value)
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
    a = actuation.ContainerAction.model_validate_json(raw)  # as the actuator reads its topic
    assert (a.action, a.watts) == (new, watts)
    # the new form, every other field carried over unchanged
    assert a == actuation.ContainerAction(**{**_ACTION, **extra, "action": new, "watts": watts})
    assert a == actuation.ContainerAction.model_validate(json.loads(raw))  # dict input too


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
    a = actuation.ContainerAction.model_validate({**_ACTION, "action": action, **extra})
    assert a.action == action
    assert actuation.ContainerAction.model_validate_json(a.to_json()) == a


@pytest.mark.parametrize("action", ["set_carbon_rate", ["set_cap"], None])
def test_container_action_rejects_unknown_names(action: object) -> None:
    with pytest.raises(pydantic.ValidationError):  # a validation error, never a crash
        actuation.ContainerAction.model_validate({**_ACTION, "action": action})


def test_signature_survives_the_wire_and_binds_every_field() -> None:
    key = "site-internal-key-0123456789"
    for name in ("ContainerAction", "BatterySetpoint", "ActuatorAck"):
        model = _models()[name]
        msg = model.model_validate_json(_examples()[name]).model_copy(update={"signature": None})
        assert not actuation.verify(msg, key)  # unsigned
        signed = actuation.sign(msg, key)
        # re-parsed from its bytes (and from reformatted JSON): still valid
        assert actuation.verify(model.model_validate_json(signed.to_json()), key)
        assert actuation.verify(model.model_validate(json.loads(signed.to_json())), key)
        assert not actuation.verify(signed, "another-key-0123456789")
        tampered = signed.model_copy(update={"command_id": "other-id"})
        assert not actuation.verify(tampered, key)


def test_command_examples_are_signed_with_the_demo_tokens() -> None:
    """The commands' examples carry a valid signature (docs/contract.md, "Signatures of
    the commands"), made with the demo site's tokens; no example carries a token."""
    tokens = {"web": "web-demo-token-change-me", "batch": "batch-demo-token-change-me"}
    for cls in commands.COMMAND_TYPES.values():
        body = _examples()[cls.__name__]
        cmd = commands.parse_command(body)
        assert commands.verify_command(cmd, tokens[cmd.app]), cls.__name__
        assert "token" not in json.loads(body) and cmd.schema_version == 2


def test_the_documented_command_signature_vector() -> None:
    """docs/contract.md's test vector: the canonical JSON is the parsed command's dump
    (a time keeps its offset, six fraction digits; 5 is 5.0), not the bytes sent."""
    import hashlib
    import hmac
    import json as _json

    from ecovisor.contract.commands import parse_command, sign_command, verify_command

    raw = ('{"schema_version":2,"type":"set_battery_charge_rate","site":"demo","time":'
           '"2024-06-01T14:00:00.25+02:00","command_id":"c-1","app":"web","watts":5}')  # fmt: skip
    canon = ('{"app":"web","command_id":"c-1","schema_version":2,"site":"demo","time":'
             '"2024-06-01T14:00:00.250000+02:00","type":"set_battery_charge_rate",'
             '"watts":5.0}')  # fmt: skip
    cmd = parse_command(raw)
    body = cmd.model_dump(mode="json", exclude={"signature"})
    assert _json.dumps(body, sort_keys=True, separators=(",", ":")) == canon
    token = "web-demo-token-change-me"
    sig = hmac.new(token.encode(), canon.encode(), hashlib.sha256).hexdigest()
    assert sig == "f7703ab34ffd94a28f8e715bacb385ba5d38f03534800a29b33494aa5e5eb67b"
    signed = sign_command(cmd, token)
    assert signed.signature == sig and verify_command(parse_command(signed.to_json()), token)
    assert sig in DOC and canon in DOC
