"""Container power caps, enforced by limiting CPU through the node's power model (as the
Ecovisor prototype does, paper §4: cgroups cap a container's CPU so its modelled power
stays under the cap). Pure, no I/O: this module computes quotas; actuators write them.

A cap in W covers the container's active power plus its attributed idle share (see
``ecovisor.attribution``). Under quota q (cores) the container draws at most

    f(q) = idle_share + q / B · (P(B / cores) - P(0)),   B = q + min(others, cores - q)

i.e. its CPU-time share of the node's active power when it runs its full quota next to
``other_busy_cores`` of other load. For a linear model this is
idle_share + q · (P_max - P_idle) / cores, whatever the others do. f is non-decreasing
in q, so the inverse - the largest quota with f(q) <= cap - is found exactly by binary
search over integer microseconds of quota per period.

A cap below the floor is rejected (``CapRejected`` with a ``reason``): below the idle
share no quota can help; below f(1 ms per period) the kernel cannot enforce it
(cpu.cfs_quota_us / cpu.max quota must be at least 1000 µs). ``None`` removes the cap.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from enum import StrEnum

from pydantic import BaseModel, ConfigDict, Field

from ecovisor.core.attribution import PowerModel, idle_share_w
from ecovisor.core.shares import IdleAttribution

__all__ = [
    "DEFAULT_PERIOD_US",
    "MAX_PERIOD_US",
    "MIN_PERIOD_US",
    "MIN_QUOTA_US",
    "CapRejectReason",
    "CapRejected",
    "CpuQuota",
    "cap_floor_w",
    "cgroup_v1_values",
    "cores_to_quota_us",
    "cpu_max_value",
    "max_power_at_quota",
    "parse_cpu_max",
    "quota_for_cap",
    "quota_for_container_cap",
]

DEFAULT_PERIOD_US = 100_000  # the kernel's default CFS period
MIN_PERIOD_US = 1_000  # kernel limits on cpu.cfs_period_us / cpu.max period
MAX_PERIOD_US = 1_000_000
MIN_QUOTA_US = 1_000  # the kernel rejects a quota below 1 ms per period


class CapRejectReason(StrEnum):
    invalid = "invalid"  # not a finite number >= 0
    below_idle_floor = "below_idle_floor"  # below the container's attributed idle share
    below_min_quota = "below_min_quota"  # below the power at the kernel's minimum quota


class CapRejected(ValueError):
    """A power cap that cannot be enforced; ``reason`` says why, ``floor_w`` is the
    lowest cap that would be accepted (None for an invalid value)."""

    def __init__(
        self, reason: CapRejectReason, message: str, *, cap_w: float, floor_w: float | None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.cap_w = cap_w
        self.floor_w = floor_w


def _check_period(period_us: int) -> None:
    if not MIN_PERIOD_US <= period_us <= MAX_PERIOD_US:
        raise ValueError(
            f"CFS period must be within [{MIN_PERIOD_US}, {MAX_PERIOD_US}] µs, got {period_us}"
        )


def _max_cores(model: PowerModel, max_cores: float | None) -> float:
    if max_cores is None:
        return float(model.cores)
    if not math.isfinite(max_cores) or max_cores <= 0:
        raise ValueError(f"max_cores must be a finite number > 0, got {max_cores!r}")
    return min(float(max_cores), float(model.cores))


def max_power_at_quota(
    model: PowerModel,
    quota_cores: float | None,
    *,
    idle_share_w: float = 0.0,
    other_busy_cores: float = 0.0,
    max_cores: float | None = None,
) -> float:
    """The forward direction: the most a container draws (W) under a CPU quota.

    ``quota_cores`` None means no quota (the container may use ``max_cores``, default
    all of the node's cores). The result includes ``idle_share_w``.
    """
    if not math.isfinite(idle_share_w) or idle_share_w < 0:
        raise ValueError(f"idle_share_w must be >= 0, got {idle_share_w!r}")
    if not math.isfinite(other_busy_cores) or other_busy_cores < 0:
        raise ValueError(f"other_busy_cores must be >= 0, got {other_busy_cores!r}")
    limit = _max_cores(model, max_cores)
    if quota_cores is None:
        q = limit
    else:
        if not math.isfinite(quota_cores) or quota_cores < 0:
            raise ValueError(f"quota must be a finite number of cores >= 0, got {quota_cores!r}")
        q = min(quota_cores, limit)
    cores = float(model.cores)
    others = min(other_busy_cores, max(cores - q, 0.0))
    busy = q + others
    if busy <= 0:
        return idle_share_w
    active = q / busy * model.dynamic_w(min(busy / cores, 1.0))
    return idle_share_w + active


def cap_floor_w(
    model: PowerModel,
    *,
    idle_share_w: float = 0.0,
    other_busy_cores: float = 0.0,
    period_us: int = DEFAULT_PERIOD_US,
    max_cores: float | None = None,
) -> float:
    """The lowest cap that can be enforced: the power at the kernel's minimum quota."""
    _check_period(period_us)
    return max_power_at_quota(
        model,
        MIN_QUOTA_US / period_us,
        idle_share_w=idle_share_w,
        other_busy_cores=other_busy_cores,
        max_cores=max_cores,
    )


class CpuQuota(BaseModel):
    """The CPU limit that holds a container at or below its power cap."""

    model_config = ConfigDict(frozen=True)

    cap_w: float | None = Field(description="the cap; None = no cap")
    quota_us: int | None = Field(description="CPU µs per period; None = unlimited")
    period_us: int
    max_power_w: float = Field(description="modelled power at this quota (<= cap_w)")
    idle_share_w: float
    binding: bool = Field(description="whether the cap limits CPU below max_cores")

    @property
    def cores(self) -> float | None:
        """The quota in cores (quota_us / period_us); None = unlimited."""
        return None if self.quota_us is None else self.quota_us / self.period_us

    def cgroup_v1(self) -> tuple[int, int]:
        """(cpu.cfs_quota_us, cpu.cfs_period_us); quota -1 = unlimited."""
        return cgroup_v1_values(self.quota_us, self.period_us)

    def cpu_max(self) -> str:
        """The cgroup v2 ``cpu.max`` line: "<quota> <period>" or "max <period>"."""
        return cpu_max_value(self.quota_us, self.period_us)


def quota_for_cap(
    model: PowerModel,
    cap_w: float | None,
    *,
    idle_share_w: float = 0.0,
    other_busy_cores: float = 0.0,
    period_us: int = DEFAULT_PERIOD_US,
    max_cores: float | None = None,
) -> CpuQuota:
    """The inverse: the largest CPU quota under which the container stays <= ``cap_w``.

    ``idle_share_w`` is the container's attributed idle power (``attribution.
    idle_share_w``; 0 under idle attribution ``none``). ``max_cores`` limits the quota
    (a cpuset; default and upper bound: the node's cores). A cap at or above the
    container's power at ``max_cores`` is not binding and gives the full quota.
    ``cap_w=None`` removes the cap (unlimited quota). Raises ``CapRejected``.
    """
    _check_period(period_us)
    limit = _max_cores(model, max_cores)

    def f(quota_us: int) -> float:
        return max_power_at_quota(
            model,
            quota_us / period_us,
            idle_share_w=idle_share_w,
            other_busy_cores=other_busy_cores,
            max_cores=limit,
        )

    if cap_w is None:
        return CpuQuota(
            cap_w=None,
            quota_us=None,
            period_us=period_us,
            max_power_w=f(cores_to_quota_us(limit, period_us)),
            idle_share_w=idle_share_w,
            binding=False,
        )
    if not isinstance(cap_w, int | float) or not math.isfinite(cap_w) or cap_w < 0:
        raise CapRejected(
            CapRejectReason.invalid,
            f"power cap must be a finite number of W >= 0 (or null to remove it), got {cap_w!r}",
            cap_w=float("nan"),
            floor_w=None,
        )
    floor = f(MIN_QUOTA_US)
    if cap_w < idle_share_w:
        raise CapRejected(
            CapRejectReason.below_idle_floor,
            f"power cap {cap_w:g} W is below the container's idle floor {idle_share_w:g} W "
            f"(its attributed share of the node's idle power); the lowest enforceable cap "
            f"is {floor:g} W",
            cap_w=cap_w,
            floor_w=floor,
        )
    if cap_w < floor:
        raise CapRejected(
            CapRejectReason.below_min_quota,
            f"power cap {cap_w:g} W is below {floor:g} W, the container's power at the "
            f"kernel's minimum CPU quota ({MIN_QUOTA_US} µs per {period_us} µs period)",
            cap_w=cap_w,
            floor_w=floor,
        )

    def at(quota_us: int, binding: bool) -> CpuQuota:
        return CpuQuota(
            cap_w=cap_w,
            quota_us=quota_us,
            period_us=period_us,
            max_power_w=f(quota_us),
            idle_share_w=idle_share_w,
            binding=binding,
        )

    hi = cores_to_quota_us(limit, period_us)
    if f(hi) <= cap_w:
        return at(hi, binding=False)
    lo = MIN_QUOTA_US  # f(lo) <= cap < f(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if f(mid) <= cap_w:
            lo = mid
        else:
            hi = mid
    return at(lo, binding=True)


def quota_for_container_cap(
    model: PowerModel,
    cap_w: float | None,
    *,
    container: str,
    members: Iterable[str],
    idle_mode: IdleAttribution,
    sizes: Mapping[str, float] | None = None,
    other_busy_cores: float = 0.0,
    period_us: int = DEFAULT_PERIOD_US,
    max_cores: float | None = None,
) -> CpuQuota:
    """``quota_for_cap`` with the idle share of ``container`` among the node's
    ``members`` under the site's idle attribution mode."""
    share = idle_share_w(model, idle_mode, container, members, sizes)
    return quota_for_cap(
        model,
        cap_w,
        idle_share_w=share,
        other_busy_cores=other_busy_cores,
        period_us=period_us,
        max_cores=max_cores,
    )


# --- cgroup value helpers -------------------------------------------------------------


def _check_quota(quota_us: int | None) -> None:
    if quota_us is not None and quota_us < MIN_QUOTA_US:
        raise ValueError(f"CPU quota must be >= {MIN_QUOTA_US} µs per period, got {quota_us}")


# Float slack of the rounding below: 0.29 cores is 29000 µs, not 28999 (0.29 * 100000
# is 28999.999999999996), and quota / period * period gives the quota back exactly.
_QUOTA_SLACK_US = 1e-6


def cores_to_quota_us(cores: float, period_us: int = DEFAULT_PERIOD_US) -> int:
    """A CPU limit in cores as µs per period: the one rounding rule of every backend
    (cgroup v1/v2, LXD). Rounded down, so a limit never exceeds what was asked (a cap
    stays a cap), and at least the kernel minimum."""
    _check_period(period_us)
    if not math.isfinite(cores) or cores <= 0:
        raise ValueError(f"cores must be a finite number > 0, got {cores!r}")
    return max(math.floor(cores * period_us + _QUOTA_SLACK_US), MIN_QUOTA_US)


def cgroup_v1_values(quota_us: int | None, period_us: int = DEFAULT_PERIOD_US) -> tuple[int, int]:
    """Values for cgroup v1 ``cpu.cfs_quota_us`` and ``cpu.cfs_period_us``; -1 = no limit."""
    _check_period(period_us)
    _check_quota(quota_us)
    return (-1 if quota_us is None else quota_us, period_us)


def cpu_max_value(quota_us: int | None, period_us: int = DEFAULT_PERIOD_US) -> str:
    """The cgroup v2 ``cpu.max`` content: "<quota> <period>", or "max <period>"."""
    _check_period(period_us)
    _check_quota(quota_us)
    return f"{'max' if quota_us is None else quota_us} {period_us}"


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """Parse a cgroup v2 ``cpu.max`` value: (quota_us or None for "max", period_us)."""
    parts = text.split()
    if len(parts) not in (1, 2):
        raise ValueError(f"not a cpu.max value: {text!r}")
    period = DEFAULT_PERIOD_US if len(parts) == 1 else int(parts[1])
    _check_period(period)
    if parts[0] == "max":
        return None, period
    quota = int(parts[0])
    _check_quota(quota)
    return quota, period
