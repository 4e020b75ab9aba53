"""One name per command: the contract's wire ``type`` is the client method, the policy
action's ``type`` and the CLI subcommand (dashes); the API's generic ``POST
.../commands`` takes every command of the contract by that name, with the contract's
bounds, and the same ownership rules as the named routes."""

from __future__ import annotations

import dataclasses
import inspect

import pytest
from fastapi.testclient import TestClient

import policies.base as actions
from ecovisor.api.app import create_app
from ecovisor.client import EcovisorClient
from ecovisor.contract import commands
from ecovisor.contract.config_file import parse_config
from tests.fakes.api import InMemoryBus, InMemoryStateSource
from tests.fakes.sites import TWO_APPS

SITE = TWO_APPS
WEB = {"Authorization": "Bearer web-token-123456"}

# one valid example of each command's own fields (a new command type must add one)
EXAMPLES: dict[str, dict[str, object]] = {
    "set_container_powercap": {"container": "web-1", "watts": 3.0},
    "set_battery_charge_rate": {"watts": 1.0},
    "set_battery_max_discharge": {"watts": 2.0},
    "set_carbon_rate": {"container": "web-1", "mg_per_s": 20.0, "window_s": 30.0},
    "set_carbon_budget": {"grams": 3.5, "period_s": 600.0},
    "suspend_container": {"container": "web-1"},
    "resume_container": {"container": "web-1"},
    "scale_container": {"container": "web-1", "cpus": 1.5},
    "scale_app": {"template": "web-worker", "replicas": 2},
}
ACTIONS = {
    c.type: c for c in vars(actions).values()
    if inspect.isclass(c) and dataclasses.is_dataclass(c)
    and isinstance(getattr(c, "type", None), str)
}


def test_every_command_has_an_example_here() -> None:
    assert set(EXAMPLES) == set(commands.COMMAND_TYPES)


@pytest.mark.parametrize("name", sorted(commands.COMMAND_TYPES))
def test_the_wire_type_is_the_client_method_and_the_policy_action(name: str) -> None:
    cls = commands.COMMAND_TYPES[name]
    assert commands.command_type(cls) == name
    assert callable(getattr(EcovisorClient, name, None)), f"client lacks {name}()"
    action = ACTIONS.get(name)
    assert action is not None, f"policies.base has no action of type {name!r}"
    assert action.__name__ == cls.__name__
    # the action carries the command's own fields, by the same names, in the same order
    assert [f.name for f in dataclasses.fields(action)] == list(commands.command_fields(cls))


@pytest.fixture
def api() -> tuple[TestClient, InMemoryBus]:
    bus = InMemoryBus()
    return TestClient(create_app(parse_config(SITE), InMemoryStateSource(), bus)), bus


@pytest.mark.parametrize("name", sorted(commands.COMMAND_TYPES))
def test_the_generic_endpoint_publishes_each_command(api, name: str) -> None:
    tc, bus = api
    r = tc.post("/v1/apps/web/commands", headers=WEB, json={"type": name, **EXAMPLES[name]})
    assert r.status_code == 200, r.text
    [cmd] = bus.published
    assert isinstance(cmd, commands.COMMAND_TYPES[name])
    assert cmd.app == "web" and cmd.site == "s1"
    assert commands.verify_command(cmd, "web-token-123456")  # signed; no token on the bus
    assert b"web-token-123456" not in cmd.to_json()
    assert r.json()["command_id"] == cmd.command_id and r.json()["type"] == name
    for k, v in EXAMPLES[name].items():
        assert getattr(cmd, k) == v


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"type": "set_container_powercap", "container": "batch-1", "watts": 3.0}, 403),
        ({"type": "suspend_container", "container": "nowhere"}, 404),
        ({"type": "scale_app", "template": "nope", "replicas": 1}, 404),
        ({"type": "set_battery_charge_rate", "watts": -1.0}, 422),
        ({"type": "set_container_powercap", "container": "web-1"}, 422),  # watts required
        ({"type": "set_battery_charge_rate", "watts": 1.0, "app": "batch"}, 422),  # envelope
        ({"type": "no_such_command"}, 422),
        ({"watts": 1.0}, 422),
    ],
)
def test_the_generic_endpoint_checks_ownership_and_bounds(api, body, status) -> None:
    tc, bus = api
    r = tc.post("/v1/apps/web/commands", headers=WEB, json=body)
    assert r.status_code == status, r.text
    assert bus.published == []


def test_another_apps_path_is_forbidden(api) -> None:
    tc, bus = api
    r = tc.post("/v1/apps/batch/commands", headers=WEB,
                json={"type": "set_battery_charge_rate", "watts": 1.0})
    assert r.status_code == 403 and bus.published == []


def test_a_settings_change_has_the_commands_name_and_old_snapshots_restore() -> None:
    from ecovisor.core import state

    for change in (state.SetBatteryChargeRate(watts=1.0),
                   state.SetContainerPowercap(container="c", watts=2.0)):
        assert change.type in commands.COMMAND_TYPES
    old = {"accepted_k": 3, "change": {"kind": "set_battery_charge_rate", "watts": 1.5}}
    p = state.PendingChange.model_validate(old)
    assert p.change == state.SetBatteryChargeRate(watts=1.5)
    assert state.PendingChange.model_validate_json(p.model_dump_json()) == p


def test_send_command_issues_any_command_by_its_name() -> None:
    calls: list[tuple[str, dict[str, object]]] = []

    class Client:
        def command(self, type: str, **fields: object) -> str:
            calls.append((type, fields))
            return "ok"

    a = actions.SendCommand("set_carbon_budget", (("grams", 2.0), ("period_s", 600.0)))
    assert actions.apply_action(Client(), a) == "ok"
    assert calls == [("set_carbon_budget", {"grams": 2.0, "period_s": 600.0})]
