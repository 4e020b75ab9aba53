"""Invariants of the power models, attribution and power caps (Hypothesis).

* Σ container attributions + platform == node power/energy, exactly in integer mJ/mW,
  for active and idle separately, with nothing negative;
* power models are non-decreasing; more CPU never means less active energy;
* the cap inverse never exceeds the cap under the model, is the largest such quota,
  rejects exactly the caps below the floor, and is monotone in the cap.
"""

from __future__ import annotations

import math

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from ecovisor.core.attribution import (
    ReferenceMethod,
    attribute_energy,
    attribute_power,
    attribute_power_reference,
    idle_share_w,
    largest_remainder,
)
from ecovisor.core.power_cap import (
    MIN_QUOTA_US,
    CapRejected,
    CapRejectReason,
    max_power_at_quota,
    quota_for_cap,
)
from ecovisor.core.power_model import (
    LinearPowerModel,
    PiecewiseLinearPowerModel,
    PolynomialPowerModel,
    calibrate_linear,
)
from ecovisor.core.shares import IdleAttribution

# per test, not a global profile: loading one here changed other modules' tests
_S = settings(deadline=None, max_examples=150)

watts = st.floats(min_value=0.0, max_value=2_000.0, allow_nan=False)
cores = st.integers(min_value=1, max_value=128)


@st.composite
def linear_models(draw: st.DrawFn) -> LinearPowerModel:
    idle = draw(watts)
    span = draw(st.floats(min_value=0.0, max_value=2_000.0))
    return LinearPowerModel(idle_w=idle, max_w=idle + span, cores=draw(cores))


@st.composite
def piecewise_models(draw: st.DrawFn) -> PiecewiseLinearPowerModel:
    inner = draw(st.lists(st.floats(min_value=0.01, max_value=0.99), max_size=8, unique=True))
    us = [0.0, *sorted(inner), 1.0]
    w = draw(watts)
    points = []
    for u in us:
        points.append((u, w))
        w += draw(st.floats(min_value=0.0, max_value=300.0))
    return PiecewiseLinearPowerModel(points=tuple(points), cores=draw(cores))


@st.composite
def polynomial_models(draw: st.DrawFn) -> PolynomialPowerModel:
    # c0 + Σ a_k u^k with a_k >= 0 is non-decreasing on [0, 1]; add a concave term that
    # keeps P' = a1 - 2 b u >= 0 on [0, 1] (b <= a1 / 2).
    c0 = draw(watts)
    a = draw(st.lists(st.floats(min_value=0.0, max_value=500.0), min_size=1, max_size=4))
    b = draw(st.floats(min_value=0.0, max_value=1.0)) * a[0] / 2
    coef = [c0, a[0], (a[1] if len(a) > 1 else 0.0) - b, *a[2:]]
    return PolynomialPowerModel(coefficients=tuple(coef), cores=draw(cores))


models = st.one_of(linear_models(), piecewise_models(), polynomial_models())
modes = st.sampled_from(list(IdleAttribution))
names = st.text(alphabet="abcdefghij-0123456789", min_size=1, max_size=6)


@st.composite
def node_intervals(draw: st.DrawFn) -> tuple:
    model = draw(models)
    dt = draw(st.floats(min_value=0.05, max_value=3_600.0))
    capacity = model.cores * dt
    cpu = draw(st.dictionaries(names, st.floats(min_value=0.0, max_value=capacity), max_size=8))
    # Node CPU: anything from below the containers' sum (skewed counters) to above
    # the capacity (clamped), or absent.
    node_cpu = draw(st.one_of(st.none(), st.floats(min_value=0.0, max_value=2 * capacity)))
    sizes = {n: draw(st.floats(min_value=0.01, max_value=64.0)) for n in cpu}
    return model, dt, cpu, node_cpu, sizes


def assert_balanced(a) -> None:  # type: ignore[no-untyped-def]
    parts = [*a.containers.values(), a.platform]
    assert all(s.active >= 0 and s.idle >= 0 for s in parts)
    assert a.node.active >= 0 and a.node.idle >= 0
    assert sum(s.active for s in parts) == a.node.active
    assert sum(s.idle for s in parts) == a.node.idle
    assert sum(s.total for s in parts) == a.node.total
    for s in parts:
        assert s.total == s.active + s.idle


@_S
@given(node_intervals(), modes)
def test_energy_attribution_is_exact_and_non_negative(interval: tuple, mode) -> None:  # type: ignore[no-untyped-def]
    model, dt, cpu, node_cpu, sizes = interval
    a = attribute_energy(
        model, dt_s=dt, container_cpu_s=cpu, node_cpu_s=node_cpu, idle_mode=mode, sizes=sizes
    )
    assert_balanced(a)
    assert 0.0 <= a.utilisation <= 1.0
    assert a.node.idle == round(model.idle_power_w * dt * 1000)
    if mode is IdleAttribution.none or not cpu:
        assert all(s.idle == 0 for s in a.containers.values())
        assert a.platform.idle == a.node.idle
    else:
        assert a.platform.idle == 0
    if mode is IdleAttribution.equal and cpu:
        idles = [s.idle for s in a.containers.values()]
        assert max(idles) - min(idles) <= 1


@_S
@given(node_intervals(), modes, st.floats(min_value=0.0, max_value=1e7))
def test_measured_energy_attribution_is_exact(interval: tuple, mode, joules: float) -> None:  # type: ignore[no-untyped-def]
    model, dt, cpu, node_cpu, sizes = interval
    a = attribute_energy(
        model,
        dt_s=dt,
        container_cpu_s=cpu,
        node_cpu_s=node_cpu,
        idle_mode=mode,
        sizes=sizes,
        measured_energy_j=joules,
    )
    assert_balanced(a)
    assert a.node.total == round(joules * 1000)
    assert a.node.idle <= a.node.total


@_S
@given(models, st.dictionaries(names, st.floats(0.0, 16.0), max_size=6), modes)
def test_power_attribution_is_exact(model, busy: dict, mode) -> None:  # type: ignore[no-untyped-def]
    sizes = dict.fromkeys(busy, 1.0)
    a = attribute_power(model, container_cores=busy, idle_mode=mode, sizes=sizes)
    assert_balanced(a)
    assert a.node.total == round((model.idle_power_w + model.dynamic_w(a.utilisation)) * 1000)
    for method in ReferenceMethod:
        r = attribute_power_reference(method, model, container_cores=busy, requests=sizes)
        assert_balanced(r)
        assert r.node.total == a.node.total


@_S
@given(node_intervals(), modes)
def test_more_cpu_never_gets_less_active(interval: tuple, mode) -> None:  # type: ignore[no-untyped-def]
    model, dt, cpu, node_cpu, sizes = interval
    a = attribute_energy(model, dt_s=dt, container_cpu_s=cpu, node_cpu_s=node_cpu)
    items = sorted(cpu.items(), key=lambda kv: kv[1])
    for (n1, c1), (n2, c2) in zip(items, items[1:], strict=False):
        if c2 > c1:
            assert a.containers[n2].active >= a.containers[n1].active


@_S
@given(st.integers(0, 10**12), st.lists(st.floats(0.0, 1e6), min_size=1, max_size=20))
def test_largest_remainder_sums_exactly(total: int, weights: list[float]) -> None:
    assume(sum(weights) > 0)
    parts = largest_remainder(total, weights)
    assert sum(parts) == total
    assert all(p >= 0 for p in parts)
    exact = [total * w / math.fsum(weights) for w in weights]
    assert all(abs(p - e) < 1 + 1e-6 * max(1.0, e) for p, e in zip(parts, exact, strict=True))


@_S
@given(models, st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_power_models_are_monotone(model, u1: float, u2: float) -> None:  # type: ignore[no-untyped-def]
    lo, hi = sorted((u1, u2))
    assert model.power_w(lo) <= model.power_w(hi) + 1e-9 * max(1.0, model.peak_power_w)
    assert model.dynamic_w(lo) >= 0.0
    w = model.power_w(lo)
    u = model.utilisation_for_power(w)
    assert model.power_w(u) <= w


@_S
@given(
    models,
    st.floats(0.0, 300.0),
    st.floats(0.0, 2_000.0),
    st.floats(0.0, 128.0),
    st.sampled_from([1_000, 10_000, 100_000, 1_000_000]),
)
def test_cap_inverse_never_exceeds_the_cap(
    model, idle_share: float, cap: float, others: float, period: int
) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    floor = max_power_at_quota(
        model, MIN_QUOTA_US / period, idle_share_w=idle_share, other_busy_cores=others
    )
    try:
        q = quota_for_cap(
            model, cap, idle_share_w=idle_share, other_busy_cores=others, period_us=period
        )
    except CapRejected as e:
        assert cap < floor
        assert e.floor_w == floor
        expected = (
            CapRejectReason.below_idle_floor
            if cap < idle_share
            else CapRejectReason.below_min_quota
        )
        assert e.reason is expected
        return
    assert cap >= floor
    assert q.quota_us is not None
    assert MIN_QUOTA_US <= q.quota_us <= model.cores * period
    power = max_power_at_quota(
        model, q.quota_us / period, idle_share_w=idle_share, other_busy_cores=others
    )
    assert power <= cap
    assert q.max_power_w == power
    if q.binding:  # the largest quota that holds the cap
        nxt = max_power_at_quota(
            model, (q.quota_us + 1) / period, idle_share_w=idle_share, other_busy_cores=others
        )
        assert nxt > cap
    else:
        assert q.quota_us == model.cores * period


@_S
@given(models, st.floats(0.0, 100.0), st.floats(0.0, 2_000.0), st.floats(0.0, 2_000.0))
def test_cap_inverse_is_monotone(model, idle_share: float, c1: float, c2: float) -> None:  # type: ignore[no-untyped-def]
    lo, hi = sorted((c1, c2))
    try:
        q_lo = quota_for_cap(model, lo, idle_share_w=idle_share)
    except CapRejected:
        return
    q_hi = quota_for_cap(model, hi, idle_share_w=idle_share)
    assert q_lo.quota_us is not None and q_hi.quota_us is not None
    assert q_lo.quota_us <= q_hi.quota_us


@_S
@given(models, st.floats(0.0, 50.0), st.floats(0.0, 200.0), st.floats(0.0, 200.0), st.floats(0, 64))
def test_forward_power_is_monotone_in_quota(
    model, share: float, a: float, b: float, others: float
) -> None:  # type: ignore[no-untyped-def]  # noqa: E501
    lo, hi = sorted((a, b))
    p_lo = max_power_at_quota(model, lo, idle_share_w=share, other_busy_cores=others)
    p_hi = max_power_at_quota(model, hi, idle_share_w=share, other_busy_cores=others)
    assert p_lo <= p_hi + 1e-9 * max(1.0, p_hi)
    assert p_lo >= share


@_S
@given(linear_models(), st.lists(names, min_size=1, max_size=6, unique=True), modes)
def test_idle_shares_add_up_to_idle(model, members: list[str], mode) -> None:  # type: ignore[no-untyped-def]
    sizes = {n: float(i + 1) for i, n in enumerate(members)}
    total = math.fsum(idle_share_w(model, mode, n, members, sizes) for n in members)
    expected = 0.0 if mode is IdleAttribution.none else model.idle_power_w
    assert math.isclose(total, expected, rel_tol=1e-9, abs_tol=1e-9)


@_S
@given(
    st.floats(0.0, 500.0),
    st.floats(0.01, 1_000.0),
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=50, unique=True),
)
def test_linear_calibration_recovers_exact_lines(idle: float, span: float, us: list[float]) -> None:
    assume(max(us) - min(us) > 0.05)
    cal = calibrate_linear([(u, idle + span * u) for u in us], cores=4)
    assert math.isclose(cal.model.idle_w, idle, rel_tol=1e-6, abs_tol=1e-6)
    assert math.isclose(cal.model.max_w, idle + span, rel_tol=1e-6, abs_tol=1e-6)
