"""A telemetry record keyed by one site's id but naming another site in its payload: its
key routes it to the first site's owner, and the other site's owner never reads it. It
was skipped without a word; now it is dead-lettered with the reason. Unkeyed (a ledger
of one site reading a topic shared with other ledgers), another site's record stays
ignored: it is theirs."""

from __future__ import annotations

import asyncio

import pytest

from ecovisor.contract import topics
from ecovisor.contract.operator_messages import DeadLetter
from ecovisor.contract.telemetry import ClockMessage
from streams.ledger_service import LedgerService
from tests.unit.test_ledger_intake import FakeApp, Record, at, carbon, demo


@pytest.mark.parametrize("what", ["telemetry", "clock"])
@pytest.mark.parametrize("keyed", [True, False])
def test_a_record_keyed_by_this_site_for_another_is_dead_lettered(what: str, keyed: bool) -> None:
    loop = asyncio.new_event_loop()
    try:
        app = FakeApp()
        svc = LedgerService(demo(), app, {}, {}, "event")
        if what == "telemetry":
            m = carbon("co2", 1, 0.0).model_copy(update={"site": "elsewhere"})
        else:
            m = ClockMessage(site="elsewhere", time=at(0), source="replay")
        rec = Record(m.model_dump_json().encode(), 0)
        loop.run_until_complete(svc.telemetry(svc.loaded(), 0, [rec], keyed))
        dead = [DeadLetter.model_validate_json(v) for t, _, v in app.producer.sent
                if t == topics.DEADLETTER]  # fmt: skip
        if keyed:
            (dl,) = dead
            assert "keyed by site 'demo' but for site 'elsewhere'" in dl.reason
        else:
            assert dead == []
    finally:
        loop.close()


class CountingDict(dict):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def __setitem__(self, key: object, value: object) -> None:
        self.writes += 1
        super().__setitem__(key, value)


def test_only_an_accepted_command_writes_a_snapshot() -> None:
    """Every command persisted the site (~8 ms at 10 apps x 100 containers), so a flood of
    junk or rejected commands stalled every site of the worker (found by a review)."""
    from ecovisor.contract.commands import SetBatteryChargeRate
    from tests.fakes.commands import signed

    loop = asyncio.new_event_loop()
    try:
        snapshots = CountingDict()
        cfg = demo()
        svc = LedgerService(cfg, FakeApp(), snapshots, {}, "realtime")
        token = cfg.app("web").token
        junk = [b"", b"{", b'{"type":"set_battery_charge_rate"}']
        forged = [signed(SetBatteryChargeRate, "not-the-token", site="demo", time=at(0),
                         app="web", watts=1.0, command_id=f"f-{i}").to_json()
                  for i in range(3)]  # fmt: skip
        over = signed(SetBatteryChargeRate, token, site="demo", time=at(0), app="web",
                      watts=1e9, command_id="too-much").to_json()  # fmt: skip
        for raw in [*junk, *forged, over]:
            assert loop.run_until_complete(svc.command(raw))
        assert snapshots.writes == 0
        ok = signed(SetBatteryChargeRate, token, site="demo", time=at(0), app="web",
                    watts=1.0, command_id="fine").to_json()  # fmt: skip
        loop.run_until_complete(svc.command(ok))
        assert snapshots.writes == 1
        assert loop.run_until_complete(svc.command(ok))  # a re-delivery: a no-op
        assert snapshots.writes == 1
    finally:
        loop.close()
