import json
import time

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ecovisor.contract import topics

pytestmark = pytest.mark.integration


def read_to_end(cons: KafkaConsumer, tp: TopicPartition, timeout: float = 10.0) -> list[bytes]:
    """Every record of ``tp`` from the consumer's position to the partition's end as the
    broker's fetch responses report it (their high watermark): all that was produced
    before, without iterating until 5 s pass with no record (``consumer_timeout_ms``)."""
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values += [r.value for r in cons.poll(timeout_ms=200).get(tp, [])]
        end = cons.highwater(tp)
        if end is not None and cons.position(tp) >= end:
            return values
    raise AssertionError(f"{tp} not read to its end in {timeout} s; got {values[-3:]}")


def test_kafka_roundtrip_on_tansu(kafka_bootstrap: str) -> None:
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    prod.send(topics.ALERTS, b'{"probe": 1}').get(timeout=10)
    prod.close()
    cons = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
    tp = TopicPartition(topics.ALERTS, 0)
    cons.assign([tp])
    cons.seek_to_beginning(tp)
    values = read_to_end(cons, tp)
    cons.close()
    assert b'{"probe": 1}' in values


def test_mqtt_qos1_roundtrip(mqtt_server) -> None:  # type: ignore[no-untyped-def]
    got: list[bytes] = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-sub")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", mqtt_server.port)
    sub.subscribe("ecovisor/#", qos=1)
    sub.loop_start()
    time.sleep(0.3)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="t-pub")
    pub.connect("127.0.0.1", mqtt_server.port)
    pub.loop_start()
    pub.publish("ecovisor/s/telemetry/solar/pv", json.dumps({"x": 1}), qos=1).wait_for_publish(5)
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    pub.loop_stop()
    sub.loop_stop()
    assert got == [b'{"x": 1}']


def test_tansu_accepts_the_topic_configs_of_create_topics(kafka_bootstrap: str) -> None:
    """The retention and compaction configs (ecovisor.adapters.kafka.topic_config) do not
    make the embedded broker refuse a topic: created, written and read back."""
    import uuid

    from ecovisor.adapters.kafka import create_topics, existing_topics, topic_config

    sfx = uuid.uuid4().hex[:6]
    names = [topics.notifications(f"cfg-{sfx}"), f"ecovisor-ledger-{sfx}-snapshots-changelog"]
    assert all(topic_config(t) for t in names)
    create_topics(kafka_bootstrap, names)
    assert set(names) <= existing_topics(kafka_bootstrap)
    prod = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for t in names:
        prod.send(t, key=b"k", value=b"v").get(timeout=10)
    prod.close()
    for t in names:
        cons = KafkaConsumer(bootstrap_servers=kafka_bootstrap)
        tp = TopicPartition(t, 0)
        cons.assign([tp])
        cons.seek_to_beginning(tp)
        assert read_to_end(cons, tp) == [b"v"], t
        cons.close()
