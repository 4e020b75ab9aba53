"""Where the API's answers come from: the ledger worker's per-app state views (latest
tick, interval counters, ledger entries), behind the small ``StateSource`` interface.
``HttpStateSource`` reads them over loopback HTTP (docs/ledger.md)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import httpx
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError

from ecovisor.contract.notifications import TickData
from ecovisor.contract.operator_messages import describe_validation_error


class StateUnavailable(Exception):
    """The live state or counters cannot be read (ledger not reachable, no tick yet)."""


class LiveState(BaseModel):
    """An app's live state as the API needs it, normalised from the ledger's view."""

    model_config = ConfigDict(extra="forbid")

    app: str
    tick: int | None = Field(None, description="index of the latest closed tick")
    time: AwareDatetime | None = Field(None, description="end of the latest closed tick")
    data: TickData | None = Field(None, description="the latest tick's TickData")
    app_metrics: dict[str, float | None] = Field(
        default_factory=dict, description="latest app metrics (latency_ms, progress, ...)"
    )
    view: dict[str, Any] = Field(default_factory=dict, description="the ledger's raw view")


class IntervalCounter(BaseModel):
    energy_j: float
    carbon_g: float


class Counters(BaseModel):
    """Energy and carbon of an app and each container between two tick boundaries."""

    app: str
    t1: AwareDatetime = Field(description="tick boundary actually used for the start")
    t2: AwareDatetime = Field(description="tick boundary actually used for the end")
    energy_j: float
    carbon_g: float
    containers: dict[str, IntervalCounter] = Field(default_factory=dict)


class StateSource(Protocol):
    """Read access to the ledger's per-app state. The production implementation is
    ``HttpStateSource``; tests use an in-memory double (tests/fakes/api.py)."""

    async def state(self, app: str) -> LiveState: ...

    async def counters(self, app: str, t1: datetime, t2: datetime) -> Counters: ...

    async def ledger(self, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]: ...

    async def aclose(self) -> None: ...


def _first(d: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        if k in d and d[k] is not None:
            return d[k]
    return None


def live_state_from_view(app: str, view: dict[str, Any]) -> LiveState:
    """Normalise the ledger's ``/ecovisor/state/{app}`` JSON (docs/ledger.md). Tolerant
    of where the last TickData sits so the API does not break on an additive change."""
    data = _first(view, "tick_data", "last_tick_data", "data", "last_tick")
    tick_data = None
    if isinstance(data, dict):
        try:
            tick_data = TickData.model_validate(data)
        except ValidationError as e:
            why = describe_validation_error(e)
            raise StateUnavailable(f"ledger state of {app!r} has no valid TickData: {why}") from e
    tick = _first(view, "tick", "last_tick_index")
    metrics = dict(_first(view, "app_metrics", "metrics") or {})
    if isinstance(metrics.get("extra"), dict):  # AppMetricsTelemetry.extra, flattened
        # the named metrics win over an extra of the same name (one name, one value)
        metrics = {**metrics.pop("extra"), **metrics}
    return LiveState(
        app=app,
        tick=tick if isinstance(tick, int) else None,
        time=_first(view, "time", "tick_end", "t_end"),
        data=tick_data,
        app_metrics={k: v for k, v in metrics.items() if isinstance(v, int | float | None)},
        view=view,
    )


@dataclass(frozen=True)
class Readiness:
    """The ledger worker's ``GET /ready`` (docs/ledger.md): ``ready`` with the ``sites``
    it owns, else ``reason`` (its own, or why it did not answer: ``answered`` False)."""

    ready: bool
    sites: int = 0
    reason: str = ""
    answered: bool = True


READY_MAX_BYTES = 64 * 1024  # a /ready body is ~80 B; more is not a ledger's answer


def ledger_readiness(base_url: str, timeout: float = 2.0) -> Readiness:
    """``GET /ready`` of the ledger at ``base_url``, within ``timeout`` s in all (not per
    read: a server trickling bytes is cut off) and READY_MAX_BYTES. Never raises: its
    callers (``ecovisor status``, the replay pipeline's start) report it."""
    deadline = time.monotonic() + timeout
    url = f"{base_url.rstrip('/')}/ready"
    try:  # (the ledger is local or internal: no proxy from the environment)
        with httpx.stream("GET", url, timeout=timeout, trust_env=False) as r:
            raw = bytearray()
            for chunk in r.iter_bytes():
                raw += chunk
                if len(raw) > READY_MAX_BYTES:
                    return Readiness(False, reason=f"/ready answered more than "
                                     f"{READY_MAX_BYTES} bytes", answered=False)  # fmt: skip
                if time.monotonic() > deadline:
                    return Readiness(False, reason=f"/ready did not answer within "
                                     f"{timeout:g} s", answered=False)  # fmt: skip
        body = json.loads(raw)
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return Readiness(False, reason=f"/ready did not answer ({type(e).__name__})",
                         answered=False)  # fmt: skip
    if not isinstance(body, dict):
        return Readiness(False, reason=f"/ready answered HTTP {r.status_code} without a "
                         "readiness", answered=False)  # fmt: skip
    if r.status_code == 200 and body.get("ready") is True:
        n = body.get("sites")
        return Readiness(True, sites=n if isinstance(n, int) else 0)
    return Readiness(False, reason=str(body.get("reason") or f"HTTP {r.status_code}")[:200])


class HttpStateSource:
    """The ledger worker's state views over loopback HTTP, with the site's internal key
    as bearer token (the views answer 401 without it when the site has one)."""

    def __init__(self, base_url: str, timeout: float = 5.0, key: str | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        # the site's internal key (contract.environment.internal_key, passed by main())
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout, headers=headers,
                                       trust_env=False)  # internal: no proxy from the env

    async def _get(self, path: str, params: dict[str, str] | None = None) -> Any:
        try:
            r = await self._http.get(path, params=params)
        except httpx.HTTPError as e:
            raise StateUnavailable(f"ledger state views not reachable at {self.base_url}") from e
        if r.status_code >= 400:
            try:
                why = str(r.json().get("error", r.text))
            except (ValueError, AttributeError):
                why = r.text
            raise StateUnavailable(f"ledger: {why[:200]}")
        return r.json()

    async def state(self, app: str) -> LiveState:
        return live_state_from_view(app, await self._get(f"/ecovisor/state/{app}"))

    async def counters(self, app: str, t1: datetime, t2: datetime) -> Counters:
        raw = await self._get(
            f"/ecovisor/counters/{app}", {"t1": t1.isoformat(), "t2": t2.isoformat()}
        )
        try:
            return Counters.model_validate({"app": app, **raw})
        except ValidationError as e:
            why = describe_validation_error(e)
            raise StateUnavailable(f"ledger counters for {app!r} unreadable: {why}") from e

    async def ledger(self, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
        raw = await self._get(
            f"/ecovisor/ledger/{app}", {"from": t1.isoformat(), "to": t2.isoformat()}
        )
        entries = raw.get("entries", raw) if isinstance(raw, dict) else raw
        return list(entries)

    async def aclose(self) -> None:
        await self._http.aclose()
