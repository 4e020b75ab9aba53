"""The dashboard's API side (docs/dashboard.md), fast and without a browser: the site's
operator token (config and auth), the operator routes (/v1/site: latest tick, range,
command log, stream) and an app's own ticks and command log, on the in-memory doubles;
a ledger entry and its tick notification give the same point; the page is served with
its CSP and vendored chart library."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from ecovisor.api.app import create_app
from ecovisor.api.dashboard_site import TickJoin, point_from_entry, point_from_tick
from ecovisor.contract import topics
from ecovisor.contract.config_file import ConfigError, load_config, parse_config
from ecovisor.contract.notifications import Notification, TickData
from reliability.fuzz_rest import tick_data
from tests.fakes.api import InMemoryBus, InMemoryStateSource, serve
from tests.fakes.sites import BATCH_TOKEN, TWO_APPS, WEB_TOKEN
from tests.unit.test_ledger_intake import Wired, carbon, container, demo, solar
from tests.unit.test_sse_resume import LogBus

OP = "operator-token-0123"
SITE = TWO_APPS + f"operator_token: {OP}\n"
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
SPAN = {"from": "2024-06-01T00:00:00Z", "to": "2024-06-02T00:00:00Z"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def lifecycle(app: str, i: int, kind: str = "command_applied") -> Notification:
    return Notification(site="s1", time=T0 + timedelta(seconds=i), app=app, type=kind,
                        command_id=f"{app}-cmd-{i}")  # fmt: skip


def tick_note(app: str, k: int, **fields: float) -> Notification:
    d = tick_data().model_copy(update=fields)
    return Notification(site="s1", time=T0 + timedelta(seconds=k), app=app, type="tick", tick=k,
                        data=d.model_dump(mode="json"))  # fmt: skip


@pytest.fixture()
def env() -> Iterator[tuple[TestClient, InMemoryStateSource, InMemoryBus]]:
    state, bus = InMemoryStateSource(), InMemoryBus()
    with TestClient(create_app(parse_config(SITE), state, bus)) as tc:
        yield tc, state, bus


# --- the operator token: configuration and auth --------------------------------------------


def test_operator_token_is_optional_bounded_and_not_an_apps_token() -> None:
    assert parse_config(TWO_APPS).operator_token is None
    cfg = parse_config(SITE)
    assert cfg.is_operator_token(OP) and not cfg.is_operator_token(WEB_TOKEN)
    assert OP not in repr(cfg)
    with pytest.raises(ConfigError, match="operator_token is also an app's token"):
        parse_config(TWO_APPS + f"operator_token: {WEB_TOKEN}\n")
    with pytest.raises(ConfigError, match="operator_token"):
        parse_config(TWO_APPS + "operator_token: short\n")


def test_operator_token_from_the_environment(tmp_path: Any, monkeypatch: Any) -> None:
    p = tmp_path / "site.yaml"
    p.write_text(TWO_APPS + "operator_token: ${ECOVISOR_TEST_OP:-operator-default-1}\n")
    assert load_config(p).operator_token == "operator-default-1"
    monkeypatch.setenv("ECOVISOR_TEST_OP", "operator-from-env-2")
    assert load_config(p).operator_token == "operator-from-env-2"


@pytest.mark.parametrize(
    ("token", "status", "detail"),
    [
        (None, 401, "missing bearer token"),
        ("nobody-knows-this", 401, "invalid token"),
        (WEB_TOKEN, 403, "this token belongs to app 'web', not to the operator"),
        (BATCH_TOKEN, 403, "this token belongs to app 'batch', not to the operator"),
    ],
)
def test_operator_routes_refuse_app_tokens_and_unknown_ones(
    env: Any, token: str | None, status: int, detail: str
) -> None:
    tc, *_ = env
    for path in ("/v1/site", "/v1/site/tick", "/v1/site/commands", "/v1/site/notifications",
                 "/v1/site/ticks"):  # fmt: skip
        r = tc.get(path, params=SPAN, headers=bearer(token) if token else {})
        assert (r.status_code, r.json()["detail"]) == (status, detail), path


def test_operator_token_is_not_an_apps_token_and_a_site_without_one_has_no_operator() -> None:
    tc = TestClient(create_app(parse_config(SITE), InMemoryStateSource(), InMemoryBus()))
    assert tc.get("/v1/apps/web", headers=bearer(OP)).status_code == 401
    assert tc.get("/v1/site", headers=bearer(OP)).status_code == 200
    plain = TestClient(create_app(parse_config(TWO_APPS), InMemoryStateSource(), InMemoryBus()))
    assert plain.get("/v1/site", headers=bearer(OP)).status_code == 401
    assert plain.get("/v1/site", headers=bearer(WEB_TOKEN)).status_code == 403


# --- the operator routes -------------------------------------------------------------------


def test_site_info_lists_every_app(env: Any) -> None:
    tc, *_ = env
    site = tc.get("/v1/site", headers=bearer(OP)).json()
    assert site["site"] == "s1" and site["grid_limit_w"] is None  # no limit: not Infinity
    assert [(a["id"], a["containers"]) for a in site["apps"]] == [
        ("web", ["web-1"]), ("batch", ["batch-1"])]  # fmt: skip


def test_site_tick_sums_the_apps_and_keeps_each(env: Any) -> None:
    tc, state, _ = env
    assert tc.get("/v1/site/tick", headers=bearer(OP)).status_code == 503  # no tick yet
    web = tick_data().model_copy(update={"solar_w": 3.0, "app_power_w": 4.0, "carbon_g": 0.25})
    batch = tick_data().model_copy(update={"solar_w": 1.5, "app_power_w": 2.0, "carbon_g": 0.5})
    state.set_tick("web", 7, T0, web)
    state.set_tick("batch", 7, T0, batch)
    p = tc.get("/v1/site/tick", headers=bearer(OP)).json()
    assert (p["tick"], p["complete"], p["solar_w"], p["app_power_w"]) == (7, True, 4.5, 6.0)
    assert p["carbon_g"] == pytest.approx(0.75)
    assert p["battery_charge_level_wh"] == 2 * web.battery_charge_level_wh
    assert p["apps"]["batch"]["app_power_w"] == 2.0 and p["apps"]["web"]["solar_w"] == 3.0
    state.set_tick("web", 8, T0 + timedelta(seconds=1), web)  # batch's tick 8 not there yet
    p = tc.get("/v1/site/tick", headers=bearer(OP)).json()
    assert (p["tick"], p["complete"], list(p["apps"])) == (8, False, ["web"])


def _ledger_run() -> tuple[Wired, int]:
    """The real ledger service (in memory) over 5 s of the demo site: solar 5 W,
    web-1 2 W, batch-1 3 W; returns it and the ticks it closed."""
    w = Wired(demo())
    msgs: list[Any] = []
    for i in range(6):
        msgs += [carbon("co2", i + 1, i), solar(i + 1, i, 5.0 * i),
                 container("web-1", i + 1, i, 2.0 * i),
                 container("batch-1", i + 1, i, 3.0 * i, app="batch")]  # fmt: skip
    w.feed(*msgs, carbon("co2", 99, 8.0))
    return w, len(w.entries())


def test_a_ledger_entry_and_its_tick_notification_give_the_same_point() -> None:
    """One rule, two sources: the range (ledger entries) and the live tick (TickData)."""
    w, n = _ledger_run()
    assert n >= 4
    notes = [Notification.model_validate_json(v) for v in w.out(topics.notifications("web"))]
    ticks = {x.tick: x for x in notes if x.type == "tick"}
    for e in w.entries("web"):
        t = ticks[e.k]
        live = point_from_tick("web", e.k, t.time, TickData.model_validate(t.data))
        assert point_from_entry(e) == live
    assert any(point_from_entry(e).app_power_w > 0 for e in w.entries("web"))
    assert any(point_from_entry(e).solar_w > 0 for e in w.entries("web"))


def test_site_ticks_and_app_ticks_from_the_ledger(env: Any) -> None:
    tc, state, _ = env
    w, _ = _ledger_run()
    for app in ("web", "batch"):
        state.ledgers[app] = [e.model_dump(mode="json") for e in w.entries(app)]
    state.ledgers["web"].append({"not": "an entry"})  # skipped, not a 500
    pts = tc.get("/v1/site/ticks", params=SPAN, headers=bearer(OP)).json()
    assert [p["tick"] for p in pts] == sorted(e.k for e in w.entries("web"))
    for p in pts:
        assert p["complete"] and set(p["apps"]) == {"web", "batch"}
        assert p["app_power_w"] == pytest.approx(sum(a["app_power_w"] for a in p["apps"].values()))
    last = tc.get("/v1/site/ticks", params={**SPAN, "limit": 2}, headers=bearer(OP)).json()
    assert last == pts[-2:]
    own = tc.get("/v1/apps/web/ticks", params=SPAN, headers=bearer(WEB_TOKEN)).json()
    assert [p["app"] for p in own] == ["web"] * len(pts)
    assert own[-1] == pts[-1]["apps"]["web"]
    r = tc.get("/v1/apps/batch/ticks", params=SPAN, headers=bearer(WEB_TOKEN))
    assert r.status_code == 403


def test_command_logs_read_back_from_the_topics(env: Any) -> None:
    tc, _, bus = env
    bus.notify(lifecycle("web", 1, "command_accepted"))
    bus.notify(tick_note("web", 1))
    bus.notify(lifecycle("web", 2, "command_rejected"))
    bus.notify(lifecycle("batch", 3))
    log = tc.get("/v1/site/commands", headers=bearer(OP)).json()
    assert [(n["app"], n["type"]) for n in log["entries"]] == [
        ("batch", "command_applied"), ("web", "command_rejected"), ("web", "command_accepted")]
    assert log["scanned"] == 4
    own = tc.get("/v1/apps/web/command_log", params={"limit": 1}, headers=bearer(WEB_TOKEN))
    assert [n["command_id"] for n in own.json()["entries"]] == ["web-cmd-2"]
    scan1 = tc.get("/v1/apps/web/command_log", params={"scan": 1}, headers=bearer(WEB_TOKEN))
    assert [n["command_id"] for n in scan1.json()["entries"]] == ["web-cmd-2"]
    r = tc.get("/v1/apps/batch/command_log", headers=bearer(WEB_TOKEN))
    assert r.status_code == 403


# --- the live site stream ------------------------------------------------------------------


def test_tick_join_sends_each_tick_once_in_order_and_an_incomplete_one_first() -> None:
    j = TickJoin(["web", "batch"])
    assert j.add(tick_note("web", 1)) == []
    [p1] = j.add(tick_note("batch", 1, app_power_w=2.0))
    assert (p1.tick, p1.complete, p1.apps["batch"].app_power_w) == (1, True, 2.0)
    assert j.add(tick_note("web", 1)) == []  # a repeat of a sent tick
    assert j.add(tick_note("web", 2)) == []  # batch's tick 2 never comes
    j.add(tick_note("web", 3))
    p2, p3 = j.add(tick_note("batch", 3))
    assert [(p.tick, p.complete) for p in (p2, p3)] == [(2, False), (3, True)]
    assert list(p2.apps) == ["web"]
    assert j.add(tick_note("batch", 2)) == []  # too late: the chart has moved on


def test_site_stream_joins_ticks_and_passes_commands() -> None:
    bus = LogBus()
    with serve(create_app(parse_config(SITE), InMemoryStateSource(), bus), 10) as url:
        events: list[tuple[str, dict[str, Any]]] = []
        with httpx.Client(timeout=httpx.Timeout(10, read=5)) as http, http.stream(
            "GET", f"{url}/v1/site/notifications", headers=bearer(OP), params={"ping_s": 0.2}
        ) as r:
            assert r.status_code == 200
            ev: dict[str, str] = {}
            deadline = time.monotonic() + 10
            for line in r.iter_lines():
                if time.monotonic() > deadline or len(events) == 3:
                    break
                if line.startswith(":"):
                    continue
                if line:
                    k, _, v = line.partition(":")
                    ev[k] = v.strip()
                    continue
                if not ev:  # the end of a keep-alive comment
                    continue
                events.append((ev["event"], json.loads(ev["data"])))
                if ev["event"] == "ready":
                    bus.emit(tick_note("web", 5), lifecycle("batch", 6), tick_note("batch", 5))
                ev = {}
    assert [e for e, _ in events] == ["ready", "command_applied", "site_tick"]
    assert events[0][1] == {"site": "s1", "apps": ["web", "batch"]}
    tick = events[2][1]
    assert (tick["tick"], tick["complete"], sorted(tick["apps"])) == (5, True, ["batch", "web"])


# --- the page ------------------------------------------------------------------------------


def test_the_page_and_its_files_are_served_with_a_strict_csp(env: Any) -> None:
    tc, *_ = env
    r = tc.get("/dashboard", follow_redirects=False)
    assert (r.status_code, r.headers["location"]) == (307, "/dashboard/")
    page = tc.get("/dashboard/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "<script>" not in page.text  # no inline script: the CSP would block it
    for src in ("static/dashboard.js", "static/vendor/uPlot.iife.min.js",
                "static/vendor/uPlot.min.css", "static/dashboard.css"):  # fmt: skip
        assert src in page.text
        got = tc.get(f"/dashboard/{src}")
        assert got.status_code == 200 and len(got.content) > 500, src
    js = tc.get("/dashboard/static/dashboard.js").text
    assert "sessionStorage" in js and "Authorization" in js and "?token" not in js
    assert "/dashboard/" not in json.dumps(tc.get("/openapi.json").json()["paths"])
