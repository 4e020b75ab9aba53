"""The embedded MQTT broker with the site's password file and ACLs, on the real brokers
(mosquitto, and the amqtt fallback): no anonymous or wrong-password client, a device or
an app publishes only its own topics (B4), and only the bridge reads telemetry (B3)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecovisor.adapters.mqtt import mqtt_client
from ecovisor.contract import bus_access as ba
from ecovisor.contract import topics
from ecovisor.contract.config_file import parse_config
from ecovisor.embedded import servers
from ecovisor.embedded.mqtt_auth import BrokerAuth

pytestmark = pytest.mark.integration

KEY = "integration-key-0123456789"
CFG = parse_config(
    """
site:
  id: s1
  shape: {solar_nameplate_w: 100, battery_capacity_wh: 10}
  nodes: [{id: n1, cores: 2}, {id: n2, cores: 2}]
  solar: {type: pvanalytics, id: pv}
  battery: {type: simulated, id: bat}
apps:
  - id: web
    token: web-token-123456
    containers: [{id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: e/web-1}}]
  - id: batch
    token: batch-token-654321
    containers: [{id: batch-1, node: n2, backend: {type: cgroup_v1, cgroup: e/batch-1}}]
"""
)


def brokers() -> list[Any]:
    out = [pytest.param("amqtt", id="amqtt")]
    reason = "mosquitto is not installed (scripts/install-system-deps.sh installs it)"
    mark = pytest.mark.skipif(servers.mosquitto_path() is None, reason=reason)
    return [pytest.param("mosquitto", id="mosquitto", marks=mark), *out]


@pytest.fixture(params=brokers())
def broker(request: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    if request.param == "amqtt":
        monkeypatch.setattr(servers, "mosquitto_path", lambda: None)
    port = servers.free_port()
    cmd = servers.mqtt_command(port, tmp_path / "mqtt", BrokerAuth.of(CFG, KEY))
    srv = servers.Server(cmd, port, tmp_path / "mqtt.log").start()
    yield port
    srv.stop()


class Client:
    def __init__(self, port: int, user: str | None, password: str | None = None) -> None:
        pw = password if password is not None else ba.mqtt_password(CFG, user or "", KEY)
        creds = (user, pw) if user and pw else None
        self.c = mqtt_client(f"t-{user}-{time.monotonic_ns()}", credentials=creds)
        self.rc: list[Any] = []
        self.got: list[str] = []
        self.c.on_connect = lambda c, u, f, rc, p: self.rc.append(rc)
        self.c.on_message = lambda c, u, m: self.got.append(m.topic)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        deadline = time.monotonic() + 10
        while not self.rc and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def admitted(self) -> bool:
        return bool(self.rc) and not self.rc[0].is_failure

    def publish(self, kind: str, source: str) -> None:
        self.c.publish(topics.mqtt_telemetry("s1", kind, source), b"{}", qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def test_only_the_sites_principals_log_in(broker: int) -> None:
    assert not Client(broker, None).admitted  # anonymous
    assert not Client(broker, "bridge", "wrong-password-123").admitted
    assert not Client(broker, "app-web", "batch-token-654321").admitted  # another's token
    assert not Client(broker, "stranger", "whatever-12345").admitted
    for p in ba.mqtt_principals(CFG):
        c = Client(broker, p.username)
        assert c.admitted, p.username
        c.close()


def test_each_principal_reaches_the_bridge_only_through_its_own_topics(broker: int) -> None:
    bridge = Client(broker, "bridge")
    bridge.c.subscribe(topics.mqtt_site_telemetry("s1"), qos=1)
    snoop = Client(broker, "app-web")  # an app trying to read everybody's telemetry
    snoop.c.subscribe("ecovisor/#", qos=1)
    time.sleep(0.5)
    allowed = [("node-n1", "container", "ctr-web-1"), ("node-n2", "container", "ctr-batch-1"),
               ("device-pv", "solar", "pv"), ("device-bat", "battery", "bat"),
               ("app-web", "app_metrics", "app-web")]  # fmt: skip
    forged = [("node-n1", "container", "ctr-batch-1"),  # another node's container
              ("device-pv", "carbon", "pv"), ("device-pv", "solar", "pv2"),
              ("device-bat", "solar", "pv"),
              ("app-web", "app_metrics", "app-batch"),  # another app's metrics
              ("app-web", "container", "ctr-web-1")]  # fmt: skip
    for user, kind, source in forged + allowed:
        c = Client(broker, user)
        c.publish(kind, source)
        c.close()
    want = {topics.mqtt_telemetry("s1", k, s) for _, k, s in allowed}
    deadline = time.monotonic() + 5
    while set(bridge.got) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # anything forged would have arrived by now too
    assert sorted(bridge.got) == sorted(want)
    assert snoop.got == []
    bridge.close()
    snoop.close()


def test_an_app_cannot_take_over_the_bridges_session(broker: int) -> None:
    """A broker keeps one session per client id: a client connecting with a taken id
    disconnects the other. The bridge's id was public (ecovisor-bridge-<site>), so an app
    with its own token could keep the bridge off the bus. A principal's client id is now
    tagged with a secret only it has (``session_client_id``)."""
    import paho.mqtt.client as paho

    creds = ("bridge", ba.mqtt_password(CFG, "bridge", KEY) or "")
    bridge = mqtt_client("ecovisor-bridge-s1", clean_session=False, credentials=creds)
    assert bridge._client_id.decode() == ba.session_client_id("ecovisor-bridge-s1", creds)
    drops: list[Any] = []
    got: list[str] = []
    bridge.on_connect = lambda c, u, f, rc, p: c.subscribe(topics.mqtt_site_telemetry("s1"), 1)
    bridge.on_disconnect = lambda c, u, f, rc, p: drops.append(rc)
    bridge.on_message = lambda c, u, m: got.append(m.topic)
    bridge.connect("127.0.0.1", broker)
    bridge.loop_start()
    time.sleep(0.5)
    thief = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id="ecovisor-bridge-s1")
    thief.username_pw_set("app-web", "web-token-123456")
    thief.connect("127.0.0.1", broker)
    thief.loop_start()
    time.sleep(1.0)
    web = Client(broker, "app-web")
    web.publish("app_metrics", "app-web")
    deadline = time.monotonic() + 5
    while not got and time.monotonic() < deadline:
        time.sleep(0.05)
    thief.loop_stop()
    web.close()
    bridge.loop_stop()
    assert drops == [], "the bridge was disconnected by a client with its public id"
    assert got == [topics.mqtt_telemetry("s1", "app_metrics", "app-web")]
