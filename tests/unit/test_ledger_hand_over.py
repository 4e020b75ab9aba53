"""A planned move of a site (a rebalance, a graceful stop): the leaving worker persists
the site as it is (``LedgerService.hand_over``) and closes no tick after; a worker owns
no partition while a rebalance is under way (``GroupService.telemetry_tps``)."""

from __future__ import annotations

import asyncio
import logging
import types
from typing import Any

import pytest

from ecovisor.contract import topics
from streams.ledger_app import GroupService
from streams.ledger_group import SiteGroup
from streams.ledger_service import LedgerService
from tests.unit.test_ledger_intake import T0_US, FakeApp, Record, carbon, container, demo, solar


class FlushingApp(FakeApp):
    def __init__(self) -> None:
        super().__init__()
        self.producer.flush = self._flush  # type: ignore[attr-defined]
        self.flushes = 0

    async def _flush(self) -> None:
        self.flushes += 1


def ticked(loop: asyncio.AbstractEventLoop, svc: LedgerService, ticks: int) -> None:
    led = svc.loaded()
    recs = []
    for i in range(ticks * 2 + 1):
        t = i / 2
        for m in (carbon("co2", i, t), solar(i, t, 2.0 * i), container("web-1", i, t, 1.0 * i)):
            recs.append(Record(m.model_dump_json().encode(), len(recs)))
    loop.run_until_complete(svc.telemetry(led, 0, recs))


def test_a_hand_over_persists_the_last_closed_tick_and_closes_no_more() -> None:
    loop = asyncio.new_event_loop()
    try:
        app = FlushingApp()
        snapshots: dict[bytes, bytes] = {}
        svc = LedgerService(demo(), app, snapshots, {}, "event")
        ticked(loop, svc, 3)
        led = svc.loaded()
        closed = led.state.next_k
        assert closed is not None
        assert loop.run_until_complete(svc.hand_over()) is True
        assert snapshots[b"demo"] == led.snapshot()  # the state as handed over
        assert svc.retired
        sent = len(app.producer.sent)
        # a tick closer still holding the service: nothing closes, nothing is sent
        loop.run_until_complete(svc.close_ticks(led, T0_US + 60_000_000))
        assert led.state.next_k == closed and len(app.producer.sent) == sent
        never = LedgerService(demo(), FlushingApp(), {}, {}, "event")
        assert loop.run_until_complete(never.hand_over()) is False  # nothing loaded
    finally:
        loop.close()


def fake_app(rebalancing: bool, recovered: bool = True) -> Any:
    ev = asyncio.Event()
    if recovered:
        ev.set()
    tps = [types.SimpleNamespace(topic=topics.TELEMETRY, partition=p) for p in (0, 1)]
    return types.SimpleNamespace(
        rebalancing=rebalancing,
        tables=types.SimpleNamespace(recovery=types.SimpleNamespace(completed=ev)),
        assignor=types.SimpleNamespace(assigned_actives=lambda: tps),
        producer=FlushingApp().producer,
    )


def group_service(app: Any, snapshots: dict[bytes, bytes] | None = None) -> GroupService:
    return GroupService(SiteGroup.of([demo()]), app, {} if snapshots is None else snapshots,
                        {}, "event")  # fmt: skip


def test_a_worker_owns_nothing_during_a_rebalance() -> None:
    """Faust's assignment view lags a rebalance at both ends: between the revoke and the
    recovery of the next assignment no site service may be made (a stale one came back
    with the partition and re-sent ticks: tests/integration/test_ledger_scaleout.py)."""
    assert group_service(fake_app(rebalancing=False)).active_partitions() == {0, 1}
    assert group_service(fake_app(rebalancing=True)).active_partitions() == set()
    assert group_service(fake_app(False, recovered=False)).active_partitions() == set()
    g = group_service(fake_app(rebalancing=True))
    assert not g.sites.owns("demo") and list(g.sites.owned()) == []


def test_the_group_hands_over_the_revoked_sites_only_and_never_after_a_crash() -> None:
    loop = asyncio.new_event_loop()
    try:
        snapshots: dict[bytes, bytes] = {}
        g = group_service(fake_app(rebalancing=False), snapshots)
        svc = g.sites.service("demo")
        assert svc is not None
        ticked(loop, svc, 2)
        snapshots.clear()
        other = g.group.partition("demo") + 1
        loop.run_until_complete(g.hand_over({other}))
        assert not svc.retired  # another partition's revoke
        g.failure = RuntimeError("crashed")
        loop.run_until_complete(g.hand_over(None))
        assert not svc.retired  # after a crash the next owner reads Kafka again
        g.failure = None
        assert snapshots == {}
        loop.run_until_complete(g.hand_over(None))
        assert svc.retired and snapshots[b"demo"] == svc.loaded().snapshot()
    finally:
        loop.close()


def test_a_failed_hand_over_is_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        app = fake_app(rebalancing=False)

        async def refused() -> None:
            raise OSError("broker gone")

        app.producer.flush = refused
        g = group_service(app)
        svc = g.sites.service("demo")
        assert svc is not None
        svc.ack_events = None  # (persist's own flush is the acks' path)
        ticked(loop, svc, 2)
        with caplog.at_level(logging.WARNING, logger="ecovisor.ledger"):
            loop.run_until_complete(g.hand_over(None))
        assert "not persisted" in caplog.text and "broker gone" in caplog.text
    finally:
        loop.close()
