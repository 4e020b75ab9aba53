"""The Kafka principals and ACLs of a site (``ecovisor.contract.kafka_access``) and the
script that applies them: run here against stand-ins of ``kafka-configs.sh`` and
``kafka-acls.sh`` that record their arguments (no broker), so what the script asks Kafka
for is exactly the table. ``ecovisor config kafka-acls`` prints it. The compose file's
use of it is in test_compose_kafka_acl.py."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecovisor.cli.main import app
from ecovisor.contract import kafka_access, topics
from ecovisor.contract.config_file import parse_config
from streams.ledger_app import faust_app_id, internal_topics

SITE = """
site: {id: s1}
apps:
  - {id: web, token: web-token-123456}
  - {id: batch, token: batch-token-654321}
"""
CFG = parse_config(SITE)
runner = CliRunner()


def test_one_principal_per_kafka_service() -> None:
    names = [p.name for p in kafka_access.kafka_principals(CFG)]
    assert names == ["bridge", "ledger", "history", "actuator-containers",
                     "actuator-battery", "api", "admin"]  # fmt: skip
    assert kafka_access.principal_of_module(CFG, "streams.ledger").name == "ledger"
    assert kafka_access.principal_of_module(CFG, "ecovisor.cli").name == "admin"
    assert kafka_access.principal_of_module(CFG, "collectors.power") is None
    assert kafka_access.password_env("actuator-containers") == (
        "ECOVISOR_KAFKA_PASSWORD_ACTUATOR_CONTAINERS"
    )
    with pytest.raises(KeyError):
        kafka_access.kafka_principal(CFG, "nobody")


def test_the_ledger_acls_name_its_faust_app() -> None:
    """The group and the changelogs the ACLs allow are the ones the Faust app uses."""
    ledger = kafka_access.kafka_principal(CFG, "ledger")
    app_id = faust_app_id(CFG)
    assert ledger.groups == (app_id,)
    acls = kafka_access.principal_acls(ledger)
    for t in internal_topics(app_id):
        for op in kafka_access.OPERATIONS:
            assert kafka_access.allowed(acls, t, op) == {"ledger"}
    # another site's ledger is not covered by this one's prefix (s1 vs s10)
    assert not kafka_access.allowed(acls, "ecovisor-ledger-s10-snapshots-changelog", "Read")


def test_notifications_are_per_app_and_read_by_the_api_only() -> None:
    acls = kafka_access.kafka_acls(CFG)
    for a in ("web", "batch"):
        t = topics.notifications(a)
        assert kafka_access.allowed(acls, t, "Write") == {"ledger"}
        assert kafka_access.allowed(acls, t, "Read") == {"api", "admin"}
    # Describe is granted only where no Read or Write implies it
    describe = [a for a in acls if a.operation == "Describe" and a.pattern == "literal"]
    assert {(a.principal, a.name) for a in describe} == {("ledger", topics.CONTAINERS)}


# --- the script, run against recording stand-ins ------------------------------------------
STUB = """#!/bin/sh
{{ printf '%s' "{tool}"; for a in "$@"; do printf '\\t%s' "$a"; done; printf '\\n'; }} >> "$CALLS"
"""


def _run_script(tmp_path: Path, script: str, env: dict[str, str]) -> tuple[int, list[list[str]]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for tool in ("kafka-configs.sh", "kafka-acls.sh"):
        (bin_dir / tool).write_text(STUB.format(tool=tool))
        (bin_dir / tool).chmod(0o755)
    path = tmp_path / "kafka-acls.sh"
    path.write_text(script)
    calls = tmp_path / "calls"
    calls.write_text("")
    r = subprocess.run(
        ["/bin/sh", str(path)],
        env={"PATH": os.environ["PATH"], "KAFKA_BIN": str(bin_dir), "CALLS": str(calls), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    return r.returncode, [line.split("\t") for line in calls.read_text().splitlines()]


def _passwords() -> dict[str, str]:
    return {kafka_access.password_env(p.name): f"{p.name}-pw-0123"
            for p in kafka_access.kafka_principals(CFG)}  # fmt: skip


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
def test_the_script_creates_every_user_and_exactly_the_acls(tmp_path: Path) -> None:
    code, calls = _run_script(tmp_path, kafka_access.render_acl_script(CFG), _passwords())
    assert code == 0
    users = [c for c in calls if c[0] == "kafka-configs.sh"]
    assert [c[c.index("--entity-name") + 1] for c in users] == [
        p.name for p in kafka_access.kafka_principals(CFG)
    ]
    for c in users:
        name = c[c.index("--entity-name") + 1]
        assert c[1:3] == ["--bootstrap-server", "127.0.0.1:9094"]
        assert c[c.index("--add-config") + 1] == (
            f"SCRAM-SHA-512=[iterations=8192,password={name}-pw-0123]"
        )
    granted = []
    for c in (c for c in calls if c[0] == "kafka-acls.sh"):
        assert c[1:4] == ["--bootstrap-server", "127.0.0.1:9094", "--add"]
        assert c[4] == "--allow-principal" and c[5].startswith("User:")
        granted.append(f"allow {c[5].removeprefix('User:')} {shlex.join(c[6:])}")
    assert kafka_access.parse_acl_script("\n".join(granted)) == kafka_access.kafka_acls(CFG)


@pytest.mark.skipif(shutil.which("sh") is None, reason="needs a POSIX shell")
@pytest.mark.parametrize("bad", ["", "has,comma-in-it", "a]b-0123456", "k=v-0123456"])
def test_the_script_refuses_a_missing_or_unusable_password(tmp_path: Path, bad: str) -> None:
    env = {**_passwords(), "ECOVISOR_KAFKA_PASSWORD_BRIDGE": bad}
    code, calls = _run_script(tmp_path, kafka_access.render_acl_script(CFG), env)
    assert code != 0
    assert calls == []  # the bridge comes first: nothing was created


# --- the CLI --------------------------------------------------------------------------------
def test_cli_prints_writes_and_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    Path("site.yaml").write_text(SITE)
    r = runner.invoke(app, ["config", "kafka-acls", "--config", "site.yaml"])
    assert r.exit_code == 0, r.output
    assert r.output == kafka_access.render_acl_script(
        CFG, command="ecovisor config kafka-acls --config site.yaml"
    )
    r = runner.invoke(app, ["config", "kafka-acls", "-c", "site.yaml", "--out", "acls.sh"])
    assert r.exit_code == 0, r.output
    assert Path("acls.sh").read_text() == kafka_access.render_acl_script(
        CFG, command="ecovisor config kafka-acls --config site.yaml"
    )
    r = runner.invoke(app, ["config", "kafka-acls", "-c", "site.yaml", "--table"])
    assert r.exit_code == 0, r.output
    assert "bridge (streams.bridge)\n  Write     topic ecovisor.deadletter\n" in r.output
    assert "  Read      group ecovisor-ledger-s1\n" in r.output
    assert "  Create    topic ecovisor-ledger-s1-*\n" in r.output
    r = runner.invoke(app, ["config", "kafka-acls", "-c", "missing.yaml"])
    assert r.exit_code == 1 and "no such configuration file" in r.output
