"""The actuator services' shared process: restore what was applied (acknowledgements read
to the end of their topic), then follow the command topic; one service entry (config
load, SIGTERM stop, exit 1 when Kafka is unavailable). The Kafka clients themselves
(connection retries included) are in ``ecovisor.adapters.kafka``."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import BaseModel, ValidationError

from ecovisor.adapters.kafka import (
    KafkaUnavailable,
    assigned_consumer,
    fetch_wait_arg,
    producer,
    publisher,
    read_to_end,
)
from ecovisor.contract import topics
from ecovisor.contract.actuation import (
    BAD_SIGNATURE,
    ActuatorAck,
    BatterySetpoint,
    ContainerAction,
    sign,
    verify,
)
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError, config_path, load_config, one_line
from ecovisor.contract.environment import internal_key, kafka_bootstrap
from ecovisor.contract.operator_messages import dead_letter, describe_validation_error

log = logging.getLogger("actuators.kafka")
T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Publish = Callable[[str, str, bytes], None]  # topic, key, value


def parser(model: type[M], logger: logging.Logger) -> Callable[[bytes], M | None]:
    """A command topic's message parser: an invalid message is logged and skipped."""

    def parse(raw: bytes) -> M | None:
        try:
            return model.model_validate_json(raw)
        except ValidationError as e:
            logger.warning("ignoring invalid %s: %s", model.__name__, describe_validation_error(e))
            return None

    return parse


class Signer:
    """The actuator side of the internal key: actions/setpoints must carry the ledger's
    signature, acknowledgements are signed. Without a key, everything passes unsigned
    (warned once at start)."""

    def __init__(self, key: str | None, actuator: str, logger: logging.Logger) -> None:
        self.key = key
        if key is None:
            logger.warning(
                "no internal key: internal topics are not authenticated (any producer "
                "on %s can act on this site)",
                actuator,
            )

    def accepts(self, message: ContainerAction | BatterySetpoint | ActuatorAck) -> bool:
        return self.key is None or verify(message, self.key)

    def ack(self, ack: ActuatorAck) -> ActuatorAck:
        return sign(ack, self.key) if self.key else ack

    def refuse(
        self, publish: Publish, site: str, origin: str, message: ContainerAction | BatterySetpoint
    ) -> None:
        """Dead-letter a message without a valid signature (no effect, no ack)."""
        dl = dead_letter(origin, BAD_SIGNATURE, message.to_json())
        publish(topics.DEADLETTER, site, dl.model_dump_json().encode())


def read_acks(bootstrap: str, key: str | None = None) -> list[ActuatorAck]:
    """Every acknowledgement so far (what was already applied before a restart); with a
    key, only signed ones (a forged ack must not pass for an applied baseline)."""
    cons, parts = assigned_consumer(bootstrap, topics.ACTUATOR_ACKS, "actuator-acks")
    try:
        out = []
        for r in read_to_end(cons, parts):
            try:
                ack = ActuatorAck.model_validate_json(r.value)
            except (ValidationError, TypeError):
                continue  # not ours to judge: the ledger dead-letters bad acks
            if key is None or verify(ack, key):
                out.append(ack)
        return out
    finally:
        cons.close()


def replay_then_follow(
    bootstrap: str,
    topic: str,
    name: str,
    fetch_wait_ms: int,
    parse: Callable[[bytes], T | None],
    restore: Callable[[list[T]], int],
    handle: Callable[[T], object],
    stop: threading.Event,
) -> None:
    """Restore from a topic's history (re-apply the latest setpoints), then handle each
    new message until ``stop``; unparsable messages are skipped by ``parse``."""
    cons, parts = assigned_consumer(bootstrap, topic, name, fetch_wait_ms)
    try:
        history = [m for r in read_to_end(cons, parts) if (m := parse(r.value)) is not None]
        n = restore(history)
        log.info("restored %d message(s) from %s; consuming", n, topic)
        while not stop.is_set():
            for records in cons.poll(timeout_ms=200).values():
                for r in records:
                    m = parse(r.value)
                    if m is not None:
                        handle(m)
    finally:
        cons.close()


@dataclass(frozen=True)
class Service(Generic[T]):
    """An actuator as ``run_actuator`` drives it."""

    restore: Callable[[list[T]], int]  # the topic's history -> how many were replayed
    handle: Callable[[T], object]
    close: Callable[[], None]


def run_actuator(
    cfg: EcovisorConfig,
    stop: threading.Event,
    actuator: str,
    topic: str,
    fetch_wait_ms: int,
    parse: Callable[[bytes], T | None],
    start: Callable[[Publish, list[ActuatorAck]], Service[T]],
) -> None:
    """Run actuator ``actuator`` until ``stop``: ``start`` gets the acknowledgement
    publisher and the actuator's own acknowledgements so far, then ``topic`` is replayed
    and followed."""
    bootstrap = kafka_bootstrap(cfg)
    prod = producer(bootstrap, f"ecovisor-actuator-{actuator}")
    try:
        acks = [a for a in read_acks(bootstrap, internal_key(cfg)) if a.actuator == actuator]
        svc = start(publisher(prod), acks)
        try:
            replay_then_follow(
                bootstrap,
                topic,
                f"actuator-{actuator}",
                fetch_wait_ms,
                parse,
                svc.restore,
                svc.handle,
                stop,
            )
        finally:
            svc.close()
    finally:
        prod.close(timeout=5)


def service_args(module: str, doc: str | None) -> argparse.ArgumentParser:
    """The options every actuator service has."""
    p = argparse.ArgumentParser(prog=f"python -m {module}", description=doc)
    p.add_argument("--config", help="site configuration (default $ECOVISOR_CONFIG)")
    p.add_argument("--fetch-wait-ms", type=fetch_wait_arg, default=50,
                   help="Kafka fetch wait (latency), ms, at least 1")
    return p


def serve(
    name: str, config: str | None, run: Callable[[EcovisorConfig, threading.Event], None]
) -> int:
    """An actuator service's process entry: load the site configuration (exit 2 with one
    line on a bad one), stop cleanly on SIGTERM/SIGINT, exit 1 when Kafka is unusable."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        cfg = load_config(config_path(config))
    except ConfigError as e:
        print(f"{name}: {one_line(e)}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        run(cfg, stop)
    except KafkaUnavailable as e:
        print(f"{name}: {e}", file=sys.stderr)
        return 1
    return 0
