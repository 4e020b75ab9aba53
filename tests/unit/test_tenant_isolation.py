"""Tenant isolation of the command path, the API and the configuration.

An application must read and control only its own virtual energy system: another app's
command ids, tokens or container names must never let it suppress, re-apply or observe
someone else's commands.
"""

from __future__ import annotations

import asyncio
import json
import re
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from actuators.containers import ContainerActuator
from actuators.state import latest_actions
from ecovisor.api.app import create_app
from ecovisor.contract import topics
from ecovisor.contract.actuation import ActuatorAck, ContainerAction
from ecovisor.contract.commands import (
    SetBatteryChargeRate,
    SuspendContainer,
    sign_command,
    verify_command,
)
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError, parse_config
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.notifications import Notification
from ecovisor.contract.operator_messages import DeadLetter
from streams.ledger_worker import SiteLedger
from tests.fakes.api import InMemoryBus, InMemoryStateSource, app_routes

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.yaml"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW_US = int(T0.timestamp() * 1e6)


@pytest.fixture(scope="module")
def cfg() -> EcovisorConfig:
    return parse_config(DEMO.read_text())


def tok(cfg: EcovisorConfig, app: str) -> str:
    return cfg.app(app).token


def notes(outs: list, app: str) -> list[Notification]:
    return [
        Notification.model_validate_json(o.value)
        for o in outs
        if o.topic == topics.notifications(app)
    ]


def suspend(cfg: EcovisorConfig, app: str, token: str, container: str, cid: str) -> bytes:
    """A suspend_container as ``app`` sends it: signed with ``token``."""
    cmd = SuspendContainer(site=cfg.site.id, time=T0, app=app, container=container, command_id=cid)
    return sign_command(cmd, token).to_json()


# --- replayed / colliding command ids ------------------------------------------------


def test_unverified_command_cannot_suppress_another_apps_command_id(cfg) -> None:
    """A command with a wrong token claiming app 'batch' and a command id batch will use
    must not make batch's real command a 'no-op re-delivery'."""
    led = SiteLedger.new(cfg)
    forged = suspend(cfg, "batch", "not-a-token-at-all", "batch-1", "batch-cmd-1")
    out1 = led.command(forged, NOW_US)
    # not authenticated as batch's: dead-lettered, batch is not told anything
    assert [o.topic for o in out1] == [topics.DEADLETTER]
    real = suspend(cfg, "batch", tok(cfg, "batch"), "batch-1", "batch-cmd-1")
    out2 = led.command(real, NOW_US)
    assert [n.type for n in notes(out2, "batch")] == ["command_accepted"]
    assert any(o.topic == topics.ACTUATOR_CONTAINERS for o in out2)


def test_other_apps_valid_command_cannot_suppress_a_command_id(cfg) -> None:
    """App web (valid token, its own container) uses the id batch is about to use."""
    led = SiteLedger.new(cfg)
    led.command(suspend(cfg, "web", tok(cfg, "web"), "web-1", "shared-id"), NOW_US)
    out = led.command(suspend(cfg, "batch", tok(cfg, "batch"), "batch-1", "shared-id"), NOW_US)
    assert [n.type for n in notes(out, "batch")] == ["command_accepted"]
    acts = [
        ContainerAction.model_validate_json(o.value)
        for o in out
        if o.topic == topics.ACTUATOR_CONTAINERS
    ]
    assert [(a.app, a.container) for a in acts] == [("batch", "batch-1")]


def test_replayed_command_id_is_still_a_noop_for_the_same_app(cfg) -> None:
    led = SiteLedger.new(cfg)
    raw = suspend(cfg, "web", tok(cfg, "web"), "web-1", "c-1")
    assert led.command(raw, NOW_US)
    assert led.command(raw, NOW_US) == []  # exact re-delivery
    # same id, same verified app, different body: not re-applied either
    other = suspend(cfg, "web", tok(cfg, "web"), "web-2", "c-1")
    assert led.command(other, NOW_US) == []
    # web's id used by batch with batch's own token is batch's command, judged on its own
    out = led.command(suspend(cfg, "batch", tok(cfg, "batch"), "web-1", "c-1"), NOW_US)
    (n,) = notes(out, "batch")
    assert n.type == "command_rejected" and "does not own" in (n.reason or "")
    assert notes(out, "web") == []


def test_a_signed_command_read_off_the_bus_cannot_be_turned_into_another(cfg) -> None:
    """Anyone can read batch's signed command on ecovisor.commands: re-published as it
    is, it is a re-delivery (dropped); with another id, container or app it is not
    batch's (dead-lettered, no app told)."""
    led = SiteLedger.new(cfg)
    genuine = suspend(cfg, "batch", tok(cfg, "batch"), "batch-1", "b-1")
    assert [n.type for n in notes(led.command(genuine, NOW_US), "batch")] == ["command_accepted"]
    assert led.command(genuine, NOW_US) == []  # the exact copy
    body = json.loads(genuine)
    for change in ({"command_id": "b-2"}, {"type": "resume_container"},
                   {"app": "web", "container": "web-1", "command_id": "b-3"}):  # fmt: skip
        out = led.command(json.dumps({**body, **change}).encode(), NOW_US)
        assert [o.topic for o in out] == [topics.DEADLETTER], change
        assert "signature" in DeadLetter.model_validate_json(out[0].value).reason


def test_forged_rejection_is_deduplicated_too(cfg) -> None:
    """An exact re-delivery of a rejected (unverified) command is also a no-op."""
    led = SiteLedger.new(cfg)
    forged = suspend(cfg, "batch", "wrong-token-xyz", "batch-1", "f-1")
    assert led.command(forged, NOW_US)
    assert led.command(forged, NOW_US) == []


def test_ack_goes_to_the_app_of_the_action_even_with_a_shared_command_id(cfg) -> None:
    led = SiteLedger.new(cfg)
    led.command(suspend(cfg, "batch", tok(cfg, "batch"), "batch-1", "same"), NOW_US)
    led.command(suspend(cfg, "web", tok(cfg, "web"), "web-1", "same"), NOW_US)
    ack = ActuatorAck(
        site=cfg.site.id,
        time=T0,
        command_id="same",
        app="batch",
        actuator="containers",
        ok=True,
        applied={"container": "batch-1"},
    )
    out = led.ack(ack.to_json())
    assert [o.topic for o in out] == [topics.notifications("batch")]


def test_actuator_dedupe_is_per_app(tmp_path: Path) -> None:
    """The container actuator must not drop batch's action because web used its id."""
    cfg = parse_config(
        f"""
schema_version: 1
site:
  id: s1
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
apps:
  - id: web
    token: web-token-123456
    containers: [{{id: w1, node: n1, backend: {{type: cgroup_v2, cgroup: w1, root: "{tmp_path}"}}}}]
  - id: batch
    token: batch-token-123456
    containers: [{{id: b1, node: n1, backend: {{type: cgroup_v2, cgroup: b1, root: "{tmp_path}"}}}}]
"""
    )
    for name in ("w1", "b1"):
        d = tmp_path / name
        d.mkdir()
        (d / "cpu.max").write_text("max 100000")
        (d / "cgroup.freeze").write_text("0")
    sent: list = []
    act = ContainerActuator(cfg, lambda t, k, v: sent.append(v))

    def a(app: str, container: str) -> ContainerAction:
        return ContainerAction(
            site="s1",
            time=utcnow(),
            command_id="x",
            app=app,
            container=container,
            action="suspend_container",
        )

    assert act.handle(a("web", "w1")) is not None
    assert act.handle(a("batch", "b1")) is not None
    assert (tmp_path / "b1" / "cgroup.freeze").read_text().strip() == "1"
    assert act.handle(a("batch", "b1")) is None  # a real re-delivery stays a no-op
    assert len(latest_actions([a("web", "w1"), a("batch", "b1"), a("web", "w1")])) == 2


# --- configuration: one tenant's replicas must not be another tenant's container ------


def _two_apps(web_extra: str, batch_extra: str) -> str:
    return f"""
schema_version: 1
site:
  id: s1
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
apps:
  - id: web
    token: web-token-123456
{web_extra}
  - id: batch
    token: batch-token-123456
{batch_extra}
"""


def test_config_rejects_a_template_whose_replicas_are_another_apps_container() -> None:
    text = _two_apps(
        "    templates: [{id: w, node: n1, backend: {type: process, cgroup: ecovisor/w},"
        " command: [sleep, '1']}]",
        "    containers: [{id: w-1, node: n1, backend: {type: cgroup_v1, cgroup: ecovisor/b}}]",
    )
    with pytest.raises((ConfigError, ValueError), match="w-1"):
        parse_config(text)


def test_config_rejects_two_apps_sharing_one_cgroup() -> None:
    text = _two_apps(
        "    containers: [{id: w1, node: n1, backend: {type: cgroup_v1, cgroup: ecovisor/x}}]",
        "    containers: [{id: b1, node: n1, backend: {type: cgroup_v1, cgroup: ecovisor/x}}]",
    )
    with pytest.raises((ConfigError, ValueError), match="ecovisor/x"):
        parse_config(text)


def test_config_rejects_replica_cgroup_equal_to_another_apps_cgroup() -> None:
    text = _two_apps(
        "    templates: [{id: w, node: n1, backend: {type: process, cgroup: ecovisor/w},"
        " command: [sleep, '1']}]",
        "    containers: [{id: b1, node: n1, backend: {type: process, cgroup: ecovisor/w-2}}]",
    )
    with pytest.raises((ConfigError, ValueError), match="ecovisor/w-2"):
        parse_config(text)


WEB_CGROUP = (
    "    containers: [{id: w1, node: n1, backend: {type: cgroup_v1, cgroup: ecovisor/demo/web-1}}]"
)


@pytest.mark.parametrize(
    ("batch_backend", "match"),
    [
        ("cgroup: ecovisor/demo", "inside cgroup ecovisor/demo of 'batch'"),  # a parent
        ("cgroup: ecovisor/demo/web-1/inner", "inside cgroup ecovisor/demo/web-1 of 'web'"),
        ("cgroup: ecovisor//demo/web-1", "used by both"),
        ("cgroup: ./ecovisor/demo/web-1/", "used by both"),
        ("cgroup: ecovisor/demo/web-1, root: /sys/fs/cgroup/", "used by both"),
        ("cgroup: ecovisor/demo/x/../web-1", "without '..'"),
        ("cgroup: /", "a path below the root"),
    ],
)  # fmt: skip
def test_config_rejects_a_cgroup_that_is_or_holds_another_apps(batch_backend: str, match: str
                                                                ) -> None:  # fmt: skip
    """Capping or freezing a cgroup acts on every cgroup inside it: the check compared the
    paths as strings, so a parent of another app's cgroup, or the same one written with
    '//', '..' or the default root spelled out, passed (found by a review)."""
    text = _two_apps(
        WEB_CGROUP,
        f"    containers: [{{id: b1, node: n1, backend: {{type: cgroup_v1, {batch_backend}}}}}]",
    )
    with pytest.raises((ConfigError, ValueError), match=re.escape(match)):
        parse_config(text)


def test_config_keeps_apart_what_is_apart() -> None:
    """Siblings with a common prefix, another root and the other hierarchy are distinct."""
    for other in ("cgroup: ecovisor/demo/web-10", "cgroup: ecovisor/demo/web-1, root: /tmp/cg",
                  "cgroup: ecovisor/demo/web-1x"):  # fmt: skip
        parse_config(_two_apps(WEB_CGROUP, "    containers: [{id: b1, node: n1, backend: "
                                           f"{{type: cgroup_v1, {other}}}}}]"))  # fmt: skip
    parse_config(_two_apps(WEB_CGROUP, "    containers: [{id: b1, node: n1, backend: "
                                       "{type: cgroup_v2, cgroup: ecovisor/demo/web-1}}]"))


def test_demo_config_still_valid(cfg) -> None:
    assert {a.id for a in cfg.apps} == {"web", "batch"}


# --- the REST API --------------------------------------------------------------------


def test_every_app_route_refuses_another_apps_token(cfg) -> None:
    """Each per-app route answers 403 to a valid token of another app and 401 without."""
    api = create_app(cfg, InMemoryStateSource(), InMemoryBus())
    routes = app_routes(api)
    assert len(routes) > 15

    async def run() -> list[tuple[str, str, int, int]]:
        out = []
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            for method, path in routes:
                url = (
                    path.replace("{app}", "batch")
                    .replace("{container}", "batch-1")
                    .replace("{template}", "batch-1")
                )
                body = {"watts": 1.0} if method in ("PUT", "POST") else None
                q = "?t1=2024-01-01T00:00:00Z&t2=2024-01-01T01:00:00Z"
                q += "&from=2024-01-01T00:00:00Z&to=2024-01-01T01:00:00Z"
                h = {"Authorization": f"Bearer {tok(cfg, 'web')}"}
                r = await c.request(method, url + q, json=body, headers=h)
                r0 = await c.request(method, url + q, json=body)
                out.append((method, path, r.status_code, r0.status_code))
        return out

    res = asyncio.run(run())
    bad = [x for x in res if x[2] != 403 or x[3] != 401]
    assert bad == []


def test_api_refuses_other_apps_container_even_if_state_lists_it(cfg) -> None:
    """The API's replica check trusts the caller's own live state only."""
    api = create_app(cfg, InMemoryStateSource(), InMemoryBus())

    async def run() -> int:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.post(
                "/v1/apps/web/containers/batch-1/suspend",
                headers={"Authorization": f"Bearer {tok(cfg, 'web')}"},
            )
            return r.status_code

    assert asyncio.run(run()) == 403


def test_client_setter_carries_its_own_app(cfg) -> None:
    """Commands the API publishes always carry the token's app, signed with the token
    (never the token itself)."""
    bus = InMemoryBus()
    api = create_app(cfg, InMemoryStateSource(), bus)

    async def run() -> None:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.put(
                "/v1/apps/web/battery/charge_rate",
                json={"watts": 1.0},
                headers={"Authorization": f"Bearer {tok(cfg, 'web')}"},
            )
            assert r.status_code == 200, r.text

    asyncio.run(run())
    (cmd,) = bus.published
    assert isinstance(cmd, SetBatteryChargeRate)
    assert (cmd.app, cmd.site) == ("web", cfg.site.id)
    assert verify_command(cmd, tok(cfg, "web")) and not verify_command(cmd, tok(cfg, "batch"))
    assert json.loads(cmd.to_json())["app"] == "web"
    assert tok(cfg, "web").encode() not in cmd.to_json()


def test_an_apps_state_view_holds_no_site_wide_sample_counts(cfg) -> None:
    """The API hands the ledger's state view to the app: the site's sample, duplicate
    and late counts (every app's telemetry) told one app about the others' traffic."""
    from streams.ledger_views import state_view

    view = state_view(SiteLedger.new(cfg), "web")
    assert view is not None and set(view["clock"]) == {"next_close", "watermark"}
