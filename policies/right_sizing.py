"""Right-sizing (seed 004; Lin, Wierman, Andrew, Thereska, ToN 2013): each slot, run as
many replicas of ``--template`` as Lazy Capacity Provisioning (LCP, 3-competitive
against the offline optimum) chooses for the app's load, trading the replicas' energy
(idle + load-proportional, ``--idle-w``/``--peak-w`` per replica) and a delay penalty
(the seed's M/GI/1-PS response time above ``--delay-target`` service times) against
the energy of powering replicas up and down (``--beta-on``/``--beta-off``, in slots of
one replica's idle energy; the seed's 6 and 6). With ``--mode carbon`` the energy a
slot draws beyond the app's solar share is weighted by the grid carbon intensity
relative to a reference (``--ref-intensity``, default the mean intensity seen so far),
so replicas are kept up when the grid is clean and shed when it is dirty.

Load: the rate of the app's ``functional_units_total`` metric (units/s), or any other
metric named by ``--load-metric`` (read as a rate when its name ends in ``_total``, else
as a level in units/s); ``--capacity`` is what one replica serves at full utilisation.
The measured load is what the running replicas served: it cannot exceed their capacity.

    python -m policies.right_sizing --app X --template T --capacity UNITS_PER_S
        [--max-replicas 8] [--min-replicas 1] [--idle-w 1] [--peak-w 2]
        [--beta-on 6] [--beta-off 6] [--mode energy|carbon] [--slot-ticks 1]
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

import numpy as np

from ecovisor.core.rightsizing import (
    FloatArray,
    LazyCapacityProvisioning,
    Schedule,
    ServerCost,
    offline_optimum,
    operating_costs,
    schedule_cost,
    weighted_costs,
)
from policies.base import Action, AppView, Observation, ScaleApp, main


@dataclass(frozen=True)
class ReplicaModel:
    """The cost of running h replicas for one slot of ``slot_s`` seconds, in Wh."""

    max_replicas: int
    capacity: float
    idle_w: float = 1.0
    peak_w: float = 2.0
    beta_on_slots: float = 6.0
    beta_off_slots: float = 6.0
    delay_weight: float = 1.0
    delay_target: float = 1.5
    min_replicas: int = 1
    slot_s: float = 1.0

    def __post_init__(self) -> None:
        if self.max_replicas < 1 or not 0 <= self.min_replicas <= self.max_replicas:
            raise ValueError("need --max-replicas >= 1 and 0 <= --min-replicas <= max")
        if self.capacity <= 0 or self.slot_s <= 0:
            raise ValueError("--capacity and the slot length must be > 0")
        if not 0 < self.idle_w <= self.peak_w:
            raise ValueError("need 0 < --idle-w <= --peak-w")
        if self.beta_on_slots < 0 or self.beta_off_slots < 0 or self.delay_weight < 0:
            raise ValueError("switching costs and --delay-weight must be >= 0")

    @property
    def idle_wh(self) -> float:
        return self.idle_w * self.slot_s / 3600

    @property
    def server(self) -> ServerCost:
        wh = self.slot_s / 3600
        return ServerCost(
            idle=self.idle_wh,
            peak=self.peak_w * wh,
            delay_weight=self.delay_weight * self.idle_wh,
            delay_target=self.delay_target,
            capacity=self.capacity,
        )

    @property
    def beta_on(self) -> float:
        return self.beta_on_slots * self.idle_wh

    @property
    def beta_off(self) -> float:
        return self.beta_off_slots * self.idle_wh

    def max_load(self) -> float:
        """Loads are clamped just under what every replica together serves."""
        return self.max_replicas * self.capacity * (1 - 1e-6)

    def costs(self, loads: FloatArray, weights: FloatArray, free_wh: FloatArray) -> FloatArray:
        """Operating cost rows: weight · (energy beyond the free solar energy) + penalty."""
        lam = np.minimum(np.asarray(loads, dtype=float), self.max_load())
        kw = {"capacity": self.capacity, "min_servers": self.min_replicas}
        s = self.server
        energy = operating_costs(s.energy, lam, self.max_replicas, **kw)
        penalty = operating_costs(s.penalty, lam, self.max_replicas, **kw)
        return weighted_costs(energy, penalty, weights, free_wh)


@dataclass
class _Slot:
    ticks: int = 0
    load: float = 0.0
    intensity: float = 0.0
    free_wh: float = 0.0


@dataclass
class History:
    """What each decided slot saw (for the offline baseline and replays)."""

    loads: list[float] = field(default_factory=list)
    intensities: list[float] = field(default_factory=list)
    weights: list[float] = field(default_factory=list)
    free_wh: list[float] = field(default_factory=list)
    replicas: list[int] = field(default_factory=list)


class RightSizing:
    name = "right_sizing"
    needs_metrics = True  # the app's metrics each tick (Policy)

    def __init__(
        self,
        template: str,
        capacity: float,
        max_replicas: int = 8,
        min_replicas: int = 1,
        idle_w: float = 1.0,
        peak_w: float = 2.0,
        beta_on: float = 6.0,
        beta_off: float = 6.0,
        delay_weight: float = 1.0,
        delay_target: float = 1.5,
        mode: str = "energy",
        ref_intensity: float | None = None,
        use_solar: bool = True,
        load_metric: str = "functional_units_total",
        slot_ticks: int = 1,
    ) -> None:
        if mode not in ("energy", "carbon"):
            raise ValueError("--mode must be energy or carbon")
        if slot_ticks < 1 or (ref_intensity is not None and ref_intensity <= 0):
            raise ValueError("need --slot-ticks >= 1 and --ref-intensity > 0")
        self.template, self.mode, self.ref_intensity = template, mode, ref_intensity
        self.use_solar, self.load_metric, self.slot_ticks = use_solar, load_metric, slot_ticks
        self._params = dict(
            max_replicas=max_replicas,
            capacity=capacity,
            idle_w=idle_w,
            peak_w=peak_w,
            beta_on_slots=beta_on,
            beta_off_slots=beta_off,
            delay_weight=delay_weight,
            delay_target=delay_target,
            min_replicas=min_replicas,
        )
        self.model = ReplicaModel(**self._params)  # validated now; slot_s set in setup
        self.app = AppView(app="", containers=())
        self.lcp = LazyCapacityProvisioning(max_replicas, self.model.beta_on + self.model.beta_off)
        self.history = History()
        self.replicas: int | None = None
        self._slot = _Slot()
        self._last_counter: float | None = None
        self._intensity_sum = 0.0
        self._intensity_n = 0

    def setup(self, app: AppView) -> list[Action]:
        if self.template not in app.templates:
            raise ValueError(f"app {app.app!r} has no template {self.template!r}")
        self.app = app
        self.model = ReplicaModel(**self._params, slot_s=app.tick_s * self.slot_ticks)
        self.lcp = LazyCapacityProvisioning(
            self.model.max_replicas, self.model.beta_on + self.model.beta_off
        )
        return []

    # --- observation -> slot inputs ------------------------------------------------------
    def _load(self, obs: Observation) -> float | None:
        """Units/s in the tick, or None while unknown (no metric, first counter sample,
        counter reset)."""
        v = obs.metrics.get(self.load_metric)
        if v is None:
            return None
        if not self.load_metric.endswith("_total"):
            return max(float(v), 0.0)
        last, self._last_counter = self._last_counter, float(v)
        if last is None or v < last:
            return None
        return (float(v) - last) / obs.data.tick_s

    def _free_wh(self, obs: Observation) -> float:
        """The app's next-tick solar not used by its other containers, over one tick."""
        if not self.use_solar:
            return 0.0
        d = obs.data
        prefix = f"{self.template}-"
        replicas_w = sum(
            c.power_w
            for name, c in d.containers.items()
            if name.startswith(prefix) and name[len(prefix) :].isdigit()
        )
        others_w = max(d.app_power_w - replicas_w, 0.0)
        return max(d.next_solar_w - others_w, 0.0) * d.tick_s / 3600

    def _weight(self, intensity: float) -> float:
        if self.mode == "energy":
            return 1.0
        self._intensity_sum += intensity
        self._intensity_n += 1
        ref = self.ref_intensity or self._intensity_sum / self._intensity_n
        return intensity / ref if ref > 0 else 1.0

    # --- decision ---------------------------------------------------------------------------
    def decide(self, obs: Observation) -> list[Action]:
        load = self._load(obs)
        if load is None:
            return []
        s = self._slot
        s.ticks += 1
        s.load += load
        s.intensity += obs.data.grid_carbon_g_per_kwh
        s.free_wh += self._free_wh(obs)
        if s.ticks < self.slot_ticks:
            return [] if self.replicas is None else [ScaleApp(self.template, self.replicas)]
        self._slot = _Slot()
        load = min(s.load / s.ticks, self.model.max_load())
        intensity = s.intensity / s.ticks
        weight = self._weight(intensity)
        free = s.free_wh if self.mode == "carbon" else 0.0
        row = self.model.costs(np.array([load]), np.array([weight]), np.array([free]))[0]
        self.replicas = self.lcp.step(row)
        h = self.history
        h.loads.append(load)
        h.intensities.append(intensity)
        h.weights.append(weight)
        h.free_wh.append(free)
        h.replicas.append(self.replicas)
        return [ScaleApp(self.template, self.replicas)]

    # --- baselines over what was seen -------------------------------------------------------
    def costs_so_far(self) -> FloatArray:
        h = self.history
        return self.model.costs(np.array(h.loads), np.array(h.weights), np.array(h.free_wh))

    def offline_baseline(self) -> Schedule:
        """The offline optimum for the slots decided so far (same costs, from 0 replicas,
        end free): what LCP's decisions are compared against (≤ 3 × this)."""
        m = self.model
        return offline_optimum(self.costs_so_far(), m.beta_on, m.beta_off, x0=0, x_end=None)

    def online_cost(self) -> Schedule:
        """The cost of the decisions taken, on the same costs."""
        m = self.model
        return schedule_cost(
            self.costs_so_far(), self.history.replicas, m.beta_on, m.beta_off, x0=0, x_end=None
        )


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--template", required=True, help="replicas are started from this template")
    p.add_argument(
        "--capacity", type=float, required=True, help="load units/s one replica serves at u = 1"
    )
    p.add_argument("--max-replicas", type=int, default=8, help="N")
    p.add_argument("--min-replicas", type=int, default=1)
    p.add_argument("--idle-w", type=float, default=1.0, help="one replica's power at u = 0, W")
    p.add_argument("--peak-w", type=float, default=2.0, help="one replica's power at u = 1, W")
    p.add_argument("--beta-on", type=float, default=6.0, help="slots of idle energy per power-up")
    p.add_argument("--beta-off", type=float, default=6.0, help="... per power-down")
    p.add_argument("--delay-weight", type=float, default=1.0, help="penalty, in idle energies")
    p.add_argument("--delay-target", type=float, default=1.5, help="response time / service time")
    p.add_argument("--mode", choices=("energy", "carbon"), default="energy")
    p.add_argument("--ref-intensity", type=float, help="gCO2eq/kWh (carbon mode; default mean)")
    p.add_argument("--no-solar", action="store_true", help="carbon mode: ignore the solar share")
    p.add_argument("--load-metric", default="functional_units_total")
    p.add_argument("--slot-ticks", type=int, default=1, help="ticks per decision slot")


def build(a: argparse.Namespace) -> RightSizing:
    return RightSizing(
        template=a.template,
        capacity=a.capacity,
        max_replicas=a.max_replicas,
        min_replicas=a.min_replicas,
        idle_w=a.idle_w,
        peak_w=a.peak_w,
        beta_on=a.beta_on,
        beta_off=a.beta_off,
        delay_weight=a.delay_weight,
        delay_target=a.delay_target,
        mode=a.mode,
        ref_intensity=a.ref_intensity,
        use_solar=not a.no_solar,
        load_metric=a.load_metric,
        slot_ticks=a.slot_ticks,
    )


if __name__ == "__main__":
    main("right_sizing", build, add_args)
