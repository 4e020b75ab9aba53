"""A policy process on the embedded stack: the real Faust ledger (realtime ticks) over
tansu, the REST API process, and ``python -m policies.solar_following_caps`` for one
app. The policy receives its app's ticks over the API's event stream, and its caps take
effect in the ledger (visible through the API) for its own app only."""

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry, SolarTelemetry
from ecovisor.embedded.servers import free_port, wait_for_port

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ECOVISOR_KAFKA_BOOTSTRAP", None)
    with log.open("ab") as fh:
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT
        )


def stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


class Feeder(threading.Thread):
    """Telemetry at wall-clock event times straight onto ecovisor.telemetry (what the
    MQTT bridge would forward): carbon 400 g/kWh, no solar, 4 W per container."""

    def __init__(self, bootstrap: str, site: str, apps: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.prod = KafkaProducer(bootstrap_servers=bootstrap)
        self.site, self.apps = site, apps
        self.halt = threading.Event()

    def run(self) -> None:
        seq, t0 = 0, time.time()
        while not self.halt.is_set():
            now = datetime.now(UTC)
            msgs = [
                SolarTelemetry(
                    site=self.site, time=now, source="pv", seq=seq, power_w=0.0, energy_j=0.0
                ),
                CarbonTelemetry(
                    site=self.site, time=now, source="co2", seq=seq, intensity_g_per_kwh=400.0
                ),
            ]
            for c, app in self.apps.items():
                msgs.append(
                    ContainerTelemetry(
                        site=self.site,
                        time=now,
                        source=f"pm-{c}",
                        seq=seq,
                        app=app,
                        container=c,
                        node="n1",
                        cpu_s=0.0,
                        energy_j=4.0 * (time.time() - t0),
                    )
                )
            for m in msgs:
                self.prod.send(topics.TELEMETRY, m.to_json(), key=self.site.encode())
            self.prod.flush()
            seq += 1
            self.halt.wait(0.25)
        self.prod.close()


@pytest.fixture()
def stack(kafka_bootstrap: str, tmp_path: Path) -> Iterator[dict]:
    sfx = uuid.uuid4().hex[:6]
    site, a, b = f"site-{sfx}", f"pola-{sfx}", f"polb-{sfx}"
    api_port, web_port = free_port(), free_port()
    cfg_path = tmp_path / "site.yaml"
    cfg_path.write_text(
        f"""schema_version: 1
site:
  id: {site}
  shape: {{tick_s: 1.0, solar_nameplate_w: 0.0, battery_capacity_wh: 0.0}}
  grace_s: 0.3
  nodes: [{{id: n1, cores: 4}}]
apps:
  - id: {a}
    token: token-of-{a}
    shares: {{grid_w: 100.0}}
    containers: [{{id: {a}-1, node: n1, backend: {{type: process, cgroup: t/{a}-1}}}}]
  - id: {b}
    token: token-of-{b}
    shares: {{grid_w: 100.0}}
    containers: [{{id: {b}-1, node: n1, backend: {{type: process, cgroup: t/{b}-1}}}}]
stack:
  kafka_bootstrap: "{kafka_bootstrap}"
  api_port: {api_port}
  ledger_web_port: {web_port}
  mqtt_port: {free_port()}
  state_dir: "{tmp_path / "state"}"
"""
    )
    from streams.ledger import prepare_topics

    prepare_topics(load_config(cfg_path), kafka_bootstrap)
    commands = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topics.COMMANDS, 0)
    commands.assign([tp])
    commands.seek_to_end(tp)
    commands.position(tp)
    procs = [
        start(["streams.ledger", "--config", str(cfg_path), "--timeouts", "1"], tmp_path / "l.log"),
        start(["ecovisor.api", "--config", str(cfg_path)], tmp_path / "api.log"),
    ]
    feeder = Feeder(kafka_bootstrap, site, {f"{a}-1": a, f"{b}-1": b})
    feeder.start()
    try:
        wait_for_port(api_port, timeout=30)
        yield {
            "cfg": cfg_path,
            "a": a,
            "b": b,
            "url": f"http://127.0.0.1:{api_port}",
            "commands": commands,
            "procs": procs,
            "tmp": tmp_path,
        }
    finally:
        feeder.halt.set()
        for p in reversed(procs):
            stop(p)
        commands.close()


def wait_value(url: str, token: str, path: str, pred, timeout: float = 40.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        r = httpx.get(url + path, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        last = r
        if r.status_code == 200 and pred(r.json()["value"]):
            return r.json()
        time.sleep(0.25)
    raise AssertionError(
        f"{path}: last answer {last.status_code if last else None}: {last.text if last else ''}"
    )


def test_policy_process_caps_its_own_app_only(stack: dict) -> None:
    a, b, url = stack["a"], stack["b"], stack["url"]
    ta, tb = f"token-of-{a}", f"token-of-{b}"
    # ticks close in the ledger and reach the API's live state
    wait_value(url, ta, f"/v1/apps/{a}/grid_carbon", lambda v: v == 400.0)
    pol = start(
        [
            "policies.solar_following_caps",
            "--app",
            a,
            "--config",
            str(stack["cfg"]),
            "--mode",
            "static",
            "--min-cap-w",
            "2.5",
        ],
        stack["tmp"] / "policy.log",
    )
    stack["procs"].append(pol)
    # the policy's cap takes effect for its app's container (no solar: the floor 2.5 W)
    got = wait_value(url, ta, f"/v1/apps/{a}/containers/{a}-1/powercap", lambda v: v == 2.5)
    assert got["container"] == f"{a}-1"
    # b is untouched, and a's token cannot see or cap b's container
    assert (
        httpx.get(
            f"{url}/v1/apps/{b}/containers/{b}-1/powercap",
            headers={"Authorization": f"Bearer {tb}"},
            timeout=5,
        ).json()["value"]
        is None
    )
    r = httpx.put(
        f"{url}/v1/apps/{a}/containers/{b}-1/powercap",
        headers={"Authorization": f"Bearer {ta}"},
        json={"watts": 1.0},
        timeout=5,
    )
    assert r.status_code == 403
    cmds = []
    for batch in stack["commands"].poll(timeout_ms=1000).values():
        cmds.extend(json.loads(x.value) for x in batch)
    mine = [c for c in cmds if c["app"] in (a, b)]
    assert mine and all(c["app"] == a and c["container"] == f"{a}-1" for c in mine)
    assert all(c["type"] == "set_container_powercap" for c in mine)
    # one command was enough: the cap in force is not re-sent every tick
    assert len(mine) == 1, mine
    log = (stack["tmp"] / "policy.log").read_text()
    assert "SetContainerPowercap" in log and pol.poll() is None
