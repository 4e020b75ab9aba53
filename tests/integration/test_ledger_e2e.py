"""The Faust ledger on the real embedded stack (tansu + mosquitto + the MQTT bridge):
a scripted tick of telemetry for two apps gives exactly the hand-computed ledger entries
and tick notifications; duplicated and late samples leave totals right; a command
signed with another app's token is dead-lettered (no app told), one for a container the
app does not own is rejected to it with a reason.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest

from ecovisor.contract import topics
from ecovisor.contract.commands import SetBatteryChargeRate, SuspendContainer, sign_command
from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry, SolarTelemetry
from ecovisor.embedded.servers import Server, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_700_000_000.0  # a tick boundary (Δt = 1 s)
TOKENS = {"a": "token-of-app-a", "b": "token-of-app-b"}


def site_yaml(bootstrap: str, mqtt_port: int, web_port: int, state_dir: Path, **kw: Any) -> str:
    containers = kw.get("containers", {"a": ["a-1"], "b": ["b-1"]})
    apps = ""
    for app, conts in containers.items():
        apps += (
            f"  - id: {app}\n    token: {TOKENS.get(app, 'token-of-' + app)}\n"
            f"    shares: {{solar_fraction: 0.5, battery_capacity_wh: 0.0, grid_w: 100.0}}\n"
            "    containers:\n"
        )
        for c in conts:
            apps += f"      - {{id: {c}, node: n1, backend: {{type: process, cgroup: t/{c}}}}}\n"
    return f"""schema_version: 1
site:
  id: s1
  shape: {{tick_s: 1.0, solar_nameplate_w: 12.0, battery_capacity_wh: 0.0}}
  grace_s: 0.5
  nodes: [{{id: n1, cores: 2}}]
apps:
{apps}stack:
  kafka_bootstrap: "{bootstrap}"
  mqtt_port: {mqtt_port}
  ledger_web_port: {web_port}
  state_dir: "{state_dir}"
"""


def start(module: str, cfg: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ECOVISOR_KAFKA_BOOTSTRAP", None)
    fh = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(cfg), *args],
        cwd=ROOT,
        env=env,
        stdout=fh,
        stderr=subprocess.STDOUT,
    )


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Reader:
    """An assigned-partition consumer of one topic from the beginning."""

    def __init__(self, bootstrap: str, topic: str, site: str | None = None) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.c = KafkaConsumer(
            bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=200
        )
        tp = TopicPartition(topic, 0)
        self.c.assign([tp])
        self.c.seek_to_beginning(tp)
        self.items: list[dict[str, Any]] = []
        self.site = site  # the broker is shared by the session's tests: keep one site's

    def poll(self) -> list[dict[str, Any]]:
        for batch in self.c.poll(timeout_ms=200).values():
            for r in batch:
                item = json.loads(r.value)
                if self.site is None or item.get("site") == self.site:
                    self.items.append(item)
        return self.items

    def wait(self, pred: Callable[[list[dict[str, Any]]], bool], timeout: float = 30.0) -> list:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.poll()):
                return self.items
        raise AssertionError(
            f"timed out; have {len(self.items)} items; last: {str(self.items[-1:])[:300]}"
        )

    def close(self) -> None:
        self.c.close()


def at(s: float) -> datetime:
    return datetime.fromtimestamp(T0 + s, UTC)


def cont(c: str, app: str, seq: int, t: float, j: float) -> ContainerTelemetry:
    return ContainerTelemetry(
        site="s1",
        time=at(t),
        source=f"pm-{c}",
        seq=seq,
        app=app,
        container=c,
        node="n1",
        cpu_s=0.0,
        energy_j=j,
    )


def solar(seq: int, t: float, j: float) -> SolarTelemetry:
    return SolarTelemetry(site="s1", time=at(t), source="pv", seq=seq, power_w=10.0, energy_j=j)


def carbon(seq: int, t: float, v: float) -> CarbonTelemetry:
    return CarbonTelemetry(site="s1", time=at(t), source="co2", seq=seq, intensity_g_per_kwh=v)


# The script: tick 0 (T0..T0+1) and tick 1, with a duplicate and a late sample.
SCRIPT = [
    solar(0, 0.0, 0.0),
    carbon(0, 0.0, 300.0),
    cont("a-1", "a", 0, 0.0, 0.0),
    cont("b-1", "b", 0, 0.0, 0.0),
    solar(1, 0.9, 10.0),
    cont("a-1", "a", 1, 0.9, 4.0),
    cont("a-1", "a", 1, 0.9, 4.0),  # duplicate (same source and seq)
    cont("b-1", "b", 1, 0.9, 2.0),
    carbon(1, 1.5, 200.0),  # watermark 1.5 = end of tick 0 + grace: tick 0 closes
    cont("a-1", "a", 2, 0.95, 5.0),  # LATE for tick 0: rolls into tick 1
    solar(2, 1.6, 20.0),
    cont("a-1", "a", 3, 1.6, 10.0),
    cont("b-1", "b", 2, 1.6, 3.0),
    carbon(2, 2.5, 200.0),  # watermark 2.5: tick 1 closes
]


def expected() -> dict[tuple[str, int], dict[str, int]]:
    """Hand-computed: tick 0 has no solar yet (buffered one tick), all grid at 300 g/kWh;
    tick 1 gets tick 0's 10 J solar, 5 J per app, intensity (300*0.5 + 200*0.5) = 250."""
    k0 = int(T0)
    return {
        # a: 4 J demand, grid 4 J, carbon 4000 mJ * 300 / 3600 = 333.33 -> 333 µg
        ("a", k0): {"demand_mj": 4000, "solar_to_load": 0, "grid_to_load": 4000, "carbon": 333},
        # b: 2 J, carbon 166.67 -> 167 µg
        ("b", k0): {"demand_mj": 2000, "solar_to_load": 0, "grid_to_load": 2000, "carbon": 167},
        # a: 10 - 4 = 6 J (late sample changes nothing), 5 J solar, 1 J grid: 69.44 -> 69
        ("a", k0 + 1): {
            "demand_mj": 6000,
            "solar_to_load": 5000,
            "grid_to_load": 1000,
            "carbon": 69,
        },
        # b: 1 J from its 5 J solar, 4 J curtailed (no battery), no grid
        ("b", k0 + 1): {"demand_mj": 1000, "solar_to_load": 1000, "grid_to_load": 0, "carbon": 0},
    }


class MqttPub:
    def __init__(self, port: int) -> None:
        self.c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-pub")
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()

    def send(self, m: Any) -> None:
        topic = topics.mqtt_telemetry(m.site, m.kind, m.source)
        self.c.publish(topic, m.to_json(), qos=1).wait_for_publish(10)

    def wait_bridged(self, bootstrap: str, timeout: float = 60.0) -> None:
        """Publish probes of another site until the bridge dead-letters one (it only
        forwards its own site's telemetry): MQTT drops what is published before the
        bridge's subscription exists (a fixed sleep was not enough on a loaded machine)."""
        site = f"probe-{time.time_ns()}"  # a probe of an earlier test is not the answer
        probe = Reader(bootstrap, topics.DEADLETTER)
        try:
            deadline = time.monotonic() + timeout
            seq = 0
            while time.monotonic() < deadline:
                seq += 1
                self.send(CarbonTelemetry(site=site, time=at(0), source="probe", seq=seq,
                                          intensity_g_per_kwh=1.0))  # fmt: skip
                if any(f"/{site}/" in d.get("origin", "") for d in probe.poll()):
                    return
            raise AssertionError("the bridge dead-lettered no probe")
        finally:
            probe.close()

    def close(self) -> None:
        self.c.loop_stop()
        self.c.disconnect()


@pytest.fixture()
def stack(kafka_bootstrap: str, mqtt_server: Server, tmp_path: Path) -> Iterator[dict[str, Any]]:
    # a fresh site id per test would need fresh topics; tansu is per session, so each
    # test uses its own Faust app id through its own site and reads from offsets it saw
    web = free_port()
    cfg = tmp_path / "site.yaml"
    cfg.write_text(site_yaml(kafka_bootstrap, mqtt_server.port, web, tmp_path / "state"))
    yield {"cfg": cfg, "web": web, "bootstrap": kafka_bootstrap, "mqtt": mqtt_server.port}


def test_scripted_ticks_over_mqtt(stack: dict[str, Any], tmp_path: Path) -> None:
    from kafka import KafkaProducer

    from ecovisor.contract.config_file import load_config
    from streams.ledger_app import prepare_topics

    cfg = load_config(stack["cfg"])
    prepare_topics(cfg, stack["bootstrap"])
    ledger = start("streams.ledger", stack["cfg"], tmp_path / "ledger.log", "--clock", "event")
    bridge = start("streams.bridge", stack["cfg"], tmp_path / "bridge.log")
    led_r = Reader(stack["bootstrap"], topics.LEDGER, "s1")
    na = Reader(stack["bootstrap"], topics.notifications("a"), "s1")
    nb = Reader(stack["bootstrap"], topics.notifications("b"), "s1")
    pub = MqttPub(stack["mqtt"])
    try:
        pub.wait_bridged(stack["bootstrap"])  # the bridge subscribes
        for m in SCRIPT:
            pub.send(m)
        entries = led_r.wait(lambda xs: len(xs) >= 4, timeout=60)
        got = {(e["app"], e["k"]): e for e in entries}
        assert len(entries) == 4, "exactly one entry per app and tick"
        for (app, k), want in expected().items():
            e = got[(app, k)]
            assert e["demand_mj"] == want["demand_mj"], (app, k)
            assert e["flows"]["solar_to_load"] == want["solar_to_load"], (app, k)
            assert e["flows"]["grid_to_load"] == want["grid_to_load"], (app, k)
            assert e["total"]["carbon_ug"] == want["carbon"], (app, k)
            c = f"{app}-1"
            assert e["containers"][c]["energy_mj"] == want["demand_mj"]
        k0 = int(T0)
        assert got[("a", k0 + 1)]["intensity_g_per_kwh"] == 250.0
        assert got[("a", k0 + 1)]["cumulative"]["total"]["energy_mj"] == 10_000
        # tick notifications with the policy's view of the next tick
        ticks = [
            n
            for n in na.wait(lambda xs: sum(x["type"] == "tick" for x in xs) >= 2)
            if n["type"] == "tick"
        ]
        t0, t1 = ticks[:2]
        assert (t0["tick"], t1["tick"]) == (k0, k0 + 1)
        assert t0["data"]["app_power_w"] == 4.0 and t0["data"]["grid_w"] == 4.0
        assert t0["data"]["next_solar_w"] == 5.0  # half of tick 0's 10 J, for tick 1
        assert t1["data"]["solar_w"] == 5.0 and t1["data"]["carbon_g"] == 69e-6
        assert t1["data"]["containers"]["a-1"]["power_w"] == 6.0
        # commands: signed with another app's token; a container the app does not own
        prod = KafkaProducer(bootstrap_servers=stack["bootstrap"])
        bad_token = sign_command(
            SetBatteryChargeRate(site="s1", time=at(2.6), app="a", watts=0.0, command_id="cmd-1"),
            TOKENS["b"],
        )
        not_owned = sign_command(
            SuspendContainer(site="s1", time=at(2.6), app="a", container="b-1", command_id="cmd-2"),
            TOKENS["a"],
        )
        for cmd in (bad_token, not_owned, not_owned):  # the last is a re-delivery
            prod.send(topics.COMMANDS, cmd.model_dump_json().encode())
        prod.flush()
        dead = Reader(stack["bootstrap"], topics.DEADLETTER)
        try:  # not a's command: dead-lettered, and no app is told anything
            dead.wait(lambda xs: any('"cmd-1"' in x.get("raw", "") and "not signed with the "
                                     "token of app 'a'" in x["reason"] for x in xs))  # fmt: skip
        finally:
            dead.close()
        notes = na.wait(lambda xs: "cmd-2" in {x.get("command_id") for x in xs}, timeout=30)
        rej = {n["command_id"]: n for n in notes if n["type"] == "command_rejected"}
        assert "does not own container 'b-1'" in rej["cmd-2"]["reason"]
        time.sleep(1.0)
        assert sum(n.get("command_id") == "cmd-2" for n in na.poll()) == 1  # no-op re-delivery
        assert not any(n.get("command_id") == "cmd-1" for n in na.poll() + nb.poll())
        # the state and counters views
        base = f"http://127.0.0.1:{stack['web']}"
        st = httpx.get(f"{base}/ecovisor/state/a", timeout=5).json()
        assert st["tick"] == k0 + 1 and set(st["clock"]) == {"next_close", "watermark"}
        # the site's sample counts: in the ledger's metrics, not in an app's view
        metrics = httpx.get(f"{base}/metrics", timeout=5).text
        assert 'ecovisor_ledger_samples_total{kind="duplicate",site="s1"} 1.0' in metrics
        assert 'ecovisor_ledger_samples_total{kind="late",site="s1"} 1.0' in metrics
        assert st["tick_data"]["app_power_w"] == 6.0
        q = {"t1": at(0).isoformat(), "t2": at(2).isoformat()}
        cn = httpx.get(f"{base}/ecovisor/counters/a", params=q, timeout=5).json()
        assert cn["energy_j"] == 10.0 and cn["carbon_g"] == pytest.approx(402e-6, abs=1e-12)
        assert cn["containers"]["a-1"]["energy_j"] == 10.0
        q = {"t1": at(1).isoformat(), "t2": at(2).isoformat()}
        cn = httpx.get(f"{base}/ecovisor/counters/a", params=q, timeout=5).json()
        assert cn["energy_j"] == 6.0 and cn["ticks"] == [k0 + 1, k0 + 1]
        q = {"from": at(0).isoformat(), "to": at(2).isoformat()}
        lv = httpx.get(f"{base}/ecovisor/ledger/a", params=q, timeout=5).json()
        assert [e["k"] for e in lv["entries"]] == [k0, k0 + 1]
        assert httpx.get(f"{base}/ecovisor/ledger/zz", timeout=5).status_code == 404
        prod.close()
        # researchers' export: the same two ticks, de-duplicated, as CSV
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "ecovisor.cli",
                "export",
                "--app",
                "a",
                "--from",
                at(0).isoformat(),
                "--to",
                at(5).isoformat(),
                "--csv",
                "--config",
                str(stack["cfg"]),
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.splitlines()
        assert out[0].startswith("site,app,tick") and len(out) == 3
        assert [float(r.split(",")[6]) for r in out[1:]] == [4.0, 6.0]  # demand_j
    finally:
        pub.close()
        for r in (led_r, na, nb):
            r.close()
        stop(bridge)
        stop(ledger)
