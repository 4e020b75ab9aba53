"""Python client of the Ecovisor application API, with the paper's function names
(Table 1 and Table 2) and tick/notification callbacks registered with decorators.

    from ecovisor.client import EcovisorClient

    eco = EcovisorClient("http://127.0.0.1:18080", token="...")

    @eco.on_tick
    def tick(t):                      # every Δt, t.data is a notifications.TickData
        if t.data.grid_carbon_g_per_kwh > 300:
            eco.set_container_powercap("web-1", 2.0)

    eco.run()

Units: W, Wh, J, gCO2eq/kWh, g, mg/s, s. Getters return numbers (``None`` where the API
says so, e.g. no power cap). Setters return a ``CommandResult``; with ``wait=True`` they
wait for the lifecycle outcome and raise ``CommandRejected`` when it was rejected or failed.
See docs/api.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

import httpx
from httpx_sse import connect_sse
from pydantic import BaseModel, ValidationError

from ecovisor.contract.notifications import (
    ContainerTickData,
    Notification,
    TickData,
    parse_notification,
)

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("ecovisor.client")


class EcovisorError(Exception):
    """An API call failed; ``status`` is the HTTP status, ``reason`` the server's reason."""

    def __init__(self, status: int, reason: str, method: str = "", path: str = "") -> None:
        self.status, self.reason, self.method, self.path = status, reason, method, path
        where = f" ({method} {path})" if method else ""
        super().__init__(f"{status}: {reason}{where}")


class AuthenticationError(EcovisorError):
    """401: no token or an invalid token."""


class ForbiddenError(EcovisorError):
    """403: the token's app may not address this app, container or template."""


class NotFoundError(EcovisorError):
    """404: no such container or template in this app."""


class UnavailableError(EcovisorError):
    """503: live state or command bus not available (ledger not up, no tick yet)."""


class InvalidNotification(ValueError):
    """A notification this client cannot read (not JSON, an unknown type, a ``tick``
    whose data lacks a field): ``run()`` logs it and skips it."""


class CommandRejected(EcovisorError):
    """A command waited for was rejected (validation) or failed (actuator)."""

    def __init__(self, result: CommandResult) -> None:
        self.result = result
        super().__init__(409, f"command {result.status}: {result.reason}", "", result.type)


_ERRORS: dict[int, type[EcovisorError]] = {
    401: AuthenticationError,
    403: ForbiddenError,
    404: NotFoundError,
    503: UnavailableError,
}


@dataclass(frozen=True)
class CommandResult:
    command_id: str
    type: str
    status: str  # published | accepted | rejected | applied | failed
    timed_out: bool = False
    reason: str | None = None
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.status not in ("rejected", "failed")


@dataclass(frozen=True)
class Tick:
    """What an ``on_tick`` callback receives."""

    index: int | None
    time: datetime
    data: TickData
    notification: Notification


# Field names a newer server sent that this client does not know, logged once each.
_UNKNOWN_LOGGED: set[str] = set()


def _known(model: type[BaseModel], raw: dict[str, Any], where: str) -> dict[str, Any]:
    """``raw`` without the keys ``model`` does not declare. The contract's models forbid
    unknown fields (the ledger and API must not emit typos), but a client must keep
    working when a newer server adds one, so the client alone drops them."""
    extra = raw.keys() - model.model_fields.keys()
    if not extra:
        return raw
    new = {f"{where}.{k}" for k in extra} - _UNKNOWN_LOGGED
    if new and len(_UNKNOWN_LOGGED) < 100:
        _UNKNOWN_LOGGED.update(new)
        log.info("ignoring field(s) this client does not know: %s", ", ".join(sorted(new)))
    return {k: v for k, v in raw.items() if k not in extra}


def parse_tick_data(data: dict[str, Any]) -> TickData:
    """The ``TickData`` of a ``tick`` notification, ignoring fields this version does not
    know (top level and per container); a missing or invalid field still raises
    ``pydantic.ValidationError``."""
    try:  # the usual case, once per tick of every policy: no copy of the dicts
        return TickData.model_validate(data)
    except ValidationError as e:
        if not any(err["type"] == "extra_forbidden" for err in e.errors()):
            raise
    d = _known(TickData, data, "tick")
    cs = d.get("containers")
    if isinstance(cs, dict):
        d = d | {
            "containers": {
                c: _known(ContainerTickData, v, "tick.containers.*") if isinstance(v, dict) else v
                for c, v in cs.items()
            }
        }
    return TickData.model_validate(d)


def _parse_lenient(raw: str) -> Notification:
    """A notification's JSON, ignoring envelope fields this version does not know (an
    unknown ``type`` or a missing field still raises ``InvalidNotification``)."""
    try:
        return parse_notification(raw)
    except ValidationError as e:
        if not any(err["type"] == "extra_forbidden" for err in e.errors()):
            raise InvalidNotification(_reason(e)) from None
        try:
            d = json.loads(raw)
            return Notification.model_validate(_known(Notification, d, "notification"))
        except ValidationError as e2:
            raise InvalidNotification(_reason(e2)) from None


def _reason(e: ValidationError) -> str:
    """A ValidationError on one line: ``loc: message`` per error."""
    return "; ".join(
        f"{'.'.join(map(str, err['loc'])) or '(root)'}: {err['msg']}" for err in e.errors()
    )


def _iso(t: datetime | str) -> str:
    if isinstance(t, str):
        return t
    if t.tzinfo is None:
        raise ValueError("t1/t2 must be timezone-aware datetimes")
    return t.isoformat()


class EcovisorClient:
    """One application's handle on its virtual energy system."""

    def __init__(
        self,
        api_url: str,
        token: str,
        app: str | None = None,
        *,
        wait: bool = False,
        wait_timeout: float = 5.0,
        timeout: float = 10.0,
        http: httpx.Client | None = None,
        ping_s: float = 1.0,
        last_event_id: str | None = None,
        stream_read_timeout: float | None = None,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        # the id of the last notification handled: sent as Last-Event-ID on (re)connect,
        # so the stream resumes after it (at-least-once across drops and API restarts)
        self.last_event_id = last_event_id
        self._pending_id: str | None = None
        self.wait, self.wait_timeout, self.ping_s = wait, wait_timeout, ping_s
        # The server sends a keep-alive every ping_s: a stream silent for a few of them
        # is dead (e.g. the API host vanished without closing the connection), so the
        # read times out and run() reconnects instead of blocking for good.
        self.stream_read_timeout = (
            max(5.0, 3 * ping_s) if stream_read_timeout is None else stream_read_timeout
        )
        self._http = http or httpx.Client(base_url=self.api_url, timeout=timeout)
        self._http.headers["Authorization"] = f"Bearer {token}"
        self._app = app
        self._tick_handlers: list[Callable[[Tick], Any]] = []
        self._handlers: dict[str, list[Callable[[Notification], Any]]] = {}
        self._stop = threading.Event()
        self._response: httpx.Response | None = None
        self._failed_logged: set[tuple[str, str]] = set()
        self._connected = True  # (False from a lost stream until the next connect)

    # --- plumbing ------------------------------------------------------------------
    @property
    def app(self) -> str:
        """The application id (asked from the server once when not given)."""
        if self._app is None:
            self._app = str(self._request("GET", "/v1/whoami")["app"])
        return self._app

    def _p(self, suffix: str = "") -> str:
        return f"/v1/apps/{self.app}{suffix}"

    @staticmethod
    def _raise(r: httpx.Response) -> None:
        if r.status_code < 400:
            return
        try:
            detail = r.json().get("detail", r.text)
        except (ValueError, AttributeError):
            detail = r.text
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        cls = _ERRORS.get(r.status_code, EcovisorError)
        raise cls(r.status_code, detail, r.request.method, r.request.url.path)

    def _request(self, method: str, path: str, **kw: Any) -> Any:
        r = self._http.request(method, path, **kw)
        self._raise(r)
        return r.json()

    def _value(self, suffix: str, **params: Any) -> Any:
        return self._request("GET", self._p(suffix), params=params or None)["value"]

    def command(self, type: str, *, wait: bool | None = None, **fields: Any) -> CommandResult:
        """Send any command of the contract by its one name (its wire ``type``) with its
        own fields (docs/contract.md); every setter below is this. Raises
        CommandRejected when the outcome is rejected or failed."""
        w = self.wait if wait is None else wait
        params = {"wait": "true", "timeout": self.wait_timeout} if w else None
        body = {"type": type, **fields}
        raw = self._request("POST", self._p("/commands"), json=body, params=params)
        res = CommandResult(**raw)
        if not res.ok:
            raise CommandRejected(res)
        return res

    def close(self) -> None:
        self.stop()
        self._http.close()

    def __enter__(self) -> EcovisorClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- Table 1: getters ----------------------------------------------------------
    def get_solar_power(self) -> float:
        """Virtual solar power of the latest tick, W."""
        return float(self._value("/solar_power"))

    def get_grid_power(self) -> float:
        """Virtual grid power of the latest tick, W."""
        return float(self._value("/grid_power"))

    def get_grid_carbon(self) -> float:
        """Grid carbon intensity, gCO2eq/kWh."""
        return float(self._value("/grid_carbon"))

    def get_battery_discharge_rate(self) -> float:
        """Actual virtual battery discharge rate of the latest tick, W."""
        return float(self._value("/battery/discharge_rate"))

    def get_battery_charge_level(self) -> float:
        """Energy stored in the virtual battery, Wh."""
        return float(self._value("/battery/charge_level"))

    def get_container_powercap(self, container: str) -> float | None:
        """A container's power cap in force, W (None: no cap)."""
        v = self._value(f"/containers/{container}/powercap")
        return None if v is None else float(v)

    def get_container_power(self, container: str) -> float:
        """A container's power over the latest tick, W."""
        return float(self._value(f"/containers/{container}/power"))

    # --- Table 1: setters ----------------------------------------------------------
    def set_container_powercap(
        self, container: str, watts: float | None, *, wait: bool | None = None
    ) -> CommandResult:
        """Cap a container's power, W; ``None`` removes the cap."""
        return self.command("set_container_powercap", container=container, watts=watts, wait=wait)

    def set_battery_charge_rate(self, watts: float, *, wait: bool | None = None) -> CommandResult:
        """Charge the virtual battery at this rate until full, W (0: solar only)."""
        return self.command("set_battery_charge_rate", watts=watts, wait=wait)

    def set_battery_max_discharge(self, watts: float, *, wait: bool | None = None) -> CommandResult:
        """Maximum virtual battery discharge rate, W."""
        return self.command("set_battery_max_discharge", watts=watts, wait=wait)

    # --- Table 2: library functions ------------------------------------------------
    def get_container_energy(self, container: str, t1: datetime, t2: datetime) -> float:
        """A container's energy between tick boundaries t1 and t2, J."""
        return float(self._value(f"/containers/{container}/energy", t1=_iso(t1), t2=_iso(t2)))

    def get_container_carbon(self, container: str, t1: datetime, t2: datetime) -> float:
        """A container's carbon between tick boundaries t1 and t2, g CO2eq."""
        return float(self._value(f"/containers/{container}/carbon", t1=_iso(t1), t2=_iso(t2)))

    def get_app_power(self) -> float:
        """The app's power over the latest tick, W."""
        return float(self._value("/power"))

    def get_app_energy(self, t1: datetime, t2: datetime) -> float:
        """The app's energy between tick boundaries t1 and t2, J."""
        return float(self._value("/energy", t1=_iso(t1), t2=_iso(t2)))

    def get_app_carbon(self, t1: datetime, t2: datetime) -> float:
        """The app's carbon between tick boundaries t1 and t2, g CO2eq."""
        return float(self._value("/carbon", t1=_iso(t1), t2=_iso(t2)))

    def set_carbon_rate(
        self,
        container: str,
        rate: float | None,
        window_s: float = 60.0,
        *,
        wait: bool | None = None,
    ) -> CommandResult:
        """A container's carbon rate, mg/s over ``window_s`` (tracked and notified)."""
        return self.command("set_carbon_rate", container=container, mg_per_s=rate,
                            window_s=window_s, wait=wait)

    def set_carbon_budget(
        self, budget: float | None, period_s: float = 3600.0, *, wait: bool | None = None
    ) -> CommandResult:
        """The app's carbon budget, g per ``period_s`` (tracked and notified)."""
        return self.command("set_carbon_budget", grams=budget, period_s=period_s, wait=wait)

    # --- containers ----------------------------------------------------------------
    def suspend_container(self, container: str, *, wait: bool | None = None) -> CommandResult:
        return self.command("suspend_container", container=container, wait=wait)

    def resume_container(self, container: str, *, wait: bool | None = None) -> CommandResult:
        return self.command("resume_container", container=container, wait=wait)

    def scale_container(
        self, container: str, cpus: float, *, wait: bool | None = None
    ) -> CommandResult:
        """Vertical scaling: the container's CPU allowance in cores."""
        return self.command("scale_container", container=container, cpus=cpus, wait=wait)

    def scale_app(self, template: str, replicas: int, *, wait: bool | None = None) -> CommandResult:
        """Horizontal scaling: run this many replicas of a container template."""
        return self.command("scale_app", template=template, replicas=replicas, wait=wait)

    # --- more ----------------------------------------------------------------------
    def get_app_info(self) -> dict[str, Any]:
        """Containers, templates, shares, battery full/empty levels (Wh)."""
        return dict(self._request("GET", self._p()))

    def get_state(self) -> dict[str, Any]:
        """The full live state (latest TickData under ``data``, app metrics)."""
        return dict(self._request("GET", self._p("/state")))

    def get_app_sci(
        self, t1: datetime, t2: datetime, functional_units: float = 1.0
    ) -> dict[str, Any]:
        """The app's Software Carbon Intensity (E·I + M) / R between tick boundaries t1
        and t2, R = ``functional_units``: ``sci_g_per_unit`` (g CO2eq per unit) with its
        terms ``operational_g`` (E·I), ``embodied_g`` (M) and ``interval_s``."""
        params = {"t1": _iso(t1), "t2": _iso(t2), "functional_units": functional_units}
        return dict(self._request("GET", self._p("/sci"), params=params))

    def get_carbon_forecast(self) -> dict[str, Any]:
        """The site's carbon-intensity forecast as its carbon source last published it:
        ``points`` [{time, value gCO2eq/kWh}] (empty: the source publishes none),
        ``published_at``, ``source``, ``signal``."""
        return dict(self._request("GET", self._p("/carbon_forecast")))

    def get_solar_forecast(self) -> dict[str, Any]:
        """The site array's power forecast as its solar source last published it:
        ``points`` [{time, value W}] (empty: the source publishes none), ``published_at``,
        ``source``. The app's part is its solar share of it (``get_app_info``)."""
        return dict(self._request("GET", self._p("/solar_forecast")))

    def get_ledger(self, t1: datetime, t2: datetime) -> list[dict[str, Any]]:
        return list(
            self._request("GET", self._p("/ledger"), params={"from": _iso(t1), "to": _iso(t2)})
        )

    # --- notifications -------------------------------------------------------------
    def on_tick(self, fn: F) -> F:
        """Register ``fn(tick: Tick)``, called every Δt (the paper's tick())."""
        self._tick_handlers.append(fn)
        return fn

    def on(self, *types: str) -> Callable[[F], F]:
        """Register ``fn(n: Notification)`` for notification types, e.g.
        ``@eco.on("carbon_change", "battery_full")``."""

        def deco(fn: F) -> F:
            for t in types:
                self._handlers.setdefault(t, []).append(fn)
            return fn

        return deco

    def notifications(self, types: list[str] | None = None) -> Iterator[Notification]:
        """The app's notifications as they arrive (one SSE connection), starting after
        ``last_event_id`` when it is set. The id advances once the consumer asks for the
        next notification, i.e. after it handled this one: a drop re-delivers, never skips."""
        params: dict[str, Any] = {"ping_s": self.ping_s}
        if types:
            params["types"] = ",".join(types)
        headers = {"Last-Event-ID": self.last_event_id} if self.last_event_id else {}
        with connect_sse(
            self._http,
            "GET",
            self._p("/notifications"),
            params=params,
            headers=headers,
            timeout=httpx.Timeout(10, read=self.stream_read_timeout),
        ) as source:
            r = source.response
            if r.status_code >= 400:
                r.read()
                self._raise(r)
            self._response = r
            self._connected = True
            try:
                for sse in source.iter_sse():
                    if self._stop.is_set():
                        return
                    if sse.event == "gap":  # the server could not replay a part
                        log.warning("notification stream gap: %s", sse.data)
                    elif sse.data and sse.event not in ("ready", ""):
                        try:
                            n = _parse_lenient(sse.data)
                        except ValueError as e:  # (InvalidNotification is one)
                            # skipped for good (the id advances below): a reconnect
                            # would only bring the same bytes back
                            log.warning("notification skipped (event id %s, event %r): %s",
                                        sse.id or "-", sse.event, e)  # fmt: skip
                        else:
                            self._pending_id = sse.id or None
                            yield n
                            self._handled()
                            continue
                    if sse.id:
                        self.last_event_id = sse.id
            except (httpx.HTTPError, httpx.StreamError):
                if not self._stop.is_set():
                    raise  # stop() cuts the stream short: that is the normal end
            finally:
                self._response = None

    def _handled(self) -> None:
        """The notification last yielded was handled: resume after it from now on."""
        if self._pending_id:
            self.last_event_id = self._pending_id
        self._pending_id = None

    def _calls(self, n: Notification) -> list[tuple[Callable[[Any], Any], Any]]:
        """(handler, argument) for each handler of one notification; raises
        InvalidNotification when a tick's data cannot be read."""
        out: list[tuple[Callable[[Any], Any], Any]] = []
        if n.type == "tick" and self._tick_handlers:
            try:
                data = parse_tick_data(n.data)
            except ValidationError as e:
                raise InvalidNotification(f"tick data: {_reason(e)}") from None
            t = Tick(n.tick, n.time, data, n)
            out += [(fn, t) for fn in self._tick_handlers]
        out += [(fn, n) for fn in self._handlers.get(n.type, ())]
        return out

    def dispatch(self, n: Notification) -> None:
        """Call the registered handlers for one notification (also used by replays).
        Exceptions propagate (``run()`` logs them instead); InvalidNotification when
        a tick's data cannot be read."""
        for fn, arg in self._calls(n):
            fn(arg)

    def _dispatch_logged(self, n: Notification) -> bool:
        """``dispatch`` for ``run()``: a notification that cannot be read, or a handler
        that raises, is logged and the stream goes on. A policy process must outlive one
        bad notification or one bug in a handler: raising would end run() and, under a
        restart policy, crash-loop on the same notification. KeyboardInterrupt and
        SystemExit are not Exceptions: they still end run(). False: ``n`` was skipped."""
        eid = self._pending_id or "-"
        try:
            calls = self._calls(n)
        except InvalidNotification as e:
            log.warning("notification skipped (event id %s, %s tick %s): %s",
                        eid, n.type, n.tick, e)  # fmt: skip
            return False
        for fn, arg in calls:
            try:
                fn(arg)
            except Exception as e:  # noqa: BLE001 - see the docstring
                name = getattr(fn, "__qualname__", repr(fn))
                key = (name, type(e).__name__)
                if key in self._failed_logged:  # the traceback once per kind, then a line
                    log.error("handler %s failed on %s (event id %s): %r",
                              name, n.type, eid, e)  # fmt: skip
                else:
                    if len(self._failed_logged) < 100:
                        self._failed_logged.add(key)
                    log.exception("handler %s failed on %s (event id %s); the stream goes on",
                                  name, n.type, eid)  # fmt: skip
        return True

    def run(self, max_events: int | None = None, reconnect_s: float = 1.0) -> int:
        """Dispatch notifications to the handlers until ``stop()`` (or ``max_events``
        notifications); reconnects after a dropped or silent stream (no byte, not even
        a keep-alive, for ``stream_read_timeout`` s), resuming after ``last_event_id``.
        Returns the count handled. A notification that cannot be read is logged and
        skipped, a handler's exception logged; authentication and authorisation errors
        are raised, not retried."""
        self._stop.clear()
        handled = 0
        while not self._stop.is_set():
            try:
                for n in self.notifications():
                    handled += self._dispatch_logged(n)
                    self._handled()  # (also when the loop returns right below)
                    if self._stop.is_set() or (max_events is not None and handled >= max_events):
                        return handled
            except (AuthenticationError, ForbiddenError, NotFoundError):
                raise
            except EcovisorError as e:
                if e.status == 422 or self._stop.is_set():  # e.g. a Last-Event-ID refused
                    raise
                time.sleep(reconnect_s)
            except httpx.HTTPError as e:
                if self._stop.is_set():
                    break
                # stream dropped, silent (ReadTimeout) or API restarting: reconnect; said
                # once per outage, not once per attempt while the API is down
                lvl = logging.WARNING if self._connected else logging.DEBUG
                self._connected = False
                log.log(lvl, "notification stream lost (%r); reconnecting, resuming after %s",
                        e, self.last_event_id or "the stream's start")  # fmt: skip
                time.sleep(reconnect_s)
        return handled

    def stop(self) -> None:
        """Make ``run()`` return (safe from another thread or a handler)."""
        self._stop.set()
        r = self._response
        if r is None:
            return
        # Closing the response would not wake a read blocked in another thread (it waits
        # for the next keep-alive); shutting the socket down ends that read at once.
        try:
            r.extensions["network_stream"].get_extra_info("socket").shutdown(socket.SHUT_RDWR)
        except (KeyError, AttributeError, OSError):  # no socket (another transport)
            with contextlib.suppress(Exception):
                r.close()
