"""The bridge's routing and acknowledgement rules without brokers: what is forwarded,
what is dead-lettered and why (size before parsing, another site, an app, container or
node the site does not have), and that every message is acknowledged in the end, even
one Kafka refuses (a message never acknowledged holds an MQTT in-flight slot forever)."""

from __future__ import annotations

import json
from types import SimpleNamespace
from typing import Any

import pytest
from kafka import errors as kafka_errors

from ecovisor.contract import operator_messages, topics
from ecovisor.contract.config_file import parse_config
from streams.bridge import Bridge, RateLimitedLog, Scope, route

SITE = """
site:
  id: s1
  nodes: [{id: n1, cores: 2}]
  limits: {max_message_bytes: 2048}
apps:
  - id: web
    token: web-token-123456
    containers:
      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/web-1}}
    templates:
      - {id: worker, node: n1, backend: {type: cgroup_v1, cgroup: eco/worker}, max_replicas: 2}
  - id: batch
    token: batch-token-654321
    containers:
      - {id: batch-1, node: n1, backend: {type: cgroup_v1, cgroup: eco/batch-1}}
"""
SCOPE = Scope.of(parse_config(SITE))
T = "2024-06-01T12:00:00Z"


def container(site: str = "s1", app: str = "web", c: str = "web-1", **kw: Any) -> bytes:
    body = {"kind": "container", "site": site, "time": T, "source": "pm", "seq": 1,
            "app": app, "container": c, "cpu_s": 1, "energy_j": 2, **kw}  # fmt: skip
    return json.dumps(body).encode()


def topic(site: str = "s1", kind: str = "container", source: str = "pm") -> str:
    return topics.mqtt_telemetry(site, kind, source)


def reason(r: Any) -> str:
    assert r.topic == topics.DEADLETTER and not r.valid
    return operator_messages.DeadLetter.model_validate_json(r.value).reason


@pytest.mark.parametrize(
    ("c", "app"), [("web-1", "web"), ("worker-1", "web"), ("worker-2", "web"), ("batch-1", "batch")]
)
def test_configured_containers_and_template_replicas_are_forwarded(c: str, app: str) -> None:
    r = route(SCOPE, topic(), container(app=app, c=c, node="n1"))
    assert r.valid and r.topic == topics.TELEMETRY and r.key == b"s1"


@pytest.mark.parametrize(
    ("mqtt_topic", "payload", "needle"),
    [
        (topic("s2"), container(site="s2"), "this bridge serves site 's1'"),
        (topic(), container(c="ghost-1"), "container 'ghost-1' is not in site 's1'"),
        (topic(), container(c="worker-3"), "container 'worker-3' is not in site"),  # > max
        (topic(), container(app="batch"), "belongs to app 'web', not 'batch'"),
        (topic(), container(node="n9"), "node 'n9' is not in site"),
        (topic(kind="app_metrics"), json.dumps({"kind": "app_metrics", "site": "s1", "time": T,
         "source": "pm", "seq": 1, "app": "nobody"}).encode(), "app 'nobody' is not in site"),
        (topic(kind="node"), json.dumps({"kind": "node", "site": "s1", "time": T, "source": "pm",
         "seq": 1, "node": "n9", "cores": 2, "cpu_busy_s": 1, "energy_j": 1}).encode(),
         "node 'n9' is not in site"),
    ],  # fmt: skip
)
def test_telemetry_for_another_site_or_unknown_things_is_dead_lettered(
    mqtt_topic: str, payload: bytes, needle: str
) -> None:
    r = route(SCOPE, mqtt_topic, payload)
    assert needle in reason(r)
    dl = operator_messages.DeadLetter.model_validate_json(r.value)
    assert dl.origin == f"mqtt:{mqtt_topic}" and dl.raw == payload.decode()


def test_oversized_payload_is_dead_lettered_before_parsing_with_a_truncated_raw() -> None:
    # schema-valid (whitespace does not change JSON), just too large
    payload = container()[:-1] + b" " * 1_000_000 + b"}"
    r = route(SCOPE, topic(), payload)
    why = reason(r)
    assert f"{len(payload)} bytes" in why and "max_message_bytes (2048)" in why
    dl = operator_messages.DeadLetter.model_validate_json(r.value)
    assert dl.raw.startswith('{"kind": "container"') and "truncated" in dl.raw
    assert len(r.value) < 10_000 and r.key == b"s1"
    # at the limit it is parsed as usual
    at_limit = container()[:-1] + b" " * (2048 - len(container())) + b"}"
    assert len(at_limit) == 2048 and route(SCOPE, topic(), at_limit).valid


# --- acknowledgement --------------------------------------------------------------------


class Future:
    def __init__(self, exc: BaseException | None = None) -> None:
        self.is_done, self.exception = True, exc

    def failed(self) -> bool:
        return self.exception is not None

    def add_both(self, cb: Any) -> None:
        cb(None)


class Producer:
    """Refuses what ``refuse(topic, value)`` says: raising at once (``sync``) or through
    the future, as kafka-python does for a too large message or a broker error."""

    def __init__(self, refuse: Any, sync: bool = False) -> None:
        self.refuse, self.sync, self.sent = refuse, sync, []

    def send(self, topic: str, key: bytes | None, value: bytes) -> Future:
        exc = self.refuse(topic, value)
        if exc is not None and self.sync:
            raise exc
        if exc is None:
            self.sent.append((topic, value))
        return Future(exc)


class Client:
    def __init__(self) -> None:
        self.acks: list[int] = []

    def ack(self, mid: int, qos: int) -> None:
        self.acks.append(mid)


def bridge(producer: Producer) -> tuple[Bridge, Client]:
    b = Bridge(SCOPE, "127.0.0.1", 1, "127.0.0.1:1")
    b.producer, b.client = producer, Client()
    return b, b.client


def deliver(b: Bridge, mid: int, payload: bytes, qos: int = 1) -> None:
    b._on_message(None, None, SimpleNamespace(topic=topic(), payload=payload, qos=qos, mid=mid))


def too_large(topic_: str, value: bytes) -> BaseException | None:
    # the broker's (or the producer's) limit can be below the site's max_message_bytes
    if topic_ == topics.TELEMETRY:
        return kafka_errors.MessageSizeTooLargeError("too large")
    return None


@pytest.mark.parametrize("sync", [True, False], ids=["send raises", "future fails"])
def test_a_message_kafka_refuses_is_dead_lettered_and_acknowledged(sync: bool) -> None:
    """Before: a send that raised escaped the MQTT callback (never acknowledged, never
    pending) and a refused future was sent again forever, blocking every later ack."""
    b, client = bridge(Producer(too_large, sync=sync))
    deliver(b, 1, container(node="n1"))
    deliver(b, 2, container(cpu_s=3))
    for _ in range(3):
        b._ack_ready()
    assert client.acks == [1, 2]
    assert [t for t, _ in b.producer.sent] == [topics.DEADLETTER, topics.DEADLETTER]
    dl = operator_messages.DeadLetter.model_validate_json(b.producer.sent[0][1])
    assert "Kafka refused the message" in dl.reason and "too large" in dl.reason
    assert dl.origin == f"mqtt:{topic()}" and '"container":"web-1"' in dl.raw
    assert b.counts["kafka_refused"] == 2 and not b.pending


def test_a_refused_dead_letter_is_logged_and_acknowledged_not_retried_forever() -> None:
    b, client = bridge(Producer(lambda t, v: kafka_errors.MessageSizeTooLargeError("no")))
    deliver(b, 7, container())
    for _ in range(3):
        b._ack_ready()
    assert client.acks == [7] and b.counts["dead_letter_refused"] == 1 and not b.pending


def test_kafka_unavailable_is_retried_in_order_not_dead_lettered() -> None:
    down = {"on": True}
    b, client = bridge(
        Producer(lambda t, v: kafka_errors.KafkaTimeoutError("down") if down["on"] else None)
    )
    deliver(b, 1, container())
    deliver(b, 2, container(cpu_s=2))
    b._ack_ready()
    assert client.acks == [] and b.counts["kafka_retries"] == 1
    down["on"] = False
    for _ in range(3):
        b._ack_ready()
    assert client.acks == [1, 2]
    assert [t for t, _ in b.producer.sent] == [topics.TELEMETRY, topics.TELEMETRY]


def test_invalid_messages_are_acknowledged_and_logged_once_per_source(caplog) -> None:
    b, client = bridge(Producer(lambda t, v: None))
    for mid in range(1, 51):
        deliver(b, mid, container(c="ghost-1"))
    b._ack_ready()
    assert client.acks == list(range(1, 51))
    assert b.counts["dead_lettered"] == 50
    lines = [r for r in caplog.records if "dead-lettered" in r.getMessage()]
    assert len(lines) == 1 and "ghost-1" in lines[0].getMessage()


def test_rate_limited_log_is_bounded_and_reports_what_it_suppressed(caplog) -> None:
    rl = RateLimitedLog(interval_s=60, max_keys=10)
    assert rl.warn("a", "first", now=0) and not rl.warn("a", "again", now=1)
    assert rl.warn("a", "later", now=61)
    assert "1 more since the last report" in caplog.records[-1].getMessage()
    for i in range(1_000):
        rl.warn(f"k{i}", "x", now=100)
    assert len(rl._last) <= 10
