"""Right-sizing core (ecovisor/core/rightsizing.py): the offline DP against brute force
and a hand-worked case, the seed's example, LCP against its definition computed by
brute force, receding horizon control, the carbon-weighted costs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from ecovisor.core.rightsizing import (
    SEED_COST,
    LazyCapacityProvisioning,
    ServerCost,
    lcp,
    offline_optimum,
    operating_costs,
    per_slot_optimum,
    receding_horizon,
    relax,
    schedule_cost,
    seasonal_naive,
    seed_example_loads,
    switch_counts,
    weighted_costs,
)

# --- helpers --------------------------------------------------------------------------


def random_convex(rng: np.random.Generator):
    """f(u) = a + b·u + c·u² + d·max(u − k, 0): convex for a, b, c, d >= 0."""
    a, b, c, d = rng.uniform(0, 3, 4)
    k = rng.uniform(0, 1)
    return lambda u: a + b * u + c * u * u + d * np.maximum(u - k, 0)


def all_schedules(t: int, n: int) -> np.ndarray:
    return np.array(list(itertools.product(range(n + 1), repeat=t)), dtype=np.int64)


def brute_costs(g, xs, b_on, b_off, x0=0, x_end=0) -> np.ndarray:
    """Cost of every schedule (rows of xs), vectorised; independent of schedule_cost."""
    t = g.shape[0]
    b_on = np.broadcast_to(np.asarray(b_on, float), (t,))
    b_off = np.broadcast_to(np.asarray(b_off, float), (t,))
    op = g[np.arange(t)[None, :], xs].sum(axis=1)
    path = np.hstack([np.full((len(xs), 1), x0), xs])
    d = np.diff(path, axis=1)
    sw = (b_on * np.maximum(d, 0) + b_off * np.maximum(-d, 0)).sum(axis=1)
    if x_end is not None:
        e = x_end - xs[:, -1]
        sw = sw + b_on[-1] * np.maximum(e, 0) + b_off[-1] * np.maximum(-e, 0)
    with np.errstate(invalid="ignore"):
        return op + sw


# --- offline optimum ------------------------------------------------------------------


def test_relax_is_the_min_over_every_previous_count() -> None:
    rng = np.random.default_rng(0)
    for _ in range(50):
        prev = rng.uniform(0, 10, 7)
        prev[rng.random(7) < 0.3] = np.inf
        prev[rng.integers(7)] = 1.0
        b_on, b_off = rng.uniform(0, 4, 2)
        h = np.arange(7)
        naive = [min(prev[j] + b_on * max(i - j, 0) + b_off * max(j - i, 0) for j in h) for i in h]
        assert np.allclose(relax(prev, b_on, b_off), naive)


def test_hand_worked_three_slots() -> None:
    # N = 2, β_on = 3, β_off = 1, x_0 = 0, x_end = 0. Costs g[t, h]:
    #   slot 0: (inf, 1, 4)  slot 1: (inf, 5, 2)  slot 2: (0, 1, 1)
    # Candidates: (1,2,0): 1+2+0 + 3+3 (ups) + 2 (downs) = 11;
    #             (2,2,0): 4+2+0 + 6 + 2 = 14; (1,1,0): 1+5+0 + 3 + 1 = 10;
    #             (1,1,1): 1+5+1 + 3 + 1 = 11.  Optimum: (1,1,0) at 10.
    g = np.array([[np.inf, 1, 4], [np.inf, 5, 2], [0, 1, 1]])
    s = offline_optimum(g, 3, 1)
    assert s.servers.tolist() == [1, 1, 0]
    assert s.cost == pytest.approx(10)
    assert (s.operating, s.switching) == (pytest.approx(6), pytest.approx(4))


def test_dp_matches_brute_force_on_small_random_instances() -> None:
    rng = np.random.default_rng(7)
    for i in range(300):
        t, n = int(rng.integers(1, 7)), int(rng.integers(1, 5))
        f = random_convex(rng)
        cap = float(rng.choice([1.0, 2.5]))
        lam = rng.uniform(0, n * cap, t) * (rng.random(t) > 0.2)
        g = operating_costs(f, lam, n, capacity=cap)
        if i % 3 == 0:  # time-varying switching costs, as the carbon problem has
            b_on, b_off = rng.uniform(0, 8, t), rng.uniform(0, 8, t)
        else:
            b_on, b_off = rng.uniform(0, 8, 2)
        x0 = int(rng.integers(0, n + 1))
        x_end = None if i % 2 else 0
        s = offline_optimum(g, b_on, b_off, x0=x0, x_end=x_end)
        costs = brute_costs(g, all_schedules(t, n), b_on, b_off, x0, x_end)
        assert s.cost == pytest.approx(costs.min(), rel=1e-9, abs=1e-9)
        # the reported cost is the schedule's own cost
        again = schedule_cost(g, s.servers, b_on, b_off, x0=x0, x_end=x_end)
        assert s.cost == pytest.approx(again.cost, rel=1e-12)


def test_dp_ignores_convexity_but_respects_feasibility() -> None:
    # non-convex operating costs: the DP is still exact
    rng = np.random.default_rng(3)
    for _ in range(100):
        g = rng.uniform(0, 10, (4, 4))
        g[rng.random((4, 4)) < 0.2] = np.inf
        g[:, 2] = np.minimum(g[:, 2], 5)  # one feasible count per slot
        s = offline_optimum(g, 2.0, 1.0)
        assert s.cost == pytest.approx(brute_costs(g, all_schedules(4, 3), 2.0, 1.0).min())
        assert np.all(np.isfinite(g[np.arange(4), s.servers]))


def test_infeasible_slot_is_an_error() -> None:
    g = operating_costs(SEED_COST, [1.0, 5.0], 3)  # 5 > N·C
    with pytest.raises(ValueError, match="slot 1"):
        offline_optimum(g, 6, 6)


def test_operating_costs_shape_and_feasibility() -> None:
    g = operating_costs(SEED_COST, [0.0, 1.5], 3)
    assert g[0].tolist() == [0.0, 1.0, 2.0, 3.0]  # no load: idle cost per server
    assert math.isinf(g[1, 0]) and math.isinf(g[1, 1])  # 1 server cannot carry 1.5
    # 2 servers at 0.75 each: 2·(1 + 0.75·(4 − 1.5)) = 5.75; 3 at 0.5: 3·(1 + 0.5·0.5)
    assert g[1, 2] == pytest.approx(5.75)
    assert g[1, 3] == pytest.approx(3.75)
    g = operating_costs(SEED_COST, [0.0], 3, min_servers=2)
    assert math.isinf(g[0, 1]) and g[0, 2] == 2.0


def test_per_slot_optimum_of_the_seed_f_is_twice_the_load() -> None:
    # h·f(λ/h) = h + λ·(h/(h−λ) − 1.5) for λ < h < 3λ, derivative 1 − λ²/(h−λ)²:
    # minimum at h = 2λ (load 1/2 per server), so the integer optimum is ⌊2λ⌋ or ⌈2λ⌉,
    # capped at N (the seed's case analysis with x_F = 2).
    n = 100
    lam = seed_example_loads("fluctuating", n=n)
    g = operating_costs(SEED_COST, lam, n)
    x = per_slot_optimum(g)
    for lt, xt in zip(lam, x, strict=True):
        if 2 * lt >= n:
            assert xt == n
        else:
            assert xt in (math.floor(2 * lt), math.ceil(2 * lt))


# --- the seed's example -----------------------------------------------------------------

# Figures of docs/right-sizing.md ("The seed's example"), regenerated by
# `python experiments/rightsizing_table.py --seed-example`.
SEED_FIGURES = {
    # kind: (optimum operating, optimum switching, follow-the-load operating, switching)
    "smooth": (18145.16, 1200.0, 18082.89, 2184.0),
    "fluctuating": (55640.79, 1200.0, 53882.78, 20592.0),
}


@pytest.mark.parametrize("kind", ["smooth", "fluctuating"])
def test_seed_example(kind: str) -> None:
    n = t = 100
    lam = seed_example_loads(kind, n=n, t=t)
    assert lam.shape == (t,) and lam.min() >= 1 and lam.max() <= n - 1
    g = operating_costs(SEED_COST, lam, n)
    opt = offline_optimum(g, 6, 6)
    follow = schedule_cost(g, per_slot_optimum(g), 6, 6)
    got = (opt.operating, opt.switching, follow.operating, follow.switching)
    assert got == pytest.approx(SEED_FIGURES[kind], abs=0.006)
    # the seed's claims: a smoother server curve (fewer switches) and less energy
    assert switch_counts(opt.servers)[0] < switch_counts(follow.servers)[0]
    assert opt.cost < follow.cost


def test_seed_example_saves_more_on_the_fluctuating_load() -> None:
    saving = {}
    for kind in ("smooth", "fluctuating"):
        g = operating_costs(SEED_COST, seed_example_loads(kind), 100)
        follow = schedule_cost(g, per_slot_optimum(g), 6, 6).cost
        saving[kind] = 1 - offline_optimum(g, 6, 6).cost / follow
    assert saving["fluctuating"] > saving["smooth"] > 0


# --- LCP ------------------------------------------------------------------------------


def lcp_by_definition(g: np.ndarray, beta: float) -> list[int]:
    """LCP computed from its definition by enumeration: x^L_τ is the smallest last count
    among optimal schedules of slots 1..τ with β per power-up, x^U_τ the largest among
    optimal ones with β per power-down; x_τ = x_{τ−1} projected onto [x^L_τ, x^U_τ]."""
    t_len, m = g.shape
    x, prev = [], 0
    for tau in range(1, t_len + 1):
        xs = all_schedules(tau, m - 1)
        up = brute_costs(g[:tau], xs, beta, 0.0, 0, None)
        down = brute_costs(g[:tau], xs, 0.0, beta, 0, None)
        lo_set = xs[up <= up.min() + 1e-9 * max(1, abs(up.min())), -1]
        hi_set = xs[down <= down.min() + 1e-9 * max(1, abs(down.min())), -1]
        lo, hi = int(lo_set.min()), int(hi_set.max())
        assert lo <= hi
        prev = min(max(prev, lo), hi)
        x.append(prev)
    return x


def test_lcp_follows_its_definition() -> None:
    rng = np.random.default_rng(11)
    for i in range(200):
        t, n = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        if i % 2:
            lam = rng.uniform(0, n, t) * (rng.random(t) > 0.3)
            g = operating_costs(random_convex(rng), lam, n)
            beta = float(rng.uniform(0, 10))
        else:  # small integers: convex rows a·|h − c| with many ties
            a = rng.integers(0, 3, (t, 1))
            c = rng.integers(0, n + 1, (t, 1))
            g = (a * np.abs(np.arange(n + 1)[None, :] - c)).astype(float)
            beta = float(rng.integers(0, 4))
        assert lcp(g, beta / 2, beta / 2).tolist() == lcp_by_definition(g, beta)


def test_lcp_is_lazy_between_its_bounds() -> None:
    # load 3 then 0: LCP stays up while the idle cost paid is below β (= 4 + 4 = 8)
    n, beta_half = 4, 4.0
    lam = [3.0] + [0.0] * 10
    g = operating_costs(SEED_COST, lam, n)
    x = lcp(g, beta_half, beta_half)
    assert x[0] == 4  # 2λ = 6 capped at N = 4
    assert x[1] == 4  # lazy: not down at once
    assert x[-1] == 0  # down once the idle cost passed β
    alg = LazyCapacityProvisioning(n, 2 * beta_half)
    for row in g:
        alg.step(row)
        lo, hi = alg.bounds
        assert lo <= alg.x <= hi


# --- receding horizon --------------------------------------------------------------------


def test_receding_horizon_with_the_whole_horizon_is_optimal() -> None:
    rng = np.random.default_rng(5)
    for _ in range(20):
        lam = rng.uniform(0, 6, 12)
        g = operating_costs(SEED_COST, lam, 8)
        x = receding_horizon(g, 12, 3, 3)
        assert schedule_cost(g, x, 3, 3).cost == pytest.approx(offline_optimum(g, 3, 3).cost)


def test_receding_horizon_uses_the_forecast() -> None:
    # a forecast that always predicts zero load: RHC(w) then turns servers off as soon
    # as it can, whatever the true load
    g = operating_costs(SEED_COST, [2.0] * 6, 4)
    zero = operating_costs(SEED_COST, [0.0] * 6, 4)
    x = receding_horizon(g, 3, 1, 1, forecast=lambda t, w: zero[t + 1 : t + 1 + w])
    perfect = receding_horizon(g, 3, 1, 1)
    assert x.tolist() != perfect.tolist()
    assert schedule_cost(g, x, 1, 1).cost >= schedule_cost(g, perfect, 1, 1).cost
    with pytest.raises(ValueError, match="forecast"):
        receding_horizon(g, 3, 1, 1, forecast=lambda t, w: zero[:1])


def test_seasonal_naive() -> None:
    v = np.arange(10.0)
    assert seasonal_naive(v, 5, 3, 4).tolist() == [2.0, 3.0, 4.0]  # one period back
    assert seasonal_naive(v, 5, 6, 2).tolist() == [4.0, 5.0, 4.0, 5.0, 4.0, 5.0]
    assert seasonal_naive(v, 1, 2, 24).tolist() == [1.0, 1.0]  # nothing a day back: last


# --- carbon-weighted --------------------------------------------------------------------


def test_weighted_costs_zero_the_solar_part_and_weight_the_rest() -> None:
    e = np.array([[0.0, 2.0, 4.0]])
    p = np.array([[np.inf, 1.0, 0.5]])
    out = weighted_costs(e, p, [3.0], [3.0])
    assert math.isinf(out[0, 0])
    assert out[0, 1] == pytest.approx(1.0)  # 2 Wh all solar: only the penalty
    assert out[0, 2] == pytest.approx(3.0 * 1.0 + 0.5)  # 1 Wh from the grid at weight 3
    assert math.isinf(weighted_costs(e, p, [0.0])[0, 0])  # 0 · inf stays infeasible


def test_carbon_weighted_optimum_runs_more_servers_when_the_grid_is_clean() -> None:
    # constant load; with the seed's f the per-slot optimum is h = λ(1 + 1/√w):
    # more servers (less delay) when the weight is low, fewer when it is high
    n, lam = 40, np.full(8, 8.0)
    cost = ServerCost()
    e = operating_costs(cost.energy, lam, n)
    p = operating_costs(cost.penalty, lam, n)
    w = np.array([0.25, 4.0] * 4)
    x = offline_optimum(weighted_costs(e, p, w), 0.0, 0.0).servers
    clean, dirty = x[w < 1], x[w > 1]
    assert clean.min() > dirty.max()
    assert clean[0] == pytest.approx(8 * (1 + 1 / 0.5), abs=1)
    assert dirty[0] == pytest.approx(8 * (1 + 1 / 2), abs=1)
    # energy-only weighting gives the same count every slot
    flat = offline_optimum(weighted_costs(e, p, np.ones(8)), 0.0, 0.0).servers
    assert len(set(flat.tolist())) == 1


def test_server_cost_defaults_are_the_seed_f() -> None:
    u = np.array([0.0, 0.2, 1 / 3, 0.5, 0.9])
    seed = u * np.maximum(1 / (1 - u) - 1.5, 0) + 1
    assert np.allclose(SEED_COST(u), seed)
    assert math.isinf(float(SEED_COST(np.array([1.0]))[0]))
    with pytest.raises(ValueError):
        ServerCost(idle=2.0, peak=1.0)
