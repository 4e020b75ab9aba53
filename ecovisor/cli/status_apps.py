"""The ledger and apps part of ``ecovisor status``: whether the ledger serves the site
(``ledger_readiness``), then every app of the site with its latest tick, read
from the ledger worker's state views (``/ecovisor/state/{app}``, docs/ledger.md) with the
site's internal key, as the API reads them (``ecovisor.api.state_source``), and drawn as
a rich table. The key and the apps' tokens are never printed."""

from __future__ import annotations

import asyncio
import io
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ecovisor.api.state_source import HttpStateSource, LiveState, StateUnavailable
from ecovisor.api.state_source import ledger_readiness as read_readiness
from ecovisor.contract.config import EcovisorConfig

VIEWS_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class AppRow:
    """One app's row: its live state, or why there is none."""

    app: str
    state: LiveState | None = None
    error: str | None = None


def ledger_readiness(cfg: EcovisorConfig, base_url: str | None = None,
                     timeout: float = VIEWS_TIMEOUT_S) -> str:  # fmt: skip
    """One line: whether the ledger worker serves the site yet (its ``GET /ready``:
    ``ecovisor.api.state_source.ledger_readiness``), else why not."""
    r = read_readiness(base_url or f"http://127.0.0.1:{cfg.stack.ledger_web_port}", timeout)
    if not r.answered:
        return f"ledger: {r.reason}"
    if not r.ready:
        return f"ledger: NOT ready: {r.reason}"
    if not r.sites:
        return "ledger: ready, but it owns no site (another worker of its group does)"
    return f"ledger: ready ({r.sites} site{'' if r.sites == 1 else 's'})"


def views_key(cfg: EcovisorConfig, state_dir: Path) -> str | None:
    """The key the stack's services use for the views (read only: ``status`` never
    makes one): ``ecovisor.embedded.plan.existing_stack_key``."""
    from ecovisor.embedded.plan import existing_stack_key

    return existing_stack_key(cfg, state_dir)


def fetch(
    cfg: EcovisorConfig, key: str | None, base_url: str | None = None,
    timeout: float = VIEWS_TIMEOUT_S,
) -> list[AppRow]:  # fmt: skip
    """Every configured app's live state from the ledger's views (one row each)."""
    url = base_url or f"http://127.0.0.1:{cfg.stack.ledger_web_port}"

    async def one(src: HttpStateSource, app: str) -> AppRow:
        try:
            return AppRow(app, state=await src.state(app))
        except StateUnavailable as e:
            return AppRow(app, error=str(e))
        except Exception as e:  # an unreadable answer must not break `status`
            return AppRow(app, error=f"unreadable view: {type(e).__name__}: {e}"[:200])

    async def every() -> list[AppRow]:
        src = HttpStateSource(url, timeout=timeout, key=key)
        try:
            return list(await asyncio.gather(*(one(src, a.id) for a in cfg.apps)))
        finally:
            await src.aclose()

    return asyncio.run(every())


def _n(v: float | None, digits: int = 3) -> str:
    return "-" if v is None else f"{v:.{digits}f}".rstrip("0").rstrip(".") or "0"


def _cum_carbon(view: dict[str, Any]) -> float | None:
    cum = view.get("cumulative")
    v = cum.get("carbon_g") if isinstance(cum, dict) else None
    return float(v) if isinstance(v, int | float) else None


COLUMNS = (
    "app", "tick end UTC", "power W", "grid W", "solar W", "batt W", "batt Wh", "CO2 g tick",
    "CO2 g total", "containers",
)  # fmt: skip


def apps_table(rows: list[AppRow]) -> Table:
    t = Table(title="apps (latest tick)", title_justify="left")
    for c in COLUMNS:
        t.add_column(c, justify="left" if c in ("app", "tick end UTC", "containers") else "right")
    for r in rows:
        s = r.state
        d = s.data if s else None
        if s is None or d is None:
            why = r.error or "no tick has closed yet"
            t.add_row(escape(r.app), f"[dim]{escape(why)}[/dim]", *["-"] * (len(COLUMNS) - 2))
            continue
        when = s.time.astimezone(UTC).strftime("%H:%M:%S") if s.time else "-"
        suspended = sum(1 for c in d.containers.values() if c.suspended)
        containers = str(len(d.containers)) + (f" ({suspended} suspended)" if suspended else "")
        est = " (est.)" if d.estimated else ""
        t.add_row(
            escape(r.app), when + est, _n(d.app_power_w), _n(d.grid_w), _n(d.solar_w),
            _n(d.battery_discharge_rate_w), _n(d.battery_charge_level_wh),
            _n(d.carbon_g, 6), _n(_cum_carbon(s.view), 6), containers,
        )  # fmt: skip
    return t


def render(rows: list[AppRow], width: int = 120) -> str:
    """The table as plain text (no colours), ``width`` columns wide."""
    buf = io.StringIO()
    Console(file=buf, width=width, no_color=True, highlight=False).print(apps_table(rows))
    return "".join(ln.rstrip() + "\n" for ln in buf.getvalue().splitlines())


def unanswered(rows: list[AppRow]) -> str | None:
    """One line when no app's view answered (the views are down or refuse the key)."""
    if rows and all(r.state is None for r in rows):
        return f"apps: the ledger's state views did not answer ({rows[0].error})"
    return None
