"""The core's outputs, bit for bit, against a golden file written by the code before the
step was optimised (docs/ledger.md "Core step performance").

Seeded random multi-tick scenarios (1-5 apps, 0-6 containers coming and going, every
excess-solar policy, site grid limits, efficiencies below 1, Rc/Rd, carbon-rate limits
set, resized and removed, budgets with periods, notify thresholds, tick gaps, estimated
sources, drift readings, Δt from 1 s to 300 s) run through ``site_step`` and
``app_step``; the serialised result and state of every step (the JSON written to Kafka
and to the table snapshot) are hashed and compared with
``tests/fixtures/core_golden.json``. The file was produced once by the core at commit
361d432 (``python tests/unit/test_core_golden.py --write``); rewrite it only for a
deliberate change of a rule, and say so.

Rewritten on 3 December 2026 for the carbon history's new shape (``CarbonHistory``
keeps its coarse tiers' completed buckets; the open ones are derived): every result
(ledger entries, events, totals) hashed the same before and after, and every state the
same once each history was written back in the old shape (``history_with_open``); only
the last digest of each site scenario changed as well, the histories cut to a budget,
which now counts the values kept (fewer per history).
"""

from __future__ import annotations

import hashlib
import json
import random
import sys
from pathlib import Path

from ecovisor.core.settings import queue_change, queue_site_change
from ecovisor.core.shares import AppShare, ExcessSolarPolicy, SiteShape
from ecovisor.core.state import (
    AppTickInput,
    CarbonBudget,
    CarbonRateLimit,
    NotifyThresholds,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
    SetNotifyThresholds,
    SiteState,
    SiteTickInput,
)
from ecovisor.core.tick import app_step, initial_app_state, initial_site_state, site_step

if __name__ == "__main__":  # run as a script (--write): the repository's tests package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.unit.site_histories_oracle import bound_site_histories  # noqa: E402

GOLDEN = Path(__file__).resolve().parents[1] / "fixtures" / "core_golden.json"
N_SITES = 24
N_APP_RUNS = 12


def _digest(*blobs: str) -> str:
    h = hashlib.sha256()
    for b in blobs:
        h.update(b.encode())
        h.update(b"\0")
    return h.hexdigest()[:24]


def _change(rng: random.Random, containers: list[str]):  # noqa: ANN202
    c = rng.choice(containers)
    pick = rng.randrange(9)
    if pick == 0:
        return SetBatteryChargeRate(watts=rng.choice([0.0, 0.5, 2.0, 7.5, 50.0]))
    if pick == 1:
        return SetBatteryMaxDischarge(watts=rng.choice([None, 0.0, 1.0, 5.0, 30.0]))
    if pick == 2:
        return SetContainerPowercap(container=c, watts=rng.choice([None, 1.5, 10.0]))
    if pick in (3, 4, 5):
        limit = None if rng.random() < 0.2 else CarbonRateLimit(
            rate_mg_per_s=rng.choice([0.001, 0.01, 0.05, 0.5]),
            window_s=rng.choice([1.0, 7.0, 60.0, 600.0, 3_600.0, 86_400.0]))
        return SetCarbonRate(container=c, limit=limit)
    if pick in (6, 7):
        budget = None if rng.random() < 0.2 else CarbonBudget(
            budget_g=rng.choice([0.01, 0.1, 1.0]), period_s=rng.choice([None, 60.0, 900.0]))
        return SetCarbonBudget(budget=budget)
    return SetNotifyThresholds(notify=NotifyThresholds(
        solar_change_abs_w=rng.choice([0.0, 0.1, 1.0]), solar_change_rel=rng.choice([0.0, 0.1]),
        carbon_change_abs_g_per_kwh=rng.choice([0.0, 5.0]),
        carbon_change_rel=rng.choice([0.0, 0.05]), near_fraction=rng.choice([0.5, 0.9, 1.0])))


def _share(rng: random.Random, frac: float) -> AppShare:
    return AppShare(
        solar_fraction=frac,
        battery_capacity_wh=rng.choice([0.0, 5.0, 10.0, 40.0]) if rng.random() < 0.9 else 0.0,
        battery_max_charge_w=rng.choice([None, None, 1.0, 20.0]),
        battery_max_discharge_w=rng.choice([None, None, 2.0]),
        reserve_soc=rng.choice([0.0, 0.1, 0.3]),
        charge_efficiency=rng.choice([1.0, 1.0, 0.9, 0.75]),
        discharge_efficiency=rng.choice([1.0, 1.0, 0.95, 0.5]),
        grid_w=rng.choice([0.0, 5.0, 20.0, 200.0]),
        initial_soc=rng.choice([None, 0.5, 0.95]),
    )


def _site(rng: random.Random) -> tuple[SiteShape, dict[str, AppShare]]:
    while True:
        n = rng.randint(1, 5)
        fracs = [rng.choice([0.0, 0.1, 0.2]) for _ in range(n)]
        shape = SiteShape(
            tick_s=rng.choice([1.0, 1.0, 7.0, 60.0, 300.0]),
            solar_nameplate_w=rng.choice([0.0, 20.0, 100.0]),
            battery_capacity_wh=200.0,
            grid_limit_w=rng.choice([float("inf"), 30.0, 200.0]),
            excess_solar=rng.choice(list(ExcessSolarPolicy)),
            drift_tolerance_wh=rng.choice([0.0, 0.5, 5.0]),
        )
        shares = {f"app{i}": _share(rng, fracs[i]) for i in range(n)}
        try:
            initial_site_state(shape, shares, site="g")
        except ValueError:
            continue
        return shape, shares


def _demand(rng: random.Random, names: list[str], tick_s: float) -> dict[str, int]:
    live = [c for c in names if rng.random() < 0.8]
    return {c: rng.choice([0, rng.randint(0, 40_000), rng.randint(0, 4_000)]) * int(tick_s)
            for c in live}


def site_scenario(seed: int) -> list[str]:
    """Digests of every step of one random site."""
    rng = random.Random(seed)
    shape, shares = _site(rng)
    apps = sorted(shares)
    names = {a: [f"{a}-c{j}" for j in range(rng.randint(0, 6))] or [f"{a}-c0"] for a in apps}
    state: SiteState = initial_site_state(shape, shares, site="g")
    out = []
    k = rng.randint(0, 3)
    for _ in range(rng.randint(60, 140)):
        for a in apps:
            if rng.random() < 0.08:
                state = queue_site_change(state, a, _change(rng, names[a]), max(0, k - 1))
        solar = rng.choice([0, rng.randint(0, 30_000), rng.randint(0, 300_000)])
        inp = SiteTickInput(
            k=k, t_start=1_700_000_000.0 + k * shape.tick_s,
            site_solar_mj=solar * int(shape.tick_s),
            intensity_g_per_kwh=rng.choice([0.0, 123.4, rng.uniform(0, 800)]),
            demand_mj={a: _demand(rng, names[a], shape.tick_s) for a in apps
                       if rng.random() < 0.9},
            platform_mj=rng.choice([0, rng.randint(0, 5_000)]) * int(shape.tick_s),
            physical_battery_mj=None if rng.random() < 0.7 else rng.randint(0, 50_000_000),
            estimated_sources=() if rng.random() < 0.9 else ("carbon:x",),
            app_estimated_sources={a: ("c:" + names[a][0],) for a in apps
                                   if rng.random() < 0.05},
        )
        state, res = site_step(shape, shares, state, inp)
        out.append(_digest(res.model_dump_json(), state.model_dump_json()))
        k += 1 if rng.random() < 0.9 else rng.choice([2, 5, 400])
    # (the values' budget alone: the digests predate the count bound, which few
    # containers never reach)
    bounded = bound_site_histories(dict(state.apps), budget=rng.choice([0, 40, 400]),
                                   max_histories=10**9)
    out.append(_digest(*(bounded[a].model_dump_json() for a in sorted(bounded))))
    return out


def app_scenario(seed: int) -> list[str]:
    rng = random.Random(10_000 + seed)
    shape, shares = _site(rng)
    share = shares["app0"]
    names = [f"c{j}" for j in range(rng.randint(1, 4))]
    state = initial_app_state(share, shape, site="g", app="app0")
    out = []
    for k in range(rng.randint(40, 80)):
        if rng.random() < 0.1:
            state = queue_change(state, _change(rng, names), max(0, k - 1))
        inp = AppTickInput(k=k, t_start=1_700_000_000.0 + k * shape.tick_s,
                           solar_mj=rng.randint(0, 100_000) * int(shape.tick_s),
                           intensity_g_per_kwh=rng.uniform(0, 600),
                           demand_mj=_demand(rng, names, shape.tick_s))
        state, entry = app_step(share, shape, state, inp)
        out.append(_digest(entry.model_dump_json(), state.model_dump_json()))
    return out


def compute() -> dict[str, list[str]]:
    out = {f"site{s}": site_scenario(s) for s in range(N_SITES)}
    out.update({f"app{s}": app_scenario(s) for s in range(N_APP_RUNS)})
    return out


def test_core_outputs_match_the_golden_file() -> None:
    golden = json.loads(GOLDEN.read_text())
    got = compute()
    assert sorted(got) == sorted(golden)
    for name, digests in golden.items():
        mine = got[name]
        assert len(mine) == len(digests), name
        for i, (a, b) in enumerate(zip(mine, digests, strict=True)):
            assert a == b, f"{name}: step {i} differs from the golden output"


if __name__ == "__main__" and "--write" in sys.argv:
    GOLDEN.write_text(json.dumps(compute(), indent=0, sort_keys=True) + "\n")


def test_unchecked_models_behave_as_validated_ones() -> None:
    """The step builds its models unchecked (``account_lines.unchecked``): they must be equal to,
    serialise like and copy like validated ones, and a copy must not change the fields
    set the unchecked instances share."""
    from ecovisor.core.account_lines import AccountLine, unchecked

    values = {"energy_mj": 10, "solar_mj": 3, "battery_mj": 3, "grid_mj": 4,
              "unserved_mj": 0, "carbon_ug": 5}
    fast, slow = unchecked(AccountLine, dict(values)), AccountLine(**values)
    assert fast == slow and fast.model_dump_json() == slow.model_dump_json()
    assert fast + fast == slow + slow == AccountLine(**{k: 2 * v for k, v in values.items()})
    other = unchecked(AccountLine, dict(values))
    copied = fast.model_copy(update={"carbon_ug": 6})
    assert copied.carbon_ug == 6 and fast.carbon_ug == 5
    assert fast.model_fields_set == other.model_fields_set == set(values)
    assert AccountLine.model_validate_json(fast.model_dump_json()) == fast
