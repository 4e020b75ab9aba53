"""The ledger's Prometheus metrics (streams/ledger_metrics.py): the collector reads the
``SiteLedger`` at scrape time, so its counters are the ledger entries' cumulative totals
exactly, with Kepler-style labels, and a restored snapshot exposes the same values; the
health metrics count closes, dead letters and command outcomes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from ecovisor.contract import topics
from ecovisor.contract.commands import SetBatteryChargeRate, SetCarbonBudget, SetContainerPowercap
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.operator_messages import dead_letter
from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry, SolarTelemetry
from ecovisor.core.entries import AppLedgerEntry
from ecovisor.core.tick_clock import to_us
from streams.ledger_metrics import (
    LedgerHealth,
    exposition,
    ledger_registry,
    reason_class,
)
from streams.ledger_out import Out
from streams.ledger_worker import SiteLedger
from tests.fakes.commands import signed

SITE = """
site:
  id: s
  shape: {tick_s: 1.0, battery_capacity_wh: 20, solar_nameplate_w: 50}
  nodes: [{id: n1, cores: 2}]
apps:
  - id: web
    token: web-token-123
    shares: {solar_fraction: 0.5, battery_capacity_wh: 10, grid_w: 3}
    containers:
      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: t/web-1}}
      - {id: web-2, node: n1, backend: {type: cgroup_v1, cgroup: t/web-2}}
  - id: batch
    token: batch-token-123
    shares: {solar_fraction: 0.5, battery_capacity_wh: 10, grid_w: 50}
    containers:
      - {id: batch-1, node: n1, backend: {type: cgroup_v1, cgroup: t/batch-1}}
"""
T0 = datetime(2024, 1, 1, tzinfo=UTC)
ENERGY_J = {"web-1": 1.2345, "web-2": 4.0011, "batch-1": 0.7779}  # per tick
APPS = {"web-1": "web", "web-2": "web", "batch-1": "batch"}

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def _drive(led: SiteLedger, ticks: int, start: int = 0) -> list[Out]:
    """``ticks`` ticks of container, solar and carbon telemetry, each closed."""
    outs: list[Out] = []
    for k in range(start, start + ticks):
        t = T0 + timedelta(seconds=k, milliseconds=500)
        for c, e in ENERGY_J.items():
            led.clock.offer(ContainerTelemetry(site="s", time=t, source=f"p-{c}", seq=k + 1,
                                               app=APPS[c], container=c, cpu_s=0,
                                               energy_j=e * (k + 1)))  # fmt: skip
        led.clock.offer(SolarTelemetry(site="s", time=t, source="sol", seq=k + 1,
                                       power_w=3.0, energy_j=3.3 * (k + 1)))  # fmt: skip
        led.clock.offer(CarbonTelemetry(site="s", time=t, source="co2", seq=k + 1,
                                        intensity_g_per_kwh=321.5 + k))  # fmt: skip
        outs += led.close(to_us((T0 + timedelta(seconds=k + 2)).timestamp()))[0]
    return outs


def _samples(reg: CollectorRegistry) -> Samples:
    out: Samples = {}
    for fam in text_string_to_metric_families(exposition(reg).decode()):
        for s in fam.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def _get(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def _last_entries(outs: list[Out]) -> dict[str, AppLedgerEntry]:
    last: dict[str, AppLedgerEntry] = {}
    for o in outs:
        if o.topic == topics.LEDGER:
            e = AppLedgerEntry.model_validate_json(o.value)
            last[e.app] = e
    return last


def _state_only(samples: Samples) -> Samples:
    return {k: v for k, v in samples.items() if not k[0].startswith(
        ("ecovisor_ledger_tick_close", "ecovisor_ledger_ticks_closed",
         "ecovisor_ledger_dead_letters", "ecovisor_ledger_command_outcomes"))}  # fmt: skip


def test_energy_and_carbon_counters_equal_the_entries_cumulative_totals_exactly() -> None:
    led = SiteLedger.new(parse_config(SITE))
    outs = _drive(led, 4)
    last = _last_entries(outs)
    assert set(last) == {"web", "batch"} and last["web"].k == last["batch"].k
    reg, _ = ledger_registry(lambda: led, "s", 0.0)
    m = _samples(reg)
    checked = 0
    for app, e in last.items():
        cum = e.cumulative
        assert cum.total.carbon_ug > 0 and cum.total.grid_mj > 0  # something to compare
        for src in ("grid", "solar", "battery", "unserved"):
            want = getattr(cum.total, f"{src}_mj") / 1000
            assert _get(m, "ecovisor_app_joules_total", site="s", app=app, source=src) == want
            for c, line in cum.containers.items():
                got = _get(m, "ecovisor_container_joules_total", site="s", app=app,
                           container=c, source=src)  # fmt: skip
                assert got == getattr(line, f"{src}_mj") / 1000
                checked += 1
        assert _get(m, "ecovisor_app_carbon_grams_total", site="s", app=app) == (
            cum.total.carbon_ug / 1e6
        )
        for c, line in cum.containers.items():
            assert _get(m, "ecovisor_container_carbon_grams_total", site="s", app=app,
                        container=c) == line.carbon_ug / 1e6  # fmt: skip
        assert _get(m, "ecovisor_app_flow_joules_total", site="s", app=app,
                    flow="unserved") == cum.flows.unserved / 1000  # fmt: skip
        assert _get(m, "ecovisor_app_ticks_total", site="s", app=app, kind="closed") == 4
    assert checked == 4 * 3  # every container, every source
    # the web app's grid share (3 W) leaves some of its demand unserved: counted as such
    assert _get(m, "ecovisor_app_joules_total", site="s", app="web", source="unserved") > 0
    # the last tick's time-weighted mean (323.5 carried over its first half, then 324.5)
    assert (
        _get(m, "ecovisor_grid_carbon_intensity_grams_per_kwh", site="s")
        == (last["web"].intensity_g_per_kwh)
        == 324.0
    )
    assert _get(m, "ecovisor_site_solar_watts", site="s") == 3.0
    assert _get(m, "ecovisor_app_battery_joules", site="s", app="web") == (
        led.state.apps["web"].battery_mj / 1000
    )
    assert _get(m, "ecovisor_site_joules_total", site="s", kind="solar") == (
        led.state.cumulative.solar_mj / 1000
    )
    assert _get(m, "ecovisor_app_last_tick", site="s", app="web") == last["web"].k


def test_container_labels_are_kepler_style_and_complete() -> None:
    led = SiteLedger.new(parse_config(SITE))
    _drive(led, 2)
    reg, _ = ledger_registry(lambda: led, "s", 0.0)
    labels = {dict(k[1])["container"]: dict(k[1]) for k in _samples(reg)
              if k[0] == "ecovisor_container_joules_total"}  # fmt: skip
    assert set(labels) == {"web-1", "web-2", "batch-1"}
    assert labels["batch-1"]["app"] == "batch" and labels["web-2"]["app"] == "web"
    sources = {dict(k[1])["source"] for k in _samples(reg)
               if k[0] == "ecovisor_container_joules_total"}  # fmt: skip
    assert sources == {"grid", "solar", "battery", "unserved"}


def test_restored_snapshot_exposes_the_same_values_and_keeps_counting() -> None:
    cfg = parse_config(SITE)
    led = SiteLedger.new(cfg)
    _drive(led, 3)
    before = _state_only(_samples(ledger_registry(lambda: led, "s", 0.0)[0]))
    restored = SiteLedger.restore(cfg, led.snapshot())
    after = _state_only(_samples(ledger_registry(lambda: restored, "s", 0.0)[0]))
    assert after == before
    # both go on identically: the counters are the state, not this process's history
    _drive(led, 2, start=3)
    _drive(restored, 2, start=3)
    a = _samples(ledger_registry(lambda: led, "s", 0.0)[0])
    b = _samples(ledger_registry(lambda: restored, "s", 0.0)[0])
    assert _state_only(a) == _state_only(b) != before


def test_settings_in_force_are_gauges() -> None:
    led = SiteLedger.new(parse_config(SITE))
    _drive(led, 1)
    now = to_us((T0 + timedelta(seconds=1, milliseconds=600)).timestamp())
    t = T0 + timedelta(seconds=1, milliseconds=600)
    common = {"site": "s", "time": t, "app": "web", "token": "web-token-123"}
    for cmd in (
        signed(SetBatteryChargeRate, command_id="c1", watts=2.5, **common),
        signed(SetContainerPowercap, command_id="c2", container="web-1", watts=3.5, **common),
        signed(SetCarbonBudget, command_id="c3", grams=12.0, **common),
    ):
        led.command(cmd.to_json(), now)
    _drive(led, 2, start=1)
    m = _samples(ledger_registry(lambda: led, "s", 0.0)[0])
    assert _get(m, "ecovisor_app_battery_charge_rate_watts", site="s", app="web") == 2.5
    assert _get(m, "ecovisor_app_battery_charge_rate_watts", site="s", app="batch") == 0.0
    assert _get(m, "ecovisor_container_powercap_watts", site="s", app="web",
                container="web-1") == 3.5  # fmt: skip
    assert (
        "ecovisor_container_powercap_watts",
        frozenset({"site": "s", "app": "web", "container": "web-2"}.items()),
    ) not in m
    assert _get(m, "ecovisor_app_carbon_budget_grams", site="s", app="web") == 12.0
    used = led.state.apps["web"].tracking.budget
    assert used is not None
    assert _get(m, "ecovisor_app_carbon_budget_used_grams", site="s", app="web") == (
        used.used_ug / 1e6
    )
    share = led.shares["web"].discharge_limit_w
    assert _get(m, "ecovisor_app_battery_max_discharge_watts", site="s", app="web") == share


def test_health_counts_closes_dead_letters_and_command_outcomes() -> None:
    led = SiteLedger.new(parse_config(SITE))
    reg, health = ledger_registry(lambda: led, "s", 0.5)
    t = T0 + timedelta(milliseconds=500)
    common = {"site": "s", "time": t, "app": "web", "token": "web-token-123"}
    outs = led.command(signed(SetBatteryChargeRate, command_id="ok-1", watts=1.0,
                              **common).to_json(), to_us(t.timestamp()))  # fmt: skip
    outs += led.command(signed(SetContainerPowercap, command_id="bad-1", container="batch-1",
                               watts=5.0, **common).to_json(),
                        to_us(t.timestamp()))  # fmt: skip
    outs.append(Out(topics.DEADLETTER, None,
                    dead_letter(topics.TELEMETRY, "duplicate sample", b"{}")
                    .model_dump_json().encode()))  # fmt: skip
    outs.append(Out(topics.DEADLETTER, None, dead_letter(topics.COMMANDS, "x",
                    b"{}").model_dump_json().encode()))  # fmt: skip
    health.outputs(outs)
    led.clock.offer(ContainerTelemetry(site="s", time=t, source="p-web-1", seq=1, app="web",
                                       container="web-1", cpu_s=0, energy_j=1.0))  # fmt: skip
    closed_outs, rows = led.close(to_us((T0 + timedelta(seconds=3)).timestamp()))
    health.outputs(closed_outs)  # command_applied of ok-1 when in force
    closed_s = (T0 + timedelta(seconds=3)).timestamp()
    health.closed(rows, closed_s, 1.0, realtime=True)
    m = _samples(reg)
    ticks = len({k for _, k, _ in rows})
    assert ticks >= 1
    assert _get(m, "ecovisor_ledger_ticks_closed_total", site="s") == ticks
    assert _get(m, "ecovisor_ledger_tick_close_latency_seconds_count", site="s") == ticks
    # tick k ends at T0 + k + 1 s, its deadline 0.5 s (grace) later; closed at T0 + 3 s
    ks = sorted({k for _, k, _ in rows})
    k0 = int(T0.timestamp())
    late = [3 - (k - k0 + 1) - 0.5 for k in ks]
    assert late[0] == 1.5
    assert _get(m, "ecovisor_ledger_tick_close_latency_seconds_sum", site="s") == sum(late)
    assert _get(m, "ecovisor_ledger_tick_close_latency_seconds_bucket", site="s",
                le="1.0") == sum(x <= 1.0 for x in late)  # fmt: skip
    assert _get(m, "ecovisor_ledger_dead_letters_total", site="s", origin="telemetry",
                reason="duplicate") == 1  # fmt: skip
    assert _get(m, "ecovisor_ledger_dead_letters_total", site="s", origin="commands",
                reason="other") == 1  # fmt: skip
    outcome = "ecovisor_ledger_command_outcomes_total"
    assert _get(m, outcome, site="s", command_type="set_battery_charge_rate",
                outcome="accepted") == 1  # fmt: skip
    assert _get(m, outcome, site="s", command_type="set_battery_charge_rate",
                outcome="applied") == 1  # fmt: skip
    assert _get(m, outcome, site="s", command_type="set_container_powercap",
                outcome="rejected") == 1  # fmt: skip


def test_event_clock_closes_are_counted_without_a_latency() -> None:
    health = LedgerHealth("s", CollectorRegistry(), 0.5)
    health.closed([("a", 7, {}), ("b", 7, {}), ("a", 8, {})], 1e9, 1.0, realtime=False)
    assert health.ticks._value.get() == 2
    assert health.latency._sum.get() == 0


def test_dead_letter_reasons_fall_into_a_fixed_set_of_classes() -> None:
    assert reason_class("internal error on this message: KeyError('x')") == "internal_error"
    assert reason_class("bad or missing signature") == "bad_signature"
    assert reason_class("time: Input should be a valid datetime") == "invalid"
    assert reason_class("something new") == "other"


def test_collector_exposes_nothing_while_the_ledger_loads() -> None:
    reg, _ = ledger_registry(lambda: None, "s", 0.0)
    names = {k[0] for k in _samples(reg)}
    assert not any(n.startswith(("ecovisor_app_", "ecovisor_container_")) for n in names)
    assert "ecovisor_ledger_ticks_closed_total" in names
