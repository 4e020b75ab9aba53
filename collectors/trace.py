"""Trace replay shared by the solar and carbon collectors: reading ``time, value`` CSV
columns into sorted epoch-second arrays, resolving ``start`` / ``offset_s``, and mapping
the collector's elapsed wall time to trace time (speed-up, loop) to read the trace there.

Errors are ConfigErrors of one line that name the configuration section
(``site.<section>``), so a collector exits with a readable message, never a traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
from pydantic import Field

from collectors.common import Options, one_line
from ecovisor.contract.config_file import ConfigError


class ReplayOptions(Options):
    """Options of every trace replay: where in the trace to begin and how fast to go."""

    speedup: float = Field(1.0, gt=0, description="trace seconds per wall second")
    start: datetime | None = Field(None, description="trace time to start at")
    offset_s: float = Field(0.0, ge=0, description="seconds into the trace to start at")
    loop: bool = True


class CsvColumns(Options):
    """Which CSV columns hold the time and the value: a header name or a 0-based index."""

    time_column: str | int = 0
    value_column: str | int = 1


def epoch_seconds(times: object) -> np.ndarray:
    """Epoch seconds of pandas-parsable times; naive times are taken as UTC."""
    import pandas as pd

    idx = pd.DatetimeIndex(times)
    if idx.tz is None:
        idx = idx.tz_localize("UTC")
    return (idx - pd.Timestamp(0, tz="UTC")).total_seconds().to_numpy(dtype=float)


def sorted_trace(
    section: str, secs: np.ndarray, values: np.ndarray, fill_nan: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Samples in time order (stable for equal times), NaN values dropped or, with
    ``fill_nan``, replaced; at least two must remain."""
    secs = np.asarray(secs, dtype=float)
    values = np.asarray(values, dtype=float)
    if fill_nan is None:
        ok = ~np.isnan(values)
        secs, values = secs[ok], values[ok]
    else:
        values = np.nan_to_num(values, nan=fill_nan)
    order = np.argsort(secs, kind="stable")
    if len(order) < 2:
        raise ConfigError(f"site.{section}: the trace needs at least two samples")
    return secs[order], values[order]


def read_csv(
    section: str,
    paths: str | Sequence[str],
    columns: CsvColumns,
    fill_nan: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(epoch seconds, values) of the chosen columns of one or more CSV files (UTF-8),
    concatenated and sorted as by ``sorted_trace``."""
    import pandas as pd

    paths = [paths] if isinstance(paths, str) else list(paths)
    secs: list[np.ndarray] = []
    values: list[np.ndarray] = []
    for p in paths:
        if not Path(p).is_file():
            raise ConfigError(f"site.{section}.options.path: no such file {p}")
        try:
            df = pd.read_csv(p, encoding="utf-8")
            tcol, vcol = (
                df.columns[c] if isinstance(c, int) else c
                for c in (columns.time_column, columns.value_column)
            )
            secs.append(epoch_seconds(pd.to_datetime(df[tcol], utc=True)))
            values.append(df[vcol].to_numpy(dtype=float))
        except (KeyError, IndexError, ValueError) as e:
            raise ConfigError(f"site.{section}: cannot read {p}: {one_line(e)}") from None
    return sorted_trace(section, np.concatenate(secs), np.concatenate(values), fill_nan)


def start_time(section: str, secs: np.ndarray, opts: ReplayOptions) -> float:
    """Trace time (epoch s) the replay begins at: ``start`` (or the first sample) plus
    ``offset_s``; ``start`` must lie within the trace."""
    import pandas as pd

    start = float(secs[0])
    if opts.start is not None:
        start = pd.Timestamp(opts.start).timestamp()
        if not secs[0] <= start <= secs[-1]:
            raise ConfigError(f"site.{section}: start {opts.start} is outside the trace")
    return start + opts.offset_s


# the most future trace points a replay publishes as a forecast (carbon and solar)
MAX_FORECAST_POINTS = 1000


@dataclass
class TraceReplay:
    """Pure replay of sorted (epoch s, value) samples: trace time = ``start_s`` + elapsed
    wall seconds x ``speedup``, looping at the end of the trace when ``loop``.

    Linear (default): values are interpolated and the trace ends at its last sample.
    ``step``: each sample holds until the next, the last one for one more step (the
    trace ends there), as for hourly carbon-intensity data."""

    times_s: np.ndarray
    values: np.ndarray
    start_s: float
    speedup: float = 1.0
    loop: bool = True
    step: bool = field(default=False, kw_only=True)

    def trace_time(self, elapsed_s: float) -> float:
        t = self.start_s + elapsed_s * self.speedup
        first, last = float(self.times_s[0]), float(self.times_s[-1])
        span = last - first
        if self.step:
            span += last - float(self.times_s[-2])
            past = t >= first + span
        else:
            past = t > last
        if past and self.loop and span > 0:
            t = first + (t - first) % span
        return t

    def index_at(self, t: float) -> int:
        """The sample in force at trace time ``t`` (the first before the trace)."""
        return max(0, int(np.searchsorted(self.times_s, t, side="right")) - 1)

    def value_at(self, elapsed_s: float) -> float:
        t = self.trace_time(elapsed_s)
        if self.step:
            return float(self.values[self.index_at(t)])
        return float(np.interp(t, self.times_s, self.values))

    def upcoming(self, elapsed_s: float, n: int) -> list[tuple[float, float]]:
        """The next ``n`` samples after the one in force (not wrapping around a loop):
        (wall seconds from now until it, value)."""
        t = self.trace_time(elapsed_s)
        i = self.index_at(t)
        return [
            ((float(self.times_s[j]) - t) / self.speedup, float(self.values[j]))
            for j in range(i + 1, min(i + 1 + n, len(self.times_s)))
        ]
