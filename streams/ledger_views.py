"""The ledger worker's state views, served on 127.0.0.1:``stack.ledger_web_port`` and
read by the REST API (ecovisor/api/state_source.py). When the site has an internal key
(``ecovisor.contract.environment.internal_key``), every request needs
``Authorization: Bearer <internal key>`` (else 401): loopback alone does not keep other
local users or apps from reading any app's state.

* ``GET /ecovisor/state/{app}``: settings, last tick data, cumulative totals, clock;
* ``GET /ecovisor/counters/{app}?t1=&t2=``: exact energy/carbon between tick boundaries;
* ``GET /ecovisor/ledger/{app}?from=&to=``: the ledger entries kept in memory;
* ``GET /ready`` (open): whether the worker serves its share of the group yet.

``respond(kind, ledger, app, query)`` answers one request as (JSON body, status), no
I/O; ``add_pages`` mounts the three views, ``add_ready_page`` the readiness, on the Faust
web server. Formats: docs/ledger.md.
"""

from __future__ import annotations

import hmac
import json
import math
from bisect import bisect_right
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from ecovisor.contract.envelope import parse_time
from ecovisor.core.tick_clock import to_us
from ecovisor.core.units import mj_to_j, ug_to_g
from streams.ledger_out import utc_from_us
from streams.ledger_worker import SiteLedger
from streams.view_history import RowsView

ViewKind = Literal["state", "counters", "ledger"]
Answer = tuple[dict[str, Any], int]  # JSON body, HTTP status


def state_view(led: SiteLedger, app: str) -> dict[str, Any] | None:
    """The app's state now (None: not an app of this site)."""
    if app not in led.state.apps:
        return None
    st = led.state.apps[app]
    last = led.last.get(app, {})
    clock = led.clock
    return {
        "app": app,
        "site": led.cfg.site.id,
        "tick": last.get("tick"),
        "time": last.get("time"),
        "tick_s": led.cfg.site.shape.tick_s,
        "tick_data": last.get("tick_data"),
        "settings": st.settings.model_dump(mode="json"),
        "pending_changes": len(st.pending),
        "battery_wh": st.battery_mj / 3_600_000,
        "suspended": led.suspended.get(app, []),
        "carbon": {
            "budget": st.tracking.budget.model_dump(mode="json") if st.tracking.budget else None,
            "rate_windows": {
                c: {"level": w.level.value} for c, w in st.tracking.rate_windows.items()
            },
        },
        "app_metrics": led.metrics.get(app, {}),
        "carbon_forecast": led.forecast_view("carbon"),
        "solar_forecast": led.forecast_view("solar"),
        "cumulative": {
            "energy_j": mj_to_j(st.cumulative.total.energy_mj),
            "carbon_g": ug_to_g(st.cumulative.total.carbon_ug),
            "ticks": st.cumulative.ticks,
            "estimated_ticks": st.cumulative.estimated_ticks,
        },
        # the site's clock; its sample counts are the site's (every app's telemetry), so
        # they are in the ledger's /metrics (internal key), not in an app's view
        "clock": {
            "next_close": clock.next_close,
            "watermark": (
                utc_from_us(clock.watermark_us).isoformat() if clock.watermark_us else None
            ),
        },
    }


_ZERO: dict[str, Any] = {"energy_mj": 0, "carbon_ug": 0, "containers": {}}


def counters_view(
    tick_us: int, t1: datetime, t2: datetime, rows: Mapping[int, dict[str, Any]]
) -> dict[str, Any] | None:
    """Energy and carbon between the tick boundaries nearest inside [t1, t2], exact
    from the per-tick cumulative counters (``rows``: k -> counter row). None when the
    rows cannot answer exactly: the interval starts before the kept history (unless it
    begins with the app's first tick: counters were zero before it) or at a tick whose
    row is missing (a hole: ``_cumulative_after``)."""
    if not rows:
        return None
    k1 = -(-to_us(t1.timestamp()) // tick_us)  # first boundary >= t1
    k2 = to_us(t2.timestamp()) // tick_us  # last boundary <= t2
    ks = sorted(rows)
    # cumulative at boundary b = row of tick b-1 (tick b-1 ends at b)
    lo_k, hi_k = k1 - 1, k2 - 1
    lo_k = max(lo_k, ks[0] - 1)
    hi_k = min(hi_k, ks[-1])
    if hi_k <= lo_k:
        b = utc_from_us(max(k1, ks[0]) * tick_us)
        return {
            "t1": b.isoformat(),
            "t2": b.isoformat(),
            "energy_j": 0.0,
            "carbon_g": 0.0,
            "containers": {},
            "ticks": [None, None],
        }
    hi = _cumulative_after(rows, ks, hi_k)
    if lo_k < ks[0]:  # the interval starts at or before the first kept tick
        lo = _ZERO if rows[ks[0]].get("ticks") == 1 else None
    else:
        lo = _cumulative_after(rows, ks, lo_k)
    if hi is None or lo is None:
        return None
    conts = {}
    for c, (e, g) in hi["containers"].items():
        e0, g0 = lo["containers"].get(c, (0, 0))
        conts[c] = {"energy_j": mj_to_j(e - e0), "carbon_g": ug_to_g(g - g0)}
    return {
        "t1": utc_from_us((lo_k + 1) * tick_us).isoformat(),
        "t2": utc_from_us((hi_k + 1) * tick_us).isoformat(),
        "energy_j": mj_to_j(hi["energy_mj"] - lo["energy_mj"]),
        "carbon_g": ug_to_g(hi["carbon_ug"] - lo["carbon_ug"]),
        "containers": conts,
        "ticks": [lo_k + 1, hi_k],
    }


def _cumulative_after(rows: Mapping[int, dict[str, Any]], ks: list[int], k: int
                      ) -> dict[str, Any] | None:  # fmt: skip
    """The cumulative counters after tick ``k`` (``ks[0] <= k <= ks[-1]``): its row, or
    the row of the newest kept tick before it when the rows' ``ticks`` (the app's
    accounted ticks) show that none was accounted in between (the clock skipped empty
    ticks). None when that cannot be shown (a row missing: a hole in the history)."""
    i = bisect_right(ks, k) - 1
    p = ks[i]
    if p == k:
        return rows[p]
    a, b = rows[p].get("ticks"), rows[ks[i + 1]].get("ticks")
    if a is not None and b is not None and b == a + 1:
        return rows[p]
    return None


def ledger_view(led: SiteLedger, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
    """The app's kept ledger entries with tick start in [t1, t2)."""
    log = led.entries.get(app)
    if log is None:
        return []
    a, b = t1.timestamp(), t2.timestamp()
    tick_us = led.clock.tick_us
    # the ticks that may start in [a, b) (one more each side), then the test on the
    # tick's start as its entry states it (``t_start``: k * tick_us / 1e6)
    k1, k2 = math.floor(a * 1e6 / tick_us) - 1, math.ceil(b * 1e6 / tick_us) + 1
    return [json.loads(v) for k, v in log.items(k1, k2) if a <= k * tick_us / 1e6 < b]


def _time(query: Mapping[str, str], name: str) -> datetime | None:
    """An ISO 8601 query parameter (``Z`` accepted, naive = UTC); ValueError if bad."""
    v = query.get(name)
    if not v:
        return None
    return parse_time(v)


def _interval(kind: ViewKind, query: Mapping[str, str]) -> tuple[datetime, datetime]:
    """The view's time interval; ValueError (-> 400) with the reason if it is bad."""
    if kind == "ledger":  # from/to are optional: everything kept so far
        t1 = _time(query, "from") or datetime.fromtimestamp(0, UTC)
        return t1, _time(query, "to") or datetime.now(UTC)
    lo, hi = _time(query, "t1"), _time(query, "t2")
    if lo is None or hi is None or hi < lo:
        raise ValueError("give t1 <= t2 as ISO 8601 times")
    return lo, hi


def authorized(authorization: str | None, key: str | None) -> bool:
    """Whether an ``Authorization`` header carries the internal key (always, without a
    key: unauthenticated, warned at start). Constant-time compare."""
    if key is None:
        return True
    scheme, _, token = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), key.encode())


def respond(
    kind: ViewKind,
    led: SiteLedger | None,
    app: str,
    query: Mapping[str, str],
    authorization: str | None = None,
    key: str | None = None,
) -> Answer:
    """One view request: (JSON body, HTTP status). 401 without the internal ``key`` as
    bearer token (when the site has one), 400 for bad times, 404 for an app without state
    (or, for counters, an interval outside the kept history)."""
    if not authorized(authorization, key):
        return {"error": "missing or wrong internal key (Authorization: Bearer)"}, 401
    unknown = {"error": f"no state for app {app!r}"}, 404
    if kind == "state":
        v = state_view(led, app) if led else None
        return (v, 200) if v is not None else unknown
    try:
        t1, t2 = _interval(kind, query)
    except ValueError as e:
        return {"error": str(e)}, 400
    if led is None or app not in led.state.apps:
        return unknown
    if kind == "ledger":
        return {"app": app, "entries": ledger_view(led, app, t1, t2)}, 200
    rows = led.counters.get(app)
    v = counters_view(led.clock.tick_us, t1, t2, RowsView(rows) if rows is not None else {})
    if v is None:
        first = rows.ticks()[0] if rows is not None and len(rows) else None
        since = (f" (kept from tick {first}, boundary "
                 f"{utc_from_us((first + 1) * led.clock.tick_us).isoformat()})"
                 if first is not None else "")  # fmt: skip
        return {"error": "interval outside the kept history, or a boundary of it at a "
                         f"tick whose counters are not kept{since}; the full history: "
                         "the ecovisor.ledger topic (ecovisor export)"}, 404
    return v, 200


@dataclass(frozen=True)
class Target:
    """Where a view request for an app goes: ``ledger`` (this worker owns its site; None
    while loading or for an unknown app), the site's internal ``key``, and ``forward``:
    the site's id when another worker of the group owns it (the request is routed there)."""

    ledger: SiteLedger | None
    key: str | None
    forward: str | None = None


def add_pages(app: Any, target: Callable[[str], Target]) -> None:
    """Mount the views on the Faust app ``app``; ``target(app_name)`` says which ledger
    answers. A site owned by another worker of the group: the request is routed to it
    (Faust's table router, by the ``snapshots`` table's key: the site); 503 while no
    worker owns it (a rebalance)."""
    from faust.exceptions import SameNode
    from faust.web import Request, View
    from faust.web.exceptions import ServiceUnavailable

    def page(kind: ViewKind) -> Callable[[View, Request, str], Any]:
        async def get(view: View, request: Request, app_name: str) -> Any:
            auth = request.headers.get("Authorization")
            t = target(app_name)
            if t.forward is not None:
                if not authorized(auth, t.key):
                    return view.json(
                        {"error": "missing or wrong internal key (Authorization: Bearer)"},
                        status=401,
                    )
                try:
                    return await app.router.route_req(
                        "snapshots", t.forward.encode(), view.web, request
                    )
                except (SameNode, ServiceUnavailable, KeyError):
                    return view.json(
                        {"error": f"site {t.forward!r} is moving between ledger workers; "
                                  "retry"}, status=503)  # fmt: skip
            body, status = respond(kind, t.ledger, app_name, request.query, auth, t.key)
            return view.json(body, status=status)

        return get

    for kind in ("state", "counters", "ledger"):
        app.page(f"/ecovisor/{kind}/{{app_name}}", name=f"ecovisor-{kind}")(page(kind))


def add_ready_page(app: Any, worker: Any) -> None:
    """Mount ``GET /ready``: 200 ``{"ready": true, ...}`` once the worker serves its share
    of the group (``worker.readiness()`` None), else 503 with the reason. Open (no key):
    it names no site or app, only how many sites and partitions the worker owns, so a
    probe (docker compose's healthcheck, an orchestrator's readiness probe) needs none."""
    from faust.web import Request, View

    @app.page("/ready", name="ecovisor-ready")
    async def ready(view: View, request: Request) -> Any:
        reason = worker.readiness()
        owned = worker.active_partitions() if reason is None else set()
        body = {"ready": reason is None, "reason": reason, "partitions": len(owned),
                "sites": sum(len(worker.sites.by_partition.get(p, ())) for p in owned)}
        return view.json(body, status=200 if reason is None else 503)

