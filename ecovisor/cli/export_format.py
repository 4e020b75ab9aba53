"""Ledger export for researchers: ``ecovisor export --app A --from T1 --to T2 [--csv]``.

Given the records of ``ecovisor.ledger`` (read by ``ecovisor.cli.export``), keeps the
app's entries whose tick starts in [T1, T2), de-duplicates by (site, app, tick) (a
restarted ledger may re-send identical entries) and renders them in tick order: JSON lines
(the full ``AppLedgerEntry``) or CSV (one row per tick, columns ``CSV_COLUMNS``; J, g,
W h, gCO2eq/kWh).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from ecovisor.core.units import mj_to_j, ug_to_g

CSV_COLUMNS = [
    "site", "app", "tick", "t_start", "tick_s", "intensity_g_per_kwh", "demand_j",
    "solar_j", "battery_j", "grid_j", "grid_to_battery_j", "unserved_j", "curtailed_j",
    "carbon_g", "battery_wh", "cum_energy_j", "cum_carbon_g", "estimated",
]  # fmt: skip


def select(
    records: Iterable[bytes], app: str, t1: datetime, t2: datetime, site: str | None = None
) -> list[dict[str, Any]]:
    """The app's entries with t_start in [t1, t2), one per (site, app, tick), tick order."""
    a, b = t1.timestamp(), t2.timestamp()
    seen: dict[tuple[str, str, int], dict[str, Any]] = {}
    for raw in records:
        try:
            e = json.loads(raw)
        except ValueError:
            continue
        if not isinstance(e, dict) or e.get("app") != app:
            continue
        if site is not None and e.get("site") != site:
            continue
        if a <= e.get("t_start", -1) < b:
            seen.setdefault((e["site"], e["app"], e["k"]), e)
    return [seen[k] for k in sorted(seen, key=lambda x: (x[2], x[0]))]


def row(e: dict[str, Any]) -> list[Any]:
    f, tot, cum = e["flows"], e["total"], e["cumulative"]["total"]
    return [
        e["site"], e["app"], e["k"], e["t_start"], e["tick_s"], e["intensity_g_per_kwh"],
        mj_to_j(e["demand_mj"]), mj_to_j(tot["solar_mj"]), mj_to_j(f["battery_to_load"]),
        mj_to_j(tot["grid_mj"]), mj_to_j(f["grid_to_battery"]), mj_to_j(f["unserved"]),
        mj_to_j(f["solar_excess_curtailed"]), ug_to_g(tot["carbon_ug"]),
        e["battery"]["after_wh"], mj_to_j(cum["energy_mj"]), ug_to_g(cum["carbon_ug"]),
        int(bool(e.get("estimated"))),
    ]  # fmt: skip


def to_csv(entries: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    for e in entries:
        w.writerow(row(e))
    return buf.getvalue()


def to_jsonl(entries: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(e, separators=(",", ":")) + "\n" for e in entries)
