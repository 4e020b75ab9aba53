"""What the docker-compose.yml tests share (test_compose.py, test_compose_kafka_acl.py,
test_compose_secrets.py): the repository's paths, the compose file and its product
services (those built from the ecovisor image) and the module each runs, the repository
file mounted in a service, the site file compose mounts, and which libraries a module
imports, directly or through the project's modules (a Kafka client, paho). Not a test
module: imported as ``tests.unit.compose_model``, like tests/fakes and
tests/integration/e2e_helpers.py."""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import load_config

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
SITE = ROOT / "deploy" / "compose-site.yaml"
PACKAGES = ("ecovisor", "streams", "collectors", "actuators", "policies")
KAFKA_MODULES = ("kafka", "aiokafka", "faust")
# the internal key's variable: who holds it (test_compose_secrets.py), the ledger behind
# it (test_compose.py)
KEY_VAR = "ECOVISOR_INTERNAL_KEY"


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


@cache
def _site() -> EcovisorConfig:
    return load_config(SITE)


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
