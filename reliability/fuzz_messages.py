"""Hostile-message fuzzing of every consumed input, in process, through the product code.

``python reliability/fuzz_messages.py --messages 10000 --seed 1`` generates hostile raw
payloads for every input the product consumes -- telemetry of every kind (solar, carbon,
battery, node, container, app_metrics) and clock messages (MQTT through the bridge's
``route``, and ``ecovisor.telemetry`` straight into the ledger's intake), commands
(``streams.commands.decide`` and ``SiteLedger.command``) and actuator acks
(``SiteLedger.ack``) -- and feeds them, interleaved with honest telemetry and the ledger's
tick timer, to the demo site's ledger (the real-time wiring, ``LedgerService``, on an
in-memory producer; its wall clock is the simulated time of the honest sources).

After the run it checks: no exception escaped (and no "internal error" dead letter), every
refused message has a dead letter or a rejection with a non-empty reason, ticks kept
closing (every tick boundary crossed by the honest time closed, in order), every ledger
entry is conserved (re-validated from its JSON), the honest containers' booked energy
equals their counters' deltas in mJ, and the snapshot stays < 1 MB and restores to an
equal state. Prints the figures. docs/reliability.md#hostile-message-fuzzing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script from anywhere
    sys.path.insert(0, str(ROOT))

from ecovisor.contract import topics  # noqa: E402
from ecovisor.contract.commands import parse_command, sign_command  # noqa: E402
from ecovisor.contract.config import EcovisorConfig  # noqa: E402
from ecovisor.contract.config_file import parse_config  # noqa: E402
from ecovisor.contract.notifications import Notification  # noqa: E402
from ecovisor.contract.operator_messages import DeadLetter  # noqa: E402
from ecovisor.contract.telemetry import COLUMNS  # noqa: E402
from ecovisor.core.entries import AppLedgerEntry  # noqa: E402
from ecovisor.core.tick_clock import to_us  # noqa: E402
from streams.bridge import Scope, route  # noqa: E402
from streams.commands import decide  # noqa: E402
from streams.ledger_service import LedgerService  # noqa: E402
from streams.ledger_worker import SiteLedger  # noqa: E402

DEMO = ROOT / "examples" / "demo-site.yaml"
T0 = datetime(2024, 1, 1, tzinfo=UTC)
SNAPSHOT_LIMIT = 1_000_000
HOSTILE_PER_SECOND = 20  # hostile messages per simulated second (one tick of the demo)
TELEMETRY_KINDS = ("solar", "carbon", "battery", "node", "container", "node_batch",
                   "app_metrics")  # fmt: skip
INPUT_KINDS = (*TELEMETRY_KINDS, "clock", "command", "ack", "random_bytes", "truncated")
# the honest sources: containers no hostile message names (except exact replays of the
# honest messages themselves), so their booked energy can be checked exactly
HONEST_CONTAINERS = {"web-2": "web", "batch-1": "batch"}
HONEST_W = 0.5
WEB_TOKEN = "web-demo-token-change-me"
BATCH_TOKEN = "batch-demo-token-change-me"


def demo_config() -> EcovisorConfig:
    return parse_config(DEMO.read_text())


# --- hostile values --------------------------------------------------------------------------


class Raw(str):
    """A JSON token written verbatim (``Infinity``, ``NaN``, deep nesting)."""


EXTREME: list[Any] = [
    0, -1, -1e-300, 1e306, -1e306, 2**80, -(2**80), 2**63, 2**63 - 1, 1e15, 1e15 + 1,
    1e12, 1e12 * 1.0000001, Raw("Infinity"), Raw("-Infinity"), Raw("NaN"), True, False,
    None, "5", "", "x" * 10_000, [], {}, [1, 2], {"a": 1}, 0.1, 5e-324,
    Raw("[" * 3_000 + "]" * 3_000), "\u202e\ud7ff\U0001f600", "\x00",
]  # fmt: skip
TIMES: list[Any] = [
    "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+14:00", "1969-12-31T23:59:59Z",
    "1970-01-01T00:00:00Z", "2024-01-01T00:00:00", "2024-01-01", "yesterday", 0, 1e18,
    "2024-01-01T00:00:00.000000001Z", "9997-12-31T00:00:00Z", "2100-01-01T00:00:00Z",
    "1990-01-01T00:00:00Z", "2024-01-01T00:00:00+23:59", "",
]  # fmt: skip
IDS = ["demo", "other", "web-1", "web-worker-3", "nope", "", "A", "x" * 300, "ü", "../etc",
       "node-1", "node-9", "web", "batch", "pv-1", "carbon-1", "battery-1", "replay"]  # fmt: skip
COMMAND_TYPES = [
    "set_container_powercap", "set_battery_charge_rate", "set_battery_max_discharge",
    "set_carbon_rate", "set_carbon_budget", "suspend_container", "resume_container",
    "scale_container", "scale_app", "no_such_command",
]  # fmt: skip


def dumps(obj: Any) -> str:
    """JSON with ``Raw`` tokens verbatim (non-finite floats and deep nesting)."""
    if isinstance(obj, Raw):
        return str(obj)
    if isinstance(obj, dict):
        return "{" + ",".join(json.dumps(str(k)) + ":" + dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, list | tuple):
        return "[" + ",".join(dumps(v) for v in obj) + "]"
    return json.dumps(obj)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def base_telemetry(kind: str, t: datetime, seq: int, source: str) -> dict[str, Any]:
    d: dict[str, Any] = {"kind": kind, "site": "demo", "time": iso(t), "source": source,
                         "seq": seq}  # fmt: skip
    if kind == "solar":
        d.update(power_w=5.0, energy_j=100.0)
    elif kind == "carbon":
        d.update(intensity_g_per_kwh=200.0, forecast=[[iso(t), 210.0]])
    elif kind == "battery":
        d.update(stored_wh=10.0, capacity_wh=40.0, power_w=-1.0)
    elif kind == "node":
        d.update(node="node-1", cores=2, cpu_busy_s=10.0, energy_j=50.0, idle_energy_j=5.0)
    elif kind == "container":
        d.update(app="web", container="web-1", node="node-1", cpu_s=3.0, energy_j=20.0)
    elif kind == "node_batch":  # cumulative counters of node-1's containers (not the
        # honest ones, as for the per-container kind)
        d.update(node="node-1", batch_version=1, containers=[
            {"app": "web", "container": "web-1", "cpu_s": 3.0, "energy_j": 20.0},
            {"app": "web", "container": "web-worker-1", "cpu_s": 1.0,
             "energy_j": 10.0}])  # fmt: skip
    elif kind == "app_metrics":
        d.update(app="web", latency_ms=12.0, progress=0.5, functional_units_total=7.0,
                 extra={"q": 1.0})  # fmt: skip
    return d


def base_command(rng: random.Random, t: datetime) -> dict[str, Any]:
    typ = rng.choice(COMMAND_TYPES)
    app, token = rng.choice([("web", WEB_TOKEN), ("batch", BATCH_TOKEN)])
    d: dict[str, Any] = {"type": typ, "site": "demo", "time": iso(t), "app": app,
                         "command_id": f"c{rng.randrange(10**6)}"}  # fmt: skip
    cont = "web-1" if app == "web" else rng.choice(["batch-1", "web-1"])
    if typ in ("set_container_powercap",):
        d.update(container=cont, watts=rng.choice([0.5, 2.0, None]))
    elif typ in ("set_battery_charge_rate", "set_battery_max_discharge"):
        d.update(watts=rng.choice([0.0, 1.0, 5.0]))
    elif typ == "set_carbon_rate":
        d.update(container=cont, mg_per_s=1.0, window_s=60.0)
    elif typ == "set_carbon_budget":
        d.update(grams=10.0, period_s=3600.0)
    elif typ in ("suspend_container", "resume_container"):
        d.update(container=cont)
    elif typ == "scale_container":
        d.update(container=cont, cpus=1.0)
    elif typ == "scale_app":
        d.update(template="web-worker", replicas=2)
    if typ == "no_such_command":
        return d  # no model to sign
    # signed with the app's token, as every producer does (a mutation breaks it)
    return json.loads(sign_command(parse_command(json.dumps(d)), token).to_json())


def base_ack(rng: random.Random, t: datetime) -> dict[str, Any]:
    return {"site": "demo", "time": iso(t), "command_id": f"c{rng.randrange(10**6)}",
            "app": rng.choice(["web", "batch", None]), "actuator": "containers",
            "ok": rng.choice([True, False]), "applied": {"watts": 2.0},
            "error": None}  # fmt: skip


def mutate(rng: random.Random, d: dict[str, Any], t: datetime) -> dict[str, Any]:
    """1-3 hostile changes to a valid message."""
    d = dict(d)
    for _ in range(rng.randint(1, 3)):
        keys = list(d)
        what = rng.randrange(9)
        if what <= 2:  # an extreme value where a number (or anything) belongs
            d[rng.choice(keys)] = rng.choice(EXTREME)
        elif what == 3:  # wrong or hostile identifiers
            for k in ("site", "app", "container", "source", "node"):
                if k in d and rng.random() < 0.5:
                    d[k] = rng.choice(IDS)
        elif what == 4:  # hostile timestamps: far future/past, naive, garbage, near
            d["time"] = rng.choice(
                [
                    *TIMES,
                    iso(
                        t
                        + timedelta(
                            seconds=rng.choice([-86_400 * 400, -3_600, -2, 2, 299, 301, 86_400 * 3])
                        )
                    ),
                ]  # fmt: skip
            )
        elif what == 5:  # seqs: huge, negative, repeated, non-int
            d["seq"] = rng.choice([0, -1, 2**63 - 1, 2**63, 2**80, 1.5, "1", 1_700_000_000_000,
                                   rng.randrange(5)])  # fmt: skip
        elif what == 6:  # counters going backwards or jumping
            for k in ("energy_j", "cpu_s", "cpu_busy_s", "functional_units_total"):
                if k in d:
                    d[k] = rng.choice([0.0, 1e-3, 1e6, 1e15, 1e15 * 1.01, 3.0, 1e9])
        elif what == 7:  # missing, extra or unknown fields
            if rng.random() < 0.5 and keys:
                del d[rng.choice(keys)]
            else:
                d[rng.choice(["extra_field", "schema_version", "kind", "type"])] = rng.choice(
                    EXTREME + [2, "clock", "container"]
                )
        elif what == 8 and isinstance(d.get("containers"), list) and d["containers"]:
            # a node batch: hostile values inside one of its entries (dead-lettered alone)
            entries = [dict(e) if isinstance(e, dict) else e for e in d["containers"]]
            i = rng.randrange(len(entries))
            if isinstance(entries[i], dict) and entries[i]:
                entries[i][rng.choice(list(entries[i]))] = rng.choice(EXTREME + IDS)
            d["containers"] = entries
        elif what == 8 and isinstance(d.get("containers"), dict) and d["containers"]:
            # a node batch in columns (batch_version 2): a hostile element of one column
            # (its entry dead-lettered alone), or a column cut short or grown (refused)
            cols = {k: list(v) if isinstance(v, list) else v for k, v in d["containers"].items()}
            k = rng.choice(list(cols))
            if isinstance(cols[k], list) and cols[k]:
                if rng.random() < 0.8:
                    cols[k][rng.randrange(len(cols[k]))] = rng.choice(EXTREME + IDS)
                else:
                    cols[k] = cols[k][:-1] if rng.random() < 0.5 else cols[k] + cols[k][:1]
            d["containers"] = cols
        else:  # large containers of junk
            d[rng.choice(keys)] = rng.choice(
                [
                    list(range(rng.choice([10, 10_001]))),
                    {str(i): i for i in range(150)},
                    "é" * 70_000,
                ]  # fmt: skip
            )
    return d


def random_bytes(rng: random.Random) -> bytes:
    n = rng.choice([0, 1, 7, 100, 5_000, 70_000])
    return bytes(rng.randrange(256) for _ in range(n)) if n < 10_000 else os.urandom(n)


def hostile(rng: random.Random, t: datetime) -> tuple[str, str, bytes]:
    """(input kind, MQTT topic, payload) of one hostile message."""
    kind = rng.choice(INPUT_KINDS)
    topic_kind = kind if kind in TELEMETRY_KINDS else rng.choice(TELEMETRY_KINDS)
    source = rng.choice(["fuzz-" + str(rng.randrange(2_000)), "pm-web-1", "pv-2", "carbon-2"])
    if kind in TELEMETRY_KINDS:
        d = base_telemetry(kind, t, rng.randrange(10**6), source)
        if kind == "node_batch" and rng.random() < 0.5:  # batch_version 2: its columns
            entries = d["containers"]
            d.update(batch_version=2, containers={k: [e[k] for e in entries] for k in COLUMNS})
        if kind == "container" and rng.random() < 0.3:
            d["container"] = rng.choice(["web-1", "web-worker-1", "nope", "batch-1x"])
        payload = dumps(mutate(rng, d, t) if rng.random() < 0.9 else d).encode()
    elif kind == "clock":
        d = {"kind": "clock", "site": "demo", "time": iso(t), "source": rng.choice(
            ["replay", None, "pv-1"])}  # fmt: skip
        payload = dumps(mutate(rng, d, t) if rng.random() < 0.7 else d).encode()
    elif kind == "command":
        d = base_command(rng, t)
        payload = dumps(mutate(rng, d, t) if rng.random() < 0.8 else d).encode()
    elif kind == "ack":
        d = base_ack(rng, t)
        payload = dumps(mutate(rng, d, t) if rng.random() < 0.8 else d).encode()
    elif kind == "random_bytes":
        payload = random_bytes(rng)
    else:  # truncated JSON of a valid telemetry message
        full = dumps(base_telemetry(topic_kind, t, rng.randrange(10**6), source)).encode()
        payload = full[: rng.randrange(len(full))]
    site = rng.choice(["demo"] * 8 + ["other", "+", ""])
    topic = f"ecovisor/{site}/telemetry/{topic_kind}/{source}"
    if rng.random() < 0.05:
        topic = rng.choice(["ecovisor/demo/telemetry", "x/y", "ecovisor/demo/telemetry/gpu/a",
                            "ecovisor/demo/telemetry/container/a/b", ""])  # fmt: skip
    return kind, topic, payload


# --- the in-process ledger -------------------------------------------------------------------


@dataclass
class Record:
    value: bytes | None
    offset: int


class _Producer:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes | None, bytes]] = []

    async def send(self, topic: str, key: bytes | None, value: bytes, *_: Any) -> Any:
        self.sent.append((topic, key, value))
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut


class _App:
    def __init__(self) -> None:
        self.producer = _Producer()

    async def crash(self, e: BaseException) -> None:  # pragma: no cover - not reached
        raise e


class _SimTime:
    """``time`` for streams.ledger_service: the wall clock is the simulated time."""

    def __init__(self) -> None:
        self.now_s = T0.timestamp()

    def time(self) -> float:
        return self.now_s

    def monotonic(self) -> float:
        return time.monotonic()


@dataclass
class Report:
    messages: int = 0
    seed: int = 0
    per_kind: Counter[str] = field(default_factory=Counter)
    outcome: Counter[str] = field(default_factory=Counter)  # "<input>:<outcome>"
    exceptions: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    honest_messages: int = 0
    closed_ticks: int = 0
    expected_ticks: int = 0
    entries: int = 0
    snapshot_bytes: int = 0
    booked_mj: dict[str, int] = field(default_factory=dict)
    sent_mj: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def refused(self) -> int:
        return sum(n for k, n in self.outcome.items() if k.split(":")[1] in REFUSALS)

    @property
    def accepted(self) -> int:
        return sum(n for k, n in self.outcome.items() if k.split(":")[1] not in REFUSALS)

    def ok(self) -> bool:
        return not self.exceptions and not self.problems


REFUSALS = ("dead_letter", "rejected")


def _reason_of(topic: str, value: bytes) -> tuple[str, str]:
    if topic == topics.DEADLETTER:
        return "dead_letter", DeadLetter.model_validate_json(value).reason
    n = Notification.model_validate_json(value)
    return n.type, n.reason or ""


class Fuzz:
    """The demo site's bridge scope and ledger, fed one message at a time."""

    def __init__(self, cfg: EcovisorConfig, rep: Report) -> None:
        self.cfg, self.rep = cfg, rep
        self.scope = Scope.of(cfg)
        self.sim = _SimTime()
        self.loop = asyncio.new_event_loop()
        self.app = _App()
        self.svc = LedgerService(cfg, self.app, {}, {}, "realtime")
        self.led = self.svc.loaded()
        self.offset = 0
        self.read = 0  # outputs already checked
        self.ticks: list[int] = []

    def close(self) -> None:
        self.loop.close()

    def new_outputs(self) -> list[tuple[str, bytes | None, bytes]]:
        sent = self.app.producer.sent
        out, self.read = sent[self.read :], len(sent)
        return out

    def _exception(self, where: str, raw: bytes, e: BaseException) -> None:
        tb = "".join(traceback.format_exception(e)[-4:])
        self.rep.exceptions.append(f"{where}: {type(e).__name__}: {e} on {raw[:200]!r}\n{tb}")

    def _check(self, outs: list[tuple[str, bytes | None, bytes]], kind: str, raw: bytes) -> str:
        """Classify and check one message's outputs; returns its outcome."""
        result = "accepted_or_ignored"
        for topic, _, value in outs:
            if topic == topics.LEDGER:
                self._entry(value)
                continue
            if topic == topics.DEADLETTER or topic.startswith("ecovisor.notifications."):
                what, reason = _reason_of(topic, value)
                if what in ("dead_letter", "command_rejected"):
                    if not reason.strip():
                        self.rep.problems.append(f"{kind}: {what} without a reason: {raw[:200]!r}")
                    if "internal error" in reason:
                        self.rep.exceptions.append(f"{kind}: {reason} on {raw[:200]!r}")
                    result = "dead_letter" if what == "dead_letter" else "rejected"
                elif what == "command_accepted" and result == "accepted_or_ignored":
                    result = "accepted"
            if topic == topics.ACTUATOR_BATTERY:
                self.ticks.append(json.loads(value)["tick"])
        return result

    def _entry(self, value: bytes) -> None:
        try:  # conserved when built, and again from its JSON
            e = AppLedgerEntry.model_validate_json(value)
        except Exception as err:
            self.rep.problems.append(f"ledger entry does not validate from JSON: {err}")
            return
        self.rep.entries += 1
        for c in HONEST_CONTAINERS:
            line = e.containers.get(c)
            if line is not None:
                self.rep.booked_mj[c] = self.rep.booked_mj.get(c, 0) + line.energy_mj

    def telemetry(self, raw: bytes, kind: str) -> str:
        """One ``ecovisor.telemetry`` record through the ledger's real intake."""
        rec = Record(raw, self.offset)
        self.offset += 1
        try:
            self.loop.run_until_complete(self.svc.telemetry(self.led, 0, [rec]))
        except Exception as e:
            self._exception("ledger telemetry", raw, e)
            return "exception"
        return self._check(self.new_outputs(), kind, raw)

    def mqtt(self, topic: str, raw: bytes, kind: str) -> str:
        try:
            r = route(self.scope, topic, raw)
        except Exception as e:
            self._exception("bridge route", raw, e)
            return "exception"
        if r.valid:
            return "forwarded"
        if not (r.reason or "").strip():
            self.rep.problems.append(f"bridge dead letter without a reason: {raw[:200]!r}")
        try:
            dl = DeadLetter.model_validate_json(r.value)
            if not dl.reason.strip() or r.topic != topics.DEADLETTER:
                self.rep.problems.append(f"bridge dead letter malformed: {r!r}"[:300])
        except Exception as e:
            self.rep.problems.append(f"bridge dead letter unparsable: {e}")
        return "dead_letter"

    def command(self, raw: bytes, now_us: int) -> str:
        try:
            d = decide(self.cfg, raw)
        except Exception as e:
            self._exception("decide", raw, e)
            return "exception"
        if not d.accepted and not (d.reason or "").strip():
            self.rep.problems.append(f"decide refused without a reason: {raw[:200]!r}")
        try:
            outs = self.led.command(raw, now_us)
        except Exception as e:
            self._exception("SiteLedger.command", raw, e)
            return "exception"
        res = self._check([(o.topic, o.key, o.value) for o in outs], "command", raw)
        if not outs:
            return "duplicate"
        if not d.accepted and res not in REFUSALS:
            self.rep.problems.append(
                f"refused command without dead letter/rejection: {raw[:200]!r}"
            )
        return res

    def ack(self, raw: bytes) -> str:
        try:
            outs = self.led.ack(raw)
        except Exception as e:
            self._exception("SiteLedger.ack", raw, e)
            return "exception"
        res = self._check([(o.topic, o.key, o.value) for o in outs], "ack", raw)
        return res if outs else "no_app_to_tell"

    def tick_timer(self, now_s: float) -> None:
        self.sim.now_s = now_s
        try:
            self.loop.run_until_complete(self.svc.on_timer(to_us(now_s)))
        except Exception as e:
            self._exception("tick timer", b"", e)
        self._check(self.new_outputs(), "timer", b"")


def honest(t: datetime, seq: int, counters: dict[str, float]) -> list[tuple[str, bytes]]:
    """One second of the honest sources: (MQTT topic, payload)."""
    out = []
    for c, app in HONEST_CONTAINERS.items():
        counters[c] = round(counters[c] + HONEST_W, 3)
        d = {"kind": "container", "site": "demo", "time": iso(t), "source": f"pm-{c}",
             "seq": seq, "app": app, "container": c, "node": "node-1", "cpu_s": seq * 0.1,
             "energy_j": counters[c]}  # fmt: skip
        out.append((f"ecovisor/demo/telemetry/container/pm-{c}", d))
    s = {"kind": "solar", "site": "demo", "time": iso(t), "source": "pv-1", "seq": seq,
         "power_w": 5.0, "energy_j": 5.0 * seq}  # fmt: skip
    out.append(("ecovisor/demo/telemetry/solar/pv-1", s))
    cb = {"kind": "carbon", "site": "demo", "time": iso(t), "source": "carbon-1", "seq": seq,
          "intensity_g_per_kwh": 250.0}  # fmt: skip
    out.append(("ecovisor/demo/telemetry/carbon/carbon-1", cb))
    return [(topic, json.dumps(d).encode()) for topic, d in out]


def run(messages: int = 10_000, seed: int = 1, cfg: EcovisorConfig | None = None) -> Report:
    cfg = cfg or demo_config()
    rep = Report(messages=messages, seed=seed)
    rng = random.Random(seed)
    fz = Fuzz(cfg, rep)
    tick_s = cfg.site.shape.tick_s
    grace_s = cfg.site.grace_s
    counters = {c: 0.0 for c in HONEST_CONTAINERS}
    first: dict[str, float] = {}
    history: list[bytes] = []
    started = time.perf_counter()
    sent = 0
    sec = 0
    with mock.patch("streams.ledger_service.time", fz.sim):
        while sent < messages:
            t = T0 + timedelta(seconds=sec + 0.25)
            fz.sim.now_s = t.timestamp()
            for topic, raw in honest(t, sec + 1, counters):
                if route(fz.scope, topic, raw).valid is not True:
                    rep.problems.append(f"honest message dead-lettered by the bridge: {raw!r}")
                if fz.telemetry(raw, "honest") != "accepted_or_ignored":
                    rep.problems.append(f"honest message refused by the ledger: {raw!r}")
                history.append(raw)
                rep.honest_messages += 1
            for c in HONEST_CONTAINERS:
                first.setdefault(c, counters[c])
            for _ in range(min(HOSTILE_PER_SECOND, messages - sent)):
                now = T0 + timedelta(seconds=sec + rng.uniform(0.3, 0.99))
                fz.sim.now_s = now.timestamp()
                sent += 1
                if rng.random() < 0.05 and history:  # duplicated / out-of-order honest
                    raw = rng.choice(history[-400:])
                    rep.per_kind["replayed_honest"] += 1
                    res = fz.telemetry(raw, "replayed_honest")
                    rep.outcome[f"replayed_honest:{res}"] += 1
                    continue
                kind, topic, raw = hostile(rng, now)
                rep.per_kind[kind] += 1
                if kind == "command":
                    res = fz.command(raw, to_us(now.timestamp()))
                elif kind == "ack":
                    res = fz.ack(raw)
                else:
                    rep.outcome[f"bridge:{fz.mqtt(topic, raw, kind)}"] += 1
                    res = fz.telemetry(raw, kind)
                rep.outcome[f"{kind}:{res}"] += 1
            sec += 1
            fz.tick_timer((T0 + timedelta(seconds=sec + grace_s + 0.01)).timestamp())
        end_s = (T0 + timedelta(seconds=sec + 2 * tick_s + grace_s)).timestamp()
        fz.tick_timer(end_s)
    rep.seconds = time.perf_counter() - started
    fz.close()
    check(rep, fz, cfg, counters, first, end_s)
    return rep


def check(rep: Report, fz: Fuzz, cfg: EcovisorConfig, counters: dict[str, float],
          first: dict[str, float], end_s: float) -> None:  # fmt: skip
    """The invariants after the run (problems are appended to ``rep.problems``)."""
    tick_us = to_us(cfg.site.shape.tick_s)
    k0 = to_us(T0.timestamp()) // tick_us
    k_end = (to_us(end_s) - to_us(cfg.site.grace_s)) // tick_us  # ticks < k_end closed
    rep.expected_ticks = k_end - k0
    rep.closed_ticks = len(fz.ticks)
    if fz.ticks != list(range(k0, k_end)):
        rep.problems.append(
            f"ticks closed: {len(fz.ticks)} ({fz.ticks[:3]}..{fz.ticks[-3:]}), expected "
            f"{rep.expected_ticks} ({k0}..{k_end - 1})"
        )
    for c in HONEST_CONTAINERS:  # the first sample is the baseline
        rep.sent_mj[c] = round(counters[c] * 1000) - round(first[c] * 1000)
        if rep.booked_mj.get(c, 0) != rep.sent_mj[c]:
            rep.problems.append(
                f"{c}: booked {rep.booked_mj.get(c, 0)} mJ, sent {rep.sent_mj[c]} mJ"
            )
    snap = fz.led.snapshot()
    rep.snapshot_bytes = len(snap)
    if len(snap) >= SNAPSHOT_LIMIT:
        rep.problems.append(f"snapshot is {len(snap)} bytes (limit {SNAPSHOT_LIMIT})")
    try:
        again = SiteLedger.restore(cfg, snap).snapshot()
        if again != snap:
            rep.problems.append("the restored snapshot differs from the original")
    except Exception as e:
        fz._exception("SiteLedger.restore", snap[:200], e)


def render(rep: Report) -> str:
    lines = [
        f"messages: {rep.messages} hostile (seed {rep.seed}) + {rep.honest_messages} honest",
        "per input kind: " + ", ".join(f"{k} {n}" for k, n in sorted(rep.per_kind.items())),
        f"outcomes over every path (a telemetry message counts at the bridge and at the ledger): "
        f"refused (dead letter / command_rejected) {rep.refused}; "
        f"accepted, ignored or duplicate: {rep.accepted}",
        "outcomes: " + ", ".join(f"{k} {n}" for k, n in sorted(rep.outcome.items())),
        f"ticks closed: {rep.closed_ticks} (expected {rep.expected_ticks}); ledger entries "
        f"{rep.entries} (all conserved, re-validated from JSON)",
        "honest containers booked/sent mJ: " + ", ".join(
            f"{c} {rep.booked_mj.get(c, 0)}/{rep.sent_mj.get(c)}" for c in HONEST_CONTAINERS),
        f"snapshot: {rep.snapshot_bytes} bytes (restores equal)",
        f"exceptions: {len(rep.exceptions)}; invariant problems: {len(rep.problems)}",
        f"time: {rep.seconds:.1f} s ({rep.messages / max(rep.seconds, 1e-9):.0f} hostile "
        f"messages/s)",
        f"machine: {os.cpu_count()} CPUs, {platform.platform()}, Python "
        f"{platform.python_version()}",
    ]  # fmt: skip
    for e in rep.exceptions[:10]:
        lines.append("EXCEPTION " + e)
    for p in rep.problems[:20]:
        lines.append("PROBLEM " + p)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rep = run(args.messages, args.seed)
    print(f"command: python reliability/fuzz_messages.py --messages {args.messages} "
          f"--seed {args.seed}")  # fmt: skip
    print(render(rep))
    return 0 if rep.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
