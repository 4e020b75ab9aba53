"""The replay workload models (ecovisor/core/workloads.py), each on its own."""

from __future__ import annotations

import pytest

from ecovisor.core.workloads import Blast, MLTraining, amdahl_speedup


def test_amdahl_speedup() -> None:
    assert amdahl_speedup(1, 0.1) == pytest.approx(1.0)
    assert amdahl_speedup(8, 0.0) == pytest.approx(8.0)
    assert amdahl_speedup(0, 0.1) == 0.0
    # sub-linear: doubling the cores less than doubles the speed
    assert amdahl_speedup(8, 0.1) < 2 * amdahl_speedup(4, 0.1)


def test_ml_training_runs_its_work_at_base_cores_in_work_s() -> None:
    job = MLTraining(work_s=3600.0, base_cores=4, serial_fraction=0.1)
    for _ in range(5):
        busy = job.step({"ml-1": 4.0}, 600.0)
        assert busy == {"ml-1": 4.0}  # every allocated core busy while it runs
    busy = job.step({"ml-1": 4.0}, 600.0)
    assert job.done and job.finished_at_s == pytest.approx(3600.0)
    assert busy == {"ml-1": pytest.approx(4.0)}  # finished exactly at the tick's end
    assert job.step({"ml-1": 4.0}, 600.0) == {"ml-1": 0.0}  # done: nothing busy


def test_ml_training_scales_sub_linearly_and_pays_for_every_core() -> None:
    base = MLTraining(work_s=36_000.0, base_cores=4, serial_fraction=0.1)
    wide = MLTraining(work_s=36_000.0, base_cores=4, serial_fraction=0.1)
    base.step({"c": 4.0}, 3600.0)
    wide.step({"c": 8.0}, 3600.0)
    speedup = wide.done_s / base.done_s
    assert 1.0 < speedup < 2.0
    assert speedup == pytest.approx(amdahl_speedup(8, 0.1) / amdahl_speedup(4, 0.1))
    # energy per unit of work grows with the cores (busy cores x time / work)
    assert 8.0 / wide.done_s > 4.0 / base.done_s


def test_ml_training_makes_no_progress_while_suspended() -> None:
    job = MLTraining(work_s=100.0)
    assert job.step({"c": 0.0}, 60.0) == {"c": 0.0}
    assert job.done_s == 0.0 and job.elapsed_s == 60.0 and not job.done


def test_ml_training_finishing_inside_a_tick_is_busy_for_that_part_only() -> None:
    job = MLTraining(work_s=90.0, base_cores=4)
    job.step({"c": 4.0}, 60.0)
    busy = job.step({"c": 4.0}, 60.0)
    assert job.finished_at_s == pytest.approx(90.0)
    assert busy["c"] == pytest.approx(2.0)  # 4 cores for half the tick


def test_blast_is_linear_up_to_the_queue_limit() -> None:
    speeds = {}
    for cores in (8, 16, 24, 32):
        job = Blast(work_s=1e9, base_cores=8, queue_limit=3)
        busy = job.step({f"w{i}": 4.0 for i in range(cores // 4)}, 100.0)
        speeds[cores] = job.done_s / 100.0
        assert sum(busy.values()) == pytest.approx(min(cores, 24))
    assert speeds == {8: 1.0, 16: 2.0, 24: 3.0, 32: 3.0}


def test_blast_spreads_busy_cores_evenly_beyond_the_limit() -> None:
    job = Blast(work_s=1e9, base_cores=8, queue_limit=3)
    busy = job.step({f"w{i}": 4.0 for i in range(8)}, 10.0)  # 32 cores, 24 useful
    assert all(b == pytest.approx(3.0) for b in busy.values())


def test_blast_without_cores_makes_no_progress() -> None:
    job = Blast(work_s=10.0)
    assert job.step({}, 60.0) == {}
    assert job.done_s == 0 and not job.done
