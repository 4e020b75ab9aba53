"""The carbon source's published forecast (``CarbonTelemetry.forecast``) through the
ledger (``SiteLedger.forecast_view`` in every app's state view) to the API
(``GET /v1/apps/{app}/carbon_forecast``, the client's ``get_carbon_forecast``) and the
emulated providers' forecast routes (docs/emulation.md). In-memory API doubles."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from ecovisor.api.app import create_app
from ecovisor.api.state_source import LiveState
from ecovisor.client import EcovisorClient
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.telemetry import CarbonTelemetry
from ecovisor.core.tick_clock import to_us
from streams.ledger_views import state_view
from streams.ledger_worker import SiteLedger
from tests.fakes.api import InMemoryBus, InMemoryStateSource, serve
from tests.fakes.sites import BATCH_TOKEN, TWO_APPS, WEB_TOKEN
from tests.unit.test_emulation import LBS_PER_MWH, td

T = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
H = timedelta(hours=1)


def carbon(seq: int, at: datetime, forecast: list[tuple[datetime, float]]) -> CarbonTelemetry:
    return CarbonTelemetry(site="s1", time=at, source="carbon", seq=seq,
                           intensity_g_per_kwh=300.0, forecast=forecast)  # fmt: skip


def test_the_ledger_keeps_the_newest_forecast_for_every_app_view() -> None:
    led = SiteLedger.new(parse_config(TWO_APPS))
    assert state_view(led, "web")["carbon_forecast"] is None
    newer = carbon(2, T + timedelta(seconds=2), [(T + 2 * H, 150.0), (T + H, 200.0)])
    older = carbon(1, T + timedelta(seconds=1), [(T + H, 999.0)])
    for t in (newer, older):  # the older one arrives late: it does not replace it
        assert led.ingest(t, to_us(t.time.timestamp()), None) is None
    kept = state_view(led, "batch")["carbon_forecast"]
    assert kept == state_view(led, "web")["carbon_forecast"]
    assert kept["published_at"] == "2024-06-01T12:00:02+00:00" and kept["source"] == "carbon"
    assert kept["points"] == [["2024-06-01T13:00:00+00:00", 200.0],
                              ["2024-06-01T14:00:00+00:00", 150.0]]  # fmt: skip
    # a sample without a forecast keeps the last one
    led.ingest(
        carbon(3, T + timedelta(seconds=3), []), to_us((T + timedelta(seconds=3)).timestamp()), None
    )
    assert state_view(led, "web")["carbon_forecast"] == kept


def api_with(forecast: dict | None) -> TestClient:
    s = InMemoryStateSource()
    for app in ("web", "batch"):
        s.states[app] = LiveState(app=app, tick=1, time=T, data=td(300.0),
                                  view={"carbon_forecast": forecast})  # fmt: skip
    return TestClient(create_app(parse_config(TWO_APPS), s, InMemoryBus()))


KEPT = {
    "published_at": "2024-06-01T12:00:00+00:00", "source": "carbon", "signal": "marginal",
    "points": [["2024-06-01T11:00:00+00:00", 50.0],  # before the latest tick: not served
               ["2024-06-01T13:00:00+00:00", 200.0], ["2024-06-01T14:00:00+00:00", 150.0],
               ["2024-06-02T14:00:00+00:00", 100.0]],
}  # fmt: skip
WEB = {"Authorization": f"Bearer {WEB_TOKEN}"}


def test_carbon_forecast_route_and_client() -> None:
    with api_with(KEPT) as tc:
        r = tc.get("/v1/apps/web/carbon_forecast", headers=WEB)
        assert r.status_code == 200, r.text
        b = r.json()
        assert (b["app"], b["unit"], b["signal"]) == ("web", "gCO2eq/kWh", "marginal")
        assert [p["value"] for p in b["points"]] == [50.0, 200.0, 150.0, 100.0]
        other = {"Authorization": f"Bearer {BATCH_TOKEN}"}
        assert tc.get("/v1/apps/web/carbon_forecast", headers=other).status_code == 403
        assert EcovisorClient("http://testserver", WEB_TOKEN, http=tc).get_carbon_forecast() == b
    with api_with(None) as tc:
        assert tc.get("/v1/apps/web/carbon_forecast", headers=WEB).json()["points"] == []


def test_emulated_forecasts_serve_the_published_points() -> None:
    base = "/v1/apps/web/emulate"
    with api_with(KEPT) as tc:
        em = tc.get(base + "/electricitymaps/v3/carbon-intensity/forecast", headers=WEB).json()
        assert em["forecast"] == [
            {"carbonIntensity": 200.0, "datetime": "2024-06-01T13:00:00.000Z"},
            {"carbonIntensity": 150.0, "datetime": "2024-06-01T14:00:00.000Z"},
            {"carbonIntensity": 100.0, "datetime": "2024-06-02T14:00:00.000Z"},
        ]
        wt = tc.get(base + "/watttime/v3/forecast", params={"region": "X", "horizon_hours": 24},
                    headers=WEB).json()  # fmt: skip
        assert [round(p["value"] / LBS_PER_MWH, 3) for p in wt["data"]] == [200.0, 150.0]
        assert wt["meta"]["warnings"] == [] and wt["meta"]["data_point_period_seconds"] == 3600
        [ca] = tc.get(base + "/carbon-aware/emissions/forecasts/current",
                      params={"location": "eastus", "dataEndAt": "2024-06-01T23:00:00Z"},
                      headers=WEB).json()  # fmt: skip
        assert [d["rating"] for d in ca["forecastData"]] == [200.0, 150.0]
        assert ca["optimalDataPoints"] == [{"location": "eastus", "rating": 150.0,
                                            "time": "2024-06-01T14:00:00+00:00",
                                            "duration": "01:00:00"}]  # fmt: skip


def test_official_clients_read_the_published_forecast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Electricity Maps' SDK and WattTime's client parse the emulated forecasts."""
    openapi = pytest.importorskip("openapi")  # PyPI electricitymaps
    watttime = pytest.importorskip("watttime")
    from openapi.api.carbon_intensity_api import CarbonIntensityAPI

    with api_with(KEPT) as tc, serve(tc.app) as url:
        cfg = openapi.Configuration(host=url + "/v1/apps/web/emulate/electricitymaps/v3")
        cfg.api_key["authToken"] = WEB_TOKEN
        fc = CarbonIntensityAPI(openapi.ApiClient(cfg)).get_carbon_intensity_forecast(zone_key="DE")
        assert [p.carbon_intensity for p in fc.forecast] == [200.0, 150.0, 100.0]
        monkeypatch.setenv("WATTTIME_USER", "web")
        monkeypatch.setenv("WATTTIME_PASSWORD", WEB_TOKEN)
        wt = watttime.WattTimeForecast()
        wt.url_base = url + "/v1/apps/web/emulate/watttime"
        got = wt.get_forecast_json(region="CAISO_NORTH", horizon_hours=72)
        assert [round(p["value"] / LBS_PER_MWH, 3) for p in got["data"]] == [200.0, 150.0, 100.0]
        assert wt.raised_warnings == []


# -- solar: the same path, the site array's power in W ---------------------------------


def test_solar_forecast_from_a_trace_through_the_ledger_to_the_route() -> None:
    """A solar trace with ``forecast_points`` publishes its next points (a perfect
    forecast from the trace); the ledger keeps the newest; the route and the client
    serve it to every app, in W."""
    import numpy as np

    from collectors.solar import SolarCollector, TraceReplay
    from ecovisor.contract.telemetry import SolarTelemetry

    secs = np.array([0.0, 900.0, 1800.0, 2700.0])
    replay = TraceReplay(secs, np.array([0.0, 100.0, -5.0, 300.0]), 0.0, 1.0, False,
                         forecast_points=2)  # fmt: skip
    sent: list[SolarTelemetry] = []

    def publish(cls: type, source: str, **fields: object) -> SolarTelemetry:
        m = cls(site="s1", time=T, source=source, seq=len(sent), **fields)
        sent.append(m)
        return m

    clock = iter([0.0, 450.0]).__next__  # t0, then the tick at trace time 450 s
    col = SolarCollector(replay, publish, "solar", clock=clock, wall=lambda: T)
    col.tick()
    (m,) = sent
    assert m.power_w == 50.0  # interpolated between 0 and 100
    # the next two samples after the one in force, negatives read as 0 W
    assert m.forecast == [(T + timedelta(seconds=450), 100.0), (T + timedelta(seconds=1350), 0.0)]
    led = SiteLedger.new(parse_config(TWO_APPS))
    assert state_view(led, "web")["solar_forecast"] is None
    assert led.ingest(m, to_us(T.timestamp()), None) is None
    kept = state_view(led, "batch")["solar_forecast"]
    assert kept["points"] == [["2024-06-01T12:07:30+00:00", 100.0],
                              ["2024-06-01T12:22:30+00:00", 0.0]]  # fmt: skip
    assert kept["signal"] is None and kept["source"] == "solar"
    assert state_view(led, "web")["carbon_forecast"] is None  # kinds kept apart
    s = InMemoryStateSource()
    s.states["web"] = LiveState(app="web", tick=1, time=T, data=td(300.0),
                                view={"solar_forecast": kept})  # fmt: skip
    with TestClient(create_app(parse_config(TWO_APPS), s, InMemoryBus())) as tc:
        b = tc.get("/v1/apps/web/solar_forecast", headers=WEB).json()
        assert (b["unit"], b["source"]) == ("W", "solar")
        assert [p["value"] for p in b["points"]] == [100.0, 0.0]
        assert EcovisorClient("http://testserver", WEB_TOKEN, http=tc).get_solar_forecast() == b
        assert tc.get("/v1/apps/web/carbon_forecast", headers=WEB).json()["points"] == []
        other = {"Authorization": f"Bearer {BATCH_TOKEN}"}
        assert tc.get("/v1/apps/web/solar_forecast", headers=other).status_code == 403
