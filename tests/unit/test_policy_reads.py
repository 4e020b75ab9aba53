"""What a policy reads besides the tick (``policies.base.reads``): the live runner and the
replay engines fetch metrics and forecasts only for the policies that declare them."""

from __future__ import annotations

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
