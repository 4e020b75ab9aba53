"""Attribution of a node's power and energy to its containers. Pure, no I/O.

A node's power splits into idle (P(0), drawn whatever runs) and active (the rest).

* **Active** power/energy goes to workloads by their share of the node's busy CPU time
  (Kepler's ratio attribution). CPU time the containers do not account for (system
  daemons, kernel) is the platform's.
* **Idle** power/energy goes by the site's ``IdleAttribution`` mode:
  ``none`` - all to the site's ``platform`` account; ``equal`` - P_base / n over the n
  containers on the node; ``size`` - in proportion to each container's size (the
  GHG Protocol ICT guidance P(vm) = U(vm)·Size(vm)·P_dyn + P_base/n, read with the
  Kepler post's "larger homes pay larger HOA fees": idle ∝ Size, normalised over the
  containers present so it is all attributed).

Energies come from cumulative counters (CPU seconds per container and for the node,
optionally measured node joules from RAPL/Kepler), never from instantaneous samples
alone, and are returned in integer mJ; instantaneous powers are returned in integer mW.
Every split is exact: Σ containers + platform == node, by largest remainder with a
deterministic tie-break (container names in sorted order, then the platform).

See docs/power-models.md for the formulas and the worked example of seed 001.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from fractions import Fraction
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field

from ecovisor.core import apportion
from ecovisor.core.power_model import (
    LinearPowerModel,
    PiecewiseLinearPowerModel,
    PolynomialPowerModel,
)
from ecovisor.core.shares import IdleAttribution
from ecovisor.core.units import j_to_mj, mj_to_power, power_to_mj

__all__ = [
    "Attribution",
    "CounterError",
    "CounterSnapshot",
    "PowerModel",
    "ReferenceMethod",
    "Share",
    "attribute_energy",
    "attribute_interval",
    "attribute_power",
    "attribute_power_reference",
    "counter_delta",
    "cpu_deltas",
    "idle_share_w",
    "largest_remainder",
]

PowerModel = LinearPowerModel | PiecewiseLinearPowerModel | PolynomialPowerModel
Weight = int | float | Fraction

# Counters may disagree by scheduling jitter: node busy time a little above cores·Δt is
# clamped silently below this relative slack, and noted above it.
_CLAMP_SLACK = 1e-6


class ReferenceMethod(StrEnum):
    """Whole-node splits used for comparison and reporting (seed 001's table); not site
    idle modes."""

    usage = "usage"  # idle and active both by CPU share ("by real utilization")
    request = "request"  # both by max(request, usage) as OpenCost ("by resource request")


class CounterError(ValueError):
    """A cumulative counter that went backwards with no wrap to explain it."""


# --- exact integer splitting ----------------------------------------------------------


def largest_remainder(total: int, weights: Sequence[Weight]) -> list[int]:
    """Split a non-negative integer ``total`` in proportion to ``weights`` exactly.

    Weights (floats included) are converted to exact fractions and scaled to integers
    over their common denominator, then split by the ledger's integer apportionment
    (``ecovisor.apportion``): the parts sum to ``total``, are non-negative, ties go to
    the lower index, and the result is reproducible bit for bit.
    """
    if total < 0:
        raise ValueError(f"total must be >= 0, got {total}")
    exact: list[Fraction] = []
    for w in weights:
        if isinstance(w, float) and not math.isfinite(w):
            raise ValueError(f"weights must be finite, got {w!r}")
        f = Fraction(w)
        if f < 0:
            raise ValueError(f"weights must be >= 0, got {w!r}")
        exact.append(f)
    if not exact or not any(exact):
        if total == 0:
            return [0] * len(exact)
        raise ValueError("cannot split a non-zero total over zero weights")
    denom = math.lcm(*(f.denominator for f in exact))
    width = len(str(len(exact)))  # zero-padded keys sort in index order
    keyed = {f"{i:0{width}d}": int(f * denom) for i, f in enumerate(exact)}
    parts = apportion.largest_remainder(total, keyed)
    return [parts[k] for k in keyed]


# --- results ---------------------------------------------------------------------------


class Share(BaseModel):
    """Active and idle parts of one account, in the attribution's unit (mJ or mW)."""

    model_config = ConfigDict(frozen=True)

    active: int = Field(ge=0)
    idle: int = Field(ge=0)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total(self) -> int:
        return self.active + self.idle


class Attribution(BaseModel):
    """A node's power or energy over an interval, split into containers and platform.

    Invariant (checked on construction): Σ containers.total + platform.total ==
    node.total, and the same for the active and idle parts separately.
    """

    model_config = ConfigDict(frozen=True)

    unit: Literal["mJ", "mW"]
    dt_s: float | None = Field(description="interval for mJ; None for instantaneous mW")
    source: Literal["model", "measured"]
    method: IdleAttribution | ReferenceMethod
    utilisation: float = Field(ge=0.0, le=1.0, description="node CPU utilisation used")
    node: Share
    containers: dict[str, Share]
    platform: Share = Field(description="idle not attributed, and non-container CPU")
    notes: tuple[str, ...] = ()

    def model_post_init(self, _context: object) -> None:
        for part in ("active", "idle"):
            got = sum(getattr(s, part) for s in self.containers.values())
            got += getattr(self.platform, part)
            if got != getattr(self.node, part):
                raise ValueError(f"attribution does not balance ({part}: {got} != node)")

    def power_w(self, container: str) -> float:
        """A container's mean power over the interval (W)."""
        return self._w(self.containers[container].total)

    def platform_power_w(self) -> float:
        return self._w(self.platform.total)

    def node_power_w(self) -> float:
        return self._w(self.node.total)

    def _w(self, amount: int) -> float:
        if self.unit == "mW":
            return amount / 1000
        assert self.dt_s is not None
        return mj_to_power(amount, self.dt_s)


# --- counters --------------------------------------------------------------------------


def counter_delta(
    start: float, end: float, *, wrap: float | None = None, name: str = "counter"
) -> float:
    """Increase of a cumulative counter between two readings.

    A counter that went backwards has wrapped (RAPL energy_uj wraps at
    max_energy_range_uj): pass ``wrap`` (the counter's range) to add it back; without
    ``wrap`` it is an error.
    """
    for v in (start, end):
        if not math.isfinite(v) or v < 0:
            raise CounterError(f"{name}: readings must be finite and >= 0, got {v!r}")
    if end >= start:
        return end - start
    if wrap is None:
        raise CounterError(f"{name} went backwards ({start} -> {end}) and has no wrap range")
    if start > wrap or end > wrap:
        raise CounterError(f"{name}: readings exceed the wrap range {wrap}")
    return end + wrap - start


def cpu_deltas(
    start: Mapping[str, float], end: Mapping[str, float]
) -> tuple[dict[str, float], tuple[str, ...]]:
    """Per-container CPU seconds used between two readings of cumulative counters.

    Containers in ``end`` are the node's containers for the interval. One missing from
    ``start`` started during the interval (its counter began at 0); one whose counter went
    backwards restarted (new cgroup) and is counted from 0 - both use the ``end`` reading
    and are returned in the second element. Containers only in ``start`` are gone.
    """
    deltas: dict[str, float] = {}
    restarted: list[str] = []
    for name in sorted(end):
        e = end[name]
        if not math.isfinite(e) or e < 0:
            raise CounterError(f"container {name}: CPU seconds must be >= 0, got {e!r}")
        s = start.get(name)
        if s is None or e < s:
            deltas[name] = e
            restarted.append(name)
        else:
            deltas[name] = e - s
    return deltas, tuple(restarted)


# --- idle weights ------------------------------------------------------------------------


def _idle_weights(
    mode: IdleAttribution, names: Sequence[str], sizes: Mapping[str, float] | None
) -> list[Weight] | None:
    """Weights of ``names`` for idle, or None when idle goes to the platform."""
    if mode is IdleAttribution.none or not names:
        return None
    if mode is IdleAttribution.equal:
        return [1] * len(names)
    if mode is IdleAttribution.size:
        missing = [n for n in names if sizes is None or n not in sizes]
        if missing:
            raise ValueError(f"idle attribution 'size' needs a size for: {', '.join(missing)}")
        assert sizes is not None
        out: list[Weight] = []
        for n in names:
            s = sizes[n]
            if not math.isfinite(s) or s <= 0:
                raise ValueError(f"container {n}: size must be > 0, got {s!r}")
            out.append(s)
        return out
    raise ValueError(f"unknown idle attribution mode {mode!r}")  # pragma: no cover


def idle_share_w(
    model: PowerModel,
    mode: IdleAttribution,
    container: str,
    members: Iterable[str],
    sizes: Mapping[str, float] | None = None,
) -> float:
    """The idle power (W) attributed to ``container`` among the node's ``members``.

    ``none`` -> 0 (the platform's); ``equal`` -> P_idle / n; ``size`` -> P_idle ·
    size / Σ sizes. This is the container's idle floor for power caps.
    """
    names = sorted(set(members) | {container})
    weights = _idle_weights(IdleAttribution(mode), names, sizes)
    if weights is None:
        return 0.0
    wsum = float(sum(Fraction(w) for w in weights))
    return model.idle_power_w * float(weights[names.index(container)]) / wsum


# --- the core split ---------------------------------------------------------------------


def _split(
    *,
    unit: Literal["mJ", "mW"],
    dt_s: float | None,
    source: Literal["model", "measured"],
    method: IdleAttribution | ReferenceMethod,
    utilisation: float,
    node_total: int,
    node_idle: int,
    names: Sequence[str],
    active_weights: Sequence[Weight],
    platform_active_weight: Weight,
    idle_weights: Sequence[Weight] | None,
    platform_idle_weight: Weight,
    notes: Sequence[str],
) -> Attribution:
    node_active = node_total - node_idle
    # Active: containers then the platform's non-container CPU; all to the platform when
    # no CPU was busy (only possible with measured energy above the idle estimate).
    aw: list[Weight] = [*active_weights, platform_active_weight]
    if sum(Fraction(w) for w in aw) == 0:
        aw = [*([0] * len(names)), 1]
    active = largest_remainder(node_active, aw)
    if idle_weights is None:
        idle = [0] * len(names) + [node_idle]
    else:
        iw: list[Weight] = [*idle_weights, platform_idle_weight]
        if sum(Fraction(w) for w in iw) == 0:
            iw = [*([0] * len(names)), 1]
        idle = largest_remainder(node_idle, iw)
    return Attribution(
        unit=unit,
        dt_s=dt_s,
        source=source,
        method=method,
        utilisation=utilisation,
        node=Share(active=node_active, idle=node_idle),
        containers={n: Share(active=active[i], idle=idle[i]) for i, n in enumerate(names)},
        platform=Share(active=active[-1], idle=idle[-1]),
        notes=tuple(notes),
    )


def _busy(
    container_cpu: Mapping[str, float],
    node_cpu: float | None,
    capacity: float,
    notes: list[str],
) -> tuple[list[str], list[float], float, float]:
    """Sorted names, their CPU, the node's busy CPU and the utilisation in [0, 1]."""
    names = sorted(container_cpu)
    cpu = []
    for n in names:
        v = container_cpu[n]
        if not math.isfinite(v) or v < 0:
            raise ValueError(f"container {n}: CPU must be a finite number >= 0, got {v!r}")
        cpu.append(v)
    csum = math.fsum(cpu)
    if node_cpu is None:
        busy = csum
    else:
        if not math.isfinite(node_cpu) or node_cpu < 0:
            raise ValueError(f"node CPU must be a finite number >= 0, got {node_cpu!r}")
        busy = node_cpu
        if csum > busy:
            if csum - busy > _CLAMP_SLACK * max(busy, 1.0):
                notes.append(
                    f"containers' CPU ({csum:.6g}) exceeds the node's ({busy:.6g}); "
                    "node CPU raised to the containers' sum"
                )
            busy = csum
    u = busy / capacity
    if u > 1.0:
        if u - 1.0 > _CLAMP_SLACK:
            notes.append(f"node utilisation {u:.6g} above 1 clamped to 1")
        u = 1.0
    return names, cpu, busy, u


def attribute_energy(
    model: PowerModel,
    *,
    dt_s: float,
    container_cpu_s: Mapping[str, float],
    node_cpu_s: float | None = None,
    idle_mode: IdleAttribution = IdleAttribution.none,
    sizes: Mapping[str, float] | None = None,
    measured_energy_j: float | None = None,
    measured_idle_j: float | None = None,
) -> Attribution:
    """Split a node's energy over an interval of ``dt_s`` seconds (integer mJ).

    ``container_cpu_s``: CPU seconds each container on the node used in the interval
    (deltas of cumulative counters, see ``cpu_deltas``). ``node_cpu_s``: busy CPU
    seconds of the whole node (all processes); defaults to the containers' sum.
    Utilisation u = node_cpu_s / (cores · dt_s).

    Source of the node's energy:

    * model (default): E = P(u)·Δt, idle = P(0)·Δt (exact for a linear model; for a
      curved one, u is the interval's mean utilisation);
    * measured (``measured_energy_j``, e.g. a RAPL or Kepler counter delta): E is the
      measurement; idle is ``measured_idle_j`` if given (Kepler's idle counter), else
      the model's P(0)·Δt, never more than E. The measured active energy E - idle is
      split by CPU-time share exactly as the model's.
    """
    if not math.isfinite(dt_s) or dt_s <= 0:
        raise ValueError(f"dt_s must be a finite number > 0, got {dt_s!r}")
    notes: list[str] = []
    names, cpu, busy, u = _busy(container_cpu_s, node_cpu_s, model.cores * dt_s, notes)
    if measured_energy_j is None:
        if measured_idle_j is not None:
            raise ValueError("measured_idle_j needs measured_energy_j")
        source: Literal["model", "measured"] = "model"
        # idle + dynamic (>= 0), so rounding can never make the active part negative
        node_total = power_to_mj(model.idle_power_w + model.dynamic_w(u), dt_s)
        node_idle = power_to_mj(model.idle_power_w, dt_s)
    else:
        if not math.isfinite(measured_energy_j) or measured_energy_j < 0:
            raise ValueError(f"measured energy must be >= 0 J, got {measured_energy_j!r}")
        source = "measured"
        node_total = j_to_mj(measured_energy_j)
        if measured_idle_j is not None:
            if not math.isfinite(measured_idle_j) or measured_idle_j < 0:
                raise ValueError(f"measured idle energy must be >= 0 J, got {measured_idle_j!r}")
            node_idle = j_to_mj(measured_idle_j)
        else:
            node_idle = power_to_mj(model.idle_power_w, dt_s)
        if node_idle > node_total:
            notes.append(
                f"measured energy {node_total} mJ below the idle estimate {node_idle} mJ; "
                "idle capped at the measurement, no active energy"
            )
            node_idle = node_total
    return _split(
        unit="mJ",
        dt_s=dt_s,
        source=source,
        method=IdleAttribution(idle_mode),
        utilisation=u,
        node_total=node_total,
        node_idle=node_idle,
        names=names,
        active_weights=cpu,
        platform_active_weight=max(busy - math.fsum(cpu), 0.0),
        idle_weights=_idle_weights(IdleAttribution(idle_mode), names, sizes),
        platform_idle_weight=0,
        notes=notes,
    )


class CounterSnapshot(BaseModel):
    """Cumulative counters of one node read at one instant."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    time_s: float = Field(allow_inf_nan=False, description="monotonic seconds")
    containers: dict[str, float] = Field(description="cumulative CPU seconds per container")
    node_cpu_s: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="cumulative busy CPU seconds of the node"
    )
    node_energy_j: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="cumulative measured energy (RAPL, Kepler)"
    )


def attribute_interval(
    model: PowerModel,
    before: CounterSnapshot,
    after: CounterSnapshot,
    *,
    idle_mode: IdleAttribution = IdleAttribution.none,
    sizes: Mapping[str, float] | None = None,
    energy_wrap_j: float | None = None,
) -> Attribution:
    """``attribute_energy`` over the interval between two counter snapshots.

    Uses the measured node energy when both snapshots carry it, the model otherwise.
    """
    dt = after.time_s - before.time_s
    if dt <= 0:
        raise ValueError(f"snapshots must be in time order (Δt = {dt} s)")
    deltas, restarted = cpu_deltas(before.containers, after.containers)
    node_cpu = None
    if before.node_cpu_s is not None and after.node_cpu_s is not None:
        node_cpu = counter_delta(before.node_cpu_s, after.node_cpu_s, name="node CPU")
    energy = None
    if before.node_energy_j is not None and after.node_energy_j is not None:
        energy = counter_delta(
            before.node_energy_j, after.node_energy_j, wrap=energy_wrap_j, name="node energy"
        )
    result = attribute_energy(
        model,
        dt_s=dt,
        container_cpu_s=deltas,
        node_cpu_s=node_cpu,
        idle_mode=idle_mode,
        sizes=sizes,
        measured_energy_j=energy,
    )
    if restarted:
        note = "counted from 0 (new or restarted): " + ", ".join(restarted)
        result = result.model_copy(update={"notes": (*result.notes, note)})
    return result


def attribute_power(
    model: PowerModel,
    *,
    container_cores: Mapping[str, float],
    node_busy_cores: float | None = None,
    idle_mode: IdleAttribution = IdleAttribution.none,
    sizes: Mapping[str, float] | None = None,
    measured_power_w: float | None = None,
) -> Attribution:
    """Split a node's instantaneous power (integer mW) from busy cores per container.

    The same rules as ``attribute_energy`` over a 1 s interval: busy cores are CPU
    seconds per second and mJ over 1 s are mW. Seed 001's worked example is this
    function with ``kepler-example-16c`` (10 % of the node's CPU = 1.6 cores).
    """
    energy = attribute_energy(
        model,
        dt_s=1.0,
        container_cpu_s=container_cores,
        node_cpu_s=node_busy_cores,
        idle_mode=idle_mode,
        sizes=sizes,
        measured_energy_j=measured_power_w,
    )
    return energy.model_copy(update={"unit": "mW", "dt_s": None})


def attribute_power_reference(
    method: ReferenceMethod,
    model: PowerModel,
    *,
    container_cores: Mapping[str, float],
    node_busy_cores: float | None = None,
    requests: Mapping[str, float] | None = None,
) -> Attribution:
    """Whole-node splits for comparison (seed 001's table), in integer mW.

    ``usage``: idle and active both by CPU share - a container's total is its share of
    the node's absolute power. ``request``: both by max(request, usage) in cores, as the
    OpenCost specification costs workloads; ``requests`` gives every container's request.
    Non-container CPU weighs for the platform in both.
    """
    notes: list[str] = []
    names, cpu, busy, u = _busy(container_cores, node_busy_cores, float(model.cores), notes)
    other = max(busy - math.fsum(cpu), 0.0)
    if ReferenceMethod(method) is ReferenceMethod.usage:
        weights: list[Weight] = list(cpu)
    else:
        missing = [n for n in names if requests is None or n not in requests]
        if missing:
            raise ValueError(f"method 'request' needs a request for: {', '.join(missing)}")
        assert requests is not None
        weights = [max(requests[n], c) for n, c in zip(names, cpu, strict=True)]
    return _split(
        unit="mW",
        dt_s=None,
        source="model",
        method=ReferenceMethod(method),
        utilisation=u,
        node_total=power_to_mj(model.idle_power_w + model.dynamic_w(u), 1.0),
        node_idle=power_to_mj(model.idle_power_w, 1.0),
        names=names,
        active_weights=weights,
        platform_active_weight=other,
        idle_weights=weights,
        platform_idle_weight=other,
        notes=notes,
    )
