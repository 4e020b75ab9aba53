"""Each policy's decisions on scripted tick sequences (pure classes: tick in, actions
out): carbon crossing the threshold, solar rising and falling, battery full and empty,
budget nearly spent, latency above the SLO."""

import logging
from datetime import UTC, datetime, timedelta

import pytest

from ecovisor.contract.notifications import ContainerTickData, Notification, TickData
from policies.base import (
    AppView,
    BatteryFlags,
    Deduper,
    Observation,
    PolicyRunner,
    ResumeContainer,
    ScaleApp,
    ScaleContainer,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
    SuspendContainer,
    TrailingPercentile,
    carbon_mg_per_s,
    grid_w_for_rate,
)
from policies.carbon_agnostic import CarbonAgnostic
from policies.dynamic_budget import DynamicBudget
from policies.solar_battery import SolarBattery
from policies.solar_following_caps import SolarFollowingCaps, water_fill
from policies.static_rate_limit import StaticRateLimit
from policies.straggler_replicas import StragglerReplicas
from policies.suspend_resume import CarbonThreshold, SuspendResume
from policies.wait_and_scale import WaitAndScale

T0 = datetime(2024, 6, 1, tzinfo=UTC)
APP = AppView(
    app="web",
    containers=("c1", "c2"),
    templates=("w",),
    tick_s=60,
    battery_full_wh=19.0,
    battery_empty_wh=6.0,
)


def obs(
    k: int = 0,
    carbon: float = 200.0,
    next_solar: float = 0.0,
    level: float = 10.0,
    power: dict[str, float] | None = None,
    suspended: set[str] = frozenset(),
    caps: dict[str, float] | None = None,
    app_power: float | None = None,
    carbon_g: float = 0.0,
    tick_s: float = 60.0,
    max_discharge: float = 8.0,
    **kw,
) -> Observation:
    power = power if power is not None else {"c1": 2.0, "c2": 2.0}
    caps = caps or {}
    data = TickData(
        tick_s=tick_s,
        next_solar_w=next_solar,
        solar_w=next_solar,
        grid_w=0.0,
        grid_carbon_g_per_kwh=carbon,
        battery_charge_level_wh=level,
        battery_discharge_rate_w=0.0,
        battery_charge_rate_setting_w=0.0,
        battery_max_discharge_setting_w=max_discharge,
        app_power_w=sum(power.values()) if app_power is None else app_power,
        unserved_w=0.0,
        carbon_g=carbon_g,
        containers={
            c: ContainerTickData(power_w=p, suspended=c in suspended, powercap_w=caps.get(c))
            for c, p in power.items()
        },
    )
    return Observation(time=T0 + timedelta(seconds=tick_s * k), data=data, tick=k, **kw)


# --- helpers ----------------------------------------------------------------------------


def test_trailing_percentile_matches_linear_interpolation_and_forgets_old_values() -> None:
    tp = TrailingPercentile(window_s=300, percentile=30)
    for k, v in enumerate([100, 400, 300, 200, 500]):
        tp.add(T0 + timedelta(seconds=60 * k), v)
    # sorted 100 200 300 400 500; pos = 4 * .3 = 1.2 -> 200 + .2 * 100
    assert tp.value() == pytest.approx(220.0)
    tp.add(T0 + timedelta(seconds=60 * 7), 600)  # drops t=0 (100) and t=60 (400)
    assert len(tp) == 4  # 300 200 500 600 -> sorted 200 300 500 600, pos .9
    assert tp.value() == pytest.approx(290.0)


def test_carbon_rate_conversions() -> None:
    # 288 W at 250 g/kWh emits exactly 20 mg/s
    assert grid_w_for_rate(20.0, 250.0) == pytest.approx(288.0)
    assert carbon_mg_per_s(288.0, 250.0) == pytest.approx(20.0)
    assert grid_w_for_rate(20.0, 0.0) == float("inf")


def test_battery_flags_levels_and_latches() -> None:
    f = BatteryFlags(full_wh=19.0, empty_wh=6.0)
    assert f.update(10.0, []) == (False, False)
    assert f.update(19.0, []) == (True, False)
    assert f.update(6.0, []) == (False, True)
    # latched by the ecovisor's notification below the nominal full level
    assert f.update(17.5, ["battery_full"]) == (True, False)
    assert f.update(17.5, []) == (True, False)
    assert f.update(17.0, []) == (False, False)  # discharging again: unlatched


def test_deduper_skips_values_in_force_and_resends_after_rejection() -> None:
    d = Deduper(pending_ticks=3)
    o = obs(caps={"c1": 2.0}, suspended={"c2"})
    assert d.filter([SetContainerPowercap("c1", 2.0), SuspendContainer("c2")], o.data) == []
    assert d.filter([ScaleApp("w", 3)], o.data) == [ScaleApp("w", 3)]
    d.sent(ScaleApp("w", 3), "cmd-1")
    assert d.filter([ScaleApp("w", 3)], o.data) == []
    d.failed("cmd-1")
    assert d.filter([ScaleApp("w", 3)], o.data) == [ScaleApp("w", 3)]
    # a cap not yet in force is not re-sent at once, but is after pending_ticks
    assert d.filter([SetContainerPowercap("c1", 1.0)], o.data) == [SetContainerPowercap("c1", 1.0)]
    assert d.filter([SetContainerPowercap("c1", 1.0)], o.data) == []
    assert d.filter([SetContainerPowercap("c1", 1.0)], o.data) == []
    assert d.filter([SetContainerPowercap("c1", 1.0)], o.data) == [SetContainerPowercap("c1", 1.0)]


# --- carbon agnostic ----------------------------------------------------------------


def test_carbon_agnostic_undoes_suspensions_and_caps() -> None:
    p = CarbonAgnostic()
    p.setup(APP)
    assert p.decide(obs(carbon=900)) == []
    out = p.decide(obs(suspended={"c1"}, caps={"c2": 1.0}))
    assert out == [ResumeContainer("c1"), SetContainerPowercap("c2", None)]


# --- suspend-resume and wait&scale ----------------------------------------------------


def test_suspend_resume_fixed_threshold_crossing() -> None:
    p = SuspendResume(CarbonThreshold(fixed_g_per_kwh=250))
    p.setup(APP)
    assert p.decide(obs(0, carbon=200)) == []
    assert p.decide(obs(1, carbon=251)) == [SuspendContainer("c1"), SuspendContainer("c2")]
    # already suspended and still high: nothing to do
    assert p.decide(obs(2, carbon=300, suspended={"c1", "c2"})) == []
    # falls to exactly the threshold: resume
    assert p.decide(obs(3, carbon=250, suspended={"c1", "c2"})) == [
        ResumeContainer("c1"), ResumeContainer("c2")]


def test_suspend_resume_default_is_30th_percentile_of_trailing_48h() -> None:
    p = SuspendResume()
    p.setup(APP)
    # a day of low carbon (100), then a rising day
    seq = [100.0] * 10 + [300.0, 400.0, 500.0]
    decisions = [p.decide(obs(k, carbon=c, tick_s=3600)) for k, c in enumerate(seq)]
    assert decisions[9] == []  # at the percentile: run
    assert decisions[10] == [SuspendContainer("c1"), SuspendContainer("c2")]
    assert p.last_threshold == pytest.approx(100.0)
    # 48 h later the low day has left the window: the threshold follows the trace
    for k in range(13, 13 + 48):
        p.decide(obs(k, carbon=500.0, suspended={"c1", "c2"}, tick_s=3600))
    assert p.last_threshold == pytest.approx(500.0)
    assert p.decide(obs(61, carbon=450.0, suspended={"c1", "c2"}, tick_s=3600)) == [
        ResumeContainer("c1"),
        ResumeContainer("c2"),
    ]


def test_wait_and_scale_vertical_scales_up_below_and_suspends_above() -> None:
    p = WaitAndScale(CarbonThreshold(fixed_g_per_kwh=250), factor=2.0, base_cpus=4)
    p.setup(APP)
    assert p.decide(obs(0, carbon=100)) == [ScaleContainer("c1", 8.0), ScaleContainer("c2", 8.0)]
    assert p.decide(obs(1, carbon=300)) == [SuspendContainer("c1"), SuspendContainer("c2")]
    out = p.decide(obs(2, carbon=200, suspended={"c1", "c2"}))
    assert out == [ResumeContainer("c1"), ScaleContainer("c1", 8.0),
                   ResumeContainer("c2"), ScaleContainer("c2", 8.0)]


def test_wait_and_scale_horizontal_factor_3() -> None:
    p = WaitAndScale(CarbonThreshold(fixed_g_per_kwh=250), factor=3, template="w", base_replicas=8)
    p.setup(APP)
    assert ScaleApp("w", 24) in p.decide(obs(0, carbon=100))
    assert ScaleApp("w", 0) in p.decide(obs(1, carbon=400))
    with pytest.raises(ValueError, match="no template"):
        WaitAndScale(template="nope").setup(APP)


# --- carbon rate and budget ----------------------------------------------------------


def test_static_rate_limit_caps_follow_carbon() -> None:
    p = StaticRateLimit(rate_mg_per_s=0.002)  # microserver scale: 0.002 mg/s
    assert p.setup(APP) == [SetCarbonRate("c1", 0.001), SetCarbonRate("c2", 0.001)]
    # 0.002 mg/s at 200 g/kWh allows 0.036 W of grid; plus 4 W of solar over 2 containers
    assert p.decide(obs(carbon=200, next_solar=4.0)) == [
        SetContainerPowercap("c1", 2.0),
        SetContainerPowercap("c2", 2.0),
    ]
    # carbon halves: twice the grid power is allowed
    out = p.decide(obs(carbon=7.2, next_solar=0.0))  # 0.002*3600/7.2 = 1 W
    assert out == [SetContainerPowercap("c1", 0.5), SetContainerPowercap("c2", 0.5)]
    out = p.decide(obs(carbon=3.6, next_solar=0.0))
    assert out == [SetContainerPowercap("c1", 1.0), SetContainerPowercap("c2", 1.0)]
    # zero-carbon grid: no limit at all
    assert p.decide(obs(carbon=0.0)) == [
        SetContainerPowercap("c1", None), SetContainerPowercap("c2", None)]


def test_static_rate_limit_paper_default_in_workers() -> None:
    p = StaticRateLimit(template="w", worker_w=50.0)
    p.setup(APP)
    assert p.rate == 20.0
    # 20 mg/s at 250 g/kWh: 288 W -> 5 workers of 50 W
    assert p.decide(obs(carbon=250)) == [ScaleApp("w", 5)]
    assert p.decide(obs(carbon=500)) == [ScaleApp("w", 2)]


def _budget(**kw) -> DynamicBudget:
    p = DynamicBudget(
        slo_ms=60, rate_mg_per_s=1.0, horizon_s=3600, template="w", worker_w=1.0, **kw
    )
    p.setup(APP)
    return p


def test_dynamic_budget_setup_registers_rate_times_horizon() -> None:
    p = DynamicBudget(template="w")
    assert p.setup(APP) == [SetCarbonBudget(20.0 * 48 * 3600 / 1000, 48 * 3600.0)]


def test_dynamic_budget_scales_up_when_latency_above_slo_and_down_when_idle() -> None:
    p = _budget()
    assert p.decide(obs(0, carbon=100, latency_ms=90, app_power=1.0)) == [
        ScaleApp("w", 2)
    ]  # 90/60 - 1 = 50 % over: + ceil(0.5) workers
    assert p.decide(obs(1, carbon=100, latency_ms=200, app_power=2.0)) == [
        ScaleApp("w", 7)
    ]  # 233 % over: + ceil(2 * 2.33) = 5
    assert p.decide(obs(2, carbon=100, latency_ms=50, app_power=7.0)) == [
        ScaleApp("w", 7)
    ]  # within [low water, SLO]: hold
    assert p.decide(obs(3, carbon=100, latency_ms=10, app_power=7.0)) == [ScaleApp("w", 6)]


def test_dynamic_budget_banks_credit_when_carbon_low_and_spends_it_when_high() -> None:
    p = _budget(max_workers=20)
    # an hour of low spending banks credit (rate 1 mg/s, spends 0.1 mg/s)
    for k in range(60):
        p.decide(obs(k, carbon=10, latency_ms=30, carbon_g=0.006, app_power=1.0))
    assert p.credit_g == pytest.approx(60 * 60 * 0.001 - 60 * 0.006)
    # high carbon and load: the static rate allows 1*3600/1000 = 3.6 W = 3 workers, the
    # banked credit (3.24 g over 1 h = 0.9 mg/s more) allows 1.9 mg/s = 6.84 W = 6
    out = p.decide(obs(60, carbon=1000, latency_ms=600, app_power=1.0))
    assert out == [ScaleApp("w", 6)]
    fresh = _budget(max_workers=20)
    assert fresh.decide(obs(0, carbon=1000, latency_ms=600, app_power=1.0)) == [
        ScaleApp("w", 3)
    ]


def test_dynamic_budget_nearly_spent_falls_back_to_what_remains() -> None:
    p = _budget(max_workers=20)
    p.workers = 6
    # 3.5 of 3.6 g spent in the first tick: what remains (0.1 g over 3540 s) allows
    # 0.028 mg/s -> 0.1 W at 1000 g/kWh: below one worker -> min_workers
    out = p.decide(obs(0, carbon=1000, latency_ms=600, carbon_g=3.5, app_power=6.0))
    assert out == [ScaleApp("w", 1)]

    # the ecovisor's carbon_budget_near notification binds even with 1/6 of it left:
    # 0.6 g over the 2540 s left is 0.236 mg/s -> 0.85 W at 1000 g/kWh -> min_workers
    def at_1000s() -> DynamicBudget:
        q = _budget(max_workers=20)
        q.spent_g, q.elapsed_s = 3.0, 1000.0
        return q

    near = frozenset({"carbon_budget_near"})
    o = dict(carbon=1000, latency_ms=600, app_power=1.0)
    assert at_1000s().decide(obs(0, events=near, **o)) == [ScaleApp("w", 1)]
    # without it, the plain rate (no credit left) allows 3.6 W -> 3 workers
    assert at_1000s().decide(obs(0, **o)) == [ScaleApp("w", 3)]


# --- solar + battery --------------------------------------------------------------


def test_solar_battery_setup_is_zero_carbon_with_guaranteed_power() -> None:
    p = SolarBattery(mode="static", base_workers=4, worker_w=2.0, template="w")
    assert p.setup(APP) == [SetBatteryChargeRate(0.0), SetBatteryMaxDischarge(8.0)]


def test_solar_battery_static_keeps_fixed_workers_until_battery_empty() -> None:
    p = SolarBattery(mode="static", base_workers=4, worker_w=2.0, template="w")
    p.setup(APP)
    day = [
        obs(0, next_solar=1.0),  # morning: battery covers the rest
        obs(1, next_solar=12.0, battery_full=True),  # noon, battery full
        obs(2, next_solar=3.0, battery_empty=True),  # evening, battery empty
        obs(3, next_solar=0.0, battery_empty=True),  # night: wait for the morning
    ]
    assert [p.decide(o) for o in day] == [
        [ScaleApp("w", 4)],
        [ScaleApp("w", 4)],
        [ScaleApp("w", 1)],
        [ScaleApp("w", 0)],
    ]


def test_solar_battery_dynamic_adds_workers_on_excess_solar_only_when_full() -> None:
    p = SolarBattery(mode="dynamic", base_workers=4, worker_w=2.0, template="w")
    p.setup(APP)
    assert p.decide(obs(0, next_solar=12.0)) == [ScaleApp("w", 4)]  # battery filling
    assert p.decide(obs(1, next_solar=12.0, battery_full=True)) == [ScaleApp("w", 6)]
    assert p.decide(obs(2, next_solar=40.0, battery_full=True)) == [ScaleApp("w", 8)]
    assert p.decide(obs(3, next_solar=6.0, battery_full=True)) == [ScaleApp("w", 4)]


def test_solar_battery_without_template_suspends_containers() -> None:
    p = SolarBattery(mode="static", base_workers=4, worker_w=2.0)
    p.setup(APP)  # only 2 containers: base capped to 2
    assert p.decide(obs(0, next_solar=1.0)) == []
    assert p.decide(obs(1, next_solar=2.0, battery_empty=True)) == [SuspendContainer("c2")]
    assert p.decide(obs(2, next_solar=0.0, battery_empty=True, suspended={"c2"})) == [
        SuspendContainer("c1")]


# --- solar following caps and stragglers ---------------------------------------------


def test_water_fill() -> None:
    assert water_fill(10.0, {"a": 1.0, "b": 8.0, "c": 8.0}) == {"a": 1.0, "b": 4.5, "c": 4.5}
    alloc = water_fill(10.0, {"a": 1.0, "b": 2.0})
    assert alloc == {"a": 4.5, "b": 5.5} and sum(alloc.values()) == pytest.approx(10.0)


def test_solar_following_caps_follow_solar_up_and_down() -> None:
    p = SolarFollowingCaps(mode="static")
    p.setup(APP)
    caps = [p.caps(obs(k, next_solar=s)) for k, s in enumerate([2.0, 6.0, 10.0, 4.0, 0.0])]
    assert [c["c1"] for c in caps] == pytest.approx([1.0, 3.0, 5.0, 2.0, 0.5])
    assert all(c["c1"] == c["c2"] for c in caps)
    for c, s in zip(caps[:4], [2.0, 6.0, 10.0, 4.0], strict=True):
        assert sum(c.values()) <= s + 1e-9


def test_solar_following_caps_dynamic_moves_power_to_busy_containers() -> None:
    p = SolarFollowingCaps(mode="dynamic", headroom=0.1)
    p.setup(APP)
    # c1 is I/O bound (1 W), c2 is busy at its cap (5 W): c2 gets what c1 does not use
    caps = p.caps(obs(next_solar=10.0, power={"c1": 1.0, "c2": 5.0}))
    assert caps["c1"] == pytest.approx(1.1 + (10 - 1.1 - 5.5) / 2)
    assert caps["c2"] > caps["c1"]
    assert sum(caps.values()) <= 10.0 + 1e-9
    # solar falls below both demands: max-min fair split
    caps = p.caps(obs(next_solar=3.0, power={"c1": 4.0, "c2": 5.0}))
    assert caps == {"c1": pytest.approx(1.5), "c2": pytest.approx(1.5)}
    assert p.decide(obs(next_solar=3.0, power={"c1": 4.0, "c2": 5.0})) == [
        SetContainerPowercap("c1", 1.5),
        SetContainerPowercap("c2", 1.5),
    ]


def test_straggler_replicas_only_on_solar_that_would_be_curtailed() -> None:
    p = StragglerReplicas(template="w", replica_w=2.0, max_replicas=4)
    assert p.setup(APP) == [ScaleApp("w", 0)]
    # excess solar while the battery is still charging: it is stored, not curtailed
    assert p.decide(obs(0, next_solar=9.0)) == [ScaleApp("w", 0)]
    # battery full: 9 - 4 = 5 W of excess -> 2 replicas
    assert p.decide(obs(1, next_solar=9.0, battery_full=True)) == [ScaleApp("w", 2)]
    # more sun, replicas drawing 4 W: 14 - 8 = 6 W more -> +3, capped at 4
    assert p.decide(obs(2, next_solar=14.0, battery_full=True, app_power=8.0)) == [
        ScaleApp("w", 4)
    ]
    # solar falls below the app's power: shed ceil(3/2) = 2 replicas
    assert p.decide(obs(3, next_solar=9.0, battery_full=True, app_power=12.0)) == [
        ScaleApp("w", 2)
    ]
    # the app reports a single straggler: no more than one replica
    out = p.decide(obs(4, next_solar=30.0, battery_full=True, metrics={"stragglers": 1.0}))
    assert out == [ScaleApp("w", 1)]


def test_straggler_replicas_without_battery_treat_any_excess_as_curtailed() -> None:
    p = StragglerReplicas(template="w")
    p.setup(AppView(app="x", containers=("c1",), templates=("w",)))
    assert p.decide(obs(0, next_solar=8.0, power={"c1": 4.0})) == [ScaleApp("w", 2)]


# --- the runner -------------------------------------------------------------------


class _NoClient:
    """The runner's client: records the actions' commands."""

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def scale_app(self, template: str, replicas: int) -> None:
        self.sent.append(("scale_app", template, replicas))

    def set_carbon_budget(self, grams: float, period_s: float) -> None:
        self.sent.append(("set_carbon_budget", grams, period_s))


def _tick_note(k: int, carbon_g: float = 0.5) -> Notification:
    o = obs(k, carbon=100, carbon_g=carbon_g, app_power=1.0)
    return Notification(site="s1", time=o.time, app="web", type="tick", tick=k,
                        data=o.data.model_dump())  # fmt: skip


def test_runner_hands_a_duplicated_tick_to_the_policy_once(caplog) -> None:
    """The ledger's output is at-least-once with identical duplicates: the same tick
    delivered twice (or an older one after it) must not count twice in the policy."""
    p = DynamicBudget(template="w", rate_mg_per_s=1.0, horizon_s=3600.0)
    runner = PolicyRunner(p, _NoClient(), APP)
    runner.start()
    runner.on_tick(_tick_note(7))
    assert (p.spent_g, p.elapsed_s) == (0.5, 60.0)
    with caplog.at_level(logging.DEBUG, "ecovisor.policy"):
        assert runner.on_tick(_tick_note(7)) == []  # the duplicate
        assert runner.on_tick(_tick_note(6)) == []  # older than one handled
    assert (p.spent_g, p.elapsed_s) == (0.5, 60.0)
    assert sum("dropped" in r.getMessage() for r in caplog.records) == 2
    runner.on_tick(_tick_note(8))
    assert (p.spent_g, p.elapsed_s) == (1.0, 120.0)


def test_runner_warns_about_missing_ticks_and_still_decides(caplog) -> None:
    p = DynamicBudget(template="w", rate_mg_per_s=1.0, horizon_s=3600.0)
    runner = PolicyRunner(p, _NoClient(), APP)
    runner.on_tick(_tick_note(7))
    with caplog.at_level(logging.WARNING, "ecovisor.policy"):
        runner.on_tick(_tick_note(8))
        assert not caplog.records
        runner.on_tick(_tick_note(11))
    (rec,) = caplog.records
    assert "ticks 9..10" in rec.getMessage()
    assert p.spent_g == 1.5


def test_runner_follows_a_tick_index_that_goes_back_at_a_later_time(caplog) -> None:
    """Tick indices are epoch-based: a tick_s raised under a running policy sends them
    back while time goes on. Judged by index, every later tick was dropped (a review)."""
    p = DynamicBudget(template="w", rate_mg_per_s=1.0, horizon_s=3600.0)
    runner = PolicyRunner(p, _NoClient(), APP)
    runner.on_tick(_tick_note(7))
    later = _tick_note(8)
    back = later.model_copy(update={"tick": 3})  # the index of a longer tick, later time
    with caplog.at_level(logging.WARNING, "ecovisor.policy"):
        runner.on_tick(back)
    assert p.spent_g == 1.0 and "went back from 7 to 3" in caplog.text
    assert runner.on_tick(back) == [] and p.spent_g == 1.0  # its duplicate still dropped
