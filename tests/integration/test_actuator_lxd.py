"""LXD backend through pylxd against a loopback server speaking LXD's documented REST
format (actuators/lxd_fake.py: fixtures built from the LXD REST API docs, not a real
LXD). What a real host needs is in docs/actuators.md."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from actuators.containers import ContainerActuator
from ecovisor.adapters.backends import BackendError
from ecovisor.adapters.lxd import LxdBackend
from ecovisor.contract.actuation import ActuatorAck, ContainerAction, ContainerEvent
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.envelope import utcnow
from tests.fakes.lxd import FakeLxd

pytestmark = pytest.mark.integration


@pytest.fixture()
def lxd() -> Iterator[tuple[FakeLxd, str]]:
    fake = FakeLxd()
    fake.add("web-1", {"limits.cpu.allowance": "50%", "limits.memory": "1GiB"})
    fake.add("batch")
    url = fake.start()
    yield fake, url
    fake.stop()


def _config(url: str) -> str:
    return f"""
schema_version: 1
site: {{id: s1, nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]}}
apps:
  - id: web
    token: web-token-123456
    containers:
      - {{id: web-1, node: n1, backend: {{type: lxd, instance: web-1, lxd_endpoint: "{url}"}}}}
    templates:
      - {{id: batch, node: n1, max_replicas: 3,
          backend: {{type: lxd, instance: batch, lxd_endpoint: "{url}"}}}}
"""


def _action(**kw) -> ContainerAction:
    base = {"site": "s1", "time": utcnow(), "app": "web", "container": "web-1"}
    return ContainerAction(**{**base, **kw})


def test_cap_writes_allowance_and_removal_restores_soft_share(lxd) -> None:
    fake, url = lxd
    out: list[tuple[str, bytes]] = []
    act = ContainerActuator(parse_config(_config(url)), lambda t, k, v: out.append((t, v)))
    # 0.9125 W with the microserver model over 2 cores (1.825 W per busy core) = 0.5 core
    ack = act.handle(_action(command_id="c1", action="set_container_powercap", watts=0.9125))
    assert ack is not None and ack.ok, ack
    assert fake.instances["web-1"]["config"]["limits.cpu.allowance"] == "50ms/100ms"
    assert fake.instances["web-1"]["config"]["limits.memory"] == "1GiB"  # untouched
    puts = [body for m, p, body in fake.requests if (m, p) == ("PUT", "/1.0/instances/web-1")]
    assert puts and puts[-1]["config"]["limits.cpu.allowance"] == "50ms/100ms"
    assert ack.applied["cpu_limit_cores"] == pytest.approx(0.5)
    ack = act.handle(_action(command_id="c2", action="set_container_powercap", watts=None))
    assert ack is not None and ack.ok
    # the soft share the instance had before Ecovisor is back, verbatim
    assert fake.instances["web-1"]["config"]["limits.cpu.allowance"] == "50%"
    acks = [ActuatorAck.model_validate_json(v) for t, v in out if t.endswith("acks")]
    assert [a.command_id for a in acks] == ["c1", "c2"]


def test_pause_resume_through_instance_state(lxd) -> None:
    fake, url = lxd
    b = LxdBackend("web-1", url)
    b.freeze()
    assert fake.instances["web-1"]["status"] == "Frozen" and b.is_frozen()
    assert ("PUT", "/1.0/instances/web-1/state") in [(m, p) for m, p, _ in fake.requests]
    body = [bd for m, p, bd in fake.requests if p.endswith("/state") and m == "PUT"][0]
    assert body["action"] == "freeze"
    b.thaw()
    assert fake.instances["web-1"]["status"] == "Running" and not b.is_frozen()
    fake.cpu_usage_ns["web-1"] = 2_500_000_000
    assert b.usage_s() == pytest.approx(2.5)


def test_horizontal_scaling_copies_template_and_announces(lxd) -> None:
    fake, url = lxd
    out: list[tuple[str, bytes]] = []
    act = ContainerActuator(parse_config(_config(url)), lambda t, k, v: out.append((t, v)))
    ack = act.handle(_action(command_id="s1", action="scale_app", container="batch", replicas=2))
    assert ack is not None and ack.ok, ack
    assert fake.instances["batch-1"]["status"] == "Running"
    assert fake.instances["batch-2"]["status"] == "Running"
    ack = act.handle(_action(command_id="s2", action="scale_app", container="batch", replicas=1))
    assert ack is not None and ack.ok and ack.applied["removed"] == ["batch-2"]
    assert "batch-2" not in fake.instances
    events = [ContainerEvent.model_validate_json(v) for t, v in out if t == "ecovisor.containers"]
    assert [(e.container, e.event) for e in events] == [
        ("batch-1", "added"),
        ("batch-2", "added"),
        ("batch-2", "removed"),
    ]
    assert events[0].backend["instance"] == "batch-1" and events[0].app == "web"


def test_missing_instance_and_unreachable_lxd_are_reported(lxd) -> None:
    fake, url = lxd
    with pytest.raises(BackendError, match="not found"):
        LxdBackend("nope", url).freeze()
    fake.stop()
    out: list[tuple[str, bytes]] = []
    act = ContainerActuator(parse_config(_config(url)), lambda t, k, v: out.append((t, v)))
    ack = act.handle(_action(command_id="x", action="suspend_container"))
    assert ack is not None and not ack.ok and "unreachable" in (ack.error or "")
