"""Solar collector: publishes the site array's AC power and a cumulative energy counter.

Source types (``site.solar.type``):
- ``pvanalytics``: measured NREL PV power shipped with the pvanalytics package
  (``serf_east_15min_ac_power.csv`` by default: 15 min, W, UTC-07:00), replayed.
- ``csv``: any trace ``timestamp, value`` in W, or W/m² with ``area_m2`` x ``efficiency``.
- ``pvlib``: a PV model (pvlib ModelChain) of an array of CEC modules and a CEC inverter
  at a tilt/azimuth, driven by pvlib's bundled NREL TMY3 files or a user TMY3 file.
- ``sunspec``: a real inverter over Modbus TCP through pysunspec2 (SunSpec models
  101-103/111-113 or 701).

Replays map trace time = ``start`` (or the first sample) + ``offset_s`` + elapsed wall
time x ``speedup``, interpolate linearly, loop at the end, clip negatives to 0 and scale
by ``scale`` or to ``nameplate_w`` (trace maximum -> nameplate).

Run: ``python -m collectors.solar --config site.yaml``. See docs/collectors/solar.md.
"""

from __future__ import annotations

import argparse
import copy
import logging
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field, model_validator

from collectors import trace
from collectors.common import Options, SourceKind, cli_main, one_line, refusal, require, run_source
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.site_config import SourceConfig
from ecovisor.contract.telemetry import SolarTelemetry

log = logging.getLogger("ecovisor.collectors.solar")


# --------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------


class _Replay(trace.ReplayOptions):
    scale: float | None = Field(None, gt=0, description="multiply every value")
    nameplate_w: float | None = Field(None, gt=0, description="rescale: trace max -> this W")
    tick_s: float | None = Field(None, gt=0, description="default: site.shape.tick_s")
    forecast_points: int = Field(
        0, ge=0, le=trace.MAX_FORECAST_POINTS, description="next trace points as forecast"
    )

    @model_validator(mode="after")
    def _one_scaling(self) -> _Replay:
        if self.scale is not None and self.nameplate_w is not None:
            raise ValueError("give scale or nameplate_w, not both")
        return self


class CsvOptions(_Replay, trace.CsvColumns):
    path: str
    unit: Literal["W", "W/m2"] = "W"
    area_m2: float | None = Field(None, gt=0)
    efficiency: float = Field(0.2, gt=0, le=1)

    @model_validator(mode="after")
    def _area(self) -> CsvOptions:
        if self.unit == "W/m2" and self.area_m2 is None:
            raise ValueError("unit W/m2 needs area_m2 (and efficiency, default 0.2)")
        return self


class PvanalyticsOptions(_Replay):
    file: str = "serf_east_15min_ac_power.csv"


class PvlibOptions(_Replay):
    tmy: str = Field("723170TYA.CSV", description="a TMY3 file in pvlib/data or a path")
    module: str = "Canadian_Solar_Inc__CS5P_220M"
    inverter: str = "ABB__MICRO_0_25_I_OUTD_US_208__208V_"
    module_library: Literal["CECMod", "SandiaMod"] = "CECMod"
    modules_per_string: int = Field(1, ge=1)
    strings: int = Field(1, ge=1)
    surface_tilt: float = Field(20.0, ge=0, le=90)
    surface_azimuth: float = Field(180.0, ge=0, lt=360)


class SunSpecOptions(Options):
    host: str
    port: int = Field(502, ge=1, le=65535)
    slave_id: int = Field(1, ge=0, le=247)
    timeout_s: float = Field(5.0, gt=0)
    tick_s: float | None = Field(None, gt=0)


SOURCE = SourceKind(
    "solar",
    {
        "csv": CsvOptions,
        "pvanalytics": PvanalyticsOptions,
        "pvlib": PvlibOptions,
        "sunspec": SunSpecOptions,
    },
)
validate_options = SOURCE.validate  # for ``ecovisor config check``


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


class SolarSource(ABC):
    @abstractmethod
    def read(self, elapsed_s: float) -> tuple[float, float | None]:
        """(AC power W, lifetime energy J if the device counts it) at ``elapsed_s``
        wall seconds after the collector started."""

    def forecast(self, elapsed_s: float) -> list[tuple[float, float]]:
        """Future (wall seconds from now, W) points where the source has them; a device
        has none (docs/collectors/solar.md)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook: only a device holds a connection
        """Release the source's connection, if any."""


@dataclass
class TraceReplay(trace.TraceReplay, SolarSource):
    """Linear replay of (epoch seconds, W) samples; negative values read as 0. The next
    ``forecast_points`` samples are published as a (perfect) forecast."""

    forecast_points: int = field(default=0, kw_only=True)

    @property
    def watts(self) -> np.ndarray:
        return self.values

    def read(self, elapsed_s: float) -> tuple[float, float | None]:
        return max(0.0, self.value_at(elapsed_s)), None

    def forecast(self, elapsed_s: float) -> list[tuple[float, float]]:
        return [(s, max(0.0, w)) for s, w in self.upcoming(elapsed_s, self.forecast_points)]


def _replay(secs: np.ndarray, watts: np.ndarray, opts: _Replay) -> TraceReplay:
    """A TraceReplay of sorted samples in W: clipped at 0, scaled, started per ``opts``."""
    vals = np.clip(watts, 0.0, None)
    if opts.nameplate_w is not None:
        peak = float(vals.max())
        if peak <= 0:
            raise ConfigError("solar trace has no positive value to scale to nameplate_w")
        vals = vals * (opts.nameplate_w / peak)
    elif opts.scale is not None:
        vals = vals * opts.scale
    start = trace.start_time("solar", secs, opts)
    return TraceReplay(
        secs, vals, start, opts.speedup, opts.loop, forecast_points=opts.forecast_points
    )


def replay_from_series(times: object, values: np.ndarray, opts: _Replay) -> TraceReplay:
    """A TraceReplay from a pandas DatetimeIndex/Series of times and values in W
    (a missing value reads as 0 W)."""
    secs = trace.epoch_seconds(times)
    return _replay(*trace.sorted_trace("solar", secs, values, fill_nan=0.0), opts)


def read_csv_trace(opts: CsvOptions) -> TraceReplay:
    secs, values = trace.read_csv("solar", opts.path, opts, fill_nan=0.0)
    if opts.unit == "W/m2":
        assert opts.area_m2 is not None
        values = values * opts.area_m2 * opts.efficiency
    return _replay(secs, values, opts)


def pvanalytics_path(name: str) -> Path:
    import pvanalytics

    p = Path(pvanalytics.__file__).parent / "data" / name
    if not p.is_file():
        raise ConfigError(f"site.solar.options.file: {name} is not in pvanalytics/data")
    return p


def read_pvanalytics(opts: PvanalyticsOptions) -> TraceReplay:
    csv = CsvOptions(path=str(pvanalytics_path(opts.file)), **opts.model_dump(exclude={"file"}))
    return read_csv_trace(csv)


def pvlib_ac_power(opts: PvlibOptions) -> tuple[object, np.ndarray]:
    """Hourly AC power (W) of the modelled array over the TMY3 year."""
    import pvlib
    from pvlib.location import Location
    from pvlib.modelchain import ModelChain
    from pvlib.pvsystem import PVSystem
    from pvlib.temperature import TEMPERATURE_MODEL_PARAMETERS

    data_dir = Path(pvlib.__file__).parent / "data"
    tmy = Path(opts.tmy) if Path(opts.tmy).is_file() else data_dir / opts.tmy
    if not tmy.is_file():
        raise ConfigError(f"site.solar.options.tmy: {opts.tmy} is neither a file nor in pvlib/data")
    modules = pvlib.pvsystem.retrieve_sam(opts.module_library)
    inverters = pvlib.pvsystem.retrieve_sam("cecinverter")
    if opts.module not in modules:
        raise ConfigError(
            f"site.solar.options.module: {opts.module!r} not in {opts.module_library}"
        )
    if opts.inverter not in inverters:
        raise ConfigError(f"site.solar.options.inverter: {opts.inverter!r} not in CEC inverters")
    weather, meta = pvlib.iotools.read_tmy3(str(tmy), coerce_year=2021, map_variables=True)
    loc = Location(meta["latitude"], meta["longitude"], altitude=meta["altitude"])
    system = PVSystem(
        surface_tilt=opts.surface_tilt,
        surface_azimuth=opts.surface_azimuth,
        module_parameters=modules[opts.module],
        inverter_parameters=inverters[opts.inverter],
        temperature_model_parameters=TEMPERATURE_MODEL_PARAMETERS["sapm"]["open_rack_glass_glass"],
        modules_per_string=opts.modules_per_string,
        strings_per_inverter=opts.strings,
    )
    mc = ModelChain(system, loc, aoi_model="physical", spectral_model="no_loss")
    mc.run_model(weather)
    ac = mc.results.ac.sort_index()
    return ac.index, ac.to_numpy(dtype=float)


def read_pvlib(opts: PvlibOptions) -> TraceReplay:
    times, values = pvlib_ac_power(opts)
    return replay_from_series(times, values, opts)


class InverterAdapter(ABC):
    """A real inverter: its AC power and lifetime energy counter."""

    @abstractmethod
    def read_inverter(self) -> tuple[float, float | None]:
        """(AC W, lifetime Wh or None)."""


INVERTER_MODELS = (101, 102, 103, 111, 112, 113, 701)


class SunSpecInverter(InverterAdapter, SolarSource):
    """A SunSpec inverter over Modbus TCP through pysunspec2."""

    def __init__(self, opts: SunSpecOptions) -> None:
        self.opts = opts
        self._dev = None
        self._model = None

    def _connect(self) -> None:
        import sunspec2.modbus.client as client

        dev = client.SunSpecModbusClientDeviceTCP(
            slave_id=self.opts.slave_id,
            ipaddr=self.opts.host,
            ipport=self.opts.port,
            timeout=self.opts.timeout_s,
        )
        dev.scan()
        for mid in INVERTER_MODELS:
            if mid in dev.models:
                self._dev, self._model = dev, dev.models[mid][0]
                log.info("sunspec %s:%d: inverter model %d", self.opts.host, self.opts.port, mid)
                return
        dev.close()
        raise RuntimeError(f"no SunSpec inverter model ({INVERTER_MODELS}) on the device")

    def read_inverter(self) -> tuple[float, float | None]:
        if self._model is None:
            self._connect()
        m = self._model
        try:
            m.read()  # type: ignore[union-attr]
        except Exception:
            self.close()  # reconnect and rescan next time
            raise
        pts = m.points  # type: ignore[union-attr]
        w = pts["W"].cvalue
        wh_pt = pts.get("WH") or pts.get("TotWhInj")
        wh = wh_pt.cvalue if wh_pt is not None else None
        return max(0.0, float(w or 0.0)), (float(wh) if wh is not None else None)

    def read(self, elapsed_s: float) -> tuple[float, float | None]:
        w, wh = self.read_inverter()
        return w, (wh * 3600.0 if wh is not None else None)

    def close(self) -> None:
        if self._dev is not None:
            self._dev.close()
        self._dev = self._model = None


def build_source(src: SourceConfig) -> SolarSource:
    opts = validate_options(src)
    if isinstance(opts, CsvOptions):
        return read_csv_trace(opts)
    if isinstance(opts, PvanalyticsOptions):
        return read_pvanalytics(opts)
    if isinstance(opts, PvlibOptions):
        return read_pvlib(opts)
    assert isinstance(opts, SunSpecOptions)
    return SunSpecInverter(opts)


# --------------------------------------------------------------------------------------
# Collector
# --------------------------------------------------------------------------------------


@dataclass
class EnergyCounter:
    """Cumulative energy: the device's lifetime counter (relative to its first reading)
    when it has one, otherwise power integrated over wall time (trapezoid)."""

    energy_j: float = 0.0
    _last_t: float | None = None
    _last_w: float = 0.0
    _origin_j: float | None = None

    def update(self, now_s: float, power_w: float, lifetime_j: float | None) -> float:
        if lifetime_j is not None:
            if self._origin_j is None or lifetime_j < self._origin_j:
                self._origin_j = lifetime_j - self.energy_j
            self.energy_j = lifetime_j - self._origin_j
        elif self._last_t is not None and now_s > self._last_t:
            self.energy_j += (now_s - self._last_t) * (power_w + self._last_w) / 2
        self._last_t, self._last_w = now_s, power_w
        return self.energy_j


class SolarCollector:
    def __init__(
        self,
        source: SolarSource,
        publish: Callable[..., object],
        source_id: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = utcnow,
    ) -> None:
        self.source, self.publish, self.source_id, self.clock = source, publish, source_id, clock
        self.wall = wall
        self.t0 = clock()
        self.counter = EnergyCounter()
        self.errors = 0

    def tick(self) -> object:
        now = self.clock()
        # the counter is updated on a copy, kept only when the reading is taken: a value
        # the contract refuses (NaN, negative, beyond its bound) is a failed read
        counter = copy.copy(self.counter)
        try:
            w, lifetime_j = self.source.read(now - self.t0)
            energy = counter.update(now, w, lifetime_j)
            require(SolarTelemetry, power_w=w, energy_j=energy)
        except Exception as e:  # a device read failure must not stop the collector
            self.errors += 1
            log.warning("solar source read failed: %s", one_line(e))
            return None
        self.counter = counter
        at = self.wall()
        fc = [(at + timedelta(seconds=s), v) for s, v in self.source.forecast(now - self.t0)]
        why = refusal(SolarTelemetry, "forecast", fc)
        if why is not None:
            log.info("solar forecast refused by the contract (%s): published without one", why)
            fc = []
        return self.publish(SolarTelemetry, self.source_id, power_w=w, energy_j=energy, forecast=fc)

    def close(self) -> None:
        self.source.close()


def _run(cfg: EcovisorConfig, args: argparse.Namespace, stop: threading.Event) -> None:
    run_source(
        cfg,
        stop,
        SOURCE,
        lambda src, publish, source_id: SolarCollector(build_source(src), publish, source_id),
    )


def main(argv: list[str] | None = None) -> int:
    return cli_main("solar", argv, _run)


if __name__ == "__main__":
    raise SystemExit(main())
