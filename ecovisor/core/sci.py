"""The Software Carbon Intensity of an app, SCI = (E*I + M) / R (Green Software
Foundation): operational carbon from the ledger plus the embodied share of the hardware,
per functional unit. Pure; integer µg.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt

from ecovisor.core.entries import AppLedgerEntry
from ecovisor.core.units import UG_PER_G

SECONDS_PER_YEAR = 365.25 * 86_400


class EmbodiedShare(BaseModel):
    """An app's share of one piece of hardware, for the embodied term M of SCI:
    ``M = TE * TS * RS``, ``TS = interval / lifetime`` (time share), ``RS`` the share of
    the hardware's resources reserved by the app (e.g. 2 of 8 cores = 0.25)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    name: str
    embodied_kg: float = Field(ge=0.0, description="TE: total embodied kgCO2eq")
    lifetime_s: float = Field(gt=0.0, description="EL: expected lifespan in seconds")
    resource_share: float = Field(ge=0.0, le=1.0, description="RS")

    @classmethod
    def years(cls, name: str, embodied_kg: float, lifetime_years: float,
              resource_share: float) -> EmbodiedShare:
        return cls(name=name, embodied_kg=embodied_kg,
                   lifetime_s=lifetime_years * SECONDS_PER_YEAR, resource_share=resource_share)


def embodied_ug(hardware: Sequence[EmbodiedShare], interval_s: float) -> int:
    """M over ``interval_s`` in integer µg (each piece rounded half to even)."""
    if interval_s < 0:
        raise ValueError("interval must be non-negative")
    return sum(
        round(h.embodied_kg * 1e9 * (interval_s / h.lifetime_s) * h.resource_share)
        for h in hardware
    )


class SciResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    interval_s: float
    operational_ug: NonNegativeInt  # E*I, from the ledger
    embodied_ug: NonNegativeInt  # M
    functional_units: float  # R
    sci_g_per_unit: float  # (E*I + M) / R in gCO2eq per functional unit


def sci(operational_ug: int, interval_s: float, hardware: Sequence[EmbodiedShare],
        functional_units: float) -> SciResult:
    """SCI = (E*I + M) / R over an interval. ``operational_ug`` is the app's ledger
    carbon over the interval (containers + battery_charging)."""
    if functional_units <= 0:
        raise ValueError("SCI needs a positive number of functional units R")
    m = embodied_ug(hardware, interval_s)
    return SciResult(
        interval_s=interval_s,
        operational_ug=operational_ug,
        embodied_ug=m,
        functional_units=functional_units,
        sci_g_per_unit=(operational_ug + m) / UG_PER_G / functional_units,
    )


def sci_of_entries(entries: Sequence[AppLedgerEntry], hardware: Sequence[EmbodiedShare],
                   functional_units: float) -> SciResult:
    """SCI of one app over consecutive ledger entries (interval = ticks * Δt)."""
    if not entries:
        raise ValueError("no ledger entries")
    apps = {e.app for e in entries}
    if len(apps) != 1:
        raise ValueError(f"entries of several apps: {sorted(apps)}")
    op = sum(e.total.carbon_ug for e in entries)
    interval = sum(e.tick_s for e in entries)
    return sci(op, interval, hardware, functional_units)
