"""docker-compose.yml, checked statically (no Docker engine here): it validates, every
product service runs a real entry point of the package, and every ECOVISOR_* variable and
Kafka topic it names exists in the code. Kafka authentication and ACLs: the broker
authenticates every listener another container can reach and denies what no ACL allows,
every service that uses Kafka logs in as its own principal of
``ecovisor.contract.kafka_access`` (and no other service has Kafka credentials), the
committed ACL script is the one generated from that table and grants each topic's reads
and writes to the services that need them only. The internal key and MQTT: the key
reaches exactly the platform services that sign, verify or derive MQTT passwords from it
(never app code), mosquitto admits no anonymous client and reads the password and ACL
files the ``mqtt-setup`` one-shot writes (its script is run here against stand-ins), and
every MQTT client of compose, in its own environment, logs in with a password those files
admit. The ledger scales (``--scale ledger=N``): no published port, no container name, no
shared network namespace, its views on the compose network at its hostname, read by the
API at the service name. A Docker-backed test runs where a daemon answers."""

from __future__ import annotations

import ast
import base64
import os
import re
import shutil
import subprocess
import sys
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecovisor.contract import bus_access, kafka_access, topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import load_config
from ecovisor.contract.environment import (
    ENV_KAFKA_PASSWORD,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SECURITY_PROTOCOL,
    ENV_KAFKA_USERNAME,
    ENV_VARS,
    internal_key,
)
from ecovisor.embedded.mqtt_auth import BrokerAuth, mosquitto_hash
from ecovisor.embedded.plan import module_exists

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SITE = ROOT / "deploy" / "compose-site.yaml"
ACL_SCRIPT = ROOT / "deploy" / "kafka" / "kafka-acls.sh"
ACL_COMMAND = "ecovisor config kafka-acls --config deploy/compose-site.yaml"
PACKAGES = ("ecovisor", "streams", "collectors", "actuators", "policies")

# The agreed process entry points (see docs/embedded-stack.md); kept in sync with the
# embedded stack's plan. Policies are any module of policies/.
ENTRY_POINTS = {
    "ecovisor.cli",  # one-shot: topics --create
    "streams.bridge",
    "streams.ledger",
    "streams.history",
    "collectors.solar",
    "collectors.carbon",
    "collectors.battery_device",
    "collectors.power",
    "actuators.containers",
    "actuators.battery",
    "actuators.cgexec",
    "ecovisor.api",
}


def _compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _product_services() -> dict[str, dict[str, Any]]:
    return {n: s for n, s in _compose()["services"].items() if "build" in s}


def _mounted(svc: dict[str, Any], path: str) -> Path:
    """The file of the repository mounted at ``path`` in the service."""
    for v in svc.get("volumes", []):
        src, _, rest = v.partition(":")
        if rest.split(":")[0] == path and src.startswith("./"):
            return ROOT / src
    raise AssertionError(f"nothing of the repository is mounted at {path}")


def _module(svc: dict[str, Any]) -> str:
    cmd = svc["command"]
    if cmd[0] == "sh":  # a mounted script (mqtt-setup): the module it runs
        found = re.findall(r"^python -m ([\w.]+)", _mounted(svc, cmd[1]).read_text(), re.M)
        assert len(found) == 1, found
        return found[0]
    assert isinstance(cmd, list) and cmd[:2] == ["python", "-m"], cmd
    return cmd[2]


def _code_text() -> str:
    return "\n".join(
        p.read_text() for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if p.is_file()
    )


def test_docker_compose_config_validates() -> None:
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose (Debian package) is not installed; CI installs it")
    r = subprocess.run(
        [exe, "-f", str(COMPOSE), "config", "--quiet"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("service", sorted(_product_services()))
def test_service_command_is_a_real_entry_point(service: str) -> None:
    module = _module(_product_services()[service])
    assert module in ENTRY_POINTS or module.startswith("policies."), (
        f"{service}: {module} is not an agreed entry point"
    )
    assert module_exists(module), f"{service}: module {module} does not exist in the package"


def test_every_product_service_uses_the_one_image() -> None:
    services = _product_services()
    assert len(services) >= 12
    assert {s["build"] for s in services.values()} == {"."}
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim", dockerfile, re.M)
    assert "pip install ." in dockerfile
    # every agreed long-running service is in the compose file
    modules = {_module(s) for s in services.values()}
    assert modules >= ENTRY_POINTS


def test_environment_variables_exist_in_code() -> None:
    text = COMPOSE.read_text()
    named = set(re.findall(r"\bECOVISOR_[A-Z_]+\b", text))
    code = _code_text()
    site = (ROOT / "deploy" / "compose-site.yaml").read_text()
    passwords = {kafka_access.password_env(p.name) for p in kafka_access.kafka_principals(_site())}
    for var in named:
        # a variable is read by the code, is a ${VAR} the mounted site config expands, or
        # holds a Kafka principal's password (the ACL script reads it)
        assert f'"{var}"' in code or f"${{{var}" in site or var in passwords, (
            f"{var} is not used anywhere"
        )
    env = _compose()["x-ecovisor"]["environment"]
    assert set(ENV_VARS) <= set(env), "every endpoint variable (contract.environment) is set"


def test_topics_named_exist_in_code() -> None:
    cfg = load_config(ROOT / "deploy" / "compose-site.yaml")
    known = set(topics.all_topics([a.id for a in cfg.apps]))
    for name in set(re.findall(r"\becovisor\.[a-z0-9_.-]+[a-z0-9_]", COMPOSE.read_text())):
        assert module_exists(name) or name in known, f"{name}: neither a module nor a topic"


def test_site_config_is_the_demo_site_for_compose() -> None:
    compose_cfg = load_config(ROOT / "deploy" / "compose-site.yaml")
    demo = load_config(ROOT / "examples" / "demo-site.yaml")
    assert [a.id for a in compose_cfg.apps] == [a.id for a in demo.apps]
    assert compose_cfg.site.id == demo.site.id
    services = _compose()["services"]
    # every demo container with a workload has its launcher service, and nothing else
    wanted = {f"container-{c.id}" for a in compose_cfg.apps for c in a.containers if c.command}
    launchers = {n for n in services if n.startswith("container-")}
    assert launchers == wanted
    for n in launchers:
        assert services[n]["command"][-1] == n.removeprefix("container-")
    mounts = services["bridge"]["volumes"]
    assert "./deploy/compose-site.yaml:/etc/ecovisor/site.yaml:ro" in mounts


def test_infrastructure_and_start_order() -> None:
    services = _compose()["services"]
    kafka_env = services["kafka"]["environment"]
    assert services["kafka"]["image"].startswith("apache/kafka:")
    assert kafka_env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    assert any("deploy/mosquitto/mosquitto.conf" in v for v in services["mosquitto"]["volumes"])
    assert "persistence true" in (ROOT / "deploy/mosquitto/mosquitto.conf").read_text()
    influx = services["influxdb"]["environment"]
    assert services["influxdb"]["image"].startswith("influxdb:2")
    for k in ("MODE", "ORG", "BUCKET", "ADMIN_TOKEN"):
        assert f"DOCKER_INFLUXDB_INIT_{k}" in influx
    for name in ("kafka", "mosquitto", "influxdb"):
        assert "healthcheck" in services[name], name
    assert services["topics"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    # the users and ACLs exist before the first client logs in
    assert services["topics"]["depends_on"]["kafka-setup"]["condition"] == (
        "service_completed_successfully"
    )
    for name, svc in _product_services().items():
        if name in ("topics", "mqtt-setup"):
            continue  # the one-shots that come first
        dep = svc["depends_on"]
        assert dep["topics"]["condition"] == "service_completed_successfully", name


# --- Kafka: SASL/SCRAM and ACLs ---------------------------------------------------------
KAFKA_MODULES = ("kafka", "aiokafka", "faust")


@cache
def _site() -> EcovisorConfig:
    return load_config(SITE)


def _principals() -> dict[str, kafka_access.KafkaPrincipal]:
    return {p.name: p for p in kafka_access.kafka_principals(_site())}


def _source(module: str) -> Path | None:
    base = ROOT / Path(*module.split("."))
    for f in (base / "__main__.py", base / "__init__.py", base.with_suffix(".py")):
        if f.is_file():
            return f
    return None


@cache
def _imports(module: str) -> frozenset[str]:
    f = _source(module)
    if f is None:
        return frozenset()
    package = module if f.name in ("__init__.py", "__main__.py") else module.rpartition(".")[0]
    out: set[str] = set()
    for n in ast.walk(ast.parse(f.read_text())):
        if isinstance(n, ast.Import):
            out.update(a.name for a in n.names)
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level:
                parts = package.split(".")[: len(package.split(".")) - (n.level - 1)]
                base = ".".join(parts + ([n.module] if n.module else []))
            out.add(base)
            out.update(f"{base}.{a.name}" for a in n.names)
    return frozenset(out)


@cache
def _uses(module: str, libraries: tuple[str, ...]) -> bool:
    """Does ``python -m module`` import one of ``libraries``, directly or through the
    project's modules it imports (at any depth, lazily imported ones included)?"""
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        for name in _imports(m):
            parts = name.split(".")
            if parts[0] in libraries:
                return True
            if parts[0] in PACKAGES:
                todo.extend(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return False


def _uses_kafka(module: str) -> bool:
    """A Kafka client library (kafka-python, aiokafka, Faust)."""
    return _uses(module, KAFKA_MODULES)


def _uses_mqtt(module: str) -> bool:
    """paho, the MQTT client."""
    return _uses(module, ("paho",))


def _kafka_env() -> dict[str, Any]:
    return _compose()["services"]["kafka"]["environment"]


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, _, rest = item.partition("://")
        host, _, port = rest.rpartition(":")
        out[name] = (host, int(port))
    return out


def _protocols() -> dict[str, str]:
    pairs = _kafka_env()["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    return dict(pair.split(":") for pair in pairs)


def test_kafka_broker_authenticates_and_denies_what_no_acl_allows() -> None:
    env = _kafka_env()
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"  # KRaft's authorizer
    )
    assert str(env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"]).lower() == "false"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == kafka_access.SCRAM_MECHANISM
    # the only super user is the principal of the loopback PLAINTEXT listeners: the broker
    assert env["KAFKA_SUPER_USERS"] == "User:ANONYMOUS"
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = _protocols()
    assert set(protocols) == set(listeners)
    for name, (host, _port) in listeners.items():
        if protocols[name] == "PLAINTEXT":
            # unauthenticated = ANONYMOUS = super user: only inside the broker's container
            assert host in ("127.0.0.1", "localhost"), f"{name} must listen on loopback only"
            assert advertised.get(name, ("127.0.0.1", 0))[0] in ("127.0.0.1", "localhost")
        else:
            assert protocols[name] in ("SASL_PLAINTEXT", "SASL_SSL"), name
            jaas = env[f"KAFKA_LISTENER_NAME_{name}_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
            assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule")
    # KRaft and inter-broker traffic stay on the loopback PLAINTEXT listeners
    assert protocols[env["KAFKA_CONTROLLER_LISTENER_NAMES"]] == "PLAINTEXT"
    assert protocols[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "PLAINTEXT"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[1].split(":")[0] == "127.0.0.1"
    # the services' bootstrap is an authenticated listener
    bootstrap = _compose()["x-ecovisor"]["environment"]["ECOVISOR_KAFKA_BOOTSTRAP"]
    host, _, port = bootstrap.partition(":")
    sasl = [n for n, hp in advertised.items() if hp == (host, int(port))]
    assert sasl and protocols[sasl[0]].startswith("SASL_"), "services must reach a SASL listener"
    # the image's configure script demands a JAAS file in KAFKA_OPTS when an advertised
    # listener's NAME contains "SASL_"; the JAAS config is per listener here instead
    assert "SASL_" not in env["KAFKA_ADVERTISED_LISTENERS"]
    # the host listener is published on the host's loopback only
    assert all(p.startswith("127.0.0.1:") for p in _compose()["services"]["kafka"]["ports"])
    health = " ".join(_compose()["services"]["kafka"]["healthcheck"]["test"])
    assert "--bootstrap-server 127.0.0.1:9094" in health and listeners["BROKER"][1] == 9094


@pytest.mark.parametrize("service", sorted(_product_services()))
def test_every_kafka_service_logs_in_as_its_own_principal(service: str) -> None:
    svc = _product_services()[service]
    module = _module(svc)
    env = svc.get("environment") or _compose()["x-ecovisor"]["environment"]
    if service == "mqtt-setup":  # `ecovisor config mqtt-auth` writes files, no broker
        assert not set(env) & {ENV_KAFKA_USERNAME, ENV_KAFKA_PASSWORD}
        return
    principal = kafka_access.principal_of_module(_site(), module)
    if not _uses_kafka(module):
        assert principal is None, f"{module} does not use Kafka but has principal {principal}"
        assert ENV_KAFKA_USERNAME not in env and ENV_KAFKA_PASSWORD not in env, (
            f"{service} does not use Kafka: it gets no Kafka credentials"
        )
        return
    assert principal is not None, f"{service} ({module}) uses Kafka but has no principal"
    assert env[ENV_KAFKA_SECURITY_PROTOCOL] == "SASL_PLAINTEXT"
    assert env[ENV_KAFKA_SASL_MECHANISM] == kafka_access.SCRAM_MECHANISM
    assert env[ENV_KAFKA_USERNAME] == principal.name
    var = kafka_access.password_env(principal.name)
    assert re.fullmatch(rf"\$\{{{var}:-[^}},\[\]=]{{8,}}\}}", env[ENV_KAFKA_PASSWORD]), (
        "a password variable with a default like the tokens', none of , [ ] ="
    )
    # the password the service logs in with is the one kafka-setup creates the user with
    setup = _compose()["services"]["kafka-setup"]["environment"]
    assert setup[var] == env[ENV_KAFKA_PASSWORD]


def test_every_kafka_principal_is_used_and_has_its_own_password() -> None:
    services = _product_services()
    users = {s["environment"][ENV_KAFKA_USERNAME] for s in services.values()
             if ENV_KAFKA_USERNAME in (s.get("environment") or {})}  # fmt: skip
    assert users == set(_principals()), "every principal is some service's, and only those"
    setup = _compose()["services"]["kafka-setup"]["environment"]
    defaults = [setup[kafka_access.password_env(n)] for n in _principals()]
    assert len(set(defaults)) == len(defaults), "no two principals share a password"


def test_kafka_setup_one_shot_creates_users_and_acls_first() -> None:
    services = _compose()["services"]
    setup = services["kafka-setup"]
    assert setup["image"] == services["kafka"]["image"]  # its kafka-configs.sh, kafka-acls.sh
    assert setup["restart"] == "no"
    # the loopback PLAINTEXT listener (super user) is reachable from its network namespace
    assert setup["network_mode"] == "service:kafka"
    assert setup["environment"]["KAFKA_BOOTSTRAP"] == "127.0.0.1:9094"
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"
    mount = "./deploy/kafka/kafka-acls.sh:/etc/ecovisor/kafka-acls.sh:ro"
    assert mount in setup["volumes"]
    assert setup["command"] == ["/bin/sh", "/etc/ecovisor/kafka-acls.sh"]
    for name in _principals():
        assert kafka_access.password_env(name) in setup["environment"], name


def test_committed_acl_script_is_the_generated_one() -> None:
    want = kafka_access.render_acl_script(_site(), command=ACL_COMMAND)
    assert ACL_SCRIPT.read_text() == want, (
        f"deploy/kafka/kafka-acls.sh is stale: run `{ACL_COMMAND} --out deploy/kafka/kafka-acls.sh`"
    )


def _script_acls() -> list[kafka_access.Acl]:
    return kafka_access.parse_acl_script(ACL_SCRIPT.read_text())


def test_acl_script_covers_every_topic_of_the_site() -> None:
    acls = _script_acls()
    assert acls == kafka_access.kafka_acls(_site())
    site_topics = topics.all_topics([a.id for a in _site().apps])
    for t in site_topics:
        assert kafka_access.allowed(acls, t, "Create") == {"admin"}, t
        assert kafka_access.allowed(acls, t, "Write"), f"nobody may write {t}"
        assert kafka_access.allowed(acls, t, "Read"), f"nobody may read {t}"
    # the ledger's Faust changelogs (created by the ledger itself) and its consumer group
    from streams.ledger_app import faust_app_id, internal_topics

    app_id = faust_app_id(_site())
    for t in internal_topics(app_id):
        for op in ("Read", "Write", "Create", "Describe"):
            assert kafka_access.allowed(acls, t, op) == {"ledger"}, (t, op)
    groups = {(a.principal, a.name, a.pattern) for a in acls if a.resource == "group"}
    assert groups == {("ledger", app_id, "literal")}
    # nothing beyond the site's topics, the ledger's own prefix and its group
    for a in acls:
        if a.resource == "topic" and a.pattern == "literal":
            assert a.name in site_topics, a
        elif a.resource == "topic":
            assert (a.principal, a.name) == ("ledger", f"{app_id}-"), a


# Who may write and read each topic, written out by hand (not derived from the table
# under test): a service given a topic it does not need fails here.
ACTUATORS = {"actuator-containers", "actuator-battery"}
WRITERS = {
    topics.TELEMETRY: {"bridge"},  # only the bridge: telemetry is what devices reported
    topics.COMMANDS: {"api", "admin"},  # the REST API and the operator's CLI
    topics.LEDGER: {"ledger"},
    topics.ACTUATOR_CONTAINERS: {"ledger"},  # only the ledger acts on containers
    topics.ACTUATOR_BATTERY: {"ledger"},
    topics.ACTUATOR_ACKS: ACTUATORS,  # only the actuators acknowledge
    topics.ALERTS: {"ledger"},
    topics.CONTAINERS: {"actuator-containers"},
    topics.DEADLETTER: {"bridge", "ledger", *ACTUATORS},
}
READERS = {
    topics.TELEMETRY: {"ledger", "admin"},
    topics.COMMANDS: {"ledger", "admin"},
    topics.LEDGER: {"history", "admin"},
    topics.ACTUATOR_CONTAINERS: {"actuator-containers", "admin"},
    topics.ACTUATOR_BATTERY: {"actuator-battery", "admin"},
    topics.ACTUATOR_ACKS: {"ledger", *ACTUATORS, "admin"},
    topics.ALERTS: {"admin"},
    topics.CONTAINERS: {"admin"},
    topics.DEADLETTER: {"admin"},
}


def test_no_service_may_write_or_read_a_topic_it_does_not_need() -> None:
    acls = _script_acls()
    for t, who in WRITERS.items():
        assert kafka_access.allowed(acls, t, "Write") == who, t
    for t, who in READERS.items():
        assert kafka_access.allowed(acls, t, "Read") == who, t
    for app in _site().apps:
        t = topics.notifications(app.id)
        assert kafka_access.allowed(acls, t, "Write") == {"ledger"}, t  # notifications
        assert kafka_access.allowed(acls, t, "Read") == {"api", "admin"}, t  # B3 for Kafka
    assert set(WRITERS) | set(READERS) == set(topics.static_topics())


# --- The internal key and MQTT authentication -------------------------------------------
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
KEY_VAR = "ECOVISOR_INTERNAL_KEY"
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


# --- The ledger scales: docker compose up --scale ledger=N -------------------------------
def _flag(cmd: list[str], name: str) -> str:
    assert cmd.count(name) == 1, (name, cmd)
    return cmd[cmd.index(name) + 1]


def _declares(path: str, flag: str) -> bool:
    return f'add_argument("{flag}"' in (ROOT / path).read_text()


def test_ledger_service_can_be_scaled() -> None:
    services = _compose()["services"]
    ledger = services["ledger"]
    for key in ("ports", "container_name", "hostname", "network_mode"):
        assert key not in ledger, f"ledger: {key} prevents --scale ledger=N"
    assert not [n for n, s in services.items() if s.get("network_mode") == "service:ledger"]
    cmd = ledger["command"]
    assert _module(ledger) == "streams.ledger"
    for flag in ("--partitions", "--web-bind", "--web-host"):
        assert _declares("streams/ledger.py", flag), flag
    # the views and /metrics on the compose network, at each replica's own hostname
    assert _flag(cmd, "--web-bind") == "0.0.0.0"
    assert _flag(cmd, "--web-host") == "hostname"
    assert "socket.gethostname() if a.web_host == \"hostname\"" in (
        ROOT / "streams/ledger.py").read_text()  # fmt: skip
    assert "--web-port" not in cmd  # the site's ledger_web_port, which the others use
    # off the loopback only behind the key
    assert KEY_VAR in ledger["environment"]
    # the partition count the topics one-shot creates the site-keyed topics with (the
    # ledger refuses another): `topics --create --partitions N`, default 1 (none given)
    import inspect

    from ecovisor.cli.topics import topics_cmd

    one_shot = services["topics"]["command"]
    default = inspect.signature(topics_cmd).parameters["partitions"].default
    given = _flag(one_shot, "--partitions") if "--partitions" in one_shot else default
    assert int(_flag(cmd, "--partitions")) == int(given) == 1
    assert "--group" not in cmd  # the group, ACLs and changelogs are named after the site
    health = " ".join(ledger["healthcheck"]["test"])
    assert f"'127.0.0.1', {_site().stack.ledger_web_port}" in health


def test_api_reads_the_ledger_at_its_service_name() -> None:
    services = _compose()["services"]
    api = services["api"]
    assert "network_mode" not in api
    cmd = api["command"]
    assert _declares("ecovisor/api/main.py", "--ledger-url")
    assert _flag(cmd, "--ledger-url") == f"http://ledger:{_site().stack.ledger_web_port}"
    assert _flag(cmd, "--host") == "0.0.0.0"
    assert f"{_site().stack.api_port}:{_site().stack.api_port}" in api["ports"]
    assert api["depends_on"]["ledger"]["condition"] == "service_healthy"
    assert "/healthz" in " ".join(api["healthcheck"]["test"])
    policy = services["policy-web-solar-following-caps"]
    assert policy["environment"]["ECOVISOR_API_URL"] == f"http://api:{_site().stack.api_port}"
    assert policy["depends_on"]["api"]["condition"] == "service_healthy"
    # the only service names in URLs are real services
    for url in re.findall(r"http://([a-z-]+):\d+", COMPOSE.read_text()):
        assert url in services or url == "localhost", url


def _docker_available() -> str | None:
    try:
        import docker

        docker.from_env(timeout=3).ping()
    except Exception as e:  # any failure means: no usable daemon
        return f"no Docker daemon answers ({type(e).__name__}); compose is checked statically"
    return None


@pytest.mark.docker
@pytest.mark.integration
def test_compose_stack_runs_under_docker() -> None:
    reason = _docker_available()
    if reason:
        pytest.skip(reason)
    from kafka.admin import KafkaAdminClient
    from testcontainers.compose import DockerCompose

    cfg = load_config(ROOT / "deploy" / "compose-site.yaml")
    wanted = set(topics.all_topics([a.id for a in cfg.apps]))
    # the host listener authenticates too: as admin, with the password compose gives it
    var = kafka_access.password_env("admin")
    default = re.fullmatch(r"\$\{\w+:-(.*)\}", _compose()["x-kafka-passwords"]["admin"])
    assert default is not None
    admin_login = {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": kafka_access.SCRAM_MECHANISM,
        "sasl_plain_username": "admin",
        "sasl_plain_password": os.environ.get(var) or default.group(1),
    }
    with DockerCompose(str(ROOT), compose_file_name="docker-compose.yml", build=True) as dc:
        dc.wait_for("http://127.0.0.1:8086/health")
        deadline = time.monotonic() + 180
        have: set[str] = set()
        while not wanted <= have and time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(bootstrap_servers="127.0.0.1:29092", **admin_login)
                have = set(admin.list_topics())
                admin.close()
            except Exception:  # broker still starting
                time.sleep(2)
        assert wanted <= have  # the one-shot created every topic


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
