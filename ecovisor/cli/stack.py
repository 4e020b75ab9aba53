"""``ecovisor up | down | status | logs``: the embedded stack of a site, driven through
``ecovisor.embedded.stack`` (see docs/embedded-stack.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ecovisor.cli.options import ConfigOpt, StateOpt, fail, has_config, load, stack_state_dir


def _say(msg: str) -> None:
    typer.echo(msg)


def up(
    config: ConfigOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background")] = False,
) -> None:
    """Start the embedded stack for a site (foreground: Ctrl-C stops everything)."""
    from ecovisor.embedded import stack
    from ecovisor.embedded.plan import state_dir_of

    cfg, path = load(config)
    try:
        rc = stack.up(cfg, path, state_dir_of(cfg), detach, say=_say)
    except stack.StackError as e:
        raise fail(str(e)) from None
    raise typer.Exit(rc)


def down(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Stop every service of the embedded stack (no process is left behind)."""
    from ecovisor.embedded import stack

    raise typer.Exit(stack.down(stack_state_dir(config, state_dir), say=_say))


def _show_apps(config: str | None, sd: Path, recorded: str | None) -> None:
    """The ledger's readiness, then the apps table, after the process table (``--no-apps``
    skips both): read from the ledger's /ready and state views; one line when they do not
    answer. Never changes the exit code."""
    import shutil
    import sys

    from ecovisor.cli import status_apps
    from ecovisor.contract.config_file import ConfigError, config_path, load_config

    try:  # --config / $ECOVISOR_CONFIG, else the configuration the stack was started with
        cfg = load_config(config_path(config) if has_config(config) or not recorded else recorded)
    except ConfigError:
        typer.echo("apps: no site configuration to read them from")
        return
    typer.echo(status_apps.ledger_readiness(cfg))
    rows = status_apps.fetch(cfg, status_apps.views_key(cfg, sd))
    line = status_apps.unanswered(rows)
    if line:
        typer.echo(line)
        return
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else 160
    typer.echo(status_apps.render(rows, width), nl=False)


def status(
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
    no_apps: Annotated[
        bool, typer.Option("--no-apps", help="skip the table of apps and their latest tick")
    ] = False,
) -> None:
    """Each service and its state, then each app's latest tick; exit 1 unless every
    service is RUNNING."""
    from ecovisor.embedded import stack

    sd = stack_state_dir(config, state_dir)
    if not stack.is_running(sd):
        if stack.clean_stale(sd, _say):
            typer.echo("the stack is not running (stale state of a dead supervisord cleaned)")
        else:
            typer.echo(f"the stack is not running (state dir {sd})")
        raise typer.Exit(1)
    infos = stack.process_info(sd)
    typer.echo(stack.format_status(infos))
    for note in stack.read_state(sd).get("skipped", []):
        typer.echo(f"(not started) {note}")
    ok = stack.healthy(infos)
    typer.echo("healthy" if ok else "NOT healthy")
    if not no_apps:
        _show_apps(config, sd, stack.read_state(sd).get("config"))
    raise typer.Exit(0 if ok else 1)


def logs(
    service: Annotated[str, typer.Argument(help="service name, as shown by `ecovisor status`")],
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Show (and follow) the log of one service."""
    from ecovisor.embedded import stack

    log_dir: Path = stack_state_dir(config, state_dir) / "logs"
    path = log_dir / f"{service}.log"
    if not path.exists():
        known = sorted(p.stem for p in log_dir.glob("*.log"))
        raise fail(f"no log for {service!r}; known: {', '.join(known) or 'none'}")
    try:
        for line in stack.tail_file(path, lines, follow):
            typer.echo(line, nl=False)
    except KeyboardInterrupt:
        pass
