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
