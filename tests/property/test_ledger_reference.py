"""Differential test of the ledger core against an independent reference model.

The reference (``reference_tick``) is written from the brief's "Per-tick accounting"
rules, not from the core: exact rational arithmetic (``fractions.Fraction``), no
integer rounding, no efficiency floors, one app, one tick. Random single-app sites run
random tick sequences through ``app_step``; every tick the reference is fed the core's
battery store before the tick and the settings the TEST tracked itself (queue timing:
a change accepted during tick k applies from k+1; Rc resets to 0 once the store reaches
"full"), and its flows, store after and carbon are compared with the core's integers.

Rules, as the brief states them (B store, U usable, R reserve, S solar, D demand):

- U = capacity - headroom (headroom = solar fraction x nameplate x Δt, never below 0),
  R = reserve_soc x capacity; C-rate limits: charge = min(c_rate x Wh, max_charge W),
  discharge = min(c_rate x Wh, max_discharge W), powers x Δt; efficiencies per flow.
- solar_to_load = min(S, D). The solar-side controller stores excess solar within the
  C-rate and the room (U - B) / η_c. What is left is excess (curtailed or exported).
- Rc = 0: the deficit comes from the battery up to min(Rd, share limit) and down to R
  (delivered = drawn x η_d, so at most (B - R) x η_d), then the grid up to grid_w x Δt,
  then it is unserved.
- Rc > 0: the battery does not discharge; charging aims at min(Rc, C-rate, room), solar
  first, the grid tops up; the app's grid share serves the load first.
- carbon = (grid_to_load + grid_to_battery) x I / 3600 µg per mJ.

Documented interpretations of the core followed here (docs/core.md "Rc > 0"): with
Rc > 0 the solar-side controller keeps storing excess solar up to the C-rate even when
that is more than Rc (the brief's min(Rc, C-rate, room) then binds only the grid part).

Tolerance: the core rounds each W x Δt to whole mJ (<= 0.5 mJ each) and floors
efficiency products: a charge input may exceed the exact room (U - B) / η_c by less than
1 / η_c mJ (the largest integer input whose floor(x η_c) fits), at most 3.4 mJ for the
smallest η drawn here (0.3). A flow is a min/difference of such terms, so every flow and
the store after agree within ``TOL_MJ`` = 4 mJ (3 fails: the test is tight). Carbon agrees
within the carbon of 2 x TOL_MJ plus 1 µg of rounding. Per-container flows (split of the
app's flows in proportion to demand) agree with flow x d_c / D within ``TOL_C_MJ``.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass
from fractions import Fraction

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ecovisor.core.settings import queue_change
from ecovisor.core.shares import AppShare, ExcessSolarPolicy, SiteShape
from ecovisor.core.state import (
    AppState,
    AppTickInput,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SiteTickInput,
)
from ecovisor.core.tick import app_step, initial_app_state, initial_site_state, site_step

TOL_MJ = 4
TOL_C_MJ = 10
MJ_PER_WH = 3_600_000
MIN_TICKS = 4_000


# --- the reference model (from the brief) ------------------------------------------


def Fr(x: float | int | str, d: int = 1) -> Fraction:  # noqa: N802
    """Exact rational of a configured number as written (0.3 is 3/10, not its float)."""
    return Fraction(repr(x) if isinstance(x, float) else x) / d


@dataclass(frozen=True)
class RefBattery:
    capacity: Fr
    usable: Fr
    reserve: Fr
    charge_in: Fr  # per tick, at the bus
    discharge_out: Fr  # per tick, delivered
    eta_c: Fr
    eta_d: Fr


def ref_battery(share: AppShare, shape: SiteShape) -> RefBattery | None:
    """The share's battery per the brief, or None when it is not a valid share (reserve
    above usable capacity)."""
    dt = Fr(shape.tick_s)
    cap_wh = Fr(share.battery_capacity_wh)
    capacity = cap_wh * MJ_PER_WH
    headroom = Fr(share.solar_fraction) * Fr(shape.solar_nameplate_w) * dt * 1000
    usable = max(Fr(0), capacity - headroom)
    reserve = Fr(share.reserve_soc) * capacity
    if reserve > usable:
        return None
    charge_w = Fr(share.charge_c_rate) * cap_wh
    if share.battery_max_charge_w is not None:
        charge_w = min(charge_w, Fr(share.battery_max_charge_w))
    dis_w = Fr(share.discharge_c_rate) * cap_wh
    if share.battery_max_discharge_w is not None:
        dis_w = min(dis_w, Fr(share.battery_max_discharge_w))
    return RefBattery(capacity, usable, reserve, charge_w * dt * 1000, dis_w * dt * 1000,
                      Fr(share.charge_efficiency), Fr(share.discharge_efficiency))


def reference_tick(share: AppShare, shape: SiteShape, bat: RefBattery, before: int,
                   rc_w: float, rd_w: float | None, solar: int, demand: int,
                   intensity: float) -> dict[str, Fr | bool]:
    """One app, one tick, exact arithmetic, straight from the brief's rules."""
    dt = Fr(shape.tick_s)
    b = Fr(before)
    s, d = Fr(solar), Fr(demand)
    grid_cap = Fr(share.grid_w) * dt * 1000
    s2l = min(s, d)
    spare = s - s2l
    deficit = d - s2l
    # what the battery can take at the bus this tick: C-rate and the room up to U
    room_in = max(Fr(0), (bat.usable - b) / bat.eta_c)
    can_take = min(bat.charge_in, room_in)
    s2b = min(spare, can_take)  # solar-side controller, Rc or not (documented decision)
    b2l = g2b = drawn = Fr(0)
    reserve_binds = False
    if rc_w > 0:
        target = min(Fr(rc_w) * dt * 1000, can_take)
        g2l = min(deficit, grid_cap)
        g2b = min(max(Fr(0), target - s2b), grid_cap - g2l)
    else:
        rd = bat.discharge_out if rd_w is None else min(bat.discharge_out, Fr(rd_w) * dt * 1000)
        above_reserve = max(Fr(0), b - bat.reserve)
        b2l = min(deficit, rd, above_reserve * bat.eta_d)
        reserve_binds = above_reserve * bat.eta_d + TOL_MJ < min(deficit, rd)
        drawn = b2l / bat.eta_d
        g2l = min(deficit - b2l, grid_cap)
    unserved = deficit - b2l - g2l
    charge_in = s2b + g2b
    after = b - drawn + charge_in * bat.eta_c
    i = Fr(intensity)
    return {
        "solar_to_load": s2l,
        "solar_to_battery": s2b,
        "excess": spare - s2b,
        "battery_to_load": b2l,
        "grid_to_load": g2l,
        "grid_to_battery": g2b,
        "unserved": unserved,
        "battery_loss": charge_in - charge_in * bat.eta_c + drawn - b2l,
        "after": after,
        "carbon_ug": (g2l + g2b) * i / 3600,
        "load_carbon_ug": g2l * i / 3600,
        "reserve_binds": reserve_binds,
    }


def _self_check_reference() -> None:
    """The reference reproduces docs/core.md's hand-computed table (Δt 60 s, nameplate
    100 W, app a: 0.5 of solar, 10 Wh, 20 W grid), so it encodes the same rules."""
    shape = SiteShape(tick_s=60, solar_nameplate_w=100, battery_capacity_wh=10)
    share = AppShare(solar_fraction=0.5, battery_capacity_wh=10, grid_w=20)
    bat = ref_battery(share, shape)
    assert bat is not None and bat.usable == 33_000_000 and bat.reserve == 10_800_000
    r = reference_tick(share, shape, bat, 10_800_000, 0, None, 1_500_000, 1_200_000, 400)
    assert (r["solar_to_battery"], r["excess"]) == (150_000, 150_000)
    r = reference_tick(share, shape, bat, 20_000_000, 0, None, 0, 900_000, 400)
    assert (r["battery_to_load"], r["grid_to_load"]) == (600_000, 300_000)
    r = reference_tick(share, shape, bat, 10_800_000, 0, None, 0, 1_500_000, 400)
    assert (r["grid_to_load"], r["unserved"]) == (1_200_000, 300_000)
    r = reference_tick(share, shape, bat, 20_000_000, 2.0, None, 0, 500_000, 400)
    assert (r["grid_to_load"], r["grid_to_battery"]) == (500_000, 120_000)
    r = reference_tick(share, shape, bat, 20_000_000, 2.0, None, 0, 1_150_000, 400)
    assert r["grid_to_battery"] == 50_000
    r = reference_tick(share, shape, bat, 32_900_000, 2.0, None, 0, 0, 400)
    assert (r["grid_to_battery"], r["after"]) == (100_000, 33_000_000)


# --- random single-app sites and tick sequences -------------------------------------

EFFICIENCIES = [1.0, 1.0, 0.97, 0.9, 0.75, 0.5, 0.3]
TICKS = [0.25, 1.0, 7.0, 60.0, 60.0, 300.0, 3600.0]


@st.composite
def app_sites(draw):
    dt = draw(st.sampled_from(TICKS))
    nameplate = draw(st.integers(0, 400))
    frac = draw(st.integers(0, 100)) / 100
    kind = draw(st.sampled_from(["valid", "valid", "valid", "zero", "free", "free"]))
    reserve = draw(st.sampled_from([0.0, 0.0, 0.3] if kind == "free"
                                   else [0.0, 0.1, 0.3, 0.3, 0.5, 0.9]))
    headroom_wh = frac * nameplate * dt / 3600
    if kind == "zero":
        cap = 0.0
    elif kind == "free":  # around the headroom: usable 0, or reserve above usable
        cap = round(headroom_wh * draw(st.integers(0, 150)) / 100
                    + draw(st.integers(0, 100)) / 100, 3)
    else:
        cap = round(headroom_wh / (1 - reserve) + draw(st.integers(0, 60)) + 0.01, 3)
    share = AppShare(
        solar_fraction=frac,
        battery_capacity_wh=cap,
        battery_max_charge_w=draw(st.none() | st.integers(0, 60).map(float)),
        battery_max_discharge_w=draw(st.none() | st.integers(0, 60).map(float)),
        charge_c_rate=draw(st.sampled_from([0.1, 0.25, 1.0, 4.0])),
        discharge_c_rate=draw(st.sampled_from([0.5, 1.0, 2.0])),
        reserve_soc=reserve,
        charge_efficiency=draw(st.sampled_from(EFFICIENCIES)),
        discharge_efficiency=draw(st.sampled_from(EFFICIENCIES)),
        grid_w=float(draw(st.sampled_from([0, 3, 20, 150]) | st.integers(0, 150))),
        initial_soc=draw(st.none() | st.integers(0, 100).map(lambda x: x / 100)),
    )
    shape = SiteShape(
        tick_s=dt, solar_nameplate_w=nameplate, battery_capacity_wh=cap + 1,
        excess_solar=draw(st.sampled_from([ExcessSolarPolicy.curtail,
                                           ExcessSolarPolicy.net_meter])),
    )
    return shape, share


# The per-tick strategies are built once (``ints`` per bound), not per draw: building a
# strategy and validating it on its first draw cost more than the draw. The cases are
# the same (a draw depends on the strategy's definition, not on the object).
CONTAINER = st.integers(0, 4)
N_CONTAINERS = st.sampled_from([0, 1, 1, 2, 3])
CHANGE = st.none() | st.none() | st.one_of(
    st.sampled_from([0, 0.5, 2, 10, 40, 500]).map(
        lambda w: SetBatteryChargeRate(watts=float(w))),
    st.sampled_from([None, 0, 1, 5, 30]).map(
        lambda w: SetBatteryMaxDischarge(watts=None if w is None else float(w))),
)
INTENSITY = st.sampled_from([0.0, 1.0, 55.5, 250.0, 401.3, 900.0])
K_STEP = st.sampled_from([1, 1, 1, 2])


@functools.cache
def ints(hi: int):
    """``st.integers(0, hi)``, one strategy object per bound."""
    return st.integers(0, hi)


@functools.cache
def solar_or_zero(hi: int):
    return ints(hi) | st.just(0)


@st.composite
def sequences(draw):
    shape, share = draw(app_sites())
    dt = shape.tick_s
    max_solar = round(share.solar_fraction * shape.solar_nameplate_w * 1.1 * dt * 1000)
    max_demand = round(draw(st.sampled_from([5, 40, 200])) * dt * 1000)
    demand_mj, solar_mj = ints(max_demand), solar_or_zero(max_solar)
    ticks = []
    k = draw(st.integers(0, 3))
    for _ in range(draw(st.integers(20, 40))):
        n_c = draw(N_CONTAINERS)
        demand = {f"c{draw(CONTAINER)}": draw(demand_mj) for _ in range(n_c)}
        change = draw(CHANGE)
        ticks.append((
            k,
            draw(solar_mj),
            draw(INTENSITY),
            demand,
            change,
        ))
        k += draw(K_STEP)
    return shape, share, ticks


def _close(core: int, ref: Fr, tol: float, what: str) -> None:
    assert abs(core - ref) <= tol, f"{what}: core {core} vs reference {float(ref):.3f}"


def check_against_reference(share: AppShare, shape: SiteShape, bat: RefBattery,
                            state: AppState, entry, rc_w: float, rd_w: float | None) -> None:
    f = entry.flows
    ref = reference_tick(share, shape, bat, state.battery_mj, rc_w, rd_w, entry.solar_mj,
                         entry.demand_mj, entry.intensity_g_per_kwh)
    for name in ("solar_to_load", "solar_to_battery", "battery_to_load", "grid_to_load",
                 "grid_to_battery", "unserved", "battery_loss"):
        _close(getattr(f, name), ref[name], TOL_MJ, name)
    excess = f.solar_excess_curtailed + f.solar_exported
    _close(excess, ref["excess"], TOL_MJ, "excess")
    _close(entry.battery.after_mj, ref["after"], TOL_MJ, "after")
    if ref["reserve_binds"]:  # "down to the reserve": exactly empty, not a few mJ above
        assert entry.battery.after_mj == entry.battery.reserve_mj
    i = entry.intensity_g_per_kwh
    _close(entry.total.carbon_ug, ref["carbon_ug"], 2 * TOL_MJ * i / 3600 + 1, "carbon")
    _close(entry.battery.usable_mj, bat.usable, 1, "usable")
    _close(entry.battery.reserve_mj, bat.reserve, 1, "reserve")
    # per container: each load flow in proportion to the container's demand
    if entry.demand_mj:
        for c, line in entry.containers.items():
            w = Fr(line.energy_mj, entry.demand_mj)
            _close(line.grid_mj, ref["grid_to_load"] * w, TOL_C_MJ, f"{c} grid")
            _close(line.solar_mj, ref["solar_to_load"] * w, TOL_C_MJ, f"{c} solar")
            _close(line.battery_mj, ref["battery_to_load"] * w, TOL_C_MJ, f"{c} battery")
            _close(line.unserved_mj, ref["unserved"] * w, TOL_C_MJ, f"{c} unserved")
            _close(line.carbon_ug, ref["load_carbon_ug"] * w,
                   TOL_C_MJ * i / 3600 + 1.5, f"{c} carbon")
    # the surplus goes where the site policy says
    if shape.excess_solar is ExcessSolarPolicy.net_meter:
        assert f.solar_excess_curtailed == 0
    else:
        assert f.solar_exported == 0


def test_core_matches_reference_model_over_random_ticks():
    _self_check_reference()
    count = {"ticks": 0, "invalid_shares": 0}
    edges = dict.fromkeys(("rc", "rc_reset", "loss", "reserve_binds", "crate_binds",
                           "room_binds", "grid_exhausted", "discharge", "excess",
                           "zero_capacity", "usable_zero", "rd_binds"), 0)
    t0 = time.perf_counter()

    @settings(max_examples=200, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(sequences())
    # a battery share whose usable capacity is all headroom (reserve 0): generated
    # rarely, so pinned here for the edge check below
    @example((SiteShape(tick_s=1.0, solar_nameplate_w=3600.0, battery_capacity_wh=1.0),
              AppShare(solar_fraction=1.0, battery_capacity_wh=1.0, reserve_soc=0.0,
                       grid_w=10.0),
              [(0, 1000, 250.0, {"c0": 500}, None), (1, 0, 250.0, {"c0": 800}, None)]))
    def inner(case):
        shape, share, ticks = case
        bat = ref_battery(share, shape)
        if bat is None:  # the brief's "reserve above usable" share: the core refuses it
            try:
                initial_app_state(share, shape, site="s", app="a")
            except ValueError:
                count["invalid_shares"] += 1
                return
            raise AssertionError("core accepted a share whose reserve lies above usable")
        state = initial_app_state(share, shape, site="s", app="a")
        # the initial store: initial_soc x capacity (default the reserve), within [R, U]
        want = bat.reserve if share.initial_soc is None else Fr(share.initial_soc) * bat.capacity
        _close(state.battery_mj, min(max(want, bat.reserve), bat.usable), 1, "initial store")
        rc_w, rd_w = 0.0, None  # the settings the test itself expects in force
        queued: list = []
        for k, solar, intensity, demand, change in ticks:
            for ch in queued:  # accepted during an earlier tick: in force now
                if isinstance(ch, SetBatteryChargeRate):
                    rc_w = ch.watts
                else:
                    rd_w = ch.watts
            queued = []
            inp = AppTickInput(k=k, t_start=1e9 + k * shape.tick_s, solar_mj=solar,
                               intensity_g_per_kwh=intensity, demand_mj=demand)
            new, entry = app_step(share, shape, state, inp)
            assert entry.settings.charge_rate_w == rc_w
            assert entry.settings.max_discharge_w == rd_w
            check_against_reference(share, shape, bat, state, entry, rc_w, rd_w)
            # "Rc holds until battery_full, then resets to 0"
            full = entry.battery.after_mj >= entry.battery.usable_mj
            kinds = {e.kind for e in entry.events}
            if rc_w > 0:
                edges["rc"] += 1
                assert ("battery_full" in kinds) == full
                if full:
                    edges["rc_reset"] += 1
                    rc_w = 0.0
            assert new.settings.charge_rate_w == rc_w
            assert ("unserved" in kinds) == (entry.flows.unserved > 0)
            _edges(entry, bat, share, shape, rc_w, rd_w, edges)
            if change is not None:
                new = queue_change(new, change, accepted_k=k)
                queued.append(change)
            state = new
            count["ticks"] += 1

    inner()
    elapsed = time.perf_counter() - t0
    assert count["ticks"] >= MIN_TICKS, count
    assert all(v > 0 for v in edges.values()), str(edges)
    print(f"reference: {count['ticks']} ticks in {elapsed:.1f} s; {count}; edges {edges}")


def _edges(entry, bat, share, shape, rc_w, rd_w, edges) -> None:
    """Count which limits bound, so the test proves its generator reaches them."""
    f = entry.flows
    b = entry.battery
    dt = shape.tick_s
    edges["loss"] += f.battery_loss > 0
    edges["discharge"] += f.battery_to_load > 0
    edges["excess"] += (f.solar_excess_curtailed + f.solar_exported) > 0
    edges["zero_capacity"] += b.capacity_mj == 0
    edges["usable_zero"] += b.capacity_mj > 0 and b.usable_mj == 0
    edges["grid_exhausted"] += f.unserved > 0 and share.grid_w > 0
    deficit = f.battery_to_load + f.grid_to_load + f.unserved
    if f.battery_to_load and f.battery_to_load < deficit:
        if b.after_mj == b.reserve_mj:
            edges["reserve_binds"] += 1
        elif rd_w is not None and rd_w * dt * 1000 < bat.discharge_out:
            edges["rd_binds"] += 1
    charged = f.solar_to_battery + f.grid_to_battery
    if charged and b.after_mj == b.usable_mj:
        edges["room_binds"] += 1
    elif charged and abs(charged - bat.charge_in) <= 1:
        edges["crate_binds"] += 1


def test_site_step_with_one_app_equals_app_step():
    """A one-app site with no grid limit and all solar owned is app_step exactly."""

    @settings(max_examples=60, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(sequences())
    # a battery share whose usable capacity is all headroom (reserve 0): generated
    # rarely, so pinned here for the edge check below
    @example((SiteShape(tick_s=1.0, solar_nameplate_w=3600.0, battery_capacity_wh=1.0),
              AppShare(solar_fraction=1.0, battery_capacity_wh=1.0, reserve_soc=0.0,
                       grid_w=10.0),
              [(0, 1000, 250.0, {"c0": 500}, None), (1, 0, 250.0, {"c0": 800}, None)]))
    def inner(case):
        shape, share, ticks = case
        if ref_battery(share, shape) is None:
            return
        share = share.model_copy(update={"solar_fraction": 1.0})
        if ref_battery(share, shape) is None:
            return
        app = initial_app_state(share, shape, site="s", app="a")
        site = initial_site_state(shape, {"a": share}, site="s")
        for k, solar, intensity, demand, change in ticks:
            app, entry = app_step(share, shape, app, AppTickInput(
                k=k, t_start=float(k), solar_mj=solar, intensity_g_per_kwh=intensity,
                demand_mj=demand))
            site, res = site_step(shape, {"a": share}, site, SiteTickInput(
                k=k, t_start=float(k), site_solar_mj=solar, intensity_g_per_kwh=intensity,
                demand_mj={"a": demand}))
            assert res.entries["a"] == entry
            assert site.apps["a"] == app
            if change is not None:
                app = queue_change(app, change, accepted_k=k)
                site = site.model_copy(update={"apps": {"a": queue_change(
                    site.apps["a"], change, accepted_k=k)}})

    inner()


# --- the platform account over random multi-app sites (BRIEF "Idle power") -----------
#
# "Idle power not attributed to any app is booked to a site platform account ... The
# platform is served like a load of its own: first from solar that no app uses or stores
# (before that solar is curtailed, offered or exported), then from the grid; so the
# site's booked grid import equals what a physical grid meter would read."
#
# Reference, exact: every app's flows from ``reference_tick`` with its exact solar share
# (fraction x site solar); the solar no app uses or stores is the apps' excess plus the
# unallocated rest; the platform takes min(idle, that), the rest of its idle from the
# grid, which the site grid limit cuts last (the apps' grid is cut first), so the
# platform's grid is min(its need, the limit). Whatever unused solar the platform does
# not take is what the site curtails, offers or exports.


def reference_platform(excess: list[Fr], unallocated: Fr, platform: int,
                       grid_limit_mj: Fr | None, intensity: float) -> dict[str, Fr]:
    unused = unallocated + sum(excess, Fr(0))
    solar = min(Fr(platform), unused)
    need = Fr(platform) - solar
    grid = need if grid_limit_mj is None else min(need, grid_limit_mj)
    return {"solar": solar, "grid": grid, "unserved": need - grid, "left_over": unused - solar,
            "carbon": grid * Fr(intensity) / 3600}


DEMAND_W = st.sampled_from([2, 30, 150])
IDLE_W = st.sampled_from([1, 20, 100])
PLATFORM_INTENSITY = st.sampled_from([0.0, 55.5, 250.0, 401.3])


@st.composite
def platform_sites(draw):
    dt = draw(st.sampled_from([1.0, 60.0, 60.0, 300.0]))
    nameplate = draw(st.integers(0, 400))
    n_apps = draw(st.integers(1, 3))
    left = 100
    shares = {}
    for i in range(n_apps):
        pct = draw(st.integers(0, left))
        left -= pct
        frac = pct / 100
        headroom_wh = frac * nameplate * dt / 3600
        cap = draw(st.sampled_from([0.0, 1.0, 10.0, 40.0]))
        cap = 0.0 if cap == 0 else round(headroom_wh / 0.7 + cap, 3)
        shares[f"app{i}"] = AppShare(
            solar_fraction=frac, battery_capacity_wh=cap,
            charge_c_rate=draw(st.sampled_from([0.25, 1.0])),
            charge_efficiency=draw(st.sampled_from(EFFICIENCIES)),
            discharge_efficiency=draw(st.sampled_from(EFFICIENCIES)),
            grid_w=float(draw(st.sampled_from([0, 5, 40, 150]))),
            initial_soc=draw(st.none() | st.integers(0, 100).map(lambda x: x / 100)),
        )
    shape = SiteShape(
        tick_s=dt, solar_nameplate_w=nameplate,
        battery_capacity_wh=sum(s.battery_capacity_wh for s in shares.values()) + 1,
        grid_limit_w=draw(st.sampled_from([math.inf, math.inf, 2.0, 30.0, 200.0])),
        excess_solar=draw(st.sampled_from(list(ExcessSolarPolicy))),
    )
    max_solar = round(nameplate * 1.1 * dt * 1000)
    ticks = []
    for k in range(draw(st.integers(15, 30))):
        demand = {a: {"c0": draw(ints(round(draw(DEMAND_W) * dt * 1000)))} for a in shares}
        ticks.append((k, draw(ints(max_solar)), draw(PLATFORM_INTENSITY), demand,
                      draw(ints(round(draw(IDLE_W) * dt * 1000)))))
    return shape, shares, ticks


# app0's excess solar, beyond the platform's 1 J, is offered to app1's empty battery
OFFER_SITE = (
    SiteShape(tick_s=60.0, solar_nameplate_w=400, battery_capacity_wh=11.0,
              excess_solar=ExcessSolarPolicy.offer),
    {"app0": AppShare(solar_fraction=0.5, grid_w=40.0),
     "app1": AppShare(solar_fraction=0.0, battery_capacity_wh=10.0, charge_c_rate=1.0,
                      grid_w=40.0)},
    [(k, 24_000_000, 250.0, {"app0": {"c0": 0}, "app1": {"c0": 0}}, 1_000) for k in range(15)],
)


# the site's 2 W grid limit cuts the platform's 100 W demand (no solar, an app at 1 W)
LIMIT_SITE = (
    SiteShape(tick_s=60.0, solar_nameplate_w=0, battery_capacity_wh=1.0, grid_limit_w=2.0),
    {"app0": AppShare(solar_fraction=0.0, grid_w=40.0)},
    [(k, 0, 250.0, {"app0": {"c0": 60_000}}, 6_000_000) for k in range(15)],
)


def test_platform_matches_reference_over_random_sites():
    edges = dict.fromkeys(("platform_unallocated", "platform_app_excess", "platform_grid_too",
                           "platform_limit_cut", "left_over", "offer", "net_meter"), 0)
    count = [0]

    @settings(max_examples=80, derandomize=True, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(platform_sites())
    @example(OFFER_SITE)  # the rarest edges, always reached (random draws alone missed
    @example(LIMIT_SITE)  # 'offer' in some full-suite runs)
    def inner(case):
        shape, shares, ticks = case
        bats = {a: ref_battery(s, shape) for a, s in shares.items()}
        if any(b is None for b in bats.values()):
            return
        state = initial_site_state(shape, shares, site="s")
        limit = None if math.isinf(shape.grid_limit_w) else Fr(shape.grid_limit_w) * \
            Fr(shape.tick_s) * 1000
        tol = (TOL_MJ + 1) * len(shares) + 1
        for k, solar, intensity, demand, platform in ticks:
            before = state
            state, res = site_step(shape, shares, state, SiteTickInput(
                k=k, t_start=float(k), site_solar_mj=solar, intensity_g_per_kwh=intensity,
                demand_mj=demand, platform_mj=platform))
            excess = []
            for a, share in shares.items():
                own = Fr(share.solar_fraction) * solar
                ref = reference_tick(share, shape, bats[a], before.apps[a].battery_mj, 0, None,
                                     own, sum(demand[a].values()), intensity)
                excess.append(ref["excess"])
                f = res.entries[a].flows
                core_excess = (f.solar_to_platform + f.solar_excess_curtailed
                               + f.solar_excess_offered + f.solar_exported)
                _close(core_excess, ref["excess"], TOL_MJ + 1, f"{a} excess")
                _close(f.solar_to_load, ref["solar_to_load"], TOL_MJ + 1, f"{a} solar_to_load")
                _close(f.solar_to_battery, ref["solar_to_battery"], TOL_MJ + 1,
                       f"{a} solar_to_battery")
            unallocated = solar - sum((Fr(s.solar_fraction) * solar for s in shares.values()),
                                      Fr(0))
            ref = reference_platform(excess, unallocated, platform, limit, intensity)
            p, t = res.platform, res.totals
            _close(p.solar_mj, ref["solar"], tol, "platform solar")
            _close(p.grid_mj, ref["grid"], tol, "platform grid")
            _close(p.unserved_mj, ref["unserved"], tol, "platform unserved")
            _close(p.carbon_ug, ref["carbon"], tol * intensity / 3600 + 1, "platform carbon")
            _close(t.solar_curtailed_mj + t.solar_exported_mj + t.solar_offered_mj,
                   ref["left_over"], tol, "solar left over")
            edges["platform_unallocated"] += p.solar_mj > 0 and unallocated > 0
            edges["platform_app_excess"] += any(e.flows.solar_to_platform
                                                for e in res.entries.values())
            edges["platform_grid_too"] += p.solar_mj > 0 and p.grid_mj > 0
            edges["platform_limit_cut"] += p.unserved_mj > 0
            edges["left_over"] += p.solar_mj > 0 and ref["left_over"] > tol
            edges["offer"] += p.solar_mj > 0 and t.solar_offered_mj > 0
            edges["net_meter"] += p.solar_mj > 0 and t.solar_exported_mj > 0
            count[0] += 1

    inner()
    assert count[0] >= 1_000, count
    assert all(v > 0 for v in edges.values()), str(edges)
    print(f"platform reference: {count[0]} ticks; edges {edges}")
