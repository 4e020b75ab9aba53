"""Prometheus and Grafana in docker-compose.yml, checked statically (no Docker engine
here): Prometheus finds every replica of the scalable ledger by DNS (the service name, the
site's ledger port) and scrapes it with the internal key as bearer token, from the file the
mqtt-setup one-shot writes; it scrapes the API at its service name, with the embedded
stack's job names, and listens on its own loopback only; Grafana shares its network
namespace and its provisioned data source is that Prometheus, and every query of the
provisioned dashboard names only metrics the code exports and docs/metrics.md documents.
tests/integration/test_metrics_scrape.py runs the dashboard's queries on a real
victoria-metrics scraping the real ledger."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from ecovisor.contract.config_file import load_config
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


def _mounts(svc: dict[str, Any]) -> dict[str, str]:
    """Container path -> what is mounted there (a volume or ./file)."""
    return {v.split(":")[1]: v.split(":")[0] for v in svc.get("volumes", [])}


def test_prometheus_finds_every_ledger_replica_and_sends_the_key() -> None:
    services = _services()
    prom = services["prometheus"]
    # not in the ledger's namespace: the ledger scales (--scale ledger=N)
    assert "network_mode" not in prom
    # Prometheus listens on its own loopback: its answers name every app's energy, so no
    # other container (an app's own policy among them) may query it
    assert "--web.listen-address=127.0.0.1:9090" in prom["command"]
    assert not any("9090" in str(p) for s in services.values() for p in s.get("ports", []))
    assert _mounts(prom)["/etc/prometheus/prometheus.yml"] == "./deploy/prometheus/prometheus.yml"
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]
    cfg = load_config(SITE)
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}
    assert set(jobs) == {LEDGER_SCRAPE_JOB, API_SCRAPE_JOB}
    # every ledger replica: Docker's DNS answers the service name with one A record each
    ledger = jobs[LEDGER_SCRAPE_JOB]
    assert "static_configs" not in ledger
    (sd,) = ledger["dns_sd_configs"]
    assert sd["names"] == ["ledger"] and "ledger" in services
    assert sd["type"] == "A" and sd["port"] == cfg.stack.ledger_web_port
    # the ledger's /metrics answer 401 without the internal key: a bearer token from the
    # file mqtt-setup writes (deploy/mqtt-setup.sh) into a volume mounted read-only here
    auth = ledger["authorization"]
    assert auth.get("type", "Bearer") == "Bearer" and "credentials" not in auth
    token = Path(auth["credentials_file"])
    volume = _mounts(prom)[str(token.parent)]
    assert f"{volume}:{token.parent}:ro" in prom["volumes"]
    setup = services["mqtt-setup"]
    cmd = setup["command"]
    assert _mounts(setup)[cmd[3]] == volume  # mqtt-setup's PROMETHEUS_DIR argument
    script = (ROOT / "deploy" / "mqtt-setup.sh").read_text()
    assert f'"$prometheus_dir/{token.name}"' in script
    assert "printf '%s\\n' \"$ECOVISOR_INTERNAL_KEY\"" in script
    assert prom["depends_on"]["mqtt-setup"]["condition"] == "service_completed_successfully"
    assert "bearer_token_file" not in jobs[API_SCRAPE_JOB]  # the API's /metrics are open
    assert jobs[API_SCRAPE_JOB]["static_configs"][0]["targets"] == [f"api:{cfg.stack.api_port}"]
    # nothing else scrapes or reads the token
    holders = [n for n, s in services.items() if volume in _mounts(s).values()]
    assert sorted(holders) == ["mqtt-setup", "prometheus"]


def test_grafana_reads_that_prometheus_and_provisions_the_dashboard() -> None:
    services = _services()
    graf = services["grafana"]
    assert graf["image"].startswith("grafana/grafana:")
    assert graf["network_mode"] == "service:prometheus"  # reaches Prometheus on the loopback
    assert graf["environment"]["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    mounts = " ".join(graf["volumes"])
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning" in mounts
    assert "./deploy/grafana/dashboards:/var/lib/grafana/dashboards" in mounts
    ds = yaml.safe_load((GRAFANA / "provisioning/datasources/ecovisor.yaml").read_text())
    (source,) = ds["datasources"]
    assert source["url"] == "http://127.0.0.1:9090" and source["type"] == "prometheus"
    # Grafana's port is published by the namespace it runs in, on the host's loopback
    assert services["prometheus"]["ports"] == ["127.0.0.1:3000:3000"]
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
