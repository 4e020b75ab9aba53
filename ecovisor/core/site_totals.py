"""A site tick's aggregates over its apps' entries: the site totals, the battery
controller's setpoints for the next tick, and the exact site-level balances
(``site_violations``, checked by the property tests). Pure; used by ``tick.site_step``.
"""

from __future__ import annotations

from collections.abc import Mapping
from operator import itemgetter

from ecovisor.core.account_lines import unchecked
from ecovisor.core.entries import (
    AppLedgerEntry,
    ControllerSetpoints,
    PlatformEntry,
    SiteTickResult,
)
from ecovisor.core.settings import discharge_in_force, settings_in_force
from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.state import AppState, SiteState, SiteTickInput, SiteTotals
from ecovisor.core.units import mj_to_power
from ecovisor.core.virtual_battery import deliverable, max_input_for_room

# the flows a site's totals sum, read from each entry's flows in one call
_SUMMED_FLOWS = itemgetter(
    "solar_to_load", "solar_to_battery", "solar_offered_in", "solar_excess_offered",
    "solar_excess_curtailed", "solar_exported", "battery_to_load", "battery_loss",
    "grid_to_load", "grid_to_battery", "unserved")


def site_totals(entries: Mapping[str, AppLedgerEntry], inp: SiteTickInput, unallocated: int,
                 unalloc_curtailed: int, unalloc_exported: int, unalloc_offered: int,
                 platform: PlatformEntry) -> SiteTotals:
    # column sums of the entries' flows (no AppFlows model per app summed)
    rows = []
    demand = grid_cut = carbon = 0
    for e in entries.values():
        rows.append(_SUMMED_FLOWS(e.flows.__dict__))
        demand += e.demand_mj
        grid_cut += e.grid_cut_mj
        carbon += e.total.carbon_ug
    if len(rows) != 1:
        rows = [tuple(map(sum, zip(*rows, strict=True))) if rows else (0,) * 11]
    (s2l, s2b, offered_in, offered, curtailed, exported, b2l, loss, g2l, g2b, unserved) = rows[0]
    # sums of the entries' checked, non-negative flows: built unchecked
    return unchecked(SiteTotals, {
        "solar_mj": inp.site_solar_mj,
        "solar_unallocated_mj": unallocated,
        "solar_to_load_mj": s2l,
        "solar_to_battery_mj": s2b + offered_in,
        "solar_offered_mj": offered + unalloc_offered,
        "solar_curtailed_mj": curtailed + unalloc_curtailed,
        "solar_exported_mj": exported + unalloc_exported,
        "battery_to_load_mj": b2l,
        "battery_loss_mj": loss,
        "grid_to_load_mj": g2l,
        "grid_to_battery_mj": g2b,
        "grid_cut_mj": grid_cut,
        "platform_mj": platform.energy_mj,
        "platform_solar_mj": platform.solar_mj,
        "platform_grid_mj": platform.grid_mj,
        "platform_unserved_mj": platform.unserved_mj,
        "unserved_mj": unserved + platform.unserved_mj,
        "demand_mj": demand,
        "load_mj": demand + platform.energy_mj,
        "grid_mj": g2l + g2b + platform.grid_mj,
        "carbon_ug": carbon + platform.carbon_ug,
    })


def controller_setpoints(shares: Mapping[str, AppShare], shape: SiteShape,
                new_apps: Mapping[str, AppState], entries: Mapping[str, AppLedgerEntry],
                k: int) -> ControllerSetpoints:
    dt = shape.tick_s
    grid_charge = max_discharge = 0.0
    net_mj = grid_actual_mj = 0
    for a, st in new_apps.items():
        share = shares[a]
        e = entries[a]
        b = e.battery
        # setpoints are for tick k+1: use the settings in force then, i.e. including the
        # changes accepted during tick k that are still queued
        nxt, _ = settings_in_force(st, k + 1)
        if nxt.charge_rate_w > 0:
            room = max_input_for_room(b.usable_mj - st.battery_mj, share.charge_efficiency)
            # the grid part of Rc is bounded by the app's grid share, as in the app step
            grid_charge += min(nxt.charge_rate_w, share.charge_limit_w, share.grid_w,
                               mj_to_power(room, dt))
        else:
            avail = deliverable(st.battery_mj - b.reserve_mj, share.discharge_efficiency)
            max_discharge += min(discharge_in_force(share, nxt), mj_to_power(avail, dt))
        f = e.flows
        net_mj += f.solar_to_battery + f.solar_offered_in + f.grid_to_battery - f.battery_to_load
        grid_actual_mj += f.grid_to_battery
    return unchecked(ControllerSetpoints, {
        "grid_charge_w": float(grid_charge), "max_discharge_w": float(max_discharge),
        "net_battery_w": mj_to_power(net_mj, dt),
        "grid_charge_actual_w": mj_to_power(grid_actual_mj, dt)})


def site_violations(state_before: SiteState, result: SiteTickResult) -> list[str]:
    """Exact site-level balances of one site tick; empty when it balances."""
    t = result.totals
    out = []
    before = sum(a.battery_mj for a in state_before.apps.values())
    after = sum(e.battery.after_mj for e in result.entries.values())
    solar_uses = (t.solar_to_load_mj + t.solar_to_battery_mj + t.platform_solar_mj
                  + t.solar_curtailed_mj + t.solar_exported_mj)
    if t.solar_mj != solar_uses:
        out.append(f"site solar {t.solar_mj} != uses {solar_uses}")
    lhs = t.solar_mj + t.grid_mj + t.unserved_mj
    rhs = (t.load_mj + (after - before) + t.battery_loss_mj + t.solar_curtailed_mj
           + t.solar_exported_mj)
    if lhs != rhs:
        out.append(f"site energy: solar+grid+unserved {lhs} != load+Δstore+loss+curtailed+"
                   f"exported {rhs}")
    offered_in = sum(e.flows.solar_offered_in for e in result.entries.values())
    if t.solar_offered_mj != offered_in:
        out.append(f"offered {t.solar_offered_mj} != received {offered_in}")
    if t.load_mj != sum(e.demand_mj for e in result.entries.values()) + result.platform.energy_mj:
        out.append("site load != Σ apps + platform")
    if (
        t.carbon_ug
        != sum(e.total.carbon_ug for e in result.entries.values()) + result.platform.carbon_ug
    ):
        out.append("site carbon != Σ apps + platform")
    return out
