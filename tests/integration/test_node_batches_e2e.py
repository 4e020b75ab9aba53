"""Node batches end to end on the real embedded stack: the power collector (real
``Publisher``, counters from a fake cgroup tree it reads through the real backends)
publishes one node batch (``batch_version`` 2) per tick over MQTT (mosquitto), the real bridge
forwards it to Kafka (tansu), the real ledger worker books it; every closed tick's
container energy is exactly the collector's counters' difference."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from collectors.power import PowerCollector
from collectors.publisher import Publisher
from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from ecovisor.core.units import j_to_mj
from ecovisor.embedded.servers import Server, free_port
from streams.ledger_app import prepare_topics
from tests.integration.test_ledger_e2e import MqttPub, Reader, start, stop
from tests.unit.test_collector_power import FakeProc, write

pytestmark = pytest.mark.integration

SITE = """schema_version: 1
site:
  id: nb1
  shape: {{tick_s: 1.0, solar_nameplate_w: 10.0, battery_capacity_wh: 0.0,
           idle_attribution: equal}}
  grace_s: 0.3
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
apps:
  - id: a
    token: token-of-app-a
    shares: {{solar_fraction: 0.5, grid_w: 100.0}}
    containers:
      - {{id: a-1, node: n1, backend: {{type: cgroup_v1, cgroup: e/a-1, root: {root}}}}}
  - id: b
    token: token-of-app-b
    shares: {{solar_fraction: 0.5, grid_w: 100.0}}
    containers:
      - {{id: b-1, node: n1, backend: {{type: cgroup_v1, cgroup: e/b-1, root: {root}}}}}
stack:
  kafka_bootstrap: "{bootstrap}"
  mqtt_port: {mqtt}
  ledger_web_port: {web}
  state_dir: "{state}"
"""


def test_batches_flow_collector_mqtt_bridge_kafka_ledger(
    kafka_bootstrap: str, mqtt_server: Server, tmp_path: Path
) -> None:
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(SITE.format(root=tmp_path / "cg", bootstrap=kafka_bootstrap,
                                    mqtt=mqtt_server.port, web=free_port(),
                                    state=tmp_path / "state"))  # fmt: skip
    cfg = load_config(cfg_path)
    prepare_topics(cfg, kafka_bootstrap)
    cpu = {"a-1": 0, "b-1": 0}

    def set_cpu() -> None:
        write(tmp_path / "cg/cpuacct/e/a-1/cpuacct.usage", str(cpu["a-1"] * 10**8))
        write(tmp_path / "cg/cpuacct/e/b-1/cpuacct.usage", str(cpu["b-1"] * 10**8))

    set_cpu()
    ledger = start("streams.ledger", cfg_path, tmp_path / "ledger.log", "--clock", "event")
    bridge = start("streams.bridge", cfg_path, tmp_path / "bridge.log")
    entries = Reader(kafka_bootstrap, topics.LEDGER, "nb1")
    bridged = Reader(kafka_bootstrap, topics.TELEMETRY, "nb1")
    probe = MqttPub(mqtt_server.port)
    pub = Publisher("nb1", "127.0.0.1", mqtt_server.port, client_id="nb1-power")
    try:
        probe.wait_bridged(kafka_bootstrap)
        pub.start(wait_s=10)
        mono = [0.0]
        proc = FakeProc()
        coll = PowerCollector(cfg, "n1", pub, proc_stat=proc, clock=lambda: mono[0])
        sent = []
        for i in range(8):  # a batch every 0.35 s of wall (event) time: ~3 ticks close
            cpu["a-1"] += 3 + i  # tenths of CPU-s
            cpu["b-1"] += 5
            set_cpu()
            mono[0] += 1.0
            proc.value += 1.0
            s = coll.tick()
            assert s.containers == [] and len(s.batches) == 1
            sent.extend(s.batches)
            time.sleep(0.35)
        got = entries.wait(lambda xs: len({e["k"] for e in xs}) >= 2, timeout=40)
        def batches(xs: list[dict]) -> list[dict]:
            return [m for m in xs if m.get("kind") == "node_batch"]

        fwd = bridged.wait(lambda xs: len(batches(xs)) >= len(sent), timeout=20)
        assert [m["seq"] for m in batches(fwd)] == [b.seq for b in sent]
        assert {m.get("kind") for m in fwd} == {"node", "node_batch"}  # none per container
        assert {m["batch_version"] for m in batches(fwd)} == {2}  # the collector's default
        by_k: dict[int, dict[str, dict]] = {}
        for e in got:
            by_k.setdefault(e["k"], {})[e["app"]] = e
        first = {c: j for _, c, _, j in sent[0].rows()}
        for k, apps in sorted(by_k.items()):
            # the newest batch stamped in or before tick k: the ledger's counter at k
            last = [b for b in sent if int(b.time.timestamp()) <= k][-1]
            for _, c, _, j in last.rows():
                app = apps[c[0]]
                booked = app["cumulative"]["containers"][c]["energy_mj"]
                assert booked == j_to_mj(j) - j_to_mj(first[c]), (k, c, j)
        assert any(
            a["cumulative"]["containers"]["a-1"]["energy_mj"] > 0 for a in by_k[max(by_k)].values()
            if a["app"] == "a"
        )  # fmt: skip
    finally:
        pub.close(flush_s=1.0)
        probe.close()
        entries.close()
        bridged.close()
        stop(bridge)
        stop(ledger)
