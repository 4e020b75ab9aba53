"""What every collector process shares: the command line (``--config FILE``), option
validation with one readable line on error, SIGTERM handling, a drift-free periodic
loop, the publisher built from the site configuration, and the run of a collector fed
by one ``site.<section>`` source (solar, carbon), and the check of a source's reading
against the contract's bounds before it is kept or published."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Protocol

from pydantic import BaseModel, ConfigDict, TypeAdapter, ValidationError

from collectors.publisher import Publisher, client_id
from ecovisor.contract.bus_access import device_username, mqtt_credentials, site_source_id
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError, config_path, load_config, one_line
from ecovisor.contract.environment import mqtt_endpoint
from ecovisor.contract.operator_messages import describe_validation_error
from ecovisor.contract.site_config import SourceConfig

log = logging.getLogger("ecovisor.collectors.common")


class Options(BaseModel):
    """Base of every collector's per-type options model (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class SourceKind:
    """One ``site.<section>`` source (solar, carbon, battery): the options model of each
    of its types (``site.<section>.type``)."""

    section: str
    options: dict[str, type[Options]]

    def validate(self, source: SourceConfig | None) -> Options:
        """The source's options, validated by its type's model; a ConfigError of one
        readable line otherwise. Each such collector exposes it as ``validate_options``
        for ``ecovisor config check``."""
        if source is None:
            raise ConfigError(f"site.{self.section} is not configured")
        model = self.options.get(source.type)
        if model is None:
            raise ConfigError(
                f"site.{self.section}.type {source.type!r} is unknown; expected one of "
                + ", ".join(sorted(self.options))
            )
        try:
            return model.model_validate(source.options)
        except ValidationError as e:
            raise ConfigError(
                f"site.{self.section}.options (type {source.type}): {describe_validation_error(e)}"
            ) from None


def make_publisher(
    cfg: EcovisorConfig,
    collector: str,
    source: str,
    username: str,
    buffer_max: int = 10_000,
    password: str | None = None,
) -> Publisher:
    """The publisher of one collector, logged in as the MQTT principal ``username``
    (``ecovisor.contract.bus_access``): with ``password``, else the site's credential of
    that principal, else anonymous."""
    host, port = mqtt_endpoint(cfg)
    creds = (username, password) if password else mqtt_credentials(cfg, username)
    return Publisher(
        cfg.site.id,
        host,
        port,
        client_id=client_id(cfg.site.id, collector, source),
        buffer_max=buffer_max,
        credentials=creds,
    )


class RefusedValue(ValueError):
    """A source's value that the contract's message would refuse: a failed read."""


@functools.cache
def _field_adapter(model: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = model.model_fields[name]
    strict = model.model_config.get("strict")
    return TypeAdapter(Annotated[info.annotation, info], config=ConfigDict(strict=strict))


def refusal(model: type[BaseModel], name: str, value: object) -> str | None:
    """Why ``model`` (a message of ecovisor/contract/telemetry.py) would refuse ``value``
    as its field ``name``, else None. The bounds are the model's own, so a collector can
    drop a bad reading before publishing (which would raise) or keeping it."""
    try:
        _field_adapter(model, name).validate_python(value)
    except ValidationError as e:
        return "; ".join(
            f"{'.'.join(map(str, err['loc']))}: {err['msg']}" if err["loc"] else err["msg"]
            for err in e.errors()[:3]
        )
    return None


def require(model: type[BaseModel], **values: object) -> None:
    """Raise RefusedValue (naming the field, the value and the reason) when ``model``
    would refuse one of ``values`` (see ``refusal``)."""
    for name, value in values.items():
        why = refusal(model, name, value)
        if why is not None:
            raise RefusedValue(f"{name} {value!r} refused by {model.__name__}: {why}")


def run_every(
    period_s: float,
    stop: threading.Event,
    fn: Callable[[], object],
    clock: Callable[[], float] = time.monotonic,
) -> None:
    """Call ``fn`` every ``period_s`` on a fixed schedule (no drift) until ``stop``. A
    message the contract refuses (pydantic ValidationError) costs that tick's message,
    logged, not the process: the collector goes on with the next tick."""
    nxt = clock()
    while not stop.is_set():
        try:
            fn()
        except ValidationError as e:
            log.error("a message was refused by the contract, not published: %s",
                      describe_validation_error(e))  # fmt: skip
        nxt += period_s
        delay = nxt - clock()
        if delay < -period_s:  # fell far behind (suspended?): resynchronise
            nxt = clock()
            delay = 0.0
        stop.wait(max(0.0, delay))


class SourceCollector(Protocol):
    """A collector of one configured source: publishes on each ``tick``."""

    def tick(self) -> object: ...

    def close(self) -> None: ...


def run_source(
    cfg: EcovisorConfig,
    stop: threading.Event,
    kind: SourceKind,
    collector: Callable[[SourceConfig, Callable[..., object], str], SourceCollector],
) -> None:
    """Run the collector of ``site.<section>`` until ``stop``: options validated, source
    id ``id`` (default the section name), ``collector(source, publish, source_id)``
    ticked every ``options.tick_s`` (default ``site.shape.tick_s``)."""
    section = kind.section
    src = getattr(cfg.site, section)
    opts = kind.validate(src)
    source_id = site_source_id(cfg, section)
    pub = make_publisher(cfg, section, source_id, device_username(source_id))
    coll = collector(src, pub.publish, source_id)
    pub.start()
    period = getattr(opts, "tick_s", None) or cfg.site.shape.tick_s
    logging.getLogger(f"ecovisor.collectors.{section}").info(
        "%s %s (%s): every %.3g s", section, source_id, src.type, period
    )
    try:
        run_every(period, stop, coll.tick)
    finally:
        pub.close()
        coll.close()


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
