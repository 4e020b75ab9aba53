"""The ecovisor CLI without servers: config check, command options, formatting, the stack
plan and its supervisord configuration."""

from __future__ import annotations

import configparser
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ecovisor.cli.commands import ALIASES, CMD_NAMES, cmd_app
from ecovisor.cli.format import format_record
from ecovisor.cli.main import app
from ecovisor.contract.commands import (
    COMMAND_TYPES,
    Command,
    SetBatteryChargeRate,
    command_fields,
    command_type,
    sign_command,
    verify_command,
)
from ecovisor.contract.config_file import load_config
from ecovisor.contract.notifications import Notification
from ecovisor.contract.operator_messages import dead_letter
from ecovisor.embedded import stack
from ecovisor.embedded.workload import duty_cycle

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo-site.yaml"
runner = CliRunner()


def test_config_check_ok_prints_summary_without_tokens() -> None:
    r = runner.invoke(app, ["config", "check", "--config", str(DEMO)])
    assert r.exit_code == 0, r.output
    cfg = load_config(DEMO)
    for a in cfg.apps:
        assert f"app {a.id}:" in r.output
        assert a.token not in r.output
    assert "container web-1 on node-1" in r.output


def test_config_check_reports_readable_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "site: {id: s, nodes: [{id: n, cores: 1}]}\n"
        "apps:\n"
        "  - {id: a, token: short, shares: {solar_fraction: 0.7}}\n"
        "  - {id: b, token: long-enough-token, shares: {solar_fraction: 0.7},\n"
        "     containers: [{id: c, node: nope, backend: {type: cgroup_v1, cgroup: x}}]}\n"
    )
    r = runner.invoke(app, ["config", "check", "--config", str(bad)])
    assert r.exit_code == 1
    assert "apps.0.token" in r.output and "at least 8" in r.output
    assert "Traceback" not in r.output
    bad.write_text(bad.read_text().replace("short", "long-enough-0"))
    r = runner.invoke(app, ["config", "check", "--config", str(bad)])
    assert r.exit_code == 1
    assert "unknown node 'nope'" in r.output and "solar fractions" in r.output


def test_config_check_validates_source_options(tmp_path: Path) -> None:
    text = DEMO.read_text().replace("type: synthetic", "type: no-such-carbon-source")
    bad = tmp_path / "bad-source.yaml"
    bad.write_text(text)
    r = runner.invoke(app, ["config", "check", "--config", str(bad)])
    assert r.exit_code == 1
    assert "site.carbon.type 'no-such-carbon-source' is unknown" in r.output


def test_config_check_missing_file() -> None:
    r = runner.invoke(app, ["config", "check", "--config", "/nonexistent.yaml"])
    assert r.exit_code == 1 and "no such configuration file" in r.output


def test_every_command_type_has_a_cmd_subcommand() -> None:
    assert set(CMD_NAMES) == set(COMMAND_TYPES)
    visible = {c.name for c in cmd_app.registered_commands if not c.hidden}
    hidden = {c.name for c in cmd_app.registered_commands if c.hidden}
    # exactly one visible subcommand per command type, named after its wire type
    assert sorted(CMD_NAMES.values()) == sorted(visible)
    for typ, cls in COMMAND_TYPES.items():
        assert CMD_NAMES[typ] == command_type(cls).replace("_", "-")
    assert hidden == set(ALIASES)
    for name in visible | hidden:
        r = runner.invoke(app, ["cmd", name, "--help"])
        assert r.exit_code == 0 and "--token" in r.output


@pytest.mark.parametrize(
    ("name", "base", "option"),
    [
        ("set-powercap", ["--container", "web-1"], "--watts"),  # the deprecated alias
        ("set-container-powercap", ["--container", "web-1"], "--watts"),
        ("set-carbon-rate", ["--container", "web-1"], "--mg-per-s"),
        ("set-carbon-budget", [], "--grams"),
    ],
)
def test_set_or_remove_needs_value_xor_remove(name: str, base: list[str], option: str) -> None:
    base = ["cmd", name, "--app", "web", *base, "--token", "t" * 8]
    for extra in ([], [option, "3", "--remove"]):
        r = runner.invoke(app, base + extra + ["--bootstrap", "127.0.0.1:1", "--site", "s"])
        assert r.exit_code == 2 and f"exactly one of {option} or --remove" in r.output


def test_token_comes_from_the_environment() -> None:
    r = runner.invoke(
        app,
        ["cmd", "set-charge-rate", "--app", "web", "--watts", "-1", "--site", "s",
         "--bootstrap", "127.0.0.1:1"],
        env={"ECOVISOR_TOKEN": "from-env-token"},
    )  # fmt: skip
    # the token was found (no "missing option"); the negative rate fails validation
    assert r.exit_code == 1 and "invalid command" in r.output and "watts" in r.output


def test_readable_lines() -> None:
    t = datetime(2024, 6, 1, 12, tzinfo=UTC)
    n = Notification(
        site="s", time=t, app="web", type="tick", tick=7,
        data={"app_power_w": 2.125, "solar_w": 1.0, "carbon_g": 0.0001},
    )  # fmt: skip
    line = format_record("notifications", n.to_json())
    assert line.startswith("2024-06-01T12:00:00+00:00 web tick tick=7")
    assert "app_power_w=2.125" in line and "carbon_g=0.0001" in line
    dl = dead_letter("mqtt:x", "bad json", b"{oops")
    line = format_record("deadletter", dl.model_dump_json().encode())
    assert "mqtt:x" in line and "reason='bad json'" in line and "raw={oops" in line
    # a version 1 command still on the topic carries its token: never printed
    v1 = {"site": "s", "time": "2024-06-01T12:00:00Z", "app": "web", "token": "secret-token",
          "type": "set_battery_charge_rate", "watts": 1.0}  # fmt: skip
    assert "secret-token" not in format_record("commands", json.dumps(v1).encode())
    cmd = sign_command(SetBatteryChargeRate(site="s", time=t, app="web", watts=1), "t" * 8)
    assert "web" in format_record("commands", cmd.to_json())
    assert format_record("ledger", b"not json") == "not json"


def test_plan_of_demo_site(tmp_path: Path) -> None:
    cfg = load_config(DEMO)
    p = stack.plan(cfg, DEMO, tmp_path, python="py", exists=lambda _m: True)
    names = [s.name for s in p.services]
    for want in ("kafka", "mqtt", "bridge", "ledger", "api", "collector-solar",
                 "collector-carbon", "collector-battery", "collector-power",
                 "actuator-containers", "actuator-battery", "container-web-1",
                 "container-web-2", "container-batch-1"):  # fmt: skip
        assert want in names, want
    by = {s.name: s for s in p.services}
    assert by["container-web-1"].command[-2:] == ["--container", "web-1"]
    assert by["bridge"].command[:5] == ["py", "-m", "streams.bridge", "--config", str(DEMO)]
    assert by["kafka"].server and not by["bridge"].server
    assert by["bridge"].priority < by["ledger"].priority < by["api"].priority
    assert p.topics[-2:] == ["ecovisor.notifications.batch", "ecovisor.notifications.web"]
    assert p.env["ECOVISOR_KAFKA_BOOTSTRAP"] == "127.0.0.1:19092"


def test_plan_skips_missing_modules_and_external_kafka(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("ECOVISOR_KAFKA_BOOTSTRAP", "broker:9092")
    cfg = load_config(DEMO)
    p = stack.plan(cfg, DEMO, tmp_path, exists=lambda m: m == "streams.bridge")
    names = [s.name for s in p.services]
    assert "kafka" not in names and "bridge" in names and "ledger" not in names
    assert any("streams.ledger" in note for note in p.skipped)
    assert p.bootstrap == "broker:9092"


def test_supervisord_conf(tmp_path: Path) -> None:
    cfg = load_config(DEMO)
    p = stack.plan(cfg, DEMO, tmp_path, exists=lambda _m: True)
    p.env["ODD"] = "50%"
    text = stack.render_supervisord_conf(p, tmp_path, tmp_path)
    ini = configparser.RawConfigParser()
    ini.read_string(text)
    progs = [s for s in ini.sections() if s.startswith("program:")]
    assert len(progs) == len(p.services)
    for s in progs:
        assert ini[s]["stopasgroup"] == "true" and ini[s]["killasgroup"] == "true"
        assert ini[s]["stdout_logfile"].startswith(str(tmp_path / "logs"))
    assert ini["program:kafka"]["autostart"] == "true"
    assert ini["program:bridge"]["autostart"] == "false"  # started after topics exist
    assert 'ODD="50%%"' in ini["program:bridge"]["environment"]
    assert ini["unix_http_server"]["file"] == str(stack.socket_path(tmp_path))


def test_socket_path_stays_short(tmp_path: Path) -> None:
    deep = tmp_path / ("x" * 120)
    assert len(str(stack.socket_path(deep))) < 100


def test_workload_duty_cycle() -> None:
    assert duty_cycle(0.3, 0.1) == pytest.approx((0.03, 0.07))
    assert duty_cycle(1.5, 0.1) == (0.1, 0.0)
    assert duty_cycle(-1, 0.1) == (0.0, 0.1)


def test_workload_holds_its_utilisation() -> None:
    """The burner's CPU time over 1.5 s is about U x 1.5 s (rusage of the child)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "ecovisor.embedded.workload", "--utilization", "0.4",
         "--duration", "1.5"]
    )
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    assert proc.returncode == 0
    cpu = ru.ru_utime + ru.ru_stime
    assert 0.4 * 1.5 * 0.7 < cpu < 0.4 * 1.5 * 1.3 + 0.15  # + interpreter start-up


# subcommand -> (its own options, the command fields they build)
BUILDS = {
    "set-container-powercap": (["--container", "c", "--remove"], {"container": "c", "watts": None}),
    "set-battery-charge-rate": (["--watts", "2"], {"watts": 2.0}),
    "set-battery-max-discharge": (["--watts", "3"], {"watts": 3.0}),
    "set-carbon-rate": (["--container", "c", "--mg-per-s", "1.5", "--window-s", "30"],
                        {"container": "c", "mg_per_s": 1.5, "window_s": 30.0}),
    "set-carbon-budget": (["--grams", "4"], {"grams": 4.0, "period_s": 3600.0}),
    "suspend-container": (["--container", "c"], {"container": "c"}),
    "resume-container": (["--container", "c"], {"container": "c"}),
    "scale-container": (["--container", "c", "--cpus", "0.5"], {"container": "c", "cpus": 0.5}),
    "scale-app": (["--template", "t", "--replicas", "2"], {"template": "t", "replicas": 2}),
}  # fmt: skip


def _built(monkeypatch: pytest.MonkeyPatch, name: str, extra: list[str]) -> Command:
    """The command ``ecovisor cmd NAME ...`` would publish."""
    from ecovisor.cli import commands

    sent: list[Command] = []
    monkeypatch.setattr(commands, "publish_command", lambda c, *_a: sent.append(c) or 0)
    r = runner.invoke(app, ["cmd", name, "--app", "web", "--token", "t" * 8, "--site", "s",
                            "--bootstrap", "127.0.0.1:1", *extra])  # fmt: skip
    assert r.exit_code == 0, r.output
    (c,) = sent
    assert (c.app, c.site) == ("web", "s")
    # signed with --token, which is not in the command it publishes
    assert verify_command(c, "t" * 8) and b"t" * 8 not in c.to_json()
    return c


def test_each_subcommand_builds_its_command(monkeypatch: pytest.MonkeyPatch) -> None:
    assert set(BUILDS) == set(CMD_NAMES.values())
    for name, (extra, fields) in BUILDS.items():
        c = _built(monkeypatch, name, extra)
        assert CMD_NAMES[c.type] == name
        assert {k: getattr(c, k) for k in fields} == fields
        # every own field of the command was set from an option
        assert set(fields) == set(command_fields(type(c)))


def test_old_names_build_the_same_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for old, typ in ALIASES.items():
        new = CMD_NAMES[typ]
        extra, fields = BUILDS[new]
        c = _built(monkeypatch, old, extra)
        assert c.type == typ and {k: getattr(c, k) for k in fields} == fields
        same = {"command_id", "time", "signature"}  # (the signature covers both)
        assert c.model_dump(exclude=same) == _built(monkeypatch, new, extra).model_dump(
            exclude=same
        )


def test_no_state_file_readable_by_others_holds_the_internal_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workloads run as their apps' own uids in the stack's working directory: the
    supervisord configuration, whose programs' environment holds the internal key, was
    world-readable (found by a review), which undid the privilege drop."""
    import stat

    key = "a-test-internal-key-0123456789"
    monkeypatch.setenv("ECOVISOR_INTERNAL_KEY", key)
    cfg = load_config(DEMO)
    state = tmp_path / ".ecovisor"
    stack.prepare(cfg, DEMO, state, tmp_path)
    leaking = [
        f for f in state.rglob("*")
        if f.is_file() and key in f.read_text(errors="replace")
        and f.stat().st_mode & (stat.S_IROTH | stat.S_IRGRP)
    ]  # fmt: skip
    assert (state / "supervisord.conf").exists() and leaking == []


def test_cmd_refuses_a_token_the_site_file_does_not_give_the_app(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A wrong token's command is dead-lettered, telling no app: --wait waited its whole
    timeout for nothing (found by a review). With the site file it fails at once."""
    from ecovisor.cli import commands

    sent: list[Command] = []
    monkeypatch.setattr(commands, "publish_command", lambda c, *_a: sent.append(c) or 0)
    base = ["cmd", "set-charge-rate", "--app", "web", "--watts", "1", "-c", str(DEMO),
            "--bootstrap", "127.0.0.1:1", "--token"]  # fmt: skip
    r = runner.invoke(app, [*base, "not-webs-token"])
    assert r.exit_code == 1 and "is not the token of app 'web'" in r.output and sent == []
    token = load_config(DEMO).app("web").token
    assert runner.invoke(app, [*base, token]).exit_code == 0 and len(sent) == 1
