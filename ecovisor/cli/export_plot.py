"""``ecovisor export --plot FILE.png``: the exported ledger entries as one PNG (matplotlib,
Agg: no display needed), four panels on a shared time axis (tick start, UTC): the app's
power (W, its demand) with what it drew from solar, battery and grid and its unserved
power; its carbon of each tick (g); its carbon summed from the start of the range (g);
the grid carbon intensity (gCO2eq/kWh, one line per site). One line per (site, app)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ecovisor.core.units import mj_to_j, ug_to_g

PANELS = 4


def _series(entries: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    by: dict[str, list[dict[str, Any]]] = {}
    sites = {e["site"] for e in entries}
    for e in sorted(entries, key=lambda e: e["t_start"]):
        label = f"{e['site']}/{e['app']}" if len(sites) > 1 else e["app"]
        by.setdefault(label, []).append(e)
    return by


def _watts(es: list[dict[str, Any]], get: Any) -> list[float]:
    """Each tick's mean power (W) of the energy ``get(entry)`` (mJ)."""
    return [mj_to_j(get(e)) / e["tick_s"] for e in es]


def plot_entries(entries: list[dict[str, Any]], path: Path | str, title: str = "") -> int:
    """Write the PNG of ``entries`` (``AppLedgerEntry`` dicts, as ``export`` selects them)
    to ``path``; returns the number of panels drawn. ValueError when there are none."""
    if not entries:
        raise ValueError("no ledger entries to plot")
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 9), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(PANELS, 1, sharex=True)
    ax_p, ax_c, ax_cum, ax_i = axes
    drawn_sites: set[str] = set()
    for label, es in _series(entries).items():
        t = [datetime.fromtimestamp(e["t_start"], UTC) for e in es]

        line = ax_p.plot(
            t,
            _watts(es, lambda e: e["demand_mj"]),
            lw=1.6,
            drawstyle="steps-post",
            label=f"{label} power",
        )
        color = line[0].get_color()
        for name, get, style in (
            ("solar", lambda e: e["flows"].get("solar_to_load", 0), ":"),
            ("battery", lambda e: e["flows"].get("battery_to_load", 0), "-."),
            ("grid", lambda e: e["flows"].get("grid_to_load", 0), "--"),
            ("unserved", lambda e: e["flows"].get("unserved", 0), (0, (1, 3))),
        ):
            ax_p.plot(
                t, _watts(es, get), ls=style, lw=1, drawstyle="steps-post", color=color,
                alpha=0.7, label=f"{label} {name}" + ("" if name == "unserved" else " to load"),
            )  # fmt: skip
        carbon = [ug_to_g(e["total"]["carbon_ug"]) for e in es]
        ax_c.step(t, carbon, where="post", color=color, label=label)
        cum, run = [], 0.0
        for c in carbon:
            run += c
            cum.append(run)
        ax_cum.plot(t, cum, color=color, label=label)
        site = es[0]["site"]
        if site not in drawn_sites:  # the same for every app of a site
            drawn_sites.add(site)
            ax_i.plot(t, [e["intensity_g_per_kwh"] for e in es], color=color, label=site)
    ax_p.set_ylabel("power (W)")
    ax_c.set_ylabel("carbon per tick (g)")
    ax_cum.set_ylabel("cumulative carbon (g)")
    ax_i.set_ylabel("grid intensity\n(gCO2eq/kWh)")
    ax_i.set_xlabel("tick start (UTC)")
    loc = AutoDateLocator()
    ax_i.xaxis.set_major_locator(loc)
    ax_i.xaxis.set_major_formatter(ConciseDateFormatter(loc, tz=UTC))
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(loc="best", fontsize="small", ncols=2)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return len(axes)
