"""Node power models: P(u) = P_idle + P_dyn(u), with u the node's CPU utilisation in [0, 1]
(busy cores / cores). Pure functions of their parameters, no I/O.

Three shapes, all pydantic models tagged by ``kind`` so a site configuration can embed
them and a ledger entry can record the one it used:

* ``linear``     P(u) = P_idle + u * (P_max - P_idle)                 (the default)
* ``piecewise``  straight lines between measured (u, W) points, from u=0 to u=1
* ``polynomial`` P(u) = c0 + c1 u + c2 u^2 + ...  (non-decreasing on [0, 1])

Every model must be non-decreasing in u: attribution needs P(u) >= P_idle and the power
cap inverse needs a monotone curve. Powers are in W.

Presets (``PRESETS``) carry the paper's microserver (1.35 W idle, 5 W at 100 % of its 4
cores; Ecovisor, ASPLOS 2023, §4), the 16-core example node of the Kepler idle-power
post (P = 200 + 8 x with x in %), and a generic x86 server. ``PowerModelSpec`` is what a
configuration file holds: a preset name, a linear shorthand or a full model.

Calibration fits a model to (utilisation, W) samples by least squares.
See docs/power-models.md.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

__all__ = [
    "PRESETS",
    "AnyPowerModel",
    "Calibration",
    "CalibrationError",
    "LinearPowerModel",
    "PiecewiseLinearPowerModel",
    "PolynomialPowerModel",
    "PowerModelSpec",
    "calibrate_linear",
    "calibrate_piecewise",
    "calibrate_polynomial",
    "get_preset",
    "power_model_adapter",
]

# A utilisation a hair outside [0, 1] (float noise from counters) is clamped; anything
# further out is a caller error.
_U_TOLERANCE = 1e-9
# Slack when checking that a fitted or configured polynomial is non-decreasing.
_MONOTONE_TOLERANCE = 1e-9


def _check_u(u: float) -> float:
    if not math.isfinite(u) or u < -_U_TOLERANCE or u > 1.0 + _U_TOLERANCE:
        raise ValueError(f"utilisation must be within [0, 1], got {u!r}")
    return min(max(u, 0.0), 1.0)


class _PowerModelBase(BaseModel):
    """Shared behaviour. Subclasses implement ``power_w``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    cores: int = Field(ge=1, description="cores of the node; u = busy cores / cores")

    # --- the curve -------------------------------------------------------------------
    def power_w(self, u: float) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def idle_power_w(self) -> float:
        """P(0): power of the node with no CPU busy (P_base, P_idle)."""
        return self.power_w(0.0)

    @property
    def peak_power_w(self) -> float:
        """P(1): power of the node with every core busy."""
        return self.power_w(1.0)

    @property
    def dynamic_range_w(self) -> float:
        """P_dyn of the GHG Protocol ICT formula: P(1) - P(0)."""
        return self.peak_power_w - self.idle_power_w

    def dynamic_w(self, u: float) -> float:
        """Active (dynamic) power at utilisation u: P(u) - P(0) >= 0."""
        return max(self.power_w(u) - self.idle_power_w, 0.0)

    def power_at_busy_cores(self, busy_cores: float) -> float:
        """P at a number of busy cores (clamped to the node's cores)."""
        if not math.isfinite(busy_cores) or busy_cores < 0:
            raise ValueError(f"busy cores must be a finite number >= 0, got {busy_cores!r}")
        return self.power_w(min(busy_cores / self.cores, 1.0))

    def utilisation_for_power(self, watts: float) -> float:
        """Largest u in [0, 1] with P(u) <= watts (0 if watts < P_idle)."""
        if not math.isfinite(watts):
            raise ValueError(f"power must be finite, got {watts!r}")
        if watts >= self.peak_power_w:
            return 1.0
        if watts < self.idle_power_w:
            return 0.0
        u = self._invert(watts)
        # Guard against float rounding putting P(u) a hair above watts.
        while u > 0.0 and self.power_w(u) > watts:
            u = math.nextafter(u, 0.0)
        return u

    def _invert(self, watts: float) -> float:
        # Generic bisection on a non-decreasing curve; subclasses may override.
        lo, hi = 0.0, 1.0
        for _ in range(80):
            mid = (lo + hi) / 2
            if self.power_w(mid) <= watts:
                lo = mid
            else:
                hi = mid
        return lo

    def with_cores(self, cores: int) -> _PowerModelBase:
        """The same curve over another number of cores (u stays busy / cores)."""
        return self.model_copy(update={"cores": cores})


class LinearPowerModel(_PowerModelBase):
    """P(u) = idle_w + u * (max_w - idle_w)."""

    kind: Literal["linear"] = "linear"
    idle_w: float = Field(ge=0.0, allow_inf_nan=False, description="W at u = 0")
    max_w: float = Field(ge=0.0, allow_inf_nan=False, description="W at u = 1")

    @model_validator(mode="after")
    def _monotone(self) -> LinearPowerModel:
        if self.max_w < self.idle_w:
            raise ValueError(f"max_w ({self.max_w} W) must be >= idle_w ({self.idle_w} W)")
        return self

    def power_w(self, u: float) -> float:
        return self.idle_w + _check_u(u) * (self.max_w - self.idle_w)

    @property
    def idle_power_w(self) -> float:
        return self.idle_w

    @property
    def peak_power_w(self) -> float:
        return self.max_w

    @property
    def w_per_core(self) -> float:
        """Dynamic W added by each fully busy core."""
        return (self.max_w - self.idle_w) / self.cores

    def _invert(self, watts: float) -> float:
        span = self.max_w - self.idle_w
        return 1.0 if span <= 0 else min(max((watts - self.idle_w) / span, 0.0), 1.0)


class PiecewiseLinearPowerModel(_PowerModelBase):
    """Straight lines between (u, W) points; the first at u = 0, the last at u = 1.

    The usual shape of a SPECpower-style measurement (11 load levels)."""

    kind: Literal["piecewise"] = "piecewise"
    points: tuple[tuple[float, float], ...] = Field(min_length=2)

    @model_validator(mode="after")
    def _valid(self) -> PiecewiseLinearPowerModel:
        us = [p[0] for p in self.points]
        ws = [p[1] for p in self.points]
        if not all(math.isfinite(x) for x in us + ws):
            raise ValueError("points must be finite numbers")
        if us[0] != 0.0 or us[-1] != 1.0:
            raise ValueError("points must start at u = 0 and end at u = 1")
        if any(b <= a for a, b in zip(us, us[1:], strict=False)):
            raise ValueError("point utilisations must be strictly increasing")
        if any(w < 0 for w in ws):
            raise ValueError("point powers must be >= 0 W")
        if any(b < a for a, b in zip(ws, ws[1:], strict=False)):
            raise ValueError("point powers must be non-decreasing in u")
        return self

    def power_w(self, u: float) -> float:
        u = _check_u(u)
        pts = self.points
        for (u0, w0), (u1, w1) in zip(pts, pts[1:], strict=False):
            if u <= u1:
                return w0 + (u - u0) * (w1 - w0) / (u1 - u0)
        return pts[-1][1]  # pragma: no cover - u <= 1 always matches above

    def _invert(self, watts: float) -> float:
        pts = self.points
        best = 0.0
        for (u0, w0), (u1, w1) in zip(pts, pts[1:], strict=False):
            if w1 <= watts:
                best = u1
                continue
            if w0 <= watts < w1:
                best = u0 + (watts - w0) * (u1 - u0) / (w1 - w0)
            break
        return best


class PolynomialPowerModel(_PowerModelBase):
    """P(u) = Σ coefficients[k] · u^k, non-decreasing on [0, 1]."""

    kind: Literal["polynomial"] = "polynomial"
    coefficients: tuple[float, ...] = Field(min_length=1, description="c0 (idle W), c1, ...")

    @model_validator(mode="after")
    def _valid(self) -> PolynomialPowerModel:
        c = self.coefficients
        if not all(math.isfinite(x) for x in c):
            raise ValueError("coefficients must be finite numbers")
        if c[0] < 0:
            raise ValueError(f"idle power c0 must be >= 0 W, got {c[0]}")
        reason = _polynomial_not_monotone(c)
        if reason:
            raise ValueError(reason)
        return self

    def power_w(self, u: float) -> float:
        u = _check_u(u)
        acc = 0.0
        for coef in reversed(self.coefficients):
            acc = acc * u + coef
        return acc


def _polynomial_not_monotone(coefficients: Sequence[float]) -> str | None:
    """None if P is non-decreasing on [0, 1], else the reason.

    dP/du is smallest on [0, 1] at an end or where d²P/du² = 0; those points (plus a
    grid, in case root finding is ill-conditioned) are checked with a small tolerance.
    """
    scale = max(1.0, max(abs(x) for x in coefficients))
    p = np.polynomial.Polynomial(coefficients)
    d = p.deriv()
    candidates = [float(x) for x in np.linspace(0.0, 1.0, 65)]
    dd = np.polynomial.polynomial.polytrim(d.deriv().coef, tol=1e-12 * scale)
    if len(dd) > 1:
        with np.errstate(all="ignore"):
            roots = np.polynomial.Polynomial(dd).roots()
        for r in roots:
            real, imag = float(np.real(r)), float(np.imag(r))
            if math.isfinite(real) and abs(imag) < 1e-9 and 0.0 <= real <= 1.0:
                candidates.append(real)
    worst = min(candidates, key=lambda x: float(d(x)))
    slope = float(d(worst))
    if slope < -_MONOTONE_TOLERANCE * scale:
        return (
            f"polynomial power model decreases on [0, 1] (dP/du = {slope:.4g} "
            f"W at u = {worst:.3f}); power models must be non-decreasing"
        )
    return None


AnyPowerModel = Annotated[
    LinearPowerModel | PiecewiseLinearPowerModel | PolynomialPowerModel,
    Field(discriminator="kind"),
]
power_model_adapter: TypeAdapter[
    LinearPowerModel | PiecewiseLinearPowerModel | PolynomialPowerModel
] = TypeAdapter(AnyPowerModel)


# --- presets ---------------------------------------------------------------------------

PRESETS: Mapping[str, LinearPowerModel] = MappingProxyType(
    {
        # Ecovisor paper §4: quad-core ARM Cortex-A53 microserver, 1.35 W idle, 5 W at
        # 100 % CPU (10 W with its GPU busy too; GPU power is not modelled).
        "ecovisor-microserver": LinearPowerModel(idle_w=1.35, max_w=5.0, cores=4),
        # Kepler "Idle Power Matters" example (seed 001): 16-core server X,
        # P = 200 + 8 x with x the node CPU utilisation in % -> 1000 W at 100 %.
        "kepler-example-16c": LinearPowerModel(idle_w=200.0, max_w=1000.0, cores=16),
        # Illustrative round numbers for a 2-socket x86 server (idle at a third of peak,
        # inside SPECpower's 20-60 % range). Not a measurement: calibrate real nodes.
        "generic-x86-server": LinearPowerModel(idle_w=100.0, max_w=300.0, cores=32),
    }
)


def get_preset(name: str, cores: int | None = None) -> LinearPowerModel:
    """A preset by name, optionally over another number of cores."""
    try:
        model = PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise KeyError(f"unknown power model preset {name!r}; known presets: {known}") from None
    return model if cores is None else model.model_copy(update={"cores": cores})


class PowerModelSpec(BaseModel):
    """A node's power model as written in the site configuration.

    One of: ``preset`` (a name in PRESETS), ``idle_w`` + ``max_w`` (linear shorthand) or
    ``model`` (any model, tagged by ``kind``). A bare string is read as a preset name.
    ``cores`` overrides the preset's / model's cores; a node's configured cores passed to
    ``resolve`` override both.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    preset: str | None = None
    idle_w: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    max_w: float | None = Field(None, ge=0.0, allow_inf_nan=False)
    model: AnyPowerModel | None = None
    cores: int | None = Field(None, ge=1)

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        return {"preset": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _one_way(self) -> PowerModelSpec:
        linear = self.idle_w is not None or self.max_w is not None
        ways = sum([self.preset is not None, linear, self.model is not None])
        if ways != 1:
            raise ValueError("give exactly one of: preset, idle_w + max_w, model")
        if self.preset is not None and self.preset not in PRESETS:
            known = ", ".join(sorted(PRESETS))
            raise ValueError(f"unknown power model preset {self.preset!r}; known: {known}")
        if linear:
            if self.idle_w is None or self.max_w is None:
                raise ValueError("idle_w and max_w must be given together")
            if self.max_w < self.idle_w:
                raise ValueError(f"max_w ({self.max_w} W) must be >= idle_w ({self.idle_w} W)")
        return self

    def resolve(
        self, cores: int | None = None
    ) -> LinearPowerModel | PiecewiseLinearPowerModel | PolynomialPowerModel:
        """The concrete model; ``cores`` (the node's) wins over the spec's own."""
        n = cores if cores is not None else self.cores
        if self.preset is not None:
            return get_preset(self.preset, n)
        if self.model is not None:
            return self.model if n is None else self.model.model_copy(update={"cores": n})
        if n is None:
            raise ValueError("a linear idle_w/max_w power model needs the node's cores")
        assert self.idle_w is not None and self.max_w is not None
        return LinearPowerModel(idle_w=self.idle_w, max_w=self.max_w, cores=n)


# --- calibration -------------------------------------------------------------------------


class CalibrationError(ValueError):
    """Samples that cannot determine a model (too few, degenerate, or a decreasing fit)."""


class Calibration(BaseModel):
    """A fitted model and how well it fits its samples."""

    model_config = ConfigDict(frozen=True)

    model: AnyPowerModel
    samples: int
    rmse_w: float
    r2: float | None = Field(description="None when every sample has the same power")


def _samples(samples: Iterable[tuple[float, float]], need_distinct: int) -> tuple[Any, Any]:
    pairs = [(float(u), float(w)) for u, w in samples]
    if len(pairs) < need_distinct:
        raise CalibrationError(
            f"need at least {need_distinct} samples at distinct utilisations, got {len(pairs)}"
        )
    for u, w in pairs:
        if not (math.isfinite(u) and math.isfinite(w)):
            raise CalibrationError(f"sample ({u}, {w}) is not finite")
        if u < 0.0 or u > 1.0:
            raise CalibrationError(f"sample utilisation {u} is outside [0, 1]")
        if w < 0.0:
            raise CalibrationError(f"sample power {w} W is negative")
    distinct = len({u for u, _ in pairs})
    if distinct < need_distinct:
        raise CalibrationError(
            f"samples cover {distinct} distinct utilisation(s); need {need_distinct} "
            "(spread the load: e.g. idle, half and full CPU)"
        )
    return np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])


def _fit_stats(model: Any, u: Any, w: Any) -> Calibration:
    pred = np.array([model.power_w(float(x)) for x in u])
    resid = w - pred
    sse = float(np.sum(resid**2))
    sst = float(np.sum((w - w.mean()) ** 2))
    return Calibration(
        model=model,
        samples=len(u),
        rmse_w=math.sqrt(sse / len(u)),
        r2=None if sst == 0.0 else 1.0 - sse / sst,
    )


def calibrate_linear(samples: Iterable[tuple[float, float]], cores: int) -> Calibration:
    """Least-squares line through (u, W) samples (closed form).

    slope = Σ(u-ū)(w-w̄) / Σ(u-ū)², idle = w̄ - slope·ū, max = idle + slope.
    """
    u, w = _samples(samples, 2)
    du = u - u.mean()
    sxx = float(np.sum(du * du))
    if sxx <= 1e-18:
        raise CalibrationError("samples have (almost) no spread in utilisation")
    slope = float(np.sum(du * (w - w.mean()))) / sxx
    idle = float(w.mean()) - slope * float(u.mean())
    if slope < 0:
        raise CalibrationError(
            f"fitted power decreases with utilisation ({slope:.4g} W per unit u); "
            "check that the samples pair the right power with the right load"
        )
    if idle < 0:
        if idle < -_MONOTONE_TOLERANCE * max(1.0, float(np.max(np.abs(w)))):
            raise CalibrationError(f"fitted idle power is negative ({idle:.4g} W)")
        idle = 0.0  # float noise around an idle of 0 W
    model = LinearPowerModel(idle_w=idle, max_w=idle + slope, cores=cores)
    return _fit_stats(model, u, w)


def calibrate_polynomial(
    samples: Iterable[tuple[float, float]], degree: int, cores: int
) -> Calibration:
    """Least-squares polynomial of ``degree`` (>= 1) through (u, W) samples."""
    if degree < 1:
        raise CalibrationError("degree must be >= 1")
    u, w = _samples(samples, degree + 1)
    vander = np.vander(u, degree + 1, increasing=True)
    if np.linalg.matrix_rank(vander) < degree + 1:
        raise CalibrationError("samples do not determine a polynomial of this degree")
    coef, *_ = np.linalg.lstsq(vander, w, rcond=None)
    coefficients = tuple(float(c) for c in coef)
    if coefficients[0] < 0:
        raise CalibrationError(f"fitted idle power is negative ({coefficients[0]:.4g} W)")
    reason = _polynomial_not_monotone(coefficients)
    if reason:
        raise CalibrationError(f"{reason}; try a lower degree or more samples")
    model = PolynomialPowerModel(coefficients=coefficients, cores=cores)
    return _fit_stats(model, u, w)


def calibrate_piecewise(
    samples: Iterable[tuple[float, float]], breakpoints: Sequence[float], cores: int
) -> Calibration:
    """Least-squares piecewise-linear curve with knots at ``breakpoints``.

    The knots must start at 0 and end at 1; the fitted unknowns are the powers at the
    knots (hat-function basis), so every segment needs samples on both its sides.
    """
    knots = [float(b) for b in breakpoints]
    if len(knots) < 2 or knots[0] != 0.0 or knots[-1] != 1.0:
        raise CalibrationError("breakpoints must start at 0 and end at 1")
    if any(b <= a for a, b in zip(knots, knots[1:], strict=False)):
        raise CalibrationError("breakpoints must be strictly increasing")
    u, w = _samples(samples, 2)
    basis = np.zeros((len(u), len(knots)))
    for i, x in enumerate(u):
        for k in range(len(knots) - 1):
            a, b = knots[k], knots[k + 1]
            if a <= x <= b:
                t = (x - a) / (b - a)
                basis[i, k] = 1.0 - t
                basis[i, k + 1] = t
                break
    if np.linalg.matrix_rank(basis) < len(knots):
        raise CalibrationError(
            "samples do not determine the power at every breakpoint; add samples in every segment"
        )
    sol, *_ = np.linalg.lstsq(basis, w, rcond=None)
    ws = [float(x) for x in sol]
    if ws[0] < 0:
        raise CalibrationError(f"fitted idle power is negative ({ws[0]:.4g} W)")
    for a, b in zip(ws, ws[1:], strict=False):
        if b < a - _MONOTONE_TOLERANCE * max(1.0, abs(a)):
            raise CalibrationError(
                "fitted curve decreases between breakpoints; use fewer breakpoints or more samples"
            )
    # Remove float-level dips so the model validates as non-decreasing.
    for i in range(1, len(ws)):
        ws[i] = max(ws[i], ws[i - 1])
    model = PiecewiseLinearPowerModel(points=tuple(zip(knots, ws, strict=True)), cores=cores)
    return _fit_stats(model, u, w)
