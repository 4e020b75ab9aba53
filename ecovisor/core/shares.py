"""Configured shares of a site's physical energy system held by each application, and
the site's physical shape. Pure data; the site configuration file embeds these models
and the virtual energy system core consumes them."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field


class ExcessSolarPolicy(StrEnum):
    """What happens to solar an app can neither use nor store in a tick."""

    curtail = "curtail"  # default: dropped, counted
    offer = "offer"  # offered to other apps' batteries with room, deterministic order
    net_meter = "net_meter"  # exported to the grid, zero carbon, counted


class IdleAttribution(StrEnum):
    """How node idle power is attributed (Kepler / GHG Protocol ICT guidance)."""

    none = "none"  # booked to the site's `platform` account
    equal = "equal"  # split equally between the node's containers
    size = "size"  # P(vm) = U*Size*P_dyn + P_base/n  (size-weighted)


class AppShare(BaseModel):
    """One application's share of its site. Powers in W, energies in Wh."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    solar_fraction: float = Field(0.0, ge=0.0, le=1.0, description="fraction of site solar")
    battery_capacity_wh: float = Field(0.0, ge=0.0, description="Wh of battery capacity")
    battery_max_charge_w: float | None = Field(
        None, ge=0.0, description="W; default charge_c_rate * capacity"
    )
    battery_max_discharge_w: float | None = Field(
        None, ge=0.0, description="W; default discharge_c_rate * capacity"
    )
    charge_c_rate: float = Field(0.25, gt=0.0, description="1/h")
    discharge_c_rate: float = Field(1.0, gt=0.0, description="1/h")
    reserve_soc: float = Field(0.30, ge=0.0, lt=1.0, description="'empty' state of charge")
    charge_efficiency: float = Field(1.0, gt=0.0, le=1.0)
    discharge_efficiency: float = Field(1.0, gt=0.0, le=1.0)
    grid_w: float = Field(0.0, ge=0.0, description="W of grid power")
    initial_soc: float | None = Field(
        None, ge=0.0, le=1.0, description="initial state of charge; default the reserve"
    )

    @property
    def charge_limit_w(self) -> float:
        """Charge power limit: the C-rate, and the configured W if lower."""
        c = self.charge_c_rate * self.battery_capacity_wh
        return c if self.battery_max_charge_w is None else min(c, self.battery_max_charge_w)

    @property
    def discharge_limit_w(self) -> float:
        c = self.discharge_c_rate * self.battery_capacity_wh
        if self.battery_max_discharge_w is None:
            return c
        return min(c, self.battery_max_discharge_w)


class SiteShape(BaseModel):
    """The physical energy system of a site."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # at least 1 ms: the ledger counts time in integer µs (1e-7 s made a 0 µs tick), at
    # most a day
    tick_s: float = Field(1.0, ge=1e-3, le=86_400.0, allow_inf_nan=False,
                          description="tick length Δt in seconds")  # fmt: skip
    solar_nameplate_w: float = Field(0.0, ge=0.0)
    battery_capacity_wh: float = Field(0.0, ge=0.0)
    grid_limit_w: float = Field(float("inf"), gt=0.0)
    excess_solar: ExcessSolarPolicy = ExcessSolarPolicy.curtail
    idle_attribution: IdleAttribution = IdleAttribution.none
    drift_tolerance_wh: float = Field(0.5, ge=0.0, description="site alert threshold")
