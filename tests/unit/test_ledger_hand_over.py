"""A planned move of a site (a rebalance, a graceful stop): the leaving worker persists
the site as it is (``LedgerService.hand_over``) and closes no tick after; a worker owns
no partition while a rebalance is under way, and an event held across one is taken only
by its partition's owner (``GroupService``)."""

from __future__ import annotations

import asyncio
import logging
import time
import types
from typing import Any

import pytest

from ecovisor.contract import topics
from ecovisor.contract.commands import SetBatteryChargeRate
from streams.ledger_app import GroupService
from streams.ledger_group import SiteGroup
from streams.ledger_service import LedgerService
from tests.fakes.commands import signed
from tests.unit.test_ledger_intake import (
    T0_US,
    FakeApp,
    Record,
    at,
    carbon,
    container,
    demo,
    solar,
)


def ticked(loop: asyncio.AbstractEventLoop, svc: LedgerService, ticks: int) -> None:
    led = svc.loaded()
    recs = []
    for i in range(ticks * 2 + 1):
        t = i / 2
        for m in (carbon("co2", i, t), solar(i, t, 2.0 * i), container("web-1", i, t, 1.0 * i)):
            recs.append(Record(m.model_dump_json().encode(), len(recs)))
    loop.run_until_complete(svc.telemetry(led, 0, recs))


def far() -> float:
    return time.monotonic() + 60


def test_a_hand_over_persists_the_last_closed_tick_and_closes_no_more() -> None:
    loop = asyncio.new_event_loop()
    try:
        app = FakeApp()
        snapshots: dict[bytes, bytes] = {}
        svc = LedgerService(demo(), app, snapshots, {}, "event")
        ticked(loop, svc, 3)
        led = svc.loaded()
        closed = led.state.next_k
        assert closed is not None
        svc.leave(moved=True)
        assert loop.run_until_complete(svc.hand_over(far())) == []  # (no acks: no stream)
        assert snapshots[b"demo"] == led.snapshot()  # the state as handed over
        sent = len(app.producer.sent)
        # a tick closer still holding the service: nothing closes, nothing is sent
        loop.run_until_complete(svc.close_ticks(led, T0_US + 60_000_000))
        assert led.state.next_k == closed and len(app.producer.sent) == sent
        never = LedgerService(demo(), FakeApp(), {}, {}, "event")
        assert loop.run_until_complete(never.hand_over(far())) is None  # nothing loaded
    finally:
        loop.close()


def test_nothing_is_written_past_the_deadline() -> None:
    """A snapshot landing after the next owner recovered could later be restored over
    its newer state: past the budget the hand-over writes nothing."""
    loop = asyncio.new_event_loop()
    try:
        snapshots: dict[bytes, bytes] = {}
        svc = LedgerService(demo(), FakeApp(), snapshots, {}, "event")
        ticked(loop, svc, 2)
        snapshots.clear()
        svc.leave(moved=True)
        assert loop.run_until_complete(svc.hand_over(time.monotonic() - 1)) is None
        assert snapshots == {}
    finally:
        loop.close()


def command(app: str = "web") -> bytes:
    cfg = demo()
    token = next(a.token for a in cfg.apps if a.id == app)
    return signed(SetBatteryChargeRate, site="demo", time=at(0.2), app=app, token=token, watts=5.0,
                                        command_id="c-1").to_json()  # fmt: skip


def test_a_command_left_waiting_by_a_revoke_is_not_taken_by_the_old_owner() -> None:
    """A command waiting for the site's lock (or, event mode, for the catch-up) while the
    site is handed over on a revoke: not taken here (False): the next owner takes it."""
    loop = asyncio.new_event_loop()
    try:
        app = FakeApp()
        svc = LedgerService(demo(), app, {}, {}, "event")
        ticked(loop, svc, 2)

        async def scenario() -> bool:
            waiting = asyncio.ensure_future(svc.command(command()))  # caught_up not set
            await asyncio.sleep(0)
            svc.leave(moved=True)  # wakes it
            return await waiting

        sent = len(app.producer.sent)
        assert loop.run_until_complete(asyncio.wait_for(scenario(), 5)) is False
        assert len(app.producer.sent) == sent  # nothing decided, nothing sent
        stop = LedgerService(demo(), FakeApp(), {}, {}, "event")  # a stop: still the owner
        stop.caught_up.set()
        stop.leave(moved=False)
        assert loop.run_until_complete(stop.command(command())) is True
    finally:
        loop.close()


class Progress:
    def __init__(self) -> None:
        self.completed = asyncio.Event()
        self.signal_recovery_start = asyncio.Event()  # the next recovery, not taken yet


def fake_app(rebalancing: bool, recovered: bool = True, parts: tuple[int, ...] = (0, 1)
             ) -> Any:  # fmt: skip
    prog = Progress()
    if recovered:
        prog.completed.set()
    tps = [types.SimpleNamespace(topic=topics.TELEMETRY, partition=p) for p in parts]
    app = types.SimpleNamespace(
        rebalancing=rebalancing, rebalancing_count=1,
        tables=types.SimpleNamespace(recovery=prog),
        assignor=types.SimpleNamespace(assigned_actives=lambda: tps),
        producer=FakeApp().producer,
    )  # fmt: skip

    async def flush() -> None:
        app.flushes = getattr(app, "flushes", 0) + 1

    app.producer.flush = flush
    return app


def group_service(app: Any, snapshots: dict[bytes, bytes] | None = None) -> GroupService:
    return GroupService(SiteGroup.of([demo()]), app, {} if snapshots is None else snapshots,
                        {}, "event")  # fmt: skip


def test_a_worker_owns_nothing_during_a_rebalance() -> None:
    """Faust's assignment view lags a rebalance at both ends: from its start to the
    recovery of the next assignment no site service may be made (a stale one came back
    with the partition and re-sent ticks: tests/integration/test_ledger_scaleout.py)."""
    assert group_service(fake_app(rebalancing=False)).active_partitions() == {0, 1}
    assert group_service(fake_app(rebalancing=True)).active_partitions() == set()
    assert group_service(fake_app(False, recovered=False)).active_partitions() == set()
    g = group_service(fake_app(rebalancing=True))
    assert not g.sites.owns("demo") and list(g.sites.owned()) == []
    # the previous recovery may end (rebalancing False) after the next rebalance started,
    # before or after its assignment: the worker's own flag holds until the end of the
    # recovery of this rebalance's assignment
    app = fake_app(rebalancing=False)
    g = group_service(app)
    g.rebalance_starts()
    assert g.active_partitions() == set() and not g.sites.owns("demo")
    g.rebalance_ends()  # the previous recovery's late end, before the assignment
    assert g.active_partitions() == set()
    g.assigned()
    assert g.active_partitions() == set() and g.sites.service("demo") is None
    app.tables.recovery.signal_recovery_start.set()  # this assignment's recovery, to run
    g.rebalance_ends()  # ... and the previous recovery's late end after the assignment
    assert g.active_partitions() == set()
    app.tables.recovery.signal_recovery_start.clear()  # taken, run, ended
    g.rebalance_ends()
    assert g.active_partitions() == {0, 1} and g.sites.service("demo") is not None


def test_an_event_held_across_a_move_is_taken_only_by_its_partitions_owner() -> None:
    loop = asyncio.new_event_loop()
    try:
        app = fake_app(rebalancing=False)
        g = group_service(app)
        part = g.group.partition("demo")
        svc = g.sites.service("demo")
        assert svc is not None
        svc.caught_up.set()

        async def held() -> None:
            g.rebalance_starts()
            cmd = asyncio.ensure_future(g.command(b"demo", command(), part))
            await asyncio.sleep(0.2)
            assert not cmd.done()  # held while the rebalance is under way
            # the partition went to another worker
            app.assignor.assigned_actives = lambda: []
            g.sites.revoke({part})
            g.assigned()
            g.rebalance_ends()
            await asyncio.wait_for(cmd, 5)

        sent = len(app.producer.sent)
        loop.run_until_complete(held())
        assert len(app.producer.sent) == sent  # neither taken nor dead-lettered
        assert svc.moved and "demo" not in g.sites.services

        async def back() -> None:  # the partition comes back to this worker
            g.rebalance_starts()
            cmd = asyncio.ensure_future(g.command(b"demo", command(), part))
            await asyncio.sleep(0.1)
            app.rebalancing_count += 1  # (Faust counts the rebalance)
            app.assignor.assigned_actives = lambda: [
                types.SimpleNamespace(topic=topics.TELEMETRY, partition=part)]
            g.assigned()
            g.rebalance_ends()
            await asyncio.wait_for(cmd, 5)

        loop.run_until_complete(back())
        # not taken: Faust delivers it again from the committed offset (taken then once)
        assert len(app.producer.sent) == sent
    finally:
        loop.close()


def test_the_group_hands_over_the_revoked_sites_only_and_never_after_a_crash() -> None:
    loop = asyncio.new_event_loop()
    try:
        snapshots: dict[bytes, bytes] = {}
        app = fake_app(rebalancing=False)
        g = group_service(app, snapshots)
        svc = g.sites.service("demo")
        assert svc is not None
        ticked(loop, svc, 2)
        snapshots.clear()
        other = g.group.partition("demo") + 1
        loop.run_until_complete(g.hand_over({other}))
        assert not svc.retired  # another partition's revoke
        g.failure = RuntimeError("crashed")
        loop.run_until_complete(g.hand_over(None))
        assert svc.retired and snapshots == {}  # left, but nothing written after a crash
        g.failure = None
        svc.retired = False
        loop.run_until_complete(g.hand_over(None))
        assert svc.retired and not svc.moved  # a stop: it still takes commands
        assert snapshots[b"demo"] == svc.loaded().snapshot() and app.flushes >= 1
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
        assert "not complete" in caplog.text and "broker gone" in caplog.text
        assert svc.retired
    finally:
        loop.close()


@pytest.mark.parametrize("which", ["command", "actuator_ack"])
def test_a_tombstone_on_commands_or_acks_is_dead_lettered_in_a_group(which: str) -> None:
    """A null-value record (anyone may write one) without a site key, in a group of two
    sites: routing read its payload and raised, crashing the worker, and Faust delivered
    it again after each restart. Now it is dead-lettered like any junk."""
    from tests.unit.test_ledger_group import site

    loop = asyncio.new_event_loop()
    try:
        app = fake_app(rebalancing=False, parts=(0, 1, 2, 3))
        crashed: list[BaseException] = []

        async def crash(e: BaseException) -> None:
            crashed.append(e)

        app.crash = crash
        group = SiteGroup.of([site("s1", ("a",)), site("s2", ("b",))], "g", 4)
        g = GroupService(group, app, {}, {}, "realtime")
        loop.run_until_complete(g.guarded(which, getattr(g, which)(None, None, 0)))
        assert crashed == [] and g.failure is None
        (dl,) = [v for t, _, v in app.producer.sent if t == topics.DEADLETTER]
        assert "no configured site or app" in dl.decode()
    finally:
        loop.close()
