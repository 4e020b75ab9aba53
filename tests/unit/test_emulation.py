"""Carbon-API emulation (ecovisor/api/emulation.py, docs/emulation.md): the providers'
response shapes (field names and units as their documentation and official SDKs define
them), their auth conventions mapped to the app's token, tenant isolation and the 401 /
403 / 422 / 503 answers; then the official clients, unmodified but for their base URL:
Electricity Maps' SDK (PyPI ``electricitymaps``) and WattTime's (PyPI ``watttime``),
and the example script examples/carbon_aware_emaps.py. In-memory API doubles."""

import base64
import runpy
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from ecovisor.api.app import create_app
from ecovisor.api.emulation_signal import percentile, periods
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.notifications import TickData
from tests.fakes.api import InMemoryBus, InMemoryStateSource, app_routes, serve
from tests.fakes.sites import BATCH_TOKEN, TWO_APPS, WEB_TOKEN

ROOT = Path(__file__).resolve().parents[2]
T_END = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)  # end of the latest tick (tick 1 s)
EM = "/v1/apps/web/emulate/electricitymaps/v3/carbon-intensity"
WT = "/v1/apps/web/emulate/watttime"
CA = "/v1/apps/web/emulate/carbon-aware"
LBS_PER_MWH = 2.20462262  # per gCO2eq/kWh


def td(carbon: float, estimated: bool = False) -> TickData:
    zero = dict.fromkeys(
        ("next_solar_w", "solar_w", "grid_w", "battery_charge_level_wh",
         "battery_discharge_rate_w", "battery_charge_rate_setting_w",
         "battery_max_discharge_setting_w", "app_power_w", "unserved_w", "carbon_g"),
        0.0,
    )  # fmt: skip
    return TickData(tick_s=1.0, grid_carbon_g_per_kwh=carbon, estimated=estimated, **zero)


def entry(t: datetime, value: float, tick_s: float = 1.0) -> dict[str, Any]:
    """The fields of a ledger entry (AppLedgerEntry JSON) the emulation reads."""
    return {"t_start": t.timestamp(), "tick_s": tick_s, "intensity_g_per_kwh": value}


@pytest.fixture()
def state() -> InMemoryStateSource:
    s = InMemoryStateSource()
    s.set_tick("web", 7, T_END, td(300.0))
    s.set_tick("batch", 7, T_END, td(999.0))
    # web: two 5-minute periods in the last hour (100 then 200/400 half and half), the
    # latest tick (300) at the end; batch books something else entirely
    p0 = T_END - timedelta(minutes=10)
    s.ledgers["web"] = [
        entry(p0, 100.0, 300.0),
        entry(p0 + timedelta(minutes=5), 200.0, 150.0),
        entry(p0 + timedelta(minutes=5, seconds=150), 400.0, 150.0),
        {"app": "web", "tick": 1},  # a row without the signal's fields is skipped
    ]
    s.ledgers["batch"] = [entry(p0, 999.0, 300.0)]
    return s


@pytest.fixture()
def tc(state: InMemoryStateSource):
    with TestClient(create_app(parse_config(TWO_APPS), state, InMemoryBus())) as c:
        yield c


def bearer(token: str = WEB_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# --- Electricity Maps ---------------------------------------------------------------


def test_emaps_latest_has_the_documented_fields_and_the_booked_intensity(tc) -> None:
    r = tc.get(EM + "/latest", params={"zone": "DE"}, headers={"auth-token": WEB_TOKEN})
    assert r.status_code == 200, r.text
    assert r.json() == {
        "zone": "DE",
        "carbonIntensity": 300.0,  # gCO2eq/kWh as booked
        "datetime": "2024-06-01T11:59:59.000Z",  # start of the tick
        "updatedAt": "2024-06-01T12:00:00.000Z",
        "createdAt": "2024-06-01T12:00:00.000Z",
        "emissionFactorType": "lifecycle",
        "isEstimated": False,
        "estimationMethod": None,
        "temporalGranularity": "5_minutes",
    }
    # the bearer works too; no zone: the app id
    assert tc.get(EM + "/latest", headers=bearer()).json()["zone"] == "web"


def test_emaps_history_is_the_booked_signal_in_5_minute_periods(tc) -> None:
    r = tc.get(EM + "/history", params={"zone": "DE"}, headers={"auth-token": WEB_TOKEN})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["zone"] == "DE" and body["temporalGranularity"] == "5_minutes"
    points = [(h["datetime"], h["carbonIntensity"]) for h in body["history"]]
    assert points == [("2024-06-01T11:50:00.000Z", 100.0), ("2024-06-01T11:55:00.000Z", 300.0)]


def test_emaps_forecast_is_the_documented_empty_shape(tc) -> None:
    r = tc.get(EM + "/forecast", params={"zone": "DE"}, headers={"auth-token": WEB_TOKEN})
    assert r.status_code == 200
    assert r.json() == {"zone": "DE", "updatedAt": "2024-06-01T12:00:00.000Z", "forecast": []}


def test_emaps_auth_and_validation_answers(tc) -> None:
    assert tc.get(EM + "/latest").status_code == 401
    assert tc.get(EM + "/latest", headers={"auth-token": "not-a-token"}).status_code == 401
    r = tc.get(EM + "/latest", headers={"auth-token": BATCH_TOKEN})
    assert r.status_code == 403 and r.json() == {
        "detail": "this token belongs to app 'batch', not 'web'"
    }
    r = tc.get(EM + "/latest", params={"emissionFactorType": "x"}, headers=bearer())
    assert r.status_code == 422
    [item] = r.json()["detail"]
    assert set(item) == {"loc", "msg", "type"} and item["loc"] == ["query", "emissionFactorType"]


# --- WattTime -----------------------------------------------------------------------


def basic(user: str, password: str) -> dict[str, str]:
    raw = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_watttime_login_maps_basic_auth_to_the_app_token(tc) -> None:
    r = tc.get(WT + "/login", headers=basic("anyone", WEB_TOKEN))
    assert r.status_code == 200 and r.json() == {"token": WEB_TOKEN}
    assert tc.get(WT + "/login", headers=basic("web", "wrong-password")).status_code == 401
    assert tc.get(WT + "/login", headers=basic("web", BATCH_TOKEN)).status_code == 403


def test_watttime_signal_index_is_a_percentile_of_the_past_day(tc) -> None:
    r = tc.get(WT + "/v3/signal-index", params={"region": "CAISO_NORTH"}, headers=bearer())
    assert r.status_code == 200, r.text
    body = r.json()
    # 300 among the periods 100 and 300 plus itself: mid-rank (1 + 0.5 * 2) / 3
    assert body["data"] == [{"point_time": "2024-06-01T11:59:59+00:00", "value": 66.7}]
    meta = body["meta"]
    assert (meta["region"], meta["signal_type"], meta["units"]) == (
        "CAISO_NORTH", "co2_moer", "percentile",
    )  # fmt: skip


def test_watttime_historical_is_in_lbs_per_mwh_and_forecast_is_empty(tc) -> None:
    params = {"region": "X", "start": "2024-06-01T11:00:00Z", "end": "2024-06-01T12:00:00Z"}
    body = tc.get(WT + "/v3/historical", params=params, headers=bearer()).json()
    lbs = [pytest.approx(g * LBS_PER_MWH, abs=1e-3) for g in (100, 300)]
    assert [p["value"] for p in body["data"]] == lbs
    assert body["meta"]["units"] == "lbs_co2_per_mwh"
    assert body["meta"]["data_point_period_seconds"] == 300
    r = tc.get(WT + "/v3/forecast", params={"region": "X"}, headers=bearer())
    assert r.status_code == 200 and r.json()["data"] == []
    assert r.json()["meta"]["warnings"][0]["type"] == "NO_FORECAST"
    r = tc.get(WT + "/v3/forecast", params={"region": "X", "signal_type": "no"}, headers=bearer())
    assert r.status_code == 422
    assert tc.get(WT + "/v3/forecast", headers=bearer()).json()["detail"][0]["loc"] == [
        "query", "region",
    ]  # fmt: skip


# --- Carbon Aware SDK ---------------------------------------------------------------


def test_carbon_aware_emissions_bylocation(tc) -> None:
    r = tc.get(CA + "/emissions/bylocation", params={"location": "eastus"}, headers=bearer())
    assert r.status_code == 200, r.text
    assert r.json() == [{"location": "eastus", "time": "2024-06-01T11:59:59+00:00",
                         "rating": 300.0, "duration": "00:00:01"}]  # fmt: skip
    params = {"location": "eastus", "time": "2024-06-01T11:00:00Z"}
    rows = tc.get(CA + "/emissions/bylocation", params=params, headers=bearer()).json()
    assert [(x["rating"], x["duration"]) for x in rows] == [
        (100.0, "00:05:00"),
        (300.0, "00:05:00"),
    ]
    params["time"] = "1717243200"  # a number is not a date-time here
    assert tc.get(CA + "/emissions/bylocation", params=params, headers=bearer()).status_code == 422
    # the SDK has no auth of its own: the bearer is required anyway
    assert tc.get(CA + "/emissions/bylocation", params={"location": "x"}).status_code == 401


def test_carbon_aware_current_forecast_is_empty(tc) -> None:
    r = tc.get(CA + "/emissions/forecasts/current", params=[("location", "a"), ("location", "b")],
               headers=bearer())  # fmt: skip
    assert r.status_code == 200, r.text
    body = r.json()
    assert [f["location"] for f in body] == ["a", "b"]
    assert set(body[0]) == {"generatedAt", "requestedAt", "location", "dataStartAt", "dataEndAt",
                            "windowSize", "optimalDataPoints", "forecastData"}  # fmt: skip
    assert body[0]["forecastData"] == [] and body[0]["optimalDataPoints"] == []


# --- isolation and availability -------------------------------------------------------


def test_no_emulated_route_serves_another_apps_signal(tc) -> None:
    api = tc.app
    routes = [p for m, p in app_routes(api) if "/emulate/" in p]
    assert len(routes) == 9
    params = {"region": "r", "location": "l", "start": "2024-06-01T11:00:00Z",
              "end": "2024-06-01T12:00:00Z"}  # fmt: skip
    for path in routes:
        own = path.replace("{app}", "web")
        foreign = path.replace("{app}", "batch")
        # batch's token on web's path, and web's token on batch's path: 403, no data
        for url, h in ((own, bearer(BATCH_TOKEN)), (foreign, bearer(WEB_TOKEN)),
                       (foreign, {"auth-token": WEB_TOKEN})):  # fmt: skip
            r = tc.get(url, params=params, headers=h)
            # auth-token is Electricity Maps' header only: elsewhere it is no token at all
            want = 401 if "auth-token" in h and "electricitymaps" not in url else 403
            assert r.status_code == want, (url, h, r.status_code)
            assert "999" not in r.text
        r = tc.get(own, params=params, headers=bearer())
        assert r.status_code == 200 and "999" not in r.text, (own, r.text)


def test_no_tick_yet_is_503(state: InMemoryStateSource) -> None:
    del state.states["web"]
    with TestClient(create_app(parse_config(TWO_APPS), state, InMemoryBus())) as c:
        r = c.get(EM + "/latest", headers={"auth-token": WEB_TOKEN})
        assert r.status_code == 503 and "no state" in r.json()["detail"]


def test_periods_and_percentile() -> None:
    t = datetime(2024, 1, 1, tzinfo=UTC)
    ps = periods([entry(t, 100.0, 60.0), entry(t + timedelta(seconds=60), 200.0, 180.0),
                  entry(t + timedelta(hours=2), 50.0, 7200.0)])  # fmt: skip
    assert [(p.start, p.seconds, p.value) for p in ps] == [
        (t, 300.0, 175.0),  # (100*60 + 200*180) / 240
        (t + timedelta(hours=2), 7200.0, 50.0),  # a tick longer than 5 min: its own period
    ]
    assert percentile(5.0, []) == 50.0 and percentile(5.0, [1.0, 9.0]) == 50.0
    assert percentile(9.0, [1.0, 2.0, 3.0]) == 87.5


# --- the official clients, base URL pointed at Ecovisor ------------------------------


@pytest.fixture()
def base(state: InMemoryStateSource):
    with serve(create_app(parse_config(TWO_APPS), state, InMemoryBus())) as url:
        yield url


def test_electricity_maps_official_sdk(base: str) -> None:
    openapi = pytest.importorskip("openapi")  # PyPI electricitymaps (its generated client)
    from openapi.api.carbon_intensity_api import CarbonIntensityAPI

    cfg = openapi.Configuration(host=base + "/v1/apps/web/emulate/electricitymaps/v3")
    cfg.api_key["authToken"] = WEB_TOKEN
    api = CarbonIntensityAPI(openapi.ApiClient(cfg))
    latest = api.get_carbon_intensity_latest(zone_key="DE")
    assert (latest.zone, latest.carbon_intensity, latest.is_estimated) == ("DE", 300.0, False)
    assert latest.emission_factor_type.value == "lifecycle"
    history = api.get_carbon_intensity_history(zone_key="DE")
    assert [h.carbon_intensity for h in history.history] == [100.0, 300.0]
    assert api.get_carbon_intensity_forecast(zone_key="DE").forecast == []
    cfg.api_key["authToken"] = BATCH_TOKEN
    with pytest.raises(openapi.exceptions.ForbiddenException):
        api.get_carbon_intensity_latest(zone_key="DE")


def test_watttime_official_client(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    watttime = pytest.importorskip("watttime")
    monkeypatch.setenv("WATTTIME_USER", "web")
    monkeypatch.setenv("WATTTIME_PASSWORD", WEB_TOKEN)
    url = base + "/v1/apps/web/emulate/watttime"
    fc = watttime.WattTimeForecast()
    fc.url_base = url
    got = fc.get_forecast_json(region="CAISO_NORTH")
    assert got["data"] == [] and [w.warning_message["type"] for w in fc.raised_warnings] == [
        "NO_FORECAST"
    ]
    hist = watttime.WattTimeHistorical()
    hist.url_base = url
    [page] = hist.get_historical_jsons(
        "2024-06-01T11:00:00Z", "2024-06-01T12:00:00Z", "CAISO_NORTH"
    )
    assert [round(p["value"] / LBS_PER_MWH, 3) for p in page["data"]] == [100.0, 300.0]
    monkeypatch.setenv("WATTTIME_PASSWORD", BATCH_TOKEN)  # another app's token: 403 at login
    other = watttime.WattTimeForecast()
    other.url_base = url
    with pytest.raises(Exception, match="403"):
        other.get_forecast_json(region="CAISO_NORTH")


def test_example_script_written_for_electricity_maps(base: str, monkeypatch, capsys) -> None:
    """examples/carbon_aware_emaps.py, unchanged, with its base URL pointed at Ecovisor."""
    monkeypatch.setenv("ELECTRICITYMAPS_API_URL", base + "/v1/apps/web/emulate/electricitymaps")
    monkeypatch.setenv("ELECTRICITYMAPS_TOKEN", WEB_TOKEN)
    monkeypatch.setattr(
        sys, "argv", ["carbon_aware_emaps.py", "--zone", "DE", "--threshold", "250"]
    )
    with pytest.raises(SystemExit) as done:
        runpy.run_path(str(ROOT / "examples" / "carbon_aware_emaps.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert done.value.code == 1, out  # 300 g/kWh now is above the threshold: defer
    assert "DE: 300 gCO2eq/kWh" in out and "defer" in out
