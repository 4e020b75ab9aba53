"""Who may publish and subscribe what on MQTT (ecovisor.contract.bus_access), the broker
files rendered from it (ecovisor.embedded.mqtt_auth), and the bridge's binding of each
message to its one source on an authenticated broker (B3/B4 of the hardening issue)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from collectors.battery_device import BatteryDevice, SimulatedBattery
from ecovisor.contract import actuation, envelope, telemetry, topics
from ecovisor.contract import bus_access as ba
from ecovisor.contract.config_file import parse_config
from ecovisor.embedded.mqtt_auth import BrokerAuth, mosquitto_hash
from streams.bridge import Scope, route

KEY = "k" * 32
SITE = """
site:
  id: s1
  shape: {solar_nameplate_w: 100, battery_capacity_wh: 10}
  nodes:
    - {id: n1, cores: 2}
    - {id: n2, cores: 2, credential: n2-secret-pass}
  solar: {type: pvanalytics, id: pv}
  carbon: {type: synthetic}
  battery: {type: simulated, id: bat}
{key}
apps:
  - id: web
    token: web-token-123456
    containers:
      - {id: web-1, node: n1, backend: {type: cgroup_v1, cgroup: e/web-1}}
    templates:
      - {id: w, node: n2, max_replicas: 2, backend: {type: cgroup_v1, cgroup: e/w}}
  - id: batch
    token: batch-token-654321
    containers:
      - {id: batch-1, node: n2, backend: {type: cgroup_v1, cgroup: e/batch-1}}
"""


def cfg(key: bool = True) -> Any:
    return parse_config(SITE.replace("{key}", f"  internal_key: {KEY}" if key else ""))


def principals() -> dict[str, ba.MqttPrincipal]:
    return {p.username: p for p in ba.mqtt_principals(cfg())}


def test_each_principal_publishes_only_its_own_sources() -> None:
    ps = principals()
    t = topics.mqtt_telemetry
    assert ps["bridge"].publish == () and ps["bridge"].subscribe == ("ecovisor/s1/telemetry/#",)
    assert ps["device-pv"].publish == (t("s1", "solar", "pv"),)
    assert ps["device-carbon"].publish == (t("s1", "carbon", "carbon"),)  # default id
    assert ps["device-bat"].publish == (t("s1", "battery", "bat"),)
    assert ps["device-bat"].subscribe == (topics.mqtt_battery_control("s1", "bat"),)
    assert ps["actuator-battery"].publish == (topics.mqtt_battery_control("s1", "bat"),)
    # a node's collector: its node and exactly the containers placed on it (replicas too)
    assert set(ps["node-n1"].publish) == {t("s1", "node", "node-n1"),
                                          t("s1", "node_batch", "batch-n1"),
                                          t("s1", "container", "ctr-web-1")}  # fmt: skip
    assert set(ps["node-n2"].publish) == {
        t("s1", "node", "node-n2"),
        t("s1", "node_batch", "batch-n2"),
        t("s1", "container", "ctr-batch-1"),
        t("s1", "container", "ctr-w-1"),
        t("s1", "container", "ctr-w-2"),
    }
    assert ps["app-web"].publish == (t("s1", "app_metrics", "app-web"),)
    assert ps["app-batch"].publish == (t("s1", "app_metrics", "app-batch"),)
    # nobody but the bridge reads telemetry; no one may read or write anything else
    readers = {u for u, p in ps.items() if any("telemetry" in s for s in p.subscribe)}
    assert readers == {"bridge"}


def test_passwords_tokens_credentials_and_derived_keys() -> None:
    c = cfg()
    assert ba.mqtt_password(c, "app-web") == "web-token-123456"  # the app's own token
    assert ba.mqtt_password(c, "node-n2") == "n2-secret-pass"  # configured credential
    derived = {u: ba.mqtt_password(c, u) for u in ("bridge", "node-n1", "device-pv")}
    assert len(set(derived.values())) == 3 and all(len(p or "") == 64 for p in derived.values())
    # a different key or site gives different passwords; no key: anonymous
    assert ba.mqtt_password(c, "bridge", "x" * 32) != derived["bridge"]
    assert ba.derived_password(KEY, "s2", "bridge") != derived["bridge"]
    assert ba.mqtt_credentials(cfg(key=False), "bridge") is None
    assert ba.mqtt_credentials(cfg(key=False), "app-web") == ("app-web", "web-token-123456")


def test_mosquitto_hash_is_pbkdf2_sha512_as_mosquitto_passwd_writes_it() -> None:
    salt = bytes(range(12))
    h = mosquitto_hash("secret", salt)
    _, kind, iters, b64salt, b64hash = h.split("$")
    assert (kind, iters, base64.b64decode(b64salt)) == ("7", "101", salt)
    want = hashlib.pbkdf2_hmac("sha512", b"secret", salt, 101)
    assert base64.b64decode(b64hash) == want
    assert mosquitto_hash("secret") != mosquitto_hash("secret")  # random salt


def test_rendered_acl_names_every_principal_and_no_wildcard_writes() -> None:
    auth = BrokerAuth.of(cfg(), KEY)
    acl = auth.mosquitto_acl()
    for p in auth.principals:
        assert f"\nuser {p.username}\n" in acl
    writes = [ln for ln in acl.splitlines() if ln.startswith("topic write")]
    assert writes and not any("#" in w or "+" in w for w in writes)
    assert "topic read ecovisor/s1/telemetry/#" in acl
    pw = auth.mosquitto_passwords()
    assert KEY not in pw and "web-token-123456" not in pw  # hashes only
    assert len(pw.splitlines()) == len(auth.principals)


def ctr(source: str, container: str = "web-1", app: str = "web") -> bytes:
    return telemetry.ContainerTelemetry(
        site="s1", time=datetime(2024, 1, 1, tzinfo=UTC), source=source, seq=1, app=app,
        container=container, node="n1", cpu_s=1.0, energy_j=1.0,
    ).to_json()  # fmt: skip


@pytest.mark.parametrize("authenticated", [True, False])
def test_bridge_binds_a_message_to_its_source_on_an_authenticated_broker(
    authenticated: bool,
) -> None:
    scope = Scope.of(cfg(key=authenticated))
    ok = route(scope, topics.mqtt_telemetry("s1", "container", "ctr-web-1"), ctr("ctr-web-1"))
    assert ok.valid
    # node n2's collector reporting web-1 under one of its own topics (ctr-batch-1)
    r = route(scope, topics.mqtt_telemetry("s1", "container", "ctr-batch-1"),
              ctr("ctr-batch-1", container="web-1"))  # fmt: skip
    assert r.valid is not authenticated
    if authenticated:
        assert "comes from source 'ctr-web-1' only" in json.loads(r.value)["reason"]
    am = telemetry.AppMetricsTelemetry(
        site="s1", time=datetime(2024, 1, 1, tzinfo=UTC), source="app-web", seq=1, app="batch",
        progress=0.5,
    ).to_json()  # fmt: skip
    r = route(scope, topics.mqtt_telemetry("s1", "app_metrics", "app-web"), am)
    assert r.valid is not authenticated  # web's principal reporting batch's metrics


def setpoint(sign_with: str | None) -> SimpleNamespace:
    sp = actuation.BatterySetpoint(
        site="s1", command_id="c-1", device="bat", time=envelope.utcnow(),
        charge_rate_w=5.0, max_discharge_w=1.0, net_power_w=5.0,
    )  # fmt: skip
    if sign_with:
        sp = actuation.sign(sp, sign_with)
    return SimpleNamespace(payload=sp.to_json())


@pytest.mark.parametrize(("signed_with", "applied"), [(KEY, True), (None, False),
                                                     ("y" * 32, False)])  # fmt: skip
def test_battery_device_applies_only_setpoints_the_ledger_signed(
    signed_with: str | None, applied: bool
) -> None:
    received: list[Any] = []
    dev = BatteryDevice(cfg(), SimulatedBattery(capacity_wh=10.0, stored_wh=5.0), "bat", 1.0)
    dev.controller.receive = lambda sp, now: received.append(sp)  # type: ignore[method-assign]
    dev._on_setpoint(None, None, setpoint(signed_with))  # type: ignore[arg-type]
    assert bool(received) is applied and dev.rejected == (0 if applied else 1)


def test_cli_mqtt_auth_writes_the_brokers_files_and_needs_a_key(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from ecovisor.cli.main import app

    site = tmp_path / "site.yaml"
    site.write_text(SITE.replace("{key}", ""))
    monkeypatch.delenv("ECOVISOR_INTERNAL_KEY", raising=False)
    r = CliRunner().invoke(app, ["config", "mqtt-auth", "-c", str(site)])
    assert r.exit_code == 1 and "no internal key" in r.output
    monkeypatch.setenv("ECOVISOR_INTERNAL_KEY", KEY)
    out = tmp_path / "mqtt"
    r = CliRunner().invoke(app, ["config", "mqtt-auth", "-c", str(site), "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "node-n2:\n  publish   ecovisor/s1/telemetry/node/node-n2" in r.output
    assert KEY not in r.output and "web-token-123456" not in r.output  # no secret printed
    assert (out / "mosquitto.acl").read_text() == BrokerAuth.of(cfg(), KEY).mosquitto_acl()
    assert (out / "mosquitto.passwd").stat().st_mode & 0o777 == 0o600
