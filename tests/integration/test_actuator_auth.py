"""B1 on the real broker and the real ``python -m actuators.containers`` process: with a
site internal key, a forged (unsigned or wrongly signed) action leaves the cgroup
untouched, gets no acknowledgement and is dead-lettered; the ledger-signed one is applied
and its acknowledgement is signed."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest

from ecovisor.contract import topics
from ecovisor.contract.actuation import ActuatorAck, ContainerAction, sign, verify
from ecovisor.contract.envelope import utcnow
from tests.fakes.actuator_bus import Bus, burner_cgroup, remove_tree, start_service, stop_service

pytestmark = pytest.mark.integration

V1 = Path("/sys/fs/cgroup")
if not (V1 / "cpu").is_dir() or not os.access(V1 / "cpu", os.W_OK):
    pytestmark = [pytestmark, pytest.mark.skip(reason="needs a writable cgroup v1 cpu hierarchy")]

KEY = "integration-internal-key-0123456789"


def action(site: str, key: str | None, quota_us: int) -> ContainerAction:
    """A power cap of burn-1, signed with ``key`` (unsigned with None)."""
    a = ContainerAction(site=site, time=utcnow(), command_id=f"cap-{uuid.uuid4().hex[:12]}",
                        app="web", container="burn-1", action="set_container_powercap",
                        watts=0.6, quota_us=quota_us)  # fmt: skip
    return sign(a, key) if key else a


def dead_letters(bus: Bus, site: str, n: int, timeout: float) -> list[dict]:
    """The site's dead letters read until there are ``n`` (or ``timeout``: all so far)."""
    mine: list[dict] = []
    deadline = time.monotonic() + timeout
    while True:
        dls = bus.collect(topics.DEADLETTER, 0.1, json.loads)
        mine += [d for d in dls if f'"site":"{site}"' in d["raw"]]
        if (n and len(mine) >= n) or time.monotonic() >= deadline:
            return mine


def acks_until(bus: Bus, command_id: str, timeout: float) -> list[ActuatorAck]:
    """Every ack read up to and including the one of ``command_id``."""
    out: list[ActuatorAck] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out += bus.collect_acks(0.1)
        for i, a in enumerate(out):
            if a.command_id == command_id:
                return out[: i + 1]
    raise TimeoutError(f"no ack of {command_id} within {timeout} s")


def test_forged_actions_are_refused_signed_ones_applied(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ECOVISOR_INTERNAL_KEY", raising=False)  # the site file's key
    top = f"ecovisor-test-{uuid.uuid4().hex[:10]}"
    site = f"t{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"""
site:
  id: {site}
  internal_key: {KEY}
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
apps:
  - id: web
    token: web-token-123456
    containers:
      - {{id: burn-1, node: n1, backend: {{type: cgroup_v1, cgroup: {top}/burn-1}}}}
      - {{id: ghost, node: n1, backend: {{type: cgroup_v1, cgroup: {top}/ghost}}}}
stack: {{kafka_bootstrap: "{kafka_bootstrap}"}}
""")
    bus = Bus(kafka_bootstrap)
    for t in (topics.ACTUATOR_ACKS, topics.DEADLETTER):
        bus.tail(t)
    proc = start_service("actuators.containers", cfg, tmp_path / "actuator.log")
    try:
        ready = bus.send_action(site, "web", "ghost", "resume_container", 30, key=KEY)
        assert not ready.ok and verify(ready, KEY), ready
        with burner_cgroup(f"{top}/burn-1") as cg:
            quota_file = cg.dir("cpu") / "cpu.cfs_quota_us"
            before = quota_file.read_text()
            # the forged actions, then the signed one. The actuator handles its actions one
            # at a time, in order, and publishes what it sends for one before the next:
            # any ack of a forged action would come before the signed action's ack (the
            # test waited 3 s for each ack that must not come)
            forged = [action(site, key, quota_us=1000) for key in (None, "wrong-key-0123456789")]
            for a in forged:
                bus.send(topics.ACTUATOR_CONTAINERS, site, a.to_json())
            mine = dead_letters(bus, site, 2, timeout=30)
            assert [d["reason"] for d in mine] == ["bad or missing signature"] * 2
            assert quota_file.read_text() == before
            signed = action(site, KEY, quota_us=30000)
            bus.send(topics.ACTUATOR_CONTAINERS, site, signed.to_json())
            acks = acks_until(bus, signed.command_id, timeout=10)
            assert not [x for x in acks if x.command_id in {a.command_id for a in forged}]
            ack = acks[-1]
            assert ack.ok and verify(ack, KEY), ack
            assert len(mine + dead_letters(bus, site, 0, timeout=0.3)) == 2
            assert int(quota_file.read_text()) == 30000 * cg.period_us() // 100000
    finally:
        stop_service(proc)
        remove_tree(top)
        bus.close()
