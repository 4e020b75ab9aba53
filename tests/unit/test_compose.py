"""docker-compose.yml, checked statically (no Docker engine here): it validates, every
product service runs a real entry point of the package, and every ECOVISOR_* variable and
Kafka topic it names exists in the code; its site is the demo site, and the brokers, the
store and the one-shots start in order. The ledger scales (``--scale ledger=N``): no
published port, no container name, no shared network namespace, its views on the compose
network at its hostname, read by the API at the service name. A Docker-backed test runs
where a daemon answers. Kafka authentication and ACLs: test_compose_kafka_acl.py; the
internal key, MQTT and the app tokens: test_compose_secrets.py; Prometheus and Grafana:
test_compose_monitoring.py; what they share: compose_model.py."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time

import pytest

from ecovisor.contract import kafka_access, topics
from ecovisor.contract.config_file import load_config
from ecovisor.contract.environment import ENV_VARS
from ecovisor.embedded.plan import module_exists
from tests.unit.compose_model import (
    COMPOSE,
    KEY_VAR,
    ROOT,
    _code_text,
    _compose,
    _module,
    _product_services,
    _site,
)

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


def test_workload_containers_drop_root_and_see_no_other_process() -> None:
    """The workloads are app code: cgexec (root only to join the host cgroup) drops to the
    app's uid; the container adds no_new_privs and its own pid namespace
    (docs/reliability.md#tenant-workloads)."""
    services = _compose()["services"]
    launchers = {n: s for n, s in services.items() if n.startswith("container-")}
    assert launchers
    for name, svc in launchers.items():
        assert svc["command"][:4] == ["python", "-m", "actuators.cgexec", "--container"], name
        assert "--uid" not in svc["command"]  # its app's uid, from the site file
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert "pid" not in svc, f"{name}: the workload must not see the host's processes"
        assert svc.get("user") in (None, "root", "0")  # cgexec must start as root to drop


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
    assert f"http://127.0.0.1:{_site().stack.ledger_web_port}/ready" in health


def test_api_reads_the_ledger_at_its_service_name() -> None:
    services = _compose()["services"]
    api = services["api"]
    assert "network_mode" not in api
    cmd = api["command"]
    assert _declares("ecovisor/api/main.py", "--ledger-url")
    assert _flag(cmd, "--ledger-url") == f"http://ledger:{_site().stack.ledger_web_port}"
    assert _flag(cmd, "--host") == "0.0.0.0"
    port = _site().stack.api_port
    assert api["ports"] == [f"${{API_HOST_BIND:-127.0.0.1}}:{port}:{port}"]
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
