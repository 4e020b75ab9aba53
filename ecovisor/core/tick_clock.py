"""Tick assembly for the ledger: PURE (no I/O, no clocks, no globals).

Telemetry is assigned to ticks by its event time: tick ``k`` covers
``[k*Δt, (k+1)*Δt)`` (epoch seconds, so every worker agrees on the boundaries). A tick
closes once the driving time reaches ``(k+1)*Δt + grace``. The driving time is given by
the caller: the event-time watermark (max event time seen, or a ``clock`` message) in
virtual-time mode, or the wall clock in real-time mode. Either way this module only sees
numbers.

Samples are aggregated in memory per open tick (never one state write per sample):

* cumulative counters (container, node and solar energy) keep only the newest sample
  (highest ``seq``) of each source per tick; at close the tick's energy is
  ``counter(tick end) - counter(previous close)`` in integer mJ, so energy is never lost
  or counted twice whatever the sampling;
* a counter is checked against the last accepted sample of its source when it arrives:
  an increment beyond what the source can produce in the interval (``max_power_w`` x
  elapsed x ``COUNTER_MARGIN`` + ``COUNTER_SLACK_S`` of it) is a *fault*, refused and
  never booked; a counter that goes back is a *reset*: the new value becomes the
  baseline and nothing is booked for that interval (both counted, both reported);
* carbon intensity is a time-weighted mean over the tick (piecewise constant from each
  sample, the value carried in from the previous tick at the start);
* battery telemetry keeps the newest sample.

Rules (the brief's): duplicates (same source and seq) are dropped; a sample older than
the oldest open tick is *late* and rolls into the oldest open tick (its counter then
lands there, charged at that tick's intensity); a sample more than ``source_expiry_s``
before the oldest open tick is refused (``floor_us``: its source's dedupe state may be
forgotten, so it cannot be told from a replay); a source silent when a tick closes is
carried (counter unchanged, so no new energy until it reports again, intensity and
battery carried as values), and the tick is marked ``estimated`` for it and counted. A
source silent for ``source_timeout_ticks`` is no longer estimated; its counter's
baseline stays (``dormant``) for good when the configuration has the counter
(``ClockLimits.kept``), else until every sample it took is below the floor, so a
counter that reports again books from where it was booked, never from a replayed value.

Bounded state (no single message can grow it): per source O(1) dedupe (highest seq and
the last ``dedupe_window`` accepted seqs below it), at most ``max_sources`` sources and
``max_counters`` counters (a new one beyond is refused), sources silent for
``source_expiry_s`` of event time forgotten, at most ``MAX_INTENSITY_SAMPLES`` carbon
samples per tick, every value bounded before it becomes integer mJ.

All state is JSON-serialisable (``snapshot``/``restore``) so the ledger can persist it
at each tick close and continue exactly after a restart.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ecovisor.core.intake import BatchEntry, CounterGuard, SeqWindow, value_error
from ecovisor.core.units import US_PER_S, j_to_mj

MAX_INTENSITY_SAMPLES = 1_000  # carbon samples of one tick (one a ms is 1,000 at 1 s)


def to_us(seconds: float) -> int:
    """Seconds (epoch or duration) to integer microseconds."""
    return round(seconds * US_PER_S)


@dataclass(frozen=True)
class ClockLimits:
    """The bounds of one site's clock state (``site.limits`` and the configuration)."""

    max_sources: int = 1_000
    source_expiry_s: float = 3_600.0
    dedupe_window: int = 16  # accepted seqs kept below the highest (reordering allowed)
    max_counters: int = 10_000
    # counter key ("c:<container>", "n:<node>", "s:<source>") -> the most power it can
    # measure, W; None (or no function): no physical bound known, only resets detected
    max_power_w: Callable[[str], float | None] | None = None
    # counter key -> whether its baseline is kept for good once its source falls silent
    # (the configured containers, nodes and solar array: bounded by the configuration);
    # None: none is (each is kept until all it took is below the replay floor)
    kept: Callable[[str], bool] | None = None
    # container -> the node the configuration places it on: the node its energy is
    # subtracted from for the platform, whatever node the telemetry names; None: the
    # telemetry's node (no configuration)
    placement: Mapping[str, str] | None = field(default=None, hash=False)


@dataclass
class _Buf:
    """Aggregates of one open tick."""

    # counter key -> (seq, counter_mj, owner) ; owner = app for containers, node id for
    # nodes, "" for solar
    counters: dict[str, tuple[int, int, str]] = field(default_factory=dict)
    intensity: list[tuple[int, float]] = field(default_factory=list)
    battery: tuple[int, float, float] | None = None  # (t_us, stored_wh, capacity_wh)
    solar_w: tuple[int, float] | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)  # site signal keys
    # first sample of a counter with no baseline yet: (seq, counter_mj)
    firsts: dict[str, tuple[int, int]] = field(default_factory=dict)
    samples: int = 0
    late: int = 0


@dataclass(frozen=True)
class ClosedTick:
    """Everything the core needs for tick ``k`` of a site (plus statistics)."""

    k: int
    t_start_us: int
    tick_us: int
    demand_mj: dict[str, dict[str, int]]  # app -> container -> mJ in the tick
    node_mj: dict[str, int]  # node -> mJ in the tick
    solar_mj: int  # site solar measured IN this tick (the core gets it at k+1)
    solar_prev_mj: int  # site solar measured in tick k-1 (the core's input for k)
    solar_w: float | None  # last instantaneous solar power
    intensity_g_per_kwh: float | None  # time-weighted mean; None before any sample
    battery_stored_wh: float | None
    battery_capacity_wh: float | None
    estimated_sources: tuple[str, ...]  # site-wide sources carried forward
    app_estimated_sources: dict[str, tuple[str, ...]]
    metrics: dict[str, dict[str, Any]]
    samples: int
    late: int
    container_nodes: Mapping[str, str] = field(default_factory=dict)

    @property
    def platform_mj(self) -> int:
        """Node energy that no container accounts for (booked to the site platform)."""
        if not self.node_mj:  # no node meter reported: nothing to book (and no pass)
            return 0
        per_node: dict[str, int] = {}
        for app_d in self.demand_mj.values():
            for c, mj in app_d.items():
                node = self.container_nodes.get(c)
                if node is not None:
                    per_node[node] = per_node.get(node, 0) + mj
        return sum(max(0, e - per_node.get(n, 0)) for n, e in self.node_mj.items())


@dataclass
class _Counter:
    seq: int
    mj: int
    owner: str
    last_k: int


class TickClock:
    """Assembles ticks for ONE site."""

    def __init__(
        self,
        tick_s: float,
        grace_s: float,
        *,
        limits: ClockLimits | None = None,
        source_timeout_ticks: int = 60,
        max_gap_ticks: int = 86_400,
    ) -> None:
        self.tick_us = to_us(tick_s)
        self.grace_us = to_us(grace_s)
        if self.tick_us <= 0 or self.grace_us < 0:
            raise ValueError("tick_s must be > 0 and grace_s >= 0")
        self.limits = limits or ClockLimits()
        self.expiry_us = to_us(self.limits.source_expiry_s)
        self.source_timeout_ticks = source_timeout_ticks
        self.max_gap_ticks = max_gap_ticks
        self.next_close: int | None = None  # oldest open tick
        self._placed = 0  # the tick ``offer`` booked its last accepted sample into
        self.watermark_us: int | None = None
        self.open: dict[int, _Buf] = {}
        self.dedupe: dict[str, SeqWindow] = {}
        self.guard = CounterGuard(self.limits.max_counters, self.limits.max_power_w)
        self.counters: dict[str, _Counter] = {}  # baselines at the last close
        # baselines of counters silent for source_timeout_ticks: no longer estimated, but
        # a counter that reports again books from here (not from a first or replayed
        # sample); ``_fading``: those not ``kept``, dropped once below the floor
        self.dormant: dict[str, _Counter] = {}
        self._fading: set[str] = set()
        self._kept = self.limits.kept or (lambda _key: False)
        # container -> node as the telemetry said (only without a configured placement)
        self.container_nodes: dict[str, str] = {}
        self.intensity: tuple[int, float] | None = None  # carried (t_us, value)
        self.battery: tuple[int, float, float] | None = None
        self.solar_w: tuple[int, float] | None = None
        self.solar_prev_mj = 0
        self.signals: dict[str, int] = {}  # site signal key -> last tick seen
        self.reason: str | None = None  # why the last offer was "refused" or a "reset"
        # cumulative statistics
        self.n_samples = 0
        self.n_duplicates = 0
        self.n_late = 0
        self.n_estimated = 0
        self.n_refused = 0  # refused samples (faults, too old, out of bounds, limits)

    # --- ingest ------------------------------------------------------------------------
    def tick_of(self, t_us: int) -> int:
        return t_us // self.tick_us

    def _refuse(self, why: str) -> str:
        self.reason = why
        self.n_refused += 1
        return "refused"

    def floor_us(self) -> int | None:
        """The oldest event time a sample may have: ``source_expiry_s`` before the oldest
        open tick (None before any sample). A source whose every sample is older has had
        its dedupe state dropped (the expiry at each close uses the same horizon) and a
        counter whose every sample is older may have been forgotten: such a sample cannot
        be told from a replay, and booking it again (or against it) would count energy
        twice. Never goes back (``next_close`` only moves forward)."""
        nc = self.next_close
        return None if nc is None else nc * self.tick_us - self.expiry_us

    def _renumbered(self) -> None:
        """Counters the guard follows again from a lower seq (``CounterGuard.check``):
        their baselines take the next sample whatever its seq. No open tick holds a
        sample of them (all they took is below the floor, so its tick has closed)."""
        counters, dormant = self.counters, self.dormant
        for key in self.guard.renumbered:
            base = counters.get(key) or dormant.get(key)
            if base is not None:
                base.seq = -1
        self.guard.renumbered.clear()

    def offer(self, msg: Any, t_us: int | None = None) -> str:
        """Take one telemetry message. Returns "ok", "late" (accepted, rolled into the
        oldest open tick), "reset" (accepted as a counter's new baseline: ``reason`` says
        why), "duplicate", "refused" (not taken: ``reason``) or "ignored" (a kind the
        ledger does not use)."""
        self.reason = None
        source = msg.source
        kind = msg.kind
        why = value_error(msg)
        if why is not None:
            return self._refuse(why)
        if t_us is None:
            t_us = to_us(msg.time.timestamp())
        floor = self.floor_us()
        if floor is not None and t_us < floor:
            return self._refuse(
                f"event time {msg.time.isoformat()} is more than "
                f"{self.limits.source_expiry_s:g} s (site.limits.source_expiry_s) before "
                f"the oldest open tick: too old to be told from a replay (its source's "
                f"dedupe state may be forgotten)"
            )
        d = self.dedupe.get(source)
        if d is None:
            if len(self.dedupe) >= self.limits.max_sources:
                return self._refuse(
                    f"new source {source!r} refused: the site already tracks "
                    f"{len(self.dedupe)} sources (site.limits.max_sources; a source silent "
                    f"for {self.limits.source_expiry_s:g} s is forgotten)"
                )
            d = self.dedupe[source] = SeqWindow(-1, t_us)
        if d.hold_jump(msg.seq):
            return self._refuse(
                f"seq {msg.seq} of source {source!r} jumps more than 2^32 above its highest "
                f"({d.hwm}): held until the source's next message confirms it"
            )
        seen = d.accept(msg.seq, self.limits.dedupe_window)
        if not seen:
            if seen is None:
                return self._refuse(
                    f"seq {msg.seq} of source {source!r} is older than its last "
                    f"{self.limits.dedupe_window} accepted seqs (newest {d.hwm}): it cannot "
                    f"be told from a duplicate"
                )
            self.n_duplicates += 1
            return "duplicate"
        if t_us > d.last_us:
            d.last_us = t_us
        key = ""
        mj = 0
        status = "ok"
        if kind == "container":
            key = "c:" + msg.container
        elif kind == "node":
            key = "n:" + msg.node
        elif kind == "solar":
            key = "s:" + source
        if key:
            booked, why = self.guard.check(key, msg.seq, t_us, j_to_mj(msg.energy_j), floor)
            if self.guard.renumbered:
                self._renumbered()
            if booked is None:
                return self._refuse(why or "")
            mj = booked
            if why is not None:
                self.reason, status = why, "reset"
        k = t_us // self.tick_us
        nc = self.next_close
        late = False
        if nc is None:
            nc = k
        elif k < nc:
            k, t_us, late = nc, nc * self.tick_us, True
        buf = self.open.get(k)
        if kind == "carbon" and buf is not None and len(buf.intensity) >= MAX_INTENSITY_SAMPLES:
            return self._refuse(
                f"tick {k} already has {MAX_INTENSITY_SAMPLES} carbon intensity samples"
            )
        self.next_close = nc
        if self.watermark_us is None or t_us > self.watermark_us:
            self.watermark_us = t_us
        if buf is None:
            buf = self.open[k] = _Buf()
        buf.samples += 1
        self.n_samples += 1
        if late:
            buf.late += 1
            self.n_late += 1
            if status == "ok":
                status = "late"
        self._placed = k  # the tick the sample was booked into (offer_batch's entries)
        if kind == "container":
            self._counter(buf, key, msg.seq, mj, msg.app)
            # the configured placement decides the node (the caller refuses a message
            # naming another); the telemetry's node only without one
            if msg.node is not None and self.limits.placement is None:
                self.container_nodes[msg.container] = msg.node
        elif kind == "node":
            self._counter(buf, key, msg.seq, mj, msg.node)
        elif kind == "solar":
            self._counter(buf, key, msg.seq, mj, "")
            if buf.solar_w is None or t_us >= buf.solar_w[0]:
                buf.solar_w = (t_us, msg.power_w)
        elif kind == "carbon":
            buf.intensity.append((t_us, msg.intensity_g_per_kwh))
            buf.seen.add("carbon:" + source)
        elif kind == "battery":
            if buf.battery is None or t_us >= buf.battery[0]:
                buf.battery = (t_us, msg.stored_wh, msg.capacity_wh)
            buf.seen.add("battery:" + source)
        elif kind == "app_metrics":
            # extra (bounded by the contract) carries the app's own metrics, e.g. its
            # latency_p95_ms or stragglers, which policies read
            buf.metrics[msg.app] = msg.model_dump(
                mode="json",
                include={"latency_ms", "progress", "functional_units_total", "extra"},
            )
        elif kind != "node_batch":  # a batch's entries: ``offer_batch``
            return "ignored"
        return status

    def offer_batch(
        self, batch: Any, t_us: int, entries: list[BatchEntry]
    ) -> tuple[str, list[tuple[int, str]]]:
        """Take a node batch (a ``NodeBatch``, either version) as one event. The batch goes through
        ``offer`` like any sample — its one source + seq deduped once, the source limits,
        its event time's tick, the late rule and the watermark — then each entry (already
        bounded by the batch's parse) is checked by the counter guard under the batch's
        seq and time and lands in the tick ``offer`` chose, as a ``ContainerTelemetry``'s
        counter would. Returns the batch's status ("ok", "late", or "duplicate" /
        "refused" with ``reason``) and (index, reason) of every entry refused (a fault)
        or taken as a counter reset. Samples count entries: a batch whose entries are
        all refused counts none (it still opened its tick and moved the watermark)."""
        status = self.offer(batch, t_us)
        if status not in ("ok", "late"):
            return status, []
        buf = self.open[self._placed]
        seq, node = batch.seq, batch.node
        check = self.guard.check
        floor = self.floor_us()
        # the batch's node only without a configured placement (as ``offer``)
        nodes = self.container_nodes if self.limits.placement is None else None
        reports: list[tuple[int, str]] = []
        taken = 0
        for i, container, app, mj in entries:
            key = "c:" + container
            booked, why = check(key, seq, t_us, mj, floor)
            if why is not None:
                reports.append((i, why))
            if booked is None:
                self.n_refused += 1
                continue
            self._counter(buf, key, seq, booked, app)
            if nodes is not None:
                nodes[container] = node
            taken += 1
        if self.guard.renumbered:
            self._renumbered()
        more = taken - 1  # ``offer`` counted the batch as one sample: count its entries
        buf.samples += more
        self.n_samples += more
        if status == "late":
            buf.late += more
            self.n_late += more
        return status, reports

    def _counter(self, buf: _Buf, key: str, seq: int, mj: int, owner: str) -> None:
        cur = buf.counters.get(key)
        if cur is None or seq > cur[0]:
            buf.counters[key] = (seq, mj, owner)
        if key not in self.counters:
            # no baseline yet: the earliest sample of this tick is the baseline
            first = buf.firsts.get(key)
            if first is None or seq < first[0]:
                buf.firsts[key] = (seq, mj)

    # --- closing -------------------------------------------------------------------------
    def closable_until(self, now_us: int) -> int:
        """Ticks strictly below this index may close at driving time ``now_us``."""
        return (now_us - self.grace_us) // self.tick_us

    def next_deadline_us(self) -> int | None:
        """The driving time at which the oldest open tick may close (its end + grace),
        the inverse of ``closable_until``; None before any sample opened a tick."""
        if self.next_close is None:
            return None
        return (self.next_close + 1) * self.tick_us + self.grace_us

    def advance(self, now_us: int) -> list[ClosedTick]:
        """Close every open tick whose end + grace <= ``now_us`` (oldest first)."""
        out: list[ClosedTick] = []
        if self.next_close is None:
            return out
        limit = (now_us - self.grace_us) // self.tick_us  # ticks < limit may close
        while self.next_close < limit:
            nc = self.next_close
            if nc not in self.open:
                # A run of empty ticks longer than max_gap_ticks (a restarted trace, or
                # one sample far ahead of or behind the others): skip it rather than
                # closing a day (or decades) of nothing one by one. Checked for every
                # run, so ticks holding data on either side of the gap still close.
                nxt = min((k for k in self.open if k > nc), default=limit)
                if min(nxt, limit) - nc > self.max_gap_ticks:
                    nc = nxt if nxt < limit else limit - 1
            out.append(self._close(nc))
            self.next_close = nc + 1
        return out

    def _close(self, k: int) -> ClosedTick:
        buf = self.open.pop(k, None) or _Buf()
        tick_us = self.tick_us
        t0 = k * tick_us
        demand: dict[str, dict[str, int]] = {}
        node_mj: dict[str, int] = {}
        solar_mj = 0
        counters = self.counters
        # the owner's demand dict of the previous counter: a batch's counters come owner
        # by owner, so most lookups are skipped (insertion order is unchanged)
        app_owner: str | None = None
        app_d: dict[str, int] = {}
        for key, (seq, mj, owner) in buf.counters.items():
            base = counters.get(key)
            if base is None and key in self.dormant:
                # silent for a while: books from where it was (the catch-up, exact)
                base = counters[key] = self.dormant.pop(key)
                self._fading.discard(key)
            # booked values never go back (a reset moves the offset: intake.CounterGuard);
            # an out-of-order lower one books nothing and leaves the baseline where it is
            if base is None:
                # first sight: energy since its earliest sample (before it is unknown)
                _, f_mj = buf.firsts.get(key, (seq, mj))
                delta = max(0, mj - f_mj)
                counters[key] = _Counter(seq, max(mj, f_mj), owner, k)
            elif seq > base.seq:
                b_mj = base.mj  # (max(0, mj - b_mj) and max(mj, b_mj) without two calls)
                if mj > b_mj:
                    delta = mj - b_mj
                    base.mj = mj
                else:
                    delta = 0
                base.seq, base.owner, base.last_k = seq, owner, k
            else:
                delta = 0  # an older sample than the baseline (late, out of order)
                base.last_k = k
            tag = key[0]
            if tag == "c":
                if owner != app_owner:
                    app_owner = owner
                    app_d = demand.setdefault(owner, {})
                app_d[key[2:]] = delta  # each container's key once in a tick's buffer
            elif tag == "n":
                node_mj[owner] = node_mj.get(owner, 0) + delta
            else:
                solar_mj += delta
        # sources silent in this tick: carried (no new energy), estimated, or forgotten
        site_est: list[str] = []
        app_est: dict[str, list[str]] = {}
        timeout = self.source_timeout_ticks
        # every key of the tick's buffer is a counter now (above): equal sizes mean no
        # counter is silent, and the pass over every counter of the site is skipped
        silent = [] if len(counters) == len(buf.counters) else list(counters)
        for key in silent:
            if key in buf.counters:
                continue
            base = counters[key]
            if k - base.last_k > timeout:
                # no longer estimated; its baseline (and the guard's last sample) kept,
                # so a replayed or late old sample cannot become a new baseline
                del counters[key]
                self.dormant[key] = base
                if not self._kept(key):
                    self._fading.add(key)
                continue
            tag = key[0]
            if tag == "c":
                app_est.setdefault(base.owner, []).append(key[2:])
                app_d = demand.setdefault(base.owner, {})
                app_d.setdefault(key[2:], 0)
            else:
                site_est.append(key)
        # intensity: time-weighted mean over [t0, t0 + tick)
        samples = sorted(buf.intensity)
        intensity: float | None
        carried = self.intensity
        if samples:
            cur_t, cur_v = t0, carried[1] if carried is not None else samples[0][1]
            acc = 0.0
            for t, v in samples:
                t = max(t, t0)
                acc += cur_v * (t - cur_t)
                cur_t, cur_v = t, v
            acc += cur_v * (t0 + tick_us - cur_t)
            intensity = acc / tick_us
            self.intensity = samples[-1]
            for key in buf.seen:
                if key.startswith("carbon:"):
                    self.signals[key] = k
        else:
            intensity = carried[1] if carried is not None else None
        if buf.battery is not None:
            self.battery = buf.battery
        if buf.solar_w is not None:
            self.solar_w = buf.solar_w
        for key in buf.seen:
            self.signals[key] = k
        for key, last in list(self.signals.items()):
            if key in buf.seen:
                continue
            if k - last > timeout:
                del self.signals[key]
            else:
                site_est.append(key)
        # sources silent for source_expiry_s of event time are forgotten (bounded state)
        horizon = t0 + tick_us - self.expiry_us  # the floor once this tick is closed
        for src in [s for s, d in self.dedupe.items() if d.last_us < horizon]:
            del self.dedupe[src]
        if self._fading:
            self._drop_fading(horizon)
        n_est = len(site_est) + sum(len(v) for v in app_est.values())
        self.n_estimated += n_est
        prev, self.solar_prev_mj = self.solar_prev_mj, solar_mj
        return ClosedTick(
            k=k,
            t_start_us=t0,
            tick_us=tick_us,
            demand_mj=demand,
            node_mj=node_mj,
            solar_mj=solar_mj,
            solar_prev_mj=prev,
            solar_w=self.solar_w[1] if self.solar_w else None,
            intensity_g_per_kwh=intensity,
            battery_stored_wh=self.battery[1] if self.battery else None,
            battery_capacity_wh=self.battery[2] if self.battery else None,
            estimated_sources=tuple(sorted(site_est)),
            app_estimated_sources={a: tuple(sorted(v)) for a, v in app_est.items()},
            metrics=buf.metrics,
            samples=buf.samples,
            late=buf.late,
            container_nodes=(
                dict(self.container_nodes)
                if self.limits.placement is None
                else self.limits.placement  # read-only, not copied
            ),
        )

    def _drop_fading(self, horizon: int) -> None:
        """Forget dormant counters the configuration does not keep once every sample
        they took is older than ``horizon`` (the floor after this close): any sample of
        theirs still to come is refused as older than the floor, or newer than all they
        booked, so nothing can be booked twice (bounded state for unconfigured ones)."""
        latest = self.guard.latest
        for key in list(self._fading):
            last = latest.get(key)
            if last is None or last.t_us < horizon:
                self._fading.discard(key)
                del self.dormant[key]
                self.guard.forget(key, horizon)
                if key[0] == "c":
                    self.container_nodes.pop(key[2:], None)

    # --- persistence ---------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        """JSON-able state, including the open ticks' aggregates."""
        return {
            "tick_us": self.tick_us,
            "grace_us": self.grace_us,
            "next_close": self.next_close,
            "watermark_us": self.watermark_us,
            "open": {
                str(k): {
                    "counters": {key: list(v) for key, v in b.counters.items()},
                    "intensity": [list(x) for x in b.intensity],
                    "battery": list(b.battery) if b.battery else None,
                    "solar_w": list(b.solar_w) if b.solar_w else None,
                    "metrics": b.metrics,
                    "seen": sorted(b.seen),
                    "firsts": {key: list(v) for key, v in b.firsts.items()},
                    "samples": b.samples,
                    "late": b.late,
                }
                for k, b in self.open.items()
            },
            "dedupe": {s: d.dump() for s, d in self.dedupe.items()},
            "latest": self.guard.dump(),
            "counters": {k: [c.seq, c.mj, c.owner, c.last_k] for k, c in self.counters.items()},
            "dormant": {k: [c.seq, c.mj, c.owner, c.last_k] for k, c in self.dormant.items()},
            "container_nodes": self.container_nodes,
            "intensity": list(self.intensity) if self.intensity else None,
            "battery": list(self.battery) if self.battery else None,
            "solar_w": list(self.solar_w) if self.solar_w else None,
            "solar_prev_mj": self.solar_prev_mj,
            "signals": self.signals,
            "stats": [
                self.n_samples,
                self.n_duplicates,
                self.n_late,
                self.n_estimated,
                self.n_refused,
                self.guard.n_faults,
                self.guard.n_resets,
            ],  # fmt: skip
        }

    @classmethod
    def restore(cls, snap: dict[str, Any], **kwargs: Any) -> TickClock:
        clock = cls(snap["tick_us"] / US_PER_S, snap["grace_us"] / US_PER_S, **kwargs)
        clock.next_close = snap["next_close"]
        clock.watermark_us = snap["watermark_us"]
        for k, b in snap["open"].items():
            clock.open[int(k)] = _Buf(
                counters={key: (v[0], v[1], v[2]) for key, v in b["counters"].items()},
                intensity=[(t, v) for t, v in b["intensity"]],
                battery=tuple(b["battery"]) if b["battery"] else None,  # type: ignore[arg-type]
                solar_w=tuple(b["solar_w"]) if b["solar_w"] else None,  # type: ignore[arg-type]
                metrics=b["metrics"],
                seen=set(b["seen"]),
                firsts={key: (v[0], v[1]) for key, v in b["firsts"].items()},
                samples=b["samples"],
                late=b["late"],
            )
        window, wm = clock.limits.dedupe_window, clock.watermark_us or 0
        clock.dedupe = {s: SeqWindow.load(v, window, wm) for s, v in snap["dedupe"].items()}
        clock.guard.load(snap.get("latest", {}))
        clock.counters = {k: _Counter(*v) for k, v in snap["counters"].items()}
        clock.dormant = {k: _Counter(*v) for k, v in snap.get("dormant", {}).items()}
        clock._fading = {k for k in clock.dormant if not clock._kept(k)}
        if clock.limits.placement is None:  # else the placement decides (never stored)
            clock.container_nodes = dict(snap["container_nodes"])
        clock.intensity = tuple(snap["intensity"]) if snap["intensity"] else None  # type: ignore[assignment]
        clock.battery = tuple(snap["battery"]) if snap["battery"] else None  # type: ignore[assignment]
        clock.solar_w = tuple(snap["solar_w"]) if snap["solar_w"] else None  # type: ignore[assignment]
        clock.solar_prev_mj = snap["solar_prev_mj"]
        clock.signals = dict(snap["signals"])
        stats = [*snap["stats"], 0, 0, 0][:7]
        (clock.n_samples, clock.n_duplicates, clock.n_late, clock.n_estimated,
         clock.n_refused, clock.guard.n_faults, clock.guard.n_resets) = stats  # fmt: skip
        return clock


__all__ = ["ClockLimits", "ClosedTick", "TickClock", "to_us"]
