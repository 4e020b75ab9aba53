"""docker-compose.yml, checked statically (no Docker engine here): it validates, every
product service runs a real entry point of the package, and every ECOVISOR_* variable and
Kafka topic it names exists in the code. Kafka authentication and ACLs: the broker
authenticates every listener another container can reach and denies what no ACL allows,
every service that uses Kafka logs in as its own principal of
``ecovisor.contract.kafka_access`` (and no other service has Kafka credentials), the
committed ACL script is the one generated from that table and grants each topic's reads
and writes to the services that need them only. A Docker-backed test runs where a daemon
answers."""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecovisor.contract import kafka_access, topics
from ecovisor.contract.config import (
    ENV_KAFKA_PASSWORD,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SECURITY_PROTOCOL,
    ENV_KAFKA_USERNAME,
    ENV_VARS,
    EcovisorConfig,
    load_config,
)
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


def _module(svc: dict[str, Any]) -> str:
    cmd = svc["command"]
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
    assert set(ENV_VARS) <= set(env), "every endpoint variable of ecovisor.config is set"


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
        if name in ("topics", "api"):
            continue  # api joins the ledger's network namespace, after it
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


def _imports(module: str) -> set[str]:
    f = _source(module)
    if f is None:
        return set()
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
    return out


@cache
def _uses_kafka(module: str) -> bool:
    """Does ``python -m module`` import a Kafka client library, directly or through the
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
            if parts[0] in KAFKA_MODULES:
                return True
            if parts[0] in PACKAGES:
                todo.extend(".".join(parts[:k]) for k in range(1, len(parts) + 1))
    return False


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
