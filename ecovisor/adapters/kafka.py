"""The one Kafka adapter of the product (kafka-python for synchronous services and
tools): topic creation, a producer, a consumer assigned every partition of a topic and
reading a topic to its end. Connection retries go through tenacity, with one policy.

Why assigned consumers and not consumer groups: tansu (the embedded broker) fails
kafka-python's SyncGroup, and every reader here tracks its own position (the actuators
replay their topic on start, the CLI tails from the end). The asynchronous services
(ledger, REST API) use aiokafka, which Faust is built on; see docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError
from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    stop_after_delay,
    wait_fixed,
)

from ecovisor.contract import topics as names

T = TypeVar("T")

# Bounds of the high-volume topics, set when a topic is created (a topic that exists is
# left as it is). Apache Kafka enforces them; tansu 0.6, the embedded broker, stores
# every record in memory for its lifetime whatever the config (docs/reliability.md).
WEEK_MS = str(7 * 24 * 3600 * 1000)
GIB = str(1 << 30)
_RETAINED = {"retention.ms": WEEK_MS, "retention.bytes": GIB}
TOPIC_CONFIGS: dict[str, dict[str, str]] = {
    # the ledger replays telemetry from its snapshot's offset: a week covers any restart
    names.TELEMETRY: _RETAINED,
    names.DEADLETTER: _RETAINED,
    names.ALERTS: _RETAINED,
    names.COMMANDS: _RETAINED,
    # not bounded here: ecovisor.ledger (the accounting record `ecovisor export` reads)
    # and the actuator topics (replayed on start to restore every setpoint)
}


def topic_config(topic: str) -> dict[str, str]:
    """The configs ``create_topics`` gives a new topic: retention for telemetry, dead
    letters, alerts, commands and the notification streams (SSE resume reaches a week
    back; older is a `gap` event), compaction for Faust's table changelogs (only a key's
    latest value is ever read back)."""
    if topic.endswith("-changelog"):
        return {"cleanup.policy": "compact"}
    if topic.startswith(names.NOTIFICATIONS_PREFIX):
        return dict(_RETAINED)
    return dict(TOPIC_CONFIGS.get(topic, {}))


class KafkaUnavailable(RuntimeError):
    """The broker did not answer, or a topic is missing, within the timeout."""


def connect(make: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """``make()`` retried every 0.3 s on KafkaError until ``timeout``; then
    KafkaUnavailable naming ``what`` and the last error."""
    try:
        for attempt in Retrying(
            retry=retry_if_exception_type(KafkaError),
            stop=stop_after_delay(timeout),
            wait=wait_fixed(0.3),
        ):
            with attempt:
                return make()
    except RetryError as e:
        raise KafkaUnavailable(f"{what} not reachable: {e.last_attempt.exception()}") from e
    raise AssertionError("unreachable")  # pragma: no cover


def create_topics(
    bootstrap: str, topics: Iterable[str], partitions: int = 1, timeout: float = 30.0
) -> None:
    """Create every topic up front (tansu does not auto-create on subscribe), with its
    ``topic_config``. Idempotent: an existing topic is left as it is."""
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = connect(
        lambda: KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ecovisor-admin"),
        f"Kafka at {bootstrap}",
        timeout,
    )
    try:
        existing = set(admin.list_topics())
        for t in topics:
            if t in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(
                            name=t,
                            num_partitions=partitions,
                            replication_factor=1,
                            topic_configs=topic_config(t),
                        )
                    ]
                )
    finally:
        admin.close()


def existing_topics(bootstrap: str, timeout: float = 30.0) -> set[str]:
    """The names of the topics the broker has."""
    from kafka.admin import KafkaAdminClient

    admin = connect(
        lambda: KafkaAdminClient(bootstrap_servers=bootstrap, client_id="ecovisor-admin"),
        f"Kafka at {bootstrap}",
        timeout,
    )
    try:
        return set(admin.list_topics())
    finally:
        admin.close()


def producer(bootstrap: str, client_id: str, timeout: float = 30.0) -> KafkaProducer:
    return connect(
        lambda: KafkaProducer(
            bootstrap_servers=bootstrap, client_id=client_id, linger_ms=0, acks=1
        ),
        f"Kafka at {bootstrap}",
        timeout,
    )


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
    **options: Any,
) -> tuple[KafkaConsumer, list[TopicPartition]]:
    """A consumer assigned every partition of ``topic`` (positions not yet set)."""
    deadline = time.monotonic() + timeout
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "enable_auto_commit": False,
        # short fetch waits keep command-to-quota latency low on brokers that hold a
        # fetch until the wait expires
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "consumer_timeout_ms": 1000,
        **options,
    }
    consumer = connect(lambda: KafkaConsumer(**settings), f"Kafka at {bootstrap}", timeout)
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


def read_topic(bootstrap: str, topic: str, client_id: str, timeout: float = 30.0,
               read_timeout: float | None = None) -> Iterator[Any]:
    """Every record of ``topic`` so far, then the consumer is closed. ``timeout`` bounds
    connecting; ``read_timeout`` (default: the same) bounds reading to the end."""
    cons, parts = assigned_consumer(bootstrap, topic, client_id, timeout=timeout)
    try:
        yield from read_to_end(cons, parts, timeout=read_timeout or timeout)
    finally:
        cons.close()


def publisher(prod: KafkaProducer) -> Callable[[str, str, bytes], None]:
    """A synchronous publish (key as text): an ack is on the broker before we go on."""

    def publish(topic: str, key: str, value: bytes) -> None:
        # .get() raises the send's error (flush() alone would not report it)
        prod.send(topic, key=key.encode(), value=value).get(timeout=10)

    return publish
