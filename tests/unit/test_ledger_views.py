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


def _rows(ks: list[int], ticks: list[int]) -> dict[int, dict]:
    """Rows of an app that used 1 J (1,000 mJ) in each accounted tick: ``ticks[i]`` its
    accounted ticks after tick ``ks[i]``."""
    return {k: {"ticks": n, "energy_mj": 1_000 * n, "carbon_ug": n,
                "containers": {"c": (1_000 * n, n)}} for k, n in zip(ks, ticks, strict=True)}


def _view(rows: dict, a: int, b: int) -> dict | None:
    from streams.ledger_views import counters_view

    t = lambda k: T0 + timedelta(seconds=k)  # noqa: E731  (boundary k: T0 + k s)
    return counters_view(1_000_000, t(a), t(b), {K0 + k: v for k, v in rows.items()})


def test_counters_never_answer_beyond_what_the_rows_show() -> None:
    # the app's first tick kept: before it the counters were zero
    first = _rows(list(range(0, 10)), list(range(1, 11)))
    assert _view(first, -5, 4)["energy_j"] == 4.0
    # a history that starts later (trimmed, or a new owner's): no answer before it, an
    # exact one from its first kept tick's end on (the row of tick 10 = boundary 11)
    later = _rows(list(range(10, 20)), list(range(11, 21)))
    assert _view(later, 0, 15) is None
    assert _view(later, 10, 15) is None  # needs the row of tick 9
    v = _view(later, 11, 15)
    assert v is not None and v["energy_j"] == 4.0 and v["ticks"] == [K0 + 11, K0 + 14]
    # a hole (rows of ticks 13-15 lost, 3 ticks accounted in them): no answer from or
    # to a boundary in it; across it exact (cumulative counters: only the ends count)
    hole = {k: r for k, r in later.items() if not 13 <= k <= 15}
    assert _view(hole, 14, 18) is None and _view(hole, 12, 15) is None
    assert _view(hole, 12, 18)["energy_j"] == 6.0
    # ticks the clock skipped (nothing accounted: the counts go on by one): exact
    skipped = _rows([0, 1, 2, 8, 9], [1, 2, 3, 4, 5])
    assert _view(skipped, 0, 10)["energy_j"] == 5.0
    assert _view(skipped, 5, 10)["energy_j"] == 2.0  # from boundary 5: the row of tick 2
    assert _view(skipped, 3, 6)["energy_j"] == 0.0
    # rows without counts (the table's old format): only exact rows, never zeros assumed
    old = {k: {kk: vv for kk, vv in r.items() if kk != "ticks"} for k, r in first.items()}
    assert _view(old, 0, 4) is None and _view(old, 2, 4)["energy_j"] == 2.0
