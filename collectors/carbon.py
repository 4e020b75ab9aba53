"""Grid carbon intensity collector: publishes gCO2eq/kWh (average or marginal) every tick.

Source types (``site.carbon.type``):
- ``synthetic``: a SYNTHETIC diurnal signal (cosine, lowest at "noon"), labelled as such
  in logs and docs; for demos only.
- ``csv`` / ``electricitymaps_csv``: trace replay. ``electricitymaps_csv`` reads the
  Electricity Maps data-portal CSV as downloaded (``Datetime (UTC)``, ``Carbon Intensity
  gCO₂eq/kWh (direct)`` / ``(LCA)``); ``csv`` any ``timestamp, value`` file in gCO2eq/kWh
  or lbs/MWh. Hourly values hold until the next sample (step).
- ``electricitymaps``, ``watttime``, ``ukci``: live APIs polled every ``poll_s`` over
  HTTP (httpx), retries with exponential backoff (tenacity's ``wait_exponential``), API
  keys from the environment, the last good value re-published with ``stale: true`` after
  ``stale_after_s``, forecasts published where the provider has them.

Run: ``python -m collectors.carbon --config site.yaml``. See docs/collectors/carbon.md.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Generator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
import numpy as np
from pydantic import Field, model_validator
from tenacity import RetryCallState, wait_exponential

from collectors import trace
from collectors.common import (
    Options,
    RefusedValue,
    SourceKind,
    cli_main,
    one_line,
    refusal,
    require,
    run_source,
)
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.envelope import parse_time, utcnow
from ecovisor.contract.site_config import SourceConfig
from ecovisor.contract.telemetry import CarbonTelemetry
from ecovisor.core.units import lbs_per_mwh_to_g_per_kwh

log = logging.getLogger("ecovisor.collectors.carbon")

Signal = Literal["average", "marginal"]
EMAPS_TIME = "Datetime (UTC)"
EMAPS_DIRECT = "Carbon Intensity gCO₂eq/kWh (direct)"
EMAPS_LCA = "Carbon Intensity gCO₂eq/kWh (LCA)"

# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


class _Common(Options):
    tick_s: float | None = Field(None, gt=0, description="publish period; default tick_s")


class SyntheticOptions(_Common):
    mean: float = Field(250.0, ge=0)
    amplitude: float = Field(120.0, ge=0)
    period_s: float = Field(86400.0, gt=0, description="one synthetic 'day'")
    phase_s: float = Field(0.0, description="shift; 0 starts at 'midnight' (the peak)")
    signal: Signal = "average"

    @model_validator(mode="after")
    def _non_negative(self) -> SyntheticOptions:
        if self.amplitude > self.mean:
            raise ValueError("amplitude must be <= mean (intensity cannot go negative)")
        return self


class CsvOptions(_Common, trace.ReplayOptions, trace.CsvColumns):
    path: str | list[str]
    unit: Literal["g_per_kwh", "lbs_per_mwh"] = "g_per_kwh"
    signal: Signal = "average"
    forecast_points: int = Field(
        0, ge=0, le=trace.MAX_FORECAST_POINTS, description="next trace points as forecast"
    )


class EmapsCsvOptions(CsvOptions):
    time_column: str | int = EMAPS_TIME
    value_column: str | int = EMAPS_DIRECT
    basis: Literal["direct", "lca"] | None = Field(None, description="picks the value column")

    @model_validator(mode="after")
    def _basis(self) -> EmapsCsvOptions:
        if self.basis is not None:
            col = EMAPS_DIRECT if self.basis == "direct" else EMAPS_LCA
            object.__setattr__(self, "value_column", col)
        return self


class _Live(_Common):
    base_url: str = Field(description="the provider's API base URL, from its documentation")
    poll_s: float = Field(300.0, gt=0)
    timeout_s: float = Field(10.0, gt=0)
    retry_min_s: float = Field(2.0, gt=0)
    retry_max_s: float = Field(300.0, gt=0)
    stale_after_s: float = Field(1800.0, gt=0)
    forecast: bool = True

    def url(self, path: str) -> str:
        return self.base_url.rstrip("/") + path


class ElectricityMapsOptions(_Live):
    zone: str
    api_key_env: str = "ELECTRICITYMAPS_API_KEY"


class WattTimeOptions(_Live):
    region: str
    signal_type: str = "co2_moer"
    username_env: str = "WATTTIME_USERNAME"
    password_env: str = "WATTTIME_PASSWORD"


class UkciOptions(_Live):
    pass


SOURCE = SourceKind(
    "carbon",
    {
        "synthetic": SyntheticOptions,
        "csv": CsvOptions,
        "electricitymaps_csv": EmapsCsvOptions,
        "electricitymaps": ElectricityMapsOptions,
        "watttime": WattTimeOptions,
        "ukci": UkciOptions,
    },
)
validate_options = SOURCE.validate  # for ``ecovisor config check``


# --------------------------------------------------------------------------------------
# Readings and sources
# --------------------------------------------------------------------------------------


Forecast = tuple[tuple[datetime, float], ...]


@dataclass(frozen=True)
class Reading:
    intensity_g_per_kwh: float
    signal: Signal = "average"
    forecast: Forecast = ()


class CarbonSource(ABC):
    @abstractmethod
    def read(self, elapsed_s: float, now: datetime) -> Reading:
        """The current intensity; raises on failure (live sources)."""

    def close(self) -> None:  # noqa: B027 - optional hook: only live sources hold a client
        """Release what the source holds (nothing by default)."""


@dataclass
class Synthetic(CarbonSource):
    """SYNTHETIC diurnal signal: mean + amplitude x cos(2π t / period), peak at t = 0."""

    opts: SyntheticOptions

    def read(self, elapsed_s: float, now: datetime) -> Reading:
        o = self.opts
        x = 2 * math.pi * (elapsed_s + o.phase_s) / o.period_s
        return Reading(max(0.0, o.mean + o.amplitude * math.cos(x)), o.signal)


@dataclass
class TraceReplay(trace.TraceReplay, CarbonSource):
    """Step replay of (epoch s, gCO2eq/kWh) samples with offset, speed-up and loop; the
    next ``forecast_points`` samples are published as a (perfect) forecast."""

    signal: Signal = "average"
    forecast_points: int = 0
    step: bool = field(default=True, kw_only=True)

    def read(self, elapsed_s: float, now: datetime) -> Reading:
        fc = tuple(
            (now + timedelta(seconds=s), v)
            for s, v in self.upcoming(elapsed_s, self.forecast_points)
        )
        return Reading(self.value_at(elapsed_s), self.signal, fc)


def read_csv_trace(opts: CsvOptions) -> TraceReplay:
    secs, values = trace.read_csv("carbon", opts.path, opts)
    if opts.unit == "lbs_per_mwh":
        values = np.array([lbs_per_mwh_to_g_per_kwh(v) for v in values])
    if np.any(values < 0):
        raise ConfigError("site.carbon: negative carbon intensity in the trace")
    return TraceReplay(
        secs,
        values,
        trace.start_time("carbon", secs, opts),
        opts.speedup,
        opts.loop,
        opts.signal,
        opts.forecast_points,
    )


class LiveError(RuntimeError):
    pass


def checked(reading: Reading) -> Reading:
    """``reading`` as ``CarbonTelemetry`` takes it. An intensity the contract refuses
    (negative, NaN, above its bound) raises RefusedValue, a failed read, so it is never
    kept as the last good value; a refused forecast is dropped, like a failed forecast
    request, and the value kept."""
    require(CarbonTelemetry, intensity_g_per_kwh=reading.intensity_g_per_kwh)
    why = refusal(CarbonTelemetry, "forecast", list(reading.forecast))
    if why is not None:
        log.info("carbon forecast refused by the contract (%s): published without one", why)
        return replace(reading, forecast=())
    return reading


def optional_forecast(provider: str, fetch: Callable[[], Forecast]) -> Forecast:
    """A provider's forecast, or none when fetching it fails: logged, not fatal, since
    the current value was read."""
    try:
        return fetch()
    except (httpx.HTTPError, ValueError, KeyError) as e:
        log.info("%s forecast unavailable: %s", provider, one_line(e))
        return ()


class LiveSource(CarbonSource):
    """A provider's API over HTTP; its httpx client is closed with the source."""

    def __init__(self, http: httpx.Client) -> None:
        self.http = http

    def close(self) -> None:
        self.http.close()


class ElectricityMaps(LiveSource):
    """Electricity Maps API v3: ``/carbon-intensity/latest`` and ``/forecast``
    (``auth-token`` header). Average (flow-traced) intensity."""

    def __init__(self, opts: ElectricityMapsOptions, http: httpx.Client) -> None:
        super().__init__(http)
        self.opts = opts
        self.key = os.environ.get(opts.api_key_env)
        if not self.key:
            raise ConfigError(f"site.carbon: environment variable {opts.api_key_env} is not set")

    def _get(self, path: str) -> dict[str, Any]:
        r = self.http.get(
            self.opts.url(path),
            params={"zone": self.opts.zone},
            headers={"auth-token": self.key or ""},
        )
        r.raise_for_status()
        return r.json()

    def read(self, elapsed_s: float, now: datetime) -> Reading:
        latest = self._get("/carbon-intensity/latest")
        value = latest.get("carbonIntensity")
        if value is None:
            raise LiveError("electricitymaps: no carbonIntensity in the response")
        fc = optional_forecast("electricitymaps", self._forecast) if self.opts.forecast else ()
        return Reading(float(value), "average", fc)

    def _forecast(self) -> Forecast:
        return tuple(
            (parse_time(p["datetime"]), float(p["carbonIntensity"]))
            for p in self._get("/carbon-intensity/forecast").get("forecast", [])
            if p.get("carbonIntensity") is not None
        )


class WattTimeLogin(httpx.Auth):
    """WattTime's bearer token as an httpx auth flow: log in (basic auth on ``/login``)
    when there is no token, and once more when a request comes back 401 (tokens expire
    after 30 min), then resend it."""

    requires_response_body = True

    def __init__(self, login_url: str, user: str, password: str) -> None:
        self.login_url = login_url
        self.basic = httpx.BasicAuth(user, password)
        self.token: str | None = None

    def _login(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # the original request's extensions carry the client's timeout
        login = httpx.Request("GET", self.login_url, extensions=request.extensions)
        response = yield next(self.basic.auth_flow(login))
        response.raise_for_status()
        self.token = response.json()["token"]

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        if self.token is None:
            yield from self._login(request)
        request.headers["Authorization"] = f"Bearer {self.token}"
        response = yield request
        if response.status_code == 401:
            yield from self._login(request)
            request.headers["Authorization"] = f"Bearer {self.token}"
            yield request


class WattTime(LiveSource):
    """WattTime API v3: ``/login`` (basic auth -> bearer token) and ``/v3/forecast``
    (marginal emissions, lbs/MWh, converted to gCO2eq/kWh). The current value is the
    forecast point in force now."""

    def __init__(self, opts: WattTimeOptions, http: httpx.Client) -> None:
        super().__init__(http)
        self.opts = opts
        user = os.environ.get(opts.username_env)
        password = os.environ.get(opts.password_env)
        if not user or not password:
            raise ConfigError(
                f"site.carbon: set {opts.username_env} and {opts.password_env} for WattTime"
            )
        self.auth = WattTimeLogin(opts.url("/login"), user, password)

    def _forecast(self) -> dict[str, Any]:
        r = self.http.get(
            self.opts.url("/v3/forecast"),
            params={"region": self.opts.region, "signal_type": self.opts.signal_type},
            auth=self.auth,
        )
        if r.status_code == 401:
            raise LiveError("watttime: unauthorised after a fresh login")
        r.raise_for_status()
        return r.json()

    def read(self, elapsed_s: float, now: datetime) -> Reading:
        data = self._forecast()
        units = data.get("meta", {}).get("units", "lbs_co2_per_mwh")
        if units != "lbs_co2_per_mwh":
            raise LiveError(f"watttime: unsupported units {units!r}")
        pts = [
            (parse_time(p["point_time"]), lbs_per_mwh_to_g_per_kwh(float(p["value"])))
            for p in data.get("data", [])
        ]
        if not pts:
            raise LiveError("watttime: empty forecast")
        current = pts[0][1]
        for t, v in pts:
            if t <= now:
                current = v
        future = tuple((t, v) for t, v in pts if t > now) if self.opts.forecast else ()
        return Reading(current, "marginal", future)


class UkCarbonIntensity(LiveSource):
    """UK Carbon Intensity API (no key): ``/intensity`` (actual, else forecast) and
    ``/intensity/{from}/fw24h`` for the 24 h forecast. Average intensity of GB."""

    def __init__(self, opts: UkciOptions, http: httpx.Client) -> None:
        super().__init__(http)
        self.opts = opts

    def _get(self, path: str) -> list[dict[str, Any]]:
        r = self.http.get(self.opts.url(path))
        r.raise_for_status()
        return r.json()["data"]

    def read(self, elapsed_s: float, now: datetime) -> Reading:
        data = self._get("/intensity")
        if not data:
            raise LiveError("ukci: empty data")
        i = data[0]["intensity"]
        value = i.get("actual") if i.get("actual") is not None else i.get("forecast")
        if value is None:
            raise LiveError("ukci: neither actual nor forecast intensity")
        fc = optional_forecast("ukci", lambda: self._forecast(now)) if self.opts.forecast else ()
        return Reading(float(value), "average", fc)

    def _forecast(self, now: datetime) -> Forecast:
        stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%MZ")
        return tuple(
            (parse_time(p["from"]), float(p["intensity"]["forecast"]))
            for p in self._get(f"/intensity/{stamp}/fw24h")
            if p["intensity"].get("forecast") is not None
        )


# --------------------------------------------------------------------------------------
# Polling with backoff and staleness (pure: times passed in)
# --------------------------------------------------------------------------------------


@dataclass
class Poller:
    poll_s: float
    retry_min_s: float
    retry_max_s: float
    stale_after_s: float
    next_at: float = 0.0
    failures: int = 0
    last: Reading | None = None
    last_ok_at: float | None = None
    errors: list[str] = field(default_factory=list)

    def due(self, now: float) -> bool:
        return now >= self.next_at

    def success(self, now: float, reading: Reading) -> None:
        self.last, self.last_ok_at, self.failures = reading, now, 0
        self.next_at = now + self.poll_s

    def failure(self, now: float, reason: str) -> float:
        """Schedule a retry with tenacity's exponential backoff (``retry_min_s`` doubling
        per consecutive failure, at most ``retry_max_s``); returns the delay. The retry is
        scheduled, not slept: the collector keeps publishing the last good value."""
        self.failures += 1
        attempt = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
        attempt.attempt_number = self.failures
        delay = wait_exponential(multiplier=self.retry_min_s, max=self.retry_max_s)(attempt)
        self.next_at = now + delay
        self.errors = (self.errors + [reason])[-10:]
        return delay

    def current(self, now: float) -> tuple[Reading, bool] | None:
        if self.last is None or self.last_ok_at is None:
            return None
        return self.last, now - self.last_ok_at > self.stale_after_s


class CarbonCollector:
    def __init__(
        self,
        source: CarbonSource,
        publish: Callable[..., object],
        source_id: str,
        poller: Poller | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.source, self.publish, self.source_id = source, publish, source_id
        self.poller = poller  # None: a local source read every tick
        self.clock, self.wall = clock, wall
        self.t0 = clock()

    def tick(self) -> object:
        now, wall = self.clock(), self.wall()
        if self.poller is None:
            try:
                reading, stale = checked(self.source.read(now - self.t0, wall)), False
            except RefusedValue as e:
                log.warning("carbon source: %s; nothing published this tick", e)
                return None
        else:
            if self.poller.due(now):
                try:
                    self.poller.success(now, checked(self.source.read(now - self.t0, wall)))
                # RefusedValue is a ValueError: a value out of the contract is a failed read
                except (httpx.HTTPError, LiveError, ValueError, KeyError, TypeError) as e:
                    d = self.poller.failure(now, one_line(e))
                    log.warning("carbon source failed (%s); retry in %.3g s", one_line(e), d)
            cur = self.poller.current(now)
            if cur is None:
                return None  # nothing good yet
            reading, stale = cur
        return self.publish(
            CarbonTelemetry,
            self.source_id,
            intensity_g_per_kwh=reading.intensity_g_per_kwh,
            signal=reading.signal,
            stale=stale,
            forecast=list(reading.forecast),
        )

    def close(self) -> None:
        self.source.close()


def build(
    src: SourceConfig, http: httpx.Client | None = None
) -> tuple[CarbonSource, Poller | None]:
    opts = validate_options(src)
    if isinstance(opts, SyntheticOptions):
        log.warning("carbon source is SYNTHETIC (a cosine diurnal signal), not grid data")
        return Synthetic(opts), None
    if isinstance(opts, CsvOptions):
        return read_csv_trace(opts), None
    assert isinstance(opts, _Live)
    client = http or httpx.Client(timeout=opts.timeout_s)
    poller = Poller(opts.poll_s, opts.retry_min_s, opts.retry_max_s, opts.stale_after_s)
    if isinstance(opts, ElectricityMapsOptions):
        return ElectricityMaps(opts, client), poller
    if isinstance(opts, WattTimeOptions):
        return WattTime(opts, client), poller
    assert isinstance(opts, UkciOptions)
    return UkCarbonIntensity(opts, client), poller


def _collector(
    src: SourceConfig, publish: Callable[..., object], source_id: str
) -> CarbonCollector:
    source, poller = build(src)
    return CarbonCollector(source, publish, source_id, poller)


def _run(cfg: EcovisorConfig, args: argparse.Namespace, stop: threading.Event) -> None:
    run_source(cfg, stop, SOURCE, _collector)


def main(argv: list[str] | None = None) -> int:
    return cli_main("carbon", argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
