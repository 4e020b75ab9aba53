"""SCI per app, (E·I + M) / R: the site's optional ``embodied`` section (strict, bounded,
node checked), each app's resource share, ``GET /v1/apps/{app}/sci`` (values, tenant
isolation, 422 shapes), the client's ``get_app_sci`` and ``ecovisor sci``. In-memory API
doubles."""

from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from ecovisor.api.app import create_app
from ecovisor.api.state_source import Counters
from ecovisor.cli.main import app as cli
from ecovisor.client import EcovisorClient
from ecovisor.contract.config_file import ConfigError, parse_config
from ecovisor.core.sci import SECONDS_PER_YEAR
from tests.fakes.api import InMemoryBus, InMemoryStateSource, serve
from tests.fakes.sites import BATCH_TOKEN, TWO_APPS, WEB_TOKEN

# TWO_APPS with a second web container and a server and a rack switch to share
EMBODIED = TWO_APPS.replace(
    "  nodes: [{id: n1, cores: 2}]\n",
    "  nodes: [{id: n1, cores: 2}]\n"
    "  embodied:\n"
    "    hardware:\n"
    "      - {name: server, node: n1, embodied_kg: 1000, lifetime_years: 4}\n"
    "      - {name: switch, embodied_kg: 100, lifetime_years: 5, share: equal}\n",
).replace(
    "      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-1}}\n",
    "      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-1}}\n"
    "      - {id: web-2, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-2}}\n",
)
T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
HOUR = 3600.0
Q = {"t1": T0.isoformat(), "t2": (T0 + timedelta(hours=1)).isoformat()}


def m_g(kg: float, years: float, share: float, seconds: float = HOUR) -> float:
    return kg * 1000 * seconds / (years * SECONDS_PER_YEAR) * share


def test_embodied_shares_by_containers_and_equally() -> None:
    cfg = parse_config(EMBODIED)
    web = {h.name: h.resource_share for h in cfg.embodied_shares("web")}
    batch = {h.name: h.resource_share for h in cfg.embodied_shares("batch")}
    assert web == {"server": pytest.approx(2 / 3), "switch": 0.5}
    assert batch == {"server": pytest.approx(1 / 3), "switch": 0.5}
    assert parse_config(TWO_APPS).embodied_shares("web") == []


@pytest.mark.parametrize(
    ("hardware", "why"),
    [
        ("{name: s, node: n9, embodied_kg: 1, lifetime_years: 4}", "unknown node 'n9'"),
        ("{name: s, embodied_kg: -1, lifetime_years: 4}", "embodied_kg"),
        ("{name: s, embodied_kg: 1, lifetime_years: 0}", "lifetime_years"),
        ("{name: s, embodied_kg: 1, lifetime_years: 4, share: cpu}", "share"),
        ("{name: s, embodied_kg: 1, lifetime_years: 4, watts: 3}", "watts"),
    ],
)
def test_embodied_section_is_strict(hardware: str, why: str) -> None:
    bad = TWO_APPS.replace(
        "  nodes: [{id: n1, cores: 2}]\n",
        f"  nodes: [{{id: n1, cores: 2}}]\n  embodied: {{hardware: [{hardware}]}}\n",
    )
    with pytest.raises(ConfigError, match=why):
        parse_config(bad)


@pytest.fixture()
def state() -> InMemoryStateSource:
    s = InMemoryStateSource()
    for app, carbon in (("web", 0.5), ("batch", 9.0)):
        s.counter_values[app] = Counters(
            app=app, t1=T0, t2=T0 + timedelta(hours=1), energy_j=7200.0, carbon_g=carbon
        )
    return s


@pytest.fixture()
def tc(state: InMemoryStateSource):
    with TestClient(create_app(parse_config(EMBODIED), state, InMemoryBus())) as c:
        yield c


def h(token: str = WEB_TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_sci_is_operational_plus_embodied_per_unit(tc) -> None:
    r = tc.get("/v1/apps/web/sci", params={**Q, "functional_units": 4}, headers=h())
    assert r.status_code == 200, r.text
    b = r.json()
    m = m_g(1000, 4, 2 / 3) + m_g(100, 5, 0.5)
    assert b["app"] == "web" and b["interval_s"] == HOUR and b["energy_j"] == 7200.0
    assert b["operational_g"] == 0.5
    assert b["embodied_g"] == pytest.approx(m, abs=2e-6)  # µg rounding per piece
    assert b["sci_g_per_unit"] == pytest.approx((0.5 + m) / 4, abs=1e-6)
    assert [x["name"] for x in b["hardware"]] == ["server", "switch"]
    assert sum(x["embodied_g"] for x in b["hardware"]) == pytest.approx(b["embodied_g"])
    # R defaults to 1
    one = tc.get("/v1/apps/web/sci", params=Q, headers=h()).json()
    assert one["sci_g_per_unit"] == pytest.approx(0.5 + m, abs=1e-6)


def test_sci_isolation_and_refusals(tc) -> None:
    assert tc.get("/v1/apps/web/sci", params=Q).status_code == 401
    r = tc.get("/v1/apps/web/sci", params=Q, headers=h(BATCH_TOKEN))
    assert r.status_code == 403 and "9.0" not in r.text
    assert tc.get("/v1/apps/batch/sci", params=Q, headers=h()).status_code == 403
    for bad, loc in (({"functional_units": 0}, "functional_units"),
                     ({"t2": Q["t1"]}, "t2"), ({"t1": "yesterday"}, "t1")):  # fmt: skip
        r = tc.get("/v1/apps/web/sci", params={**Q, **bad}, headers=h())
        assert r.status_code == 422, bad
        [item] = r.json()["detail"]
        assert set(item) == {"loc", "msg", "type"} and item["loc"] == ["query", loc]


def test_sci_without_counters_is_503(state: InMemoryStateSource) -> None:
    del state.counter_values["web"]
    with TestClient(create_app(parse_config(EMBODIED), state, InMemoryBus())) as c:
        assert c.get("/v1/apps/web/sci", params=Q, headers=h()).status_code == 503


def test_client_and_cli(state: InMemoryStateSource) -> None:
    with serve(create_app(parse_config(EMBODIED), state, InMemoryBus())) as url:
        with EcovisorClient(url, WEB_TOKEN) as c:
            r = c.get_app_sci(T0, T0 + timedelta(hours=1), functional_units=2)
        assert r["operational_g"] == 0.5 and r["functional_units"] == 2
        args = ["sci", "--api", url, "--t1", Q["t1"], "--t2", Q["t2"], "-r", "2"]
        out = CliRunner().invoke(cli, args, env={"ECOVISOR_TOKEN": WEB_TOKEN})
        assert out.exit_code == 0, out.output
        assert f"SCI                {r['sci_g_per_unit']:.6g} gCO2eq/unit" in out.output
        # the token names the app: batch's token reads batch's SCI, never web's
        other = CliRunner().invoke(cli, [*args, "--json"], env={"ECOVISOR_TOKEN": BATCH_TOKEN})
        assert other.exit_code == 0 and '"app": "batch"' in other.output
        assert '"operational_g": 9.0' in other.output
        bad = CliRunner().invoke(cli, args, env={"ECOVISOR_TOKEN": "not-a-token"})
        assert bad.exit_code == 1 and "error: 401" in bad.output


@pytest.mark.parametrize(
    ("value", "why"),
    [("nope", "is not an ISO 8601 time"), ("2024-06-01T12:00:00", "has no time zone")],
)
def test_cli_refuses_a_bad_time_with_a_usage_error(value: str, why: str) -> None:
    """An unparsable --t1 raised a traceback (exit 1)."""
    out = CliRunner().invoke(cli, ["sci", "--api", "http://127.0.0.1:9", "--t1", value,
                                   "--t2", Q["t2"]], env={"ECOVISOR_TOKEN": WEB_TOKEN})  # fmt: skip
    assert out.exit_code == 2 and why in out.output, out.output
