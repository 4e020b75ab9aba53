"""Chaos with the event clock, the short version for CI: the real pipeline (mosquitto,
the MQTT bridge, tansu, the Faust ledger ``--clock event``, the container actuator) runs
a deterministic workload of 30 ticks twice, side by side on separate brokers: fault-free,
and with the bridge and the ledger each SIGKILLed at 3 random points (seed 1) and
restarted at once. Every ledger entry per tick (de-duplicated by (app, tick), every copy
identical), the totals per app, the notifications, battery setpoints, command outcomes
and final cgroup quotas must be identical (reliability/chaos.py; the full run and its
figures: docs/reliability.md#chaos-sigkill-with-the-event-clock)."""

from __future__ import annotations

from pathlib import Path

import pytest

from reliability import chaos  # the script, as a module

pytestmark = pytest.mark.integration


@pytest.mark.timeout(240)
def test_sigkill_bridge_and_ledger_gives_the_fault_free_outcome(tmp_path: Path) -> None:
    rep = chaos.run(
        kills=3,
        seed=1,
        ticks=30,
        services=("bridge", "ledger"),
        work=tmp_path,
        parallel=True,
        log=print,
    )
    print(chaos.render(rep))
    assert rep.kills_done() == {"bridge": 3, "ledger": 3}
    assert rep.mismatches == []
    # the comparison had something to compare: every tick, real totals, every command
    assert len(rep.got.entries) == 2 * 30
    for app in ("a", "b"):
        assert rep.got.totals[app]["energy_mj"] > 0 and rep.got.totals[app]["carbon_ug"] > 0
    assert set(rep.got.final) == {c.command_id for c in rep.workload.commands}
    assert "command_applied" in rep.got.final.values()
