"""The chaos run's site and its deterministic trace (reliability/chaos.py): two apps'
containers, solar and carbon telemetry with duplicates, late samples and gaps bridged by
replay clock messages, and the apps' commands, in trace order."""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecovisor.contract import topics
from ecovisor.contract.commands import (
    Command,
    SetBatteryChargeRate,
    SetContainerPowercap,
    sign_command,
)
from ecovisor.contract.telemetry import (
    CarbonTelemetry,
    ClockMessage,
    ContainerTelemetry,
    SolarTelemetry,
)

SITE = "chaos"
T0 = 1_700_000_000  # a tick boundary (Δt = 1 s); tick k0 = T0
APPS = {"a": ["a-1", "a-2"], "b": ["b-1", "b-2"]}
TOKENS = {"a": "chaos-token-app-a-0001", "b": "chaos-token-app-b-0002"}
CLOCK_SOURCE = "chaos-replay"
INTERNAL_KEY = "chaos-internal-key-not-secret-0001"
GAP_TICKS = 8  # silent ticks (> clock_skew_s): bridged by a clock message
CLOCK_SKEW_S = 5.0


def at(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, UTC)


@dataclass(frozen=True)
class Step:
    """One thing the edge / the apps do, in trace order."""

    kind: str  # "mqtt" | "clock" | "command"
    tick: int  # trace tick (0-based) the step belongs to
    topic: str = ""
    payload: bytes = b""
    ident: tuple[str, int] | None = None  # (source, seq) of telemetry
    command: Command | None = None


@dataclass
class Workload:
    ticks: int
    steps: list[Step]
    commands: list[Command]
    gaps: list[tuple[int, int]]  # [first silent tick, first tick with data again)
    telemetry: int  # distinct (source, seq) published
    duplicates: int
    late: int


def site_yaml(bootstrap: str, mqtt_port: int, web_port: int, state: Path, top: str) -> str:
    apps = ""
    for app, conts in APPS.items():
        apps += (
            f"  - id: {app}\n    token: {TOKENS[app]}\n"
            "    shares: {solar_fraction: 0.5, battery_capacity_wh: 8.0, grid_w: 20.0}\n"
            "    containers:\n"
        )
        for c in conts:
            backend = f"{{type: cgroup_v1, cgroup: {top}/{c}}}"
            apps += f"      - {{id: {c}, node: n1, backend: {backend}}}\n"
    return f"""schema_version: 1
site:
  id: {SITE}
  shape: {{tick_s: 1.0, solar_nameplate_w: 20.0, battery_capacity_wh: 16.0,
           idle_attribution: none}}
  grace_s: 0.5
  nodes: [{{id: n1, cores: 2, power_model: {{preset: ecovisor-microserver}}}}]
  limits: {{replay_clock_source: {CLOCK_SOURCE}, clock_skew_s: {CLOCK_SKEW_S}}}
  internal_key: {INTERNAL_KEY}
apps:
{apps}stack:
  kafka_bootstrap: "{bootstrap}"
  mqtt_port: {mqtt_port}
  ledger_web_port: {web_port}
  state_dir: "{state}"
"""


def gaps_of(ticks: int) -> list[tuple[int, int]]:
    starts = [int(ticks * f) for f in (0.35, 0.7)] if ticks >= 100 else []
    if 30 <= ticks < 100:
        starts = [int(ticks * 0.5)]
    return [(g, g + GAP_TICKS) for g in starts]


def make_commands(ticks: int) -> list[tuple[int, Command]]:
    """(trace tick, command): power caps through the actuator, battery charge rates
    applied by the ledger, one refused (app b capping app a's container)."""

    def cap(app: str, n: int, container: str, watts: float | None) -> Command:
        return sign_command(SetContainerPowercap(site=SITE, time=at(0), command_id=f"chaos-{n}",
                                                 app=app, container=container, watts=watts),
                            TOKENS[app])  # fmt: skip

    def charge(app: str, n: int, watts: float) -> Command:
        return sign_command(SetBatteryChargeRate(site=SITE, time=at(0), command_id=f"chaos-{n}",
                                                 app=app, watts=watts), TOKENS[app])  # fmt: skip

    plan = [
        (0.15, cap("a", 1, "a-1", 1.0)),
        (0.3, charge("b", 2, 1.5)),
        (0.45, cap("b", 3, "a-2", 1.0)),  # not b's container: command_rejected
        (0.6, cap("a", 4, "a-2", 0.8)),
        (0.75, cap("a", 5, "a-1", None)),  # removes the cap: the actuator restores -1
        (0.9, charge("b", 6, 0.0)),
    ]
    if ticks < 60:
        plan = [plan[0], plan[1], plan[3], plan[4]]
    gaps = gaps_of(ticks)
    out: list[tuple[int, Command]] = []
    for f, cmd in plan:
        c = max(2, int(ticks * f))
        while c in {t for t, _ in out} or any(g0 - 1 <= c < g1 + 1 for g0, g1 in gaps):
            c += 1
        if c < ticks - 1:
            out.append((c, cmd))
    return out


def workload(ticks: int, seed: int) -> Workload:
    """The trace: per tick two samples (at +0 and +0.5 s) of every container and the
    solar meter (cumulative counters), one carbon intensity; ~3 % duplicates, a late
    sample every 17 ticks, silent gaps bridged by a clock message; commands in lockstep
    (published once the tick before closed, in the tick of their event time)."""
    rng = random.Random(seed)
    gaps = gaps_of(ticks)
    cmds = dict(make_commands(ticks))
    steps: list[Step] = []
    seqs: dict[str, int] = {}
    counters: dict[str, float] = {}
    held: list[Step] = []
    dups = late = 0
    conts = [(app, c) for app, cs in APPS.items() for c in cs]

    def telemetry(i: int, m: Any) -> Step:
        return Step("mqtt", i, topics.mqtt_telemetry(SITE, m.kind, m.source), m.to_json(),
                    (m.source, m.seq))  # fmt: skip

    def seq(source: str) -> int:
        seqs[source] = seqs.get(source, -1) + 1
        return seqs[source]

    for i in range(ticks):
        if any(g0 <= i < g1 for g0, g1 in gaps):
            continue
        if any(i == g1 for _, g1 in gaps):  # the replay bridges the gap with its clock
            # (its step belongs to the last tick with data: the publisher's backlog
            # bound must not wait for ticks only this message can close)
            cm = ClockMessage(site=SITE, time=at(i - 0.5), source=CLOCK_SOURCE)
            steps.append(Step("clock", i - GAP_TICKS - 1, payload=cm.model_dump_json().encode()))
        for half in (0.0, 0.5):
            t = i + half
            batch: list[Step] = []
            counters["solar"] = counters.get("solar", 0.0) + rng.uniform(0.0, 2.4)
            batch.append(telemetry(i, SolarTelemetry(
                site=SITE, time=at(t), source="solar", seq=seq("solar"), power_w=8.0,
                energy_j=round(counters["solar"], 3))))  # fmt: skip
            if half == 0.0:
                batch.append(telemetry(i, CarbonTelemetry(
                    site=SITE, time=at(t), source="carbon", seq=seq("carbon"),
                    intensity_g_per_kwh=round(rng.uniform(100.0, 450.0), 1))))  # fmt: skip
            for app, c in conts:
                src = f"ctr-{c}"
                counters[src] = counters.get(src, 0.0) + rng.uniform(0.05, 0.75)
                batch.append(telemetry(i, ContainerTelemetry(
                    site=SITE, time=at(t), source=src, seq=seq(src), app=app, container=c,
                    node="n1", cpu_s=0.0, energy_j=round(counters[src], 3))))  # fmt: skip
            for s in batch:
                if half == 0.5 and i % 17 == 5 and s.ident and s.ident[0] == "ctr-b-1":
                    held.append(s)  # published after the next tick's second half: late
                    continue
                steps.append(s)
                if rng.random() < 0.03:
                    steps.append(s)  # an edge re-send: same source and seq
                    dups += 1
            if half == 0.5 and held and held[0].tick < i:
                for h in held:
                    steps.append(Step("mqtt", i, h.topic, h.payload, h.ident))
                    late += 1
                held = []
        if i in cmds:
            steps.append(Step("command", i, command=cmds[i]))
    for h in held:
        steps.append(Step("mqtt", ticks - 1, h.topic, h.payload, h.ident))
        late += 1
    end = ClockMessage(site=SITE, time=at(ticks + 0.5), source=CLOCK_SOURCE)
    steps.append(Step("clock", ticks - 1, payload=end.model_dump_json().encode()))
    n = len({s.ident for s in steps if s.ident})
    return Workload(ticks, steps, [c for _, c in sorted(cmds.items())], gaps, n, dups, late)
