"""Prometheus and Grafana in docker-compose.yml, checked statically (no Docker engine
here): Prometheus scrapes the ledger's and the API's /metrics at the compose site's ports
from inside the ledger's network namespace (where they listen), with the embedded stack's
job names; Grafana's provisioned data source is that Prometheus, and every query of the
provisioned dashboard names only metrics the code exports and docs/metrics.md documents.
tests/integration/test_metrics_scrape.py runs the dashboard's queries on a real
victoria-metrics scraping the real ledger."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from ecovisor.contract.config import load_config
from ecovisor.embedded.servers import API_SCRAPE_JOB, LEDGER_SCRAPE_JOB

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SITE = ROOT / "deploy" / "compose-site.yaml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "ecovisor-site.json"
METRIC = re.compile(r"\becovisor_[a-z_]+")
# the histogram's series carry suffixes its documented name does not
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def _services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"]


def dashboard_queries() -> list[str]:
    """Every PromQL expression of the dashboard: panel targets and template queries."""
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    exprs += [v["definition"] for v in dash["templating"]["list"]]
    return exprs


def _base(name: str) -> str:
    for suffix in HISTOGRAM_SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_prometheus_scrapes_the_ledger_and_the_api_in_the_ledgers_namespace() -> None:
    services = _services()
    prom = services["prometheus"]
    assert prom["network_mode"] == "service:ledger"  # both listen on its 127.0.0.1
    # and so does Prometheus: its answers name every app's energy, so no other
    # container (an app's own policy among them) may query it
    assert "--web.listen-address=127.0.0.1:9090" in prom["command"]
    assert not any("9090" in str(p) for s in services.values() for p in s.get("ports", []))
    assert any("deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml" in v
               for v in prom["volumes"])  # fmt: skip
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    cfg = load_config(SITE)
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    assert set(jobs) == {LEDGER_SCRAPE_JOB, API_SCRAPE_JOB}
    targets = {n: j["static_configs"][0]["targets"] for n, j in jobs.items()}
    assert targets[LEDGER_SCRAPE_JOB] == [f"127.0.0.1:{cfg.stack.ledger_web_port}"]
    assert targets[API_SCRAPE_JOB] == [f"127.0.0.1:{cfg.stack.api_port}"]
    # no internal key in the compose site: an unauthenticated scrape is what the ledger
    # accepts (with one, the job would need its bearer_token_file)
    assert cfg.site.internal_key is None
    assert "bearer_token_file" not in jobs[LEDGER_SCRAPE_JOB]


def test_grafana_reads_that_prometheus_and_provisions_the_dashboard() -> None:
    services = _services()
    graf = services["grafana"]
    assert graf["image"].startswith("grafana/grafana:")
    assert graf["network_mode"] == "service:ledger"  # reaches Prometheus on the loopback
    assert graf["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    mounts = " ".join(graf["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in mounts
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/ecovisor.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["url"] == "http://127.0.0.1:9090" and source["type"] == "prometheus"
    # Grafana's port is published by the namespace it runs in, on the host's loopback
    assert "127.0.0.1:3000:3000" in services["ledger"]["ports"]
    prov = yaml.safe_load((GRAFANA / "provisioning/dashboards/ecovisor.yaml").read_text())
    assert prov["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    dash = json.loads(DASHBOARD.read_text())
    uids = {t["datasource"]["uid"] for p in dash["panels"] for t in p["targets"]}
    assert uids == {source["uid"]}
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)) >= 10


def test_every_dashboard_metric_is_exported_and_documented() -> None:
    code = (ROOT / "streams" / "ledger_metrics.py").read_text() + (
        ROOT / "ecovisor" / "api" / "metrics.py"
    ).read_text()
    documented = set(METRIC.findall((ROOT / "docs" / "metrics.md").read_text()))
    used = {_base(m) for q in dashboard_queries() for m in METRIC.findall(q)}
    assert len(used) >= 12
    assert used <= documented, used - documented
    # prometheus_client declares a counter without its ``_total``
    missing = {m for m in used if f'"{m.removesuffix("_total")}' not in code
               and f'"{m.removeprefix("ecovisor_").removesuffix("_total")}' not in code}
    assert not missing, f"not exported by the ledger or the API: {missing}"


def test_every_dashboard_query_is_scoped_to_the_chosen_site() -> None:
    """An operator of several sites sees one site per dashboard (the API's metrics have
    no site label: they are the API process's)."""
    for q in dashboard_queries():
        if "ecovisor_api_" in q or q.startswith("label_values(ecovisor_app_joules_total, site)"):
            continue
        assert 'site="$site"' in q, q
