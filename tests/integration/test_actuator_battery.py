"""Battery actuator process end to end on real brokers: BatterySetpoint on Kafka ->
``python -m actuators.battery`` -> MQTT control topic (QoS 1, retained) -> ack on Kafka."""

from __future__ import annotations

import queue
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ecovisor.contract import topics
from ecovisor.contract.actuation import BatterySetpoint
from ecovisor.contract.envelope import utcnow
from tests.fakes.actuator_bus import Bus, start_service, stop_service

pytestmark = pytest.mark.integration


def test_setpoint_reaches_device_topic_and_is_acknowledged(
    kafka_bootstrap: str, mqtt_server, tmp_path: Path
) -> None:
    site = f"b{uuid.uuid4().hex[:8]}"
    cfg = tmp_path / "site.yaml"
    cfg.write_text(
        f"""
schema_version: 1
site: {{id: {site}, battery: {{type: simulated, id: bat-1}}}}
stack: {{kafka_bootstrap: "{kafka_bootstrap}", mqtt_port: {mqtt_server.port}}}
"""
    )
    got: queue.Queue[tuple[str, bytes, bool]] = queue.Queue()
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-{site}")
    sub.on_connect = lambda c, u, f, rc, p: c.subscribe(f"ecovisor/{site}/control/#", qos=1)
    sub.on_message = lambda c, u, m: got.put((m.topic, m.payload, m.retain))
    sub.connect("127.0.0.1", mqtt_server.port)
    sub.loop_start()
    bus = Bus(kafka_bootstrap)
    bus.tail(topics.ACTUATOR_ACKS)
    proc = start_service("actuators.battery", cfg, tmp_path / "battery.log")
    try:
        sp = BatterySetpoint(
            site=site,
            time=utcnow(),
            command_id=f"sp-{site}",
            charge_rate_w=2.5,
            max_discharge_w=7.0,
        )
        bus.send(topics.ACTUATOR_BATTERY, site, sp.to_json())
        ack = bus.wait_ack(sp.command_id, timeout=30)
        assert ack.ok and ack.actuator == "battery" and ack.applied["device"] == "bat-1"
        topic, payload, _ = got.get(timeout=5)
        assert topic == topics.mqtt_battery_control(site, "bat-1")
        assert BatterySetpoint.model_validate_json(payload) == sp
    finally:
        assert stop_service(proc) == 0  # SIGTERM: clean exit
        sub.loop_stop()
        sub.disconnect()
        bus.close()
    # retained: a device (re)connecting later gets the setpoint in force at once
    late: queue.Queue[bool] = queue.Queue()
    dev = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{site}")
    dev.on_connect = lambda c, u, f, rc, p: c.subscribe(
        topics.mqtt_battery_control(site, "bat-1"), 1
    )
    dev.on_message = lambda c, u, m: late.put(m.retain)
    dev.connect("127.0.0.1", mqtt_server.port)
    dev.loop_start()
    try:
        assert late.get(timeout=5) is True
    finally:
        dev.loop_stop()
        dev.disconnect()
