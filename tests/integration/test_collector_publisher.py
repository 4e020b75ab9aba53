"""The shared publisher survives MQTT broker loss: a real mosquitto (or amqtt) broker is
stopped and restarted while messages are published. Within the buffer bound no sample is
lost; beyond it the drops are counted exactly."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collectors.publisher import Publisher
from ecovisor.contract import topics
from ecovisor.contract.telemetry import SolarTelemetry, parse_telemetry

pytestmark = pytest.mark.integration


class Subscriber:
    """A persistent-session (clean_session=False) QoS 1 subscriber collecting seqs."""

    def __init__(self, port: int, pattern: str) -> None:
        self.seqs: list[int] = []
        self.lock = threading.Lock()
        self.subscribed = threading.Event()
        c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{uuid.uuid4().hex[:8]}",
            clean_session=False,
        )
        c.reconnect_delay_set(0.1, 0.5)
        c.on_connect = lambda cl, u, f, rc, p: cl.subscribe(pattern, qos=1)
        c.on_subscribe = lambda *a: self.subscribed.set()
        c.on_message = self._on_message
        c.connect("127.0.0.1", port)
        c.loop_start()
        self.client = c
        assert self.subscribed.wait(5), "subscriber did not subscribe"

    def _on_message(self, cl: object, u: object, msg: mqtt.MQTTMessage) -> None:
        with self.lock:
            self.seqs.append(parse_telemetry(msg.payload).seq)

    def unique(self) -> set[int]:
        with self.lock:
            return set(self.seqs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _wait(pred, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return pred()


def test_seq_starts_after_any_previous_run() -> None:
    a = Publisher("t", "127.0.0.1", 1, client_id="x")
    first = a.next_seq("s")
    assert a.next_seq("s") == first + 1
    time.sleep(0.01)
    b = Publisher("t", "127.0.0.1", 1, client_id="x")  # a restarted collector
    assert b.next_seq("s") > first + 1


def _publish(pub: Publisher, n: int) -> None:
    for _ in range(n):
        pub.publish(SolarTelemetry, "pv-test", power_w=1.0, energy_j=0.0)


def test_broker_restart_loses_nothing_within_bound(mqtt_server) -> None:
    sub = Subscriber(mqtt_server.port, topics.mqtt_telemetry("t", "solar", "+"))
    pub = Publisher(
        "t", "127.0.0.1", mqtt_server.port, client_id="test-pub-1", buffer_max=500, seq_start=0
    )
    pub.start(wait_s=5)
    try:
        assert pub.connected
        _publish(pub, 20)
        assert _wait(lambda: len(sub.unique()) == 20, 5)
        mqtt_server.stop()
        assert _wait(lambda: not pub.connected, 5)
        _publish(pub, 30)  # broker down: buffered
        assert pub.stats.pending >= 30
        mqtt_server.start()
        _publish(pub, 20)
        assert _wait(lambda: sub.unique() == set(range(70)), 20), sorted(
            set(range(70)) - sub.unique()
        )
        assert pub.stats.dropped == 0
        assert _wait(lambda: pub.stats.pending == 0, 5)
        assert pub.stats.connects >= 2
    finally:
        pub.close(flush_s=0)
        sub.close()


def test_drops_counted_exactly_beyond_bound(mqtt_server) -> None:
    sub = Subscriber(mqtt_server.port, topics.mqtt_telemetry("t", "solar", "+"))
    pub = Publisher(
        "t", "127.0.0.1", mqtt_server.port, client_id="test-pub-2", buffer_max=10, seq_start=0
    )
    pub.start(wait_s=5)
    try:
        _publish(pub, 5)
        assert _wait(lambda: pub.stats.pending == 0, 5)
        mqtt_server.stop()
        assert _wait(lambda: not pub.connected, 5)
        _publish(pub, 25)  # 10 fit in the buffer, 15 are dropped (newest first)
        assert pub.stats.dropped == 15
        assert pub.stats.published == 15
        mqtt_server.start()
        expected = set(range(15))
        assert _wait(lambda: sub.unique() == expected, 20), sorted(sub.unique())
        time.sleep(0.3)
        assert sub.unique() == expected  # the dropped seqs 15..29 never arrive
        assert _wait(lambda: pub.stats.pending == 0, 5)
    finally:
        pub.close(flush_s=0)
        sub.close()
