"""The live dashboard (docs/dashboard.md) in a real headless browser: Debian's chromium
driven by playwright, against the real ledger worker and API on a real broker, fed
telemetry at wall-clock times (the fast way of tests/integration/test_policy_stack.py).

The operator's token opens the site view: the tick number shows and advances, both apps
are listed, the command log (read back from the topics) has the command sent before.
An app's token opens that app's view only: its tick advances, the other app's name is
nowhere on the page, and the API refuses that token on the operator routes and on the
other app's data. Skipped only when /usr/bin/chromium is absent."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from kafka import KafkaProducer

from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry, SolarTelemetry
from ecovisor.embedded.servers import free_port, wait_for_port
from tests.integration.e2e_helpers import start_module, stop_proc

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="no /usr/bin/chromium (Debian package "
                       "chromium; scripts/install-system-deps.sh installs it)"),
]  # fmt: skip
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


class Feeder(threading.Thread):
    """Solar 8 W, carbon 300-400 g/kWh, 3 W and 5 W per container, at wall-clock times."""

    def __init__(self, bootstrap: str, site: str, containers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.prod = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        self.site, self.containers = site, containers
        self.halt = threading.Event()

    def run(self) -> None:
        seq, t0 = 0, time.time()
        while not self.halt.is_set():
            now, el = datetime.now(UTC), time.time() - t0
            kw: dict[str, Any] = {"site": self.site, "time": now, "seq": seq}
            msgs: list[Any] = [
                SolarTelemetry(**kw, source="pv", power_w=8.0, energy_j=8.0 * el),
                CarbonTelemetry(**kw, source="co2", intensity_g_per_kwh=300 + 100 * (seq % 8) / 8),
            ]
            for i, (c, app) in enumerate(self.containers.items()):
                msgs.append(ContainerTelemetry(**kw, source=f"pm-{c}", app=app, container=c,
                                               node="n1", cpu_s=0.0, energy_j=(3 + 2 * i) * el))
            for m in msgs:
                self.prod.send(topics.TELEMETRY, m.to_json(), key=self.site.encode())
            self.prod.flush()
            seq += 1
            self.halt.wait(0.25)
        self.prod.close()


@pytest.fixture()
def site(kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict[str, str]]:
    sfx = uuid.uuid4().hex[:6]
    s, a, b = f"dash-{sfx}", f"weba-{sfx}", f"batchb-{sfx}"
    api_port = free_port()
    cfg = tmp_path / "site.yaml"
    cfg.write_text(f"""schema_version: 1
site:
  id: {s}
  shape: {{tick_s: 1.0, solar_nameplate_w: 20.0, battery_capacity_wh: 10.0}}
  grace_s: 0.3
  nodes: [{{id: n1, cores: 4}}]
operator_token: operator-{sfx}-token
apps:
  - id: {a}
    token: token-of-{a}
    shares: {{grid_w: 100.0, solar_fraction: 0.5, battery_capacity_wh: 5.0}}
    containers: [{{id: {a}-1, node: n1, backend: {{type: process, cgroup: t/{a}-1}}}}]
  - id: {b}
    token: token-of-{b}
    shares: {{grid_w: 100.0, solar_fraction: 0.5, battery_capacity_wh: 5.0}}
    containers: [{{id: {b}-1, node: n1, backend: {{type: process, cgroup: t/{b}-1}}}}]
stack:
  kafka_bootstrap: "{kafka_bootstrap}"
  api_port: {api_port}
  ledger_web_port: {free_port()}
  mqtt_port: {free_port()}
  state_dir: "{tmp_path / "state"}"
""")  # fmt: skip
    from streams.ledger import prepare_topics

    prepare_topics(load_config(cfg), kafka_bootstrap)
    procs: list[subprocess.Popen[bytes]] = [
        start_module("streams.ledger", cfg, tmp_path / "ledger.log", "--timeouts", "1"),
        start_module("ecovisor.api", cfg, tmp_path / "api.log"),
    ]
    feeder = Feeder(kafka_bootstrap, s, {f"{a}-1": a, f"{b}-1": b})
    feeder.start()
    try:
        wait_for_port(api_port, timeout=30)
        yield {"url": f"http://127.0.0.1:{api_port}", "a": a, "b": b,
               "op": f"operator-{sfx}-token", "ta": f"token-of-{a}"}  # fmt: skip
    finally:
        feeder.halt.set()
        for p in reversed(procs):
            stop_proc(p)


def _get(url: str, token: str) -> httpx.Response:
    return httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)


def _wait_ok(url: str, token: str, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        r = _get(url, token)
        if r.status_code == 200 or time.monotonic() > deadline:
            assert r.status_code == 200, r.text
            return r.json()
        time.sleep(0.2)


def _until(what: str, get: Any, pred: Any, timeout: float = 10.0) -> Any:
    """Poll ``get()`` until ``pred`` holds (from Python: the page's CSP forbids the
    string evaluation of playwright's wait_for_function)."""
    deadline = time.monotonic() + timeout
    while True:
        v = get()
        if pred(v):
            return v
        assert time.monotonic() < deadline, f"{what}: still {v!r} after {timeout} s"
        time.sleep(0.1)


def _tick_advances(page: Any) -> tuple[int, int]:
    """The tick number the page shows, then a later one it shows."""
    tick = lambda: page.text_content("#tick") or ""  # noqa: E731
    first = int(_until("a tick number", tick, str.isdigit))
    later = int(_until("a later tick", tick, lambda t: t.isdigit() and int(t) > first))
    return first, later


@pytest.mark.timeout(90)
def test_dashboard_operator_and_app_views_in_chromium(site: dict[str, str]) -> None:
    from playwright.sync_api import sync_playwright

    url, a, b, op, ta = site["url"], site["a"], site["b"], site["op"], site["ta"]
    _wait_ok(f"{url}/v1/site/tick", op)  # a tick closed for the site
    # a command of a, so the command logs have an entry (the ledger applies it itself)
    r = httpx.put(f"{url}/v1/apps/{a}/carbon_budget?wait=true&timeout=10",
                  json={"grams": 50.0, "period_s": 3600}, timeout=15,
                  headers={"Authorization": f"Bearer {ta}"})  # fmt: skip
    assert r.status_code == 200 and r.json()["status"] == "applied", r.text
    # the API: a's token is refused on every operator route and on b's data
    for path in ("/v1/site", "/v1/site/tick", "/v1/site/commands", "/v1/site/notifications",
                 "/v1/site/ticks?from=2024-01-01T00:00:00Z&to=2030-01-01T00:00:00Z"):
        assert _get(url + path, ta).status_code == 403, path
    span = "from=2024-01-01T00:00:00Z&to=2030-01-01T00:00:00Z"
    for path in ("/state", "/command_log", f"/ticks?{span}"):
        assert _get(f"{url}/v1/apps/{b}{path}", ta).status_code == 403, path
    assert _get(f"{url}/v1/site", "not-a-token-at-all").status_code == 401

    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            requested: list[str] = []
            page.on("request", lambda req: requested.append(req.url))
            page.goto(f"{url}/dashboard/")

            # the operator: the site view, live
            page.fill("#token", op)
            page.click("#login button")
            page.wait_for_selector("body[data-view=operator]", timeout=10_000)
            first, later = _tick_advances(page)
            assert later > first
            rows = page.locator("#apps tbody tr")
            assert {rows.nth(i).get_attribute("data-app") for i in range(rows.count())} == {a, b}
            _until("the command log", lambda: page.text_content("#commands") or "",
                   lambda t: a in t)  # fmt: skip
            assert "applied" in page.text_content("#commands")
            assert page.locator("canvas").count() >= 5  # uPlot draws on canvases
            assert not any(op in u for u in requested), "the token went into a URL"

            # app a's token: only a, nothing of b
            page.click("#logout")
            page.fill("#token", ta)
            page.click("#login button")
            page.wait_for_selector("body[data-view=app]", timeout=10_000)
            _tick_advances(page)
            assert page.text_content("#who") == f"app {a}"
            assert "applied" in page.text_content("#commands")
            html = page.content() + page.inner_text("body")
            assert a in html and b not in html
            assert not [u for u in requested if re.search(rf"/v1/apps/{b}\b", u)]
            assert not any(ta in u for u in requested), "the token went into a URL"
            assert errors == []
        finally:
            browser.close()
