"""The ledger worker's HTTP state views (streams/ledger_views.py) answered without a
server: statuses, and exact counters between tick boundaries."""

from __future__ import annotations

from datetime import timedelta

from ecovisor.contract.config_file import parse_config
from ecovisor.core.tick_clock import to_us
from streams.ledger_views import respond
from streams.ledger_worker import SiteLedger
from tests.unit.test_ledger_worker_state import SITE, T0, _container

K0 = int(T0.timestamp())  # tick indices are epoch based (1 s ticks)


def _ledger(ticks: int = 3) -> SiteLedger:
    """web-1 uses 2 J in each of ``ticks`` 1 s ticks from T0."""
    led = SiteLedger.new(parse_config(SITE))
    for k in range(ticks):
        t = T0 + timedelta(seconds=k)
        led.clock.offer(_container("web", "web-1", 2 * k + 1, t + timedelta(milliseconds=1),
                                   2.0 * k))  # fmt: skip
        led.clock.offer(_container("web", "web-1", 2 * k + 2, t + timedelta(milliseconds=999),
                                   2.0 * (k + 1)))  # fmt: skip
    led.close(to_us((T0 + timedelta(seconds=ticks)).timestamp()) + 500_000)  # end + grace
    return led


def test_statuses() -> None:
    led = _ledger()
    iso = T0.isoformat()
    assert respond("state", None, "web", {})[1] == 404
    assert respond("state", led, "nope", {})[1] == 404
    body, status = respond("state", led, "web", {})
    assert status == 200 and body["app"] == "web" and body["tick"] == K0 + 2
    assert respond("counters", led, "web", {"t1": "yesterday", "t2": iso})[1] == 400
    assert respond("counters", led, "web", {"t1": iso}) == (
        {"error": "give t1 <= t2 as ISO 8601 times"}, 400)  # fmt: skip
    later = (T0 + timedelta(seconds=2)).isoformat()
    assert respond("counters", led, "web", {"t1": later, "t2": iso})[1] == 400
    assert respond("counters", led, "nope", {"t1": iso, "t2": later})[1] == 404
    assert respond("ledger", led, "web", {"from": "bad"})[1] == 400
    # the ledger view has no order check: an empty interval is an empty answer
    assert respond("ledger", led, "web", {"from": later, "to": iso}) == (
        {"app": "web", "entries": []}, 200)  # fmt: skip


def test_counters_are_exact_between_boundaries() -> None:
    led = _ledger()
    q = {"t1": (T0 + timedelta(milliseconds=300)).isoformat(),
         "t2": (T0 + timedelta(seconds=3)).isoformat()}  # fmt: skip
    body, status = respond("counters", led, "web", q)
    assert status == 200
    assert body["ticks"] == [K0 + 1, K0 + 2]  # t1 rounded up to the boundary of tick 1
    assert body["energy_j"] == 4.0
    assert body["containers"]["web-1"]["energy_j"] == 4.0
    body, _ = respond("ledger", led, "web", {"from": T0.isoformat()})
    assert [e["k"] for e in body["entries"]] == [K0, K0 + 1, K0 + 2]


def test_views_need_the_internal_key() -> None:
    """B3: with a site key, a view answers 401 without the bearer key or with a wrong
    one, and 200 with it."""
    led = _ledger(1)
    key = "site-internal-key-0123456789"
    for kind, q in (("state", {}), ("ledger", {}),
                    ("counters", {"t1": T0.isoformat(), "t2": T0.isoformat()})):  # fmt: skip
        for auth in (None, "", "Bearer wrong-key", f"Basic {key}", key):
            body, status = respond(kind, led, "web", q, auth, key)  # type: ignore[arg-type]
            assert status == 401 and "app" not in body, (kind, auth)
        assert respond(kind, led, "web", q, f"Bearer {key}", key)[1] == 200  # type: ignore[arg-type]
    assert respond("state", None, "web", {}, None, key)[1] == 401  # even while loading
