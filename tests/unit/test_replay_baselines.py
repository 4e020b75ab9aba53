"""The clairvoyant baselines of §5.2-§5.4 (``offline: true``; replay/baselines.py,
replay/solar_baselines.py) on small synthetic cases, replayed by the ordinary engine:
each meets its constraint (the SLO in every tick; no grid energy; the caps' power
envelope; the work done) and does no worse than the online policies it is the baseline
of; the solar jobs' replays do no better than their proven lower bounds. Traces are
generated here."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ecovisor.contract.experiment import Experiment, site_config
from ecovisor.core.units import power_to_mj
from ecovisor.core.virtual_battery import battery_limits, initial_stored_mj
from ecovisor.core.workloads import WebService, mm1_sojourn_p95_s
from replay.engine import RunResult, make_workload
from replay.runs import job_args, jobs, load_inputs, run_all
from replay.solar_baselines import (
    Battery,
    caps_runtime_bound,
    round_works,
    run_solar,
    spark_runtime_bound,
    tick_speeds,
)

TICK = 600


def csv(tmp: Path, name: str, values: list[float], step_min: int) -> str:
    """``time,value`` from 2024-01-01T00:00Z, one value every ``step_min`` minutes."""
    rows = ["time,value"]
    for k, v in enumerate(values):
        m = k * step_min
        rows.append(f"2024-01-{1 + m // 1440:02d}T{m % 1440 // 60:02d}:{m % 60:02d}:00Z,{v}")
    (tmp / name).write_text("\n".join(rows) + "\n")
    return str(tmp / name)


def experiment(tmp: Path, site: dict[str, Any], app: dict[str, Any], hours: float,
               warmup_h: float = 0.0) -> Experiment:  # fmt: skip
    """Hourly carbon 100 g/kWh by night (18-06 UTC), 300 by day; 15-minute solar, a
    half-sine 06-18 UTC."""
    carbon = [300.0 if 6 <= h % 24 < 18 else 100.0 for h in range(6 * 24)]
    solar = [max(0.0, math.sin(math.pi * (q / 4 % 24 - 6) / 12)) for q in range(6 * 96)]
    return Experiment.model_validate({
        "name": "baselines", "site": {"tick_s": TICK, "grid_w": 10000, **site},
        "traces": {"carbon": {"type": "csv", "path": [csv(tmp, "c.csv", carbon, 60)]},
                   "solar": {"type": "csv", "path": csv(tmp, "s.csv", solar, 15)}},
        "window": {"start": "2024-01-02T00:00:00Z", "end": "2024-01-06T00:00:00Z"},
        "arrivals": {"warmup_h": warmup_h, "max_runtime_h": hours}, "runs": 1, "apps": [app],
    })  # fmt: skip


def runs(exp: Experiment) -> dict[str, RunResult]:
    out = {r.label: r for r in run_all(exp, workers=1, show_progress=False)}
    assert all(r.finished for r in out.values()), out
    return out


def test_slo_replicas_are_the_fewest_that_meet_the_slo() -> None:
    from replay.baselines import slo_replicas

    web = WebService(rates=[0.0, 50.0, 190.0, 400.0, 1e6], demand_s=0.02, slo_s=0.2)
    n = slo_replicas(web, cores=4.0, max_replicas=8)
    assert n[0] == 0 and n[-1] == 8  # no load: none; beyond 8 replicas: the most

    def meets(load: float, k: int) -> bool:
        cap = k * web.capacity_rps(4.0)
        return load <= web.max_utilisation * cap and mm1_sojourn_p95_s(0.02, load / cap) <= 0.2

    for load, k in zip(web.rates[1:-1], n[1:-1], strict=True):
        assert meets(load, k) and not meets(load, k - 1)


def test_the_web_baseline_meets_the_slo_and_emits_least(tmp_path: Path) -> None:
    """§5.2: a day of quiet, busy, quiet load; the baseline serves every request within
    the SLO in every tick and emits less than the static rate limit and the dynamic
    budget (which scale from 8 replicas, late)."""
    load = [60.0] * 24 + [400.0] * 24 + [60.0] * 24  # 10-minute ticks, 12 h
    common = ["--template", "worker", "--worker-w", "3.65", "--max-workers", "8"]
    exp = experiment(tmp_path, {}, {
        "id": "web",
        "workload": {"type": "web", "peak_rps": 400,
                     "trace": {"type": "csv", "path": csv(tmp_path, "l.csv", load, 10)}},
        "policies": {
            "static": {"policy": "static_rate_limit", "args": ["--rate-mg-s", "1", *common]},
            "dynamic": {"policy": "dynamic_budget", "args": ["--slo-ms", "200", "--rate-mg-s",
                                                             "1", "--horizon-h", "12", *common]},
            "clairvoyant": {"policy": "dynamic_budget", "offline": True,
                            "args": ["--slo-ms", "200", *common]},
        }}, hours=12)  # fmt: skip
    exp = exp.model_copy(update={"traces": exp.traces.model_copy(update={"solar": None})})
    r = runs(exp)
    c = r["clairvoyant"]
    assert c.slo_violations == 0 and c.dropped == 0
    assert c.served == pytest.approx(sum(load) * TICK)
    assert c.carbon_g < min(r["static"].carbon_g, r["dynamic"].carbon_g)
    # at the busy level the fewest SLO-meeting replicas: 190 req/s each at rho <= 0.70
    rho = 1 - 0.02 * math.log(20) / 0.2
    assert max(c.series["replicas"]) == 4 == math.ceil(400 / (190 * rho))


SPARK = {"id": "spark", "workload": {"type": "spark", "n_tasks": 24, "task_s": 1800,
                                     "max_workers": 6}}  # fmt: skip
SB = ["--worker-w", "0.9125", "--max-workers", "6", "--template", "worker"]


def test_the_spark_baseline_runs_on_solar_and_battery_alone_and_finishes_first(
    tmp_path: Path,
) -> None:
    """§5.3: no grid energy, no lost work, sooner than both policies, and no sooner than
    the fluid bound."""
    exp = experiment(tmp_path, {"solar_nameplate_w": 5, "battery_capacity_wh": 4}, {
        **SPARK, "policies": {
            "static": {"policy": "solar_battery", "args": ["--mode", "static",
                                                           "--base-workers", "2", *SB]},
            "dynamic": {"policy": "solar_battery", "args": ["--mode", "dynamic",
                                                            "--base-workers", "2", *SB]},
            "clairvoyant": {"policy": "solar_battery", "offline": True, "args": SB},
        }}, hours=72, warmup_h=12)  # fmt: skip
    r = runs(exp)
    c = r["clairvoyant"]
    assert c.carbon_g == 0.0  # not a mJ from the grid
    assert c.energy_wh == pytest.approx(24 * 1800 * 0.9125 / 3600)  # no work lost
    assert c.runtime_h < min(r["static"].runtime_h, r["dynamic"].runtime_h)
    # the fluid bound, from the battery level after the warm-up
    inp = load_inputs(exp)
    job = jobs(exp, inp, 1)[0]
    a = job_args(exp, inp, job, None)
    solar = run_solar(exp, job.t0_us // (TICK * 1_000_000), len(a["carbon"]))
    assert solar[1:] == pytest.approx(a["solar_w"][:-1])  # the run's own, a tick late
    cfg = site_config(exp, exp.apps[0])
    share = cfg.shares()["spark"]
    lim = battery_limits(share, cfg.site.shape)
    bat = Battery(lim, power_to_mj(share.discharge_limit_w, TICK))
    level = initial_stored_mj(share, lim)
    for s in solar[: job.arrival_i]:
        level, _ = bat.tick(level, power_to_mj(s, TICK), 0)
    bound = spark_runtime_bound(bat, level, solar[job.arrival_i :], TICK,
                                24 * 1800 * 0.9125, 6 * 0.9125)  # fmt: skip
    assert bound / 3600 <= c.runtime_h < bound / 3600 + 1.0


JOB = {"type": "parallel_job", "tasks": 4, "iterations": 6, "compute_s": 1800,
       "compute_jitter": 0.3, "io_s": 300, "base_cores": 4}  # fmt: skip
NODE = {"node": {"cores": 48, "idle_w": 10.8, "max_w": 54.6}}  # 0.9125 W per core


def test_the_caps_baseline_keeps_the_envelope_and_finishes_first(tmp_path: Path) -> None:
    """§5.4: the app's power never exceeds the tick's solar (or the caps' floors below
    it), it finishes before both cap policies and no sooner than the bound."""
    exp = experiment(tmp_path, {"solar_nameplate_w": 8, **NODE}, {
        "id": "job", "workload": JOB, "policies": {
            "static": {"policy": "solar_following_caps", "args": ["--mode", "static"]},
            "dynamic": {"policy": "solar_following_caps", "args": ["--mode", "dynamic"]},
            "clairvoyant": {"policy": "solar_following_caps", "offline": True},
        }}, hours=72, warmup_h=2)  # fmt: skip
    r = runs(exp)
    c = r["clairvoyant"]
    assert c.runtime_h < min(r["static"].runtime_h, r["dynamic"].runtime_h)
    power, solar = np.array(c.series["power_w"]), np.array(c.series["solar_w"])
    assert np.all(power <= np.maximum(solar, 4 * 0.5) + 1e-3)
    inp = load_inputs(exp)
    job = jobs(exp, inp, 1)[0]
    n = len(job_args(exp, inp, job, None)["carbon"])
    booked = run_solar(exp, job.t0_us // (TICK * 1_000_000), n)
    cap = [max(s, 2.0) / 3.65 for s in booked[job.arrival_i :]]
    works = round_works(make_workload(exp.apps[0], seed=exp.arrivals.seed))
    bound = caps_runtime_bound(works, 300, cap, TICK) / 3600
    assert bound <= c.runtime_h < bound + 0.25


def test_the_most_replicas_finish_the_stragglers_first_on_less_energy(tmp_path: Path) -> None:
    strag = {**JOB, "straggler_p": 0.3, "straggler_factor": 3, "max_replicas": 2}
    rep = ["--template", "worker", "--replica-w", "3.65"]
    exp = experiment(tmp_path, {"solar_nameplate_w": 8, **NODE}, {
        "id": "strag", "workload": strag, "policies": {
            "none": {"policy": "straggler_replicas", "args": [*rep, "--max-replicas", "0"]},
            "replicas": {"policy": "straggler_replicas", "args": [*rep, "--max-replicas", "2"]},
            "most": {"policy": "straggler_replicas", "offline": True,
                     "args": [*rep, "--max-replicas", "2"]},
        }}, hours=48, warmup_h=2)  # fmt: skip
    r = runs(exp)
    m = r["most"]
    assert m.runtime_h < min(r["none"].runtime_h, r["replicas"].runtime_h)
    assert m.energy_wh < r["none"].energy_wh  # a copy's work < the straggler's slow work
    works = round_works(make_workload(exp.apps[0], seed=exp.arrivals.seed), slowed=False)
    assert sum(max(w) + 300 for w in works) / 3600 <= m.runtime_h + 1e-9


def test_tick_speeds_end_a_round_together_or_level_the_largest() -> None:
    v = tick_speeds({"a": 100.0, "b": 50.0, "c": 0.0}, 600.0, 0.5)
    assert v["c"] == 0 and v["a"] == pytest.approx(2 * v["b"])  # end together, at 300 s
    assert v["a"] + v["b"] == pytest.approx(0.5)
    v = tick_speeds({"a": 900.0, "b": 700.0, "c": 100.0}, 600.0, 1.2)
    assert sum(v.values()) == pytest.approx(1.2) and v["c"] == 0.0  # the level is above c
    assert 900 - 600 * v["a"] == pytest.approx(700 - 600 * v["b"])  # a and b levelled
    assert all(0 <= x <= 1 for x in tick_speeds({"a": 5e3, "b": 5e3}, 600, 9).values())


def test_offline_refuses_what_it_cannot_plan(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        {"solar_nameplate_w": 5},
        {**SPARK, "policies": {"x": {"policy": "dynamic_budget", "offline": True}}},
        hours=24,
    )
    with pytest.raises(ValueError, match="offline"):
        run_all(exp, workers=1, show_progress=False)
