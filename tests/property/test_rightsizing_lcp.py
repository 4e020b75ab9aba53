"""Lazy Capacity Provisioning never costs more than 3 × the offline optimum (Hypothesis).

The bound (Lin et al., ToN 2013, continuous; Albers & Quedenfeld, SPAA 2018, discrete)
holds for convex operating costs g_t(h) = h·f(λ_t/h) with the feasibility h·C ≥ λ_t, any
β_on, β_off ≥ 0, from x_0 = 0; the optimum is the exact DP (checked against brute force
in tests/unit/test_rightsizing.py). Follow-the-load (the per-slot optimum) breaks the
same bound on this generator, so the property discriminates."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from ecovisor.core.rightsizing import (
    LazyCapacityProvisioning,
    offline_optimum,
    operating_costs,
    schedule_cost,
)

coef = st.floats(0, 5, allow_nan=False)


@st.composite
def instances(draw):
    n = draw(st.integers(1, 8))
    t = draw(st.integers(1, 24))
    cap = draw(st.sampled_from([1.0, 2.0, 0.5]))
    frac = draw(st.lists(st.floats(0, 1), min_size=t, max_size=t))
    zero = draw(st.lists(st.booleans(), min_size=t, max_size=t))
    loads = np.array([0.0 if z else x * n * cap for x, z in zip(frac, zero, strict=True)])
    a, b, c, d = (draw(coef) for _ in range(4))
    k = draw(st.floats(0, 1))

    def f(u):  # convex in the per-server load
        return a + b * u + c * u * u + d * np.maximum(u / cap - k, 0)

    g = operating_costs(f, loads, n, capacity=cap)
    b_on = draw(st.floats(0, 30))
    b_off = draw(st.floats(0, 30))
    return g, b_on, b_off


@settings(max_examples=400, deadline=None)
@given(instances())
def test_lcp_within_three_times_the_optimum(inst) -> None:
    g, b_on, b_off = inst
    opt = offline_optimum(g, b_on, b_off, x0=0, x_end=0).cost
    alg = LazyCapacityProvisioning(g.shape[1] - 1, b_on + b_off)
    xs = []
    for row in g:
        xs.append(alg.step(row))
        lo, hi = alg.bounds
        assert lo <= hi
    cost = schedule_cost(g, xs, b_on, b_off, x0=0, x_end=0).cost
    assert cost <= 3 * opt + 1e-9 * (1 + opt)
