"""``ecovisor export``: the ledger of one app between two times (streams/export.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

import typer


def _time(v: str) -> datetime:
    t = datetime.fromisoformat(v.replace("Z", "+00:00"))
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def register(app: typer.Typer) -> None:
    @app.command("export")
    def export(
        app_id: Annotated[str, typer.Option("--app", help="application id")],
        t_from: Annotated[str, typer.Option("--from", help="ISO 8601 start (inclusive)")],
        t_to: Annotated[str, typer.Option("--to", help="ISO 8601 end (exclusive)")],
        as_csv: Annotated[bool, typer.Option("--csv", help="CSV instead of JSON lines")] = False,
        config: Annotated[
            str | None, typer.Option("--config", "-c", help="site configuration")
        ] = None,
        bootstrap: Annotated[str | None, typer.Option("--bootstrap")] = None,
    ) -> None:
        """Export an app's ledger entries (from ecovisor.ledger, de-duplicated by tick)."""
        from ecovisor.cli.export_format import read_ledger, select, to_csv, to_jsonl
        from ecovisor.contract.config import ConfigError, config_path, kafka_bootstrap, load_config

        try:
            t1, t2 = _time(t_from), _time(t_to)
        except ValueError as e:
            typer.echo(f"error: bad time: {e}", err=True)
            raise typer.Exit(2) from None
        site = None
        if not bootstrap:
            try:
                cfg = load_config(config_path(config))
            except ConfigError as e:
                typer.echo(f"error: {' '.join(str(e).split())}", err=True)
                raise typer.Exit(2) from None
            bootstrap, site = kafka_bootstrap(cfg), cfg.site.id
        entries = select(read_ledger(bootstrap), app_id, t1, t2, site)
        typer.echo(to_csv(entries) if as_csv else to_jsonl(entries), nl=False)
