"""What every collector process shares: the command line (``--config FILE``), option
validation with one readable line on error, SIGTERM handling, a drift-free periodic
loop and the publisher built from the site configuration."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from collectors.publisher import Publisher, client_id
from ecovisor.contract.config import (
    ConfigError,
    EcovisorConfig,
    SourceConfig,
    config_path,
    load_config,
    mqtt_endpoint,
    one_line,
)
from ecovisor.contract.schemas import describe_validation_error


class Options(BaseModel):
    """Base of every collector's per-type options model (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def validate_source(
    section: str, source: SourceConfig | None, models: dict[str, type[Options]]
) -> Options:
    """Validate ``site.<section>`` against the options model of its type."""
    if source is None:
        raise ConfigError(f"site.{section} is not configured")
    model = models.get(source.type)
    if model is None:
        raise ConfigError(
            f"site.{section}.type {source.type!r} is unknown; expected one of "
            + ", ".join(sorted(models))
        )
    try:
        return model.model_validate(source.options)
    except ValidationError as e:
        raise ConfigError(
            f"site.{section}.options (type {source.type}): {describe_validation_error(e)}"
        ) from None


def make_publisher(
    cfg: EcovisorConfig, collector: str, source: str, buffer_max: int = 10_000
) -> Publisher:
    host, port = mqtt_endpoint(cfg)
    return Publisher(
        cfg.site.id,
        host,
        port,
        client_id=client_id(cfg.site.id, collector, source),
        buffer_max=buffer_max,
    )


def run_every(
    period_s: float,
    stop: threading.Event,
    fn: Callable[[], None],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call ``fn`` every ``period_s`` on a fixed schedule (no drift) until ``stop``."""
    nxt = clock()
    while not stop.is_set():
        fn()
        nxt += period_s
        delay = nxt - clock()
        if delay < -period_s:  # fell far behind (suspended?): resynchronise
            nxt = clock()
            delay = 0.0
        stop.wait(max(0.0, delay))


def cli_main(
    name: str,
    argv: Sequence[str] | None,
    run: Callable[[EcovisorConfig, argparse.Namespace, threading.Event], None],
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> int:
    """Parse ``--config``, load it, run until SIGTERM/SIGINT. A configuration problem
    prints one line to stderr and returns 2; never a traceback."""
    parser = argparse.ArgumentParser(prog=f"python -m collectors.{name}")
    parser.add_argument("--config", help="site YAML (default $ECOVISOR_CONFIG)")
    parser.add_argument("--log-level", default="INFO")
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format=f"%(asctime)s {name} %(levelname)s %(message)s"
    )
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        cfg = load_config(config_path(args.config))
        run(cfg, args, stop)
    except ConfigError as e:
        print(f"collectors.{name}: {one_line(e)}", file=sys.stderr)
        return 2
    return 0
