"""Command validation: signature, ownership, ranges, power-cap floor, routing."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from ecovisor.contract.commands import (
    ScaleApp,
    SetBatteryChargeRate,
    SetCarbonBudget,
    SetContainerPowercap,
    SuspendContainer,
    sign_command,
)
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import parse_config
from ecovisor.core import state as core
from streams.commands import decide, validate
from tests.fakes.commands import signed

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.yaml"
NOW = datetime(2024, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def cfg() -> EcovisorConfig:
    text = DEMO.read_text().replace("idle_attribution: none", "idle_attribution: equal")
    return parse_config(text)


def tok(cfg: EcovisorConfig, app: str) -> str:
    return cfg.app(app).token


def test_accepted_cap_routes_action_and_setting(cfg: EcovisorConfig) -> None:
    d = validate(
        cfg,
        signed(
            SetContainerPowercap,
            site="demo",
            time=NOW,
            app="web",
            token=tok(cfg, "web"),
            container="web-1",
            watts=2.0,
        ),
    )
    assert d.accepted and d.reason is None
    assert d.change == core.SetContainerPowercap(container="web-1", watts=2.0)
    (a,) = d.actions
    assert (a.action, a.container, a.watts, a.app) == (
        "set_container_powercap",
        "web-1",
        2.0,
        "web",
    )
    # the quota that enforces the cap is computed here, once, and carried to the actuator
    q = cfg.cap_quota("web-1", 2.0)
    assert (a.quota_us, a.period_us) == (q.quota_us, q.period_us) and q.binding


def test_command_signed_with_another_apps_token_tells_no_app(cfg: EcovisorConfig) -> None:
    """batch's token cannot command web, and neither app is told (before: both were)."""
    d = validate(
        cfg,
        signed(SetBatteryChargeRate, site="demo", time=NOW, app="web", token=tok(cfg, "batch"),
               watts=1),
    )  # fmt: skip
    assert not d.accepted and "not signed with the token of app 'web'" in (d.reason or "")
    assert d.notify == () and d.app is None and d.change is None and d.actions == ()


def test_unsigned_forged_and_unknown_app_commands_tell_no_app(cfg: EcovisorConfig) -> None:
    base = {"site": "demo", "time": NOW, "container": "batch-1", "command_id": "victim-id"}
    unsigned = SuspendContainer(app="batch", **base)
    forged = unsigned.model_copy(update={"signature": "0" * 64})
    guessed = sign_command(unsigned, "guess-token-123")
    nobody = signed(SuspendContainer, "guess-token-123", app="nobody", **base)
    for cmd, why in ((unsigned, "unsigned"), (forged, "not signed with"),
                     (guessed, "not signed with"), (nobody, "no app 'nobody'")):  # fmt: skip
        d = validate(cfg, cmd)
        assert not d.accepted and d.notify == () and d.app is None, cmd
        assert "bad or missing signature" in (d.reason or "") and why in (d.reason or "")


def test_signature_binds_the_whole_command(cfg: EcovisorConfig) -> None:
    """A genuine signature reused on another command (another id, container, value,
    app, site, time, type) authenticates nothing."""
    web = tok(cfg, "web")
    genuine = signed(SetContainerPowercap, web, site="demo", time=NOW, app="web",
                     container="web-1", watts=2.0, command_id="c-1")  # fmt: skip
    assert validate(cfg, genuine).accepted
    later = datetime(2024, 1, 2, tzinfo=UTC)
    changes = ({"command_id": "c-2"}, {"watts": 0.5}, {"container": "web-2"}, {"watts": None},
               {"app": "batch"}, {"site": "other"}, {"time": later})  # fmt: skip
    for change in changes:
        d = validate(cfg, genuine.model_copy(update=change))
        assert not d.accepted and d.notify == () and "signature" in (d.reason or ""), change
    other_type = SuspendContainer(site="demo", time=NOW, app="web", container="web-1",
                                  command_id="c-1", signature=genuine.signature)  # fmt: skip
    d = validate(cfg, other_type)
    assert not d.accepted and d.notify == ()


def test_unknown_token_and_foreign_container(cfg: EcovisorConfig) -> None:
    d = validate(
        cfg, signed(SetBatteryChargeRate, site="demo", time=NOW, app="web", token="x" * 12,
                    watts=1)
    )  # fmt: skip
    assert not d.accepted and "bad or missing signature" in (d.reason or "")
    assert d.notify == ()
    d = validate(
        cfg,
        signed(SuspendContainer, site="demo", time=NOW, app="web", token=tok(cfg, "web"),
               container="batch-1"),
    )  # fmt: skip
    assert not d.accepted and "does not own container 'batch-1'" in (d.reason or "")
    assert d.notify == ("web",)  # authenticated: web is told why


def test_cap_below_idle_floor_rejected(cfg: EcovisorConfig) -> None:
    # microserver preset on 2 cores: idle 1.35 W split equally over 3 containers = 0.45 W
    d = validate(
        cfg,
        signed(
            SetContainerPowercap,
            site="demo",
            time=NOW,
            app="web",
            token=tok(cfg, "web"),
            container="web-1",
            watts=0.3,
        ),
    )
    assert not d.accepted and "below_idle_floor" in (d.reason or "")
    d = validate(
        cfg,
        signed(
            SetContainerPowercap,
            site="demo",
            time=NOW,
            app="web",
            token=tok(cfg, "web"),
            container="web-1",
            watts=None,
        ),
    )
    (a,) = d.actions  # a null cap removes it: same name, watts null
    assert d.accepted and (a.action, a.watts) == ("set_container_powercap", None)


def test_ranges(cfg: EcovisorConfig) -> None:
    web = tok(cfg, "web")
    # share 20 Wh at 0.25 C -> 5 W charge limit
    d = validate(
        cfg, signed(SetBatteryChargeRate, site="demo", time=NOW, app="web", token=web, watts=6)
    )
    assert not d.accepted and "limit 5 W" in (d.reason or "")
    d = validate(cfg, signed(SetCarbonBudget, site="demo", time=NOW, app="web", token=web, grams=0))
    assert not d.accepted
    d = validate(cfg, signed(SetCarbonBudget, site="demo", time=NOW, app="web", token=web, grams=2))
    assert d.accepted and d.change == core.SetCarbonBudget(
        budget=core.CarbonBudget(budget_g=2, period_s=3600.0)
    )
    d = validate(
        cfg,
        signed(ScaleApp, site="demo", time=NOW, app="web", token=web, template="nope", replicas=2),
    )
    assert not d.accepted and "template" in (d.reason or "")
    d = validate(
        cfg,
        signed(SetBatteryChargeRate, site="other", time=NOW, app="web", token=web, watts=1),
    )
    assert not d.accepted and "site" in (d.reason or "")


def test_unparsable_command_tells_no_app(cfg: EcovisorConfig) -> None:
    """Unparsed, a command cannot be authenticated: whatever app and id it names, it is
    only dead-lettered (before: a command_rejected went to the app it named)."""
    d = decide(cfg, b'{"type": "set_battery_charge_rate", "app": "web", "command_id": "c1"}')
    assert not d.accepted and d.notify == () and d.reason and "invalid command" in d.reason
    d = decide(cfg, b"not json")
    assert not d.accepted and d.notify == ()


def test_reviewers_repro_injects_no_rejection(cfg: EcovisorConfig) -> None:
    """The review's repro: a guessed token (the version 1 form) and a chosen command_id
    gave notify=('batch',); the same with a guessed signature, too."""
    v1 = (b'{"site":"demo","app":"batch","token":"guess","type":"suspend_container",'
          b'"container":"batch-1","command_id":"victim-id"}')  # fmt: skip
    v2 = (b'{"schema_version":2,"site":"demo","time":"2024-01-01T00:00:00Z","app":"batch",'
          b'"signature":"' + b"ab" * 32 + b'","type":"suspend_container",'
          b'"container":"batch-1","command_id":"victim-id"}')  # fmt: skip
    for raw in (v1, v2):
        d = decide(cfg, raw)
        assert not d.accepted and d.notify == () and d.app is None, d


REPLICA_SITE = """
site:
  id: demo
  shape: {idle_attribution: equal}
  nodes: [{id: n1, cores: 2}, {id: n2, cores: 4}]
apps:
  - id: web
    token: web-token-123
    containers:
      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: t/web-1}}
    templates:
      - {id: worker, node: n2, backend: {type: process, cgroup: t/worker}, max_replicas: 2}
  - id: batch
    token: batch-token-123
    containers:
      - {id: batch-1, node: n1, backend: {type: cgroup_v1, cgroup: t/batch-1}}
"""


def test_replicas_of_an_apps_template_are_its_containers() -> None:
    """scale_app starts worker-1..worker-N for web: web may cap and suspend them, batch
    may not, and ids beyond max_replicas are nobody's."""
    rcfg = parse_config(REPLICA_SITE)

    def cap(app: str, token: str, container: str, watts: float = 2.0):  # noqa: ANN202
        return validate(rcfg, signed(SetContainerPowercap, site="demo", time=NOW, app=app,
                                                           token=token, container=container,
                                                           watts=watts))  # fmt: skip

    d = cap("web", "web-token-123", "worker-2")
    assert d.accepted, d.reason
    assert [(a.action, a.container) for a in d.actions] == [("set_container_powercap", "worker-2")]
    d = validate(
        rcfg,
        signed(
            SuspendContainer,
            site="demo",
            time=NOW,
            app="web",
            token="web-token-123",
            container="worker-1",
        ),
    )
    assert d.accepted and d.actions[0].action == "suspend_container"
    d = cap("batch", "batch-token-123", "worker-1")
    assert not d.accepted and "does not own" in (d.reason or "")
    d = cap("web", "web-token-123", "worker-3")
    assert not d.accepted and "does not own" in (d.reason or "")
    # the idle floor is the template's node's: n2 idles at 1.35 W over 4 cores, split
    # equally with nothing else there, so a 1 W cap is below it
    d = cap("web", "web-token-123", "worker-1", watts=1.0)
    assert not d.accepted and "idle" in (d.reason or "")
    assert rcfg.locate("worker-1").node == "n2" and rcfg.locate("web-1").node == "n1"
    # a replica's idle floor counts the replica itself with the node's configured
    # containers (none on n2): the full 1.35 W, on 4 cores 0.9125 W per busy core
    d = cap("web", "web-token-123", "worker-1", watts=1.35 + 0.9125)
    assert d.accepted and abs(d.actions[0].quota_us - 100_000) <= 1, d
