"""Readable `ecovisor tail ledger` lines, from a real entry of the core."""

import json

from ecovisor.cli.format import format_record
from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.state import SiteTickInput
from ecovisor.core.tick import initial_site_state, site_step


def test_ledger_line_shows_flows_as_mean_power() -> None:
    shape = SiteShape(tick_s=10, solar_nameplate_w=10, battery_capacity_wh=10, grid_limit_w=50)
    shares = {"web": AppShare(solar_fraction=1.0, battery_capacity_wh=10, grid_w=20)}
    st = initial_site_state(shape, shares, site="s")
    inp = SiteTickInput(k=7, t_start=70.0, site_solar_mj=20_000, intensity_g_per_kwh=360.0,
                        demand_mj={"web": {"web-1": 50_000}})  # fmt: skip
    _, res = site_step(shape, shares, st, inp)
    line = format_record("ledger", res.entries["web"].model_dump_json().encode())
    # 2 W of solar to load; the battery starts at its reserve ("empty"), so the 3 W
    # deficit comes from the grid
    assert line.startswith("1970-01-01T00:01:10+00:00 s/web k=7 demand_w=5 ")
    assert "solar_w=2+0b" in line and "grid_w=3+0b" in line and "unserved_w=0" in line
    # 30 J of grid at 360 g/kWh = 3 mg
    assert "carbon_mg=3 " in line


def test_unbalanced_ledger_record_is_shown_raw_not_trusted() -> None:
    shape = SiteShape(tick_s=1)
    shares = {"a": AppShare()}
    _, res = site_step(shape, shares, initial_site_state(shape, shares, site="s"),
                       SiteTickInput(k=1, t_start=1.0, site_solar_mj=0,
                                     intensity_g_per_kwh=1.0, demand_mj={"a": {"c": 5}}))
    obj = json.loads(res.entries["a"].model_dump_json())
    obj["flows"]["unserved"] += 1  # tampered: no longer balances
    line = format_record("ledger", json.dumps(obj).encode())
    assert "demand_w=" not in line and "flows=" in line
