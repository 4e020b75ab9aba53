"""Each collector runs as its own process (``python -m collectors.<name> --config F``) on
a real MQTT broker, publishes valid telemetry and stops cleanly on SIGTERM."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from ecovisor.contract import topics
from ecovisor.contract.telemetry import parse_telemetry

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]


def site_config(port: int) -> str:
    demo = (REPO / "examples" / "demo-site.yaml").read_text()
    return demo.replace("tick_s: 1.0", "tick_s: 0.2") + f"stack: {{mqtt_port: {port}}}\n"


@pytest.mark.parametrize(
    ("module", "kinds"),
    [("solar", {"solar"}), ("carbon", {"carbon"}), ("power", {"node"})],
)
def test_collector_process_publishes(mqtt_server, tmp_path: Path, module: str, kinds: set) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text(site_config(mqtt_server.port))
    got: list = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"test-proc-{module}")
    sub.on_message = lambda c, u, m: got.append(parse_telemetry(m.payload))
    sub.connect("127.0.0.1", mqtt_server.port)
    sub.subscribe(topics.MQTT_TELEMETRY_SUBSCRIPTION, qos=1)
    sub.loop_start()
    p = subprocess.Popen(
        [sys.executable, "-m", f"collectors.{module}", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 20
        while len(got) < 3 and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.05)
    finally:
        p.terminate()
        _, err = p.communicate(timeout=10)
        sub.loop_stop()
        sub.disconnect()
    assert len(got) >= 3, err
    assert {m.kind for m in got} >= kinds
    assert all(m.site == "demo" for m in got)
    assert p.returncode == 0 and "Traceback" not in err, err
    if module == "carbon":
        assert 130 <= got[0].intensity_g_per_kwh <= 370
