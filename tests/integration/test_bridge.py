"""The MQTT->Kafka bridge on real servers (tansu + mosquitto/amqtt), as a real process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from kafka import KafkaConsumer, TopicPartition

from ecovisor.contract import operator_messages, telemetry, topics
from ecovisor.embedded.servers import Server

pytestmark = pytest.mark.integration

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)


def _config(tmp: Path, site: str, bootstrap: str, mqtt_port: int) -> Path:
    # the bridge forwards container telemetry only for the site's own containers
    p = tmp / "site.yaml"
    p.write_text(
        f"schema_version: 1\nsite: {{id: {site}, nodes: [{{id: n1, cores: 2}}]}}\n"
        "apps:\n  - id: web\n    token: web-token-123456\n    containers:\n"
        "      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: t/web-1}}\n"
        f"stack: {{kafka_bootstrap: '{bootstrap}', mqtt_port: {mqtt_port}, "
        f"state_dir: '{tmp / 'state'}'}}\n"
    )
    return p


class BridgeProc:
    def __init__(self, config: Path, log: Path) -> None:
        self.config, self.log = config, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProc:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
        with self.log.open("ab") as fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "streams.bridge", "--config", str(self.config)],
                stdout=fh,
                stderr=subprocess.STDOUT,
                env=env,
            )
        return self

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(5)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


@pytest.fixture()
def site() -> str:
    return "t-" + uuid.uuid4().hex[:8]


@pytest.fixture()
def bridge(
    tmp_path: Path, site: str, kafka_bootstrap: str, mqtt_server: Server
) -> Iterator[BridgeProc]:
    b = BridgeProc(_config(tmp_path, site, kafka_bootstrap, mqtt_server.port),
                   tmp_path / "bridge.log").start()  # fmt: skip
    yield b
    b.stop()


class Reader:
    """Reads a topic from the offset it had when created (partition-assigned)."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.cons = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        self.tp = TopicPartition(topic, 0)
        self.cons.assign([self.tp])
        self.cons.seek_to_end(self.tp)
        self.cons.position(self.tp)

    def read(self, until: int, key: bytes, timeout: float = 20.0) -> list[dict]:
        out: list[dict] = []
        deadline = time.monotonic() + timeout
        while len(out) < until and time.monotonic() < deadline:
            for recs in self.cons.poll(timeout_ms=300).values():
                out += [json.loads(r.value) for r in recs if r.key == key]
        return out

    def close(self) -> None:
        self.cons.close()


def _container(site: str, seq: int, container: str = "web-1", app: str = "web",
               source: str = "pm") -> bytes:  # fmt: skip
    m = telemetry.ContainerTelemetry(site=site, time=T0, source=source, seq=seq, app=app,
                                     container=container, cpu_s=seq, energy_j=seq)  # fmt: skip
    return m.to_json()


def _publisher(port: int, name: str) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"{name}-{uuid.uuid4().hex[:6]}")
    c.max_inflight_messages_set(200)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def _wait_subscribed(pub: mqtt.Client, reader: Reader, site: str) -> None:
    """Publish probes until the bridge forwards one (it subscribes asynchronously)."""
    for i in range(100):
        probe = telemetry.SolarTelemetry(
            site=site, time=T0, source="probe", seq=i, power_w=0, energy_j=0
        )
        pub.publish(topics.mqtt_telemetry(site, "solar", "probe"), probe.to_json(), qos=1)
        if reader.read(1, site.encode(), timeout=0.3):
            return
    raise AssertionError("bridge never forwarded a probe")


def test_telemetry_reaches_kafka_unchanged(
    bridge: BridgeProc, site: str, kafka_bootstrap: str, mqtt_server: Server
) -> None:
    reader = Reader(kafka_bootstrap, topics.TELEMETRY)
    pub = _publisher(mqtt_server.port, "pub")
    _wait_subscribed(pub, reader, site)
    reader.read(100, site.encode(), timeout=0.5)  # drain late probes
    sent = [
        telemetry.SolarTelemetry(site=site, time=T0, source="pv-1", seq=1, power_w=12.5,
                                 energy_j=4500.0),
        telemetry.ContainerTelemetry(site=site, time=T0, source="power", seq=7, app="web",
                                     container="web-1", node="n1", cpu_s=3.25, energy_j=17.5),
        telemetry.CarbonTelemetry(site=site, time=T0, source="c-1", seq=3,
                                  intensity_g_per_kwh=231.0),
    ]  # fmt: skip
    for m in sent:
        pub.publish(topics.mqtt_telemetry(site, m.kind, m.source), m.to_json(), qos=1)
    got = [g for g in reader.read(3, site.encode()) if g["source"] != "probe"]
    pub.loop_stop()
    reader.close()
    assert got == [json.loads(m.model_dump_json()) for m in sent]
    assert [telemetry.parse_telemetry(json.dumps(g)) for g in got] == sent


def test_malformed_and_invalid_go_to_deadletter(
    bridge: BridgeProc, site: str, kafka_bootstrap: str, mqtt_server: Server
) -> None:
    tel = Reader(kafka_bootstrap, topics.TELEMETRY)
    dead = Reader(kafka_bootstrap, topics.DEADLETTER)
    pub = _publisher(mqtt_server.port, "pub")
    _wait_subscribed(pub, tel, site)
    good = telemetry.SolarTelemetry(site=site, time=T0, source="pv-1", seq=1, power_w=1, energy_j=1)
    bad_field = good.model_dump(mode="json") | {"power_w": -5}
    bad = [
        (topics.mqtt_telemetry(site, "solar", "pv-1"), b"{not json", "invalid telemetry"),
        (topics.mqtt_telemetry(site, "solar", "pv-1"), json.dumps(bad_field).encode(),
         "power_w"),
        (topics.mqtt_telemetry(site, "carbon", "pv-1"), good.to_json(), "kind 'solar'"),
        (topics.mqtt_telemetry(site, "solar", "other"), good.to_json(), "source 'pv-1'"),
        (topics.mqtt_telemetry(site, "solar", "pv-1"), b"\xff\xfe\x00binary", "invalid"),
        # strict types: a JSON true is not a number
        (topics.mqtt_telemetry(site, "solar", "pv-1"),
         json.dumps(good.model_dump(mode="json") | {"power_w": True}).encode(), "power_w"),
        # valid telemetry, but for a container the site does not have, or not the app's
        (topics.mqtt_telemetry(site, "container", "pm"), _container(site, 1, "ghost-1"),
         "container 'ghost-1' is not in site"),
        (topics.mqtt_telemetry(site, "container", "pm"), _container(site, 2, app="other"),
         "belongs to app 'web'"),
    ]  # fmt: skip
    for t, payload, _ in bad:
        pub.publish(t, payload, qos=1)
    pub.publish(topics.mqtt_telemetry(site, "solar", "pv-1"), good.to_json(), qos=1)
    letters = dead.read(len(bad), site.encode())
    # read up to the good message (published last, on the same connection: the bridge
    # forwards in order, so a bad one forwarded by mistake comes before it), not for 3 s
    after: list[dict] = []
    deadline = time.monotonic() + 20
    while not after and time.monotonic() < deadline:
        after += [g for g in tel.read(1, site.encode(), timeout=0.3) if g["source"] != "probe"]
    after += [g for g in tel.read(100, site.encode(), timeout=0.3) if g["source"] != "probe"]
    pub.loop_stop()
    tel.close()
    dead.close()
    assert len(letters) == len(bad)
    for (t, payload, why), dl in zip(bad, letters, strict=True):
        d = operator_messages.DeadLetter.model_validate(dl)
        assert d.origin == f"mqtt:{t}"
        assert why in d.reason
        assert d.raw == payload.decode("utf-8", "backslashreplace")
    # the bridge survived every bad message and still forwards good ones
    assert after == [json.loads(good.model_dump_json())]
    assert bridge.proc is not None and bridge.proc.poll() is None


def test_sigkill_mid_stream_loses_no_accepted_message(
    bridge: BridgeProc, site: str, kafka_bootstrap: str, mqtt_server: Server
) -> None:
    n = 2000
    reader = Reader(kafka_bootstrap, topics.TELEMETRY)
    pub = _publisher(mqtt_server.port, "pub")
    _wait_subscribed(pub, reader, site)
    infos: list[mqtt.MQTTMessageInfo] = []
    topic = topics.mqtt_telemetry(site, "container", "meter")
    seen: set[int] = set()
    killed_at = -1
    t0 = time.monotonic()
    for seq in range(n):
        m = telemetry.ContainerTelemetry(site=site, time=T0, source="meter", seq=seq, app="web",
                                         container="web-1", cpu_s=seq, energy_j=seq)  # fmt: skip
        infos.append(pub.publish(topic, m.to_json(), qos=1))
        if seq == n // 3:
            # let some flow through, then kill the bridge in the middle of the stream
            seen |= {g["seq"] for g in reader.read(50, site.encode(), 2) if g["source"] == "meter"}
            bridge.kill()
            killed_at = seq
        if seq == n // 2:
            bridge.start()  # same client id, persistent session: redelivery
        if seq % 200 == 0:
            time.sleep(0.01)
    deadline = time.monotonic() + 20
    while not all(i.is_published() for i in infos) and time.monotonic() < deadline:
        time.sleep(0.05)
    # every publish got its PUBACK: the broker accepted (and must deliver) all of them
    assert sum(i.is_published() for i in infos) == n
    while len(seen) < n and time.monotonic() < deadline + 10:
        seen |= {g["seq"] for g in reader.read(n, site.encode(), 1) if g["source"] == "meter"}
    elapsed = time.monotonic() - t0
    pub.loop_stop()
    reader.close()
    assert killed_at > 0
    # the restarted bridge resumed its persistent session (that is what redelivers)
    assert "session present: True" in bridge.log.read_text()
    assert len(seen) == n, f"lost {sorted(set(range(n)) - seen)[:20]}..."
    print(f"\n{n} QoS1 messages through a SIGKILLed+restarted bridge in {elapsed:.1f} s")


def test_bridge_reconnects_after_mqtt_broker_restart(
    bridge: BridgeProc, site: str, kafka_bootstrap: str, mqtt_server: Server
) -> None:
    reader = Reader(kafka_bootstrap, topics.TELEMETRY)
    pub = _publisher(mqtt_server.port, "pub")
    _wait_subscribed(pub, reader, site)
    pub.loop_stop()
    pub.disconnect()
    mqtt_server.stop()  # broker gone: the bridge must retry with backoff, not exit
    time.sleep(1.0)
    assert bridge.proc is not None and bridge.proc.poll() is None
    mqtt_server.start()  # same port, same persistence directory
    pub = _publisher(mqtt_server.port, "pub2")
    topic = topics.mqtt_telemetry(site, "solar", "pv-9")
    for seq in range(20):
        m = telemetry.SolarTelemetry(site=site, time=T0, source="pv-9", seq=seq, power_w=1,
                                     energy_j=seq)  # fmt: skip
        pub.publish(topic, m.to_json(), qos=1)
    got: set[int] = set()
    deadline = time.monotonic() + 20
    while len(got) < 20 and time.monotonic() < deadline:
        got |= {g["seq"] for g in reader.read(20, site.encode(), 1) if g["source"] == "pv-9"}
    pub.loop_stop()
    reader.close()
    assert got == set(range(20))
    log = bridge.log.read_text()
    assert log.count("MQTT connected") >= 2
    # the broker kept the bridge's session (and its subscription) across its restart
    assert "session present: True" in log


def test_telemetry_for_another_site_is_dead_lettered_with_the_reason(
    bridge: BridgeProc, site: str, kafka_bootstrap: str, mqtt_server: Server
) -> None:
    tel = Reader(kafka_bootstrap, topics.TELEMETRY)
    other = f"{site}-other"
    dead = Reader(kafka_bootstrap, topics.DEADLETTER)
    pub = _publisher(mqtt_server.port, "pub")
    _wait_subscribed(pub, tel, site)
    t = topics.mqtt_telemetry(other, "solar", "pv-1")
    m = telemetry.SolarTelemetry(site=other, time=T0, source="pv-1", seq=1, power_w=1, energy_j=1)
    pub.publish(t, m.to_json(), qos=1)
    letters = dead.read(1, other.encode())
    pub.loop_stop()
    tel.close()
    dead.close()
    (dl,) = [operator_messages.DeadLetter.model_validate(x) for x in letters]
    assert dl.origin == f"mqtt:{t}" and f"this bridge serves site {site!r}" in dl.reason


def _seqs(reader: Reader, site: str, source: str, want: set[int], timeout: float) -> set[int]:
    """The seqs of ``source`` read until ``want`` is complete or ``timeout``."""
    got: set[int] = set()
    deadline = time.monotonic() + timeout
    while not want <= got and time.monotonic() < deadline:
        got |= {g["seq"] for g in reader.read(1, site.encode(), 0.5) if g["source"] == source}
    return got


def test_oversized_telemetry_is_dead_lettered_acknowledged_and_never_stalls(
    bridge: BridgeProc, site: str, kafka_bootstrap: str, mqtt_server: Server
) -> None:
    """S2: schema-valid telemetry over 1 MB was neither dead-lettered, logged nor
    acknowledged (the Kafka producer refused it inside the MQTT callback); 100 of them
    filled the broker's in-flight window (100 here, as in the embedded stack), and
    container telemetry stopped, also after a bridge restart (redelivered, refused
    again). Now each is dead-lettered by size before parsing and acknowledged."""
    n_big = 110
    tel = Reader(kafka_bootstrap, topics.TELEMETRY)
    dead = Reader(kafka_bootstrap, topics.DEADLETTER)
    pub = _publisher(mqtt_server.port, "pub")
    _wait_subscribed(pub, tel, site)
    big_topic = topics.mqtt_telemetry(site, "carbon", "big")
    # a carbon forecast of 40,000 points: still over 1 MB once normalised to Kafka (the
    # contract now caps a forecast, but the size check comes first)
    point = '["2024-06-01T12:00:00Z",1.0]'
    big = [
        (f'{{"kind":"carbon","site":"{site}","time":"2024-06-01T12:00:00Z","source":"big",'
         f'"seq":{i},"intensity_g_per_kwh":1.0,"forecast":[{",".join([point] * 40_000)}]}}')
        .encode()
        for i in range(n_big)
    ]  # fmt: skip
    big_size = len(big[0])
    assert big_size > 1_100_000
    infos = [pub.publish(big_topic, payload, qos=1) for payload in big]
    meter = topics.mqtt_telemetry(site, "container", "meter")
    t0 = time.monotonic()
    for seq in range(20):
        pub.publish(meter, _container(site, seq, source="meter"), qos=1)
    got = _seqs(tel, site, "meter", set(range(20)), timeout=60)
    took = time.monotonic() - t0
    letters = [
        operator_messages.DeadLetter.model_validate(x)
        for x in dead.read(n_big, site.encode(), 60)
    ]
    assert got == set(range(20)), f"good telemetry stalled behind oversized messages: {got}"
    # the broker's PUBACKs reach the publisher's network thread on their own schedule: the
    # last ones can land after the dead letters are read (CI saw this once)
    deadline = time.monotonic() + 30
    while not all(i.is_published() for i in infos) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(i.is_published() for i in infos) == n_big
    assert len(letters) == n_big
    for dl in letters:
        assert dl.origin == f"mqtt:{big_topic}"
        assert "larger than site.limits.max_message_bytes (65536)" in dl.reason
        assert "truncated" in dl.raw and len(dl.raw) < 5_000
    # logged once for the source, not 110 times
    log = bridge.log.read_text()
    assert log.count(f"dead-lettered {big_topic}") == 1, log[-2000:]
    # every one was acknowledged: a restarted bridge gets none of them again, and new
    # telemetry flows at once
    bridge.stop()
    bridge.start()
    for seq in range(20, 40):
        pub.publish(meter, _container(site, seq, source="meter"), qos=1)
    after = _seqs(tel, site, "meter", set(range(20, 40)), timeout=30)
    again = dead.read(1, site.encode(), timeout=3)
    pub.loop_stop()
    tel.close()
    dead.close()
    assert after == set(range(20, 40))
    assert again == [], "oversized messages were redelivered: they had not been acknowledged"
    print(f"\n20 messages behind {n_big} x {big_size / 1e6:.1f} MB oversized ones in {took:.1f} s")
