"""App metrics helper: aggregation per flush (pure apart from an unconnected publisher)."""

from __future__ import annotations

import pytest

from collectors.app_metrics import AppMetrics
from collectors.publisher import Publisher


def metrics() -> AppMetrics:
    return AppMetrics(Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0), "web")


def test_flush_aggregates_latency_units_progress() -> None:
    m = metrics()
    for ms in range(1, 21):
        m.observe_latency(float(ms))
    m.add_units(3)
    m.add_units(2)
    m.set_progress(0.25)
    msg = m.flush()
    assert msg.kind == "app_metrics" and msg.app == "web" and msg.source == "app-web"
    assert msg.latency_ms == pytest.approx(10.5)
    assert msg.extra["latency_p95_ms"] == 19.0
    assert msg.extra["requests"] == 20.0
    assert msg.functional_units_total == 5.0
    assert msg.progress == 0.25
    second = m.flush()  # latency resets per flush; cumulative units and progress stay
    assert second.latency_ms is None and second.functional_units_total == 5.0
    assert second.seq == msg.seq + 1


def test_rejects_bad_values() -> None:
    m = metrics()
    with pytest.raises(ValueError):
        m.set_progress(1.5)
    with pytest.raises(ValueError):
        m.observe_latency(-1)
    with pytest.raises(ValueError):
        m.add_units(-2)
    assert m.flush().functional_units_total is None
