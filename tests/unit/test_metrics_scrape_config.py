"""``ecovisor up`` has victoria-metrics scrape the ledger's and the API's /metrics: the
plan writes ``<state_dir>/data/victoria-metrics/scrape.yaml`` and passes it with
``-promscrape.config``; the ledger's job carries the internal key from a 0600 file."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
import yaml

from ecovisor.contract.config_file import load_config
from ecovisor.embedded import servers, stack
from ecovisor.embedded.servers import scrape_interval_s

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-site.yaml"


def demo_plan(tmp: Path, mp: pytest.MonkeyPatch, vm: str | None = "/opt/vm/victoria-metrics"):
    """The demo site's plan with victoria-metrics installed at ``vm`` (None: not)."""
    mp.setattr(servers, "victoria_metrics_path", lambda: vm)
    mp.delenv("ECOVISOR_INFLUXDB_URL", raising=False)
    cfg = load_config(DEMO)
    return cfg, stack.plan(cfg, DEMO, tmp, python="py", exists=lambda _m: True)


def test_plan_points_victoria_metrics_at_both_metrics_endpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, p = demo_plan(tmp_path, monkeypatch)
    vm = {s.name: s for s in p.services}["victoria-metrics"].command
    conf = tmp_path / "data" / "victoria-metrics" / "scrape.yaml"
    assert f"-promscrape.config={conf}" in vm
    doc = yaml.safe_load(conf.read_text())
    assert doc["global"]["scrape_interval"] == "5000ms"  # Δt = 1 s: at least 5 s
    jobs = {j["job_name"]: j for j in doc["scrape_configs"]}
    assert set(jobs) == {"ecovisor-ledger", "ecovisor-api"}
    ledger, api = jobs["ecovisor-ledger"], jobs["ecovisor-api"]
    assert ledger["static_configs"][0]["targets"] == [f"127.0.0.1:{cfg.stack.ledger_web_port}"]
    assert api["static_configs"][0]["targets"] == [f"127.0.0.1:{cfg.stack.api_port}"]
    assert ledger["metrics_path"] == api["metrics_path"] == "/metrics"
    token = Path(ledger["bearer_token_file"])
    assert token.read_text() == p.env[cfg.site.internal_key_env]
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert "bearer_token_file" not in api


def test_scrape_interval_is_the_tick_within_5_and_60_seconds() -> None:
    assert [scrape_interval_s(t) for t in (0.5, 1.0, 5.0, 15.0, 300.0)] == [
        5.0, 5.0, 5.0, 15.0, 60.0,
    ]  # fmt: skip


def test_up_names_the_addresses_of_what_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg, p = demo_plan(tmp_path, monkeypatch)
    text = stack.addresses(cfg, p)
    assert f"http://127.0.0.1:{cfg.stack.api_port}/dashboard/" in text
    assert f"http://127.0.0.1:{cfg.stack.victoria_metrics_port}" in text
    cfg, p = demo_plan(tmp_path, monkeypatch, vm=None)
    assert "metrics" not in stack.addresses(cfg, p)  # not installed: not announced
