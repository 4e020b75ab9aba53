"""The figures of a chaos run's two runs and their comparison (reliability/chaos.py)."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from pathlib import Path

from ecovisor.contract import topics
from reliability.chaos_outcome import Outcome
from reliability.chaos_workload import APPS, GAP_TICKS, Workload


@dataclass
class Report:
    workload: Workload
    ref: Outcome
    got: Outcome
    mismatches: list[str]
    services: list[str]
    kills_per_service: int
    seed: int

    def kills_done(self) -> dict[str, int]:
        out = {s: 0 for s in self.services}
        for k in self.got.kills:
            if k.at:
                out[k.service] += 1
        return out


def machine() -> str:
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return (f"{platform.platform()}, {os.cpu_count()} CPUs ({cpu or platform.machine()}), "
            f"Python {platform.python_version()}")  # fmt: skip


def stats(xs: list[float]) -> str:
    if not xs:
        return "n/a"
    xs = sorted(xs)
    med = xs[len(xs) // 2]
    return f"median {med:.2f} s, max {xs[-1]:.2f} s (n={len(xs)})"


def total(t: dict[str, int]) -> str:
    return f"{t['energy_mj'] / 1000:.3f} J, {t['carbon_ug'] / 1e6:.6f} g"


def render(r: Report) -> str:
    wl, ref, got = r.workload, r.ref, r.got
    n_entries = sum(len(v) for v in got.entries.values())
    lines = [
        f"machine: {machine()}",
        f"workload: {wl.ticks} ticks of 1 s (event time), apps {', '.join(APPS)} with "
        f"{sum(len(c) for c in APPS.values())} containers, solar, carbon; "
        f"{wl.telemetry} telemetry messages over MQTT QoS 1 (+{wl.duplicates} edge duplicates, "
        f"{wl.late} late), {len(wl.gaps)} gap(s) of {GAP_TICKS} ticks bridged by clock "
        f"messages, {len(wl.commands)} commands; seed {r.seed}",
        "not killed: the telemetry publisher (it stands for the edge devices) and the brokers",
        f"fault-free run: {ref.wall_s:.1f} s wall; chaos run: {got.wall_s:.1f} s wall",
        f"kills done: {r.kills_done()} (asked {r.kills_per_service} per service)",
    ]
    for s in r.services:
        ks = [k for k in got.kills if k.service == s and k.at]
        ready = stats([k.ready_s for k in ks if k.ready_s is not None])
        first = stats([k.first_tick_s for k in ks if k.first_tick_s is not None])
        lines.append(
            f"  {s}: ready after restart {ready}; first new tick closed after restart {first}; "
            f"{sum(k.during_recovery for k in ks)} kill(s) before the previous restart had "
            f"closed a new tick"
        )
    dup_fwd = sum(n - 1 for n in got.forwarded.values())
    lines += [
        f"chaos run: {len(got.entries)} ledger keys, {n_entries} distinct entries, "
        f"{got.copies[topics.LEDGER]} ledger records (re-emitted: "
        f"{got.copies[topics.LEDGER] - len(got.entries)}; fault-free: "
        f"{ref.copies[topics.LEDGER] - len(ref.entries)}); telemetry copies in Kafka beyond "
        f"one per message: {dup_fwd} (fault-free: {sum(n - 1 for n in ref.forwarded.values())}); "
        f"dead letters {got.dead_letters} (fault-free {ref.dead_letters})",
        "totals per app (chaos / fault-free): "
        + "; ".join(f"{a}: {total(got.totals[a])} / {total(ref.totals[a])}" for a in APPS),
        f"command outcomes: {got.final}",
        f"final cgroup quotas (cores): {got.quotas}"
        + ("" if got.cgroups else " (no writable cgroup v1 here: caps acknowledged ok=False)"),
        f"mismatches: {len(r.mismatches)}",
        *(f"  MISMATCH {m}" for m in r.mismatches),
    ]
    return "\n".join(lines)
