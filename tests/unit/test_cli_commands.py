"""``ecovisor cmd`` is generated from the contract: option names, help and null rule from
the command's fields, and a new command class gets a subcommand without CLI code."""

from __future__ import annotations

from typing import Any, Literal, get_args

import pytest
import typer
from pydantic import Field
from pydantic.fields import FieldInfo
from typer.testing import CliRunner

from ecovisor.cli import commands
from ecovisor.cli.commands import ALIASES, CMD_NAMES, build_cmd_app, cmd_app
from ecovisor.contract.commands import COMMAND_TYPES, Command, command_fields

runner = CliRunner()
SHARED = {"--app", "--token", "--site", "--wait", "--timeout", "--config", "--bootstrap"}


def _options(group: typer.Typer, name: str) -> dict[str, Any]:
    """A subcommand's options by their long name, without the shared ones and --help."""
    cmd = typer.main.get_command(group).commands[name]  # type: ignore[attr-defined]
    opts = {next(o for o in p.opts if o.startswith("--")): p for p in cmd.params}
    return {k: p for k, p in opts.items() if k not in SHARED | {"--help"}}


def test_option_names_are_the_ones_of_before() -> None:
    want = {
        "set-container-powercap": {"--container", "--watts", "--remove"},
        "set-battery-charge-rate": {"--watts"},
        "set-battery-max-discharge": {"--watts"},
        "set-carbon-rate": {"--container", "--mg-per-s", "--window-s", "--remove"},
        "set-carbon-budget": {"--grams", "--period-s", "--remove"},
        "suspend-container": {"--container"},
        "resume-container": {"--container"},
        "scale-container": {"--container", "--cpus"},
        "scale-app": {"--template", "--replicas"},
    }
    assert set(want) == set(CMD_NAMES.values())
    for name, opts in want.items():
        assert set(_options(cmd_app, name)) == opts, name
    for old, typ in ALIASES.items():
        assert set(_options(cmd_app, old)) == want[CMD_NAMES[typ]], old


def _removable(info: FieldInfo) -> bool:
    """Nullable and without a default in the contract: "null removes it"."""
    return info.is_required() and type(None) in get_args(info.annotation)


def test_options_follow_the_contract_fields() -> None:
    for typ, cls in COMMAND_TYPES.items():
        opts = _options(cmd_app, CMD_NAMES[typ])
        fields = command_fields(cls)
        for field, info in fields.items():
            p = opts["--" + field.replace("_", "-")]
            # required exactly when the contract has no default, except "null removes it"
            assert p.required == (info.is_required() and not _removable(info)), field
            if not info.is_required():
                assert p.default == info.default
            assert (p.help or None) == info.description
        # the null rule: a --remove flag exactly for nullable fields without a default
        assert ("--remove" in opts) == any(_removable(f) for f in fields.values())


class _Ping(Command):
    """A throwaway command: not in the contract."""

    type: Literal["ping_everything"] = "ping_everything"
    container: str
    level: int = Field(description="how loud")
    note: str | None = None
    limit_w: float | None = Field(description="null removes it")
    loud: bool = False


def test_a_new_command_class_gets_a_subcommand(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = {**COMMAND_TYPES, "ping_everything": _Ping}
    group, names = build_cmd_app(registry)
    assert names["ping_everything"] == "ping-everything"
    visible = {c.name for c in group.registered_commands if not c.hidden}
    assert visible == set(names.values()) and len(visible) == len(registry)
    opts = _options(group, "ping-everything")
    assert set(opts) == {"--container", "--level", "--note", "--limit-w", "--loud", "--remove"}
    assert opts["--level"].help == "how loud" and opts["--level"].required

    sent: list[Command] = []
    monkeypatch.setattr(commands, "publish_command", lambda c, *_a: sent.append(c) or 0)
    base = ["ping-everything", "--app", "web", "--token", "t" * 8, "--site", "s",
            "--bootstrap", "127.0.0.1:1", "--container", "c", "--level", "3"]  # fmt: skip
    r = runner.invoke(group, [*base, "--limit-w", "1.5", "--loud"])
    assert r.exit_code == 0, r.output
    c = sent.pop()
    assert isinstance(c, _Ping)
    assert (c.container, c.level, c.note, c.limit_w, c.loud) == ("c", 3, None, 1.5, True)
    r = runner.invoke(group, [*base, "--remove", "--note", "hi"])
    assert r.exit_code == 0, r.output
    c = sent.pop()
    assert isinstance(c, _Ping) and (c.limit_w, c.note) == (None, "hi")
    for extra in ([], ["--limit-w", "1", "--remove"]):
        r = runner.invoke(group, [*base, *extra])
        assert r.exit_code == 2 and "exactly one of --limit-w or --remove" in r.output
    assert not sent


class _TwoSettings(Command):
    type: Literal["two_settings"] = "two_settings"
    a: float | None
    b_w: float | None


def test_two_removable_fields_get_one_remove_flag_each(monkeypatch: pytest.MonkeyPatch) -> None:
    # with one command only, Typer would make the group that command: add another
    group, _ = build_cmd_app({"two_settings": _TwoSettings, "ping_everything": _Ping})
    assert set(_options(group, "two-settings")) == {"--a", "--b-w", "--remove-a", "--remove-b-w"}
    sent: list[Command] = []
    monkeypatch.setattr(commands, "publish_command", lambda c, *_a: sent.append(c) or 0)
    base = ["two-settings", "--app", "web", "--token", "t" * 8, "--site", "s",
            "--bootstrap", "127.0.0.1:1"]  # fmt: skip
    r = runner.invoke(group, [*base, "--a", "1", "--remove-b-w"])
    assert r.exit_code == 0, r.output
    assert sent.pop().model_dump(include={"a", "b_w"}) == {"a": 1.0, "b_w": None}
    r = runner.invoke(group, [*base, "--a", "1"])
    assert r.exit_code == 2 and "exactly one of --b-w or --remove-b-w" in r.output


class _Unsupported(Command):
    type: Literal["unsupported"] = "unsupported"
    points: list[float]


class _Clash(Command):
    type: Literal["clash"] = "clash"
    timeout: float


@pytest.mark.parametrize(("cls", "why"), [(_Unsupported, "no option type"), (_Clash, "clashes")])
def test_fields_the_cli_cannot_derive_fail_loudly(cls: type[Command], why: str) -> None:
    with pytest.raises(TypeError, match=why):
        build_cmd_app({"x": cls})
