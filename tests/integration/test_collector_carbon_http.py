"""Live carbon clients against REAL HTTP on loopback. The responses are built from each
provider's documented response format (Electricity Maps API v3 carbon-intensity
latest/forecast, WattTime API v3 login/forecast, UK Carbon Intensity API intensity and
fw24h); values are invented. No internet host is contacted."""

from __future__ import annotations

import base64
import http.server
import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from collectors.carbon import CarbonCollector, build
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.site_config import SourceConfig
from ecovisor.core.units import lbs_per_mwh_to_g_per_kwh

pytestmark = pytest.mark.integration

NOW = datetime(2024, 5, 1, 12, 7, tzinfo=UTC)


def iso(d: datetime) -> str:
    return d.strftime("%Y-%m-%dT%H:%M:%S.000Z")


class Provider(http.server.BaseHTTPRequestHandler):
    routes: dict[str, tuple[int, object]] = {}
    requests: list[tuple[str, dict[str, str]]] = []
    fail = False

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        Provider.requests.append((self.path, dict(self.headers)))
        status, body = (
            (503, {"error": "down"})
            if Provider.fail
            else self.routes.get(path, (404, {"error": "not found"}))
        )
        if callable(body):
            status, body = body(self)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def provider() -> Iterator[str]:
    Provider.routes, Provider.requests, Provider.fail = {}, [], False
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Provider)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()
    srv.server_close()


def collect(src: SourceConfig, ticks: list[float], **poll: float) -> list[dict]:
    sent: list[dict] = []
    t = [0.0]
    with httpx.Client(timeout=2) as http:
        source, poller = build(src, http)
        assert poller is not None
        for k, v in poll.items():
            setattr(poller, k, v)
        coll = CarbonCollector(
            source, lambda m, s, **f: sent.append(f), "c", poller, lambda: t[0], lambda: NOW
        )
        for x in ticks:
            t[0] = x
            coll.tick()
    return sent


def test_electricitymaps_latest_and_forecast(provider: str, monkeypatch) -> None:
    monkeypatch.setenv("EM_KEY", "secret-key")
    Provider.routes = {
        "/v3/carbon-intensity/latest": (
            200,
            {
                "zone": "DE",
                "carbonIntensity": 302,
                "datetime": iso(NOW.replace(minute=0)),
                "updatedAt": iso(NOW),
                "emissionFactorType": "lifecycle",
                "isEstimated": True,
                "estimationMethod": "TIME_SLICER_AVERAGE",
            },
        ),
        "/v3/carbon-intensity/forecast": (
            200,
            {
                "zone": "DE",
                "forecast": [
                    {"carbonIntensity": 310, "datetime": iso(NOW + timedelta(hours=1))},
                    {"carbonIntensity": 280, "datetime": iso(NOW + timedelta(hours=2))},
                ],
                "updatedAt": iso(NOW),
            },
        ),
    }
    src = SourceConfig(
        type="electricitymaps",
        options={"base_url": provider + "/v3", "zone": "DE", "api_key_env": "EM_KEY"},
    )
    (msg,) = collect(src, [0.0])
    assert msg["intensity_g_per_kwh"] == 302.0 and msg["signal"] == "average"
    assert [v for _, v in msg["forecast"]] == [310.0, 280.0]
    assert not msg["stale"]
    path, headers = Provider.requests[0]
    assert "zone=DE" in path
    assert headers.get("auth-token") == "secret-key"


def test_electricitymaps_needs_key(provider: str, monkeypatch) -> None:
    monkeypatch.delenv("EM_KEY", raising=False)
    src = SourceConfig(
        type="electricitymaps",
        options={"base_url": provider, "zone": "DE", "api_key_env": "EM_KEY"},
    )
    with pytest.raises(ConfigError, match="EM_KEY"):
        build(src)


def test_watttime_login_forecast_and_token_renewal(provider: str, monkeypatch) -> None:
    monkeypatch.setenv("WT_USER", "alice")
    monkeypatch.setenv("WT_PASS", "pw")
    logins = []

    def login(h: Provider) -> tuple[int, object]:
        auth = base64.b64decode(h.headers["Authorization"].split()[1]).decode()
        logins.append(auth)
        return (200, {"token": f"tok-{len(logins)}"}) if auth == "alice:pw" else (403, {})

    def forecast(h: Provider) -> tuple[int, object]:
        if h.headers.get("Authorization") != f"Bearer tok-{len(logins)}" or len(logins) < 2:
            return 401, {"error": "expired"}  # the first token is "expired"
        start = NOW.replace(minute=5)
        return 200, {
            "data": [
                {"point_time": iso(start + timedelta(minutes=5 * i)), "value": 900.0 - i}
                for i in range(4)
            ],
            "meta": {
                "region": "CAISO_NORTH",
                "signal_type": "co2_moer",
                "units": "lbs_co2_per_mwh",
                "data_point_period_seconds": 300,
                "generated_at": iso(NOW),
            },
        }

    Provider.routes = {"/login": (200, login), "/v3/forecast": (200, forecast)}
    src = SourceConfig(
        type="watttime",
        options={
            "base_url": provider,
            "region": "CAISO_NORTH",
            "username_env": "WT_USER",
            "password_env": "WT_PASS",
        },
    )
    (msg,) = collect(src, [0.0])
    assert len(logins) == 2  # 401 -> fresh login -> retried once
    # 12:07 is inside the 12:05 point; later points are the forecast
    assert msg["intensity_g_per_kwh"] == pytest.approx(lbs_per_mwh_to_g_per_kwh(900.0))
    assert msg["signal"] == "marginal"
    assert [v for _, v in msg["forecast"]] == pytest.approx(
        [lbs_per_mwh_to_g_per_kwh(v) for v in (899.0, 898.0, 897.0)]
    )
    assert "region=CAISO_NORTH" in Provider.requests[1][0]


def test_ukci_actual_forecast_retries_and_stale(provider: str) -> None:
    half = NOW.replace(minute=0)
    Provider.routes = {
        "/intensity": (
            200,
            {
                "data": [
                    {
                        "from": half.strftime("%Y-%m-%dT%H:%MZ"),
                        "to": (half + timedelta(minutes=30)).strftime("%Y-%m-%dT%H:%MZ"),
                        "intensity": {"forecast": 266, "actual": None, "index": "moderate"},
                    }
                ]
            },
        ),
        f"/intensity/{NOW.strftime('%Y-%m-%dT%H:%MZ')}/fw24h": (
            200,
            {
                "data": [
                    {
                        "from": (half + timedelta(minutes=30 * i)).strftime("%Y-%m-%dT%H:%MZ"),
                        "to": (half + timedelta(minutes=30 * i + 30)).strftime("%Y-%m-%dT%H:%MZ"),
                        # positive: the contract refuses a negative point
                        "intensity": {"forecast": 266 - 5 * i, "actual": None, "index": "low"},
                    }
                    for i in range(48)
                ]
            },
        ),
    }
    src = SourceConfig(type="ukci", options={"base_url": provider, "poll_s": 1})
    with httpx.Client(timeout=2) as http:
        source, poller = build(src, http)
        assert poller is not None
        poller.retry_min_s, poller.retry_max_s, poller.stale_after_s = 1.0, 4.0, 5.0
        sent: list[dict] = []
        t = [0.0]
        coll = CarbonCollector(
            source, lambda m, s, **f: sent.append(f), "c", poller, lambda: t[0], lambda: NOW
        )
        coll.tick()
        assert sent[0]["intensity_g_per_kwh"] == 266.0  # forecast when actual is null
        assert len(sent[0]["forecast"]) == 48
        Provider.fail = True
        n_before = len(Provider.requests)
        for x in range(1, 12):
            t[0] = float(x)
            coll.tick()
    # backoff: retries at 1, 2 (+1), 4 (+2), 8 (+4) -> 4 requests in 11 s, not 11
    assert len(Provider.requests) - n_before == 4
    assert all(s["intensity_g_per_kwh"] == 266.0 for s in sent)
    assert [s["stale"] for s in sent] == [False] * 6 + [True] * 6
