"""The real victoria-metrics scrapes the real ledger's /metrics (with the internal key,
as ``ecovisor up`` configures it) and a PromQL query returns an app's energy and carbon
equal to the ledger's cumulative totals for the same ticks."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from ecovisor.embedded.servers import (
    ScrapeJob,
    Server,
    free_port,
    victoria_metrics_command,
    victoria_metrics_path,
    wait_for_port,
)
from tests.integration.test_ledger_e2e import SCRIPT, Reader, site_yaml, start, stop

pytestmark = pytest.mark.integration
SITE = "metrics1"
KEY = "0123456789abcdef0123456789abcdef"


def _query(base: str, promql: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{base}/api/v1/query", params={"query": promql, "nocache": "1"}, timeout=5)
    r.raise_for_status()
    result: list[dict[str, Any]] = r.json()["data"]["result"]
    return result


def _dashboard_queries_run(base: str, energy_j: float) -> None:
    """Every query of the Grafana dashboard (docker compose) runs on the real scrape, as
    Grafana would send it for this site and all apps: none is refused, the per-app ones
    see app a, and its energy query gives the ledger's total."""
    from tests.unit.test_compose_monitoring import dashboard_queries

    for q in dashboard_queries():
        if q.startswith("label_values("):
            continue  # a Grafana template function, not PromQL
        promql = q.replace("$site", SITE).replace("$app", ".*")
        promql = promql.replace("$__rate_interval", "1m")
        r = httpx.get(f"{base}/api/v1/query", params={"query": promql, "nocache": "1"}, timeout=5)
        assert r.status_code == 200 and r.json()["status"] == "success", (q, r.text[:300])
        if "app=~" in q and "carbon_grams_total" in q and "rate(" not in q:
            assert {x["metric"]["app"] for x in r.json()["data"]["result"]} >= {"a"}, q
    total = _query(base, f'sum(ecovisor_app_joules_total{{site="{SITE}",app=~".*"}})')
    assert float(total[0]["value"][1]) >= energy_j


@pytest.mark.skipif(
    victoria_metrics_path() is None,
    reason="victoria-metrics is not installed (scripts/install-system-deps.sh installs it)",
)
def test_victoria_metrics_scrape_of_the_ledger_equals_its_cumulative_totals(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from kafka import KafkaProducer

    from streams.ledger_app import prepare_topics

    web, vm_port = free_port(), free_port()
    text = site_yaml(kafka_bootstrap, 1, web, tmp_path / "state").replace(
        "id: s1\n", f'id: {SITE}\n  internal_key: "{KEY}"\n'
    )
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(text)
    cfg = load_config(cfg_path)
    prepare_topics(cfg, kafka_bootstrap)
    cmd = victoria_metrics_command(
        vm_port, tmp_path / "vm", [ScrapeJob("ecovisor-ledger", f"127.0.0.1:{web}", KEY)], 0.5
    )
    assert cmd is not None
    vm = Server(cmd, vm_port, tmp_path / "vm.log").start()
    ledger = start("streams.ledger", cfg_path, tmp_path / "ledger.log", "--clock", "event")
    entries = Reader(kafka_bootstrap, topics.LEDGER, SITE)
    try:
        prod = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=0)
        for m in SCRIPT:
            prod.send(topics.TELEMETRY, m.model_copy(update={"site": SITE}).to_json(),
                      key=SITE.encode())  # fmt: skip
        prod.flush()
        prod.close()
        got = entries.wait(lambda xs: len(xs) >= 4, timeout=30)
        last = {e["app"]: e for e in got}  # in tick order: the newest per app
        energy_j = last["a"]["cumulative"]["total"]["energy_mj"] / 1000
        carbon_g = last["a"]["cumulative"]["total"]["carbon_ug"] / 1e6
        assert energy_j == 10.0 and carbon_g == 402e-6  # the e2e test's hand-computed ticks
        wait_for_port(web, timeout=10)
        plain = httpx.get(f"http://127.0.0.1:{web}/metrics", timeout=5)
        assert plain.status_code == 401  # it names every app's energy: the key is needed
        base = f"http://127.0.0.1:{vm_port}"
        energy: list[dict[str, Any]] = []
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            httpx.get(f"{base}/internal/force_flush", timeout=5)
            energy = _query(base, f'sum(ecovisor_app_joules_total{{site="{SITE}",app="a"}})')
            if energy and float(energy[0]["value"][1]) == energy_j:
                break
            time.sleep(0.3)
        assert energy, "victoria-metrics has no ecovisor_app_joules_total for the site"
        assert float(energy[0]["value"][1]) == energy_j
        carbon = _query(base, f'ecovisor_app_carbon_grams_total{{site="{SITE}",app="a"}}')
        assert float(carbon[0]["value"][1]) == pytest.approx(carbon_g, rel=1e-12)
        assert carbon[0]["metric"]["job"] == "ecovisor-ledger"
        per_source = _query(base, f'ecovisor_container_joules_total{{site="{SITE}",'
                                  'container="a-1"}')  # fmt: skip
        by_source = {r["metric"]["source"]: float(r["value"][1]) for r in per_source}
        cont = last["a"]["cumulative"]["containers"]["a-1"]
        assert by_source == {s: cont[f"{s}_mj"] / 1000
                             for s in ("grid", "solar", "battery", "unserved")}  # fmt: skip
        _dashboard_queries_run(base, energy_j)
    finally:
        entries.close()
        stop(ledger)
        vm.stop()
