"""The ledger worker's state machine for one site, without I/O: telemetry into the tick
clock, closed ticks through the pure core (``site_step``) into ledger entries and
notifications, commands into queued settings and actuator actions, actuator acks into
command outcomes, and the snapshot that makes a restart exact.

Every step returns the messages to send (``Out``); the Faust wiring
(streams/ledger_app.py) sends them and persists ``snapshot()``. docs/ledger.md.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ecovisor.contract import topics
from ecovisor.contract.actuation import sign
from ecovisor.contract.bus_access import site_source_id
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.environment import internal_key
from ecovisor.contract.notifications import Notification
from ecovisor.core.entries import AppLedgerEntry, SiteTickResult
from ecovisor.core.intake import BatchEntry
from ecovisor.core.solar_share import split_solar
from ecovisor.core.state import SiteState, SiteTickInput
from ecovisor.core.tick import initial_site_state, site_step
from ecovisor.core.tick_clock import ClockLimits, ClosedTick, TickClock, to_us
from ecovisor.core.units import j_to_mj, wh_to_mj
from streams.counters_table import Restored, rows_up_to
from streams.ledger_commands import CommandIntake, bucketed_keys
from streams.ledger_out import Out, utc_from_us
from streams.tick_notifications import (
    battery_setpoint,
    event_notifications,
    site_alert,
    tick_data,
)
from streams.view_history import TickLog, entry_log, row_log

HISTORY_TICKS = 3_600  # per-tick counters and entries kept for the views, at most
# ... and at most this many container-ticks per site: an entry and a counter row grow with
# the app's containers (~300 B of memory per container and tick as they are), so 3,600
# ticks at 1,000 containers were ~1.1 GB (the soak, docs/reliability.md); the counters
# table keeps as many rows. In memory the older ticks are compressed blocks
# (streams/view_history.py: ~12 B per container and tick)
HISTORY_CONTAINER_TICKS = 400_000
HISTORY_MIN_TICKS = 60


# The ``counters`` table keeps, per app, as much of that history as fits this many bytes
# per container (at least HISTORY_TABLE_MIN_BYTES): with the snapshot (404-614 B per
# container measured, docs/ledger.md) the tables stay within ~1 KB per container. The
# ticks it covers depend on how the counters compress: at 1,000 containers 352 of the
# 400 in memory on the bench's counters, 80 with ±30 % noise on each container's power
# (docs/ledger.md, "The counters table within a budget"; streams/counters_table.py)
HISTORY_TABLE_BYTES_PER_CONTAINER = 384
HISTORY_TABLE_MIN_BYTES = 8_192


def history_table_bytes(containers: int) -> int:
    """Bytes of view history the ``counters`` table keeps for an app of ``containers``
    containers (streams/counters_table.py ``CountersTable.write``'s budget)."""
    return max(HISTORY_TABLE_MIN_BYTES, HISTORY_TABLE_BYTES_PER_CONTAINER * containers)


def history_ticks(containers: int) -> int:
    """Ticks of per-tick history the ledger keeps for a site of ``containers``
    containers (configured and every template replica)."""
    by_budget = HISTORY_CONTAINER_TICKS // max(1, containers)
    return max(HISTORY_MIN_TICKS, min(HISTORY_TICKS, by_budget))

MAX_EXPIRY_S = 10 * 366 * 86_400.0  # longer configured durations are clamped to this
# Event times the tick arithmetic supports in every mode: tick indices are >= 0 (epoch
# based) and a tick's end must still be a datetime (year <= 9999).
EVENT_TIME_MAX_US = to_us(datetime(9998, 1, 1, tzinfo=UTC).timestamp())

CounterRow = tuple[str, int, dict[str, Any]]  # (app, k, cumulative counters after tick k)


def clock_limits(cfg: EcovisorConfig) -> ClockLimits:
    """The tick clock's bounds from the site configuration: ``site.limits``, what each
    counter can physically measure (a container or node: its node's peak modelled power;
    solar: the array's nameplate), the counters whose baselines it keeps for good (the
    configured containers, template replicas, nodes and solar source: bounded by the
    configuration) and the node each container is placed on."""
    lim = cfg.site.limits
    peaks = {n.id: n.model().peak_power_w for n in cfg.site.nodes}
    places = cfg.placements()
    container_peak = {c: peaks.get(p.node) for c, p in places.items()}
    nameplate = cfg.site.shape.solar_nameplate_w
    kept = {"c:" + c for c in places} | {"n:" + n for n in peaks}
    if cfg.site.solar is not None:
        kept.add("s:" + site_source_id(cfg, "solar"))

    def max_power_w(key: str) -> float | None:
        tag, name = key[0], key[2:]
        if tag == "c":
            return container_peak.get(name)
        if tag == "n":
            return peaks.get(name)
        return nameplate

    return ClockLimits(
        max_sources=lim.max_sources,
        source_expiry_s=min(lim.source_expiry_s, MAX_EXPIRY_S),
        max_counters=len(places) + len(peaks) + lim.max_sources,
        max_power_w=max_power_w,
        kept=frozenset(kept).__contains__,
        placement={c: p.node for c, p in places.items()},
    )


def _entry_json(entry: AppLedgerEntry) -> bytes:
    return entry.model_dump_json().encode()


@dataclass
class SiteLedger(CommandIntake):
    """Everything the worker keeps for one site; no I/O (the Faust layer sends ``Out``s
    and persists ``snapshot()``)."""

    cfg: EcovisorConfig
    clock: TickClock
    state: SiteState
    offsets: dict[int, int] = field(default_factory=dict)  # telemetry partition -> offset
    # idempotency keys per app (the token's), oldest first; RAW_BUCKET: no valid token
    seen_commands: dict[str, OrderedDict[str, None]] = field(default_factory=dict)
    pending_acks: dict[str, str] = field(default_factory=dict)  # "app|command_id" -> app
    clock_us: int | None = None  # the last accepted clock message (event mode)
    # settings changes the ledger itself applies: "app|command_id" -> {app, k, change}
    pending_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    suspended: dict[str, list[str]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)  # app -> state view
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the view history, per app, in memory: the last ``history_ticks`` ticks' entries
    # (each an Out until compacted) and counter rows (streams/view_history.py)
    entries: dict[str, TickLog] = field(default_factory=dict)
    counters: dict[str, TickLog] = field(default_factory=dict)
    # the newest carbon and solar forecasts their sources published (CarbonTelemetry /
    # SolarTelemetry.forecast): the site's, the same for every app; served by the state
    # view, not persisted (the collector re-publishes it with every sample). Kept as the
    # message's (published µs, message): formatted only when a view asks (forecast_view)
    forecasts: dict[str, tuple[int, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # derived from the configuration, looked up per container per tick: precomputed
        places = self.cfg.placements()
        self.owners: dict[str, str] = {c: p.app for c, p in places.items()}
        self.placed: dict[str, str] = {c: p.node for c, p in places.items()}  # its node
        # each app's containers as a set: a tick's telemetry agrees with the configuration
        # when its keys are a subset (checked in C, not per container in Python)
        owned: dict[str, set[str]] = {}
        for c, a in self.owners.items():
            owned.setdefault(a, set()).add(c)
        self.owned = {a: frozenset(cs) for a, cs in owned.items()}
        self.history_ticks = history_ticks(len(self.owners))
        self.shares = self.cfg.shares()
        self.app_cfg = {a.id: a for a in self.cfg.apps}
        self.nodes = {n.id for n in self.cfg.site.nodes}
        lim = self.cfg.site.limits
        self.skew_us = to_us(lim.clock_skew_s)
        self.max_step_us = to_us(min(lim.clock_max_step_s, MAX_EXPIRY_S))
        # signs actions/setpoints, checks acks (None: unauthenticated, as before keys)
        self.key = internal_key(self.cfg)

    @classmethod
    def new(cls, cfg: EcovisorConfig) -> SiteLedger:
        shape = cfg.site.shape
        return cls(
            cfg=cfg,
            clock=TickClock(shape.tick_s, cfg.site.grace_s, limits=clock_limits(cfg)),
            state=initial_site_state(shape, cfg.shares(), site=cfg.site.id),
        )

    # --- persistence --------------------------------------------------------------------
    def snapshot(self) -> bytes:
        return json.dumps(
            {
                "v": 2,
                "state": self.state.model_dump(mode="json"),
                "clock": self.clock.snapshot(),
                "clock_us": self.clock_us,
                "offsets": self.offsets,
                "seen_commands": {b: list(keys) for b, keys in self.seen_commands.items()},
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
        seen = d["seen_commands"]
        if isinstance(seen, list):  # v1: [[key, app], ...] in one list, oldest first
            seen = bucketed_keys(key for key, _ in seen)
        led = cls(
            cfg=cfg,
            clock=TickClock.restore(d["clock"], limits=clock_limits(cfg)),
            state=SiteState.model_validate(d["state"]),
            offsets={int(p): o for p, o in d["offsets"].items()},
            seen_commands={b: OrderedDict.fromkeys(keys) for b, keys in seen.items()},
            pending_acks=dict(d["pending_acks"]),
            clock_us=d.get("clock_us"),
            pending_settings=dict(d.get("pending_settings", {})),
            suspended={a: list(v) for a, v in d["suspended"].items()},
            last=d["last"],
            metrics=d["metrics"],
        )
        for bucket in led.seen_commands:  # also when the window was larger then
            led._trim_seen(bucket)
        return led

    def restore_counters(self, restored: dict[str, Restored]) -> None:
        """The counters' view history read back from the ``counters`` table
        (``CountersTable.read``: each app's sealed blocks and plain rows), as far as it
        agrees with this snapshot: the two are written to two changelogs, so either may
        have lost the last persist's writes. Rows after the snapshot's tick are cut (they
        are closed again, and in real time not always the same: a run that then skipped
        ticks would leave the lost run's rows beside its own), and the row of that tick
        must be the snapshot's cumulative counters, else the history starts anew (the
        table behind the snapshot, or from another run)."""
        for app, got in restored.items():
            closed = self.last.get(app, {}).get("tick")
            if app not in self.app_cfg or closed is None:
                continue  # no tick in the snapshot: any row is from a lost run
            blocks, plain = rows_up_to(got, closed)
            log = row_log(self.history_ticks)
            log.load(blocks, plain)
            row = log.get(closed)
            cum = self.state.apps[app].cumulative
            if row is None or (row.get("energy_mj"), row.get("carbon_ug"),
                               row.get("ticks", cum.ticks)
                               ) != (cum.total.energy_mj, cum.total.carbon_ug, cum.ticks):
                continue
            self.counters[app] = log
        self.compact_history()

    def table_budget(self, app: str) -> int:
        """Bytes of ``app``'s counters history the ``counters`` table keeps."""
        return history_table_bytes(len(self.owned.get(app, ())))

    def compact_history(self) -> None:
        """The view history's plain ticks into compressed blocks where there are enough
        (``TickLog.compact``): after a tick's outputs are sent, their bytes exist."""
        for logs in (self.entries, self.counters):
            for log in logs.values():
                log.compact()

    def _log(self, logs: dict[str, TickLog], app: str, new: Callable[[int], TickLog]
             ) -> TickLog:
        log = logs.get(app)
        if log is None:
            log = logs[app] = new(self.history_ticks)
        return log

    # --- ticks --------------------------------------------------------------------------
    def refuse_reason(self, t: Any, now_us: int | None, t_us: int | None = None) -> str | None:
        """Why a telemetry (or clock) message must not enter the clock, else None.
        Always: an event time before 1970 or in year 9999 (tick arithmetic; such a tick
        could not be closed, and a replayed poison message would stop the worker).
        ``now_us``: the site's clock (real time: the wall clock; event time:
        ``event_now()``; None: none yet): an event time more than
        ``site.limits.clock_skew_s`` ahead of it is refused, so one sample from a clock
        far ahead cannot close ticks early and then hold every real sample as 'late'.
        Late samples are fine (they roll in) down to the clock's floor, which the clock
        itself enforces (``TickClock.floor_us``: older ones cannot be told from a
        replay). ``t_us``: the event time, if converted."""
        if t_us is None:
            t_us = to_us(t.time.timestamp())
        if not 0 <= t_us <= EVENT_TIME_MAX_US:
            return f"event time {t.time.isoformat()} is outside 1970-01-01..9998-01-01"
        if now_us is not None and t_us > now_us + self.skew_us:
            return (
                f"event time {t.time.isoformat()} is {(t_us - now_us) / 1e6:.0f} s ahead of "
                f"the site's clock (at most {self.skew_us / 1e6:g} s, site.limits."
                f"clock_skew_s): check the source's clock"
            )
        return None

    def event_now(self) -> int | None:
        """The site's event-time clock: the newest of the watermark and the last accepted
        clock message; None before any."""
        wm = self.clock.watermark_us
        if self.clock_us is None:
            return wm
        return self.clock_us if wm is None else max(wm, self.clock_us)

    def ingest(self, t: Any, t_us: int, now_us: int | None) -> str | None:
        """Take one telemetry sample of this site into the clock. Returns the reason to
        dead-letter it, or None. A counter reset is taken (as the new baseline) and
        reported too. Telemetry of a container, node or app the configuration does not
        have is refused: nothing could be booked from it, and it must not grow the state;
        so is a container's telemetry naming another node than its placement (the
        platform's energy is its node's minus its containers': a container counted
        against the wrong node books its energy twice)."""
        why = self.refuse_reason(t, now_us, t_us)
        if why is not None:
            return why
        kind = t.kind
        if kind == "node_batch":  # one reason for the whole message (ingest_batch: each)
            reports = self.ingest_batch(t, t_us, now_us, checked=True)
            return "; ".join(why for _, why in reports) or None
        if kind == "container":
            why = self._misplaced(t.container, t.node)
            if why is not None:
                return why
        elif kind == "node" and t.node not in self.nodes:
            return f"node {t.node!r} is not in the site configuration"
        if kind == "app_metrics" and t.app not in self.app_cfg:
            return f"app {t.app!r} is not in the site configuration"
        status = self.clock.offer(t, t_us)
        if kind in ("carbon", "solar") and t.forecast and status != "refused":
            self._keep_forecast(t, t_us)
        return self.clock.reason if status in ("refused", "reset") else None

    def _misplaced(self, container: str, node: str | None) -> str | None:
        """Why the ledger does not take a container's counter reported from ``node``
        (None: not named), else None: the container must be configured (a container or a
        template replica: ``EcovisorConfig.placements``, the one ownership rule) and
        ``node``, if named, the one it is placed on. The one check of both, for single
        messages and each entry of a node batch."""
        placed = self.placed.get(container)
        if placed is None:
            return f"container {container!r} is not in the site configuration (no app owns it)"
        if node is not None and node != placed:
            return (f"container {container!r} is placed on node {placed!r} (site "
                    f"configuration), not {node!r}: it is booked against its placement's "
                    f"node only")  # fmt: skip
        return None

    def ingest_batch(
        self, b: Any, t_us: int, now_us: int | None, checked: bool = False
    ) -> list[tuple[int, str]]:
        """Take one node batch (a ``NodeBatch`` of either ``batch_version``) as one event:
        the time rules and dedupe once for the batch, then each container's counters into
        the same state as a ``ContainerTelemetry`` (``TickClock.offer_batch``). The
        entries are read as rows (``NodeBatch.rows``: a version 2 batch's columns zipped,
        no object per entry). Returns (index, reason) per entry to dead-letter, (-1,
        reason) for the whole batch. ``checked``: ``refuse_reason`` already passed."""
        why = None if checked else self.refuse_reason(b, now_us, t_us)
        if why is None and b.node not in self.nodes:
            why = f"node {b.node!r} is not in the site configuration"
        if why is not None:
            return [(-1, why)]
        placed, node = self.placed, b.node
        reports: list[tuple[int, str]] = []
        entries: list[BatchEntry] = []
        seen: set[str] = set()
        for i, (app, c, _, energy_j) in enumerate(b.rows()):
            if placed.get(c) != node:  # one lookup when it agrees (the usual case)
                reports.append((i, self._misplaced(c, node) or ""))
            elif c in seen:
                reports.append((i, f"container {c!r} is listed twice in the batch: the "
                                   f"first is taken"))  # fmt: skip
            else:
                seen.add(c)
                entries.append((i, c, app, j_to_mj(energy_j)))
        status, refused = self.clock.offer_batch(b, t_us, entries)
        if status in ("refused", "duplicate"):
            # a duplicate batch is no error (at-least-once): nothing to report
            return [(-1, self.clock.reason or "")] if status == "refused" else []
        return sorted(reports + refused)

    def _keep_forecast(self, t: Any, t_us: int) -> None:
        """Keep the newest carbon or solar forecast by publication time (a late sample's
        older forecast does not replace a newer one)."""
        kept = self.forecasts.get(t.kind)
        if kept is None or kept[0] <= t_us:
            self.forecasts[t.kind] = (t_us, t)

    def forecast_view(self, kind: str) -> dict[str, Any] | None:
        """The kept ``kind`` (carbon, solar) forecast as the state view serves it: times in
        UTC, points in time order; None before any."""
        kept = self.forecasts.get(kind)
        if kept is None:
            return None
        t_us, t = kept
        return {
            "published_us": t_us,
            "published_at": utc_from_us(t_us).isoformat(),
            "source": t.source,
            "signal": getattr(t, "signal", None),  # carbon: average or marginal
            "points": [[at.astimezone(UTC).isoformat(), v] for at, v in sorted(t.forecast)],
        }

    def clock_message(self, cm: Any, event_mode: bool) -> str | None:
        """Accept a clock message (it moves ``event_now()``) or say why not. Only in event
        mode, only from ``site.limits.replay_clock_source``, only after telemetry (before,
        there is nothing to close and no reference), never backwards, and at most
        ``site.limits.clock_max_step_s`` past the site's clock: one record far in the
        future would otherwise close every tick up to it, for good."""
        want = self.cfg.site.limits.replay_clock_source
        if not event_mode:
            return "clock messages are refused: this ledger runs on the wall clock (realtime)"
        if want is None:
            return "clock messages are refused: the site has no site.limits.replay_clock_source"
        if cm.source != want:
            return f"clock message from source {cm.source!r}: only {want!r} may drive the clock"
        t_us = to_us(cm.time.timestamp())
        why = self.refuse_reason(cm, None, t_us)
        if why is not None:
            return why
        now = self.event_now()
        if now is None:
            return "clock message before any telemetry: no tick to close, no reference for it"
        if self.clock_us is not None and t_us < self.clock_us:
            return (f"clock goes back from {utc_from_us(self.clock_us).isoformat()} to "
                    f"{cm.time.isoformat()}")  # fmt: skip
        if t_us - now > self.max_step_us:
            return (
                f"clock advances {(t_us - now) / 1e6:g} s past the site's clock, more than "
                f"{self.max_step_us / 1e6:g} s (site.limits.clock_max_step_s)"
            )
        self.clock_us = t_us
        return None

    def close(self, now_us: int) -> tuple[list[Out], list[CounterRow]]:
        """Close every tick due at driving time ``now_us``. Returns the messages to send
        and the per-tick counter rows (app, k, row) to persist."""
        outs: list[Out] = []
        rows: list[CounterRow] = []
        for ct in self.clock.advance(now_us):
            o, r = self._account(ct)
            outs.extend(o)
            rows.extend(r)
        return outs, rows

    def _inputs(self, ct: ClosedTick) -> SiteTickInput:
        apps = self.app_cfg
        owners, owned = self.owners, self.owned
        demand: dict[str, dict[str, int]] = {}
        for reported, conts in ct.demand_mj.items():
            if (reported in apps and reported not in demand
                    and conts.keys() <= owned.get(reported, frozenset())):
                demand[reported] = dict(conts)  # the usual case: the telemetry agrees
                continue
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

    def _account(self, ct: ClosedTick) -> tuple[list[Out], list[CounterRow]]:
        """One closed tick through the core: per app its ledger entry, tick notification
        and events; then settings now in force, the battery setpoint and alerts."""
        cfg = self.cfg
        inp = self._inputs(ct)
        self.state, res = site_step(cfg.site.shape, self.shares, self.state, inp)
        for app, m in ct.metrics.items():
            self.metrics[app] = m
        t_end_us = ct.t_start_us + ct.tick_us
        t_end = utc_from_us(t_end_us)
        site = cfg.site.id
        next_solar, _ = split_solar(ct.solar_mj, self.shares)
        t_end_iso = t_end.isoformat()
        outs: list[Out] = []
        rows: list[CounterRow] = []
        for app, entry in res.entries.items():
            key = f"{site}:{app}:{ct.k}".encode()
            entry_out = Out(topics.LEDGER, key, message=entry, render=_entry_json)
            outs.append(entry_out)
            data = tick_data(
                self.app_cfg[app],
                self.shares[app],
                self.state.apps[app],
                self.suspended.get(app, ()),
                entry,
                res.tick_s,
                next_solar.get(app, 0),
            )
            note = Notification(site=site, time=t_end, app=app, type="tick", tick=ct.k, data=data)
            ntopic = topics.notifications(app)
            outs.append(Out(ntopic, key, message=note, render=Notification.to_json))
            for n in event_notifications(site, t_end, app, ct.k, entry):
                outs.append(Out(ntopic, key, message=n, render=Notification.to_json))
            cum = entry.cumulative
            # (energy, carbon) as tuples, not lists (the same JSON in the counters table):
            # the garbage collector stops tracking tuples of ints, so the ~400k pairs the
            # history keeps at 1,000 containers do not slow every full collection
            row = {
                "t_end_us": t_end_us,
                # the app's accounted ticks so far: consecutive rows count up by one, so
                # the counters view tells ticks the clock skipped from rows missing
                "ticks": cum.ticks,
                "energy_mj": cum.total.energy_mj,
                "carbon_ug": cum.total.carbon_ug,
                "containers": dict(zip(cum.containers.names,
                                       zip(cum.containers.energy, cum.containers.carbon,
                                           strict=True), strict=True)),
            }
            rows.append((app, ct.k, row))
            self._remember(app, ct.k, row, entry_out)
            # what the state view and /metrics read of the app's last tick (the settings
            # in force are the app state's)
            self.last[app] = {"tick": ct.k, "time": t_end_iso, "tick_data": data}
        outs.extend(self._settings_applied(ct.k, t_end, res))
        setpoint = battery_setpoint(cfg, t_end, ct.k, res.controller)
        if self.key:
            setpoint = sign(setpoint, self.key)
        outs.append(Out(topics.ACTUATOR_BATTERY, site.encode(), setpoint.to_json()))
        for a in res.alerts:
            outs.append(Out(topics.ALERTS, site.encode(), site_alert(site, t_end, a).to_json()))
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

    def _remember(self, app: str, k: int, row: dict[str, Any], entry: Out) -> None:
        self._log(self.counters, app, row_log).append(k, row)
        # the entry's Out: its JSON once sent (or read by the ledger view, or compacted),
        # parsed only when the ledger view is read
        self._log(self.entries, app, entry_log).append(k, entry)
