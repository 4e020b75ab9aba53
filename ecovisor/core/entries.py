"""The ledger entry types: one app's tick (``AppLedgerEntry``, the wire format on
``ecovisor.ledger``), the platform line, the controller setpoints, the drift check, site
alerts, the events an app tick raises, and everything one site tick produces.

Pure data: every entry is checked for exact conservation when it is built and whenever
it is validated from JSON (integer mJ and µg). The rules are in docs/core.md.
"""

from __future__ import annotations

from enum import StrEnum
from operator import itemgetter

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, model_validator

from ecovisor.core.account_lines import LINE_FIELDS, AccountLine, ContainerLines
from ecovisor.core.state import AppCumulative, AppFlows, AppSettings, PlatformCumulative, SiteTotals
from ecovisor.core.units import (
    carbon_ug,
)

_FROZEN = ConfigDict(extra="forbid", frozen=True)


class LedgerError(ValueError):
    """An input the ledger refuses (a tick already accounted, an unknown app...)."""



# --- events (notifications of one app tick; derived in ecovisor.core.events) ----------


class EventKind(StrEnum):
    tick = "tick"
    solar_change = "solar_change"
    carbon_change = "carbon_change"
    battery_full = "battery_full"
    battery_empty = "battery_empty"
    unserved = "unserved"
    carbon_rate_near = "carbon_rate_near"
    carbon_rate_exceeded = "carbon_rate_exceeded"
    carbon_budget_near = "carbon_budget_near"
    carbon_budget_exceeded = "carbon_budget_exceeded"


class Event(BaseModel):
    """One notification for one app. ``value``/``previous``/``threshold`` are in
    ``unit``: W (solar), gCO2eq/kWh (carbon), Wh (battery), J (unserved), mg/s (carbon
    rate), g (carbon budget)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: EventKind
    site: str
    app: str
    k: int
    t_start: float
    container: str | None = None
    value: float | None = None
    previous: float | None = None
    threshold: float | None = None
    unit: str | None = None



# --- ledger entry (wire format) --------------------------------------------------------


class BatteryReading(BaseModel):
    """The app's virtual battery around one tick; Wh fields are the mJ ones / 3.6e6."""

    model_config = _FROZEN

    capacity_mj: NonNegativeInt
    usable_mj: NonNegativeInt  # "full"
    reserve_mj: NonNegativeInt  # "empty"
    before_mj: NonNegativeInt
    after_mj: NonNegativeInt
    before_wh: float
    after_wh: float


class EffectiveLimits(BaseModel):
    """Powers actually in force in the tick, W (settings clipped by the share)."""

    model_config = _FROZEN

    charge_limit_w: float  # the share's C-rate charge limit
    charge_rate_w: float  # Rc in force, clipped to the C-rate (0 = solar-only charging)
    discharge_w: float  # max discharge in force (0 while Rc > 0)
    grid_w: float  # the app's grid share


class AppLedgerEntry(BaseModel):
    """One app's ledger entry for one tick. Published on ``ecovisor.ledger``.

    Lines: one per container present in the tick's demand, ``battery_charging`` (energy
    into the battery at the bus, carbon of its grid part) and ``total`` = containers +
    battery_charging, component by component. ``demand_mj`` = Σ container energy.
    """

    model_config = _FROZEN

    site: str
    app: str
    k: int = Field(ge=0)
    t_start: float
    tick_s: float = Field(gt=0.0)
    intensity_g_per_kwh: float = Field(ge=0.0)
    solar_mj: NonNegativeInt
    demand_mj: NonNegativeInt
    flows: AppFlows
    grid_cut_mj: NonNegativeInt = Field(
        0, description="grid energy cut by the site grid limit (the load part is unserved)"
    )
    battery: BatteryReading
    settings: AppSettings
    limits: EffectiveLimits
    containers: ContainerLines
    battery_charging: AccountLine
    total: AccountLine
    cumulative: AppCumulative
    estimated: bool = False
    estimated_sources: tuple[str, ...] = ()
    events: tuple[Event, ...] = ()

    @model_validator(mode="after")
    def _conserved(self) -> AppLedgerEntry:
        problems = entry_violations(self)
        if problems:
            raise ValueError("ledger entry does not balance: " + "; ".join(problems))
        return self


# an entry's flows as locals in one call (entry_violations runs once per app-tick)
_FLOWS = itemgetter(*AppFlows.model_fields)


def entry_violations(e: AppLedgerEntry) -> list[str]:
    """Every exact balance an entry must satisfy; empty when it balances."""
    (s2l, s2b, s2p, curtailed, offered, offered_in, exported, b2l, g2l, g2b, unserved,
     loss) = _FLOWS(e.flows.__dict__)
    out = []
    solar_out = s2l + s2b + s2p + curtailed + offered + exported
    if solar_out != e.solar_mj:
        out.append(f"solar {e.solar_mj} != uses {solar_out}")
    served = s2l + b2l + g2l + unserved
    if served != e.demand_mj:
        out.append(f"demand {e.demand_mj} != supply {served}")
    b = e.battery
    before, after, reserve, usable = b.before_mj, b.after_mj, b.reserve_mj, b.usable_mj
    delta = s2b + offered_in + g2b - b2l - loss
    if after - before != delta:
        out.append(f"battery {before}->{after} != net flow {delta}")
    if reserve <= before <= usable and not reserve <= after <= usable:
        out.append(f"battery {after} left [{reserve}, {usable}]")
    bc = e.battery_charging
    bcd = bc.__dict__
    sums = [s + bcd[f] for s, f in zip(e.containers.sums(), LINE_FIELDS, strict=True)]
    t = e.total
    if sums != [t.energy_mj, t.solar_mj, t.battery_mj, t.grid_mj, t.unserved_mj, t.carbon_ug]:
        out.append(f"containers + battery_charging {sums} != total {t}")
    if sums[0] - bc.energy_mj != e.demand_mj:
        out.append("container energy != demand")
    if (t.solar_mj, t.battery_mj, t.grid_mj, t.unserved_mj) != (
        s2l + s2b + offered_in,
        b2l,
        g2l + g2b,
        unserved,
    ):
        out.append("total line != flows")
    if bc.grid_mj != g2b or bc.solar_mj != s2b + offered_in:
        out.append("battery_charging line != charging flows")
    i = e.intensity_g_per_kwh
    c_charge = carbon_ug(g2b, i)
    if bc.carbon_ug != c_charge:
        out.append("battery_charging carbon != carbon_ug(grid_to_battery, I)")
    if t.carbon_ug != carbon_ug(g2l, i) + c_charge:
        out.append("total carbon != carbon_ug(grid_to_load, I) + carbon_ug(grid_to_battery, I)")
    return out


class PlatformEntry(BaseModel):
    """The site's ``platform`` account: idle energy attributed to no app, served first by
    solar no app uses or stores, then by the grid. ``energy = solar + grid + unserved``."""

    model_config = _FROZEN

    energy_mj: NonNegativeInt
    solar_mj: NonNegativeInt = 0  # default: entries written before the platform had solar
    grid_mj: NonNegativeInt
    unserved_mj: NonNegativeInt  # cut by the site grid limit (last resort)
    carbon_ug: NonNegativeInt
    cumulative: PlatformCumulative

    @model_validator(mode="after")
    def _conserved(self) -> PlatformEntry:
        if self.energy_mj != self.solar_mj + self.grid_mj + self.unserved_mj:
            raise ValueError(f"platform energy {self.energy_mj} != solar + grid + unserved "
                             f"{self.solar_mj + self.grid_mj + self.unserved_mj}")
        return self


class ControllerSetpoints(BaseModel):
    """Aggregates for the physical battery controller (paper §3.3), W.

    ``grid_charge_w`` and ``max_discharge_w`` are for the NEXT tick, from the stores
    after this tick and the settings in force next tick (changes still queued that apply
    then included): Σ over apps with Rc > 0 of min(Rc, C-rate, room/Δt),
    and Σ over apps with Rc = 0 of min(Rd, share limit, deliverable above reserve/Δt).
    ``net_battery_w`` is THIS tick's net battery power at the bus, positive = charging:
    Σ (solar_to_battery + solar_offered_in + grid_to_battery - battery_to_load) / Δt.
    ``grid_charge_actual_w`` is this tick's Σ grid_to_battery / Δt.
    """

    model_config = _FROZEN

    grid_charge_w: float
    max_discharge_w: float
    net_battery_w: float
    grid_charge_actual_w: float


class DriftCheck(BaseModel):
    """Physical battery store vs Σ virtual stores at the tick end."""

    model_config = _FROZEN

    virtual_mj: NonNegativeInt
    physical_mj: NonNegativeInt
    diff_mj: int  # physical - virtual
    diff_wh: float
    tolerance_wh: float
    alert: bool  # |diff| > tolerance


class SiteAlertKind(StrEnum):
    battery_drift = "battery_drift"  # drift went beyond the tolerance
    battery_drift_cleared = "battery_drift_cleared"  # and came back within it
    grid_limit = "grid_limit"  # Σ grid exceeded the site limit; value = cut, J


class SiteAlert(BaseModel):
    model_config = _FROZEN

    kind: SiteAlertKind
    site: str
    k: int
    t_start: float
    value: float
    threshold: float
    unit: str


class SiteTickResult(BaseModel):
    """Everything one site tick produces (entries in sorted app order)."""

    model_config = _FROZEN

    site: str
    k: int
    t_start: float
    tick_s: float
    intensity_g_per_kwh: float
    entries: dict[str, AppLedgerEntry]
    platform: PlatformEntry
    totals: SiteTotals
    cumulative: SiteTotals
    controller: ControllerSetpoints
    drift: DriftCheck | None = None
    alerts: tuple[SiteAlert, ...] = ()
    estimated: bool = False
    estimated_sources: tuple[str, ...] = ()

