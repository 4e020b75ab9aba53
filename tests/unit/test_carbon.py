"""Carbon booking, tracking helpers and SCI, hand-computed."""

import pytest

from ecovisor.core.carbon_limits import advance_budget, level_of, ticks_in
from ecovisor.core.sci import EmbodiedShare, embodied_ug, sci, sci_of_entries
from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.state import AppTickInput, CarbonBudget, Level
from ecovisor.core.tick import app_step, initial_app_state
from ecovisor.core.units import carbon_ug


def test_carbon_booking_unit():
    # 1 kWh = 3.6e9 mJ at 400 g/kWh = 400 g = 4e8 µg
    assert carbon_ug(3_600_000_000, 400.0) == 400_000_000
    assert carbon_ug(9, 400.0) == 1  # 9 mJ * 400 / 3600 = 1 µg
    assert carbon_ug(4, 400.0) == 0  # 0.44 µg rounds to 0
    assert carbon_ug(1_000, 0.0) == 0


def test_ticks_in():
    assert ticks_in(60, 60) == 1
    assert ticks_in(60, 7) == 9  # 63 s
    assert ticks_in(60, 1) == 60
    assert ticks_in(0.5, 1) == 1
    assert ticks_in(180, 60) == 3  # no float fuzz: 3, not 4


def test_levels():
    assert level_of(0.89, 1.0, 0.9) is Level.ok
    assert level_of(0.9, 1.0, 0.9) is Level.near
    assert level_of(1.0, 1.0, 0.9) is Level.near
    assert level_of(1.01, 1.0, 0.9) is Level.exceeded


def test_budget_period_resets_on_multiples_of_the_period():
    b = CarbonBudget(budget_g=1.0, period_s=120)  # 2 ticks of 60 s
    t = advance_budget(None, b, 10, 60, 5)
    assert (t.period_start_k, t.used_ug) == (10, 5)
    t = advance_budget(t, b, 11, 60, 5)
    assert (t.period_start_k, t.used_ug) == (10, 10)
    t = advance_budget(t, b, 15, 60, 1)  # 15 is in the period starting at 14
    assert (t.period_start_k, t.used_ug) == (14, 1)
    never = CarbonBudget(budget_g=1.0)
    t = advance_budget(None, never, 0, 60, 5)
    t = advance_budget(t, never, 10**6, 60, 5)
    assert (t.period_start_k, t.used_ug) == (0, 10)
    # changing the period starts a new one
    t = advance_budget(t, b, 10**6 + 1, 60, 7)
    assert (t.period_start_k, t.used_ug) == (10**6 + 1, 7)


def test_embodied_share():
    # 100 kg over a 1,000,000 s life, half the machine, for one hour:
    # 100e9 µg * 3600 / 1e6 * 0.5 = 180,000,000 µg = 180 g
    hw = [EmbodiedShare(name="server", embodied_kg=100, lifetime_s=1e6, resource_share=0.5)]
    assert embodied_ug(hw, 3600) == 180_000_000
    assert embodied_ug([], 3600) == 0
    four_years = EmbodiedShare.years("s", 1000, 4, 0.25)
    assert four_years.lifetime_s == 4 * 365.25 * 86_400


def test_sci():
    hw = [EmbodiedShare(name="server", embodied_kg=100, lifetime_s=1e6, resource_share=0.5)]
    r = sci(1_000_000, 3600, hw, 10)  # (1 g + 180 g) / 10 requests
    assert r.sci_g_per_unit == pytest.approx(18.1)
    assert (r.operational_ug, r.embodied_ug) == (1_000_000, 180_000_000)
    with pytest.raises(ValueError):
        sci(1, 3600, hw, 0)


def test_sci_of_ledger_entries():
    shape = SiteShape(tick_s=60)
    share = AppShare(grid_w=100)
    st = initial_app_state(share, shape, site="s", app="x")
    entries = []
    for k in range(2):
        # 900,000 mJ at 400 g/kWh = 100,000 µg per tick
        st, e = app_step(share, shape, st, AppTickInput(
            k=k, t_start=60.0 * k, solar_mj=0, intensity_g_per_kwh=400.0,
            demand_mj={"c": 900_000}))
        entries.append(e)
    hw = [EmbodiedShare(name="server", embodied_kg=100, lifetime_s=1e6, resource_share=0.5)]
    r = sci_of_entries(entries, hw, 4)
    # 120 s: M = 100e9 * 120 / 1e6 * 0.5 = 6,000,000 µg; (0.2 g + 6 g) / 4 = 1.55 g
    assert r.interval_s == 120 and r.operational_ug == 200_000
    assert r.embodied_ug == 6_000_000
    assert r.sci_g_per_unit == pytest.approx(1.55)
