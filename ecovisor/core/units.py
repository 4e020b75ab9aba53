"""Unit conversions. The ledger keeps energy in integer mJ and carbon in integer µg so
that sums are exact and a replayed run gives identical totals."""

from __future__ import annotations

MJ_PER_J = 1_000
MJ_PER_WH = 3_600_000
MJ_PER_KWH = 3_600_000_000
UG_PER_G = 1_000_000
MG_PER_G = 1_000
US_PER_S = 1_000_000  # event times are integer microseconds


def j_to_mj(joules: float) -> int:
    """Joules to integer millijoules (round half to even, deterministic)."""
    return round(joules * MJ_PER_J)


def wh_to_mj(wh: float) -> int:
    return round(wh * MJ_PER_WH)


def mj_to_wh(mj: int) -> float:
    return mj / MJ_PER_WH


def mj_to_j(mj: int) -> float:
    return mj / MJ_PER_J


def power_to_mj(watts: float, seconds: float) -> int:
    """Energy of a constant power over an interval, in integer mJ."""
    return round(watts * seconds * MJ_PER_J)


def mj_to_power(mj: int, seconds: float) -> float:
    """Mean power in W of an energy in mJ over an interval."""
    return mj / MJ_PER_J / seconds


def carbon_ug(energy_mj: int, intensity_g_per_kwh: float) -> int:
    """Carbon in integer µg of grid energy (mJ) at an intensity (gCO2eq/kWh).

    g = mJ / 3.6e9 * I, so µg = mJ * I / 3600. Rounded half to even; the error of any
    single booking is at most 0.5 µg.
    """
    return round(energy_mj * intensity_g_per_kwh / 3600)


def ug_to_g(ug: int) -> float:
    return ug / UG_PER_G


def lbs_per_mwh_to_g_per_kwh(lbs_per_mwh: float) -> float:
    """WattTime-style lbs/MWh to gCO2eq/kWh (1 lb = 453.59237 g)."""
    return lbs_per_mwh * 453.59237 / 1000


# The largest value taken at the edge: a cumulative counter (J, CPU s) and any other
# number (W, Wh, g, gCO2eq/kWh, ...). x1e3 (mJ) and x3.6e6 (Wh) stay finite floats that
# convert to int exactly. The contract refuses bigger ones; the tick clock re-checks
# (it does not rely on its input having been validated).
MAX_COUNTER = 1.0e15
MAX_MAGNITUDE = 1.0e12
