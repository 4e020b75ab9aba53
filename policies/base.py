"""What every policy shares: the observation a decision sees, the actions it may take,
pure helpers (trailing carbon percentile, battery full/empty latch, worker-count
actuation, de-duplication of repeated commands) and the runner that connects a pure
policy to the application API through ``ecovisor.client`` only.

A policy is a class with ``setup(info) -> actions`` (once, at start) and
``decide(obs) -> actions`` (every tick). Both are pure: no I/O, no clock; everything they
know comes from their arguments, so scripted tick sequences and replayed traces drive them
exactly as the live ``tick`` notifications do. See docs/write-a-policy.md.
"""

from __future__ import annotations

import argparse
import bisect
import logging
import math
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime
from typing import Any, ClassVar, Protocol

from ecovisor.client import parse_tick_data
from ecovisor.contract.notifications import Notification, TickData

log = logging.getLogger("ecovisor.policy")

# ---------------------------------------------------------------------------------------
# Observation and actions
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AppView:
    """Static facts about the app (from GET /v1/apps/{app})."""

    app: str
    containers: tuple[str, ...]
    templates: tuple[str, ...] = ()
    tick_s: float = 1.0
    battery_full_wh: float = 0.0
    battery_empty_wh: float = 0.0

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> AppView:
        return cls(
            app=info["app"],
            containers=tuple(info.get("containers", ())),
            templates=tuple(info.get("templates", ())),
            tick_s=float(info.get("tick_s", 1.0)),
            battery_full_wh=float(info.get("battery_full_wh", 0.0)),
            battery_empty_wh=float(info.get("battery_empty_wh", 0.0)),
        )


Points = tuple[tuple[datetime, float], ...]


@dataclass(frozen=True)
class Forecasts:
    carbon: Points = ()
    solar: Points = ()


@dataclass(frozen=True)
class Observation:
    """What a policy sees at a tick: the tick's TickData plus derived facts."""

    time: datetime
    data: TickData
    tick: int | None = None
    events: frozenset[str] = frozenset()  # notification types since the previous tick
    battery_full: bool = False
    battery_empty: bool = False
    latency_ms: float | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    # the site's newest published forecasts (policies with needs_forecasts):
    # (time, gCO2eq/kWh) and (time, W of the whole array) points, in time order; empty
    # when the source publishes none (docs/api.md#forecasts)
    carbon_forecast: Points = ()
    solar_forecast: Points = ()


# Actions: one per command of the contract, with the command's name (the wire ``type``,
# the client method and the CLI subcommand are that name) and its fields, in its order.


@dataclass(frozen=True)
class SetContainerPowercap:
    type: ClassVar[str] = "set_container_powercap"
    container: str
    watts: float | None


@dataclass(frozen=True)
class SetBatteryChargeRate:
    type: ClassVar[str] = "set_battery_charge_rate"
    watts: float


@dataclass(frozen=True)
class SetBatteryMaxDischarge:
    type: ClassVar[str] = "set_battery_max_discharge"
    watts: float


@dataclass(frozen=True)
class SetCarbonRate:
    type: ClassVar[str] = "set_carbon_rate"
    container: str
    mg_per_s: float | None
    window_s: float = 60.0


@dataclass(frozen=True)
class SetCarbonBudget:
    type: ClassVar[str] = "set_carbon_budget"
    grams: float | None
    period_s: float


@dataclass(frozen=True)
class SuspendContainer:
    type: ClassVar[str] = "suspend_container"
    container: str


@dataclass(frozen=True)
class ResumeContainer:
    type: ClassVar[str] = "resume_container"
    container: str


@dataclass(frozen=True)
class ScaleContainer:
    type: ClassVar[str] = "scale_container"
    container: str
    cpus: float


@dataclass(frozen=True)
class ScaleApp:
    type: ClassVar[str] = "scale_app"
    template: str
    replicas: int


@dataclass(frozen=True)
class SendCommand:
    """Any command of the contract by its one name with its own fields, e.g.
    ``SendCommand("set_carbon_budget", (("grams", 2.0), ("period_s", 600.0)))``: a
    command type added to the contract is usable before it gets a named action above."""

    type: str
    fields: tuple[tuple[str, Any], ...] = ()


Action = (
    SendCommand
    | SetContainerPowercap
    | SetBatteryChargeRate
    | SetBatteryMaxDischarge
    | SetCarbonRate
    | SetCarbonBudget
    | SuspendContainer
    | ResumeContainer
    | ScaleContainer
    | ScaleApp
)


class Policy(Protocol):
    """A pure policy. It may also declare what it reads besides the tick, as attributes
    (absent = False): ``needs_metrics`` (the app's metrics from the API each tick) and
    ``needs_forecasts`` (the site's forecasts each tick); ``reads(policy)`` owns the
    rule for the live runner and the replay engines alike."""

    name: str

    def setup(self, app: AppView) -> list[Action]: ...

    def decide(self, obs: Observation) -> list[Action]: ...


def reads(policy: Any) -> tuple[bool, bool]:
    """(needs_metrics, needs_forecasts) of a policy: what its runner fetches each tick
    (two HTTP reads a tick when both, so only the policies that use them)."""
    return (bool(getattr(policy, "needs_metrics", False)),
            bool(getattr(policy, "needs_forecasts", False)))  # fmt: skip


# ---------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------


class TrailingPercentile:
    """Percentile of the values seen in a trailing time window (paper §5.1.1: 30th
    percentile of carbon intensity over 48 h). Sorted insert, O(n) per tick at worst,
    which is a few µs at 48 h of 1-minute ticks."""

    def __init__(self, window_s: float, percentile: float) -> None:
        if not 0 <= percentile <= 100:
            raise ValueError("percentile must be in [0, 100]")
        self.window_s, self.percentile = window_s, percentile
        self._order: deque[tuple[datetime, float]] = deque()
        self._sorted: list[float] = []

    def add(self, t: datetime, value: float) -> None:
        self._order.append((t, value))
        bisect.insort(self._sorted, value)
        while self._order and (t - self._order[0][0]).total_seconds() > self.window_s:
            _, old = self._order.popleft()
            del self._sorted[bisect.bisect_left(self._sorted, old)]

    def __len__(self) -> int:
        return len(self._sorted)

    def value(self) -> float:
        """Linear interpolation between closest ranks (as numpy's default)."""
        s = self._sorted
        if not s:
            raise ValueError("no values yet")
        pos = (len(s) - 1) * self.percentile / 100
        lo = math.floor(pos)
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class BatteryFlags:
    """Battery full/empty from the level against the app's full/empty levels, latched by
    the ecovisor's battery_full/battery_empty notifications until the level moves away."""

    def __init__(self, full_wh: float = 0.0, empty_wh: float = 0.0, eps_wh: float = 1e-3):
        self.full_wh, self.empty_wh, self.eps = full_wh, empty_wh, eps_wh
        self._full_at: float | None = None
        self._empty_at: float | None = None

    def update(self, level_wh: float, events: Iterable[str]) -> tuple[bool, bool]:
        ev = set(events)
        if "battery_full" in ev:
            self._full_at = level_wh
        elif self._full_at is not None and level_wh < self._full_at - self.eps:
            self._full_at = None
        if "battery_empty" in ev:
            self._empty_at = level_wh
        elif self._empty_at is not None and level_wh > self._empty_at + self.eps:
            self._empty_at = None
        full = self._full_at is not None or (
            self.full_wh > 0 and level_wh >= self.full_wh - self.eps
        )
        empty = self._empty_at is not None or level_wh <= self.empty_wh + self.eps
        return full, empty


def carbon_mg_per_s(grid_w: float, intensity_g_per_kwh: float) -> float:
    """Carbon rate of a grid power: W × gCO2eq/kWh / 3600 = mg/s."""
    return grid_w * intensity_g_per_kwh / 3600


def grid_w_for_rate(rate_mg_per_s: float, intensity_g_per_kwh: float) -> float:
    """Grid power that emits ``rate`` mg/s at an intensity (inf at zero intensity)."""
    if intensity_g_per_kwh <= 0:
        return math.inf
    return rate_mg_per_s * 3600 / intensity_g_per_kwh


def set_workers(app: AppView, n: int, template: str | None, running: set[str]) -> list[Action]:
    """Run ``n`` workers: replicas of ``template`` when given (horizontal scaling), else
    the first n configured containers resumed and the rest suspended. ``running`` is
    the set of containers not suspended (observed)."""
    if template:
        return [ScaleApp(template, max(0, n))]
    out: list[Action] = []
    for i, c in enumerate(app.containers):
        if i < n and c not in running:
            out.append(ResumeContainer(c))
        elif i >= n and c in running:
            out.append(SuspendContainer(c))
    return out


def running_containers(app: AppView, data: TickData) -> set[str]:
    """Configured containers not suspended in the tick (unknown ones count as running)."""
    out = set()
    for c in app.containers:
        cd = data.containers.get(c)
        if cd is None or not cd.suspended:
            out.add(c)
    return out


class Deduper:
    """Drops commands that would not change anything: same value as the last one sent
    for the same target (until that one is rejected or failed), or, for caps and
    suspend/resume, already what the tick shows in force."""

    def __init__(self, pending_ticks: int = 5) -> None:
        self.pending_ticks = pending_ticks
        self._sent: dict[tuple[str, str], tuple[Action, int]] = {}
        self._by_command: dict[str, tuple[str, str]] = {}
        self._n = 0

    @staticmethod
    def key(a: Action) -> tuple[str, str]:
        if isinstance(a, SuspendContainer | ResumeContainer):
            return ("run", a.container)
        target = getattr(a, "container", None) or getattr(a, "template", None) or ""
        return (type(a).__name__, target)

    @staticmethod
    def _in_force(a: Action, data: TickData | None) -> bool:
        if data is None:
            return False
        c = data.containers.get(getattr(a, "container", ""), None)
        if c is None:
            return False
        if isinstance(a, SuspendContainer):
            return c.suspended
        if isinstance(a, ResumeContainer):
            return not c.suspended
        if isinstance(a, SetContainerPowercap):
            if a.watts is None or c.powercap_w is None:
                return a.watts is None and c.powercap_w is None
            return abs(a.watts - c.powercap_w) < 1e-6
        return False

    def filter(self, actions: Sequence[Action], data: TickData | None) -> list[Action]:
        self._n += 1
        out = []
        for a in actions:
            k = self.key(a)
            last = self._sent.get(k)
            if isinstance(a, SuspendContainer | ResumeContainer | SetContainerPowercap):
                if self._in_force(a, data):
                    self._sent[k] = (a, self._n)
                    continue
                if last and last[0] == a and self._n - last[1] < self.pending_ticks:
                    continue  # sent recently, not yet in force: give it time
            elif last and last[0] == a:
                continue
            self._sent[k] = (a, self._n)
            out.append(a)
        return out

    def sent(self, a: Action, command_id: str) -> None:
        self._by_command[command_id] = self.key(a)

    def forget(self, a: Action) -> None:
        self._sent.pop(self.key(a), None)

    def failed(self, command_id: str) -> None:
        """A command was rejected or failed: allow sending the same value again."""
        k = self._by_command.pop(command_id, None)
        if k is not None:
            self._sent.pop(k, None)


# ---------------------------------------------------------------------------------------
# Runner: pure policy <-> ecovisor.client
# ---------------------------------------------------------------------------------------


def apply_action(client: Any, a: Action) -> Any:
    """Issue one action through the client (the paper's function names)."""
    if isinstance(a, SendCommand):
        return client.command(a.type, **dict(a.fields))
    # the client method has the action's name and takes its fields in order (the
    # paper's signatures: set_carbon_rate(container, rate, window_s), ...)
    method = getattr(client, a.type, None) if is_dataclass(a) else None
    if method is not None:
        return method(*(getattr(a, f.name) for f in fields(a)))
    raise TypeError(f"unknown action {a!r}")


# The notifications besides ``tick`` a runner is given (``main`` subscribes to them; the
# replay engine, replay/engine.py, delivers the same ones).
SUBSCRIBED_EVENTS = (
    "command_rejected",
    "command_failed",
    "battery_full",
    "battery_empty",
    "solar_change",
    "carbon_change",
    "carbon_rate_near",
    "carbon_rate_exceeded",
    "carbon_budget_near",
    "carbon_budget_exceeded",
)


class PolicyRunner:
    """Feeds ``tick`` notifications to a pure policy and issues its actions.

    It hands each tick to the policy once: the ledger's output is at-least-once with
    identical duplicates (a restarted worker emits the ticks after its snapshot again;
    docs/ledger.md), and a policy's state (spent carbon, trailing percentiles) must not
    count a tick twice. The runner owns this rather than the client because every path
    to a policy goes through it (the live stream, and the replay engines, which call
    ``on_tick`` with the ledger's notifications directly)."""

    def __init__(
        self,
        policy: Policy,
        client: Any,
        app: AppView,
        metrics: Callable[[], dict[str, float]] | None = None,
        forecasts: Callable[[], Forecasts] | None = None,
    ) -> None:
        self.policy, self.client, self.app, self.metrics = policy, client, app, metrics
        self.forecasts = forecasts
        self.flags = BatteryFlags(app.battery_full_wh, app.battery_empty_wh)
        self.dedupe = Deduper()
        self._events: set[str] = set()
        self.issued: list[Action] = []
        # last tick index handed to the policy, per (site, app)
        self._last_tick: dict[tuple[str, str], tuple[int, datetime]] = {}

    def start(self) -> None:
        self._issue(self.policy.setup(self.app), None)

    def on_notification(self, n: Notification) -> None:
        if n.type in ("command_rejected", "command_failed") and n.command_id:
            log.warning("command %s %s: %s", n.command_id, n.type, n.reason)
            self.dedupe.failed(n.command_id)
        elif n.type != "tick":
            self._events.add(n.type)

    def on_tick(self, n: Notification) -> list[Action]:
        """Decide on one tick and issue the actions; a tick at or before the last one
        handled (a duplicate, or older) is dropped: []."""
        key = (n.site, n.app)
        last = self._last_tick.get(key)
        if n.tick is not None and last is not None:
            last_k, last_time = last
            # a duplicate (or an older tick) is not later by index nor by time; by index
            # alone, a tick_s changed under a running policy (the epoch-based index goes
            # back while time goes on) would drop every later tick
            if n.tick <= last_k and n.time <= last_time:
                log.debug("tick %d of %s dropped: tick %d (at %s) was handled already",
                          n.tick, n.app, last_k, last_time)  # fmt: skip
                return []
            if n.tick < last_k:
                log.warning("tick index of %s went back from %d to %d at a later time "
                            "(tick_s changed?): deciding on it", n.app, last_k, n.tick)  # fmt: skip
            elif n.tick > last_k + 1:
                log.warning("ticks %d..%d of %s never arrived: deciding on tick %d",
                            last_k + 1, n.tick - 1, n.app, n.tick)  # fmt: skip
        # lenient as the client (fields a newer ledger adds are ignored), so a tick the
        # client delivered is one the runner can read
        data = parse_tick_data(n.data)
        if n.tick is not None:  # handled from here on: decide() may change the policy
            self._last_tick[key] = (n.tick, n.time)
        full, empty = self.flags.update(data.battery_charge_level_wh, self._events)
        metrics = self.metrics() if self.metrics else {}
        fc = self.forecasts() if self.forecasts else Forecasts()
        obs = Observation(
            time=n.time,
            data=data,
            tick=n.tick,
            events=frozenset(self._events),
            battery_full=full,
            battery_empty=empty,
            latency_ms=metrics.get("latency_ms"),
            metrics=metrics,
            carbon_forecast=fc.carbon,
            solar_forecast=fc.solar,
        )
        self._events.clear()
        return self._issue(self.policy.decide(obs), data)

    def _issue(self, actions: list[Action], data: TickData | None) -> list[Action]:
        out = self.dedupe.filter(actions, data)
        for a in out:
            try:
                res = apply_action(self.client, a)
            except Exception as e:  # noqa: BLE001 - one bad command must not stop the policy
                log.warning("%s failed: %s", a, e)
                self.dedupe.forget(a)
                continue
            cid = getattr(res, "command_id", None)
            if cid:
                self.dedupe.sent(a, cid)
            self.issued.append(a)
            log.info("%s -> %s", a, cid)
        return out


_ADVISORY_LOGGED: set[tuple[str, str]] = set()


def _advisory_failed(what: str, e: Exception) -> None:
    """An advisory read failed: the policy goes on without it, and says so once per kind
    of failure (a silent {} would hide a broken read for the whole run)."""
    key = (what, type(e).__name__)
    if key not in _ADVISORY_LOGGED and len(_ADVISORY_LOGGED) < 100:
        _ADVISORY_LOGGED.add(key)
        log.warning("%s not read (the policy goes on without it): %r", what, e)


def api_metrics(client: Any) -> Callable[[], dict[str, float]]:
    """App metrics (latency_ms, ...) from the API's live state (the ledger's latest
    app_metrics telemetry); empty when there are none."""

    def get() -> dict[str, float]:
        try:
            m = client.get_state().get("app_metrics") or {}
        except Exception as e:  # noqa: BLE001 - metrics are advisory; the policy copes with none
            _advisory_failed("app metrics (GET state)", e)
            return {}
        return {k: float(v) for k, v in m.items() if isinstance(v, int | float)}

    return get


def forecast_points(answer: Any) -> Points:
    """The ``points`` of a forecast route's answer as (time, value), in time order;
    malformed points are left out (a forecast is advisory)."""
    out = []
    for p in (answer or {}).get("points") or ():
        try:
            at, v = datetime.fromisoformat(p["time"]), float(p["value"])
        except (KeyError, TypeError, ValueError):
            continue
        if at.tzinfo is not None and math.isfinite(v):
            out.append((at, v))
    return tuple(sorted(out))


def api_forecasts(client: Any) -> Callable[[], Forecasts]:
    """The site's carbon and solar forecasts from the API, read each tick; none when a
    read fails (the policy copes with no forecast, as with no metrics)."""

    def one(read: Callable[[], Any]) -> Points:
        try:
            return forecast_points(read())
        except Exception as e:  # noqa: BLE001 - advisory
            _advisory_failed("forecast", e)
            return ()

    def get() -> Forecasts:
        return Forecasts(one(client.get_carbon_forecast), one(client.get_solar_forecast))

    return get


def common_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--app", required=True, help="application id")
    p.add_argument("--api", help="API base URL (default from --config, $ECOVISOR_API_URL)")
    p.add_argument("--token", help="the app's token (default from --config, $ECOVISOR_TOKEN)")
    p.add_argument("--config", help="site configuration (gives API URL and the app's token)")
    p.add_argument("--log-level", default="INFO")


def connect(a: argparse.Namespace) -> tuple[str, str]:
    """API URL and token from --api/--token, the environment, or --config."""
    url = a.api or os.environ.get("ECOVISOR_API_URL")
    token = a.token or os.environ.get("ECOVISOR_TOKEN")
    if (not url or not token) and (a.config or os.environ.get("ECOVISOR_CONFIG")):
        from ecovisor.contract.config_file import ConfigError, config_path, load_config

        try:
            cfg = load_config(config_path(a.config))
            app = cfg.app(a.app)
        except ConfigError as e:
            raise SystemExit(_err(str(e).replace("\n", " "))) from None
        except KeyError:
            raise SystemExit(_err(f"no app {a.app!r} in the configuration")) from None
        url = url or f"http://127.0.0.1:{cfg.stack.api_port}"
        token = token or app.token
    if not url or not token:
        raise SystemExit(_err("give --api and --token, or --config FILE"))
    return url, token


def _err(msg: str) -> int:
    print(f"policy: {msg}", file=sys.stderr)
    return 2


def main(
    name: str,
    build: Callable[[argparse.Namespace], Policy],
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
    argv: list[str] | None = None,
) -> None:
    """``python -m policies.<name> --app X ...``: connect, set up, run until SIGTERM."""
    from ecovisor.client import EcovisorClient, EcovisorError

    p = argparse.ArgumentParser(prog=f"python -m policies.{name}")
    common_args(p)
    if add_args:
        add_args(p)
    a = p.parse_args(argv)
    logging.basicConfig(
        level=a.log_level.upper(), format=f"%(asctime)s {name}[{a.app}] %(message)s"
    )
    url, token = connect(a)
    try:
        policy = build(a)
    except ValueError as e:
        raise SystemExit(_err(str(e))) from None
    client = EcovisorClient(url, token, app=a.app)
    try:
        view = AppView.from_info(client.get_app_info())
    except EcovisorError as e:
        raise SystemExit(_err(f"API refused: {e}")) from None
    except Exception as e:  # noqa: BLE001 - connection errors: one clear line
        raise SystemExit(_err(f"API not reachable at {url}: {e}")) from None
    metrics, forecasts = reads(policy)
    runner = PolicyRunner(
        policy,
        client,
        view,
        api_metrics(client) if metrics else None,
        api_forecasts(client) if forecasts else None,
    )

    @client.on_tick
    def _tick(t: Any) -> None:
        runner.on_tick(t.notification)

    for typ in SUBSCRIBED_EVENTS:
        client.on(typ)(runner.on_notification)

    signal.signal(signal.SIGTERM, lambda *_: client.stop())
    try:
        runner.start()
    except ValueError as e:
        raise SystemExit(_err(str(e))) from None
    log.info("running %s for app %s against %s", name, a.app, url)
    try:
        client.run()
    except KeyboardInterrupt:
        pass
    except EcovisorError as e:
        raise SystemExit(_err(f"API refused: {e}")) from None
    finally:
        client.close()
