"""The battery path: bounded de-duplication (one setpoint id per tick, forever), and an
acknowledgement that tells what happened to the setpoint while MQTT is down or slow
(paho's own client, not connected to any broker; or a fake client)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from paho.mqtt.enums import MQTTErrorCode

from actuators.battery import BatteryActuator, MqttSender
from actuators.state import ActuatorState
from ecovisor.contract.actuation import ActuatorAck, BatterySetpoint
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.envelope import utcnow
from ecovisor.core.recent_ids import RecentIds

SITE = """
schema_version: 1
site:
  id: s1
  nodes: [{id: n1, cores: 2, power_model: {preset: ecovisor-microserver}}]
  battery: {type: simulated, id: bat-1}
apps: []
"""
TOPIC = "ecovisor/s1/control/battery/bat-1"


def setpoint(cid: str, rate: float = 1.0) -> BatterySetpoint:
    return BatterySetpoint(
        site="s1", time=utcnow(), command_id=cid, charge_rate_w=rate, max_discharge_w=5.0
    )


class Sink(list):
    def __call__(self, topic: str, key: str, value: bytes) -> None:
        self.append((topic, value))

    def acks(self) -> list[ActuatorAck]:
        return [ActuatorAck.model_validate_json(v) for t, v in self if t.endswith("acks")]


# --- bounded de-duplication ------------------------------------------------------------


def test_seen_setpoint_ids_stay_bounded_and_recent_duplicates_are_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(RecentIds, "DEFAULT_LIMIT", 50)  # the shared rule's bound, small
    sent: list[tuple[str, bytes]] = []
    act = BatteryActuator(parse_config(SITE), lambda t, p: sent.append((t, p)), Sink())
    for k in range(120):  # the ledger's one setpoint per tick
        assert act.handle(setpoint(f"s1-tick-{k}")) is not None
    assert len(act.seen) == 50
    assert act.handle(setpoint("s1-tick-119")) is None  # a recent duplicate: refused
    assert act.handle(setpoint("s1-tick-75")) is None
    assert len(sent) == 120
    # the container actuator keeps its ids by the same rule
    assert isinstance(ActuatorState().seen, RecentIds) and ActuatorState().seen.limit == 50


def test_recent_ids_forget_the_oldest_first() -> None:
    ids = RecentIds(3)
    for x in "abcb":
        ids.add(x)
    assert len(ids) == 3 and all(x in ids for x in "abc")
    ids.add("d")
    assert "a" not in ids and all(x in ids for x in "bcd")
    with pytest.raises(ValueError):
        RecentIds(0)


# --- the acknowledgement tells the truth while MQTT is down ----------------------------


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def offline() -> Iterator[MqttSender]:
    """The real sender with paho's client, its broker down."""
    sender = MqttSender.connect("127.0.0.1", closed_port(), "test-actuator", timeout=0.2)
    yield sender
    sender.close()


def test_a_setpoint_while_disconnected_is_not_queued_and_the_ack_says_not_sent(
    offline: MqttSender,
) -> None:
    act = BatteryActuator(parse_config(SITE), offline, sink := Sink())
    ack = act.handle(setpoint("t1"))
    assert ack is not None and not ack.ok and "not sent" in (ack.error or "")
    # paho would otherwise deliver it on reconnect, after this ack said it failed
    assert offline.client.drop_out_messages() == []
    assert offline.client.max_queued_messages == 1  # the queue is bounded too
    assert [a.ok for a in sink.acks()] == [False]


def test_a_connection_lost_during_the_publish_leaves_nothing_queued(
    offline: MqttSender, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the connection drops between the check and the publish: paho queues the message
    monkeypatch.setattr(offline.client, "is_connected", lambda: True)
    with pytest.raises(ConnectionError, match="not sent: the connection to the MQTT broker"):
        offline(TOPIC, setpoint("t2").to_json())
    assert offline.client.drop_out_messages() == []


@dataclass
class Info:
    rc: MQTTErrorCode
    published: bool = False

    def wait_for_publish(self, timeout: float | None = None) -> None:
        pass

    def is_published(self) -> bool:
        return self.published


class SlowBroker:
    """A connected client whose broker never confirms (or whose queue is full)."""

    def __init__(self, rc: MQTTErrorCode = MQTTErrorCode.MQTT_ERR_SUCCESS) -> None:
        self.rc = rc

    def is_connected(self) -> bool:
        return True

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Info:
        assert (qos, retain) == (1, True)
        return Info(self.rc)


def test_a_missing_puback_is_an_unknown_outcome() -> None:
    act = BatteryActuator(parse_config(SITE), MqttSender(SlowBroker(), timeout=0.01), Sink())
    ack = act.handle(setpoint("t3"))
    assert ack is not None and not ack.ok
    assert "outcome unknown" in (ack.error or "") and "may still reach" in (ack.error or "")


def test_a_full_queue_is_not_sent() -> None:
    sender = MqttSender(SlowBroker(MQTTErrorCode.MQTT_ERR_QUEUE_SIZE), timeout=0.01)
    act = BatteryActuator(parse_config(SITE), sender, Sink())
    ack = act.handle(setpoint("t4"))
    assert ack is not None and not ack.ok
    assert "not sent: the broker has not confirmed the previous setpoint" in (ack.error or "")
