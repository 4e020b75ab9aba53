"""History sink against the real victoria-metrics binary: ledger entries produced by the
ledger's own code go through ``python -m streams.history`` (influxdb-client) and are read
back with the VictoriaMetrics export API."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from ecovisor.adapters.kafka import create_topics
from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from ecovisor.embedded.servers import (
    Server,
    free_port,
    victoria_metrics_command,
    victoria_metrics_path,
)
from streams.ledger_worker import SiteLedger
from tests.integration.test_ledger_e2e import SCRIPT, T0, site_yaml, start, stop

pytestmark = pytest.mark.integration


@pytest.mark.skipif(victoria_metrics_path() is None, reason="victoria-metrics not installed")
def test_history_to_victoria_metrics(kafka_bootstrap: str, tmp_path: Path) -> None:
    from kafka import KafkaProducer

    vm_port = free_port()
    cmd = victoria_metrics_command(vm_port, tmp_path / "vm")
    assert cmd is not None
    vm = Server(cmd, vm_port, tmp_path / "vm.log").start()
    text = site_yaml(kafka_bootstrap, 1, 2, tmp_path / "state").replace("id: s1", "id: hist1")
    text += f"  timeseries: victoria-metrics\n  victoria_metrics_port: {vm_port}\n"
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    create_topics(kafka_bootstrap, [topics.LEDGER])
    # real ledger entries: the scripted ticks through the ledger's own accounting
    led = SiteLedger.new(cfg)
    outs = []
    for m in SCRIPT:  # event-time clock, as the worker runs it
        led.clock.offer(m.model_copy(update={"site": "hist1"}))
        outs += led.close(led.clock.watermark_us or 0)[0]
    entries = [o for o in outs if o.topic == topics.LEDGER]
    assert len(entries) == 4
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for o in entries:
        prod.send(topics.LEDGER, o.value, key=o.key)
    prod.flush()
    prod.close()
    hist = start("streams.history", cfg_path, tmp_path / "history.log")
    try:
        base = f"http://127.0.0.1:{vm_port}"
        series: dict[str, dict[str, list[float]]] = {}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            httpx.get(f"{base}/internal/force_flush", timeout=5)
            r = httpx.get(
                f"{base}/api/v1/export",
                params={"match[]": '{__name__=~"ecovisor_.*",site="hist1"}'},
                timeout=5,
            )
            series = {}
            for line in r.text.splitlines():
                d = json.loads(line)
                m = d["metric"]
                key = m["__name__"] + ":" + m.get("container", m["app"])
                series[key] = dict(zip(d["timestamps"], d["values"], strict=True))
            if "ecovisor_app_demand_j:a" in series and len(series["ecovisor_app_demand_j:a"]) == 2:
                break
            time.sleep(0.5)
        k0_ms, k1_ms = int(T0 * 1000), int(T0 * 1000) + 1000
        # the hand-computed values of the e2e test, read back from victoria-metrics
        assert series["ecovisor_app_demand_j:a"] == {k0_ms: 4.0, k1_ms: 6.0}
        assert series["ecovisor_app_demand_j:b"] == {k0_ms: 2.0, k1_ms: 1.0}
        assert series["ecovisor_app_grid_j:a"] == {k0_ms: 4.0, k1_ms: 1.0}
        assert series["ecovisor_app_carbon_g:a"][k0_ms] == pytest.approx(333e-6)
        assert series["ecovisor_app_cum_energy_j:a"][k1_ms] == 10.0
        assert series["ecovisor_container_energy_j:a-1"] == {k0_ms: 4.0, k1_ms: 6.0}
    finally:
        stop(hist)
        vm.stop()
