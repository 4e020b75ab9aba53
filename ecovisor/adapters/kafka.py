"""The one Kafka adapter of the product (kafka-python for synchronous services and
tools): topic creation, a producer, a consumer assigned every partition of a topic and
reading a topic to its end. Connection retries go through tenacity, with one policy.

Why assigned consumers and not consumer groups: tansu (the embedded broker) fails
kafka-python's SyncGroup, and every reader here tracks its own position (the actuators
replay their topic on start, the CLI tails from the end). The asynchronous services
(ledger, REST API) use aiokafka, which Faust is built on; see docs/architecture.md.

How a client authenticates is decided here too, once, from the ``ECOVISOR_KAFKA_*``
environment (``kafka_security``): every kafka-python client takes
``kafka_python_options()``, every aiokafka client ``aiokafka_options()`` and the Faust app
``faust_credentials()``. Nothing set: PLAINTEXT without authentication, the clients get
no security argument at all (the embedded broker, tansu, has no SASL).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import ssl
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
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
from ecovisor.contract.environment import (
    ENV_KAFKA_PASSWORD,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SECURITY_PROTOCOL,
    ENV_KAFKA_SSL_CAFILE,
    ENV_KAFKA_USERNAME,
)

T = TypeVar("T")

# Bounds of the high-volume topics, set when a topic is created (a topic that exists is
# left as it is). Apache Kafka enforces them; tansu 0.6, the embedded broker, stores
# every record in memory for its lifetime whatever the config (docs/reliability.md).
# Compression of every record the platform's producers write (the ledger's Faust producer,
# the bridge): zstd. The records are JSON (ledger entries of every container, tick
# notifications, snapshots, node batches) and compress ~12x with it (gzip at aiokafka's
# level 9: ~13x) for ~1/9 of gzip's CPU: a 24 kB entry of 100 containers takes 0.06 ms,
# gzip 0.5 ms, which was ~15 % of a ledger worker's CPU at 1,000 containers
# (docs/ledger.md). Consumers need a zstd codec: aiokafka's (cramjam) and kafka-python's
# (zstandard) are dependencies; any Kafka client since 2.1 reads it.
COMPRESSION_TYPE = "zstd"
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


# --- authentication: the one place every Kafka client's security settings come from ----
PROTOCOLS = ("PLAINTEXT", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
DEFAULT_SASL_MECHANISM = "SCRAM-SHA-512"


class KafkaSettingsError(KafkaUnavailable):
    """The ``ECOVISOR_KAFKA_*`` client settings are unusable (the reason in one line):
    no client is built, so a service exits as when Kafka is unavailable."""


@dataclass(frozen=True)
class KafkaSecurity:
    """How a client connects: ``PLAINTEXT`` (no authentication) or SASL as ``username``
    with ``mechanism``, over TLS for ``SASL_SSL`` (``cafile``: the CA bundle, default the
    system's). The password is never in the repr."""

    protocol: str = "PLAINTEXT"
    mechanism: str | None = None
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    cafile: str | None = None

    @property
    def sasl(self) -> bool:
        return self.protocol != "PLAINTEXT"


# A fetch waits less than the clients' request timeout (30 s in kafka-python, 40 s in
# aiokafka), or every quiet fetch fails as a timed-out request
FETCH_WAIT_MAX_MS = 20_000
# A linger delays every output: past the ledger's 5 s persist interval it would hold a
# tick's outputs for several ticks
LINGER_MAX_MS = 5_000


def checked_fetch_wait(ms: int) -> int:
    """A consumer's fetch wait (``fetch_max_wait_ms``), whole ms, 1..FETCH_WAIT_MAX_MS,
    else ``ValueError``. The embedded broker (tansu 0.6) holds a waiting fetch until the
    wait is over even when records arrive, so the wait is a latency for every hop; but
    with 0 it answers with no records at all, however many there are (measured)."""
    if ms < 1:
        raise ValueError(f"fetch wait {ms} ms: at least 1 (a 0 ms fetch gets no records "
                         "from the embedded broker)")
    if ms > FETCH_WAIT_MAX_MS:
        raise ValueError(f"fetch wait {ms} ms: at most {FETCH_WAIT_MAX_MS} (below the "
                         "clients' request timeout)")
    return ms


def checked_linger(ms: int) -> int:
    """A producer's linger (``linger_ms``), whole ms (the Kafka clients count it so),
    0..LINGER_MAX_MS, else ``ValueError``."""
    if ms < 0:
        raise ValueError(f"linger {ms} ms: at least 0")
    if ms > LINGER_MAX_MS:
        raise ValueError(f"linger {ms} ms: at most {LINGER_MAX_MS} (each output waits "
                         "that long)")
    return ms


def linger_arg(text: str) -> int:
    """``checked_linger`` of a command-line value."""
    try:
        return checked_linger(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def fetch_wait_arg(text: str) -> int:
    """``checked_fetch_wait`` of a command-line value."""
    try:
        return checked_fetch_wait(int(text))
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def kafka_security(environ: Mapping[str, str] | None = None) -> KafkaSecurity:
    """The client settings from the environment (default ``os.environ``):
    ``ECOVISOR_KAFKA_SECURITY_PROTOCOL`` (PLAINTEXT, SASL_PLAINTEXT, SASL_SSL; default
    PLAINTEXT), ``ECOVISOR_KAFKA_SASL_MECHANISM`` (default SCRAM-SHA-512),
    ``ECOVISOR_KAFKA_USERNAME``, ``ECOVISOR_KAFKA_PASSWORD`` (both required with SASL),
    ``ECOVISOR_KAFKA_SSL_CAFILE`` (SASL_SSL only). Credentials with PLAINTEXT are an
    error, not a silent connection without them (KafkaSettingsError)."""
    env = os.environ if environ is None else environ
    protocol = (env.get(ENV_KAFKA_SECURITY_PROTOCOL) or "PLAINTEXT").strip().upper()
    mechanism = (env.get(ENV_KAFKA_SASL_MECHANISM) or "").strip().upper() or None
    username = env.get(ENV_KAFKA_USERNAME) or None
    password = env.get(ENV_KAFKA_PASSWORD) or None
    cafile = env.get(ENV_KAFKA_SSL_CAFILE) or None
    if protocol not in PROTOCOLS:
        raise KafkaSettingsError(
            f"{ENV_KAFKA_SECURITY_PROTOCOL}={protocol!r}: expected one of {', '.join(PROTOCOLS)}"
        )
    if protocol == "PLAINTEXT":
        given = [
            name
            for name, value in (
                (ENV_KAFKA_SASL_MECHANISM, mechanism),
                (ENV_KAFKA_USERNAME, username),
                (ENV_KAFKA_PASSWORD, password),
                (ENV_KAFKA_SSL_CAFILE, cafile),
            )
            if value
        ]
        if given:
            raise KafkaSettingsError(
                f"{', '.join(given)} set but {ENV_KAFKA_SECURITY_PROTOCOL} is PLAINTEXT (no "
                "authentication): set it to SASL_PLAINTEXT or SASL_SSL"
            )
        return KafkaSecurity()
    mechanism = mechanism or DEFAULT_SASL_MECHANISM
    if mechanism not in SASL_MECHANISMS:
        raise KafkaSettingsError(
            f"{ENV_KAFKA_SASL_MECHANISM}={mechanism!r}: expected one of "
            f"{', '.join(SASL_MECHANISMS)}"
        )
    missing = [n for n, v in ((ENV_KAFKA_USERNAME, username), (ENV_KAFKA_PASSWORD, password))
               if not v]  # fmt: skip
    if missing:
        raise KafkaSettingsError(f"{protocol} needs {' and '.join(missing)}")
    if cafile and protocol != "SASL_SSL":
        raise KafkaSettingsError(f"{ENV_KAFKA_SSL_CAFILE} is for SASL_SSL, not {protocol}")
    return KafkaSecurity(protocol, mechanism, username, password, cafile)


def _ssl_context(sec: KafkaSecurity) -> ssl.SSLContext | None:
    if sec.protocol != "SASL_SSL":
        return None
    try:
        return ssl.create_default_context(cafile=sec.cafile)
    except OSError as e:
        raise KafkaSettingsError(f"{ENV_KAFKA_SSL_CAFILE}={sec.cafile!r}: {e}") from e


def _sasl_options(sec: KafkaSecurity) -> dict[str, Any]:
    if not sec.sasl:
        return {}  # exactly the arguments a client had before authentication existed
    opts: dict[str, Any] = {
        "security_protocol": sec.protocol,
        "sasl_mechanism": sec.mechanism,
        "sasl_plain_username": sec.username,  # both libraries use these for SCRAM too
        "sasl_plain_password": sec.password,
    }
    ctx = _ssl_context(sec)
    if ctx is not None:
        opts["ssl_context"] = ctx
    return opts


def kafka_python_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The security keyword arguments of every kafka-python client (``KafkaProducer``,
    ``KafkaConsumer``, ``KafkaAdminClient``); ``{}`` without settings."""
    return _sasl_options(kafka_security(environ))


def aiokafka_options(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The security keyword arguments of every aiokafka client (``AIOKafkaProducer``,
    ``AIOKafkaConsumer``); ``{}`` without settings. aiokafka spells them as kafka-python
    does; for SASL_SSL both take the ``ssl_context`` made here."""
    return _sasl_options(kafka_security(environ))


def faust_credentials(environ: Mapping[str, str] | None = None) -> Any:
    """The Faust app's ``broker_credentials``: None without settings (Faust's PLAINTEXT),
    else ``faust.SASLCredentials`` (Faust turns them into its aiokafka clients' SASL
    arguments; SASL_SSL with the SSL context made here)."""
    sec = kafka_security(environ)
    if not sec.sasl:
        return None
    import faust

    return faust.SASLCredentials(
        username=sec.username,
        password=sec.password,
        mechanism=sec.mechanism,
        ssl_context=_ssl_context(sec),
    )


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


@contextlib.contextmanager
def admin_client(bootstrap: str, timeout: float = 30.0) -> Iterator[Any]:
    """A connected kafka-python admin client (authenticated as the environment says),
    closed on exit."""
    from kafka.admin import KafkaAdminClient

    security = kafka_python_options()
    admin = connect(
        lambda: KafkaAdminClient(
            bootstrap_servers=bootstrap, client_id="ecovisor-admin", **security
        ),
        f"Kafka at {bootstrap}",
        timeout,
    )
    try:
        yield admin
    finally:
        admin.close()


def create_topics(
    bootstrap: str,
    topics: Iterable[str] | Mapping[str, int],
    timeout: float = 30.0,
) -> None:
    """Create every topic up front (tansu does not auto-create on subscribe), with its
    ``topic_config``; a mapping gives each topic's partition count
    (``ecovisor.contract.topics.topic_partitions``), names alone get 1 each.
    Idempotent: an existing topic is left as it is, whatever its partition count."""
    counts = topics if isinstance(topics, Mapping) else dict.fromkeys(topics, 1)
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    with admin_client(bootstrap, timeout) as admin:
        existing = set(admin.list_topics())
        for t, n in counts.items():
            if t in existing:
                continue
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(
                    [
                        NewTopic(
                            name=t,
                            num_partitions=n,
                            replication_factor=1,
                            topic_configs=topic_config(t),
                        )
                    ]
                )


def existing_topics(bootstrap: str, timeout: float = 30.0) -> set[str]:
    """The names of the topics the broker has."""
    with admin_client(bootstrap, timeout) as admin:
        return set(admin.list_topics())


def existing_partitions(
    bootstrap: str, names: Iterable[str], timeout: float = 30.0
) -> dict[str, int]:
    """The partition count of each of ``names`` the broker has (absent: not listed)."""
    with admin_client(bootstrap, timeout) as admin:
        out: dict[str, int] = {}
        for d in admin.describe_topics(list(names)):
            if not d.get("error_code") and d.get("partitions"):
                out[d.get("topic") or d.get("name")] = len(d["partitions"])
        return out


def producer(bootstrap: str, client_id: str, timeout: float = 30.0) -> KafkaProducer:
    security = kafka_python_options()
    return connect(
        lambda: KafkaProducer(
            bootstrap_servers=bootstrap, client_id=client_id, linger_ms=0, acks=1, **security
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
    checked_fetch_wait(fetch_max_wait_ms)
    deadline = time.monotonic() + timeout
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "enable_auto_commit": False,
        # short fetch waits keep command-to-quota latency low on brokers that hold a
        # fetch until the wait expires
        "fetch_max_wait_ms": fetch_max_wait_ms,
        "consumer_timeout_ms": 1000,
        **kafka_python_options(),
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
