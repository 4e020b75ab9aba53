"""Right-sizing: how many of N identical servers to keep active in each slot.

The problem (seed 004, after Lin, Wierman, Andrew, Thereska, "Dynamic right-sizing for
power-proportional data centers", IEEE/ACM Trans. Networking 21(5), 2013): slots
t = 1..T with load λ_t, servers of capacity C. Running h servers in slot t costs
g_t(h) = h · f(λ_t / h) (the load split evenly, which is optimal for convex f) and is
infeasible when h · C < λ_t; switching costs β_on per server powered up and β_off per
server powered down. Minimise

    Σ_t g_t(x_t) + Σ_t β_on (x_t − x_{t−1})⁺ + β_off (x_{t−1} − x_t)⁺

over integer x_t ∈ {0..N}, from x_0 (0 in the seed) to x_{T+1} = x_end (0 in the seed:
every server is powered down after the horizon; ``None`` leaves the end free).

* ``offline_optimum``: the exact dynamic programme over (slot, active servers). The
  transition min_{h'} c_{t−1}(h') + β_on (h − h')⁺ + β_off (h' − h)⁺ splits into a
  prefix minimum of c_{t−1}(h') − β_on·h' (h' ≤ h) plus β_on·h and a suffix minimum of
  c_{t−1}(h') + β_off·h' (h' ≥ h) minus β_off·h, so a slot costs O(N) and the whole
  programme O(T·N) time, O(T·N) memory for the backtrack (the seed's algorithm is
  O(K·N²), K the number of local maxima of the load).
* ``LazyCapacityProvisioning`` (LCP): the online algorithm of Lin et al. (INFOCOM 2011,
  ToN 2013), 3-competitive; its discrete version is 3-competitive too and no
  deterministic online algorithm does better (Albers, Quedenfeld, "Optimal algorithms
  for right-sizing data centers", SPAA 2018). O(N) per slot.
* ``receding_horizon``: receding horizon control with a forecast of the next w slots
  (no constant competitive ratio is claimed for it here).
* ``weighted_costs``: the carbon-weighted operating cost: the grid part of the energy
  (what the app's solar does not cover) weighted by the slot's carbon intensity.

Pure numpy; no I/O, no clock. Costs are floats; ``inf`` marks an infeasible count.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]

# Relative tolerance under which two DP values count as equal (ties).
TIE_RTOL = 1e-9

# ---------------------------------------------------------------------------------------
# Cost model
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerCost:
    """Operating cost of one active server in one slot at load λ ∈ [0, C]:
    f(λ) = energy(λ) + penalty(λ), with

        energy(λ)  = idle + (peak − idle) · λ / C
        penalty(λ) = delay_weight · u · max{1 / (1 − u) − delay_target, 0},  u = λ / C

    the penalty being the mean response time of an M/GI/1 processor-sharing server in
    units of the service time, 1 / (1 − u), in excess of a target (infinite at u = 1).
    The defaults are the seed's example (after Lin et al.):
    f(λ) = λ · max{1 / (1 − λ) − 1.5, 0} + 1 with C = 1."""

    idle: float = 1.0
    peak: float = 1.0
    delay_weight: float = 1.0
    delay_target: float = 1.5
    capacity: float = 1.0

    def __post_init__(self) -> None:
        if not (0 <= self.idle <= self.peak) or self.delay_weight < 0 or self.capacity <= 0:
            raise ValueError("need 0 <= idle <= peak, delay_weight >= 0 and capacity > 0")

    def energy(self, load: npt.ArrayLike) -> FloatArray:
        u = np.asarray(load, dtype=float) / self.capacity
        return self.idle + (self.peak - self.idle) * u

    def penalty(self, load: npt.ArrayLike) -> FloatArray:
        u = np.asarray(load, dtype=float) / self.capacity
        with np.errstate(divide="ignore", invalid="ignore"):
            excess = np.maximum(1.0 / (1.0 - u) - self.delay_target, 0.0)
            out = self.delay_weight * u * excess
        return np.where(u >= 1.0, np.inf if self.delay_weight > 0 else 0.0, out)

    def __call__(self, load: npt.ArrayLike) -> FloatArray:
        return self.energy(load) + self.penalty(load)


SEED_COST = ServerCost()
"""The seed's f(λ) = λ · max{1/(1−λ) − 1.5, 0} + 1, C = 1 (β_on = β_off = 6)."""


def operating_costs(
    f: Callable[[FloatArray], npt.ArrayLike],
    loads: npt.ArrayLike,
    n: int,
    *,
    capacity: float = 1.0,
    min_servers: int = 0,
) -> FloatArray:
    """g[t, h] = h · f(λ_t / h) for h = 0..n, ``inf`` where h · C < λ_t or h < min_servers
    (g[t, 0] = 0 when λ_t = 0). ``f`` takes an array of per-server loads; it need not be
    convex for the offline optimum, LCP's bound needs it convex."""
    lam = np.asarray(loads, dtype=float)
    if lam.ndim != 1 or not np.all(np.isfinite(lam)) or np.any(lam < 0):
        raise ValueError("loads must be a 1-d array of finite values >= 0")
    if n < 0 or capacity <= 0 or not 0 <= min_servers <= n:
        raise ValueError("need n >= 0, capacity > 0 and 0 <= min_servers <= n")
    h = np.arange(n + 1)
    per = lam[:, None] / np.maximum(h, 1)[None, :]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        g = h[None, :] * np.asarray(f(per), dtype=float)
    feasible = (h[None, :] * capacity >= lam[:, None]) & (h >= min_servers)[None, :]
    g = np.where(feasible & ~np.isnan(g), g, np.inf)
    g[:, 0] = np.where((lam == 0) & (min_servers == 0), 0.0, np.inf)
    return g


def weighted_costs(
    energy: FloatArray,
    penalty: FloatArray,
    weight: npt.ArrayLike,
    free_energy: npt.ArrayLike | None = None,
) -> FloatArray:
    """Carbon-weighted operating cost w_t · max(E[t, h] − s_t, 0) + P[t, h]: the energy
    the servers draw beyond the slot's free (solar) energy s_t, weighted by w_t (the
    grid carbon intensity, e.g. relative to a reference), plus the penalty unweighted.
    ``inf`` where either part is infeasible."""
    e = np.asarray(energy, dtype=float)
    p = np.asarray(penalty, dtype=float)
    w = np.broadcast_to(np.asarray(weight, dtype=float), (e.shape[0],))
    s = np.zeros(e.shape[0]) if free_energy is None else np.asarray(free_energy, float)
    if np.any(w < 0) or np.any(s < 0):
        raise ValueError("weights and free energy must be >= 0")
    infeasible = np.isinf(e) | np.isinf(p)
    with np.errstate(invalid="ignore"):
        out = w[:, None] * np.maximum(e - s[:, None], 0.0) + p
    return np.where(infeasible, np.inf, out)


# ---------------------------------------------------------------------------------------
# Schedules and their cost
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Schedule:
    """Active servers per slot and the cost split into operating and switching."""

    servers: IntArray
    operating: float
    switching: float

    @property
    def cost(self) -> float:
        return self.operating + self.switching


def _per_slot(beta: float | npt.ArrayLike, t: int, name: str) -> FloatArray:
    b = np.asarray(beta, dtype=float)
    if b.ndim == 0:
        b = np.full(t, float(b))
    if b.shape != (t,) or np.any(b < 0) or not np.all(np.isfinite(b)):
        raise ValueError(f"{name} must be a finite value >= 0 or one per slot")
    return b


def switch_counts(servers: npt.ArrayLike, x0: int = 0, x_end: int | None = 0) -> tuple[int, int]:
    """Servers powered up and powered down over the schedule, the final change to
    ``x_end`` included."""
    x = np.asarray(servers, dtype=np.int64)
    path = np.concatenate([[x0], x, [] if x_end is None else [x_end]])
    d = np.diff(path)
    return int(d[d > 0].sum()), int(-d[d < 0].sum())


def schedule_cost(
    costs: FloatArray,
    servers: npt.ArrayLike,
    beta_on: float | npt.ArrayLike,
    beta_off: float | npt.ArrayLike,
    *,
    x0: int = 0,
    x_end: int | None = 0,
) -> Schedule:
    """The cost of a given schedule: Σ g_t(x_t) and the switching cost (β of slot t for
    the change into slot t; the final change to ``x_end`` at the last slot's β)."""
    g = np.asarray(costs, dtype=float)
    x = np.asarray(servers, dtype=np.int64)
    t = g.shape[0]
    if x.shape != (t,) or np.any(x < 0) or np.any(x >= g.shape[1]):
        raise ValueError("one server count per slot, each in 0..N")
    b_on, b_off = _per_slot(beta_on, t, "beta_on"), _per_slot(beta_off, t, "beta_off")
    operating = float(g[np.arange(t), x].sum())
    d = np.diff(np.concatenate([[x0], x]))
    switching = float((b_on * np.maximum(d, 0) + b_off * np.maximum(-d, 0)).sum())
    if x_end is not None and t:
        e = x_end - int(x[-1])
        switching += float(b_on[-1] * max(e, 0) + b_off[-1] * max(-e, 0))
    return Schedule(x, operating, switching)


# ---------------------------------------------------------------------------------------
# The O(N) transition and tie-breaking
# ---------------------------------------------------------------------------------------


def relax(prev: FloatArray, beta_on: float, beta_off: float) -> FloatArray:
    """best[h] = min_{h'} prev[h'] + β_on (h − h')⁺ + β_off (h' − h)⁺ in O(N): a prefix
    minimum (arrive from below, pay β_on per server) and a suffix minimum (arrive from
    above, pay β_off per server)."""
    idx = np.arange(prev.shape[0], dtype=float)
    up = np.minimum.accumulate(prev - beta_on * idx) + beta_on * idx
    down = np.minimum.accumulate((prev + beta_off * idx)[::-1])[::-1] - beta_off * idx
    return np.minimum(up, down)


def _tol(m: float) -> float:
    return TIE_RTOL * max(1.0, abs(m))


def _ties(v: FloatArray) -> IntArray:
    """Every count whose value is the minimum (within the tie tolerance), ascending."""
    m = float(v[v.argmin()])  # argmin is several times faster than min for small arrays
    if not np.isfinite(m):
        raise ValueError("no feasible number of servers")
    return np.flatnonzero(v <= m + _tol(m))


def _stay_or_argmin(v: FloatArray, stay: int) -> int:
    """``stay`` if it is a minimum (within the tolerance), else the first minimum."""
    j = int(v.argmin())
    m = float(v[j])
    if not np.isfinite(m):
        raise ValueError("no feasible number of servers")
    return stay if v[stay] <= m + _tol(m) else j


# ---------------------------------------------------------------------------------------
# Offline optimum
# ---------------------------------------------------------------------------------------


def offline_optimum(
    costs: npt.ArrayLike,
    beta_on: float | npt.ArrayLike,
    beta_off: float | npt.ArrayLike,
    *,
    x0: int = 0,
    x_end: int | None = 0,
) -> Schedule:
    """The exact optimum by dynamic programming over (slot, active servers), O(T·N).

    ``costs[t, h]`` is g_t(h) (``inf`` = infeasible), ``beta_*`` a value or one per
    slot (the cost of a change into slot t; the final change to ``x_end`` uses the last
    slot's). Among optimal schedules the backtrack prefers not to switch (ties within
    a relative 1e-9). Raises ``ValueError`` if some slot has no feasible count."""
    g = np.asarray(costs, dtype=float)
    if g.ndim != 2 or g.shape[0] == 0 or g.shape[1] == 0:
        raise ValueError("costs must be a (T, N+1) array with T >= 1")
    t_len, m = g.shape
    if not 0 <= x0 < m or (x_end is not None and not 0 <= x_end < m):
        raise ValueError("x0 and x_end must be in 0..N")
    b_on, b_off = _per_slot(beta_on, t_len, "beta_on"), _per_slot(beta_off, t_len, "beta_off")
    idx = np.arange(m, dtype=float)
    constant = bool(np.all(b_on == b_on[0]) and np.all(b_off == b_off[0]))
    up_w, down_w = b_on[0] * idx, b_off[0] * idx  # β·h, recomputed only if β varies
    vals = np.empty((t_len, m))
    prev = np.full(m, np.inf)
    prev[x0] = 0.0
    for t in range(t_len):
        if not constant:
            up_w, down_w = b_on[t] * idx, b_off[t] * idx
        # relax(prev, β_on, β_off) inlined with the β·h vectors computed once
        up = np.minimum.accumulate(prev - up_w)
        up += up_w
        down = np.minimum.accumulate((prev + down_w)[::-1])[::-1]
        down -= down_w
        cur = np.minimum(up, down, out=vals[t])
        cur += g[t]
        low = cur[cur.argmin()]
        if not np.isfinite(low):
            raise ValueError(f"slot {t}: no feasible number of servers")
        cur -= low  # keeps values small; the argmins are unchanged
        prev = cur
    x = np.empty(t_len, dtype=np.int64)
    last = vals[-1]
    if x_end is not None:
        last = last + b_on[-1] * np.maximum(x_end - idx, 0) + b_off[-1] * np.maximum(idx - x_end, 0)
    x[-1] = _stay_or_argmin(last, x0 if x_end is None else x_end)
    # the switching cost into count h from every count, one row per h (β constant;
    # (N+1)² values, so only for moderate N)
    switch = None
    if constant and m <= 2048:
        d = idx[None, :] - idx[:, None]  # d[h, h'] = h' − h
        switch = b_on[0] * np.maximum(-d, 0) + b_off[0] * np.maximum(d, 0)
    for t in range(t_len - 1, 0, -1):
        h = int(x[t])
        if switch is not None:
            cand = vals[t - 1] + switch[h]
        else:
            cand = (
                vals[t - 1] + b_on[t] * np.maximum(h - idx, 0) + b_off[t] * np.maximum(idx - h, 0)
            )
        x[t - 1] = _stay_or_argmin(cand, h)
    return schedule_cost(g, x, b_on, b_off, x0=x0, x_end=x_end)


def per_slot_optimum(costs: npt.ArrayLike) -> IntArray:
    """The optimum without switching costs (β = 0): each slot's cheapest count, the
    smallest among ties ("follow the load"; the seed's special case β_on = β_off = 0)."""
    g = np.asarray(costs, dtype=float)
    return np.array([int(_ties(row)[0]) for row in g], dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Online: Lazy Capacity Provisioning
# ---------------------------------------------------------------------------------------


class LazyCapacityProvisioning:
    """LCP (Lin, Wierman, Andrew, Thereska, INFOCOM 2011 / ToN 2013), discrete version
    (Albers, Quedenfeld, SPAA 2018). Switching cost β per server powered up, where
    β = β_on + β_off (a schedule from x_0 = 0 that ends with every server off pays
    β_on + β_off per server cycle, so the two models cost every schedule the same).

    At slot τ, with g_1..g_τ known:

    * x^L_τ: the last count of an optimal schedule for slots 1..τ when powering up
      costs β (smallest such count among optimal schedules);
    * x^U_τ: the same when powering down costs β instead (largest such count);
    * x_τ = x_{τ−1} projected onto [x^L_τ, x^U_τ]: stay unless the bounds force a move.

    Both prefix problems are kept as forward DP values, so a slot costs O(N). Cost of
    the schedule ≤ 3 × the offline optimum for convex g_t (Albers, Quedenfeld for this
    integer problem; Lin et al. for the continuous one)."""

    def __init__(self, n: int, beta: float, x0: int = 0) -> None:
        if n < 0 or beta < 0 or not 0 <= x0 <= n:
            raise ValueError("need n >= 0, beta >= 0 and 0 <= x0 <= n")
        self.n, self.beta, self.x = n, float(beta), int(x0)
        self._lower = np.full(n + 1, np.inf)
        self._lower[x0] = 0.0
        self._upper = self._lower.copy()
        self._bh = self.beta * np.arange(n + 1, dtype=float)  # β·h
        self.bounds: tuple[int, int] = (x0, x0)

    def step(self, cost_row: npt.ArrayLike) -> int:
        """Reveal g_τ (one value per count 0..N) and return x_τ."""
        row = np.asarray(cost_row, dtype=float)
        if row.shape != (self.n + 1,):
            raise ValueError(f"cost row must have {self.n + 1} values")
        bh = self._bh
        # lower: powering up costs β (prefix minimum); upper: powering down costs β
        # (suffix minimum); relax() with one β zero, inlined
        lo = np.minimum.accumulate(self._lower - bh)
        lo += bh
        lo = np.minimum(lo, np.minimum.accumulate(self._lower[::-1])[::-1])
        lo += row
        hi = np.minimum.accumulate((self._upper + bh)[::-1])[::-1]
        hi -= bh
        hi = np.minimum(hi, np.minimum.accumulate(self._upper))
        hi += row
        lo_ties, hi_ties = _ties(lo), _ties(hi)
        xl, xu = int(lo_ties[0]), int(hi_ties[-1])
        lo -= lo[xl]  # keep values small; the argmins are unchanged
        hi -= hi[xu]
        self._lower, self._upper = lo, hi
        self.bounds = (xl, xu)
        self.x = min(max(self.x, xl), xu)
        return self.x


def lcp(costs: npt.ArrayLike, beta_on: float, beta_off: float, *, x0: int = 0) -> IntArray:
    """Run LCP over a whole cost matrix (β = β_on + β_off); the schedule."""
    g = np.asarray(costs, dtype=float)
    alg = LazyCapacityProvisioning(g.shape[1] - 1, float(beta_on) + float(beta_off), x0)
    return np.array([alg.step(row) for row in g], dtype=np.int64)


# ---------------------------------------------------------------------------------------
# Online with a forecast: receding horizon control
# ---------------------------------------------------------------------------------------

Forecast = Callable[[int, int], FloatArray]
"""forecast(t, w) -> predicted cost rows of slots t+1..t+w (fewer at the horizon's end)."""


def receding_horizon(
    costs: npt.ArrayLike,
    window: int,
    beta_on: float,
    beta_off: float,
    *,
    x0: int = 0,
    x_end: int | None = 0,
    forecast: Forecast | None = None,
) -> IntArray:
    """Receding horizon control RHC(w): at slot t, with g_t known and a forecast of the
    next w slots, solve the offline problem over slots t..t+w from x_{t−1} and keep
    its first count. The end condition ``x_end`` is imposed only when the window
    reaches the last slot. Without ``forecast`` the forecast is perfect (the true
    rows). O(w·N) per slot."""
    g = np.asarray(costs, dtype=float)
    if window < 0:
        raise ValueError("window must be >= 0")
    t_len = g.shape[0]
    x = np.empty(t_len, dtype=np.int64)
    prev = x0
    for t in range(t_len):
        w = min(window, t_len - 1 - t)
        ahead = g[t + 1 : t + 1 + w] if forecast is None else np.asarray(forecast(t, w), float)
        if ahead.shape != (w, g.shape[1]):
            raise ValueError(f"forecast({t}, {w}) must give {w} rows of {g.shape[1]} costs")
        win = np.vstack([g[t : t + 1], ahead])
        end = x_end if t + w == t_len - 1 else None
        prev = int(offline_optimum(win, beta_on, beta_off, x0=prev, x_end=end).servers[0])
        x[t] = prev
    return x


def seasonal_naive(values: npt.ArrayLike, t: int, w: int, period: int) -> FloatArray:
    """Forecast of values[t+1..t+w] made at slot t: the value one period (or a whole
    number of periods) earlier that is already known (≤ t); the last known value where
    none is."""
    v = np.asarray(values, dtype=float)
    out = np.empty(w)
    for i, s in enumerate(range(t + 1, t + 1 + w)):
        k = -(-(s - t) // period)  # smallest k with s - k·period <= t
        j = s - k * period
        out[i] = v[j] if j >= 0 else v[t]
    return out


# ---------------------------------------------------------------------------------------
# The seed's example workload
# ---------------------------------------------------------------------------------------


def seed_example_loads(kind: str, n: int = 100, t: int = 100, seed: int = 0) -> FloatArray:
    """Loads for the seed's example (T = N = 100, C = 1, λ_t drawn at random in [1, N]).
    The seed shows its two loads ("smooth" and "fluctuating", its Fig. 4a/4b) only as
    plots and does not give the generator, so these generators are ours, kept in
    [1, N − 1] (N servers then run below full load, where f is finite):

    * ``fluctuating``: i.i.d. uniform on [1, N − 1];
    * ``smooth``: a random walk from a uniform start with steps uniform on
      [−0.05·N, 0.05·N], clipped to [1, N − 1]."""
    rng = np.random.default_rng(seed)
    lo, hi = 1.0, n - 1.0
    if kind == "fluctuating":
        return rng.uniform(lo, hi, t)
    if kind == "smooth":
        steps = rng.uniform(-0.05 * n, 0.05 * n, t)
        out = np.empty(t)
        x = rng.uniform(lo, hi)
        for i in range(t):
            out[i] = x
            x = float(np.clip(x + steps[i], lo, hi))
        return out
    raise ValueError("kind must be 'smooth' or 'fluctuating'")
