"""policies/right_sizing.py: the pure decision class on scripted ticks."""

from __future__ import annotations

import argparse
import math
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from ecovisor.contract.notifications import ContainerTickData, TickData
from ecovisor.core.rightsizing import lcp
from policies.base import AppView, Observation, ScaleApp
from policies.right_sizing import ReplicaModel, RightSizing, add_args, build

T0 = datetime(2024, 6, 1, tzinfo=UTC)
APP = AppView(app="web", containers=("c1",), templates=("w",), tick_s=60)


def obs(
    k: int,
    units: float | None,
    carbon: float = 200.0,
    next_solar: float = 0.0,
    power: dict[str, float] | None = None,
    metric: str = "functional_units_total",
) -> Observation:
    power = power if power is not None else {"c1": 0.0}
    data = TickData(
        tick_s=60.0,
        next_solar_w=next_solar,
        solar_w=next_solar,
        grid_w=0.0,
        grid_carbon_g_per_kwh=carbon,
        battery_charge_level_wh=0.0,
        battery_discharge_rate_w=0.0,
        battery_charge_rate_setting_w=0.0,
        battery_max_discharge_setting_w=0.0,
        app_power_w=sum(power.values()),
        unserved_w=0.0,
        carbon_g=0.0,
        containers={c: ContainerTickData(power_w=p) for c, p in power.items()},
    )
    metrics = {} if units is None else {metric: units}
    return Observation(time=T0 + timedelta(minutes=k), data=data, tick=k, metrics=metrics)


def run(policy: RightSizing, rates: list[float], **kw) -> list[list]:
    """Feed a counter growing at the given rates (units/s), one tick each."""
    out = [policy.decide(obs(0, 0.0, **kw))]  # baseline sample of the counter
    total = 0.0
    for k, r in enumerate(rates, start=1):
        total += r * 60
        out.append(policy.decide(obs(k, total, **kw)))
    return out


def replicas(actions: list[list]) -> list[int]:
    return [a[0].replicas for a in actions if a]


def test_setup_checks_the_template() -> None:
    p = RightSizing("w", capacity=1.0)
    assert p.setup(APP) == []
    with pytest.raises(ValueError, match="no template"):
        RightSizing("nope", capacity=1.0).setup(APP)
    with pytest.raises(ValueError):
        RightSizing("w", capacity=0.0)
    with pytest.raises(ValueError):
        RightSizing("w", capacity=1.0, mode="cheap")


def test_scripted_load_scales_lazily_both_ways() -> None:
    p = RightSizing("w", capacity=1.0, max_replicas=8)
    p.setup(APP)
    rates = [3.0] * 4 + [0.2] * 30
    acts = run(p, rates)
    assert acts[0] == []  # the first counter sample only sets the baseline
    got = replicas(acts)
    assert all(a == [ScaleApp("w", x)] for a, x in zip(acts[1:], got, strict=True))
    # load 3/s: at least 3 replicas (capacity), at most 6 (the cheapest count without
    # switching costs: half load per replica); LCP climbs lazily from 0 towards it
    high = got[:4]
    assert all(3 <= x <= 6 for x in high) and high == sorted(high)
    # load 0.2/s: the cheapest count is 1, but LCP keeps the extra replicas until their
    # idle energy has cost about a power cycle (β_on + β_off = 12 slots of idle)
    assert got[4] == got[3]
    first_down = next(i for i, x in enumerate(got) if i > 4 and x < got[3])
    assert 4 + 5 <= first_down <= 4 + 13
    assert got[-1] == 1
    # exactly LCP on the cost rows of the loads it measured
    m = p.model
    costs = m.costs(np.array(rates), np.ones(len(rates)), np.zeros(len(rates)))
    assert got == lcp(costs, m.beta_on, m.beta_off).tolist()
    assert p.history.loads == pytest.approx(rates)


def test_offline_baseline_bounds_the_online_cost() -> None:
    p = RightSizing("w", capacity=1.0, max_replicas=8)
    p.setup(APP)
    run(p, [3.0, 0.1, 3.0, 0.1, 5.0, 5.0, 0.5, 0.5, 2.0, 0.0, 0.0, 7.0])
    opt, online = p.offline_baseline(), p.online_cost()
    assert opt.cost <= online.cost <= 3 * opt.cost
    assert online.servers.tolist() == p.history.replicas


def test_slot_ticks_average_the_load_and_decide_once_per_slot() -> None:
    p = RightSizing("w", capacity=1.0, max_replicas=8, slot_ticks=3)
    p.setup(APP)
    acts = run(p, [1.0, 2.0, 3.0, 3.0, 3.0, 3.0])
    assert acts[1] == acts[2] == []  # nothing decided yet
    assert p.history.loads == pytest.approx([2.0, 3.0])  # slot means
    m = p.model
    want = lcp(m.costs(np.array([2.0, 3.0]), np.ones(2), np.zeros(2)), m.beta_on, m.beta_off)
    assert acts[3] == [ScaleApp("w", int(want[0]))]
    assert acts[4] == acts[5] == acts[3]  # repeated until the next slot
    assert acts[6] == [ScaleApp("w", int(want[1]))]
    assert p.model.slot_s == 180


def test_unknown_or_reset_load_decides_nothing() -> None:
    p = RightSizing("w", capacity=1.0)
    p.setup(APP)
    assert p.decide(obs(0, None)) == []
    assert p.decide(obs(1, 100.0)) == []
    assert p.decide(obs(2, 10.0)) == []  # counter went back: a restart, new baseline
    assert p.decide(obs(3, 70.0)) == [ScaleApp("w", 2)]  # 1/s


def test_level_metric_and_clamp_to_capacity() -> None:
    p = RightSizing("w", capacity=2.0, max_replicas=4, load_metric="arrivals_per_s")
    p.setup(APP)
    acts = [p.decide(obs(k, 50.0, metric="arrivals_per_s")) for k in range(2)]
    assert acts[0] == [ScaleApp("w", 4)]  # 50/s > 4 × 2: clamped, all replicas
    assert p.history.loads[0] < 8.0


def test_carbon_mode_runs_more_replicas_when_the_grid_is_clean() -> None:
    # no switching cost: each slot's own optimum, h = λ(1 + 1/√w) for this cost shape
    kw = dict(capacity=1.0, max_replicas=16, beta_on=0.0, beta_off=0.0, ref_intensity=200.0)
    p = RightSizing("w", mode="carbon", **kw)
    p.setup(APP)
    clean = replicas(run(p, [2.0, 2.0], carbon=50.0))  # w = 0.25: 2·(1 + 2) = 6
    dirty = replicas(run(p, [2.0, 2.0], carbon=800.0))  # w = 4: 2·(1 + 0.5) = 3
    assert clean[-1] == 6 and dirty[-1] == 3
    e = RightSizing("w", mode="energy", **kw)
    e.setup(APP)
    assert set(replicas(run(e, [2.0, 2.0], carbon=50.0) + run(e, [2.0], carbon=800.0))) == {4}


def test_carbon_mode_counts_solar_left_after_the_apps_other_containers() -> None:
    kw = dict(capacity=1.0, max_replicas=16, beta_on=0.0, beta_off=0.0, ref_intensity=200.0)
    # 30 W of solar, the app's other container draws 2 W: 28 W left for replicas
    p = RightSizing("w", mode="carbon", **kw)
    p.setup(APP)
    sunny = replicas(run(p, [2.0], next_solar=30.0, power={"c1": 2.0, "w-1": 1.5}))
    assert p.history.free_wh == [pytest.approx(28.0 * 60 / 3600)]
    # solar covers every count's energy: only the delay penalty is left, zero from
    # 3λ = 6 replicas up; the smallest such count
    assert sunny == [6]
    q = RightSizing("w", mode="carbon", use_solar=False, **kw)
    q.setup(APP)
    assert replicas(run(q, [2.0], next_solar=30.0, power={"c1": 2.0})) == [4]
    assert q.history.free_wh == [0.0]
    # the other container eats the solar: nothing free
    r = RightSizing("w", mode="carbon", **kw)
    r.setup(APP)
    run(r, [2.0], next_solar=2.0, power={"c1": 2.0})
    assert r.history.free_wh == [0.0]


def test_carbon_reference_defaults_to_the_mean_seen() -> None:
    p = RightSizing("w", capacity=1.0, mode="carbon")
    p.setup(APP)
    run(p, [1.0], carbon=100.0)
    run(p, [1.0], carbon=300.0)
    assert p.history.weights == pytest.approx([1.0, 1.5])  # 300 / mean(100, 300)


def test_command_line_builds_the_policy() -> None:
    ap = argparse.ArgumentParser()
    add_args(ap)
    a = ap.parse_args(
        ["--template", "w", "--capacity", "5", "--max-replicas", "3", "--mode", "carbon"]
    )
    p = build(a)
    assert (p.template, p.mode, p.model.max_replicas, p.model.capacity) == ("w", "carbon", 3, 5)
    with pytest.raises(SystemExit):
        ap.parse_args(["--template", "w"])  # --capacity is required


def test_replica_model_units() -> None:
    m = ReplicaModel(max_replicas=2, capacity=1.0, idle_w=1.0, peak_w=3.0, slot_s=3600)
    assert (m.idle_wh, m.beta_on, m.beta_off) == (1.0, 6.0, 6.0)
    row = m.costs(np.array([1.0]), np.array([1.0]), np.array([0.0]))[0]
    assert math.isinf(row[0])  # min 1 replica
    # 1 replica at u = 0.99...: huge delay; 2 replicas at 0.5: 2·1 + 2·0.5 + 2·0.5·0.5
    assert row[2] == pytest.approx(2 * 1.0 + 2.0 * 1.0 + 2 * 0.5 * 0.5)


# --- live: the command line against the real API (ledger and Kafka as test doubles) -----


def test_runs_live_against_the_api() -> None:
    import asyncio
    import subprocess
    import sys
    import time
    from pathlib import Path

    from ecovisor.api.app import create_app
    from ecovisor.contract.config_file import parse_config
    from ecovisor.contract.notifications import Notification
    from tests.fakes.api import InMemoryBus, InMemoryStateSource, serve
    from tests.fakes.sites import TWO_APPS

    class LoopBus(InMemoryBus):
        loop: asyncio.AbstractEventLoop | None = None

        async def start(self) -> None:
            self.loop = asyncio.get_running_loop()

        def inject(self, n: Notification) -> None:
            assert self.loop is not None
            self.loop.call_soon_threadsafe(self.hub.dispatch, n)

    def tick(k: int) -> TickData:
        return obs(k, 0.0, power={"web-1": 1.0}).data.model_copy(update={"tick_s": 1.0})

    state, bus = InMemoryStateSource(), LoopBus()
    state.set_tick("web", 0, T0, tick(0), functional_units_total=0.0)
    root = Path(__file__).resolve().parents[2]
    with serve(create_app(parse_config(TWO_APPS), state, bus), start_timeout=10) as url:
        proc = subprocess.Popen(
            [sys.executable, "-m", "policies.right_sizing", "--app", "web", "--api", url,
             "--token", "web-token-123456", "--template", "web-worker", "--capacity", "1",
             "--max-replicas", "4", "--log-level", "WARNING"],
            cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 30
            while bus.hub.subscribers("web") == 0:
                assert proc.poll() is None, proc.communicate()[1]
                assert time.monotonic() < deadline, "the policy did not subscribe"
                time.sleep(0.05)
            # 1.5 units/s: each tick the counter grows by 1.5 (tick_s = 1)
            for k in range(1, 40):
                state.set_tick("web", k, T0, tick(k), functional_units_total=1.5 * k)
                bus.inject(
                    Notification(site="s1", time=T0, app="web", type="tick", tick=k,
                                 data=tick(k).model_dump())
                )  # fmt: skip
                time.sleep(0.05)
                if any(c.type == "scale_app" for c in bus.published):
                    break
            scale = [c for c in bus.published if c.type == "scale_app"]
            assert scale, "no scale_app command"
            assert scale[0].template == "web-worker"  # type: ignore[attr-defined]
            assert 2 <= scale[0].replicas <= 3  # type: ignore[attr-defined]  # ≥ λ/C, ≤ 2λ
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=10)
        assert proc.returncode == 0, err
