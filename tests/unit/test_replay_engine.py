"""The core replay engine (replay/): accounting is the ledger's (totals = sum of the
entries, energy = the workload's busy cores x the node's power per core), commands of
tick k act from k+1, and on the CAISO trace suspend-resume emits less carbon than the
carbon-agnostic baseline and runs longer (the direction of §5.1, not its numbers)."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.experiment import Experiment, load_experiment
from replay import traces
from replay.engine import build_policy
from replay.runs import load_inputs, run_all

CAISO = (Path(__file__).resolve().parents[3] / "shared" / "data" / "caiso-emaps-2021-2023"
         / "US-CAL-CISO_2021_hourly.csv")  # beside the clone, as experiments/ expect
HIGH, LOW = 400.0, 100.0


def square_wave(tmp: Path) -> Path:
    """Hourly intensity, 2024-01-01..01-08: 12 h LOW (00-12 UTC) then 12 h HIGH."""
    p = tmp / "carbon.csv"
    rows = ["time,value"]
    for h in range(8 * 24):
        rows.append(f"2024-01-{1 + h // 24:02d}T{h % 24:02d}:00:00Z,{LOW if h % 24 < 12 else HIGH}")
    p.write_text("\n".join(rows) + "\n")
    return p


def experiment(tmp: Path, **over: Any) -> Experiment:
    d: dict[str, Any] = {
        "name": "t",
        "site": {"tick_s": 600},
        "traces": {"carbon": {"type": "csv", "path": [str(square_wave(tmp))]}},
        # warm-up + max runtime fill the window: the job arrives at 2024-01-03 12:00,
        # the start of a HIGH half-day
        "window": {"start": "2024-01-02T12:00:00Z", "end": "2024-01-05T12:00:00Z"},
        "arrivals": {"warmup_h": 24, "max_runtime_h": 48},
        "runs": 1,
        "apps": [
            {
                "id": "ml",
                "workload": {"type": "ml_training", "work_h": 3, "base_cores": 4},
                "policies": {
                    "agnostic": {"policy": "carbon_agnostic"},
                    "sr": {"policy": "suspend_resume", "args": ["--threshold", "200"]},
                    "ws2": {
                        "policy": "wait_and_scale",
                        "args": ["--threshold", "200", "--factor", "2", "--base-cpus", "4"],
                    },
                },
            }
        ],
    }
    d.update(over)
    return Experiment.model_validate(d)


def test_totals_are_the_sum_of_the_ledger_entries_and_energy_is_conserved(tmp_path: Path) -> None:
    exp = experiment(tmp_path)
    rs = {r.label: r for r in run_all(exp, workers=1, out=tmp_path / "o", show_progress=False)}
    per_core_w = (40.0 - 10.8) / 32  # the default node: linear model, 32 cores
    for r in rs.values():
        assert r.finished
        # the run's totals (the ledger's cumulative) are the sum of its entries
        assert r.entries_sum["energy_mj"] / 3.6e6 == pytest.approx(r.energy_wh, abs=1e-9)
        assert r.entries_sum["carbon_ug"] / 1e6 == pytest.approx(r.carbon_g, abs=1e-9)
        with (tmp_path / "o" / "ledgers" / "ml" / r.label / "run-00.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert sum(float(x["carbon_g"]) for x in rows) == pytest.approx(r.carbon_g, abs=1e-5)
        assert float(rows[-1]["cum_energy_j"]) / 3600 == pytest.approx(r.energy_wh, abs=1e-5)
        # no solar, no battery: everything came from the grid at the tick's intensity
        assert sum(float(x["grid_j"]) for x in rows) / 3600 == pytest.approx(r.energy_wh, 1e-6)
    # energy: the work at base cores is 3 h x 4 cores; suspending does not change it
    assert rs["agnostic"].energy_wh == pytest.approx(3 * 4 * per_core_w, rel=1e-6)
    assert rs["sr"].energy_wh == pytest.approx(rs["agnostic"].energy_wh, rel=1e-6)
    # carbon at the trace's values: agnostic ran 3 h (18 ticks) at HIGH; suspend-resume
    # ran the arrival's tick at HIGH (it was resumed in the LOW half-day before; its
    # suspend, decided on that tick, applies from the next) and 17 ticks at LOW. The
    # ledger books whole µg per tick.
    e = rs["sr"].energy_wh / 18
    assert rs["agnostic"].carbon_g == pytest.approx(18 * e * HIGH / 1000, abs=1e-4)
    assert rs["sr"].carbon_g == pytest.approx(e * (HIGH + 17 * LOW) / 1000, abs=1e-4)
    assert rs["agnostic"].runtime_h == pytest.approx(3.0)


def test_a_command_decided_on_tick_k_applies_from_tick_k_plus_1(tmp_path: Path) -> None:
    exp = experiment(tmp_path)
    (r,) = [x for x in run_all(exp, workers=1, show_progress=False) if x.label == "sr"]
    inten, cores = r.series["intensity"], r.series["cores"]
    first_high = next(i for i in range(1, len(inten)) if inten[i] > 200 >= inten[i - 1])
    assert cores[first_high] == 4.0  # still running in the first HIGH tick ...
    assert cores[first_high + 1] == 0.0  # ... suspended from the next
    first_low = next(i for i in range(first_high, len(inten)) if inten[i] <= 200)
    assert cores[first_low] == 0.0 and cores[first_low + 1] == 4.0


def test_wait_and_scale_catches_up_on_more_cores(tmp_path: Path) -> None:
    rs = {r.label: r for r in run_all(experiment(tmp_path), workers=1, show_progress=False)}
    assert max(rs["ws2"].series["cores"]) == 8.0
    assert rs["ws2"].runtime_h < rs["sr"].runtime_h
    assert rs["ws2"].energy_wh > rs["sr"].energy_wh  # sub-linear speed-up costs energy


@pytest.mark.skipif(not CAISO.is_file(), reason="CAISO trace not present")
def test_paper_5_1_direction_on_the_caiso_trace(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        site={"tick_s": 1800},
        traces={"carbon": {"type": "electricitymaps_csv", "path": [str(CAISO)]}},
        window={"start": "2021-05-01T00:00:00Z", "end": "2021-06-15T00:00:00Z"},
        arrivals={"seed": 7, "warmup_h": 48, "max_runtime_h": 72},
        # the direction holds over runs, not in every run: a job arriving at a low point
        # that is still above the trailing 30th percentile waits, and may then run at a
        # higher intensity than the baseline did (run 1 of this seed does)
        runs=6,
    )
    exp = exp.model_copy(update={"apps": [exp.apps[0].model_copy(update={"policies": {
        "agnostic": exp.apps[0].policies["agnostic"],
        "sr": build_args("suspend_resume", ["--percentile", "30", "--window-h", "48"]),
    }})]})  # fmt: skip
    rs = run_all(exp, workers=1, show_progress=False)
    by = {lab: [r for r in rs if r.label == lab] for lab in ("agnostic", "sr")}
    assert all(r.finished for r in rs)
    carbon = {k: sum(r.carbon_g for r in v) for k, v in by.items()}
    runtime = {k: sum(r.runtime_h for r in v) for k, v in by.items()}
    assert carbon["sr"] < carbon["agnostic"]
    assert runtime["sr"] > runtime["agnostic"]


def build_args(policy: str, args: list[str]) -> Any:
    from ecovisor.contract.experiment import PolicySpec

    return PolicySpec(policy=policy, args=args)


def test_policies_are_built_by_their_own_parsers() -> None:
    from policies.wait_and_scale import WaitAndScale

    p = build_policy(build_args("wait_and_scale", ["--factor", "3", "--base-cpus", "4"]))
    assert isinstance(p, WaitAndScale) and p.factor == 3 and p.base_cpus == 4
    with pytest.raises(ValueError, match="unrecognized arguments"):
        build_policy(build_args("suspend_resume", ["--nope"]))


def test_experiment_file_is_strict_and_bounded(tmp_path: Path) -> None:
    p = tmp_path / "e.yaml"
    p.write_text("name: x\nbogus: 1\n")
    with pytest.raises(ConfigError, match="bogus"):
        load_experiment(p)
    with pytest.raises(ValueError, match="warmup_h"):
        experiment(tmp_path, window={"start": "2024-01-02T00:00:00Z",
                                     "end": "2024-01-03T00:00:00Z"})  # fmt: skip
    with pytest.raises(ValueError, match="less than or equal to 1000"):
        experiment(tmp_path, runs=5000)


def test_hold_resampling_is_the_tick_mean_of_the_step_trace() -> None:
    import numpy as np

    secs = np.array([0.0, 3600.0, 7200.0])
    vals = np.array([100.0, 300.0, 500.0])
    out = traces.hold(secs, vals, 0.0, 4, 1800.0)
    assert list(out) == [100.0, 100.0, 300.0, 300.0]
    out = traces.hold(secs, vals, 2700.0, 1, 1800.0)  # half in each hour
    assert out[0] == pytest.approx(200.0)


def test_a_lbs_per_mwh_carbon_csv_is_converted(tmp_path: Path) -> None:
    from ecovisor.contract.experiment import CarbonTrace

    p = tmp_path / "moer.csv"
    p.write_text("point_time,value\n2024-01-01T00:00:00Z,1000\n2024-01-01T01:00:00Z,500\n")
    spec = CarbonTrace(type="csv", path=[str(p)], unit="lbs_per_mwh")
    _, g = traces.read_carbon(spec)
    assert g[0] == pytest.approx(453.59237, rel=1e-6)  # 1 lb = 453.59237 g, MWh = 1000 kWh


def test_solar_from_pvanalytics_is_scaled_to_the_nameplate(tmp_path: Path) -> None:
    exp = experiment(
        tmp_path,
        site={"tick_s": 600, "solar_nameplate_w": 50.0},
        window={"start": "2024-01-03T00:00:00Z", "end": "2024-01-04T12:00:00Z"},
        arrivals={"warmup_h": 12, "max_runtime_h": 24},
        traces={"carbon": {"type": "csv", "path": [str(square_wave(tmp_path))]},
                "solar": {"type": "pvanalytics", "file": "serf_east_15min_ac_power.csv"}},
    )  # fmt: skip
    inp = load_inputs(exp)
    assert 0 < inp.solar_w.max() <= 50.0 and inp.solar_w.min() >= 0
    rs = {r.label: r for r in run_all(exp, workers=1, show_progress=False)}
    assert max(rs["agnostic"].series["solar_w"]) > 0
    # solar served part of the demand: less grid carbon than grid alone would emit
    assert rs["agnostic"].carbon_g < rs["agnostic"].energy_wh * HIGH / 1000


def test_cli_replay_and_evaluate(tmp_path: Path) -> None:
    import yaml

    from ecovisor.cli.main import app

    exp = experiment(
        tmp_path,
        window={"start": "2024-01-03T00:00:00Z", "end": "2024-01-04T12:00:00Z"},
        arrivals={"warmup_h": 12, "max_runtime_h": 24},
    )
    f = tmp_path / "exp.yaml"
    f.write_text(yaml.safe_dump(exp.model_dump(mode="json")))
    r = CliRunner().invoke(app, ["replay", str(f), "--runs", "1", "--workers", "1", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "| ml | sr | 1/1 |" in r.output
    r = CliRunner().invoke(app, ["replay", str(f), "--engine", "warp", "--quiet"])
    assert r.exit_code == 2 and "core, pipeline" in r.output
    out = tmp_path / "rep"
    r = CliRunner().invoke(app, ["evaluate", str(f), "--out", str(out), "--workers", "1",
                                 "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert (out / "table.md").read_text().count("| ml |") == 3
    assert (out / "ml-run00.png").stat().st_size > 10_000
    assert len(list((out / "ledgers" / "ml").glob("*/run-00.csv"))) == 3


def test_the_documented_experiment_example_is_valid() -> None:
    import re

    import yaml

    doc = (Path(__file__).resolve().parents[2] / "docs" / "evaluation.md").read_text()
    [block] = [b for b in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "apps:" in b]
    exp = Experiment.model_validate(yaml.safe_load(block))
    assert [a.id for a in exp.apps] == ["ml", "blast"]
    for app in exp.apps:
        for spec in app.policies.values():
            build_policy(spec)  # every documented policy line builds


def test_the_shipped_experiments_are_valid() -> None:
    root = Path(__file__).resolve().parents[2] / "experiments"
    for name in ("paper-5.1.yaml", "paper-5.1-job-12h.yaml"):
        exp = load_experiment(root / name)
        for app in exp.apps:
            for spec in app.policies.values():
                build_policy(spec)


def test_the_clairvoyant_suspend_resume_emits_least(tmp_path: Path) -> None:
    """``offline: true`` on suspend_resume runs the job in the lowest-carbon ticks it
    needs: below the online policy (which takes the first dip under its threshold) and
    the agnostic one, and it finishes."""
    hourly = [300.0] * 6 + [150.0] * 3 + [300.0] * 12 + [50.0] * 3 + [300.0] * 24
    p = tmp_path / "dip.csv"
    p.write_text("time,value\n" + "".join(
        f"2024-01-{2 + h // 24:02d}T{h % 24:02d}:00:00Z,{v}\n" for h, v in enumerate(hourly)))
    exp = experiment(
        tmp_path,
        traces={"carbon": {"type": "csv", "path": [str(p)]}},
        window={"start": "2024-01-02T00:00:00Z", "end": "2024-01-04T00:00:00Z"},
        arrivals={"warmup_h": 0, "max_runtime_h": 48},
        apps=[{
            "id": "ml",
            "workload": {"type": "ml_training", "work_h": 3, "base_cores": 4},
            "policies": {
                "agnostic": {"policy": "carbon_agnostic"},
                "sr": {"policy": "suspend_resume", "args": ["--threshold", "200"]},
                "oracle": {"policy": "suspend_resume", "offline": True},
            },
        }],
    )  # fmt: skip
    rs = {r.label: r for r in run_all(exp, workers=1, show_progress=False)}
    assert all(r.finished for r in rs.values())
    energy = rs["agnostic"].energy_wh
    assert rs["oracle"].energy_wh == pytest.approx(energy)  # same work, base allocation
    # the agnostic job runs at 300, the online one in the 150 dip, the oracle at 50
    assert rs["oracle"].carbon_g == pytest.approx(energy * 50 / 1000, rel=1e-3)
    assert rs["oracle"].carbon_g < rs["sr"].carbon_g < rs["agnostic"].carbon_g


def test_a_forecast_reaches_the_policy_and_suspend_resume_does_not_wait_for_nothing(
    tmp_path: Path,
) -> None:
    """With ``forecast_h`` the replayed carbon source publishes the trace's next hours
    (as a collector with ``forecast_points``): the ledger keeps it, the runner hands it to
    the policy, and ``suspend_resume --forecast-h`` runs at once on a rising grid where the
    plain one waits (nothing cleaner ever comes within its horizon)."""
    hourly = [100.0] * 24 + [200.0 + 5 * h for h in range(96)]
    p = tmp_path / "rising.csv"
    p.write_text("time,value\n" + "".join(
        f"2024-01-{1 + h // 24:02d}T{h % 24:02d}:00:00Z,{v}\n" for h, v in enumerate(hourly)))
    exp = experiment(
        tmp_path,
        traces={"carbon": {"type": "csv", "path": [str(p)], "forecast_h": 6}},
        window={"start": "2024-01-01T00:00:00Z", "end": "2024-01-04T00:00:00Z"},
        arrivals={"warmup_h": 24, "max_runtime_h": 48},
        apps=[{
            "id": "ml",
            "workload": {"type": "ml_training", "work_h": 3, "base_cores": 4},
            "policies": {
                "sr": {"policy": "suspend_resume", "args": ["--window-h", "24"]},
                "sr-fc": {"policy": "suspend_resume",
                          "args": ["--window-h", "24", "--forecast-h", "6"]},
            },
        }],
    )  # fmt: skip
    rs = {r.label: r for r in run_all(exp, workers=1, show_progress=False)}
    assert rs["sr-fc"].finished and rs["sr-fc"].runtime_h == pytest.approx(3.0)
    assert not rs["sr"].finished or rs["sr"].runtime_h > 6.0
    # it ran on the lowest part of the rise: less carbon than any later 3 hours
    assert rs["sr-fc"].carbon_g <= rs["sr"].carbon_g or not rs["sr"].finished
