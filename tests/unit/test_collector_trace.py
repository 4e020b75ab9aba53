"""The trace replay shared by the solar and carbon collectors: CSV columns to sorted
epoch seconds (NaN dropped or filled, several files), readable errors naming the
section, start/offset, linear vs step replay and their loop spans, upcoming samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from collectors.trace import (
    CsvColumns,
    ReplayOptions,
    TraceReplay,
    read_csv,
    start_time,
)
from ecovisor.contract.config_file import ConfigError

T0 = 1_609_459_200.0  # 2021-01-01T00:00:00Z


def test_read_csv_sorts_several_files_and_drops_or_fills_nan(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("t,v\n2021-01-01T02:00Z,3\n2021-01-01T00:00Z,1\n")
    (tmp_path / "b.csv").write_text("t,v\n2021-01-01T01:00Z,\n2021-01-01T03:00Z,4\n")
    paths = [str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]
    secs, vals = read_csv("carbon", paths, CsvColumns())
    assert secs.tolist() == [T0, T0 + 7200, T0 + 10800]
    assert vals.tolist() == [1.0, 3.0, 4.0]
    secs, vals = read_csv("solar", paths, CsvColumns(value_column="v"), fill_nan=0.0)
    assert secs.tolist() == [T0 + h * 3600 for h in range(4)]
    assert vals.tolist() == [1.0, 0.0, 3.0, 4.0]


def test_read_csv_errors_name_the_section_and_the_file(tmp_path: Path) -> None:
    (tmp_path / "ok.csv").write_text("t,v\n2021-01-01T00:00Z,1\n2021-01-01T01:00Z,2\n")
    (tmp_path / "bad.csv").write_text("t,w\n2021-01-01T02:00Z,1\n")
    ok, bad = str(tmp_path / "ok.csv"), str(tmp_path / "bad.csv")
    with pytest.raises(ConfigError, match=r"^site\.solar\.options\.path: no such file"):
        read_csv("solar", str(tmp_path / "none.csv"), CsvColumns())
    with pytest.raises(ConfigError, match=r"^site\.carbon: cannot read .*bad\.csv: 'v'"):
        read_csv("carbon", [ok, bad], CsvColumns(value_column="v"))
    with pytest.raises(ConfigError, match=r"^site\.carbon: cannot read .*ok\.csv"):
        read_csv("carbon", ok, CsvColumns(value_column=5))
    (tmp_path / "one.csv").write_text("t,v\n2021-01-01T00:00Z,1\n2021-01-01T01:00Z,\n")
    with pytest.raises(ConfigError, match=r"^site\.carbon: the trace needs at least two"):
        read_csv("carbon", str(tmp_path / "one.csv"), CsvColumns())


def test_start_time_with_offset_and_bounds() -> None:
    secs = np.array([T0, T0 + 3600])
    assert start_time("x", secs, ReplayOptions(offset_s=60)) == T0 + 60
    opts = ReplayOptions(start="2021-01-01T00:30:00Z", offset_s=5)
    assert start_time("x", secs, opts) == T0 + 1805
    with pytest.raises(ConfigError, match=r"^site\.x: start .* is outside the trace"):
        start_time("x", secs, ReplayOptions(start="2022-01-01T00:00:00Z"))


def test_linear_and_step_replay_loop_over_different_spans() -> None:
    times, vals = np.array([0.0, 10.0, 20.0]), np.array([0.0, 10.0, 40.0])
    lin = TraceReplay(times, vals, 0.0, speedup=2.0)
    assert lin.value_at(2.5) == pytest.approx(5.0)  # trace t = 5: interpolated
    assert lin.value_at(10.0) == pytest.approx(40.0)  # exactly the last sample
    assert lin.value_at(12.5) == pytest.approx(5.0)  # t = 25 wraps over 20 s to 5
    step = TraceReplay(times, vals, 0.0, step=True)
    assert step.value_at(19.9) == 10.0  # held until the next sample
    assert step.value_at(25.0) == 40.0  # the last sample holds for one more step
    assert step.value_at(30.0) == 0.0  # then the 30 s trace loops
    no_loop = TraceReplay(times, vals, 0.0, loop=False, step=True)
    assert no_loop.value_at(1000.0) == 40.0


def test_upcoming_samples_in_wall_seconds() -> None:
    r = TraceReplay(np.array([0.0, 10.0, 20.0, 30.0]), np.arange(4.0), 5.0, speedup=5.0)
    assert r.upcoming(0.0, 2) == [(1.0, 1.0), (3.0, 2.0)]
    assert r.upcoming(5.0, 5) == []  # at the last sample: nothing ahead (no wrap)
