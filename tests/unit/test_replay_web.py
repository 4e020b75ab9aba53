"""The web service in the replay harness: app metrics reach the policy's
Observation.metrics through the ledger (as live), right_sizing scales replicas with the
actuators' k -> k+1 lag, right-sizing uses less energy than always-on on a load with
idle periods, and the offline optimum (a replay baseline) uses no more than the online
policy. Synthetic traces, generated here (no optional extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.experiment import Experiment, load_experiment
from replay.engine import RunResult
from replay.runs import load_inputs, run_all

TICK_S = 600
# the experiment's replica model (docs/evaluation.md, § Workload models): 4 cores, 0.2
# idle cores, 20 ms per request -> 190 req/s per replica; node 0.9125 W per busy core
# fmt: off
RS = ["--template", "worker", "--capacity", "190", "--max-replicas", "8", "--idle-w", "0.1825",
      "--peak-w", "3.65", "--beta-on", "0.25", "--beta-off", "0", "--delay-target", "3.0"]
# fmt: on


def carbon_csv(tmp: Path) -> Path:
    """Hourly, 2024-01-01..08: 100 g/kWh 00-12 UTC, 400 g/kWh 12-24 UTC."""
    rows = ["time,value"]
    for h in range(8 * 24):
        rows.append(f"2024-01-{1 + h // 24:02d}T{h % 24:02d}:00:00Z,{100 if h % 24 < 12 else 400}")
    p = tmp / "carbon.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def load_csv(tmp: Path, values: list[float]) -> Path:
    """One value per 10-minute tick (time,value)."""
    rows = ["time,value"]
    for k, v in enumerate(values):
        rows.append(f"2024-01-{1 + k // 144:02d}T{(k % 144) // 6:02d}:{(k % 6) * 10:02d}:00Z,{v}")
    p = tmp / "load.csv"
    p.write_text("\n".join(rows) + "\n")
    return p


def experiment(tmp: Path, values: list[float], hours: float, peak: float, **pol: Any) -> Experiment:
    return Experiment.model_validate(
        {
            "name": "web",
            "site": {"tick_s": TICK_S},
            "traces": {"carbon": {"type": "csv", "path": [str(carbon_csv(tmp))]}},
            "window": {"start": "2024-01-02T00:00:00Z", "end": "2024-01-05T00:00:00Z"},
            "arrivals": {"warmup_h": 0, "max_runtime_h": hours},
            "runs": 1,
            "apps": [
                {
                    "id": "web",
                    "workload": {
                        "type": "web",
                        "trace": {"type": "csv", "path": str(load_csv(tmp, values))},
                        "peak_rps": peak,
                    },
                    "policies": pol,
                }
            ],
        }
    )


def runs(exp: Experiment) -> dict[str, RunResult]:
    return {r.label: r for r in run_all(exp, workers=1, show_progress=False)}


def test_right_sizing_follows_a_scripted_load_with_the_k_plus_1_lag(tmp_path: Path) -> None:
    # 6 idle ticks, 12 at 600 req/s (needs 600 / (190 * 2/3) -> 5 replicas), 12 idle
    load = [0.0] * 6 + [600.0] * 12 + [0.0] * 12
    exp = experiment(
        tmp_path, load, hours=len(load) * TICK_S / 3600, peak=600,
        rs={"policy": "right_sizing", "args": RS},
    )  # fmt: skip
    r = runs(exp)["rs"]
    rep = r.series["replicas"]
    assert r.finished and r.ticks == len(load) and r.slo_violations is not None
    # the policy's load is the served rate of functional_units_total (app metrics via the
    # ledger): no metric before tick 0's sample, so its first decision is on tick 1 and
    # the 8 replicas of the start run through ticks 0 and 1
    assert rep[:2] == [8, 8] and rep[2] == 1  # idle: scaled down to --min-replicas
    # the load arrives in tick 6: the replicas of tick 6 were decided on tick 5 (idle)
    assert rep[5] == rep[6] == 1
    # it scales up from tick 7 on (served load is capped by what runs, so it climbs)
    assert rep[7] > rep[6]
    assert max(rep[6:18]) >= 5 and rep[17] >= 5
    # the load leaves after tick 17: tick 18 still runs tick 17's decision, then down
    assert rep[18] == rep[17] and rep[19] < rep[18] and rep[-1] == 1
    # while under-provisioned it drops requests and counts SLO violations
    assert r.dropped > 0 and r.slo_violations >= 1


def test_the_policy_sees_the_app_metrics_of_each_tick(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Observation.metrics comes through the ledger and the runner's get_state path:
    the cumulative requests served up to the tick, and that tick's mean latency."""
    from policies.right_sizing import RightSizing

    seen: list[dict[str, float]] = []
    orig = RightSizing.decide

    def record(self: RightSizing, obs: Any) -> Any:
        seen.append(dict(obs.metrics))
        return orig(self, obs)

    monkeypatch.setattr(RightSizing, "decide", record)
    load = [100.0, 200.0, 300.0, 0.0]
    exp = experiment(tmp_path, load, hours=4 * TICK_S / 3600, peak=300,
                     rs={"policy": "right_sizing", "args": RS})  # fmt: skip
    r = runs(exp)["rs"]
    assert len(seen) == 4
    served = [sum(load[: k + 1]) * TICK_S for k in range(4)]
    assert [m["functional_units_total"] for m in seen] == pytest.approx(served)
    # tick 0: 8 replicas x 190 req/s, rho = 100/1520: mean response D / (1 - rho)
    assert seen[0]["latency_ms"] == pytest.approx(20 / (1 - 100 / 1520))
    assert r.served == pytest.approx(served[-1])


def test_right_sizing_saves_energy_over_always_on_and_offline_is_a_lower_bound(
    tmp_path: Path,
) -> None:
    # two "days" of 72 ticks: idle 24 ticks, a ramp to the peak and down, idle again
    day = [0.0] * 24 + [40.0 * k for k in range(1, 13)] + [40.0 * k for k in range(12, 0, -1)]
    day += [0.0] * 24
    load = day * 2
    exp = experiment(
        tmp_path, load, hours=len(load) * TICK_S / 3600, peak=480,
        on={"policy": "carbon_agnostic"},
        rs={"policy": "right_sizing", "args": RS},
        rs_carbon={"policy": "right_sizing", "args": [*RS, "--mode", "carbon"]},
        offline={"policy": "right_sizing", "args": RS, "offline": True},
    )  # fmt: skip
    rs = runs(exp)
    on, online, offline = rs["on"], rs["rs"], rs["offline"]
    # the same requests were offered to every policy
    for r in rs.values():
        assert r.served + r.dropped == pytest.approx(on.served + on.dropped)
    assert on.dropped == 0 and on.series["replicas"] == [8] * len(load)
    # always-on pays 8 replicas' idle cores through the idle periods
    assert online.energy_wh < 0.8 * on.energy_wh
    assert rs["rs_carbon"].energy_wh < 0.8 * on.energy_wh
    # the offline optimum (sees the whole trace) uses no more energy than LCP online,
    # with no more SLO violations
    assert offline.energy_wh <= online.energy_wh
    assert (offline.slo_violations or 0) <= (online.slo_violations or 0)
    # the schedule was in force tick by tick: it is a right-sizing, not always-on
    assert min(offline.series["replicas"]) == 1 and max(offline.series["replicas"]) >= 3


def test_web_experiment_schema(tmp_path: Path) -> None:
    exp = experiment(tmp_path, [1.0] * 10, hours=1, peak=10, rs={"policy": "right_sizing",
                     "args": RS, "offline": True})  # fmt: skip
    inp = load_inputs(exp)
    assert list(inp.loads) == [0] and len(inp.loads[0]) == 6
    assert inp.loads[0] == pytest.approx([10.0] * 6)  # scaled to the peak
    # a trace shorter than a run is refused
    short = experiment(tmp_path, [1.0] * 3, hours=1, peak=10, on={"policy": "carbon_agnostic"})
    with pytest.raises(ValueError, match="load trace covers"):
        load_inputs(short)
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\ntraces: {carbon: {type: csv, path: [c.csv]}}\n"
        "window: {start: 2024-01-01T00:00:00Z, end: 2024-02-01T00:00:00Z}\n"
        "apps: [{id: w, workload: {type: web, peak_rps: 5, trace: {type: csv}}, "
        "policies: {a: {policy: carbon_agnostic}}}]\n"
    )
    with pytest.raises(ConfigError, match="needs 'path'"):
        load_experiment(bad)


def test_a_policy_without_an_offline_baseline_is_refused(tmp_path: Path) -> None:
    exp = experiment(tmp_path, [1.0] * 10, hours=1, peak=10,
                     x={"policy": "carbon_agnostic", "offline": True})  # fmt: skip
    with pytest.raises(ValueError, match="offline"):
        run_all(exp, workers=1, show_progress=False)


ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_web_app_and_the_shipped_experiment_are_valid() -> None:
    import re

    import yaml

    from replay.engine import build_policy

    doc = (ROOT / "docs" / "evaluation.md").read_text()
    [main] = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "apps:" in b]
    [web] = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "type: web" in b]
    d = yaml.safe_load(main)
    d["apps"] += yaml.safe_load(web)
    exp = Experiment.model_validate(d)
    shipped = load_experiment(ROOT / "experiments" / "right-sizing-web.yaml")
    what_if = load_experiment(ROOT / "experiments" / "right-sizing-web-idle-half.yaml")
    assert [a.id for a in shipped.apps] == ["web-azure", "web-google"]
    for e in (exp, shipped, what_if):
        for app in e.apps:
            for spec in app.policies.values():
                build_policy(spec)  # every policy line builds with its own parser
    labels = list(shipped.apps[0].policies)
    assert shipped.apps[0].policies["offline-optimum-energy"].offline and len(labels) == 5


def test_dynamic_budget_emits_less_than_the_static_rate_limit(tmp_path: Path) -> None:
    """§5.2's direction: under a load with quiet periods, the dynamic budget (scaling to
    its p95 SLO) runs fewer replicas than the static rate's allowance and emits less
    carbon; both hold the SLO once scaled (the paper: dynamic always met)."""
    day = [60.0] * 24 + [400.0] * 24 + [60.0] * 24  # quiet, busy, quiet (10-min ticks)
    common = ["--template", "worker", "--worker-w", "3.65", "--max-workers", "8"]
    exp = experiment(
        tmp_path, day * 2, hours=len(day) * 2 * TICK_S / 3600, peak=400,
        static={"policy": "static_rate_limit", "args": ["--rate-mg-s", "1", *common]},
        dynamic={"policy": "dynamic_budget",
                 "args": ["--slo-ms", "200", "--rate-mg-s", "1", "--horizon-h", "24", *common]},
    )  # fmt: skip
    r = runs(exp)
    assert r["dynamic"].carbon_g < r["static"].carbon_g
    assert max(r["dynamic"].series["replicas"][6:]) < max(r["static"].series["replicas"])
    assert r["dynamic"].slo_violations <= 3  # the first ticks, while it scales
