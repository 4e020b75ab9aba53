"""The site's own carbon signal as the carbon-API emulations serve it (docs/emulation.md):
the intensity the ledger booked per tick, read from the ledger's state views (the latest
tick's ``TickData.grid_carbon_g_per_kwh``, and each kept ledger entry's
``intensity_g_per_kwh``), merged into fixed periods (time-weighted mean) so that a
provider-shaped answer has a provider-sized number of points.

Forecasts: the carbon collector publishes ``CarbonTelemetry.forecast`` where its source
has one; the ledger keeps the newest one (``SiteLedger.forecast_view``) in every app's
state view (``carbon_forecast``), and ``forecast`` reads it from there. Without one, the
forecast routes answer their provider's empty shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi import HTTPException

from ecovisor.api.state_source import StateUnavailable
from ecovisor.api.wiring import Wiring
from ecovisor.contract.app_config import AppConfig

PERIOD_S = 300.0  # the emulations' data period: 5 minutes (or the tick, if longer)
NO_FORECAST = (
    "the site's carbon source published no forecast (docs/emulation.md): no forecast points"
)


@dataclass(frozen=True)
class Point:
    """One period of the booked signal: start, length, mean gCO2eq/kWh, estimated."""

    start: datetime
    seconds: float
    value: float
    estimated: bool


async def latest(ctx: Wiring, me: AppConfig) -> tuple[Point, datetime]:
    """The latest closed tick's intensity and the time it was booked (the tick's end),
    or 503 with the reason."""
    try:
        s = await ctx.state.state(me.id)
    except StateUnavailable as e:
        raise HTTPException(503, str(e)) from e
    if s.data is None or s.time is None:
        raise HTTPException(503, f"no tick has closed yet for app {me.id!r}")
    d = s.data
    start = s.time - timedelta(seconds=d.tick_s)
    return Point(start, d.tick_s, d.grid_carbon_g_per_kwh, d.estimated), s.time


@dataclass(frozen=True)
class Forecast:
    """The newest forecast the site's carbon (gCO2eq/kWh) or solar (W) source published."""

    published_at: datetime | None
    source: str | None
    signal: str | None
    points: list[tuple[datetime, float]]


def forecast_of_view(view: dict[str, Any], kind: str) -> Forecast:
    """The kept ``kind`` forecast of a ledger state view (malformed points left out)."""
    raw = view.get(f"{kind}_forecast")
    if not isinstance(raw, dict):
        return Forecast(None, None, None, [])
    points = []
    for p in raw.get("points") or ():
        try:
            at, v = datetime.fromisoformat(p[0]), float(p[1])
        except (TypeError, ValueError, IndexError):
            continue
        if at.tzinfo is not None and v >= 0 and v == v:
            points.append((at, v))
    try:
        published = datetime.fromisoformat(raw["published_at"])
    except (KeyError, TypeError, ValueError):
        published = None
    source, signal = raw.get("source"), raw.get("signal")
    return Forecast(published, source if isinstance(source, str) else None,
                    signal if isinstance(signal, str) else None, sorted(points))  # fmt: skip


async def forecast(
    ctx: Wiring, me: AppConfig, since: datetime | None = None, kind: str = "carbon"
) -> Forecast:
    """The kept ``kind`` (carbon, solar) forecast, its points from ``since`` on (503
    without state)."""
    try:
        s = await ctx.state.state(me.id)
    except StateUnavailable as e:
        raise HTTPException(503, str(e)) from e
    f = forecast_of_view(s.view, kind)
    if since is not None:
        f = Forecast(f.published_at, f.source, f.signal, [p for p in f.points if p[0] >= since])
    return f


def _entry(e: Any) -> tuple[float, float, float, bool] | None:
    """(t_start epoch s, tick_s, intensity, estimated) of a ledger entry, or None for a
    row without them."""
    if not isinstance(e, dict):
        return None
    try:
        t, dt, v = float(e["t_start"]), float(e["tick_s"]), float(e["intensity_g_per_kwh"])
    except (KeyError, TypeError, ValueError):
        return None
    if dt <= 0 or v < 0 or v != v or t != t:
        return None
    return t, dt, v, bool(e.get("estimated", False))


def periods(entries: list[Any], period_s: float = PERIOD_S) -> list[Point]:
    """Ledger entries merged into periods of ``max(period_s, tick_s)`` aligned to the
    epoch, each the time-weighted mean intensity of the ticks starting in it."""
    acc: dict[tuple[float, float], list[float]] = {}  # (start, size) -> [Σ v·dt, Σ dt, est]
    for e in entries:
        row = _entry(e)
        if row is None:
            continue
        t, dt, v, est = row
        size = max(period_s, dt)
        a = acc.setdefault(((t // size) * size, size), [0.0, 0.0, 0.0])
        a[0] += v * dt
        a[1] += dt
        a[2] = max(a[2], float(est))
    return [
        Point(datetime.fromtimestamp(start, UTC), size, a[0] / a[1], bool(a[2]))
        for (start, size), a in sorted(acc.items())
    ]


async def history(
    ctx: Wiring, me: AppConfig, t1: datetime, t2: datetime, period_s: float = PERIOD_S
) -> list[Point]:
    """The booked signal between t1 and t2 in periods (none when t2 <= t1), or 503."""
    if t2 <= t1:
        return []
    try:
        entries = await ctx.state.ledger(me.id, t1, t2)
    except StateUnavailable as e:
        raise HTTPException(503, str(e)) from e
    return [p for p in periods(entries, period_s) if t1 <= p.start < t2]


def percentile(value: float, sample: list[float]) -> float:
    """Mid-rank percentile (0..100) of ``value`` among ``sample`` plus itself."""
    below = sum(1 for v in sample if v < value)
    equal = sum(1 for v in sample if v == value) + 1
    return 100.0 * (below + 0.5 * equal) / (len(sample) + 1)


def granularity(seconds: float) -> str:
    """The Electricity Maps ``temporalGranularity`` nearest above a period length."""
    for limit, name in ((300, "5_minutes"), (900, "15_minutes"), (3600, "hourly")):
        if seconds <= limit + 1e-9:
            return name
    return "daily"
