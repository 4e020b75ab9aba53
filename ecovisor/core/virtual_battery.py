"""The virtual battery: limits of an app's battery share and the exact integer
arithmetic of charging and discharging it.

All energies are integer mJ. Limits are applied on the *bus side* of the battery (the
energy that enters from solar/grid, the energy delivered to the load); the battery's
own store changes by ``floor(input * charge_efficiency)`` when charging and by the
energy drawn when discharging, and the difference is the explicit ``battery_loss``
flow. With efficiencies of 1.0 (the default) there is no loss.

Headroom and reserve (BRIEF "Battery"):

- usable capacity ``U = capacity - headroom``, headroom = the share's solar nameplate
  (``solar_fraction * site solar_nameplate_w``) over one tick, so one tick of maximum
  solar always fits (paper §3.1);
- reserve ``R = reserve_soc * capacity`` is "empty": the store never goes below it,
  because discharge is limited in advance to what the store holds above ``R``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ecovisor.core.shares import AppShare, SiteShape
from ecovisor.core.units import power_to_mj, wh_to_mj


@dataclass(frozen=True, slots=True)
class BatteryLimits:
    """Per-tick limits of one app's virtual battery, integer mJ."""

    capacity_mj: int  # the share's capacity
    headroom_mj: int  # one tick of the share's solar nameplate
    usable_mj: int  # capacity - headroom, never below 0: "full"
    reserve_mj: int  # reserve_soc * capacity: "empty"
    charge_in_mj: int  # C-rate charge limit over the tick, bus side (input)
    discharge_out_mj: int  # share's discharge limit over the tick, bus side (delivered)
    charge_efficiency: float
    discharge_efficiency: float


def battery_limits(share: AppShare, shape: SiteShape) -> BatteryLimits:
    """The limits of ``share``'s battery for one tick of ``shape``.

    Raises ``ValueError`` if the reserve lies above the usable capacity (the share's
    battery is too small for its solar headroom plus its reserve), or if a capacity,
    grid share, charge/discharge limit or the site's solar nameplate is not finite.
    """
    for name, value in (("battery_capacity_wh", share.battery_capacity_wh),
                        ("grid_w", share.grid_w),
                        ("charge limit W", share.charge_limit_w),
                        ("discharge limit W", share.discharge_limit_w),
                        ("site solar_nameplate_w", shape.solar_nameplate_w)):
        # YAML .inf passes the share's own validation; integer mJ need finite values
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    dt = shape.tick_s
    capacity = wh_to_mj(share.battery_capacity_wh)
    headroom = power_to_mj(share.solar_fraction * shape.solar_nameplate_w, dt)
    usable = max(0, capacity - headroom)
    reserve = round(share.reserve_soc * capacity)
    if reserve > usable:
        raise ValueError(
            f"battery share of {share.battery_capacity_wh} Wh: reserve {reserve} mJ lies above "
            f"usable capacity {usable} mJ (capacity {capacity} mJ - solar headroom "
            f"{headroom} mJ); give the share more capacity or less solar"
        )
    return BatteryLimits(
        capacity_mj=capacity,
        headroom_mj=headroom,
        usable_mj=usable,
        reserve_mj=reserve,
        charge_in_mj=power_to_mj(share.charge_limit_w, dt),
        discharge_out_mj=power_to_mj(share.discharge_limit_w, dt),
        charge_efficiency=share.charge_efficiency,
        discharge_efficiency=share.discharge_efficiency,
    )


def initial_stored_mj(share: AppShare, limits: BatteryLimits) -> int:
    """Initial store: ``initial_soc * capacity`` (default the reserve), clamped into
    ``[reserve, usable]``."""
    if share.initial_soc is None:
        return limits.reserve_mj
    want = round(share.initial_soc * limits.capacity_mj)
    return min(max(want, limits.reserve_mj), limits.usable_mj)


def stored_gain(input_mj: int, efficiency: float) -> int:
    """Energy that enters the store for ``input_mj`` at the bus: ``floor(input * eff)``."""
    if efficiency == 1.0:
        return input_mj
    return math.floor(input_mj * efficiency)


def max_input_for_room(room_mj: int, efficiency: float) -> int:
    """Largest bus-side input whose stored gain fits in ``room_mj``.

    Because ``efficiency <= 1``, ``floor(x * eff)`` takes every integer value, so the
    returned input fills the room exactly (the battery can reach "full")."""
    if room_mj <= 0:
        return 0
    if efficiency == 1.0:
        return room_mj
    x = math.floor(room_mj / efficiency)
    while stored_gain(x, efficiency) > room_mj:
        x -= 1
    while stored_gain(x + 1, efficiency) <= room_mj:
        x += 1
    return x


def deliverable(available_mj: int, efficiency: float) -> int:
    """Energy the load can get from ``available_mj`` drawn from the store."""
    if available_mj <= 0:
        return 0
    return stored_gain(available_mj, efficiency)


def draw_for(delivered_mj: int, efficiency: float) -> int:
    """Smallest draw from the store that delivers ``delivered_mj`` to the load; its
    delivery is exactly ``delivered_mj`` (no energy is created)."""
    if delivered_mj <= 0:
        return 0
    if efficiency == 1.0:
        return delivered_mj
    z = math.ceil(delivered_mj / efficiency)
    while z > 0 and stored_gain(z - 1, efficiency) >= delivered_mj:
        z -= 1
    while stored_gain(z, efficiency) < delivered_mj:
        z += 1
    return z


def charge_input_capacity(stored_mj: int, already_in_mj: int, limits: BatteryLimits) -> int:
    """How much more the battery can take at the bus this tick, given ``stored_mj`` (after
    any discharge this tick) and ``already_in_mj`` input so far: the C-rate limit and
    the room up to usable capacity, for the whole tick's input together."""
    total = min(limits.charge_in_mj, max_input_for_room(limits.usable_mj - stored_mj,
                                                          limits.charge_efficiency))
    return max(0, total - already_in_mj)
