"""Battery device stand-in (SIMULATION) over a real MQTT broker: a BatterySetpoint sent on
the control topic changes the BatteryTelemetry it publishes. Plus the process CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collectors.battery_device import build
from ecovisor.contract import topics
from ecovisor.contract.actuation import BatterySetpoint
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.telemetry import BatteryTelemetry, parse_telemetry

pytestmark = pytest.mark.integration

CONFIG = """
schema_version: 1
site:
  id: t1
  shape: {{tick_s: 0.1, battery_capacity_wh: 100.0}}
  battery: {{type: simulated, id: batt-1, options: {{initial_soc: 0.5}}}}
stack: {{mqtt_port: {port}}}
"""


def test_setpoint_round_trip_over_mqtt(mqtt_server) -> None:
    cfg = parse_config(CONFIG.format(port=mqtt_server.port))
    got: list[BatteryTelemetry] = []
    lock = threading.Lock()

    def on_msg(c: object, u: object, m: mqtt.MQTTMessage) -> None:
        with lock:
            got.append(parse_telemetry(m.payload))  # type: ignore[arg-type]

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-batt-sub")
    sub.on_message = on_msg
    sub.connect("127.0.0.1", mqtt_server.port)
    sub.subscribe(topics.mqtt_telemetry("t1", "battery", "batt-1"), qos=1)
    sub.loop_start()
    dev = build(cfg).start()
    try:
        assert dev.publisher.wait_connected(5)
        time.sleep(0.2)  # let the control subscription settle
        setpoint = BatterySetpoint(
            site="t1", time=utcnow(), command_id="cmd-1", charge_rate_w=12.0, max_discharge_w=5.0
        )
        sub.publish(topics.mqtt_battery_control("t1", "batt-1"), setpoint.to_json(), qos=1)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            dev.tick()
            with lock:
                if got and got[-1].power_w > 0:
                    break
            time.sleep(0.05)
        with lock:
            last = got[-1]
        assert last.power_w == pytest.approx(12.0)
        assert last.charge_setpoint_w == 12.0
        assert last.max_discharge_setpoint_w == 5.0
        assert last.capacity_wh == 100.0
        assert last.stored_wh > 50.0
        seqs = [m.seq for m in got]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        # an invalid setpoint is ignored and counted, not fatal
        sub.publish(topics.mqtt_battery_control("t1", "batt-1"), b"{not json", qos=1)
        deadline = time.monotonic() + 3
        while dev.rejected == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert dev.rejected == 1
    finally:
        dev.close()
        sub.loop_stop()
        sub.disconnect()


def test_cli_bad_option_exits_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text(CONFIG.format(port=1).replace("initial_soc: 0.5", "initial_soc: 7"))
    r = subprocess.run(
        [sys.executable, "-m", "collectors.battery_device", "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "initial_soc" in lines[0] and "Traceback" not in r.stderr


def test_cli_runs_and_stops_on_sigterm(mqtt_server, tmp_path: Path) -> None:
    cfg = tmp_path / "site.yaml"
    cfg.write_text(CONFIG.format(port=mqtt_server.port))
    got: list[bytes] = []
    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="test-batt-sub2")
    sub.on_message = lambda c, u, m: got.append(m.payload)
    sub.connect("127.0.0.1", mqtt_server.port)
    sub.subscribe(topics.mqtt_telemetry("t1", "battery", "+"), qos=1)
    sub.loop_start()
    p = subprocess.Popen(
        [sys.executable, "-m", "collectors.battery_device", "--config", str(cfg)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 15
        while len(got) < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) >= 3
        assert json.loads(got[0])["kind"] == "battery"
    finally:
        p.terminate()
        _, err = p.communicate(timeout=10)
        sub.loop_stop()
        sub.disconnect()
    assert p.returncode == 0, err
    assert "Traceback" not in err
