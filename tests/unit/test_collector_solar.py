"""Solar sources: CSV replay (W and W/m²), the measured NREL trace shipped by
pvanalytics, the pvlib PV model on pvlib's bundled TMY3 file, the energy counter."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from collectors.publisher import Publisher
from collectors.solar import (
    CsvOptions,
    EnergyCounter,
    PvanalyticsOptions,
    PvlibOptions,
    SolarCollector,
    SolarSource,
    TraceReplay,
    read_csv_trace,
    read_pvanalytics,
    read_pvlib,
    validate_options,
)
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.site_config import SourceConfig

CSV = "time,power\n2021-06-01T00:00:00Z,0\n2021-06-01T00:01:00Z,60\n2021-06-01T00:02:00Z,-5\n"


def test_csv_replay_interpolates_with_speedup_and_offset(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    r = read_csv_trace(CsvOptions(path=str(tmp_path / "t.csv"), speedup=2.0, offset_s=10))
    assert r.read(0.0)[0] == pytest.approx(10.0)  # 10 s into the trace
    assert r.read(10.0)[0] == pytest.approx(30.0)  # 10 + 10 x 2 = 30 s
    assert r.read(25.0)[0] == pytest.approx(60.0)
    assert r.read(55.0)[0] == 0.0  # at the last sample (-5 W): clipped


def test_csv_replay_loops(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    r = read_csv_trace(CsvOptions(path=str(tmp_path / "t.csv")))
    assert r.read(120.0 + 30.0)[0] == pytest.approx(r.read(30.0)[0])
    r2 = read_csv_trace(CsvOptions(path=str(tmp_path / "t.csv"), loop=False))
    assert r2.read(1000.0)[0] == 0.0


def test_csv_irradiance_times_area_and_efficiency(tmp_path: Path) -> None:
    (tmp_path / "g.csv").write_text("t,ghi\n2021-06-01 12:00Z,1000\n2021-06-01 13:00Z,500\n")
    r = read_csv_trace(
        CsvOptions(path=str(tmp_path / "g.csv"), unit="W/m2", area_m2=0.5, efficiency=0.2)
    )
    assert r.read(0.0)[0] == pytest.approx(100.0)
    assert r.read(1800.0)[0] == pytest.approx(75.0)


def test_csv_start_and_nameplate(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text(CSV)
    r = read_csv_trace(
        CsvOptions(path=str(tmp_path / "t.csv"), start="2021-06-01T00:01:00Z", nameplate_w=6)
    )
    assert r.read(0.0)[0] == pytest.approx(6.0)
    with pytest.raises(ConfigError, match="outside"):
        read_csv_trace(CsvOptions(path=str(tmp_path / "t.csv"), start="2030-01-01T00:00:00Z"))


def test_measured_pvanalytics_trace() -> None:
    r = read_pvanalytics(PvanalyticsOptions())
    assert len(r.times_s) > 9000  # 104 days at 15 min
    assert np.all(np.diff(r.times_s) > 0)
    # timestamps are UTC-07:00: local midnight is dark, local noon is producing
    assert r.read(0.0)[0] == 0.0
    assert r.read(12 * 3600.0)[0] > 0.3 * r.watts.max()
    scaled = read_pvanalytics(PvanalyticsOptions(nameplate_w=20.0))
    assert scaled.watts.max() == pytest.approx(20.0)


def test_pvlib_model_on_bundled_tmy3() -> None:
    r = read_pvlib(PvlibOptions(surface_tilt=30))
    # 8760 hours; night is 0, a summer noon produces, never above the inverter rating
    assert len(r.times_s) == 8760
    import pvlib

    paco = pvlib.pvsystem.retrieve_sam("cecinverter")[PvlibOptions().inverter]["Paco"]
    assert r.watts.max() <= paco + 1e-6
    assert r.watts.max() > 0.5 * paco
    night = [r.read(h * 3600.0)[0] for h in range(0, 24 * 7)]
    assert min(night) == 0.0 and max(night) > 0.0
    two = read_pvlib(PvlibOptions(surface_tilt=30, strings=2))
    assert two.watts.sum() > r.watts.sum()  # a bigger array clips at the same inverter
    with pytest.raises(ConfigError, match="module"):
        read_pvlib(PvlibOptions(module="no-such-module"))


def test_energy_counter_integrates_or_uses_device_counter() -> None:
    c = EnergyCounter()
    c.update(0.0, 10.0, None)
    assert c.update(2.0, 20.0, None) == pytest.approx(30.0)
    d = EnergyCounter()
    d.update(0.0, 1.0, 3600.0)
    assert d.update(1.0, 1.0, 3700.0) == pytest.approx(100.0)


def test_collector_publishes_stamped_samples() -> None:
    sent: list[dict] = []
    r = TraceReplay(np.array([0.0, 10.0]), np.array([0.0, 10.0]), 0.0)
    t = [0.0]
    coll = SolarCollector(r, lambda m, s, **f: sent.append({"src": s, **f}), "pv", lambda: t[0])
    coll.tick()
    t[0] = 4.0
    coll.tick()
    assert sent[1]["power_w"] == pytest.approx(4.0)
    assert sent[1]["energy_j"] == pytest.approx(8.0)


def test_validate_options() -> None:
    with pytest.raises(ConfigError, match="area_m2"):
        validate_options(SourceConfig(type="csv", options={"path": "x", "unit": "W/m2"}))
    with pytest.raises(ConfigError, match="not both"):
        validate_options(SourceConfig(type="pvanalytics", options={"scale": 2, "nameplate_w": 3}))
    with pytest.raises(ConfigError, match="speedup"):
        validate_options(SourceConfig(type="pvlib", options={"speedup": 0}))
    assert validate_options(SourceConfig(type="sunspec", options={"host": "127.0.0.1"}))


class Device(SolarSource):
    """A device returning the next of its (W, lifetime J) readings at each read."""

    def __init__(self, *readings: tuple[float, float | None]) -> None:
        self.readings = list(readings)

    def read(self, elapsed_s: float) -> tuple[float, float | None]:
        return self.readings.pop(0)


@pytest.mark.parametrize(
    "bad", [(math.nan, None), (1e13, None), (5.0, math.nan), (5.0, 1e16), (-1.0, None)]
)
def test_a_reading_out_of_the_contract_is_a_failed_read(bad: tuple[float, float | None]) -> None:
    lifetime = bad[1] is not None  # a device with a lifetime counter, else integrated
    good = [(10.0, 1000.0 * i if lifetime else None) for i in range(3)]
    pub = Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0)  # builds the messages
    t = [0.0]
    coll = SolarCollector(Device(good[0], bad, good[1], good[2]), pub.publish, "pv", lambda: t[0])
    sent = []
    for step in range(4):
        t[0] = float(step)
        sent.append(coll.tick())
    assert sent[1] is None and coll.errors == 1
    # the counter went on from the last good reading, unspoilt by the bad one
    energy = [m.energy_j for m in sent if m is not None]  # type: ignore[attr-defined]
    assert energy == ([0.0, 1000.0, 2000.0] if lifetime else [0.0, 20.0, 30.0])
