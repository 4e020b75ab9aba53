"""What a chaos run produced, as a downstream reader sees it, and the checks of
exactness between the fault-free and the chaos run (reliability/chaos.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ecovisor.contract import notifications, topics
from reliability.chaos_faults import Kill
from reliability.chaos_stack import Pipeline, first_tick_after, read_quotas
from reliability.chaos_workload import APPS, T0, Workload


@dataclass
class Outcome:
    """What one run produced, as a downstream reader sees it."""

    entries: dict[tuple[str, int], set[bytes]]
    notes: dict[tuple[str, int], set[bytes]]  # tick notifications and events
    setpoints: dict[int, set[bytes]]
    lifecycle: dict[str, set[str]]  # command_id -> normalised lifecycle notifications
    final: dict[str, str]  # command_id -> its outcome
    totals: dict[str, dict[str, int]]
    quotas: dict[str, float | None]
    forwarded: dict[tuple[str, int], int]
    copies: dict[str, int]  # records per topic, duplicates included
    dead_letters: int
    wall_s: float
    kills: list[Kill]
    cgroups: bool


def outcome(p: Pipeline, wl: Workload, kills: list[Kill], wall_s: float) -> Outcome:
    assert p.tail is not None
    tail = p.tail
    entries: dict[tuple[str, int], set[bytes]] = {}
    for r in tail.snapshot(topics.LEDGER):
        d = json.loads(r.value)
        entries.setdefault((d["app"], d["k"]), set()).add(r.value)
    notes: dict[tuple[str, int], set[bytes]] = {}
    lifecycle: dict[str, set[str]] = {}
    final: dict[str, str] = {}
    for a in APPS:
        for r in tail.snapshot(topics.notifications(a)):
            d = json.loads(r.value)
            if d["type"] in notifications.COMMAND_LIFECYCLE:
                if (d.get("data") or {}).get("actuator") not in (None, "ledger"):
                    d.pop("time")  # the actuator's acknowledgement: wall time
                # (the runs' cgroup trees differ when they run side by side)
                text = json.dumps(d, sort_keys=True).replace(p.top, "TOP")
                lifecycle.setdefault(d["command_id"], set()).add(text)
                if d["type"] in notifications.COMMAND_OUTCOMES:
                    final.setdefault(d["command_id"], d["type"])
            else:
                notes.setdefault((a, d["tick"]), set()).add(r.value)
    setpoints: dict[int, set[bytes]] = {}
    for r in tail.snapshot(topics.ACTUATOR_BATTERY):
        d = json.loads(r.value)
        setpoints.setdefault(int(d["command_id"].rsplit("-", 1)[1]), set()).add(r.value)
    totals = {}
    for a in APPS:
        last = max(k for app, k in entries if app == a)
        tot = json.loads(min(entries[(a, last)]))["cumulative"]["total"]
        totals[a] = {"energy_mj": tot["energy_mj"], "carbon_ug": tot["carbon_ug"]}
    for k in kills:  # restart -> ready; restart -> first new tick closed
        ready = p.services[k.service].ready_at.get(k.start_no)
        k.ready_s = None if ready is None else ready - k.at
        first = first_tick_after(tail, k.at, k.closed_tick)
        k.first_tick_s = None if first is None else first - k.at
    with tail.lock:
        forwarded = dict(tail.forwarded)
        copies = {t: len(v) for t, v in tail.records.items()}
    return Outcome(entries, notes, setpoints, lifecycle, final, totals, read_quotas(p.top),
                   forwarded, copies, copies[topics.DEADLETTER], wall_s, kills,
                   p.cgroups)  # fmt: skip


def dump(o: Outcome, path: Path) -> None:
    """What a run produced, for a look after the fact (``--keep``)."""
    kills = [
        {f: getattr(k, f) for f in ("service", "position", "delay_s", "published_tick",
                                    "closed_tick", "ready_s", "first_tick_s", "during_recovery")}
        for k in o.kills
    ]  # fmt: skip
    doc = {
        "wall_s": o.wall_s,
        "totals": o.totals,
        "final": o.final,
        "lifecycle": {c: sorted(v) for c, v in o.lifecycle.items()},
        "quotas": o.quotas,
        "copies": o.copies,
        "ticks_with_differing_copies": [
            f"{a}:{k}" for (a, k), v in o.entries.items() if len(v) > 1
        ],
        "kills": kills,
    }
    path.write_text(json.dumps(doc, indent=1, default=str))


# --- the comparison --------------------------------------------------------------------


def compare(wl: Workload, ref: Outcome, got: Outcome) -> list[str]:
    """Every difference a downstream reader would see; [] when identical."""
    bad: list[str] = []
    want_keys = {(a, T0 + i) for a in APPS for i in range(wl.ticks)}
    for name, o in (("fault-free", ref), ("chaos", got)):
        missing = sorted(want_keys - o.entries.keys())
        if missing:
            bad.append(f"{name}: {len(missing)} tick(s) without a ledger entry, first {missing[0]}")
        extra = sorted(o.entries.keys() - want_keys)
        if extra:
            bad.append(f"{name}: {len(extra)} unexpected ledger entries, first {extra[0]}")
        for key, versions in sorted(o.entries.items()):
            if len(versions) > 1:
                bad.append(f"{name}: tick {key} re-emitted with different content")
        lost = [i for i in {s.ident for s in wl.steps if s.ident} if i not in o.forwarded]
        if lost:
            bad.append(f"{name}: {len(lost)} telemetry message(s) never reached Kafka: {lost[:3]}")
    for key in sorted(ref.entries.keys() & got.entries.keys()):
        if ref.entries[key] != got.entries[key]:
            bad.append(f"ledger entry {key} differs from the fault-free run")
    for a in APPS:
        if ref.totals[a] != got.totals[a]:
            bad.append(f"app {a}: totals {got.totals[a]} != fault-free {ref.totals[a]}")
    for what, r, g in (
        ("tick notifications/events", ref.notes, got.notes),
        ("battery setpoints", ref.setpoints, got.setpoints),
        ("command lifecycle", ref.lifecycle, got.lifecycle),
    ):
        for key in sorted(r.keys() | g.keys(), key=str):
            if r.get(key) != g.get(key):  # type: ignore[call-overload]
                bad.append(f"{what} of {key} differ from the fault-free run")
    want_final = {c.command_id for c in wl.commands}
    for name, o in (("fault-free", ref), ("chaos", got)):
        if set(o.final) != want_final:
            bad.append(f"{name}: outcomes for {sorted(o.final)}, expected {sorted(want_final)}")
    if ref.final != got.final:
        bad.append(f"command outcomes {got.final} != fault-free {ref.final}")
    if ref.quotas != got.quotas:
        bad.append(f"final cgroup quotas {got.quotas} != fault-free {ref.quotas}")
    return bad
