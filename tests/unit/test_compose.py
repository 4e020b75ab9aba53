"""docker-compose.yml, checked statically (no Docker engine here): it validates, every
product service runs a real entry point of the package, and every ECOVISOR_* variable and
Kafka topic it names exists in the code. A Docker-backed test runs where a daemon answers."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from ecovisor.contract import topics
from ecovisor.contract.config import ENV_VARS, load_config
from ecovisor.embedded.plan import module_exists

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
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
    for var in named:
        # a variable is read by the code, or is a ${VAR} the mounted site config expands
        assert f'"{var}"' in code or f"${{{var}" in site, f"{var} is not used anywhere"
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
    for name, svc in _product_services().items():
        if name in ("topics", "api"):
            continue  # api joins the ledger's network namespace, after it
        dep = svc["depends_on"]
        assert dep["topics"]["condition"] == "service_completed_successfully", name


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
    with DockerCompose(str(ROOT), compose_file_name="docker-compose.yml", build=True) as dc:
        dc.wait_for("http://127.0.0.1:8086/health")
        deadline = time.monotonic() + 180
        have: set[str] = set()
        while not wanted <= have and time.monotonic() < deadline:
            try:
                admin = KafkaAdminClient(bootstrap_servers="127.0.0.1:29092")
                have = set(admin.list_topics())
                admin.close()
            except Exception:  # broker still starting
                time.sleep(2)
        assert wanted <= have  # the one-shot created every topic
