"""The MQTT adapter (paho-mqtt): one way to make a client, for the collectors, the
battery device simulation, the battery actuator and the bridge.

paho's network thread connects, and reconnects after every loss, by itself, waiting
``reconnect_min_s`` doubling up to ``reconnect_max_s``: no retry loop of ours.
"""

from __future__ import annotations

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from ecovisor.contract.bus_access import session_client_id

RECONNECT_MIN_S = 0.2
RECONNECT_MAX_S = 10.0
KEEPALIVE_S = 10


def mqtt_client(
    client_id: str,
    *,
    reconnect_min_s: float = RECONNECT_MIN_S,
    reconnect_max_s: float = RECONNECT_MAX_S,
    clean_session: bool = True,
    manual_ack: bool = False,
    credentials: tuple[str, str] | None = None,
) -> mqtt.Client:
    """A paho client (callback API v2, MQTT 3.1.1). ``clean_session=False`` keeps the
    subscription and unacknowledged QoS 1 messages at the broker across reconnects (the
    bridge); ``manual_ack`` acknowledges a message only when the caller says so. Logged
    in, its client id is ``client_id`` tagged for its principal (``session_client_id``)."""
    c = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=session_client_id(client_id, credentials),
        clean_session=clean_session,
        protocol=mqtt.MQTTv311,
        manual_ack=manual_ack,
    )
    c.reconnect_delay_set(min_delay=reconnect_min_s, max_delay=reconnect_max_s)
    if credentials is not None:
        c.username_pw_set(*credentials)
    return c


def connect_in_background(
    client: mqtt.Client, host: str, port: int, keepalive_s: int = KEEPALIVE_S
) -> None:
    """Start paho's network thread, which connects (and reconnects) on its own."""
    client.connect_async(host, port, keepalive=keepalive_s)
    client.loop_start()
