"""``ecovisor export``: the ledger entries of one app between two times, read from
ecovisor.ledger to its current end (formats in ``ecovisor.cli.export_format``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ecovisor.adapters.kafka import KafkaUnavailable, read_topic
from ecovisor.cli.export_format import select, to_csv, to_jsonl
from ecovisor.cli.follow import CLIENT_ID
from ecovisor.cli.options import KAFKA_TIMEOUT_S, BootstrapOpt, ConfigOpt, fail, load
from ecovisor.contract import topics
from ecovisor.contract.envelope import parse_time
from ecovisor.contract.environment import kafka_bootstrap

# A bound on reading the whole ledger (up to its end offsets when the export starts);
# generous, since a long run holds many entries.
LEDGER_READ_TIMEOUT_S = 600.0


def read_ledger(bootstrap: str) -> Iterator[bytes]:
    """Every record of ecovisor.ledger up to its end now (KafkaUnavailable if the broker
    or the topic is missing, or the reading does not finish in time)."""
    for r in read_topic(bootstrap, topics.LEDGER, CLIENT_ID, timeout=KAFKA_TIMEOUT_S,
                        read_timeout=LEDGER_READ_TIMEOUT_S):
        yield r.value


def export(
    app_id: Annotated[str, typer.Option("--app", help="application id")],
    t_from: Annotated[str, typer.Option("--from", help="ISO 8601 start (inclusive)")],
    t_to: Annotated[str, typer.Option("--to", help="ISO 8601 end (exclusive)")],
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of JSON lines")] = False,
    plot: Annotated[
        Path | None,
        typer.Option("--plot", help="write a PNG chart of the entries to FILE instead"),
    ] = None,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Export an app's ledger entries (from ecovisor.ledger, de-duplicated by tick)."""
    try:
        t1, t2 = parse_time(t_from), parse_time(t_to)
    except ValueError as e:
        raise fail(f"bad time: {e}", 2) from None
    site = None  # with --bootstrap alone, every site's entries of the app
    if not bootstrap:
        cfg, _ = load(config, code=2)
        bootstrap, site = kafka_bootstrap(cfg), cfg.site.id
    try:
        entries = select(read_ledger(bootstrap), app_id, t1, t2, site)
    except KafkaUnavailable as e:
        raise fail(str(e)) from None
    if plot is not None:
        write_plot(entries, plot, f"{app_id}  {t1.isoformat()} .. {t2.isoformat()}")
        return
    typer.echo(to_csv(entries) if as_csv else to_jsonl(entries), nl=False)


def write_plot(entries: list[dict[str, Any]], path: Path, title: str) -> None:
    """The PNG of ``--plot`` and one line saying what it holds; no entries: exit 1."""
    from ecovisor.cli.export_plot import plot_entries

    if not entries:
        raise fail(f"no ledger entries in the range: nothing to plot ({path} not written)")
    try:
        plot_entries(entries, path, title)
    except (OSError, ValueError) as e:
        raise fail(f"cannot write {path}: {e}") from None
    typer.echo(f"wrote {path}: {len(entries)} ticks")
