"""``ecovisor status``'s apps table (from canned ledger state views) and
``ecovisor export --plot`` (a PNG of canned ledger entries), without servers."""

from __future__ import annotations

import json
import struct
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ecovisor.api.state_source import live_state_from_view
from ecovisor.cli import export as export_cli
from ecovisor.cli import status_apps
from ecovisor.cli.export_plot import PANELS, plot_entries
from ecovisor.cli.main import app
from ecovisor.contract.config_file import load_config
from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.state import SiteTickInput
from ecovisor.core.tick import initial_site_state, site_step
from ecovisor.embedded import stack

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-site.yaml"
runner = CliRunner()
KEY = "internal-key-that-must-never-be-printed"

TICK = {
    "tick_s": 1.0, "next_solar_w": 0.9, "solar_w": 0.894, "grid_w": 0.25,
    "grid_carbon_g_per_kwh": 184.9, "battery_charge_level_wh": 6.0,
    "battery_discharge_rate_w": 0.125, "battery_charge_rate_setting_w": 0.0,
    "battery_max_discharge_setting_w": 1.0, "app_power_w": 1.269, "unserved_w": 0.0,
    "carbon_g": 0.0000128,
    "containers": {"web-1": {"power_w": 0.7}, "web-2": {"power_w": 0.569, "suspended": True}},
}  # fmt: skip


def view(app_id: str) -> dict[str, Any]:
    return {
        "app": app_id, "site": "demo", "tick": 1795326924, "time": "2026-11-22T05:55:25+00:00",
        "tick_s": 1.0, "tick_data": TICK, "cumulative": {"energy_j": 733.9, "carbon_g": 0.0421},
    }  # fmt: skip


def test_apps_table_renders_the_latest_tick_of_each_app() -> None:
    rows = [
        status_apps.AppRow("web", state=live_state_from_view("web", view("web"))),
        status_apps.AppRow("batch", error="ledger: unknown app 'batch'"),
    ]
    out = status_apps.render(rows, width=160)
    assert "apps (latest tick)" in out
    web = next(ln for ln in out.splitlines() if "│ web " in ln)
    cells = [c.strip() for c in web.strip("│").split("│")]
    assert cells == [
        "web", "05:55:25", "1.269", "0.25", "0.894", "0.125", "6", "0.000013", "0.0421",
        "2 (1 suspended)",
    ]  # fmt: skip
    assert "unknown app 'batch'" in out
    assert status_apps.unanswered(rows) is None
    down = [status_apps.AppRow("web", error="ledger state views not reachable at X")]
    assert status_apps.unanswered(down) == (
        "apps: the ledger's state views did not answer (ledger state views not reachable at X)"
    )


def test_views_are_read_with_the_internal_key_of_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = load_config(DEMO)
    monkeypatch.delenv(cfg.site.internal_key_env, raising=False)
    cfg = cfg.model_copy(update={"site": cfg.site.model_copy(update={"internal_key": None})})
    assert status_apps.views_key(cfg, tmp_path) is None
    assert not (tmp_path / "internal.key").exists()  # status never makes one
    (tmp_path / "internal.key").write_text(KEY + "\n")
    assert status_apps.views_key(cfg, tmp_path) == KEY
    monkeypatch.setenv(cfg.site.internal_key_env, "from-the-env-key")
    assert status_apps.views_key(cfg, tmp_path) == "from-the-env-key"


def _canned_views(monkeypatch: pytest.MonkeyPatch, seen: list[str]) -> None:
    """httpx answers like the ledger's views: only with the bearer key."""

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers.get("authorization", ""))
        if req.headers.get("authorization") != f"Bearer {KEY}":
            return httpx.Response(401, json={"error": "missing or bad internal key"})
        app_id = req.url.path.rsplit("/", 1)[1]
        if app_id == "batch":  # a view that is not JSON: a row saying so, not a crash
            return httpx.Response(200, text="[not json]")
        return httpx.Response(200, json=view(app_id))

    real = httpx.AsyncClient

    def client(*a: Any, **kw: Any) -> httpx.AsyncClient:
        return real(*a, transport=httpx.MockTransport(handler), **kw)

    monkeypatch.setattr(httpx, "AsyncClient", client)


def _running_stack(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, healthy: bool) -> None:
    info = {"name": "ledger", "statename": "RUNNING" if healthy else "FATAL", "pid": 1,
            "description": "", "restarts": 0}  # fmt: skip
    monkeypatch.setattr(stack, "is_running", lambda sd: True)
    monkeypatch.setattr(stack, "process_info", lambda sd: [info])
    monkeypatch.setattr(stack, "read_state", lambda sd: {"config": str(DEMO), "skipped": []})
    (tmp_path / "internal.key").write_text(KEY + "\n")
    cfg = load_config(DEMO)
    monkeypatch.delenv(cfg.site.internal_key_env, raising=False)
    monkeypatch.delenv("ECOVISOR_CONFIG", raising=False)


@pytest.mark.parametrize("healthy", [True, False])
def test_status_shows_the_apps_after_the_processes_and_keeps_the_exit_code(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, healthy: bool
) -> None:
    _running_stack(monkeypatch, tmp_path, healthy)
    seen: list[str] = []
    _canned_views(monkeypatch, seen)
    cfg = load_config(DEMO)
    if cfg.site.internal_key:  # the demo's literal key would win over internal.key
        monkeypatch.setattr(status_apps, "internal_key", lambda c: None)
    r = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert r.exit_code == (0 if healthy else 1), r.output
    lines = r.output.splitlines()
    assert lines[1].split()[:2] == ["ledger", "RUNNING" if healthy else "FATAL"]
    verdict = lines.index("healthy" if healthy else "NOT healthy")
    assert "apps (latest tick)" in "\n".join(lines[verdict:])
    for a in cfg.apps:
        assert any(ln.startswith(f"│ {a.id} ") for ln in lines), r.output
        assert a.token not in r.output
    assert "unreadable view: JSONDecodeError" in r.output
    assert seen and all(h == f"Bearer {KEY}" for h in seen)
    assert KEY not in r.output

    r = runner.invoke(app, ["status", "--state-dir", str(tmp_path), "--no-apps"])
    assert r.exit_code == (0 if healthy else 1)
    assert "apps" not in r.output and len(seen) == len(cfg.apps)


def test_status_says_so_in_one_line_when_the_views_do_not_answer(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _running_stack(monkeypatch, tmp_path, healthy=True)
    monkeypatch.setattr(status_apps, "VIEWS_TIMEOUT_S", 0.5)
    cfg = load_config(DEMO)
    port_closed = cfg.model_copy(
        update={"stack": cfg.stack.model_copy(update={"ledger_web_port": 9})}
    )
    monkeypatch.setattr("ecovisor.contract.config_file.load_config", lambda p: port_closed)
    r = runner.invoke(app, ["status", "--state-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert r.output.splitlines()[-1].startswith("apps: the ledger's state views did not answer")
    assert "│" not in r.output and KEY not in r.output


def entries(n: int = 30) -> list[dict[str, Any]]:
    shape = SiteShape(tick_s=1, solar_nameplate_w=2, battery_capacity_wh=1)
    shares = {"web": AppShare(solar_fraction=1.0, battery_capacity_wh=1, grid_w=2.0)}
    st = initial_site_state(shape, shares, site="demo")
    out = []
    for k in range(1000, 1000 + n):
        st, res = site_step(shape, shares, st, SiteTickInput(
            k=k, t_start=float(k), site_solar_mj=100 * (k % 10), intensity_g_per_kwh=100.0 + k % 7,
            demand_mj={"web": {"web-1": 900 + 50 * (k % 4)}}))  # fmt: skip
        out.append(json.loads(res.entries["web"].model_dump_json()))
    return out


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_with_one_panel_per_quantity(tmp_path: Path) -> None:
    out = tmp_path / "web.png"
    assert plot_entries(entries(), out, "web") == PANELS == 4
    w, h = png_size(out)
    assert w > 500 and h > 500
    with pytest.raises(ValueError):
        plot_entries([], tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()


def test_export_plot_option_writes_the_png_of_the_range(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    raw = [json.dumps(e).encode() for e in entries()]
    monkeypatch.setattr(export_cli, "read_ledger", lambda bootstrap: iter(raw))
    out = tmp_path / "range.png"
    t = lambda s: datetime.fromtimestamp(s, UTC).isoformat()  # noqa: E731
    args = ["export", "--app", "web", "--from", t(1010), "--to", t(1020), "--bootstrap", "x:1"]
    r = runner.invoke(app, [*args, "--plot", str(out)])
    assert r.exit_code == 0, r.output
    assert r.output == f"wrote {out}: 10 ticks\n"
    png_size(out)
    empty = ["export", "--app", "nope", "--from", t(1010), "--to", t(1020), "--bootstrap", "x:1"]
    r = runner.invoke(app, [*empty, "--plot", str(tmp_path / "none.png")])
    assert r.exit_code == 1 and "nothing to plot" in r.output
    assert not (tmp_path / "none.png").exists()


def test_status_says_whether_the_ledger_serves_the_site() -> None:
    import http.server
    import threading

    answers: list[tuple[int, bytes]] = []

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802  (http.server's name)
            status, body = answers.pop(0)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            if body == b"trickle":  # a slow server: each read within its timeout
                for _ in range(20):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.3)
                return
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Ready)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}"
    cfg = load_config(DEMO)
    try:
        answers.append((200, b'{"ready":true,"reason":null,"partitions":1,"sites":1}'))
        assert status_apps.ledger_readiness(cfg, url) == "ledger: ready (1 site)"
        answers.append((200, b'{"ready":true,"reason":null,"partitions":0,"sites":0}'))
        assert "owns no site" in status_apps.ledger_readiness(cfg, url)
        answers.append((503, b'{"ready":false,"reason":"joining the consumer group"}'))
        assert (status_apps.ledger_readiness(cfg, url)
                == "ledger: NOT ready: joining the consumer group")  # fmt: skip
        answers.append((200, b"<html>"))
        assert "did not answer (JSONDecodeError)" in status_apps.ledger_readiness(cfg, url)
        answers.append((200, b" " * 70_000 + b"{}"))  # bounded: never read whole
        assert "more than 65536 bytes" in status_apps.ledger_readiness(cfg, url)
        answers.append((200, b"trickle"))  # one byte every 0.3 s: cut at the deadline
        t0 = time.monotonic()
        said = status_apps.ledger_readiness(cfg, url, 1.0)
        assert "within 1 s" in said and time.monotonic() - t0 < 2.5, said
    finally:
        srv.shutdown()
    assert "did not answer" in status_apps.ledger_readiness(cfg, "http://127.0.0.1:9", 0.5)
