"""Kafka plumbing shared by the actuator services: a partition-assigned consumer (no
consumer group: kafka-python groups fail on the tansu broker, and an actuator must see
every command of its site anyway), reading a topic from the beginning to its current end
(restoring setpoints after a restart), and a producer for acknowledgements."""

from __future__ import annotations

import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from pydantic import ValidationError

from ecovisor import topics
from ecovisor.config import ConfigError, EcovisorConfig, config_path, load_config, one_line
from ecovisor.schemas import ActuatorAck

log = logging.getLogger("actuators.kafka")
T = TypeVar("T")


class KafkaUnavailable(RuntimeError):
    pass


def _partitions(consumer: KafkaConsumer, topic: str, timeout: float) -> list[TopicPartition]:
    deadline = time.monotonic() + timeout
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"topic {topic!r} does not exist (create topics up front)")
        time.sleep(0.2)


def assigned_consumer(
    bootstrap: str,
    topic: str,
    client_id: str,
    fetch_max_wait_ms: int = 50,
    timeout: float = 30.0,
) -> tuple[KafkaConsumer, list[TopicPartition]]:
    """A consumer assigned every partition of ``topic`` (positions not yet set)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            consumer = KafkaConsumer(
                bootstrap_servers=bootstrap,
                client_id=client_id,
                enable_auto_commit=False,
                # short fetch waits keep command-to-quota latency low on brokers that
                # hold a fetch until the wait expires
                fetch_max_wait_ms=fetch_max_wait_ms,
                consumer_timeout_ms=1000,
            )
            break
        except KafkaError as e:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"Kafka at {bootstrap} not reachable: {e}") from e
            time.sleep(0.3)
    parts = _partitions(consumer, topic, max(deadline - time.monotonic(), 1.0))
    consumer.assign(parts)
    return consumer, parts


def read_to_end(
    consumer: KafkaConsumer, parts: list[TopicPartition], timeout: float = 30.0
) -> Iterator[Any]:
    """Records from the beginning of each partition up to its end offset at call time;
    the consumer is left positioned at that end (so live consumption continues there)."""
    consumer.seek_to_beginning(*parts)
    end = consumer.end_offsets(parts)
    deadline = time.monotonic() + timeout
    remaining = {tp for tp in parts if end[tp] > consumer.position(tp)}
    while remaining:
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"could not read {sorted(str(t) for t in remaining)} to end")
        batch = consumer.poll(timeout_ms=200)
        for tp, records in batch.items():
            for r in records:
                if r.offset < end[tp]:
                    yield r
        for tp in list(remaining):
            if consumer.position(tp) >= end[tp]:
                remaining.discard(tp)
    # Records past the snapshot end that arrived in the last batch were already fetched;
    # rewind so live consumption sees them.
    for tp in parts:
        consumer.seek(tp, end[tp])


def producer(bootstrap: str, client_id: str, timeout: float = 30.0) -> KafkaProducer:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return KafkaProducer(
                bootstrap_servers=bootstrap, client_id=client_id, linger_ms=0, acks=1
            )
        except KafkaError as e:
            if time.monotonic() > deadline:
                raise KafkaUnavailable(f"Kafka at {bootstrap} not reachable: {e}") from e
            time.sleep(0.3)


def publisher(prod: KafkaProducer) -> Callable[[str, str, bytes], None]:
    """A synchronous publish (key as text): an ack is on the broker before we go on."""

    def publish(topic: str, key: str, value: bytes) -> None:
        prod.send(topic, key=key.encode(), value=value)
        prod.flush(timeout=10)

    return publish


def read_acks(bootstrap: str) -> list[ActuatorAck]:
    """Every acknowledgement so far (what was already applied before a restart)."""
    cons, parts = assigned_consumer(bootstrap, topics.ACTUATOR_ACKS, "actuator-acks")
    try:
        out = []
        for r in read_to_end(cons, parts):
            try:
                out.append(ActuatorAck.model_validate_json(r.value))
            except (ValidationError, TypeError):
                continue  # not ours to judge: the ledger dead-letters bad acks
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
    handle: Callable[[T], None],
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
