"""The §5.3 Spark job and the §5.4 parallel job models, each on its own: work is
conserved, lost work is what stopped workers held, barriers wait for the slowest task,
replicas finish stragglers, and time inside a tick is exact."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ecovisor.core.parallel_job import ParallelJob
from ecovisor.core.spark_job import SparkJob


def run(job, schedule, dt=1.0):
    """Step ``job`` with ``schedule(k) -> cores`` until done; returns busy core-seconds."""
    busy, k = 0.0, 0
    while not job.done:
        busy += sum(job.step(schedule(k), dt).values()) * dt
        k += 1
        assert k < 1_000_000
    return busy


# -- Spark ---------------------------------------------------------------------------


def test_spark_finishes_exactly_when_its_work_is_done() -> None:
    job = SparkJob(n_tasks=10, task_s=30.0)
    busy = run(job, lambda k: {"w1": 1.0, "w2": 1.0}, dt=7.0)
    assert job.finished_at_s == pytest.approx(150.0)  # 10 × 30 s over 2 workers
    assert busy == pytest.approx(300.0) and job.lost_work_s == 0.0
    assert job.metrics()["functional_units_total"] == 10


def test_a_stopped_worker_loses_its_unfinished_task() -> None:
    job = SparkJob(n_tasks=4, task_s=10.0)
    first = sum(job.step({"w1": 1.0, "w2": 1.0}, 6.0).values()) * 6.0  # 6 s into a task each
    # w2 stops: its 6 s are lost; w1 finishes and checkpoints its task
    first += sum(job.step({"w1": 1.0, "w2": 0.0}, 4.0).values()) * 4.0
    assert job.tasks_done == 1 and job.lost_work_s == pytest.approx(6.0)
    assert job.tasks_lost == 1
    busy = run(job, lambda k: {"w1": 1.0, "w2": 1.0})
    # the lost task is redone from scratch: total work = 40 s + 6 s lost
    assert job.tasks_done == 4
    assert first + busy == pytest.approx(46.0)


def test_spark_worker_speed_follows_its_cores() -> None:
    fast, slow = SparkJob(n_tasks=2, task_s=10.0), SparkJob(n_tasks=2, task_s=10.0)
    run(fast, lambda k: {"w": 2.0})
    run(slow, lambda k: {"w": 1.0})
    assert fast.finished_at_s == pytest.approx(10.0) and slow.finished_at_s == pytest.approx(20.0)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.booleans()), min_size=1,
                max_size=60))  # fmt: skip
def test_spark_work_is_conserved_under_any_worker_churn(pattern) -> None:
    """Busy core-seconds = checkpointed work + lost work + work held at the end."""
    job = SparkJob(n_tasks=5, task_s=7.0)
    busy = 0.0
    for on in pattern:
        cores = {f"w{i}": 1.0 if o else 0.0 for i, o in enumerate(on)}
        busy += sum(job.step(cores, 3.0).values()) * 3.0
    held = sum(d for _, d in job._held.values())
    assert busy == pytest.approx(job.tasks_done * 7.0 + job.lost_work_s + held)


# -- parallel job ----------------------------------------------------------------------


def test_rounds_wait_for_the_slowest_task_then_do_io() -> None:
    job = ParallelJob(tasks=["a", "b"], iterations=2, compute_s=10.0, io_s=5.0)
    busy = run(job, lambda k: {"a": 1.0, "b": 0.5})  # b is capped to half speed
    # each round: b needs 20 s, a waits idle from 10 s; then 5 s of I/O
    assert job.finished_at_s == pytest.approx(50.0)
    assert busy == pytest.approx(2 * (10.0 + 0.5 * 20.0))  # only computing cores are busy
    assert job.metrics()["functional_units_total"] == 2


def test_balanced_caps_finish_sooner_than_unbalanced_ones_of_the_same_total() -> None:
    """What the dynamic caps of §5.4 exploit: the same cores, spread to the work."""
    even = ParallelJob(tasks=["a", "b"], iterations=3, compute_s=10.0, io_s=1.0)
    skew = ParallelJob(tasks=["a", "b"], iterations=3, compute_s=10.0, io_s=1.0)
    run(even, lambda k: {"a": 1.0, "b": 1.0})
    run(skew, lambda k: {"a": 1.5, "b": 0.5})
    assert even.finished_at_s < skew.finished_at_s


def test_a_replica_finishes_a_straggler_and_its_original_work_is_wasted() -> None:
    job = ParallelJob(tasks=["a", "b"], iterations=1, compute_s=10.0, io_s=0.0,
                      straggler_p=1.0, straggler_factor=4.0, seed=1)  # fmt: skip
    assert job.metrics()["stragglers"] == 2.0
    run(job, lambda k: {"a": 1.0, "b": 1.0, "rep-1": 1.0, "rep-2": 1.0})
    # each straggler needs 40 s; its replica (normal speed) needs 10 s and wins
    assert job.finished_at_s == pytest.approx(10.0)
    assert job.replica_wins == 2
    assert job.wasted_work_s == pytest.approx(2 * 10.0 / 4.0)  # the originals' progress
    no_rep = ParallelJob(tasks=["a", "b"], iterations=1, compute_s=10.0, io_s=0.0,
                         straggler_p=1.0, straggler_factor=4.0, seed=1)  # fmt: skip
    run(no_rep, lambda k: {"a": 1.0, "b": 1.0})
    assert no_rep.finished_at_s == pytest.approx(40.0)


def test_stragglers_are_reproducible_from_the_seed() -> None:
    def rounds(seed: int) -> list[float]:
        job = ParallelJob(tasks=list("abcdefghij"), iterations=5, straggler_p=0.2, seed=seed)
        out = []
        while not job.done:
            job.step(dict.fromkeys(job.tasks, 1.0), 5.0)
            out.append(job.metrics()["stragglers"])
        return out

    assert rounds(7) == rounds(7)
    assert rounds(7) != rounds(8)
    assert max(rounds(7)) >= 1


def test_no_cores_no_progress() -> None:
    job = ParallelJob(tasks=["a"], iterations=1, compute_s=10.0, io_s=0.0)
    assert job.step({"a": 0.0}, 5.0) == {"a": 0.0}
    assert job.progress == 0.0 and not job.done


def test_jitter_spreads_the_tasks_work_around_compute_s_and_idles_the_early_ones() -> None:
    job = ParallelJob(tasks=list("abcdefghij"), iterations=1, compute_s=100.0, io_s=0.0,
                      compute_jitter=0.3, seed=3)  # fmt: skip
    work = dict(job._work)
    assert all(70.0 <= w <= 130.0 for w in work.values()) and len(set(work.values())) == 10
    busy = run(job, lambda k: dict.fromkeys(job.tasks, 1.0))
    assert busy == pytest.approx(sum(work.values()))  # only the work itself is busy
    assert job.finished_at_s == pytest.approx(max(work.values()))  # the barrier



def test_a_planner_reads_the_seeded_rounds_and_a_copy_draws_the_same_future() -> None:
    """ParallelJob's planner view (work_left, round_work, io_left_s, next_round): the
    round's work, stragglers scaled by their factor unless read as a replica runs it."""
    import copy

    j = ParallelJob(tasks=["a", "b", "c", "d"], iterations=3, compute_s=60.0, io_s=10.0,
                    compute_jitter=0.2, straggler_p=0.5, straggler_factor=3.0, seed=4)  # fmt: skip
    plain, slowed = j.round_work(slowed=False), j.round_work()
    assert j.work_left() == slowed and j.io_left_s == 0.0
    assert any(slowed[t] == 3.0 * plain[t] for t in plain)  # seed 4 draws a straggler
    assert all(slowed[t] in (plain[t], 3.0 * plain[t]) for t in plain)
    peek = copy.deepcopy(j)
    peek.next_round()
    while j.round == 0:  # the round and its I/O, a second at a time
        j.step(dict.fromkeys(j.tasks, 1.0), 1.0)
    assert j.round == 1 and j.round_work() == peek.round_work()
