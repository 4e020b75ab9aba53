"""The web-service workload model (ecovisor/core/workloads.py: WebService) on its own:
the M/M/1 p95 formula, capacity and drops, busy cores, start-up work, the SLO count and
the cumulative functional-units metric."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ecovisor.core.workloads import WebService, mm1_sojourn_p95_s


def test_mm1_p95_against_known_values() -> None:
    # M/M/1, mean service 1 s, rho = 0.5: sojourn ~ Exp(mu - lambda = 0.5/s), so
    # P(T > t) = exp(-0.5 t) and t95 = ln(20)/0.5 = 5.9915 s
    assert mm1_sojourn_p95_s(1.0, 0.5) == pytest.approx(5.991465, abs=1e-6)
    # empty system: the p95 of the service time itself, D ln 20
    assert mm1_sojourn_p95_s(0.02, 0.0) == pytest.approx(0.02 * math.log(20))
    assert mm1_sojourn_p95_s(1.0, 1.0) == math.inf


def test_mm1_p95_matches_a_simulated_queue() -> None:
    """An independent check: Lindley's recursion for FCFS waiting times."""
    rng = np.random.default_rng(1)
    n, lam, mu = 200_000, 0.7, 1.0
    inter = rng.exponential(1 / lam, n)
    serv = rng.exponential(1 / mu, n)
    w = np.zeros(n)
    for i in range(1, n):
        w[i] = max(0.0, w[i - 1] + serv[i - 1] - inter[i])
    sim = float(np.quantile((w + serv)[1000:], 0.95))
    assert sim == pytest.approx(mm1_sojourn_p95_s(1 / mu, lam / mu), rel=0.05)


def web(rates: list[float], **kw: float) -> WebService:
    p = {"demand_s": 0.02, "idle_cores": 0.2, "start_core_s": 0.0, "slo_s": 0.2}
    p.update(kw)
    return WebService(rates=rates, **p)  # type: ignore[arg-type]


def test_utilisation_drives_busy_cores_and_latency() -> None:
    w = web([95.0])  # one 4-core replica serves (4 - 0.2)/0.02 = 190 req/s at rho = 1
    busy = w.step({"worker-1": 4.0, "worker-2": 0.0}, 60.0)
    rho = 95.0 / 190.0
    assert busy == {"worker-1": pytest.approx(0.2 + rho * 3.8), "worker-2": 0.0}
    assert w.last_p95_s == pytest.approx(mm1_sojourn_p95_s(0.02, rho))
    assert w.last_mean_s == pytest.approx(0.02 / (1 - rho))
    assert w.slo_violations == 0  # p95 = 120 ms < 200 ms
    # load spread evenly over the serving cores: two replicas, half the utilisation each
    w2 = web([95.0])
    b2 = w2.step({"worker-1": 4.0, "worker-2": 4.0}, 60.0)
    assert b2["worker-1"] == pytest.approx(0.2 + rho / 2 * 3.8) == b2["worker-2"]


def test_capacity_saturates_and_excess_requests_are_dropped() -> None:
    w = web([1000.0, 0.0, 50.0], max_utilisation=0.95)
    busy = w.step({"worker-1": 4.0}, 10.0)
    admitted = 0.95 * 190.0
    assert busy["worker-1"] == pytest.approx(0.2 + 0.95 * 3.8)  # at the admission limit
    assert w.served_total == pytest.approx(admitted * 10)
    assert w.dropped_total == pytest.approx((1000.0 - admitted) * 10)
    assert w.slo_violations == 1  # dropped requests (and p95 = 1.2 s)
    # no requests: only the runtime's idle cores, no latency, no violation
    assert w.step({"worker-1": 4.0}, 10.0) == {"worker-1": pytest.approx(0.2)}
    assert w.last_p95_s is None and w.slo_violations == 1
    # no replica running: everything offered is dropped
    w.step({"worker-1": 0.0}, 10.0)
    assert w.dropped_total == pytest.approx((1000.0 - admitted + 50.0) * 10)
    assert w.slo_violations == 2 and w.done


def test_slo_violation_when_p95_exceeds_it() -> None:
    # rho = 0.8: p95 = 0.02 ln 20 / 0.2 = 0.2996 s > 0.2 s
    w = web([152.0])
    w.step({"worker-1": 4.0}, 60.0)
    assert w.last_p95_s == pytest.approx(0.2996, abs=1e-4)
    assert w.slo_violations == 1 and w.dropped_total == 0


def test_functional_units_are_cumulative_and_monotone() -> None:
    rng = np.random.default_rng(3)
    rates = list(rng.uniform(0, 400, 50))
    w = web(rates)
    last = 0.0
    total = 0.0
    for r in rates:
        w.step({"worker-1": 4.0, "worker-2": 4.0}, 30.0)
        m = w.metrics()["functional_units_total"]
        assert m >= last
        last = m
        total += min(r, 0.95 * 380.0) * 30.0
    assert last == pytest.approx(total)
    assert w.done and w.progress == 1.0 and w.finished_at_s == pytest.approx(50 * 30.0)


def test_a_started_replica_pays_its_start_up_work_once() -> None:
    w = web([0.0] * 4, start_core_s=60.0)
    assert w.step({"worker-1": 4.0}, 60.0) == {"worker-1": pytest.approx(0.2)}  # warm at start
    b = w.step({"worker-1": 4.0, "worker-2": 4.0}, 60.0)
    assert b == {"worker-1": pytest.approx(0.2), "worker-2": pytest.approx(1.2)}
    assert w.step({"worker-1": 4.0, "worker-2": 4.0}, 60.0)["worker-2"] == pytest.approx(0.2)
    w.step({"worker-1": 4.0, "worker-2": 0.0}, 60.0)
    assert w.starts == 1


def test_parameters_are_checked() -> None:
    with pytest.raises(ValueError):
        WebService(rates=[1.0], demand_s=0.0)
    with pytest.raises(ValueError):
        WebService(rates=[1.0], max_utilisation=1.0)
