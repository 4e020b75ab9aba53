"""Battery actuator service: ``python -m actuators.battery --config FILE``.

Consumes aggregate ``BatterySetpoint`` messages (Σ grid->battery charge rates, Σ max
discharge limits of a site, computed by the ledger) from Kafka
``ecovisor.actuator.battery`` and forwards each, unchanged as JSON, to the battery charge
controller device over MQTT ``ecovisor/<site>/control/battery/<device>`` with QoS 1 and
the retain flag (a device that restarts gets the setpoint in force at once). The
acknowledgement (``ActuatorAck``, actuator ``battery``) is published to
``ecovisor.actuator.acks`` once the broker has confirmed the publish (PUBACK). A setpoint
is only published while connected, never queued for a reconnect, so ``ok=False`` means
not sent, except when the broker does not confirm within the timeout: then the reason
says the outcome is unknown.

Idempotent by command_id; on start the latest setpoint per device is re-read from Kafka
and re-sent. See docs/actuators.md.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from actuators.kafka_io import (
    Publish,
    Service,
    Signer,
    parser,
    run_actuator,
    serve,
    service_args,
)
from ecovisor.contract import topics
from ecovisor.contract.actuation import ActuatorAck, BatterySetpoint
from ecovisor.contract.bus_access import ACTUATOR_BATTERY, mqtt_credentials, site_source_id
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.environment import internal_key, mqtt_endpoint
from ecovisor.core.recent_ids import RecentIds

ACTUATOR = "battery"
log = logging.getLogger("actuators.battery")

MqttSend = Callable[[str, bytes], None]  # raises on failure


class BatteryActuator:
    """Setpoints in, MQTT out, acknowledgements back. I/O injected."""

    def __init__(
        self,
        cfg: EcovisorConfig,
        send: MqttSend,
        publish: Publish,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self.site = cfg.site.id
        self.default_device = site_source_id(cfg, "battery")
        self.send, self.publish, self.clock = send, publish, clock
        # one setpoint per tick forever: the last 100,000 ids (the product's one rule)
        self.seen = RecentIds()
        self.latest: dict[str, BatterySetpoint] = {}
        self.signer = Signer(internal_key(cfg), ACTUATOR, log)

    def device_of(self, sp: BatterySetpoint) -> str:
        return sp.device or self.default_device

    def handle(self, sp: BatterySetpoint) -> ActuatorAck | None:
        if sp.site != self.site:
            return None
        if not self.signer.accepts(sp):
            # before the dedupe: a forged copy must not shadow the real setpoint
            log.warning("refusing unsigned/forged setpoint %s", sp.command_id)
            self.signer.refuse(self.publish, self.site, topics.ACTUATOR_BATTERY, sp)
            return None
        if sp.command_id in self.seen:
            return None
        self.seen.add(sp.command_id)
        self.latest[self.device_of(sp)] = sp
        return self._forward(sp)

    def _forward(self, sp: BatterySetpoint) -> ActuatorAck:
        device = self.device_of(sp)
        topic = topics.mqtt_battery_control(self.site, device)
        try:
            self.send(topic, sp.to_json())
        except Exception as e:  # any transport failure is a reported failure
            log.warning("setpoint %s to %s failed: %s", sp.command_id, topic, e)
            return self._ack(sp, ok=False, error=f"battery controller {device}: {e}")
        return self._ack(
            sp,
            ok=True,
            applied={
                "device": device,
                "mqtt_topic": topic,
                "charge_rate_w": sp.charge_rate_w,
                "max_discharge_w": sp.max_discharge_w,
                "net_power_w": sp.net_power_w,
            },
        )

    def _ack(self, sp: BatterySetpoint, ok: bool, applied=None, error=None) -> ActuatorAck:
        ack = ActuatorAck(
            site=self.site,
            time=self.clock(),
            command_id=sp.command_id,
            actuator=ACTUATOR,
            ok=ok,
            applied=applied or {},
            error=error,
        )
        ack = self.signer.ack(ack)
        self.publish(topics.ACTUATOR_ACKS, self.site, ack.to_json())
        return ack

    def restore(self, history: Iterable[BatterySetpoint], acked: set[str]) -> int:
        """Re-send the latest setpoint per device. Commands never acknowledged (the
        previous run stopped first) are acknowledged now: the latest by forwarding it,
        older ones as superseded (ok=False, they never reached the device)."""
        mine = []
        refused = 0
        for sp in history:
            if sp.site != self.site or sp.command_id in self.seen:
                continue
            if not self.signer.accepts(sp):  # forged, or written before the key
                refused += 1
                continue
            self.seen.add(sp.command_id)
            self.latest[self.device_of(sp)] = sp
            mine.append(sp)
        if refused:
            log.warning("ignoring %d unsigned/forged setpoint(s) in the topic's history", refused)
        latest_ids = {sp.command_id for sp in self.latest.values()}
        for sp in mine:
            if sp.command_id not in acked and sp.command_id not in latest_ids:
                newer = self.latest[self.device_of(sp)].command_id
                self._ack(sp, ok=False, error=f"superseded by {newer} before it was applied")
        for sp in self.latest.values():
            if sp.command_id not in acked:
                self._forward(sp)
                continue
            topic = topics.mqtt_battery_control(self.site, self.device_of(sp))
            try:
                self.send(topic, sp.to_json())
            except Exception as e:  # reported, retried by the next setpoint
                log.warning("re-sending setpoint %s failed: %s", sp.command_id, e)
        return len(mine)


class NotSent(ConnectionError):
    """The setpoint was not published and nothing of it is left to be sent later."""


class OutcomeUnknown(TimeoutError):
    """Published, but the broker did not confirm it in time: it may still arrive."""


class MqttSender:
    """paho-mqtt client publishing QoS 1 + retain, waiting for the broker's PUBACK, so
    that what it raises is what happened. paho queues a QoS 1 message published while
    disconnected (without limit, by default) and delivers it on reconnect, after the ack
    said it failed: here a setpoint is published only while connected, and paho's queue
    holds one message at most (the one awaiting its PUBACK)."""

    def __init__(self, client: Any, timeout: float = 5.0) -> None:
        self.client = client
        self.timeout = timeout

    @classmethod
    def connect(
        cls,
        host: str,
        port: int,
        client_id: str,
        timeout: float = 5.0,
        credentials: tuple[str, str] | None = None,
    ) -> MqttSender:
        """Connect in the background and wait up to ``timeout`` for the connection (the
        restore re-sends the latest setpoints right after the start)."""
        from ecovisor.adapters.mqtt import connect_in_background, mqtt_client

        client = mqtt_client(
            client_id, reconnect_min_s=0.2, reconnect_max_s=5, credentials=credentials
        )
        client.max_queued_messages_set(1)  # settable only before connecting
        connect_in_background(client, host, port)
        deadline = time.monotonic() + timeout
        while not client.is_connected() and time.monotonic() < deadline:
            time.sleep(0.02)
        if not client.is_connected():
            log.warning("MQTT broker %s:%d not reachable yet: setpoints fail until it is",
                        host, port)  # fmt: skip
        return cls(client, timeout)

    def __call__(self, topic: str, payload: bytes) -> None:
        from paho.mqtt.client import error_string
        from paho.mqtt.enums import MQTTErrorCode

        if not self.client.is_connected():
            raise NotSent("not sent: not connected to the MQTT broker")
        info = self.client.publish(topic, payload, qos=1, retain=True)
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            # the connection dropped between the check and the publish: paho kept the
            # message for the reconnect. It is the only one queued (the queue holds one,
            # and ours got in) and was never written, so withdrawing it is safe.
            self.client.drop_out_messages()
            raise NotSent("not sent: the connection to the MQTT broker dropped")
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            raise NotSent("not sent: the broker has not confirmed the previous setpoint yet")
        if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise NotSent(f"not sent: {error_string(info.rc)}")
        info.wait_for_publish(timeout=self.timeout)
        if not info.is_published():
            # paho keeps it and resends it after a reconnect; the PUBACK may be late
            raise OutcomeUnknown(
                f"outcome unknown: the MQTT broker did not confirm within {self.timeout:g} s; "
                "the setpoint may still reach the device"
            )

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


parse_setpoint = parser(BatterySetpoint, log)


def run(cfg: EcovisorConfig, stop: threading.Event, fetch_wait_ms: int) -> None:
    def start(publish: Publish, acks: list[ActuatorAck]) -> Service[BatterySetpoint]:
        host, port = mqtt_endpoint(cfg)
        client_id = f"ecovisor-{cfg.site.id}-actuator-battery"
        credentials = mqtt_credentials(cfg, ACTUATOR_BATTERY)
        sender = MqttSender.connect(host, port, client_id, credentials=credentials)
        act = BatteryActuator(cfg, sender, publish)
        acked = {a.command_id for a in acks}
        log.info("forwarding setpoints to MQTT %s:%d", host, port)
        return Service(lambda history: act.restore(history, acked), act.handle, sender.close)

    run_actuator(cfg, stop, ACTUATOR, topics.ACTUATOR_BATTERY, fetch_wait_ms, parse_setpoint, start)


def main(argv: list[str] | None = None) -> int:
    args = service_args("actuators.battery", __doc__).parse_args(argv)
    return serve(
        "actuators.battery", args.config, lambda cfg, stop: run(cfg, stop, args.fetch_wait_ms)
    )


if __name__ == "__main__":
    sys.exit(main())
