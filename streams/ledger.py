"""The Faust ledger worker: per-tick virtual energy ledgers, notifications, commands.

``python -m streams.ledger --config FILE [--clock realtime|event]``

Data path (docs/ledger.md):

* ``ecovisor.telemetry`` -> ``TickClock`` (pure, in-memory aggregation per open tick,
  never a table write per sample) -> at each tick close the core's ``site_step`` ->
  ``ecovisor.ledger`` (one ``AppLedgerEntry`` per app, key ``site:app:k``),
  ``ecovisor.notifications.<app>`` (tick + events), ``ecovisor.actuator.battery``
  (aggregate setpoints), ``ecovisor.alerts`` (drift, grid limit).
* ``ecovisor.commands`` -> ``streams.commands`` validation -> lifecycle notifications,
  queued settings (apply from the next tick), ``ecovisor.actuator.containers``.
* ``ecovisor.actuator.acks`` -> ``command_applied`` / ``command_failed``.

State: one snapshot per site in the Faust table ``snapshots`` (changelog), written at
most every ``persist_interval`` (0.5 s wall) while ticks close and after every command:
the core ``SiteState``, the tick clock (including the open ticks' aggregates and dedupe
windows), seen command ids and the offset of the last telemetry message it reflects.
Telemetry is read in batches by an aiokafka consumer on assigned partitions inside the
Faust app (Faust's per-event path measured ~15,000 events/s here with an empty agent);
on start it seeks to the snapshot's offset + 1, so a restarted worker replays exactly
the messages after its last snapshot and recomputes identical ticks. Outputs are made
durable before each snapshot; re-sent outputs are identical (keys ``site:app:k``).
Per-tick cumulative counters per app live in the table ``counters`` (key ``app:k``,
bounded retention) for the ``get_*_energy/carbon(t1, t2)`` views.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import sys
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, ValidationError

from ecovisor.contract import topics
from ecovisor.contract.config import ConfigError, EcovisorConfig, config_path, load_config
from ecovisor.contract.schemas import (
    TELEMETRY_ADAPTER,
    ActuatorAck,
    Alert,
    BatterySetpoint,
    ContainerTickData,
    Notification,
    TickData,
    dead_letter,
    describe_validation_error,
)
from ecovisor.core.entries import SiteAlertKind, SiteTickResult
from ecovisor.core.settings import queue_site_change
from ecovisor.core.solar_share import split_solar
from ecovisor.core.state import SiteState, SiteTickInput
from ecovisor.core.tick import initial_site_state, site_step
from ecovisor.core.tick_clock import ClosedTick, TickClock, to_us
from ecovisor.core.units import mj_to_j, mj_to_power, ug_to_g, wh_to_mj
from streams.commands import Decision, decide

log = logging.getLogger("ecovisor.ledger")

ClockMode = Literal["realtime", "event"]
SEEN_COMMANDS_MAX = 10_000
HISTORY_TICKS = 3_600  # per-tick counters and entries kept for the views
# Real-time mode: how far an event time may be ahead of the wall clock (edge clock skew).
FUTURE_SKEW_S = 30.0
# Event times the tick arithmetic supports in every mode: tick indices are >= 0 (epoch
# based) and a tick's end must still be a datetime (year <= 9999).
EVENT_TIME_MAX_US = to_us(datetime(9998, 1, 1, tzinfo=UTC).timestamp())


class ClockMessage(BaseModel):
    """Virtual-time control on ``ecovisor.telemetry``: advance a site's event-time
    watermark to ``time`` (closes every tick whose end + grace <= time)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    schema_version: Literal[1] = 1
    kind: Literal["clock"] = "clock"
    site: str
    time: AwareDatetime


@dataclass(frozen=True)
class Out:
    topic: str
    key: bytes | None
    value: bytes


def _iso(t_us: int) -> str:
    return datetime.fromtimestamp(t_us / 1e6, UTC).isoformat()


def _dt(t_us: int) -> datetime:
    return datetime.fromtimestamp(t_us / 1e6, UTC)


@dataclass
class SiteLedger:
    """Everything the worker keeps for one site; no I/O (the Faust layer sends ``Out``s
    and persists ``snapshot()``)."""

    cfg: EcovisorConfig
    clock: TickClock
    state: SiteState
    offsets: dict[int, int] = field(default_factory=dict)  # telemetry partition -> offset
    seen_commands: OrderedDict[str, str] = field(default_factory=OrderedDict)
    pending_acks: dict[str, str] = field(default_factory=dict)  # command_id -> app
    # settings changes the ledger itself applies: "app|command_id" -> {app, k, change}
    pending_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    suspended: dict[str, list[str]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # app -> state view
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    entries: dict[str, deque[tuple[float, bytes]]] = field(default_factory=dict)  # in memory
    counters: dict[str, dict[int, dict[str, Any]]] = field(default_factory=dict)
    dead: int = 0

    def __post_init__(self) -> None:
        # derived from the configuration, looked up per container per tick: precomputed
        self.owners: dict[str, str] = {c: p.app for c, p in self.cfg.placements().items()}
        self.shares = self.cfg.shares()
        self.app_cfg = {a.id: a for a in self.cfg.apps}

    @classmethod
    def new(cls, cfg: EcovisorConfig) -> SiteLedger:
        shape = cfg.site.shape
        return cls(
            cfg=cfg,
            clock=TickClock(shape.tick_s, cfg.site.grace_s),
            state=initial_site_state(shape, cfg.shares(), site=cfg.site.id),
        )

    # --- persistence --------------------------------------------------------------------
    def snapshot(self) -> bytes:
        return json.dumps(
            {
                "v": 1,
                "state": self.state.model_dump(mode="json"),
                "clock": self.clock.snapshot(),
                "offsets": self.offsets,
                "seen_commands": list(self.seen_commands.items()),
                "pending_acks": self.pending_acks,
                "pending_settings": self.pending_settings,
                "suspended": self.suspended,
                "last": self.last,
                "metrics": self.metrics,
            },
            separators=(",", ":"),
        ).encode()

    @classmethod
    def restore(cls, cfg: EcovisorConfig, raw: bytes) -> SiteLedger:
        d = json.loads(raw)
        return cls(
            cfg=cfg,
            clock=TickClock.restore(d["clock"]),
            state=SiteState.model_validate(d["state"]),
            offsets={int(p): o for p, o in d["offsets"].items()},
            seen_commands=OrderedDict((k, v) for k, v in d["seen_commands"]),
            pending_acks=dict(d["pending_acks"]),
            pending_settings=dict(d.get("pending_settings", {})),
            suspended={a: list(v) for a, v in d["suspended"].items()},
            last=d["last"],
            metrics=d["metrics"],
        )

    # --- ticks --------------------------------------------------------------------------
    def refuse_reason(self, t: Any, now_us: int | None, t_us: int | None = None) -> str | None:
        """Why a telemetry (or clock) message must not enter the clock, else None.
        Always: an event time before 1970 or in year 9999 (tick arithmetic; such a tick
        could not be closed, and a replayed poison message would stop the worker).
        Real-time mode (``now_us``: wall clock): the watermark drives tick closing, so
        one sample from a clock a day ahead would close a day of ticks at once and then
        hold every real sample as 'late' in that future tick. Late samples are fine
        (they roll in). ``t_us``: the event time already converted, if the caller has it."""
        if t_us is None:
            t_us = to_us(t.time.timestamp())
        if not 0 <= t_us <= EVENT_TIME_MAX_US:
            return f"event time {t.time.isoformat()} is outside 1970-01-01..9998-01-01"
        if now_us is None:
            return None
        ahead = max(to_us(FUTURE_SKEW_S), 2 * self.clock.tick_us)
        if t_us > now_us + ahead:
            return (
                f"event time {t.time.isoformat()} is {(t_us - now_us) / 1e6:.0f} s ahead of "
                f"the ledger's clock (at most {ahead / 1e6:g} s allowed): check the "
                f"source's clock"
            )
        return None

    def close(self, now_us: int) -> tuple[list[Out], list[tuple[str, int, dict[str, Any]]]]:
        """Close every tick due at driving time ``now_us``. Returns the messages to send
        and the per-tick counter rows (app, k, row) to persist."""
        outs: list[Out] = []
        rows: list[tuple[str, int, dict[str, Any]]] = []
        for ct in self.clock.advance(now_us):
            o, r = self._account(ct)
            outs.extend(o)
            rows.extend(r)
        return outs, rows

    def _inputs(self, ct: ClosedTick) -> SiteTickInput:
        apps = self.app_cfg
        owners = self.owners
        demand: dict[str, dict[str, int]] = {}
        for conts in ct.demand_mj.values():
            for c, mj in conts.items():
                # the configuration decides who owns a container, never the telemetry:
                # a replica belongs to the app of its template, anything else is ignored
                owner = owners.get(c)
                if owner is None or owner not in apps:
                    continue  # telemetry of a container no configured app owns
                d = demand.setdefault(owner, {})
                d[c] = d.get(c, 0) + mj
        app_est = {a: v for a, v in ct.app_estimated_sources.items() if a in apps}
        return SiteTickInput(
            k=ct.k,
            t_start=ct.t_start_us / 1e6,
            site_solar_mj=ct.solar_prev_mj,
            intensity_g_per_kwh=ct.intensity_g_per_kwh or 0.0,
            demand_mj=demand,
            platform_mj=ct.platform_mj,
            physical_battery_mj=(
                wh_to_mj(ct.battery_stored_wh) if ct.battery_stored_wh is not None else None
            ),
            estimated_sources=ct.estimated_sources,
            app_estimated_sources=app_est,
        )

    def _account(self, ct: ClosedTick) -> tuple[list[Out], list[tuple[str, int, dict[str, Any]]]]:
        cfg = self.cfg
        shape = cfg.site.shape
        inp = self._inputs(ct)
        self.state, res = site_step(shape, self.shares, self.state, inp)
        for app, m in ct.metrics.items():
            self.metrics[app] = m
        t_end_us = ct.t_start_us + ct.tick_us
        t_end = _dt(t_end_us)
        site = cfg.site.id
        next_solar, _ = split_solar(ct.solar_mj, self.shares)
        outs: list[Out] = []
        rows: list[tuple[str, int, dict[str, Any]]] = []
        for app, entry in res.entries.items():
            key = f"{site}:{app}:{ct.k}".encode()
            entry_json = entry.model_dump_json().encode()
            outs.append(Out(topics.LEDGER, key, entry_json))
            data = self._tick_data(app, res, next_solar.get(app, 0))
            note = Notification(site=site, time=t_end, app=app, type="tick", tick=ct.k, data=data)
            ntopic = topics.notifications(app)
            outs.append(Out(ntopic, key, note.to_json()))
            for ev in entry.events:
                if ev.kind == "tick":
                    continue
                n = Notification(
                    site=site,
                    time=t_end,
                    app=app,
                    type=ev.kind.value,  # type: ignore[arg-type]
                    tick=ct.k,
                    data=ev.model_dump(mode="json", exclude={"site", "app", "k", "kind"}),
                )
                outs.append(Out(ntopic, key, n.to_json()))
            cum = entry.cumulative
            row = {
                "t_end_us": t_end_us,
                "energy_mj": cum.total.energy_mj,
                "carbon_ug": cum.total.carbon_ug,
                "containers": {
                    c: [line.energy_mj, line.carbon_ug] for c, line in cum.containers.items()
                },
            }
            rows.append((app, ct.k, row))
            self._remember(app, ct.k, row, entry.t_start, entry_json)
            self.last[app] = {
                "tick": ct.k,
                "time": t_end.isoformat(),
                "tick_data": data,
                "settings": entry.settings.model_dump(mode="json"),
                "estimated": entry.estimated,
            }
        outs.extend(self._settings_applied(ct.k, t_end, res))
        c = res.controller
        outs.append(
            Out(
                topics.ACTUATOR_BATTERY,
                site.encode(),
                BatterySetpoint(
                    site=site,
                    time=t_end,
                    command_id=f"{site}-tick-{ct.k}",
                    device=cfg.site.battery.id if cfg.site.battery else None,
                    charge_rate_w=c.grid_charge_w,
                    max_discharge_w=c.max_discharge_w,
                    net_power_w=c.net_battery_w,
                    tick=ct.k,
                ).to_json(),
            )
        )
        for a in res.alerts:
            kind = "grid_limit" if a.kind is SiteAlertKind.grid_limit else "battery_drift"
            cleared = a.kind is SiteAlertKind.battery_drift_cleared
            alert = Alert(
                site=site,
                time=t_end,
                kind=kind,  # type: ignore[arg-type]
                severity="warning",
                message=(
                    f"{a.kind.value} at tick {a.k}: {a.value:.4g} {a.unit} "
                    f"(threshold {a.threshold:g})"
                ),
                data={**a.model_dump(mode="json"), "cleared": cleared},
            )
            outs.append(Out(topics.ALERTS, site.encode(), alert.to_json()))
        return outs, rows

    def _settings_applied(self, k: int, when: datetime, res: SiteTickResult) -> list[Out]:
        """``command_applied`` for settings changes in force from tick ``k`` (the first
        ledger entry that used them), with the settings that entry records."""
        outs: list[Out] = []
        for key, p in list(self.pending_settings.items()):
            app = p["app"]
            if p["k"] > k or app not in res.entries:
                continue
            del self.pending_settings[key]
            n = Notification(
                site=self.cfg.site.id,
                time=when,
                app=app,
                type="command_applied",
                tick=k,
                command_id=p["command_id"],
                data={
                    "actuator": "ledger",
                    "applied": p["change"],
                    "settings": res.entries[app].settings.model_dump(mode="json"),
                },
            )
            outs.append(Out(topics.notifications(app), p["command_id"].encode(), n.to_json()))
        return outs

    def _tick_data(self, app: str, res: SiteTickResult, next_solar_mj: int) -> dict[str, Any]:
        e = res.entries[app]
        dt = res.tick_s
        f = e.flows
        st = self.state.apps[app]
        settings = st.settings
        share = self.shares[app]
        budget = settings.carbon_budget
        tracker = st.tracking.budget
        suspended = set(self.suspended.get(app, ()))
        conts: dict[str, ContainerTickData] = {}
        names = {c.id for c in self.app_cfg[app].containers} | set(e.containers)
        for c in sorted(names):
            line = e.containers.get(c)
            rate = settings.carbon_rates.get(c)
            conts[c] = ContainerTickData(
                power_w=mj_to_power(line.energy_mj if line else 0, dt),
                powercap_w=settings.container_caps_w.get(c),
                suspended=c in suspended,
                carbon_mg_per_s=(line.carbon_ug if line else 0) / 1000 / dt,
                carbon_rate_limit_mg_per_s=rate.rate_mg_per_s if rate else None,
            )
        td = TickData(
            tick_s=dt,
            next_solar_w=mj_to_power(next_solar_mj, dt),
            solar_w=mj_to_power(e.solar_mj, dt),
            grid_w=mj_to_power(f.grid_to_load + f.grid_to_battery, dt),
            grid_carbon_g_per_kwh=e.intensity_g_per_kwh,
            battery_charge_level_wh=e.battery.after_wh,
            battery_discharge_rate_w=mj_to_power(f.battery_to_load, dt),
            battery_charge_rate_setting_w=settings.charge_rate_w,
            battery_max_discharge_setting_w=(
                settings.max_discharge_w
                if settings.max_discharge_w is not None
                else share.discharge_limit_w
            ),
            app_power_w=mj_to_power(e.demand_mj, dt),
            unserved_w=mj_to_power(f.unserved, dt),
            carbon_g=ug_to_g(e.total.carbon_ug),
            carbon_budget_g=budget.budget_g if budget else None,
            carbon_budget_used_g=ug_to_g(tracker.used_ug) if (budget and tracker) else None,
            containers=conts,
            estimated=e.estimated,
        )
        return td.model_dump(mode="json")

    def _remember(self, app: str, k: int, row: dict[str, Any], t: float, entry: bytes) -> None:
        hist = self.counters.setdefault(app, {})
        hist[k] = row
        while len(hist) > HISTORY_TICKS:
            del hist[next(iter(hist))]
        # raw JSON, parsed only when the ledger view is read
        self.entries.setdefault(app, deque(maxlen=HISTORY_TICKS)).append((t, entry))

    # --- commands -----------------------------------------------------------------------
    def command(self, raw: bytes, now_us: int) -> list[Out]:
        """Validate one command; lifecycle notifications, queued settings, actions."""
        raw = raw if raw is not None else b""  # a Kafka tombstone: dead-lettered below
        d = decide(self.cfg, raw)
        outs: list[Out] = []
        key = self._dedupe_key(d, raw)
        if key in self.seen_commands:
            return outs  # re-delivered command: no-op
        self.seen_commands[key] = d.app or ""
        while len(self.seen_commands) > SEEN_COMMANDS_MAX:
            self.seen_commands.popitem(last=False)
        if not d.accepted and not d.notify:
            self.dead += 1
            dl = dead_letter(topics.COMMANDS, d.reason or "rejected", raw)
            return [Out(topics.DEADLETTER, None, dl.model_dump_json().encode())]
        cmd_time = d.command.time if d.command is not None else _dt(now_us)
        if d.accepted:
            assert d.app is not None and d.command is not None
            # accepted during the tick of its event time (never later than the clock)
            k_cmd = self.clock.tick_of(to_us(cmd_time.timestamp()))
            k_now = self.clock.tick_of(now_us)
            accepted_k = max(0, min(k_cmd, k_now))
            if d.change is not None:
                self.state = queue_site_change(self.state, d.app, d.change, accepted_k)
                if not d.actions:  # no actuator will ack it: the ledger does, when in force
                    self.pending_settings[f"{d.app}|{d.command_id}"] = {
                        "app": d.app,
                        "command_id": d.command_id,
                        "k": accepted_k + 1,
                        "change": d.change.model_dump(mode="json"),
                    }
            for a in d.actions:
                outs.append(Out(topics.ACTUATOR_CONTAINERS, a.container.encode(), a.to_json()))
                if a.action in ("suspend", "resume"):
                    s = set(self.suspended.get(d.app, ()))
                    (s.add if a.action == "suspend" else s.discard)(a.container)
                    self.suspended[d.app] = sorted(s)
            if d.actions:
                self.pending_acks[f"{d.app}|{d.command_id}"] = d.app
                while len(self.pending_acks) > SEEN_COMMANDS_MAX:
                    del self.pending_acks[next(iter(self.pending_acks))]
        outs.extend(self._lifecycle(d, cmd_time))
        return outs

    def _dedupe_key(self, d: Decision, raw: bytes) -> str:
        """Idempotency key. A command id is only unique within the app that sent it, so
        the key is the token's (verified) app, the claimed app and the id: nobody can get
        another app's command dropped as a "re-delivery" by using its id first. Payloads
        without a valid token (or unparsable) dedupe on their exact bytes only."""
        if d.command is not None and d.command_id is not None:
            owner = self.cfg.app_for_token(d.command.token)
            if owner is not None:
                return f"{owner.id}|{d.app}|{d.command_id}"
        return "raw|" + hashlib.sha256(raw).hexdigest()

    def _lifecycle(self, d: Decision, when: datetime) -> list[Out]:
        typ = "command_accepted" if d.accepted else "command_rejected"
        data: dict[str, Any] = {"command_type": d.type}
        if d.accepted and d.change is not None:
            data["applies_from"] = "next tick"
            data["change"] = d.change.model_dump(mode="json")
        outs = []
        for app in d.notify:
            n = Notification(
                site=self.cfg.site.id,
                time=when,
                app=app,
                type=typ,
                command_id=d.command_id,
                reason=d.reason,
                data=data,
            )
            outs.append(Out(topics.notifications(app), (d.command_id or "").encode(), n.to_json()))
        return outs

    def ack(self, raw: bytes) -> list[Out]:
        raw = raw if raw is not None else b""  # a Kafka tombstone
        try:
            ack = ActuatorAck.model_validate_json(raw)
        except ValidationError as e:
            dl = dead_letter(topics.ACTUATOR_ACKS, describe_validation_error(e), raw)
            return [Out(topics.DEADLETTER, None, dl.model_dump_json().encode())]
        # command ids are per app: the ack's own app decides who is told
        app = ack.app
        if app is None:  # an ack without app: only an unambiguous pending command
            match = [k for k in self.pending_acks if k.endswith(f"|{ack.command_id}")]
            app = self.pending_acks[match[0]] if len(match) == 1 else None
        if app is None or app not in self.app_cfg:
            return []  # e.g. a site battery setpoint ack: no app to tell
        self.pending_acks.pop(f"{app}|{ack.command_id}", None)
        n = Notification(
            site=ack.site,
            time=ack.time,
            app=app,
            type="command_applied" if ack.ok else "command_failed",
            command_id=ack.command_id,
            reason=ack.error,
            data={"actuator": ack.actuator, "applied": ack.applied},
        )
        return [Out(topics.notifications(app), ack.command_id.encode(), n.to_json())]

    # --- views --------------------------------------------------------------------------
    def state_view(self, app: str) -> dict[str, Any] | None:
        if app not in self.state.apps:
            return None
        st = self.state.apps[app]
        last = self.last.get(app, {})
        return {
            "app": app,
            "site": self.cfg.site.id,
            "tick": last.get("tick"),
            "time": last.get("time"),
            "tick_s": self.cfg.site.shape.tick_s,
            "tick_data": last.get("tick_data"),
            "settings": st.settings.model_dump(mode="json"),
            "pending_changes": len(st.pending),
            "battery_wh": st.battery_mj / 3_600_000,
            "suspended": self.suspended.get(app, []),
            "carbon": {
                "budget": st.tracking.budget.model_dump(mode="json")
                if st.tracking.budget
                else None,
                "rate_windows": {
                    c: {"level": w.level.value} for c, w in st.tracking.rate_windows.items()
                },
            },
            "app_metrics": self.metrics.get(app, {}),
            "cumulative": {
                "energy_j": mj_to_j(st.cumulative.total.energy_mj),
                "carbon_g": ug_to_g(st.cumulative.total.carbon_ug),
                "ticks": st.cumulative.ticks,
                "estimated_ticks": st.cumulative.estimated_ticks,
            },
            "clock": {
                "next_close": self.clock.next_close,
                "watermark": _iso(self.clock.watermark_us) if self.clock.watermark_us else None,
                "samples": self.clock.n_samples,
                "duplicates": self.clock.n_duplicates,
                "late": self.clock.n_late,
                "estimated": self.clock.n_estimated,
            },
        }

    def counters_view(
        self, app: str, t1: datetime, t2: datetime, rows: dict[int, dict[str, Any]]
    ) -> dict[str, Any] | None:
        """Energy and carbon between the tick boundaries nearest inside [t1, t2], exact
        from the per-tick cumulative counters (``rows``: k -> counter row)."""
        if not rows:
            return None
        tick_us = self.clock.tick_us
        k1 = -(-to_us(t1.timestamp()) // tick_us)  # first boundary >= t1
        k2 = to_us(t2.timestamp()) // tick_us  # last boundary <= t2
        ks = sorted(rows)
        # cumulative at boundary b = row of tick b-1 (tick b-1 ends at b)
        lo_k, hi_k = k1 - 1, k2 - 1
        lo_k = max(lo_k, ks[0] - 1)
        hi_k = min(hi_k, ks[-1])
        if hi_k <= lo_k:
            b = _dt(max(k1, ks[0]) * tick_us)
            return {
                "t1": b.isoformat(),
                "t2": b.isoformat(),
                "energy_j": 0.0,
                "carbon_g": 0.0,
                "containers": {},
                "ticks": [None, None],
            }
        hi = rows.get(hi_k)
        lo = rows.get(lo_k, {"energy_mj": 0, "carbon_ug": 0, "containers": {}})
        if hi is None:
            return None
        if lo_k < ks[0]:  # before the first recorded tick: counters start at zero
            lo = {"energy_mj": 0, "carbon_ug": 0, "containers": {}}
            first_row = rows[ks[0]]
            if ks[0] > 0 and first_row is not None and lo_k != ks[0] - 1:
                return None
        conts = {}
        for c, (e, g) in hi["containers"].items():
            e0, g0 = lo["containers"].get(c, (0, 0))
            conts[c] = {"energy_j": mj_to_j(e - e0), "carbon_g": ug_to_g(g - g0)}
        return {
            "t1": _iso((lo_k + 1) * tick_us),
            "t2": _iso((hi_k + 1) * tick_us),
            "energy_j": mj_to_j(hi["energy_mj"] - lo["energy_mj"]),
            "carbon_g": ug_to_g(hi["carbon_ug"] - lo["carbon_ug"]),
            "containers": conts,
            "ticks": [lo_k + 1, hi_k],
        }

    def ledger_view(self, app: str, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
        a, b = t1.timestamp(), t2.timestamp()
        return [json.loads(e) for t, e in self.entries.get(app, ()) if a <= t < b]


# ---------------------------------------------------------------------------------------
# Faust wiring
# ---------------------------------------------------------------------------------------


def internal_topics(app_id: str) -> list[str]:
    """Faust's own topics (tansu does not auto-create): table changelogs."""
    return [f"{app_id}-snapshots-changelog", f"{app_id}-counters-changelog"]


def faust_app_id(cfg: EcovisorConfig) -> str:
    return f"ecovisor-ledger-{cfg.site.id}"


def build_app(
    cfg: EcovisorConfig,
    *,
    bootstrap: str,
    clock: ClockMode = "realtime",
    web_port: int | None = None,
    datadir: str | None = None,
    timeouts: float = 3.0,
) -> Any:
    """The Faust app of the ledger worker for one site."""
    import faust
    from faust.web import Request, View

    app_id = faust_app_id(cfg)
    datadir = datadir or f"{cfg.stack.state_dir}/faust-{app_id}"
    Path(datadir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        app_id,
        broker=f"kafka://{bootstrap}",
        store="memory://",
        value_serializer="raw",
        key_serializer="raw",
        topic_partitions=1,
        topic_allow_declare=False,
        topic_disable_leader=True,
        stream_wait_empty=False,
        broker_commit_interval=0.5,
        broker_rebalance_timeout=timeouts,
        broker_session_timeout=timeouts,
        broker_heartbeat_interval=max(0.3, timeouts / 6),
        broker_request_timeout=max(10.0, timeouts * 3),
        consumer_auto_offset_reset="earliest",
        web_enabled=web_port is not None,
        web_host="127.0.0.1",
        web_bind="127.0.0.1",
        web_port=web_port or cfg.stack.ledger_web_port,
        datadir=datadir,
        stream_buffer_maxsize=8192,
        producer_linger_ms=2,
    )
    commands = app.topic(topics.COMMANDS, value_type=bytes, key_type=bytes)
    acks = app.topic(topics.ACTUATOR_ACKS, value_type=bytes, key_type=bytes)
    snapshots = app.Table(
        "snapshots", partitions=1, use_partitioner=True, key_type=bytes, value_type=bytes
    )
    counters = app.Table(
        "counters", partitions=1, use_partitioner=True, key_type=bytes, value_type=bytes
    )
    site = cfg.site.id
    rt = Runtime(cfg, clock_mode=clock)
    app.ecovisor_runtime = rt  # for tests and the bench

    def ensure_loaded() -> SiteLedger:
        if rt.ledger is None:
            raw = snapshots.get(site.encode())
            rt.ledger = SiteLedger.restore(cfg, raw) if raw else SiteLedger.new(cfg)
            for key, val in counters.items():
                a, _, k = key.decode().rpartition(":")
                rt.ledger.counters.setdefault(a, {})[int(k)] = json.loads(val)
            for hist in rt.ledger.counters.values():
                for k in sorted(hist)[:-HISTORY_TICKS]:
                    del hist[k]
            log.info("ledger for site %s loaded (restored=%s)", site, bool(raw))
        return rt.ledger

    async def send_all(outs: list[Out], wait: bool = False) -> None:
        for o in outs:
            rt.in_flight.append(await app.producer.send(o.topic, o.key, o.value, None, None, None))
        if wait or len(rt.in_flight) > 10_000:
            futs, rt.in_flight = rt.in_flight, []
            await asyncio.gather(*futs)

    async def persist(led: SiteLedger, rows: list[tuple[str, int, dict[str, Any]]]) -> None:
        # outputs must be durable before the snapshot that makes a restart skip them
        await send_all([], wait=True)
        for a, k, row in rows:
            counters[f"{a}:{k}".encode()] = json.dumps(row, separators=(",", ":")).encode()
            old = f"{a}:{k - HISTORY_TICKS}".encode()
            if old in counters:
                del counters[old]
        snapshots[site.encode()] = led.snapshot()
        rt.persisted += 1

    async def after_close(led: SiteLedger, now_us: int) -> None:
        outs, rows = led.close(now_us)
        if rows or outs:
            await send_all(outs)  # outputs first: a crash re-sends identical ones
            rt.rows.extend(rows)
            rt.ticks_closed += len({k for _, k, _ in rows})
            # Snapshot at most every persist_interval of wall time: a replay after a
            # crash recomputes identical ticks, so fewer snapshots cost only replay time
            # (a 300 kB snapshot per tick would cap catch-up speed).
            mono = time.monotonic()
            if mono - rt.last_persist >= rt.persist_interval:
                rt.last_persist = mono
                await persist(led, rt.rows)
                rt.rows = []

    async def handle(led: SiteLedger, partition: int, records: list[Any]) -> None:
        """One fetched batch of telemetry: aggregate in memory, close due ticks."""
        parse = TELEMETRY_ADAPTER.validate_json
        offer = led.clock.offer
        event_mode = rt.clock_mode == "event"
        offsets = led.offsets
        wall_us = to_us(time.time())
        for r in records:
            raw = r.value if r.value is not None else b""  # a tombstone: dead-lettered
            offsets[partition] = r.offset
            try:
                t = parse(raw)
            except ValidationError as e:
                cm = None
                if b'"clock"' in raw:
                    with contextlib.suppress(ValidationError):
                        cm = ClockMessage.model_validate_json(raw)
                why = describe_validation_error(e)
                if cm is not None and cm.site == site:
                    refused = led.refuse_reason(cm, None)
                    cm, why = (None, refused) if refused else (cm, why)
                if cm is None:
                    dl = dead_letter(topics.TELEMETRY, why, raw)
                    await send_all([Out(topics.DEADLETTER, None, dl.model_dump_json().encode())])
                elif cm.site == site:
                    rt.driving_us = max(rt.driving_us, to_us(cm.time.timestamp()))
                    await after_close(led, rt.driving_us)
                continue
            if t.site != site:
                continue
            t_us = to_us(t.time.timestamp())  # once per sample: refuse_reason and offer
            why = led.refuse_reason(t, None if event_mode else wall_us, t_us)
            if why is not None:
                dl = dead_letter(topics.TELEMETRY, why, raw)
                await send_all([Out(topics.DEADLETTER, None, dl.model_dump_json().encode())])
                continue
            offer(t, t_us)
            rt.samples += 1
            if event_mode:
                wm = led.clock.watermark_us or 0
                if wm > rt.driving_us:
                    rt.driving_us = wm
                if led.clock.next_close is not None and (
                    led.clock.closable_until(rt.driving_us) > led.clock.next_close
                ):
                    await after_close(led, rt.driving_us)

    @app.task
    async def telemetry_loop() -> None:
        """The hot path. Faust's per-event stream machinery costs ~65 µs per message here
        (an empty agent ran ~15,000 events/s), so telemetry is read with a plain aiokafka
        consumer inside the Faust app, in batches, on assigned partitions; its position
        is the offset stored in the site snapshot (seeked on start), not a group commit."""
        import aiokafka
        from aiokafka import TopicPartition

        await app.tables.recovery.completed.wait()
        led = rt.ledger or ensure_loaded()
        consumer = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=bootstrap,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            group_id=None,
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=4 * 1024 * 1024,
            request_timeout_ms=30_000,
        )
        await consumer.start()
        try:
            parts = consumer.partitions_for_topic(topics.TELEMETRY)
            if not parts:
                await consumer.stop()
                raise RuntimeError(f"topic {topics.TELEMETRY} does not exist")
            tps = [TopicPartition(topics.TELEMETRY, p) for p in sorted(parts)]
            consumer.assign(tps)
            for tp in tps:
                off = led.offsets.get(tp.partition)
                if off is None:
                    await consumer.seek_to_beginning(tp)
                else:
                    consumer.seek(tp, off + 1)  # the snapshot covers everything up to off
            rt.consuming.set()
            while True:
                batch = await consumer.getmany(timeout_ms=200, max_records=20_000)
                for tp, records in batch.items():
                    await handle(led, tp.partition, records)
        finally:
            await consumer.stop()

    if clock == "realtime":

        @app.timer(interval=max(0.05, cfg.site.shape.tick_s / 10))
        async def tick_timer() -> None:
            if not app.tables.recovery.completed.is_set():
                return
            led = rt.ledger or ensure_loaded()
            now = to_us(datetime.now(UTC).timestamp())
            await after_close(led, max(now, led.clock.watermark_us or 0))

    @app.agent(commands)
    async def on_command(stream: Any) -> None:
        async for raw in stream:
            led = rt.ledger or ensure_loaded()
            now = max(rt.driving_us, led.clock.watermark_us or 0)
            if rt.clock_mode == "realtime":
                now = max(now, to_us(datetime.now(UTC).timestamp()))
            outs = led.command(raw, now)
            await send_all(outs)
            await persist(led, rt.rows)
            rt.rows = []

    @app.agent(acks)
    async def on_ack(stream: Any) -> None:
        async for raw in stream:
            led = rt.ledger or ensure_loaded()
            await send_all(led.ack(raw))

    # --- state views (loopback only) ------------------------------------------------
    def _parse_t(v: str | None) -> datetime | None:
        if not v:
            return None
        t = datetime.fromisoformat(v.replace("Z", "+00:00"))
        return t if t.tzinfo else t.replace(tzinfo=UTC)

    @app.page("/ecovisor/state/{app_name}")
    class StateView(View):
        async def get(self, request: Request, app_name: str) -> Any:
            led = rt.ledger
            v = led.state_view(app_name) if led else None
            if v is None:
                return self.json({"error": f"no state for app {app_name!r}"}, status=404)
            return self.json(v)

    @app.page("/ecovisor/counters/{app_name}")
    class CountersView(View):
        async def get(self, request: Request, app_name: str) -> Any:
            led = rt.ledger
            try:
                t1 = _parse_t(request.query.get("t1"))
                t2 = _parse_t(request.query.get("t2"))
            except ValueError as e:
                return self.json({"error": str(e)}, status=400)
            if t1 is None or t2 is None or t2 < t1:
                return self.json({"error": "give t1 <= t2 as ISO 8601 times"}, status=400)
            if led is None or app_name not in led.state.apps:
                return self.json({"error": f"no state for app {app_name!r}"}, status=404)
            v = led.counters_view(app_name, t1, t2, led.counters.get(app_name, {}))
            if v is None:
                return self.json({"error": "interval outside the kept history"}, status=404)
            return self.json(v)

    @app.page("/ecovisor/ledger/{app_name}")
    class LedgerView(View):
        async def get(self, request: Request, app_name: str) -> Any:
            led = rt.ledger
            try:
                t1 = _parse_t(request.query.get("from")) or datetime.fromtimestamp(0, UTC)
                t2 = _parse_t(request.query.get("to")) or datetime.now(UTC)
            except ValueError as e:
                return self.json({"error": str(e)}, status=400)
            if led is None or app_name not in led.state.apps:
                return self.json({"error": f"no state for app {app_name!r}"}, status=404)
            return self.json({"app": app_name, "entries": led.ledger_view(app_name, t1, t2)})

    return app


@dataclass
class Runtime:
    cfg: EcovisorConfig
    clock_mode: ClockMode = "realtime"
    ledger: SiteLedger | None = None
    consuming: asyncio.Event = field(default_factory=asyncio.Event)
    driving_us: int = 0
    samples: int = 0
    ticks_closed: int = 0
    persisted: int = 0
    rows: list[tuple[str, int, dict[str, Any]]] = field(default_factory=list)
    last_persist: float = 0.0
    in_flight: list[Any] = field(default_factory=list)
    persist_interval: float = 0.5


def prepare_topics(cfg: EcovisorConfig, bootstrap: str) -> None:
    """Create every topic the worker reads or writes (tansu does not auto-create)."""
    from ecovisor.adapters.kafka import create_topics

    create_topics(
        bootstrap,
        topics.all_topics([a.id for a in cfg.apps]) + internal_topics(faust_app_id(cfg)),
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streams.ledger", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="site configuration (default $ECOVISOR_CONFIG)")
    p.add_argument(
        "--clock",
        choices=["realtime", "event"],
        default="realtime",
        help="realtime: a timer closes ticks at wall time >= end + grace; event: only the "
        "event-time watermark (telemetry or clock messages) closes ticks (replays)",
    )
    p.add_argument("--timeouts", type=float, default=3.0, help="broker session/rebalance s")
    p.add_argument("--loglevel", default="warning")
    a = p.parse_args(argv)
    try:
        cfg = load_config(config_path(a.config))
    except ConfigError as e:
        print(f"streams.ledger: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    from ecovisor.contract.config import kafka_bootstrap

    bootstrap = kafka_bootstrap(cfg)
    try:
        prepare_topics(cfg, bootstrap)
    except Exception as e:  # noqa: BLE001 - one clear line, not a traceback
        print(f"streams.ledger: cannot prepare Kafka topics at {bootstrap}: {e}", file=sys.stderr)
        return 3
    import faust

    app = build_app(
        cfg,
        bootstrap=bootstrap,
        clock=a.clock,
        web_port=cfg.stack.ledger_web_port,
        timeouts=a.timeouts,
    )
    worker = faust.Worker(app, loglevel=a.loglevel, quiet=True, redirect_stdouts=False)
    with contextlib.suppress(SystemExit):
        worker.execute_from_commandline()
    return 0


if __name__ == "__main__":
    sys.exit(main())
