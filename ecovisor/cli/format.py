"""Readable one-line forms of the records on Ecovisor's topics (``ecovisor tail`` and
``ecovisor cmd --wait``), and their compact JSON form (``tail --json``). Neither ever
shows a command's token."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from ecovisor.contract import notifications, operator_messages

# The tick data a readable tick notification shows, in this order.
TICK_KEYS = (
    "app_power_w",
    "solar_w",
    "grid_w",
    "grid_carbon_g_per_kwh",
    "battery_charge_level_wh",
    "carbon_g",
    "unserved_w",
)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + " ".join(f"{k}={_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def _without_token(obj: Any) -> Any:
    """Never echo credentials: a command's token is dropped from what we print."""
    if isinstance(obj, dict):
        obj.pop("token", None)
    return obj


def format_notification(n: notifications.Notification) -> str:
    parts = [n.time.isoformat(timespec="seconds"), n.app, n.type]
    if n.tick is not None:
        parts.append(f"tick={n.tick}")
    if n.command_id:
        parts.append(f"command={n.command_id}")
    if n.reason:
        parts.append(f"reason={n.reason!r}")
    if n.type == "tick":
        parts += [f"{k}={_short(n.data[k])}" for k in TICK_KEYS if k in n.data]
    elif n.data:
        parts.append(_short(n.data))
    return " ".join(parts)


def format_ledger_entry(obj: dict[str, Any]) -> str:
    """One line per ledger entry: mean powers (W) of the tick's flows, battery, carbon.
    The entry is validated (its balances re-checked): ValueError if it does not hold."""
    from ecovisor.core.entries import AppLedgerEntry

    e = AppLedgerEntry.model_validate(obj)
    f, dt = e.flows, e.tick_s
    w = lambda mj: f"{mj / 1000 / dt:.3g}"  # noqa: E731 - mJ over the tick to W
    when = datetime.fromtimestamp(e.t_start, UTC).isoformat(timespec="seconds")
    parts = [
        when, f"{e.site}/{e.app}", f"k={e.k}", f"demand_w={w(e.demand_mj)}",
        f"solar_w={w(f.solar_to_load)}+{w(f.solar_to_battery)}b",
        f"battery_w={w(f.battery_to_load)}", f"grid_w={w(f.grid_to_load)}+{w(f.grid_to_battery)}b",
        f"unserved_w={w(f.unserved)}", f"battery_wh={e.battery.after_wh:.4g}",
        f"carbon_mg={e.total.carbon_ug / 1000:.4g}", f"I={e.intensity_g_per_kwh:.4g}",
    ]  # fmt: skip
    if e.estimated:
        parts.append("estimated")
    return " ".join(parts)


def _format_known(what: str, obj: Any) -> str | None:
    """The readable line of a record of a known kind; None for the generic form."""
    if what == "notifications":
        return format_notification(notifications.Notification.model_validate(obj))
    if what == "deadletter":
        d = operator_messages.DeadLetter.model_validate(obj)
        raw = d.raw if len(d.raw) <= 120 else d.raw[:117] + "..."
        return f"{d.time.isoformat(timespec='seconds')} {d.origin} reason={d.reason!r} raw={raw}"
    if what == "ledger":
        return format_ledger_entry(obj)
    if what == "alerts":
        a = operator_messages.Alert.model_validate(obj)
        return f"{a.time.isoformat(timespec='seconds')} {a.severity} {a.kind}: {a.message}"
    return None


def format_record(what: str, value: bytes) -> str:
    """One readable line for a record of a topic; falls back to ``key=value`` pairs, then
    to the raw text."""
    try:
        obj = json.loads(value)
    except ValueError:
        return value.decode("utf-8", "backslashreplace")
    try:
        line = _format_known(what, obj)
        if line is not None:
            return line
    except ValueError:  # not what the contract says: shown as it is, not trusted
        pass
    if isinstance(obj, dict):
        _without_token(obj)
        return " ".join(f"{k}={_short(v)}" for k, v in obj.items() if k != "schema_version")
    return json.dumps(obj)


def format_json(value: bytes) -> str:
    """One compact JSON object per record (for jq); a record that is not JSON is wrapped
    as ``{"raw": text}``."""
    try:
        obj = _without_token(json.loads(value))
    except ValueError:
        return json.dumps({"raw": value.decode("utf-8", "backslashreplace")})
    return json.dumps(obj, separators=(",", ":"))
