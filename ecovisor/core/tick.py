"""The per-tick virtual energy ledger: ``app_step`` for one app, ``site_step`` for all
apps of a site (multiplexing). The entry types are in ``ecovisor.core.entries``.

Pure: typed data in, typed data out; no clocks, no I/O, no globals. Energy in integer
mJ, carbon in integer µg; every entry is checked for exact conservation when it is
built and whenever it is validated from JSON. The rules and worked examples are in
docs/core.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache

from pydantic import ConfigDict

from ecovisor.core.account_lines import EMPTY_LINES, AccountLine, ContainerLines, unchecked
from ecovisor.core.apportion import (
    apportion,
    key_order,
    largest_remainder,
    split_flow_lists,
)
from ecovisor.core.carbon_limits import bound_site_histories
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

_FROZEN = ConfigDict(extra="forbid", frozen=True)

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
def _limits(share: AppShare, shape: SiteShape) -> BatteryLimits:
    """``battery_limits``, computed once per (share, site shape), not per app and tick:
    both are frozen, so equal values give the same limits."""
    return battery_limits(share, shape)


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


def _check_k(next_k: int | None, k: int, who: str) -> None:
    if next_k is not None and k < next_k:
        raise LedgerError(f"{who}: tick {k} is already accounted (next tick is {next_k})")


def _plan(share: AppShare, shape: SiteShape, state: AppState, inp: AppTickInput,
          limits: BatteryLimits) -> _Work:
    """Flows of one app from its own resources: solar, its battery, its grid share."""
    settings, pending = settings_in_force(state, inp.k)
    demand = sum(inp.demand_mj.values())
    before = state.battery_mj
    w = _Work(share=share, limits=limits, state=state, settings=settings, pending=pending,
              inp=inp, demand=demand, before=before)
    dt = shape.tick_s
    solar = inp.solar_mj
    w.s2l = min(solar, demand)
    excess = solar - w.s2l
    deficit = demand - w.s2l
    grid_cap = power_to_mj(share.grid_w, dt)
    # solar-side controller: excess solar charges within C-rate and room, always
    cap_in = charge_input_capacity(before, 0, limits)
    w.s2b = min(excess, cap_in)
    w.excess = excess - w.s2b
    if settings.charge_rate_w > 0:
        # grid-side controller: top up to min(Rc, C-rate, room) from the grid; no
        # discharge; the whole deficit from the grid first
        target = min(power_to_mj(settings.charge_rate_w, dt), cap_in)
        w.g2l = min(deficit, grid_cap)
        w.g2b = min(max(0, target - w.s2b), grid_cap - w.g2l)
    else:
        above = max(0, before - limits.reserve_mj)
        can_give = deliverable(above, limits.discharge_efficiency)
        rd = power_to_mj(discharge_in_force(share, settings), dt)
        w.b2l = min(deficit, rd, can_give)
        if can_give < min(deficit, rd):
            # the reserve binds: empty the battery to it. With η_d < 1 the least draw for
            # floor(above * η_d) can leave up to ceil(1/η_d) - 1 mJ above the reserve that
            # can never be delivered; it is drawn too (booked as loss) so the store
            # reaches "empty" and battery_empty fires.
            w.drawn = above
        else:
            w.drawn = draw_for(w.b2l, limits.discharge_efficiency)
        w.g2l = min(deficit - w.b2l, grid_cap)
    w.unserved = deficit - w.b2l - w.g2l
    return w


def _effective_limits(w: _Work) -> EffectiveLimits:
    share, st = w.share, w.settings
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
    charge_in = w.s2b + w.g2b + w.offered_in
    gain = stored_gain(charge_in, lim.charge_efficiency)
    after = w.before - w.drawn + gain
    loss = (charge_in - gain) + (w.drawn - w.b2l)
    flow_values = {
        "solar_to_load": w.s2l, "solar_to_battery": w.s2b, "solar_to_platform": w.to_platform,
        "solar_excess_curtailed": w.curtailed,
        "solar_excess_offered": w.offered_out, "solar_offered_in": w.offered_in,
        "solar_exported": w.exported, "battery_to_load": w.b2l, "grid_to_load": w.g2l,
        "grid_to_battery": w.g2b, "unserved": w.unserved, "battery_loss": loss,
    }
    if min(flow_values.values()) < 0 or after < 0:
        raise ValueError(f"ledger entry of {state.app!r} tick {inp.k}: negative flow or store "
                         f"{flow_values}, after {after}")
    flows = unchecked(AppFlows, flow_values)

    # per-container lines: split each load flow by demand, both margins exact
    c_load = carbon_ug(w.g2l, intensity)
    c_charge = carbon_ug(w.g2b, intensity)
    containers = _container_lines(inp.demand_mj, w.demand,
                                  (w.g2l, w.s2l, w.b2l, w.unserved), c_load)
    battery_charging = unchecked(AccountLine, {
        "energy_mj": charge_in, "solar_mj": w.s2b + w.offered_in, "battery_mj": 0,
        "grid_mj": w.g2b, "unserved_mj": 0, "carbon_ug": c_charge})
    total = unchecked(AccountLine, {
        "energy_mj": w.demand + charge_in, "solar_mj": w.s2l + w.s2b + w.offered_in,
        "battery_mj": w.b2l, "grid_mj": w.g2l + w.g2b, "unserved_mj": w.unserved,
        "carbon_ug": c_load + c_charge})

    sources = (tuple(sorted(set(site_estimated) | set(inp.estimated_sources)))
               if site_estimated or inp.estimated_sources else ())
    cum = state.cumulative
    cum_containers = cum.containers.plus(containers) if cum.containers else containers
    cumulative = unchecked(AppCumulative, {
        "ticks": cum.ticks + 1,
        "estimated_ticks": cum.estimated_ticks + (1 if sources else 0),
        "unserved_ticks": cum.unserved_ticks + (1 if w.unserved else 0),
        "solar_mj": cum.solar_mj + inp.solar_mj,
        "demand_mj": cum.demand_mj + w.demand,
        "grid_cut_mj": cum.grid_cut_mj + w.grid_cut,
        "flows": cum.flows + flows,
        "total": cum.total + total,
        "battery_charging": cum.battery_charging + battery_charging,
        "containers": cum_containers,
    })
    dt = shape.tick_s
    values = {
        "site": state.site, "app": state.app, "k": inp.k, "t_start": inp.t_start,
        "tick_s": dt, "intensity_g_per_kwh": intensity, "solar_mj": inp.solar_mj,
        "demand_mj": w.demand, "flows": flows, "grid_cut_mj": w.grid_cut,
        "battery": unchecked(BatteryReading, {
            "capacity_mj": lim.capacity_mj, "usable_mj": lim.usable_mj,
            "reserve_mj": lim.reserve_mj, "before_mj": w.before, "after_mj": after,
            "before_wh": w.before / MJ_PER_WH, "after_wh": after / MJ_PER_WH}),
        "settings": w.settings, "limits": _effective_limits(w),
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
    if not demand:
        return EMPTY_LINES
    names = list(demand)
    energy = list(demand.values())
    order = key_order(names)  # the lines' order and every split's tie-break
    if total:
        grid, solar, battery, unserved = split_flow_lists(names, energy, flows, order)
        carbon = apportion(c_load, grid, names, order) if c_load else [0] * len(names)
    else:
        grid = solar = battery = unserved = carbon = [0] * len(names)
    if order != list(range(len(order))):  # demand not in id order: rows reordered
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
    _check_k(state.next_k, inp.k, f"app {state.app!r}")
    w = _plan(share, shape, state, inp, _limits(share, shape))
    if shape.excess_solar is ExcessSolarPolicy.net_meter:
        w.exported = w.excess
    else:
        w.curtailed = w.excess
    return _finalize(w, shape)


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
    _check_k(state.next_k, inp.k, f"site {state.site!r}")
    if shares.keys() != state.apps.keys():
        raise LedgerError(f"shares {sorted(shares)} do not match state apps {sorted(state.apps)}")
    unknown = inp.demand_mj.keys() - shares.keys()
    if unknown:
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

    site_sources = tuple(sorted(set(inp.estimated_sources)))
    new_apps: dict[str, AppState] = {}
    entries: dict[str, AppLedgerEntry] = {}
    for a in apps:
        new_apps[a], entries[a] = _finalize(works[a], shape, site_sources)

    intensity = inp.intensity_g_per_kwh
    p_carbon = carbon_ug(platform_grid, intensity)
    pc = state.platform
    platform_cum = unchecked(PlatformCumulative, {
        "energy_mj": pc.energy_mj + inp.platform_mj,
        "solar_mj": pc.solar_mj + platform_solar,
        "grid_mj": pc.grid_mj + platform_grid,
        "unserved_mj": pc.unserved_mj + platform_unserved,
        "carbon_ug": pc.carbon_ug + p_carbon,
    })
    platform = PlatformEntry(
        energy_mj=inp.platform_mj,
        solar_mj=platform_solar,
        grid_mj=platform_grid,
        unserved_mj=platform_unserved,
        carbon_ug=p_carbon,
        cumulative=platform_cum,
    )

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

    sources = tuple(sorted(set(site_sources).union(*inp.app_estimated_sources.values())))
    # entries were validated (and balance-checked) when built: construct, don't re-check
    result = unchecked(SiteTickResult, {
        "site": state.site, "k": inp.k, "t_start": inp.t_start, "tick_s": dt,
        "intensity_g_per_kwh": intensity, "entries": entries, "platform": platform,
        "totals": totals, "cumulative": state.cumulative + totals, "controller": controller,
        "drift": drift, "alerts": tuple(alerts), "estimated": bool(sources),
        "estimated_sources": sources,
    })
    new_state = unchecked(SiteState, {
        "site": state.site, "next_k": inp.k + 1, "apps": bound_site_histories(new_apps),
        "platform": platform_cum, "cumulative": result.cumulative,
        "drift_alerting": alerting,
    })
    return new_state, result
