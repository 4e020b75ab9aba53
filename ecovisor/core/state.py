"""Typed data of one accounting tick: the settings an app controls, the changes that set
them, the per-tick inputs, the account lines and flows, and the state carried from one
tick to the next.

Everything here is a pydantic v2 model: plain data, frozen, JSON-serialisable with
``model_dump(mode="json")`` and restored with ``model_validate``. Integers are mJ
(energy) and µg (carbon); the few floats are configuration (W, g, s) or event time.
No clocks, no I/O, no globals.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, NonNegativeInt, model_validator

from ecovisor.core.account_lines import (
    EMPTY_LINES,
    FROZEN,
    ZERO_LINE,
    AccountLine,
    ContainerLines,
    Mj,
    Ug,
    unchecked,
)

# --- settings an application controls (paper Table 1 setters, Table 2 library) --------


class CarbonRateLimit(BaseModel):
    """set_carbon_rate(container, rate): mg/s averaged over a sliding window."""

    model_config = FROZEN

    rate_mg_per_s: float = Field(ge=0.0)
    window_s: float = Field(60.0, gt=0.0, le=86_400.0, description="sliding window, default 60 s")


class CarbonBudget(BaseModel):
    """set_carbon_budget(budget): g of CO2eq for the app per period."""

    model_config = FROZEN

    budget_g: float = Field(ge=0.0)
    period_s: float | None = Field(
        None, gt=0.0, description="the budget resets every period; None = never resets"
    )


class NotifyThresholds(BaseModel):
    """When solar_change / carbon_change fire, and what "near" a limit means.

    A change is significant when ``|new - ref| >= max(abs, rel * |ref|)`` and non-zero,
    ``ref`` being the value last notified (or seen first)."""

    model_config = FROZEN

    solar_change_abs_w: float = Field(1.0, ge=0.0)
    solar_change_rel: float = Field(0.10, ge=0.0)
    carbon_change_abs_g_per_kwh: float = Field(10.0, ge=0.0)
    carbon_change_rel: float = Field(0.05, ge=0.0)
    near_fraction: float = Field(
        0.9, gt=0.0, le=1.0, description="'near' a carbon rate or budget at this fraction"
    )


class AppSettings(BaseModel):
    """Settings in force for one app. Each ledger entry records the settings it used."""

    model_config = FROZEN

    charge_rate_w: float = Field(
        0.0, ge=0.0, description="Rc: charge at this rate until full, then reset to 0"
    )
    max_discharge_w: float | None = Field(
        None, ge=0.0, description="Rd; None = the share's discharge limit"
    )
    container_caps_w: dict[str, float] = Field(
        default_factory=dict, description="power caps in W; absent = no cap"
    )
    carbon_rates: dict[str, CarbonRateLimit] = Field(default_factory=dict)
    carbon_budget: CarbonBudget | None = None
    notify: NotifyThresholds = Field(default_factory=NotifyThresholds)


class SetBatteryChargeRate(BaseModel):
    model_config = FROZEN
    type: Literal["set_battery_charge_rate"] = "set_battery_charge_rate"
    watts: float = Field(ge=0.0)


class SetBatteryMaxDischarge(BaseModel):
    model_config = FROZEN
    type: Literal["set_battery_max_discharge"] = "set_battery_max_discharge"
    watts: float | None = Field(ge=0.0, description="None = back to the share's limit")


class SetContainerPowercap(BaseModel):
    model_config = FROZEN
    type: Literal["set_container_powercap"] = "set_container_powercap"
    container: str = Field(min_length=1)
    watts: float | None = Field(gt=0.0, description="None removes the cap")


class SetCarbonRate(BaseModel):
    model_config = FROZEN
    type: Literal["set_carbon_rate"] = "set_carbon_rate"
    container: str = Field(min_length=1)
    limit: CarbonRateLimit | None = Field(description="None removes the limit")


class SetCarbonBudget(BaseModel):
    model_config = FROZEN
    type: Literal["set_carbon_budget"] = "set_carbon_budget"
    budget: CarbonBudget | None = Field(description="None removes the budget")


class SetNotifyThresholds(BaseModel):
    model_config = FROZEN
    type: Literal["set_notify_thresholds"] = "set_notify_thresholds"
    notify: NotifyThresholds


SettingsChange = Annotated[
    SetBatteryChargeRate
    | SetBatteryMaxDischarge
    | SetContainerPowercap
    | SetCarbonRate
    | SetCarbonBudget
    | SetNotifyThresholds,
    Field(discriminator="type"),
]


class PendingChange(BaseModel):
    """A change accepted during tick ``accepted_k``; it applies from tick
    ``accepted_k + 1``."""

    model_config = FROZEN

    accepted_k: int = Field(ge=0)
    change: SettingsChange

    @model_validator(mode="before")
    @classmethod
    def _type_was_kind(cls, data: Any) -> Any:
        """Snapshots written before the change's tag was named ``type`` (as on the
        wire) call it ``kind``; restore them unchanged."""
        change = data.get("change") if isinstance(data, dict) else None
        if isinstance(change, dict) and "kind" in change and "type" not in change:
            data = {**data, "change": {**{k: v for k, v in change.items() if k != "kind"},
                                       "type": change["kind"]}}
        return data


# --- inputs of one tick ----------------------------------------------------------------


class AppTickInput(BaseModel):
    """One app's inputs for tick ``k`` (used by ``app_step``; ``site_step`` builds
    these from a ``SiteTickInput``)."""

    model_config = FROZEN

    k: int = Field(ge=0, description="tick index")
    t_start: float = Field(description="event time of the tick start, epoch seconds")
    solar_mj: Mj = Field(description="this app's solar, measured in tick k-1")
    intensity_g_per_kwh: float = Field(ge=0.0, description="time-weighted mean over the tick")
    demand_mj: dict[str, Mj] = Field(
        default_factory=dict, description="per container energy in the tick"
    )
    estimated_sources: tuple[str, ...] = Field(
        (), description="sources carried forward (silent when the tick closed)"
    )


class SiteTickInput(BaseModel):
    """All inputs of one site for tick ``k``. The caller buffers solar by one tick,
    differences cumulative counters into per-tick energies, and converts units."""

    model_config = FROZEN

    k: int = Field(ge=0)
    t_start: float
    site_solar_mj: Mj = Field(description="site solar energy measured in tick k-1")
    intensity_g_per_kwh: float = Field(ge=0.0)
    demand_mj: dict[str, dict[str, Mj]] = Field(
        default_factory=dict, description="app -> container -> energy in the tick"
    )
    platform_mj: Mj = Field(0, description="idle energy attributed to no app")
    physical_battery_mj: Mj | None = Field(
        None, description="stored energy of the physical battery at the tick end"
    )
    estimated_sources: tuple[str, ...] = Field((), description="site-wide carried forward")
    app_estimated_sources: dict[str, tuple[str, ...]] = Field(default_factory=dict)


# --- flows and account lines -------------------------------------------------------------


class AppFlows(BaseModel):
    """Every energy flow of one app in one tick (or summed over ticks), integer mJ, each
    non-negative. Balances (exact):

    - solar:   S = solar_to_load + solar_to_battery + solar_to_platform
                   + solar_excess_curtailed + solar_excess_offered + solar_exported
    - load:    D = solar_to_load + battery_to_load + grid_to_load + unserved
    - battery: after - before = solar_to_battery + solar_offered_in + grid_to_battery
                   - battery_to_load - battery_loss
    """

    model_config = FROZEN

    solar_to_load: Mj = 0
    solar_to_battery: Mj = 0
    # excess solar (neither used nor stored by the app) that served the site's platform
    # idle load before being curtailed, offered or exported (docs/core.md §9)
    solar_to_platform: Mj = 0
    solar_excess_curtailed: Mj = 0
    solar_excess_offered: Mj = 0
    solar_offered_in: Mj = 0
    solar_exported: Mj = 0
    battery_to_load: Mj = 0
    grid_to_load: Mj = 0
    grid_to_battery: Mj = 0
    unserved: Mj = 0
    battery_loss: Mj = 0

    def __add__(self, other: AppFlows) -> AppFlows:
        a, b = self.__dict__, other.__dict__
        return unchecked(AppFlows, {f: a[f] + b[f] for f in a})


ZERO_FLOWS = AppFlows()


# --- state carried between ticks ---------------------------------------------------------


class Level(StrEnum):
    """Where a tracked carbon figure stands against its limit."""

    ok = "ok"
    near = "near"
    exceeded = "exceeded"


class RateWindow(BaseModel):
    """Carbon of one container over the last ``window_ticks`` ticks, kept as at most
    600 bucket sums of ``bucket_ticks`` ticks each (exact while the window has at most
    600 ticks; beyond, the window slides a bucket at a time)."""

    model_config = FROZEN

    window_ticks: int = Field(ge=1)
    bucket_ticks: int = Field(1, ge=1)
    last_k: int | None = None
    values_ug: tuple[Ug, ...] = ()
    level: Level = Level.ok


class BudgetTracker(BaseModel):
    """Carbon of the app in the current budget period."""

    model_config = FROZEN

    period_s: float | None = None
    period_start_k: int = Field(ge=0)
    used_ug: Ug = 0
    level: Level = Level.ok


HISTORY_TIERS_MAX = 32  # bounds a restored snapshot; a day at Δt = 1 s needs 7 tiers
HISTORY_TIER_LEN_MAX = 64


class CarbonHistory(BaseModel):
    """Carbon of one container in its recent ticks, kept for every container that
    emitted within the largest carbon-rate window (86,400 s), so that a rate limit set
    (or resized) later starts from what the container actually emitted.

    ``ticks``: tier 0, one value per tick, the last one tick ``last_k``. ``buckets[i]``:
    tier i + 1, coarser and further back (``carbon_limits.history_tiers`` gives each
    tier's bucket length and count for ``max_ticks``): its *completed* bucket sums,
    ending with the bucket before the one holding ``last_k``. That open bucket is the sum
    of the finer tiers' values in it, so a tick adds to one tier only, instead of copying
    every tier (``carbon_limits.history_with_open`` gives the tiers with their open
    buckets). Bounded: at most ``HISTORY_TIERS_MAX`` tiers of ``HISTORY_TIER_LEN_MAX``
    values.

    Snapshots written before 3 December 2026 hold ``tiers`` (every tier with its open
    bucket last): read as the same history."""

    model_config = FROZEN

    max_ticks: int = Field(ge=1, description="the largest window in ticks at this Δt")
    last_k: int = Field(ge=0)
    ticks: tuple[Ug, ...] = Field(min_length=1, max_length=HISTORY_TIER_LEN_MAX)
    buckets: tuple[tuple[Ug, ...], ...] = Field(max_length=HISTORY_TIERS_MAX - 1)

    @model_validator(mode="before")
    @classmethod
    def _from_tiers(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tiers" in data and "ticks" not in data:
            tiers = data["tiers"]
            if isinstance(tiers, list | tuple) and tiers and all(
                    isinstance(t, list | tuple) and t for t in tiers):
                rest = {k: v for k, v in data.items() if k != "tiers"}
                return {**rest, "ticks": tiers[0], "buckets": [t[:-1] for t in tiers[1:]]}
        return data

    @model_validator(mode="after")
    def _bounded(self) -> CarbonHistory:
        if any(len(t) > HISTORY_TIER_LEN_MAX for t in self.buckets):
            raise ValueError(f"a history tier holds at most {HISTORY_TIER_LEN_MAX} values")
        return self


class EventTracking(BaseModel):
    """What event detection remembers: last notified solar and intensity, carbon rate
    windows of containers that have a limit, the recent carbon of every container that
    emitted (to start a window set later), the budget of the current period.

    ``solar_ref_mj`` is the exact reference (solar energy per tick) the solar_change
    rule compares with; ``solar_ref_w`` the same in W, as shown (snapshots written
    before ``solar_ref_mj`` existed compare with it)."""

    model_config = FROZEN

    solar_ref_w: float | None = None
    solar_ref_mj: Mj | None = None
    intensity_ref: float | None = None
    rate_windows: dict[str, RateWindow] = Field(default_factory=dict)
    carbon_history: dict[str, CarbonHistory] = Field(default_factory=dict)
    budget: BudgetTracker | None = None


class AppCumulative(BaseModel):
    """Monotone counters of one app since its state was created."""

    model_config = FROZEN

    ticks: NonNegativeInt = 0
    estimated_ticks: NonNegativeInt = 0
    unserved_ticks: NonNegativeInt = 0
    solar_mj: Mj = 0
    demand_mj: Mj = 0
    grid_cut_mj: Mj = 0
    flows: AppFlows = ZERO_FLOWS
    total: AccountLine = ZERO_LINE
    battery_charging: AccountLine = ZERO_LINE
    containers: ContainerLines = Field(default_factory=lambda: EMPTY_LINES)


MAX_PENDING = 256


class AppState(BaseModel):
    """Everything the ledger keeps for one app between ticks."""

    model_config = FROZEN

    site: str
    app: str
    next_k: int | None = Field(None, description="ticks before this index are accounted")
    battery_mj: Mj
    settings: AppSettings = Field(default_factory=AppSettings)
    pending: tuple[PendingChange, ...] = Field((), max_length=MAX_PENDING)
    cumulative: AppCumulative = Field(default_factory=AppCumulative)
    tracking: EventTracking = Field(default_factory=EventTracking)


class PlatformCumulative(BaseModel):
    model_config = FROZEN

    energy_mj: Mj = 0
    solar_mj: Mj = 0
    grid_mj: Mj = 0
    unserved_mj: Mj = 0
    carbon_ug: Ug = 0


class SiteTotals(BaseModel):
    """Site-wide sums of one tick (or, cumulated, since the start). Balance (exact):

    solar + grid + unserved = load + Δstored + battery_loss + curtailed + exported

    with ``load = Σ app demand + platform``, ``grid = Σ app grid + platform grid``,
    ``unserved = Σ app unserved + platform unserved``; the platform is served by
    ``platform_solar + platform_grid + platform_unserved`` (its solar is part of ``solar``
    and in none of curtailed, offered, exported).
    """

    model_config = FROZEN

    solar_mj: Mj = 0
    solar_unallocated_mj: Mj = 0
    solar_to_load_mj: Mj = 0
    solar_to_battery_mj: Mj = 0
    solar_offered_mj: Mj = 0
    solar_curtailed_mj: Mj = 0
    solar_exported_mj: Mj = 0
    battery_to_load_mj: Mj = 0
    battery_loss_mj: Mj = 0
    grid_to_load_mj: Mj = 0
    grid_to_battery_mj: Mj = 0
    grid_cut_mj: Mj = 0
    platform_mj: Mj = 0
    platform_solar_mj: Mj = 0
    platform_grid_mj: Mj = 0
    platform_unserved_mj: Mj = 0
    unserved_mj: Mj = 0
    demand_mj: Mj = 0
    load_mj: Mj = 0
    grid_mj: Mj = 0
    carbon_ug: Ug = 0

    def __add__(self, other: SiteTotals) -> SiteTotals:
        a, b = self.__dict__, other.__dict__
        return unchecked(SiteTotals, {f: a[f] + b[f] for f in a})


class SiteState(BaseModel):
    """Everything the ledger keeps for one site between ticks."""

    model_config = FROZEN

    site: str
    next_k: int | None = None
    apps: dict[str, AppState]
    platform: PlatformCumulative = Field(default_factory=PlatformCumulative)
    cumulative: SiteTotals = Field(default_factory=SiteTotals)
    drift_alerting: bool = False
