"""What the subcommands of ``ecovisor`` share: the --config, --state-dir and --bootstrap
options, how a site and its Kafka endpoint are found, and the one way to fail (a single
``error: ...`` line on stderr and a non-zero exit status)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import (
    DEFAULT_CONFIG_ENV,
    ConfigError,
    config_path,
    load_config,
    one_line,
)
from ecovisor.contract.environment import kafka_bootstrap

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="site configuration file (default: $ECOVISOR_CONFIG)"),
]
StateOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="stack state dir (default: the config's stack.state_dir)"),
]
BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap host:port (default: from the config)"),
]

# How long a subcommand waits for the broker (and a topic's partitions) before it gives
# up with one error line: long enough for a broker that is still starting.
KAFKA_TIMEOUT_S = 10.0


def fail(msg: str, code: int = 1) -> typer.Exit:
    """Print ``error: msg`` on stderr; the caller raises the returned Exit."""
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def load(config: str | None, code: int = 1) -> tuple[EcovisorConfig, Path]:
    """The site configuration (--config, else $ECOVISOR_CONFIG) and its path; an unusable
    one fails with one line."""
    try:
        path = config_path(config)
        return load_config(path), Path(path)
    except ConfigError as e:
        raise fail(one_line(e), code) from None


def has_config(config: str | None) -> bool:
    return bool(config or os.environ.get(DEFAULT_CONFIG_ENV))


def stack_state_dir(config: str | None, state_dir: Path | None) -> Path:
    """Where the embedded stack keeps its state: --state-dir, else the configuration's
    stack.state_dir, else ./.ecovisor."""
    from ecovisor.embedded.plan import state_dir_of

    if state_dir:
        return state_dir.resolve()
    if has_config(config):
        return state_dir_of(load(config)[0])
    return (Path.cwd() / ".ecovisor").resolve()


def kafka_of(config: str | None, bootstrap: str | None) -> tuple[str, EcovisorConfig | None]:
    """The Kafka bootstrap (--bootstrap, else the configuration's) and the configuration
    when there is one (--bootstrap alone needs none)."""
    if bootstrap:
        return bootstrap, load(config)[0] if has_config(config) else None
    cfg, _ = load(config)
    return kafka_bootstrap(cfg), cfg
