"""The ledger's Prometheus metrics (``GET /metrics`` on its Faust web server), named and
labelled like Kepler's (``*_joules_total`` counters by container, source and app).

* ``LedgerCollector``: a custom collector that reads the sites' ``SiteLedger``s at scrape
  time. Energy and carbon counters are the ledger's cumulative totals themselves (the
  integer mJ / µg of ``AppState.cumulative`` and ``SiteState.cumulative``, converted to
  J / g once, here), so they are exact, nothing grows per tick, and they survive a
  restart (the cumulative state is restored from the snapshot). Gauges: the last closed
  tick's intensity, the site's solar power, each app's virtual battery level and the
  settings in force.
* ``LedgerHealth``: the worker's own health, counted by this process (a restart resets
  them, as any process counter): tick-close latency (deadline → closed), ticks closed,
  dead letters by origin and reason class, command outcomes by type and outcome. The
  Faust wiring hands it every batch of outputs it sends (``outputs``) and the ticks it
  closes (``closed``).

``exposition(registry)`` renders a registry as the text format; ``add_metrics_page``
mounts it. Every metric: docs/metrics.md.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ecovisor.contract import topics
from ecovisor.core.account_lines import AccountLine
from ecovisor.core.settings import max_discharge_setting_w
from streams.ledger_out import Out
from streams.ledger_worker import CounterRow, SiteLedger

CONTENT_TYPE = "text/plain; version=0.0.4"
SOURCES = ("grid", "solar", "battery", "unserved")
MJ_PER_J = 1000
UG_PER_G = 1_000_000
# tick-close latency buckets, s: a tick closes grace_s after its end, checked every Δt/10
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# dead-letter reason classes: the first keyword found in the reason (lower case) names
# the class; none found: "other"
REASON_CLASSES: tuple[tuple[str, str], ...] = (
    ("internal error", "internal_error"),
    ("kafka refused", "kafka_refused"),
    ("larger than", "too_large"),
    ("signature", "bad_signature"),
    ("duplicate", "duplicate"),
    ("too old", "too_old"),
    ("clock", "clock"),
    ("ahead", "future"),
    ("before 1970", "out_of_range_time"),
    ("reset", "counter_reset"),
    ("fault", "counter_fault"),
    ("not in the site configuration", "unknown_entity"),
    ("does not own", "not_owner"),
    ("no app owns", "unknown_entity"),
    ("sources", "too_many_sources"),
    ("outside", "out_of_bounds"),
    ("token", "bad_token"),
)
_ORIGINS = {
    topics.TELEMETRY: "telemetry",
    topics.COMMANDS: "commands",
    topics.ACTUATOR_ACKS: "acks",
}


def reason_class(reason: str) -> str:
    """A dead letter's reason as a small, fixed set of label values (the reason itself
    is free text: one label value per reason would grow without bound)."""
    low = reason.lower()
    for word, cls in REASON_CLASSES:
        if word in low:
            return cls
    return "invalid" if ":" in low else "other"  # pydantic's "loc: msg" and the rest


def j(mj: int) -> float:
    """Integer mJ as J: one division of the exact integer."""
    return mj / MJ_PER_J


def g(ug: int) -> float:
    """Integer µg as g: one division of the exact integer."""
    return ug / UG_PER_G


class LedgerCollector(Collector):
    """Reads ``ledgers()`` (the sites' ledgers this worker holds now) at each scrape; the
    families of several sites are merged by name (the text format allows one HELP/TYPE
    per metric), each sample carrying its ``site`` label."""

    def __init__(self, ledgers: Callable[[], Iterable[SiteLedger]]) -> None:
        self.ledgers = ledgers

    def describe(self) -> Iterable[Metric]:
        return []  # families vary with the state: collected only at scrape time

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for led in self.ledgers():
            for fam in ledger_families(led):
                have = merged.get(fam.name)
                if have is None:
                    merged[fam.name] = fam
                else:
                    have.samples.extend(fam.samples)
        yield from merged.values()


def _sources(fam: CounterMetricFamily, labels: list[str], line: AccountLine) -> None:
    for src, mj in zip(
        SOURCES, (line.grid_mj, line.solar_mj, line.battery_mj, line.unserved_mj), strict=True
    ):
        fam.add_metric([*labels, src], j(mj))


def ledger_families(led: SiteLedger) -> list[Metric]:
    """Every state metric of the site, read from ``led`` now."""
    site = led.cfg.site.id
    state = led.state
    c_j = CounterMetricFamily(
        "ecovisor_container_joules",
        "Energy booked to a container since its app's state was created, by source, J",
        labels=["site", "app", "container", "source"],
    )
    c_g = CounterMetricFamily(
        "ecovisor_container_carbon_grams",
        "Carbon booked to a container (its grid energy at each tick's intensity), gCO2eq",
        labels=["site", "app", "container"],
    )
    a_j = CounterMetricFamily(
        "ecovisor_app_joules",
        "Energy booked to an app (its containers and its battery charging), by source, J",
        labels=["site", "app", "source"],
    )
    a_g = CounterMetricFamily(
        "ecovisor_app_carbon_grams",
        "Carbon booked to an app (containers and battery charging), gCO2eq",
        labels=["site", "app"],
    )
    a_flow = CounterMetricFamily(
        "ecovisor_app_flow_joules",
        "An app's energy flows (solar_to_load, battery_to_load, grid_to_battery, unserved, "
        "solar_excess_curtailed, battery_loss, ...), J",
        labels=["site", "app", "flow"],
    )
    a_demand = CounterMetricFamily(
        "ecovisor_app_demand_joules", "Energy its containers demanded, J", labels=["site", "app"]
    )
    a_ticks = CounterMetricFamily(
        "ecovisor_app_ticks",
        "Ticks accounted for the app (kind: closed, estimated, unserved)",
        labels=["site", "app", "kind"],
    )
    a_batt = GaugeMetricFamily(
        "ecovisor_app_battery_joules",
        "Energy stored in the app's virtual battery now, J",
        labels=["site", "app"],
    )
    a_rc = GaugeMetricFamily(
        "ecovisor_app_battery_charge_rate_watts",
        "Battery charge rate setting in force (0: solar-only charging), W",
        labels=["site", "app"],
    )
    a_rd = GaugeMetricFamily(
        "ecovisor_app_battery_max_discharge_watts",
        "Battery max discharge in force (the setting, else the share's limit), W",
        labels=["site", "app"],
    )
    a_budget = GaugeMetricFamily(
        "ecovisor_app_carbon_budget_grams",
        "Carbon budget in force (only apps that set one), gCO2eq",
        labels=["site", "app"],
    )
    a_used = GaugeMetricFamily(
        "ecovisor_app_carbon_budget_used_grams",
        "Carbon used in the current budget period (only apps with a budget), gCO2eq",
        labels=["site", "app"],
    )
    a_tick = GaugeMetricFamily(
        "ecovisor_app_last_tick", "Index of the app's last accounted tick", labels=["site", "app"]
    )
    c_cap = GaugeMetricFamily(
        "ecovisor_container_powercap_watts",
        "Power cap in force (only capped containers), W",
        labels=["site", "app", "container"],
    )
    c_rate = GaugeMetricFamily(
        "ecovisor_container_carbon_rate_limit_grams_per_second",
        "Carbon rate limit in force (only limited containers), gCO2eq/s",
        labels=["site", "app", "container"],
    )
    for app, st in state.apps.items():
        cum = st.cumulative
        for c, line in cum.containers.items():
            _sources(c_j, [site, app, c], line)
            c_g.add_metric([site, app, c], g(line.carbon_ug))
        _sources(a_j, [site, app], cum.total)
        a_g.add_metric([site, app], g(cum.total.carbon_ug))
        for flow, mj in cum.flows.__dict__.items():
            a_flow.add_metric([site, app, flow], j(mj))
        a_demand.add_metric([site, app], j(cum.demand_mj))
        a_ticks.add_metric([site, app, "closed"], cum.ticks)
        a_ticks.add_metric([site, app, "estimated"], cum.estimated_ticks)
        a_ticks.add_metric([site, app, "unserved"], cum.unserved_ticks)
        a_batt.add_metric([site, app], j(st.battery_mj))
        s = st.settings
        a_rc.add_metric([site, app], s.charge_rate_w)
        share = led.shares.get(app)
        if share is not None:
            a_rd.add_metric([site, app], max_discharge_setting_w(share, s))
        if s.carbon_budget is not None:
            a_budget.add_metric([site, app], s.carbon_budget.budget_g)
            used = st.tracking.budget.used_ug if st.tracking.budget else 0
            a_used.add_metric([site, app], g(used))
        if st.next_k is not None:
            a_tick.add_metric([site, app], st.next_k - 1)
        for c, w in s.container_caps_w.items():
            c_cap.add_metric([site, app, c], w)
        for c, r in s.carbon_rates.items():
            c_rate.add_metric([site, app, c], r.rate_mg_per_s / 1000)
    tot = state.cumulative
    s_j = CounterMetricFamily(
        "ecovisor_site_joules",
        "Site-wide energy since the start by kind (solar, grid, unserved, solar_curtailed, "
        "battery_loss, platform, load, ...: the site totals of docs/core.md), J",
        labels=["site", "kind"],
    )
    for name, mj in tot.__dict__.items():
        if name.endswith("_mj"):
            s_j.add_metric([site, name.removesuffix("_mj")], j(mj))
    s_g = CounterMetricFamily(
        "ecovisor_site_carbon_grams", "Site-wide carbon since the start, gCO2eq", labels=["site"]
    )
    s_g.add_metric([site], g(tot.carbon_ug))
    p = state.platform
    p_j = CounterMetricFamily(
        "ecovisor_platform_joules",
        "Idle energy attributed to no app (the platform account), by source, J",
        labels=["site", "source"],
    )
    for src, mj in (("grid", p.grid_mj), ("solar", p.solar_mj), ("unserved", p.unserved_mj)):
        p_j.add_metric([site, src], j(mj))
    p_g = CounterMetricFamily(
        "ecovisor_platform_carbon_grams", "Carbon of the platform account, gCO2eq",
        labels=["site"],
    )  # fmt: skip
    p_g.add_metric([site], g(p.carbon_ug))
    intensity = GaugeMetricFamily(
        "ecovisor_grid_carbon_intensity_grams_per_kwh",
        "Grid carbon intensity charged in the last closed tick (time-weighted mean), gCO2eq/kWh",
        labels=["site"],
    )
    last = max(led.last.values(), key=lambda v: v.get("tick") or 0, default=None)
    if last is not None and last.get("tick_data"):
        intensity.add_metric([site], float(last["tick_data"]["grid_carbon_g_per_kwh"]))
    solar = GaugeMetricFamily(
        "ecovisor_site_solar_watts", "Site solar power, last reading, W", labels=["site"]
    )
    if led.clock.solar_w is not None:
        solar.add_metric([site], float(led.clock.solar_w[1]))
    clock = led.clock
    samples = CounterMetricFamily(
        "ecovisor_ledger_samples",
        "Telemetry samples the tick clock took (kind: accepted, duplicate, late) and "
        "sources carried at a close (estimated)",
        labels=["site", "kind"],
    )
    for kind, n in (("accepted", clock.n_samples), ("duplicate", clock.n_duplicates),
                    ("late", clock.n_late), ("estimated", clock.n_estimated)):  # fmt: skip
        samples.add_metric([site, kind], n)
    return [c_j, c_g, a_j, a_g, a_flow, a_demand, a_ticks, a_batt, a_rc, a_rd, a_budget,
            a_used, a_tick, c_cap, c_rate, s_j, s_g, p_j, p_g, intensity, solar,
            samples]  # fmt: skip


class LedgerHealth:
    """The worker's own health metrics of one site, in ``registry`` (``shared``: the
    families another site's ``LedgerHealth`` already registered there)."""

    def __init__(self, site: str, registry: CollectorRegistry, grace_s: float,
                 shared: LedgerHealth | None = None) -> None:  # fmt: skip
        self.site = site
        self.grace_s = grace_s
        if shared is not None:
            self.latency_family, self.ticks_family = shared.latency_family, shared.ticks_family
            self.dead, self.outcomes = shared.dead, shared.outcomes
        else:
            self.latency_family = Histogram(
                "ecovisor_ledger_tick_close_latency_seconds",
                "Wall time from a tick's close deadline (its end + grace) to its closing "
                "(real-time clock only)",
                ["site"],
                registry=registry,
                buckets=LATENCY_BUCKETS,
            )
            self.ticks_family = Counter(
                "ecovisor_ledger_ticks_closed",
                "Ticks this worker process closed",
                ["site"],
                registry=registry,
            )
            self.dead = Counter(
                "ecovisor_ledger_dead_letters",
                "Dead letters this worker process wrote, by origin topic and reason class",
                ["site", "origin", "reason"],
                registry=registry,
            )
            self.outcomes = Counter(
                "ecovisor_ledger_command_outcomes",
                "Command lifecycle notifications sent (outcome: accepted, rejected, applied, "
                "failed), by command type",
                ["site", "command_type", "outcome"],
                registry=registry,
            )
        self.latency = self.latency_family.labels(site)
        self.ticks = self.ticks_family.labels(site)
        # command id -> type, to label applied/failed (an ack does not carry the type)
        self.types: dict[str, str] = {}

    def closed(self, rows: list[CounterRow], now_s: float, tick_s: float, realtime: bool) -> None:
        """Ticks just closed (their counter rows), at wall time ``now_s``."""
        ks = {k for _, k, _ in rows}
        self.ticks.inc(len(ks))
        if realtime:
            for k in ks:
                self.latency.observe(max(0.0, now_s - ((k + 1) * tick_s + self.grace_s)))

    def outputs(self, outs: list[Out]) -> None:
        """Count the dead letters and command lifecycle notifications among ``outs``."""
        for o in outs:
            if o.topic == topics.DEADLETTER:
                self._dead_letter(o.value)
            elif b'"type":"command_' in o.value and o.topic.startswith(topics.NOTIFICATIONS_PREFIX):
                self._outcome(o.value)

    def _dead_letter(self, raw: bytes) -> None:
        try:
            d = json.loads(raw)
        except ValueError:
            return
        origin = _ORIGINS.get(d.get("origin", ""), "other")
        self.dead.labels(self.site, origin, reason_class(str(d.get("reason", "")))).inc()

    def _outcome(self, raw: bytes) -> None:
        try:
            n: dict[str, Any] = json.loads(raw)
        except ValueError:
            return
        kind = str(n.get("type", ""))
        if not kind.startswith("command_"):
            return  # the marker was inside another notification's data
        outcome = kind.removeprefix("command_")
        cid = str(n.get("command_id") or "")
        typ = (n.get("data") or {}).get("command_type")
        if typ:
            if outcome == "accepted":
                self.types[cid] = typ
                while len(self.types) > 4096:
                    del self.types[next(iter(self.types))]
        else:
            typ = self.types.pop(cid, "unknown") if outcome in ("applied", "failed") else "unknown"
        self.outcomes.labels(self.site, str(typ), outcome).inc()


def ledger_registry(ledger: Callable[[], SiteLedger | None], site: str,
                    grace_s: float) -> tuple[CollectorRegistry, LedgerHealth]:  # fmt: skip
    """A registry with the state collector and the health metrics of one site."""
    reg, health = sites_registry(lambda: [led for led in (ledger(),) if led is not None],
                                 {site: grace_s})  # fmt: skip
    return reg, health[site]


def sites_registry(
    ledgers: Callable[[], Iterable[SiteLedger]], sites: dict[str, float]
) -> tuple[CollectorRegistry, dict[str, LedgerHealth]]:
    """A registry for a worker of one or several sites (``sites``: site -> grace_s): the
    state of every site it holds now and each site's health metrics."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(LedgerCollector(ledgers))
    health: dict[str, LedgerHealth] = {}
    first: LedgerHealth | None = None
    for site, grace in sites.items():
        health[site] = LedgerHealth(site, reg, grace, shared=first)
        first = first or health[site]
    return reg, health


def exposition(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format."""
    return generate_latest(registry)


def add_metrics_page(app: Any, registry: CollectorRegistry, key: str | None) -> None:
    """Mount ``GET /metrics`` on the Faust app; with the site's internal ``key``, the
    scraper must send it as bearer token (the metrics name every app's energy)."""
    from faust.web import Request, View

    from streams.ledger_views import authorized

    @app.page("/metrics", name="ecovisor-metrics")
    async def metrics(view: View, request: Request) -> Any:
        if not authorized(request.headers.get("Authorization"), key):
            return view.json({"error": "missing or wrong internal key (Authorization: Bearer)"},
                             status=401)  # fmt: skip
        return view.bytes(exposition(registry), content_type=CONTENT_TYPE)
