"""``ecovisor cmd``: publish one command of the contract (docs/contract.md) to
ecovisor.commands, keyed by app id; with ``--wait``, follow the app's notifications
until the command's outcome.

The subcommands are generated from the contract, so a command has one name from the wire
to the CLI and a new command class needs no CLI code: one subcommand per
``commands.COMMAND_TYPES`` entry, named after its ``type`` with dashes
(``set_container_powercap`` -> ``set-container-powercap``), with one ``--option`` per own
field (``commands.command_fields``), plus the options every subcommand shares and the one
publish path (``send``). The names used before are kept as hidden aliases (``ALIASES``).
"""

from __future__ import annotations

import hmac
import inspect
import time
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, NoReturn, TypeVar, Union, get_args, get_origin

import typer
from kafka.errors import KafkaError
from pydantic import ValidationError

from ecovisor.adapters.kafka import KafkaUnavailable, producer
from ecovisor.cli.follow import CLIENT_ID, open_topic, records
from ecovisor.cli.format import format_notification
from ecovisor.cli.options import KAFKA_TIMEOUT_S, BootstrapOpt, ConfigOpt, fail, kafka_of
from ecovisor.contract import commands, envelope, notifications, operator_messages, topics

AppOpt = Annotated[str, typer.Option("--app", help="application id")]
TokenOpt = Annotated[
    str,
    typer.Option("--token", envvar="ECOVISOR_TOKEN", help="the app's token", show_default=False),
]
SiteOpt = Annotated[str | None, typer.Option("--site", help="site id (default: from config)")]
WaitOpt = Annotated[
    bool, typer.Option("--wait", help="follow the app's notifications for the outcome")
]
TimeoutOpt = Annotated[float, typer.Option("--timeout", help="seconds to wait with --wait")]

# Deprecated subcommand names (before they followed the contract) -> command type; each
# stays a hidden alias of the generated subcommand, with the same options.
ALIASES: dict[str, str] = {
    "set-powercap": "set_container_powercap",
    "set-charge-rate": "set_battery_charge_rate",
    "set-max-discharge": "set_battery_max_discharge",
    "suspend": "suspend_container",
    "resume": "resume_container",
    "scale": "scale_container",
}


def publish_command(command: commands.Command, bootstrap: str, wait: bool, timeout: float) -> int:
    """Publish one command (key = app id) and print its id; with wait, print its
    lifecycle. Exit code: 0 published/applied, 1 rejected/failed, 2 no outcome within
    the timeout."""
    # subscribed before publishing, so no notification about the command is missed
    cons = open_topic(bootstrap, topics.notifications(command.app), False) if wait else None
    try:
        _publish(command, bootstrap)
        typer.echo(command.command_id)
        if cons is None:
            return 0
        for r in records(cons, until=time.monotonic() + timeout):
            try:
                n = notifications.parse_notification(r.value)
            except ValueError:
                continue
            if n.command_id != command.command_id:
                continue
            typer.echo(format_notification(n))
            if n.type in notifications.COMMAND_OUTCOMES:
                return 0 if n.type == notifications.COMMAND_SUCCEEDED else 1
    finally:
        if cons is not None:
            cons.close()
    typer.echo(f"no final outcome within {timeout:.0f} s", err=True)
    return 2


def _publish(command: commands.Command, bootstrap: str) -> None:
    try:
        prod = producer(bootstrap, CLIENT_ID, timeout=KAFKA_TIMEOUT_S)
    except KafkaUnavailable as e:
        raise fail(str(e)) from None
    try:
        # wait for the broker's ack: exit 0 means the command is on the topic
        sent = prod.send(topics.COMMANDS, key=command.site.encode(), value=command.to_json())
        sent.get(KAFKA_TIMEOUT_S)
    except KafkaError as e:
        raise fail(f"could not publish to {topics.COMMANDS} on {bootstrap}: {e}") from None
    finally:
        prod.close()


def send(
    cls: type[commands.Command],
    fields: dict[str, Any],
    *,
    app_id: str,
    token: str,
    site: str | None,
    wait: bool,
    timeout: float,
    config: str | None,
    bootstrap: str | None,
) -> NoReturn:
    """Build the command from the shared options and its own fields, publish it, exit."""
    boot, cfg = kafka_of(config, bootstrap)
    site_id = site or (cfg.site.id if cfg else None)
    if not site_id:
        raise fail("no site id: pass --site or --config")
    try:
        command = cls(site=site_id, time=envelope.utcnow(), app=app_id, **fields)
    except ValidationError as e:
        raise fail(f"invalid command: {operator_messages.describe_validation_error(e)}") from None
    if cfg is not None and cfg.site.id == site_id:
        # a wrong token is dead-lettered by the ledger, which tells no app: with the site
        # file at hand, say so now rather than wait for an outcome that never comes
        app = next((a for a in cfg.apps if a.id == app_id), None)
        if app is None:
            raise fail(f"site {site_id!r} has no app {app_id!r}")
        if not hmac.compare_digest(app.token.encode(), token.encode()):
            raise fail(f"--token is not the token of app {app_id!r} in the site configuration")
    # signed with the token, which itself never goes on the topic
    signed = commands.sign_command(command, token)
    raise typer.Exit(publish_command(signed, boot, wait, timeout))


def _option(name: str, annotation: Any, default: Any = inspect.Parameter.empty) -> Any:
    return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default,
                             annotation=annotation)  # fmt: skip


# The options every subcommand takes besides its own, in --help order around them:
# --app, the subcommand's required options, --token, its other options, then these.
_APP = _option("app_id", AppOpt)
_TOKEN = _option("token", TokenOpt)
_TRAILING = [
    _option("site", SiteOpt, None),
    _option("wait", WaitOpt, False),
    _option("timeout", TimeoutOpt, 30.0),
    _option("config", ConfigOpt, None),
    _option("bootstrap", BootstrapOpt, None),
]
_SHARED = [p.name for p in (_APP, _TOKEN, *_TRAILING)]
# Option names a command's own fields cannot take: the shared ones (--app, --site and
# --token are envelope fields, never own fields, but a clash would be just as bad),
# --help, and --remove, the null flag.
_RESERVED = {"--app", "--token", "--site", "--wait", "--timeout", "--config", "--bootstrap",
             "--help", "--remove"}  # fmt: skip

_V = TypeVar("_V")


def set_or_remove(value: _V | None, remove: bool, option: str,
                  remove_option: str = "--remove") -> _V | None:  # fmt: skip
    """A setting given as ``OPTION V`` or ``--remove`` (sent as null): exactly one."""
    if (value is None) == (not remove):
        raise fail(f"give exactly one of {option} or {remove_option}", 2)
    return None if remove else value


def subcommand_name(cls: type[commands.Command]) -> str:
    """The CLI name of a command: its wire ``type`` with dashes."""
    return commands.command_type(cls).replace("_", "-")


def option_name(field: str) -> str:
    return "--" + field.replace("_", "-")


# Field types an option can carry as is; anything else needs a CLI rule first, so it is
# refused when the subcommands are built (and a unit test sees it) rather than guessed.
_SCALARS: tuple[type, ...] = (str, int, float, bool)


def _option_type(cls: type[commands.Command], field: str, annotation: Any) -> tuple[type, bool]:
    """The option's type for a contract field annotation and whether null is allowed.
    Pydantic keeps constraints in ``Annotated`` (e.g. ``NonNeg | None``); the contract
    checks them when the command is built, so the option only needs the base type."""
    args = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else ()
    members = [a for a in args if a is not type(None)] if args else [annotation]
    nullable = len(members) < len(args)
    if len(members) == 1:
        base = members[0]
        if get_origin(base) is Annotated:
            base = get_args(base)[0]
        if base in _SCALARS:
            return base, nullable
    raise TypeError(
        f"ecovisor cmd: no option type for {cls.__name__}.{field} ({annotation!r}); "
        f"supported: {', '.join(t.__name__ for t in _SCALARS)}, optionally nullable"
    )


@dataclass(frozen=True)
class Removable:
    """A nullable contract field without a default ("null removes it"): its value option
    is optional and a flag sends null instead; exactly one of the two must be given."""

    field: str
    option: str  # the value option, e.g. --watts
    flag: str  # the parameter of the remove flag
    flag_option: str  # e.g. --remove


def command_params(
    cls: type[commands.Command],
) -> tuple[list[inspect.Parameter], list[Removable]]:
    """The subcommand's own options for ``cls``, one per own field of the contract, in
    --help order (required first), and its removable fields (see ``Removable``)."""
    fields = commands.command_fields(cls)
    typed = {name: _option_type(cls, name, f.annotation) for name, f in fields.items()}
    nullable_required = [n for n, f in fields.items() if f.is_required() and typed[n][1]]
    required: list[inspect.Parameter] = []
    optional: list[inspect.Parameter] = []
    removable: list[Removable] = []
    for name, f in fields.items():
        opt = option_name(name)
        if opt in _RESERVED or name in _SHARED:
            raise TypeError(f"ecovisor cmd: {cls.__name__}.{name} clashes with {opt}")
        typ, nullable = typed[name]
        help_ = f.description
        if name in nullable_required:
            # one such field: --remove (as ever); more: one --remove-<field> each
            flag_opt = "--remove" if len(nullable_required) == 1 else f"--remove-{opt[2:]}"
            # the flag's parameter: own fields never start with "_" (pydantic), no clash
            r = Removable(name, opt, "_" + flag_opt[2:].replace("-", "_"), flag_opt)
            removable.append(r)
            optional.append(_option(name, Annotated[typ | None, typer.Option(opt, help=help_)],
                                    None))  # fmt: skip
        elif f.is_required():
            required.append(_option(name, Annotated[typ, typer.Option(opt, help=help_)]))
        else:
            t: Any = typ | None if nullable else typ
            default = f.get_default(call_default_factory=True)
            optional.append(_option(name, Annotated[t, typer.Option(opt, help=help_)], default))
    flags = [
        _option(r.flag, Annotated[bool, typer.Option(
            r.flag_option, help=f"send {r.field}: null instead of {r.option} (removes it)"
        )], False)
        for r in removable
    ]  # fmt: skip
    return required + optional + flags, removable


def _help(cls: type[commands.Command], removable: list[Removable]) -> str:
    """The subcommand's help: the paper-style call, the class docstring if it has one
    (pydantic models do not inherit docstrings, so only its own), the null rule."""
    call = f"{commands.command_type(cls)}({', '.join(commands.command_fields(cls))})"
    own = inspect.cleandoc(cls.__doc__) if cls.__doc__ else ""
    text = f"{call}: {own}" if own else f"{call}."
    for r in removable:
        text += f" {r.flag_option} sends {r.field}: null."
    return text


def command_runner(cls: type[commands.Command]) -> tuple[Any, str]:
    """The Typer callback publishing a ``cls`` command, and its help.

    Typer reads a command's options from its signature, so the callback gets the
    command's own options plus the shared ones as its ``__signature__``; when run, it
    hands the shared options to ``send`` and the others, as the command's fields, to
    ``cls``."""
    own, removable = command_params(cls)
    own_required = [p for p in own if p.default is inspect.Parameter.empty]
    own_optional = [p for p in own if p.default is not inspect.Parameter.empty]
    params = [_APP, *own_required, _TOKEN, *own_optional, *_TRAILING]

    def run(**opts: Any) -> None:
        shared = {k: opts.pop(k) for k in _SHARED}
        for r in removable:
            remove = opts.pop(r.flag)
            opts[r.field] = set_or_remove(opts[r.field], remove, r.option, r.flag_option)
        send(cls, opts, **shared)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__annotations__ = {p.name: p.annotation for p in params}
    run.__name__ = run.__qualname__ = commands.command_type(cls)
    return run, _help(cls, removable)


def build_cmd_app(
    command_types: Mapping[str, type[commands.Command]],
    aliases: Mapping[str, str] = ALIASES,
) -> tuple[typer.Typer, dict[str, str]]:
    """The ``ecovisor cmd`` group for a registry of command types (the contract's
    ``COMMAND_TYPES``; tests pass others), and command type -> its subcommand name.
    Each alias whose command type is in the registry is registered hidden."""
    group = typer.Typer(
        help="Publish a command to ecovisor.commands (token from --token or $ECOVISOR_TOKEN).",
        no_args_is_help=True,
    )
    names: dict[str, str] = {}
    runners: dict[str, tuple[Any, str]] = {}
    for typ, cls in command_types.items():
        runners[typ] = command_runner(cls)
        names[typ] = subcommand_name(cls)
        group.command(names[typ], help=runners[typ][1])(runners[typ][0])
    for old, typ in aliases.items():
        if typ not in runners:
            continue
        if old in names.values():
            raise ValueError(f"ecovisor cmd: alias {old!r} is also a subcommand name")
        run, help_ = runners[typ]
        group.command(old, hidden=True,
                      help=f"Deprecated alias of '{names[typ]}'. {help_}")(run)  # fmt: skip
    return group, names


# The `ecovisor cmd` group of the contract, and command type -> subcommand name (a unit
# test checks there is exactly one visible subcommand per command type).
cmd_app, CMD_NAMES = build_cmd_app(commands.COMMAND_TYPES)
