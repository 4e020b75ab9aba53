"""The per-tick virtual energy ledger: ``app_step`` for one app, ``site_step`` for all
apps of a site (multiplexing). The entry types are in ``ecovisor.core.entries``.

Pure: typed data in, typed data out; no clocks, no I/O, no globals. Energy in integer
mJ, carbon in integer µg; every entry is checked for exact conservation when it is
built and whenever it is validated from JSON. The rules and worked examples are in
docs/core.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from ecovisor.core.account_lines import EMPTY_LINES, AccountLine, ContainerLines, unchecked
from ecovisor.core.apportion import (
    apportion,
    key_order,
    largest_remainder,
    split_flow_lists,
)
from ecovisor.core.carbon_limits import advance_app_histories
from ecovisor.core.entries import (
    AppLedgerEntry,
    BatteryReading,
    DriftCheck,
    EffectiveLimits,
    LedgerError,
    PlatformEntry,
    SiteAlert,
    SiteAlertKind,
    SiteTickResult,
    entry_violations,
)
from ecovisor.core.events import derive_events
from ecovisor.core.settings import discharge_in_force, settings_in_force
from ecovisor.core.shares import AppShare, ExcessSolarPolicy, SiteShape
from ecovisor.core.site_totals import controller_setpoints, site_totals
from ecovisor.core.solar_share import UNALLOCATED, distribute_offers, split_solar
from ecovisor.core.state import (
    AppCumulative,
    AppFlows,
    AppSettings,
    AppState,
    AppTickInput,
    PendingChange,
    PlatformCumulative,
    SiteState,
    SiteTickInput,
)
from ecovisor.core.units import (
    MJ_PER_WH,
    carbon_ug,
    mj_to_j,
    power_to_mj,
    wh_to_mj,
)
from ecovisor.core.virtual_battery import (
    BatteryLimits,
    battery_limits,
    charge_input_capacity,
    deliverable,
    draw_for,
    initial_stored_mj,
    stored_gain,
)

A = TypeVar("A")
B = TypeVar("B")
R = TypeVar("R")

# --- initial state ---------------------------------------------------------------------


def validate_site(shape: SiteShape, shares: Mapping[str, AppShare]) -> None:
    """Raise ``ValueError`` naming every problem of a site's shares."""
    problems = []
    if not math.isfinite(shape.drift_tolerance_wh):
        problems.append("drift_tolerance_wh must be finite")
    try:
        split_solar(0, shares)
    except ValueError as e:
        problems.append(str(e))
    cap = sum(s.battery_capacity_wh for s in shares.values())
    if cap > shape.battery_capacity_wh * (1 + 1e-12):
        problems.append(f"battery shares sum to {cap} Wh > site capacity "
                        f"{shape.battery_capacity_wh} Wh")
    for app in sorted(shares):
        try:
            battery_limits(shares[app], shape)
        except ValueError as e:
            problems.append(f"{app}: {e}")
    if problems:
        raise ValueError("; ".join(problems))


@lru_cache(maxsize=4096)
def _limits_of(share: AppShare, shape: SiteShape) -> BatteryLimits:
    """``battery_limits`` by value: both are frozen, so equal ones give the same limits."""
    return battery_limits(share, shape)


_MEMO_MAX = 4096  # pairs remembered per memo; cleared when full (new objects every tick)


def _by_identity(f: Callable[[A, B], R]) -> Callable[[A, B], R]:
    """``f(a, b)`` of frozen ``a`` and ``b``, remembered by their identities: the step
    passes the same share, shape and settings objects tick after tick, and hashing two
    models (an ``lru_cache`` key) cost ~1 µs per app-tick. An entry keeps ``a`` and
    ``b`` alive, so no other object can take their ids while it is remembered."""
    memo: dict[tuple[int, int], tuple[A, B, R]] = {}

    def get(a: A, b: B) -> R:
        hit = memo.get((id(a), id(b)))
        if hit is not None:
            return hit[2]
        value = f(a, b)
        if len(memo) >= _MEMO_MAX:
            memo.clear()
        memo[(id(a), id(b))] = (a, b, value)
        return value

    return get


# ``battery_limits`` once per (share, site shape), not per app and tick
_limits = _by_identity(_limits_of)


def initial_app_state(share: AppShare, shape: SiteShape, *, site: str, app: str,
                      settings: AppSettings | None = None) -> AppState:
    limits = battery_limits(share, shape)
    return AppState(site=site, app=app, battery_mj=initial_stored_mj(share, limits),
                    settings=settings or AppSettings())


def initial_site_state(shape: SiteShape, shares: Mapping[str, AppShare], *, site: str,
                       settings: Mapping[str, AppSettings] | None = None) -> SiteState:
    """A site's first state: every app's battery at its initial_soc (default the
    reserve), default settings unless given."""
    validate_site(shape, shares)
    settings = settings or {}
    unknown = set(settings) - set(shares)
    if unknown:
        raise ValueError(f"settings for unknown apps {sorted(unknown)}")
    apps = {
        app: initial_app_state(shares[app], shape, site=site, app=app,
                               settings=settings.get(app))
        for app in sorted(shares)
    }
    return SiteState(site=site, apps=apps)


# --- one app's tick --------------------------------------------------------------------


@dataclass(slots=True)
class _Work:
    """Mutable working set of one app tick before it is frozen into an entry."""

    share: AppShare
    limits: BatteryLimits
    state: AppState
    settings: AppSettings
    pending: tuple[PendingChange, ...]
    inp: AppTickInput
    demand: int
    before: int
    s2l: int = 0
    s2b: int = 0
    g2l: int = 0
    g2b: int = 0
    b2l: int = 0
    drawn: int = 0
    excess: int = 0  # solar neither used nor stored by the app itself (nor the platform)
    to_platform: int = 0
    offered_out: int = 0
    offered_in: int = 0
    curtailed: int = 0
    exported: int = 0
    unserved: int = 0
    grid_cut: int = 0


def _check_k(next_k: int | None, k: int, what: str, name: str) -> None:
    if next_k is not None and k < next_k:  # (the message is formatted only then)
        raise LedgerError(f"{what} {name!r}: tick {k} is already accounted "
                          f"(next tick is {next_k})")


def _plan(share: AppShare, shape: SiteShape, state: AppState, inp: AppTickInput,
          limits: BatteryLimits) -> _Work:
    """Flows of one app from its own resources: solar, its battery, its grid share.
    (``x if x < y else y`` is ``min`` of two ints without a call: this runs per app-tick.)"""
    settings, pending = settings_in_force(state, inp.k)
    demand = sum(inp.demand_mj.values())
    before = state.battery_mj
    dt = shape.tick_s
    solar = inp.solar_mj
    s2l = solar if solar < demand else demand
    excess = solar - s2l
    deficit = demand - s2l
    grid_cap = power_to_mj(share.grid_w, dt)
    # solar-side controller: excess solar charges within C-rate and room, always
    cap_in = charge_input_capacity(before, 0, limits)
    s2b = excess if excess < cap_in else cap_in
    g2b = b2l = drawn = 0
    if settings.charge_rate_w > 0:
        # grid-side controller: top up to min(Rc, C-rate, room) from the grid; no
        # discharge; the whole deficit from the grid first
        target = min(power_to_mj(settings.charge_rate_w, dt), cap_in)
        g2l = deficit if deficit < grid_cap else grid_cap
        g2b = min(max(0, target - s2b), grid_cap - g2l)
    else:
        above = before - limits.reserve_mj
        if above < 0:
            above = 0
        can_give = deliverable(above, limits.discharge_efficiency)
        rd = power_to_mj(discharge_in_force(share, settings), dt)
        want = deficit if deficit < rd else rd
        if can_give < want:
            # the reserve binds: empty the battery to it. With η_d < 1 the least draw for
            # floor(above * η_d) can leave up to ceil(1/η_d) - 1 mJ above the reserve that
            # can never be delivered; it is drawn too (booked as loss) so the store
            # reaches "empty" and battery_empty fires.
            b2l = can_give
            drawn = above
        else:
            b2l = want
            drawn = draw_for(b2l, limits.discharge_efficiency)
        rest = deficit - b2l
        g2l = rest if rest < grid_cap else grid_cap
    return _Work(share=share, limits=limits, state=state, settings=settings, pending=pending,
                 inp=inp, demand=demand, before=before, s2l=s2l, s2b=s2b, g2l=g2l, g2b=g2b,
                 b2l=b2l, drawn=drawn, excess=excess - s2b,
                 unserved=deficit - b2l - g2l)


@_by_identity
def _effective_of(share: AppShare, st: AppSettings) -> EffectiveLimits:
    """The powers in force, from the share and the settings only: one (frozen) model per
    (share, settings) pair, shared by the entries of the ticks it is in force (settings
    carry over from tick to tick as the same object)."""
    if st.charge_rate_w > 0:
        rc, rd = min(st.charge_rate_w, share.charge_limit_w), 0.0
    else:
        rc, rd = 0.0, discharge_in_force(share, st)
    return unchecked(EffectiveLimits, {"charge_limit_w": share.charge_limit_w,
                                       "charge_rate_w": rc, "discharge_w": rd,
                                       "grid_w": share.grid_w})


def _finalize(w: _Work, shape: SiteShape, site_estimated: tuple[str, ...] = ()
              ) -> tuple[AppState, AppLedgerEntry]:
    """Freeze a planned app tick into its ledger entry and the app's next state.

    The models are built unchecked (``account_lines.unchecked``): every figure is an integer the
    plan computed, and the entry's exact balances and non-negative flows are checked
    here, once, instead of by validating every model (each container line as built and
    again as its cumulative sum). docs/ledger.md "Core step performance"."""
    inp, lim, state = w.inp, w.limits, w.state
    intensity = inp.intensity_g_per_kwh
    s2l, s2b, g2l, g2b, b2l, unserved = w.s2l, w.s2b, w.g2l, w.g2b, w.b2l, w.unserved
    demand, before, drawn, offered_in = w.demand, w.before, w.drawn, w.offered_in
    solar_in = s2b + offered_in  # solar into the battery, own and offered
    charge_in = solar_in + g2b
    gain = stored_gain(charge_in, lim.charge_efficiency)
    after = before - drawn + gain
    loss = (charge_in - gain) + (drawn - b2l)
    flow_values = {
        "solar_to_load": s2l, "solar_to_battery": s2b, "solar_to_platform": w.to_platform,
        "solar_excess_curtailed": w.curtailed,
        "solar_excess_offered": w.offered_out, "solar_offered_in": offered_in,
        "solar_exported": w.exported, "battery_to_load": b2l, "grid_to_load": g2l,
        "grid_to_battery": g2b, "unserved": unserved, "battery_loss": loss,
    }
    if min(flow_values.values()) < 0 or after < 0:
        raise ValueError(f"ledger entry of {state.app!r} tick {inp.k}: negative flow or store "
                         f"{flow_values}, after {after}")
    flows = unchecked(AppFlows, flow_values)

    # per-container lines: split each load flow by demand, both margins exact
    c_load = carbon_ug(g2l, intensity)
    c_charge = carbon_ug(g2b, intensity)
    containers = _container_lines(inp.demand_mj, demand, (g2l, s2l, b2l, unserved), c_load)
    battery_charging = unchecked(AccountLine, {
        "energy_mj": charge_in, "solar_mj": solar_in, "battery_mj": 0,
        "grid_mj": g2b, "unserved_mj": 0, "carbon_ug": c_charge})
    total = unchecked(AccountLine, {
        "energy_mj": demand + charge_in, "solar_mj": s2l + solar_in,
        "battery_mj": b2l, "grid_mj": g2l + g2b, "unserved_mj": unserved,
        "carbon_ug": c_load + c_charge})

    estimated = inp.estimated_sources
    sources = (tuple(sorted(set(site_estimated) | set(estimated)))
               if site_estimated or estimated else ())
    cum = state.cumulative
    cum_containers = cum.containers.plus(containers) if cum.containers else containers
    cumulative = unchecked(AppCumulative, {
        "ticks": cum.ticks + 1,
        "estimated_ticks": cum.estimated_ticks + (1 if sources else 0),
        "unserved_ticks": cum.unserved_ticks + (1 if unserved else 0),
        "solar_mj": cum.solar_mj + inp.solar_mj,
        "demand_mj": cum.demand_mj + demand,
        "grid_cut_mj": cum.grid_cut_mj + w.grid_cut,
        "flows": cum.flows + flows,
        "total": cum.total + total,
        "battery_charging": cum.battery_charging + battery_charging,
        "containers": cum_containers,
    })
    values = {
        "site": state.site, "app": state.app, "k": inp.k, "t_start": inp.t_start,
        "tick_s": shape.tick_s, "intensity_g_per_kwh": intensity, "solar_mj": inp.solar_mj,
        "demand_mj": demand, "flows": flows, "grid_cut_mj": w.grid_cut,
        "battery": unchecked(BatteryReading, {
            "capacity_mj": lim.capacity_mj, "usable_mj": lim.usable_mj,
            "reserve_mj": lim.reserve_mj, "before_mj": before, "after_mj": after,
            "before_wh": before / MJ_PER_WH, "after_wh": after / MJ_PER_WH}),
        "settings": w.settings, "limits": _effective_of(w.share, w.settings),
        "containers": containers, "battery_charging": battery_charging, "total": total,
        "cumulative": cumulative, "estimated": bool(sources), "estimated_sources": sources,
        "events": (),
    }
    entry = unchecked(AppLedgerEntry, values)
    problems = entry_violations(entry)
    if problems:
        raise ValueError("ledger entry does not balance: " + "; ".join(problems))
    tracking, events = derive_events(state, entry)
    # the events belong to the entry they were derived from; it has not left this
    # function, so its field dict takes them in place (a copy of the entry per app-tick
    # otherwise)
    values["events"] = events
    settings = w.settings
    if settings.charge_rate_w > 0 and after >= lim.usable_mj:
        settings = settings.model_copy(update={"charge_rate_w": 0.0})  # Rc until full
    new_state = unchecked(AppState, {
        "site": state.site, "app": state.app, "next_k": inp.k + 1, "battery_mj": after,
        "settings": settings, "pending": w.pending, "cumulative": cumulative,
        "tracking": tracking})
    return new_state, entry


def _container_lines(demand: Mapping[str, int], total: int, flows: tuple[int, int, int, int],
                     c_load: int) -> ContainerLines:
    """Each container's line, in sorted order: the load flows (grid, solar, battery,
    unserved) split by demand with both margins exact (``split_flow_lists``), the load
    carbon by grid energy. Columns (``ContainerLines``), not a model per container: each
    row's energy is the sum of its parts by construction of the split."""
    n = len(demand)
    if n <= 1:
        if not n:
            return EMPTY_LINES
        # one container: every split of a flow over it is the whole flow, the carbon too
        # (the flows sum to its demand; entry_violations checks the line against them)
        (name, energy_mj), = demand.items()
        g, s, b, u = flows
        return ContainerLines((name,), (energy_mj,), (s,), (b,), (g,), (u,), (c_load,))
    names = list(demand)
    energy = list(demand.values())
    order = key_order(names)  # the lines' order and every split's tie-break
    if total:
        grid, solar, battery, unserved = split_flow_lists(names, energy, flows, order)
        carbon = apportion(c_load, grid, names, order) if c_load else [0] * n
    else:
        grid = solar = battery = unserved = carbon = [0] * n
    if order != list(range(n)):  # demand not in id order: rows reordered
        names, energy, solar, battery, grid, unserved, carbon = (
            [col[i] for i in order] for col in (names, energy, solar, battery, grid,
                                                unserved, carbon))
    return ContainerLines(tuple(names), tuple(energy), tuple(solar), tuple(battery),
                          tuple(grid), tuple(unserved), tuple(carbon))


def app_step(share: AppShare, shape: SiteShape, state: AppState, inp: AppTickInput
             ) -> tuple[AppState, AppLedgerEntry]:
    """Account one tick of one app that has the site to itself: its own solar, battery
    and grid share. Excess solar is curtailed or net-metered per ``shape.excess_solar``
    (``offer`` has no one to offer to here and curtails). The site grid limit is not
    applied (that needs every app: use ``site_step``)."""
    _check_k(state.next_k, inp.k, "app", state.app)
    w = _plan(share, shape, state, inp, _limits(share, shape))
    if shape.excess_solar is ExcessSolarPolicy.net_meter:
        w.exported = w.excess
    else:
        w.curtailed = w.excess
    st, entry = _finalize(w, shape)
    return advance_app_histories({st.app: st}, {st.app: entry}, inp.k, shape.tick_s)[st.app], entry


# --- one site's tick (multiplexing) -----------------------------------------------------


def _platform_solar(works: dict[str, _Work], unallocated: int, platform_mj: int
                    ) -> tuple[int, int]:
    """Serve the platform's idle load like a load of its own from solar no app uses or
    stores, before that solar is curtailed, offered or exported (so booked grid import is
    what a grid meter reads): the unallocated solar first (it is no app's), then the apps'
    excess in proportion to it (largest remainder). Returns (platform solar, unallocated
    left); the apps' ``excess`` is reduced by what they gave."""
    from_unalloc = min(platform_mj, unallocated)
    excess = {a: w.excess for a, w in works.items() if w.excess}
    from_apps = min(platform_mj - from_unalloc, sum(excess.values()))
    if from_apps:
        for a, part in largest_remainder(from_apps, excess).items():
            works[a].to_platform = part
            works[a].excess -= part
    return from_unalloc + from_apps, unallocated - from_unalloc


def _cut_grid(works: dict[str, _Work], platform_mj: int, limit_mj: int | None
              ) -> tuple[int, int]:
    """Apply the site grid limit: cut grid->battery first (in proportion to each app's
    grid->battery), then grid->load (in proportion, the cut becomes unserved), then the
    platform. Returns (platform grid, platform unserved)."""
    if limit_mj is None:
        return platform_mj, 0
    over = sum(w.g2l + w.g2b for w in works.values()) + platform_mj - limit_mj
    if over <= 0:
        return platform_mj, 0
    # grid->battery first (the cut is booked as grid_cut), then grid->load (the cut is
    # also unserved), each in proportion to what the apps drew
    for flow, unserved in (("g2b", False), ("g2l", True)):
        drawn = {a: getattr(w, flow) for a, w in works.items()}
        cut = min(over, sum(drawn.values()))
        if cut:
            for a, part in largest_remainder(cut, drawn).items():
                w = works[a]
                setattr(w, flow, getattr(w, flow) - part)
                w.grid_cut += part
                if unserved:
                    w.unserved += part
            over -= cut
    return platform_mj - over, over


def site_step(shape: SiteShape, shares: Mapping[str, AppShare], state: SiteState,
              inp: SiteTickInput) -> tuple[SiteState, SiteTickResult]:
    """Account one tick of every app of a site, in sorted app order, then the platform
    (unused solar, then grid), the site grid limit, excess solar per the site policy,
    controller aggregates and the battery drift check."""
    _check_k(state.next_k, inp.k, "site", state.site)
    if shares.keys() != state.apps.keys():
        raise LedgerError(f"shares {sorted(shares)} do not match state apps {sorted(state.apps)}")
    if not inp.demand_mj.keys() <= shares.keys():  # a view comparison, no set per tick
        unknown = inp.demand_mj.keys() - shares.keys()
        raise LedgerError(f"demand for unknown apps {sorted(unknown)}")
    dt = shape.tick_s
    solar_by_app, unallocated = split_solar(inp.site_solar_mj, shares)
    apps = sorted(shares)

    works: dict[str, _Work] = {}
    for a in apps:
        app_inp = unchecked(AppTickInput, {
            "k": inp.k, "t_start": inp.t_start, "solar_mj": solar_by_app[a],
            "intensity_g_per_kwh": inp.intensity_g_per_kwh,
            "demand_mj": inp.demand_mj.get(a, {}),
            "estimated_sources": inp.app_estimated_sources.get(a, ()),
        })
        works[a] = _plan(shares[a], shape, state.apps[a], app_inp,
                         _limits(shares[a], shape))

    platform_solar, unalloc_left = _platform_solar(works, unallocated, inp.platform_mj)
    limit_mj = None if math.isinf(shape.grid_limit_w) else power_to_mj(shape.grid_limit_w, dt)
    platform_grid, platform_unserved = _cut_grid(works, inp.platform_mj - platform_solar,
                                                 limit_mj)

    policy = shape.excess_solar
    unalloc_curtailed = unalloc_exported = unalloc_offered = 0
    if policy is ExcessSolarPolicy.offer:
        donors = [(a, works[a].excess) for a in apps if works[a].excess]
        if unalloc_left:
            donors.append((UNALLOCATED, unalloc_left))
        capacity = {
            a: charge_input_capacity(w.before - w.drawn, w.s2b + w.g2b, w.limits)
            for a, w in works.items()
        }
        given, received = distribute_offers(donors, capacity)
        for a, w in works.items():
            w.offered_out = given.get(a, 0)
            w.curtailed = w.excess - w.offered_out
            w.offered_in = received[a]
        unalloc_offered = given.get(UNALLOCATED, 0)
        unalloc_curtailed = unalloc_left - unalloc_offered
    elif policy is ExcessSolarPolicy.net_meter:
        for w in works.values():
            w.exported = w.excess
        unalloc_exported = unalloc_left
    else:
        for w in works.values():
            w.curtailed = w.excess
        unalloc_curtailed = unalloc_left

    site_sources = tuple(sorted(set(inp.estimated_sources))) if inp.estimated_sources else ()
    new_apps: dict[str, AppState] = {}
    entries: dict[str, AppLedgerEntry] = {}
    for a in apps:
        new_apps[a], entries[a] = _finalize(works[a], shape, site_sources)

    intensity = inp.intensity_g_per_kwh
    p_carbon = carbon_ug(platform_grid, intensity)
    pc = state.platform
    # no platform energy: every figure adds 0, the cumulative stays the same (frozen) one
    platform_cum = pc if not inp.platform_mj else unchecked(PlatformCumulative, {
        "energy_mj": pc.energy_mj + inp.platform_mj,
        "solar_mj": pc.solar_mj + platform_solar,
        "grid_mj": pc.grid_mj + platform_grid,
        "unserved_mj": pc.unserved_mj + platform_unserved,
        "carbon_ug": pc.carbon_ug + p_carbon,
    })
    # built unchecked: it balances by construction (solar + what _cut_grid returns is
    # the platform's energy; its grid is at least min(its rest, the site limit) >= 0)
    platform = unchecked(PlatformEntry, {
        "energy_mj": inp.platform_mj, "solar_mj": platform_solar, "grid_mj": platform_grid,
        "unserved_mj": platform_unserved, "carbon_ug": p_carbon, "cumulative": platform_cum})

    totals = site_totals(entries, inp, unallocated, unalloc_curtailed, unalloc_exported,
                          unalloc_offered, platform)
    controller = controller_setpoints(shares, shape, new_apps, entries, inp.k)

    alerts: list[SiteAlert] = []
    if totals.grid_cut_mj + platform_unserved:
        alerts.append(SiteAlert(kind=SiteAlertKind.grid_limit, site=state.site, k=inp.k,
                                t_start=inp.t_start,
                                value=mj_to_j(totals.grid_cut_mj + platform_unserved),
                                threshold=shape.grid_limit_w, unit="J"))
    drift = None
    alerting = state.drift_alerting
    if inp.physical_battery_mj is not None:
        virtual = sum(e.battery.after_mj for e in entries.values())
        diff = inp.physical_battery_mj - virtual
        tol_mj = wh_to_mj(shape.drift_tolerance_wh)
        alert = abs(diff) > tol_mj
        drift = DriftCheck(virtual_mj=virtual, physical_mj=inp.physical_battery_mj,
                           diff_mj=diff, diff_wh=diff / MJ_PER_WH,
                           tolerance_wh=shape.drift_tolerance_wh, alert=alert)
        if alert != alerting:
            alerts.append(SiteAlert(
                kind=SiteAlertKind.battery_drift if alert else SiteAlertKind.battery_drift_cleared,
                site=state.site, k=inp.k, t_start=inp.t_start, value=diff / MJ_PER_WH,
                threshold=shape.drift_tolerance_wh, unit="Wh"))
            alerting = alert

    sources = (tuple(sorted(set(site_sources).union(*inp.app_estimated_sources.values())))
               if site_sources or inp.app_estimated_sources else ())
    # entries were validated (and balance-checked) when built: construct, don't re-check
    result = unchecked(SiteTickResult, {
        "site": state.site, "k": inp.k, "t_start": inp.t_start, "tick_s": dt,
        "intensity_g_per_kwh": intensity, "entries": entries, "platform": platform,
        "totals": totals, "cumulative": state.cumulative + totals, "controller": controller,
        "drift": drift, "alerts": tuple(alerts), "estimated": bool(sources),
        "estimated_sources": sources,
    })
    new_state = unchecked(SiteState, {
        "site": state.site, "next_k": inp.k + 1,
        "apps": advance_app_histories(new_apps, entries, inp.k, dt),
        "platform": platform_cum, "cumulative": result.cumulative,
        "drift_alerting": alerting,
    })
    return new_state, result
