"""B1 on the real broker and the real ``python -m actuators.containers`` process: with a
site internal key, a forged (unsigned or wrongly signed) action leaves the cgroup
untouched, gets no acknowledgement and is dead-lettered; the ledger-signed one is applied
and its acknowledgement is signed."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest

from ecovisor.contract import topics
from ecovisor.contract.schemas import verify
from tests.fakes.actuator_bus import Bus, burner_cgroup, remove_tree, start_service, stop_service

pytestmark = pytest.mark.integration

V1 = Path("/sys/fs/cgroup")
if not (V1 / "cpu").is_dir() or not os.access(V1 / "cpu", os.W_OK):
    pytestmark = [pytestmark, pytest.mark.skip(reason="needs a writable cgroup v1 cpu hierarchy")]

KEY = "integration-internal-key-0123456789"


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
            for key in (None, "wrong-key-0123456789"):
                with pytest.raises(TimeoutError):  # no ack, ok or not
                    bus.send_action(site, "web", "burn-1", "set_container_powercap", 3,
                                    key=key, watts=0.6, quota_us=1000)  # fmt: skip
                assert quota_file.read_text() == before
            dls = bus.collect(topics.DEADLETTER, 1.0, json.loads)
            mine = [d for d in dls if f'"site":"{site}"' in d["raw"]]
            assert [d["reason"] for d in mine] == ["bad or missing signature"] * 2
            ack = bus.send_action(site, "web", "burn-1", "set_container_powercap", 10,
                                  key=KEY, watts=0.6, quota_us=30000)  # fmt: skip
            assert ack.ok and verify(ack, KEY), ack
            assert int(quota_file.read_text()) == 30000 * cg.period_us() // 100000
    finally:
        stop_service(proc)
        remove_tree(top)
        bus.close()
