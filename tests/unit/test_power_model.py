"""Node power models: presets, shapes, inverse, configuration spec, calibration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from pydantic import ValidationError

from ecovisor.core.power_model import (
    PRESETS,
    CalibrationError,
    LinearPowerModel,
    PiecewiseLinearPowerModel,
    PolynomialPowerModel,
    PowerModelSpec,
    calibrate_linear,
    calibrate_piecewise,
    calibrate_polynomial,
    get_preset,
    power_model_adapter,
)

ROOT = Path(__file__).resolve().parents[2]


# --- presets -----------------------------------------------------------------------------


def test_microserver_preset_matches_the_paper() -> None:
    # Ecovisor §4: 1.35 W idle, 5 W at 100 % CPU of a quad-core Cortex-A53.
    m = get_preset("ecovisor-microserver")
    assert (m.idle_w, m.max_w, m.cores) == (1.35, 5.0, 4)
    assert m.idle_power_w == 1.35
    assert m.peak_power_w == 5.0
    assert m.dynamic_range_w == pytest.approx(3.65)
    assert m.w_per_core == pytest.approx(0.9125)  # 3.65 W / 4 cores
    assert m.power_w(0.5) == pytest.approx(3.175)  # 1.35 + 0.5 * 3.65
    assert m.power_at_busy_cores(1) == pytest.approx(2.2625)  # 1.35 + 0.9125
    assert m.power_at_busy_cores(9) == 5.0  # clamped to the node's 4 cores
    assert m.dynamic_w(0.25) == pytest.approx(0.9125)


def test_kepler_example_preset_is_200_plus_8x() -> None:
    # Seed 001: P = Idle + Coeff * x with Idle = 200 W, Coeff = 8 W per % of CPU.
    m = get_preset("kepler-example-16c")
    assert m.cores == 16
    for x in range(0, 101, 10):
        assert m.power_w(x / 100) == pytest.approx(200 + 8 * x)
    assert m.power_w(0.2) == pytest.approx(360.0)
    assert m.power_w(0.5) == pytest.approx(600.0)


def test_generic_preset_and_unknown_preset() -> None:
    assert "generic-x86-server" in PRESETS
    g = get_preset("generic-x86-server")
    assert g.idle_w < g.max_w
    with pytest.raises(KeyError, match="known presets: ecovisor-microserver"):
        get_preset("cray-1")


def test_preset_over_other_cores_keeps_the_curve() -> None:
    m = get_preset("ecovisor-microserver", cores=2)
    assert m.cores == 2
    assert m.power_at_busy_cores(2) == 5.0
    assert PRESETS["ecovisor-microserver"].cores == 4  # presets are not mutated


# --- shapes ------------------------------------------------------------------------------


def test_linear_rejects_max_below_idle() -> None:
    with pytest.raises(ValidationError, match="max_w"):
        LinearPowerModel(idle_w=10, max_w=5, cores=1)
    with pytest.raises(ValidationError):
        LinearPowerModel(idle_w=-1, max_w=5, cores=1)
    with pytest.raises(ValidationError):
        LinearPowerModel(idle_w=1, max_w=5, cores=0)


def test_utilisation_range_is_checked() -> None:
    m = get_preset("ecovisor-microserver")
    with pytest.raises(ValueError, match="within"):
        m.power_w(1.5)
    with pytest.raises(ValueError, match="within"):
        m.power_w(-0.1)
    with pytest.raises(ValueError):
        m.power_w(float("nan"))
    assert m.power_w(1.0 + 1e-12) == 5.0  # float noise clamped
    with pytest.raises(ValueError):
        m.power_at_busy_cores(-1)


def test_piecewise_interpolates_and_validates() -> None:
    p = PiecewiseLinearPowerModel(points=((0, 50), (0.5, 150), (1, 200)), cores=8)
    assert p.idle_power_w == 50
    assert p.peak_power_w == 200
    assert p.power_w(0.25) == pytest.approx(100)
    assert p.power_w(0.75) == pytest.approx(175)
    assert p.utilisation_for_power(100) == pytest.approx(0.25)
    assert p.utilisation_for_power(175) == pytest.approx(0.75)
    with pytest.raises(ValidationError, match="start at u = 0"):
        PiecewiseLinearPowerModel(points=((0.1, 50), (1, 60)), cores=1)
    with pytest.raises(ValidationError, match="non-decreasing"):
        PiecewiseLinearPowerModel(points=((0, 50), (0.5, 40), (1, 60)), cores=1)
    with pytest.raises(ValidationError, match="strictly increasing"):
        PiecewiseLinearPowerModel(points=((0, 50), (0.5, 55), (0.5, 56), (1, 60)), cores=1)


def test_polynomial_evaluates_and_must_not_decrease() -> None:
    # P(u) = 10 + 20u - 5u^2: P' = 20 - 10u > 0 on [0, 1].
    p = PolynomialPowerModel(coefficients=(10, 20, -5), cores=4)
    assert p.power_w(0.5) == pytest.approx(10 + 10 - 1.25)
    assert p.peak_power_w == pytest.approx(25)
    u = p.utilisation_for_power(18.75)
    assert u == pytest.approx(0.5, abs=1e-9)
    assert p.power_w(u) <= 18.75
    # P(u) = 10 + 20u - 15u^2 decreases after u = 2/3.
    with pytest.raises(ValidationError, match="decreases"):
        PolynomialPowerModel(coefficients=(10, 20, -15), cores=4)
    # A cubic whose derivative dips below 0 inside (0, 1) only.
    with pytest.raises(ValidationError, match="decreases"):
        PolynomialPowerModel(coefficients=(1, 1, -6, 6), cores=1)


def test_inverse_of_power() -> None:
    m = get_preset("ecovisor-microserver")
    assert m.utilisation_for_power(1.0) == 0.0  # below idle
    assert m.utilisation_for_power(7.0) == 1.0
    u = m.utilisation_for_power(3.175)
    assert u == pytest.approx(0.5)
    assert m.power_w(u) <= 3.175
    flat = LinearPowerModel(idle_w=3, max_w=3, cores=1)
    assert flat.utilisation_for_power(3) == 1.0


# --- configuration -------------------------------------------------------------------------


def test_spec_forms() -> None:
    assert PowerModelSpec.model_validate("ecovisor-microserver").resolve() == get_preset(
        "ecovisor-microserver"
    )
    spec = PowerModelSpec.model_validate({"preset": "ecovisor-microserver"})
    assert spec.resolve(cores=2).cores == 2  # the node's cores win
    lin = PowerModelSpec(idle_w=1, max_w=3)
    assert lin.resolve(cores=2) == LinearPowerModel(idle_w=1, max_w=3, cores=2)
    with pytest.raises(ValueError, match="needs the node's cores"):
        lin.resolve()
    full = PowerModelSpec.model_validate(
        {"model": {"kind": "piecewise", "points": [[0, 1], [1, 2]], "cores": 2}}
    )
    assert isinstance(full.resolve(), PiecewiseLinearPowerModel)
    assert full.resolve(cores=8).cores == 8


def test_spec_rejects_ambiguous_or_unknown() -> None:
    with pytest.raises(ValidationError, match="exactly one"):
        PowerModelSpec()
    with pytest.raises(ValidationError, match="exactly one"):
        PowerModelSpec(preset="ecovisor-microserver", idle_w=1, max_w=2)
    with pytest.raises(ValidationError, match="together"):
        PowerModelSpec(idle_w=1)
    with pytest.raises(ValidationError, match="unknown power model preset"):
        PowerModelSpec(preset="nope")
    with pytest.raises(ValidationError, match="max_w"):
        PowerModelSpec(idle_w=5, max_w=1)


def test_models_round_trip_through_json() -> None:
    models = [
        get_preset("ecovisor-microserver"),
        PiecewiseLinearPowerModel(points=((0, 1), (0.3, 2), (1, 2.5)), cores=3),
        PolynomialPowerModel(coefficients=(1, 2, -0.5), cores=4),
    ]
    for m in models:
        assert power_model_adapter.validate_json(m.model_dump_json()) == m
        spec = PowerModelSpec(model=m)
        assert PowerModelSpec.model_validate_json(spec.model_dump_json()).resolve() == m


def test_docs_configuration_snippets_parse() -> None:
    text = (ROOT / "docs" / "power-models.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml")[1:]]
    nodes = [n for b in blocks for n in yaml.safe_load(b)["site"]["nodes"]]
    assert len(nodes) == 3
    resolved = [PowerModelSpec.model_validate(n["power_model"]).resolve(n["cores"]) for n in nodes]
    assert resolved[0] == get_preset("ecovisor-microserver")
    assert resolved[1] == LinearPowerModel(idle_w=95.0, max_w=310.0, cores=32)
    assert isinstance(resolved[2], PiecewiseLinearPowerModel)
    assert all(r.cores == n["cores"] for r, n in zip(resolved, nodes, strict=True))


def test_site_config_power_model_refs_are_valid_specs() -> None:
    from ecovisor.contract.config_file import load_config

    cfg = load_config(ROOT / "examples" / "demo-site.yaml")
    for node in cfg.site.nodes:
        spec = PowerModelSpec.model_validate(node.power_model.model_dump(exclude_none=True))
        assert spec.resolve(node.cores).cores == node.cores


# --- calibration -----------------------------------------------------------------------------


def test_linear_calibration_exact_two_points() -> None:
    cal = calibrate_linear([(0.0, 1.35), (1.0, 5.0)], cores=4)
    assert cal.model.idle_w == pytest.approx(1.35)
    assert cal.model.max_w == pytest.approx(5.0)
    assert cal.rmse_w == pytest.approx(0.0, abs=1e-12)
    assert cal.r2 == pytest.approx(1.0)


def test_linear_calibration_recovers_microserver_from_noisy_samples() -> None:
    rng = np.random.default_rng(20230325)
    u = rng.uniform(0, 1, 400)
    w = 1.35 + 3.65 * u + rng.normal(0, 0.05, u.size)
    cal = calibrate_linear(zip(u, w, strict=True), cores=4)
    assert cal.model.idle_w == pytest.approx(1.35, abs=0.02)
    assert cal.model.max_w == pytest.approx(5.0, abs=0.02)
    assert cal.rmse_w == pytest.approx(0.05, abs=0.01)
    assert cal.samples == 400
    assert cal.r2 is not None and cal.r2 > 0.99


def test_linear_calibration_errors() -> None:
    with pytest.raises(CalibrationError, match="at least 2"):
        calibrate_linear([(0.5, 3.0)], cores=1)
    with pytest.raises(CalibrationError, match="distinct"):
        calibrate_linear([(0.5, 3.0), (0.5, 3.1), (0.5, 2.9)], cores=1)
    with pytest.raises(CalibrationError, match="decreases"):
        calibrate_linear([(0.0, 5.0), (1.0, 1.0)], cores=1)
    with pytest.raises(CalibrationError, match="not finite"):
        calibrate_linear([(0.0, float("nan")), (1.0, 1.0)], cores=1)
    with pytest.raises(CalibrationError, match="outside"):
        calibrate_linear([(0.0, 1.0), (2.0, 3.0)], cores=1)
    with pytest.raises(CalibrationError, match="negative"):
        calibrate_linear([(0.0, -1.0), (1.0, 3.0)], cores=1)
    with pytest.raises(CalibrationError, match="idle power is negative"):
        calibrate_linear([(0.5, 0.1), (1.0, 5.0)], cores=1)


def test_polynomial_calibration_recovers_a_concave_curve() -> None:
    rng = np.random.default_rng(7)
    u = rng.uniform(0, 1, 300)
    w = 60 + 180 * u - 60 * u**2 + rng.normal(0, 0.5, u.size)
    cal = calibrate_polynomial(zip(u, w, strict=True), degree=2, cores=16)
    c = cal.model.coefficients
    assert c[0] == pytest.approx(60, abs=0.5)
    assert c[1] == pytest.approx(180, abs=2.5)
    assert c[2] == pytest.approx(-60, abs=2.5)
    with pytest.raises(CalibrationError, match="distinct"):
        calibrate_polynomial([(0, 1), (1, 2)], degree=2, cores=1)
    with pytest.raises(CalibrationError, match="decreases"):
        calibrate_polynomial([(0, 1), (0.5, 3), (1, 1)], degree=2, cores=1)
    with pytest.raises(CalibrationError, match="degree"):
        calibrate_polynomial([(0, 1), (1, 2)], degree=0, cores=1)


def test_piecewise_calibration_recovers_knots() -> None:
    truth = PiecewiseLinearPowerModel(points=((0, 50), (0.3, 120), (1, 200)), cores=8)
    us = [i / 20 for i in range(21)]
    cal = calibrate_piecewise([(u, truth.power_w(u)) for u in us], [0, 0.3, 1], cores=8)
    for (u0, w0), (u1, w1) in zip(cal.model.points, truth.points, strict=True):
        assert u0 == u1
        assert w0 == pytest.approx(w1)
    with pytest.raises(CalibrationError, match="every segment"):
        calibrate_piecewise([(0.0, 50), (0.1, 60), (0.2, 70)], [0, 0.5, 1], cores=1)
    with pytest.raises(CalibrationError, match="start at 0"):
        calibrate_piecewise([(0.0, 50), (1.0, 60)], [0.1, 1], cores=1)
