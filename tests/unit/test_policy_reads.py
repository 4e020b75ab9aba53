"""What a policy reads besides the tick (``policies.base.reads``): the live runner and the
replay engines fetch metrics and forecasts only for the policies that declare them."""

from __future__ import annotations

import logging

import pytest

from ecovisor.contract.experiment import PolicySpec
from policies.base import reads
from replay.engine import build_policy


@pytest.mark.parametrize(
    ("policy", "args", "expected"),
    [
        ("suspend_resume", [], (False, False)),
        ("suspend_resume", ["--forecast-h", "24"], (False, True)),
        ("dynamic_budget", [], (True, False)),
        ("right_sizing", ["--template", "w", "--capacity", "100"], (True, False)),
        ("straggler_replicas", ["--template", "w"], (True, False)),
        ("carbon_agnostic", [], (False, False)),
    ],
)
def test_policies_declare_what_they_read(policy: str, args: list[str], expected) -> None:
    assert reads(build_policy(PolicySpec(policy=policy, args=args))) == expected


def test_an_undeclared_policy_reads_nothing() -> None:
    class Plain:
        name = "plain"

    assert reads(Plain()) == (False, False)


def test_a_failed_advisory_read_is_logged_once_not_silent(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Metrics and forecasts are advisory (the policy goes on without them), but a read
    that fails says so, once per kind of failure, instead of handing {} silently."""
    from policies import base
    from policies.base import api_forecasts, api_metrics

    base._ADVISORY_LOGGED.clear()  # once per process: start from none logged

    class Broken:
        def get_state(self) -> dict:
            raise KeyError("tick_data")

        def get_carbon_forecast(self) -> dict:
            raise ConnectionError("api down")

        get_solar_forecast = get_carbon_forecast

    with caplog.at_level(logging.WARNING, logger="ecovisor.policy"):
        metrics, forecasts = api_metrics(Broken()), api_forecasts(Broken())
        for _ in range(3):
            assert metrics() == {}
            assert forecasts().carbon == () and forecasts().solar == ()
    lines = [r.getMessage() for r in caplog.records]
    assert sum("app metrics" in m and "KeyError" in m for m in lines) == 1
    assert sum("forecast" in m and "ConnectionError" in m for m in lines) == 1
