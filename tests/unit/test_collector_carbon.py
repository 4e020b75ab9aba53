"""Carbon sources: the real CAISO Electricity Maps data-portal CSV (from ../shared/data,
skipped with a reason when absent), generic CSV with lbs/MWh, the SYNTHETIC signal, and
the pure poller (backoff, staleness)."""

from __future__ import annotations

import math
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from collectors.carbon import (
    CarbonCollector,
    CarbonSource,
    CsvOptions,
    EmapsCsvOptions,
    Poller,
    Reading,
    Synthetic,
    SyntheticOptions,
    read_csv_trace,
    validate_options,
)
from collectors.common import run_every
from collectors.publisher import Publisher
from ecovisor.contract.config_file import ConfigError
from ecovisor.contract.site_config import SourceConfig
from ecovisor.contract.telemetry import CarbonTelemetry

CAISO = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "caiso-emaps-2021-2023"
NOW = datetime(2024, 1, 1, tzinfo=UTC)


def _caiso(year: int) -> Path:
    p = CAISO / f"US-CAL-CISO_{year}_hourly.csv"
    if not p.is_file():
        pytest.skip(f"shared CAISO trace not found at {p} (data lives outside the project)")
    return p


def test_electricitymaps_portal_csv_real_caiso() -> None:
    r = read_csv_trace(EmapsCsvOptions(path=str(_caiso(2022))))
    assert len(r.times_s) == 8760
    assert np.all(np.diff(r.times_s) == 3600)
    # SOURCE.md: direct min/mean/max 53.11 / 194.60 / 342.12
    assert r.values.min() == pytest.approx(53.11)
    assert r.values.max() == pytest.approx(342.12)
    assert r.values.mean() == pytest.approx(194.60, abs=0.01)
    lca = read_csv_trace(EmapsCsvOptions(path=str(_caiso(2022)), basis="lca"))
    assert lca.values.mean() == pytest.approx(261.28, abs=0.01)


def test_caiso_replay_steps_hourly_with_speedup_and_forecast() -> None:
    opts = EmapsCsvOptions(
        path=str(_caiso(2021)), speedup=3600, start="2021-06-01T00:00:00Z", forecast_points=3
    )
    r = read_csv_trace(opts)
    i0 = int(np.searchsorted(r.times_s, r.start_s))
    a = r.read(0.0, NOW)
    assert a.intensity_g_per_kwh == r.values[i0]
    assert r.read(0.999, NOW).intensity_g_per_kwh == r.values[i0]  # held within the hour
    assert r.read(1.0, NOW).intensity_g_per_kwh == r.values[i0 + 1]  # 1 s = 1 h
    assert [v for _, v in a.forecast] == list(r.values[i0 + 1 : i0 + 4])
    assert (a.forecast[0][0] - NOW).total_seconds() == pytest.approx(1.0)
    # the "duck": the mean midday (19-21 UTC) value is below the evening (02-04 UTC)
    hours = ((r.times_s // 3600) % 24).astype(int)
    assert (
        r.values[(hours >= 19) & (hours <= 21)].mean()
        < r.values[(hours >= 2) & (hours <= 4)].mean()
    )


def test_csv_lbs_per_mwh_marginal(tmp_path: Path) -> None:
    (tmp_path / "m.csv").write_text("t,moer\n2021-01-01T00:00Z,1000\n2021-01-01T00:05Z,500\n")
    r = read_csv_trace(
        CsvOptions(path=str(tmp_path / "m.csv"), unit="lbs_per_mwh", signal="marginal")
    )
    a = r.read(0.0, NOW)
    assert a.intensity_g_per_kwh == pytest.approx(453.59237)
    assert a.signal == "marginal"
    assert r.read(301.0, NOW).intensity_g_per_kwh == pytest.approx(226.796185)


def test_synthetic_signal_shape() -> None:
    s = Synthetic(SyntheticOptions(mean=200, amplitude=100, period_s=600))
    vals = [s.read(t, NOW).intensity_g_per_kwh for t in range(0, 600, 10)]
    assert max(vals) == pytest.approx(300.0)
    assert min(vals) == pytest.approx(100.0)
    assert s.read(300.0, NOW).intensity_g_per_kwh == pytest.approx(100.0)  # "noon" low
    with pytest.raises(ConfigError, match="amplitude"):
        validate_options(SourceConfig(type="synthetic", options={"mean": 10, "amplitude": 20}))


def test_poller_backoff_and_staleness() -> None:
    p = Poller(poll_s=60, retry_min_s=2, retry_max_s=10, stale_after_s=100)
    assert p.due(0) and p.current(0) is None
    assert [p.failure(0, "x") for _ in range(5)] == [2, 4, 8, 10, 10]
    p.success(5, Reading(100.0))
    assert p.failures == 0 and not p.due(64) and p.due(65)
    assert p.current(105) == (Reading(100.0), False)
    assert p.current(106) == (Reading(100.0), True)


def test_collector_publishes_last_good_value_stale() -> None:
    class Flaky:
        calls = 0

        def read(self, elapsed_s: float, now: datetime) -> Reading:
            Flaky.calls += 1
            if Flaky.calls > 1:
                raise ValueError("down")
            return Reading(123.0)

    t = [0.0]
    sent: list[dict] = []
    coll = CarbonCollector(
        Flaky(),
        lambda m, s, **f: sent.append(f),
        "c",
        Poller(poll_s=1, retry_min_s=1, retry_max_s=1, stale_after_s=5),
        clock=lambda: t[0],
        wall=lambda: NOW,
    )
    for step in range(10):
        t[0] = float(step)
        coll.tick()
    assert [s["intensity_g_per_kwh"] for s in sent] == [123.0] * 10
    assert [s["stale"] for s in sent] == [False] * 6 + [True] * 4
    assert Flaky.calls == 10


def test_validate_options_errors() -> None:
    with pytest.raises(ConfigError, match="zone"):
        validate_options(SourceConfig(type="electricitymaps", options={"base_url": "http://x"}))
    with pytest.raises(ConfigError, match="base_url"):
        validate_options(SourceConfig(type="ukci", options={}))
    with pytest.raises(ConfigError, match="unknown"):
        validate_options(SourceConfig(type="co2signal"))


class Scripted(CarbonSource):
    """A source returning the next of its readings at each read."""

    def __init__(self, *readings: Reading) -> None:
        self.readings = list(readings)

    def read(self, elapsed_s: float, now: datetime) -> Reading:
        return self.readings.pop(0)


def _publisher() -> Publisher:
    # the real publisher builds the contract's message (raising ValidationError on a bad
    # value) and queues it; it never connects here
    return Publisher("s", "127.0.0.1", 1, client_id="t", seq_start=0)


@pytest.mark.parametrize("bad", [-3.0, math.nan, 1e13])
def test_a_polled_value_out_of_the_contract_is_a_failed_read(bad: float) -> None:
    t = [0.0]
    coll = CarbonCollector(
        Scripted(Reading(bad), Reading(100.0), Reading(bad), Reading(150.0)),
        _publisher().publish,
        "c",
        Poller(poll_s=1, retry_min_s=1, retry_max_s=1, stale_after_s=0.5),
        clock=lambda: t[0],
        wall=lambda: NOW,
    )
    sent = []
    for step in range(4):  # a poll every tick
        t[0] = float(step)
        sent.append(coll.tick())
    assert sent[0] is None  # nothing good yet
    got = [(m.intensity_g_per_kwh, m.stale) for m in sent[1:]]  # type: ignore[attr-defined]
    # the bad value at t=2 is never stored: the last good one is carried (stale), then
    # the next good one is published
    assert got == [(100.0, False), (100.0, True), (150.0, False)]
    assert coll.poller is not None and coll.poller.last == Reading(150.0)
    assert str(bad) in coll.poller.errors[0] and "refused" in coll.poller.errors[0]


@pytest.mark.parametrize("bad", [-3.0, math.nan, 1e13])
def test_a_local_value_out_of_the_contract_is_not_published(bad: float) -> None:
    coll = CarbonCollector(
        Scripted(Reading(bad), Reading(100.0)),
        _publisher().publish,
        "c",
        wall=lambda: NOW,
    )
    assert coll.tick() is None
    assert coll.tick().intensity_g_per_kwh == 100.0  # type: ignore[attr-defined]


def test_a_forecast_out_of_the_contract_is_dropped_the_value_published() -> None:
    later = NOW + timedelta(hours=1)
    coll = CarbonCollector(
        Scripted(Reading(100.0, forecast=((later, -1.0),))),  # type: ignore[arg-type]
        _publisher().publish,
        "c",
        Poller(poll_s=1, retry_min_s=1, retry_max_s=1, stale_after_s=5),
        clock=lambda: 0.0,
        wall=lambda: NOW,
    )
    msg = coll.tick()
    assert msg.intensity_g_per_kwh == 100.0 and msg.forecast == []  # type: ignore[attr-defined]


def test_the_periodic_loop_survives_a_message_the_contract_refuses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop, calls = threading.Event(), []

    def tick() -> None:
        calls.append(1)
        if len(calls) == 3:
            stop.set()
        if len(calls) == 1:
            CarbonTelemetry.model_validate({})  # raises ValidationError

    run_every(0.0, stop, tick)
    assert len(calls) == 3
    assert "refused by the contract" in caplog.text
