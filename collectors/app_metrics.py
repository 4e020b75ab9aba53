"""Application performance metrics helper: latency, progress and functional units (R of
the Software Carbon Intensity, SCI = (E·I + M) per R), published as
``AppMetricsTelemetry`` on ``ecovisor/<site>/telemetry/app_metrics/<source>`` (QoS 1,
buffered through broker loss like every collector).

Usage inside an application::

    from collectors.app_metrics import AppMetrics
    m = AppMetrics.from_config("site.yaml", app="web", token=WEB_TOKEN).start()
    m.observe_latency(12.5)        # ms, one request
    m.add_units(1)                 # one request served
    m.set_progress(0.4)            # batch job 40 % done
    m.flush()                      # publish now (or call flush() on your own period)
    m.close()

It logs in to the site's MQTT broker as the app's principal (``app-<app>``, its token as
the password) and may publish only its own source ``app-<app>`` (the broker's ACL; the
bridge dead-letters app metrics from any other source). ``flush`` publishes the mean
latency since the last flush (and its p95 in ``extra.latency_p95_ms``), the last progress
and the cumulative functional units.
"""

from __future__ import annotations

import math
import threading
from typing import Any

from collectors.common import make_publisher
from collectors.publisher import Publisher
from ecovisor.contract.bus_access import app_metrics_source, app_username
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import config_path, load_config
from ecovisor.contract.telemetry import AppMetricsTelemetry


class AppMetrics:
    def __init__(self, publisher: Publisher, app: str) -> None:
        self.publisher, self.app = publisher, app
        self.source = app_metrics_source(app)
        self._lock = threading.Lock()
        self._latencies: list[float] = []
        self._progress: float | None = None
        self._units = 0.0
        self._units_seen = False
        self._extra: dict[str, float] = {}

    @classmethod
    def from_config(
        cls,
        path: str | None,
        app: str,
        token: str | None = None,
        cfg: EcovisorConfig | None = None,
    ) -> AppMetrics:
        """``token``: the app's own token (its MQTT password); default the one in the
        site file."""
        cfg = cfg or load_config(config_path(path))
        cfg.app(app)  # KeyError for an unknown app
        src = app_metrics_source(app)
        pub = make_publisher(cfg, "app_metrics", src, app_username(app), password=token)
        return cls(pub, app)

    def start(self, wait_s: float = 0.0) -> AppMetrics:
        self.publisher.start(wait_s)
        return self

    def observe_latency(self, ms: float) -> None:
        if not math.isfinite(ms) or ms < 0:
            raise ValueError(f"latency must be a finite number >= 0 ms, got {ms!r}")
        with self._lock:
            self._latencies.append(ms)

    def set_progress(self, fraction: float) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be within [0, 1], got {fraction!r}")
        with self._lock:
            self._progress = fraction

    def add_units(self, n: float = 1.0) -> None:
        if not math.isfinite(n) or n < 0:
            raise ValueError("functional units only grow")
        with self._lock:
            self._units += n
            self._units_seen = True

    def set_extra(self, name: str, value: float) -> None:
        with self._lock:
            self._extra[name] = float(value)

    def flush(self) -> Any:
        """Publish what was observed since the last flush; returns the message."""
        with self._lock:
            lat = self._latencies
            self._latencies = []
            extra = dict(self._extra)
            fields: dict[str, Any] = {"app": self.app, "progress": self._progress}
            if self._units_seen:
                fields["functional_units_total"] = self._units
        if lat:
            fields["latency_ms"] = sum(lat) / len(lat)
            s = sorted(lat)
            extra["latency_p95_ms"] = s[min(len(s) - 1, math.ceil(0.95 * len(s)) - 1)]
            extra["requests"] = float(len(lat))
        return self.publisher.publish(AppMetricsTelemetry, self.source, extra=extra, **fields)

    def close(self) -> None:
        self.publisher.close()
