"""The secrets of docker-compose.yml, checked statically (no Docker engine here). The
internal key and MQTT: the key reaches exactly the platform services that sign, verify or
derive MQTT passwords from it (never app code), mosquitto admits no anonymous client and
reads the password and ACL files the ``mqtt-setup`` one-shot writes (its script is run
here against stand-ins), and every MQTT client of compose, in its own environment, logs
in with a password those files admit. The app tokens and the time-series store's token
reach only the services that check or use them: a policy gets its own app's token, a
workload none."""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ecovisor.contract import bus_access
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import load_config
from ecovisor.contract.environment import internal_key
from ecovisor.embedded.mqtt_auth import BrokerAuth, mosquitto_hash
from tests.unit.compose_model import (
    KEY_VAR,
    ROOT,
    SITE,
    _compose,
    _module,
    _mounted,
    _product_services,
    _site,
    _uses_mqtt,
)

# Who gets the internal key, written out by hand: the services that sign or verify with
# it, read the ledger's views, or derive their MQTT password from it (and the one-shot that
# hashes those passwords). Prometheus gets it as a file (test_compose_monitoring.py).
KEY_HOLDERS = {
    "mqtt-setup",  # derives the MQTT passwords it hashes
    "bridge",  # its MQTT password; binds telemetry to its source (bus_authenticated)
    "ledger",  # signs actions and setpoints, checks acks, guards views and /metrics
    "api",  # bearer token to the ledger's views
    "actuator-containers",  # checks the ledger's signed actions, signs its acks
    "actuator-battery",  # the same, and its MQTT password
    "collector-battery",  # applies only signed setpoints; its MQTT password
}
# Every MQTT client of compose and the principal it logs in as (the collectors without
# the key have a credential in the site file).
MQTT_CLIENTS = {
    "bridge": bus_access.BRIDGE,
    "actuator-battery": bus_access.ACTUATOR_BATTERY,
    "collector-battery": "device-battery-1",
    "collector-solar": "device-pv-1",
    "collector-carbon": "device-carbon-1",
    "collector-power": "node-node-1",
}
MQTT_PASSWORD_VAR = re.compile(r"ECOVISOR_MQTT_PASSWORD_\w+")
COMPOSE_VAR = re.compile(r"\$\{(\w+):-([^}]*)\}")


def _is_app_code(name: str) -> bool:
    return name.startswith(("container-", "policy-"))


def _interpolated(value: Any) -> str:
    """A compose environment value as a container sees it when the host sets none of the
    variables: ``${VAR:-default}`` is the default, ``$$`` a ``$``."""
    return COMPOSE_VAR.sub(lambda m: m.group(2), str(value)).replace("$$", "$")


def _environment(service: str) -> dict[str, str]:
    svc = _compose()["services"][service]
    env = svc.get("environment") or {}
    if "build" in svc and not env:
        env = _compose()["x-ecovisor"]["environment"]
    return {k: _interpolated(v) for k, v in env.items()}


def _site_in(service: str, monkeypatch: pytest.MonkeyPatch) -> EcovisorConfig:
    """The compose site as ``service`` loads it: its environment only."""
    for k in list(os.environ):
        if k.startswith(("ECOVISOR_", "INFLUXDB_")):
            monkeypatch.delenv(k)
    for k, v in _environment(service).items():
        monkeypatch.setenv(k, v)
    return load_config(SITE)


def test_internal_key_reaches_exactly_the_platform_services() -> None:
    compose = _compose()
    assert KEY_VAR not in compose["x-ecovisor"]["environment"], "not for every service"
    key = compose["x-secrets"]["internal-key"]
    m = re.fullmatch(rf"\$\{{{KEY_VAR}:-([^}}]{{16,}})\}}", key)
    assert m and m.group(1).endswith("change-me"), "a variable with a demo default"
    holders = set()
    for name, svc in compose["services"].items():
        env = svc.get("environment") or {}
        if KEY_VAR in env:
            holders.add(name)
            assert env[KEY_VAR] == key, name
        assert not any(key in str(v) for v in env.values() if v != env.get(KEY_VAR)), name
    assert holders == KEY_HOLDERS
    assert not {n for n in holders if _is_app_code(n)}
    # and the site file holds no literal key for the others to read
    assert _site().site.internal_key is None and _site().site.internal_key_env == KEY_VAR


def test_app_code_gets_no_key_and_no_mqtt_password(monkeypatch: pytest.MonkeyPatch) -> None:
    apps = [n for n in _compose()["services"] if _is_app_code(n)]
    assert len(apps) >= 4
    for name in apps:
        env = _environment(name)
        assert KEY_VAR not in env, name
        assert not [k for k in env if MQTT_PASSWORD_VAR.fullmatch(k)], name
        cfg = _site_in(name, monkeypatch)
        assert internal_key(cfg) is None, name
        assert bus_access.mqtt_credentials(cfg, bus_access.BRIDGE) is None, name


def test_every_mqtt_client_logs_in_with_a_password_mqtt_setup_hashes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    services = _product_services()
    clients = {n for n, s in services.items() if n != "mqtt-setup" and _uses_mqtt(_module(s))}
    assert clients == set(MQTT_CLIENTS), "every MQTT client of compose is in MQTT_CLIENTS"
    setup = _site_in("mqtt-setup", monkeypatch)
    auth = BrokerAuth.of(setup, internal_key(setup) or "")
    assert bus_access.bus_authenticated(setup)
    for name, user in MQTT_CLIENTS.items():
        cfg = _site_in(name, monkeypatch)
        creds = bus_access.mqtt_credentials(cfg, user)
        assert creds is not None, f"{name} would connect anonymously (refused)"
        assert creds == (user, auth.passwords[user]), f"{name}: not the password mosquitto has"
        # the key, where it has it, is the setup's (a different key: different passwords)
        assert internal_key(cfg) in (None, internal_key(setup)), name
        # a password variable a service gets is its own principal's
        own = {k for k in _environment(name) if MQTT_PASSWORD_VAR.fullmatch(k)}
        assert own <= {"ECOVISOR_MQTT_PASSWORD_" + re.sub(r"\W", "_", user).upper()}, name
        # the bridge binds messages to principals: only with the key
        if name == "bridge":
            assert bus_access.bus_authenticated(cfg)
    # every credential variable: the same default in the site file and in x-secrets
    site_text = SITE.read_text()
    for value in _compose()["x-secrets"].values():
        var = COMPOSE_VAR.fullmatch(value)
        assert var, value
        if MQTT_PASSWORD_VAR.fullmatch(var.group(1)):
            assert value in site_text, f"{value}: not what the site file reads"
            assert len(var.group(2)) >= 8  # a credential's minimum length


def test_mosquitto_is_authenticated_by_the_setup_one_shot() -> None:
    services = _compose()["services"]
    mosq, setup = services["mosquitto"], services["mqtt-setup"]
    lines = [
        line.split(None, 1)
        for line in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    conf = dict(lines)
    assert len(conf) == len(lines), "one line per option (a second listener has its own)"
    assert conf["allow_anonymous"] == "false"
    # the files come from the volume mqtt-setup writes, mounted read-only
    mounts = {v.split(":")[0]: v.split(":")[1:] for v in mosq["volumes"]}
    assert mounts["mosquitto-auth"][1:] == ["ro"]
    auth_dir = mounts["mosquitto-auth"][0]
    assert conf["password_file"] == f"{auth_dir}/mosquitto.passwd"
    assert conf["acl_file"] == f"{auth_dir}/mosquitto.acl"
    assert mosq["depends_on"]["mqtt-setup"]["condition"] == "service_completed_successfully"
    assert setup["restart"] == "no" and setup["build"] == "."
    cmd = setup["command"]
    assert cmd[:2] == ["sh", "/etc/ecovisor/mqtt-setup.sh"]
    setup_mounts = {v.split(":")[0]: v.split(":")[1] for v in setup["volumes"]}
    assert setup_mounts["mosquitto-auth"] == cmd[2]  # its MQTT_DIR argument
    assert setup_mounts["prometheus-auth"] == cmd[3]  # its PROMETHEUS_DIR argument
    script = _mounted(setup, cmd[1]).read_text()
    assert "mqtt_dir=$1" in script and "prometheus_dir=$2" in script
    assert 'python -m ecovisor.cli config mqtt-auth --out "$mqtt_dir"' in script
    assert "--show-passwords" not in script  # the log shows principals, no password
    # healthy = answers MQTT and refuses an anonymous client (it holds no password)
    health = " ".join(mosq["healthcheck"]["test"])
    assert "mosquitto_sub" in health and "Connection Refused" in health
    assert " -u " not in health and " -P " not in health
    assert "per_listener_settings" not in conf  # the settings hold for the one listener


def test_mqtt_setup_script_writes_files_its_readers_can_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """deploy/mqtt-setup.sh run by sh, with mqtt-setup's environment and a stand-in
    chown: the broker's files admit every MQTT client's password and are handed to the
    mosquitto image's user; Prometheus' token is the key, handed to nobody."""
    setup = _compose()["services"]["mqtt-setup"]
    stub = tmp_path / "bin"
    stub.mkdir()
    (stub / "chown").write_text('#!/bin/sh\necho "$@" >> "$CHOWN_LOG"\n')
    (stub / "chown").chmod(0o755)
    mqtt_dir, prom_dir = tmp_path / "mqtt", tmp_path / "prom"
    mqtt_dir.mkdir()
    prom_dir.mkdir()
    env = {
        **_environment("mqtt-setup"),
        "ECOVISOR_CONFIG": str(SITE),
        "PATH": f"{stub}:{Path(sys.executable).parent}:/usr/bin:/bin",  # its python
        "CHOWN_LOG": str(tmp_path / "chown.log"),
    }
    script = _mounted(setup, setup["command"][1])
    r = subprocess.run(["sh", str(script), str(mqtt_dir), str(prom_dir)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    key = env[KEY_VAR]
    assert key not in r.stdout + r.stderr
    hashes = dict(
        line.split(":", 1) for line in (mqtt_dir / "mosquitto.passwd").read_text().splitlines()
    )
    for name, user in MQTT_CLIENTS.items():
        pw = bus_access.mqtt_credentials(_site_in(name, monkeypatch), user)
        assert pw is not None
        salt = base64.b64decode(hashes[user].split("$")[3])
        assert mosquitto_hash(pw[1], salt) == hashes[user], f"{name} would be refused"
    assert "user bridge" in (mqtt_dir / "mosquitto.acl").read_text()
    assert (prom_dir / "ledger.token").read_text().strip() == key
    for f in (mqtt_dir / "mosquitto.passwd", mqtt_dir / "mosquitto.acl", prom_dir / "ledger.token"):
        assert f.stat().st_mode & 0o077 == 0, f
    assert not list(prom_dir.glob("*.tmp"))
    chowns = (tmp_path / "chown.log").read_text().splitlines()
    assert chowns == [
        f"1883:1883 {mqtt_dir}/mosquitto.passwd {mqtt_dir}/mosquitto.acl",  # mosquitto
        f"65534:65534 {prom_dir}/ledger.token.tmp",  # nobody (prom/prometheus)
    ]
    # without the key it stops (no broker without passwords)
    env.pop(KEY_VAR)
    r = subprocess.run(["sh", str(script), str(mqtt_dir), str(prom_dir)], env=env, cwd=ROOT,
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode != 0 and KEY_VAR in r.stderr


def test_app_tokens_and_the_influxdb_token_reach_only_who_checks_or_uses_them() -> None:
    """Tenants are isolated in compose too: an app's token lets its holder command that
    app, so the workloads and another app's policy must not get it (they once all did,
    through the shared environment), nor the time-series store's admin token."""
    compose = _compose()
    token_vars = {"ECOVISOR_WEB_TOKEN", "ECOVISOR_BATCH_TOKEN"}
    assert not token_vars & set(compose["x-ecovisor"]["environment"]), "not for every service"
    assert "INFLUXDB_TOKEN" not in compose["x-ecovisor"]["environment"]
    holders: dict[str, set[str]] = {v: set() for v in (*token_vars, "INFLUXDB_TOKEN")}
    for name, svc in compose["services"].items():
        for var in svc.get("environment") or {}:
            if var in holders:
                holders[var].add(name)
    assert holders["ECOVISOR_WEB_TOKEN"] == holders["ECOVISOR_BATCH_TOKEN"] == {
        "api", "ledger", "mqtt-setup"}  # fmt: skip
    assert holders["INFLUXDB_TOKEN"] == {"history"}
    for name in compose["services"]:
        if not _is_app_code(name):
            continue
        env = _environment(name)
        assert not token_vars & set(env), name
        if name.startswith("policy-web"):  # its own app's token, nothing else
            assert env["ECOVISOR_TOKEN"] == _site().app("web").token
