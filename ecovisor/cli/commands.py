"""``ecovisor cmd``: publish one command of the contract (docs/contract.md) to
ecovisor.commands, keyed by app id; with ``--wait``, follow the app's notifications
until the command's outcome.

Each subcommand is a small function that declares its own options and returns the fields
of its command; ``subcommand`` adds the options every subcommand shares and the one
publish path (``send``), so a new command type costs one function.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from typing import Annotated, Any, NoReturn

import typer
from kafka.errors import KafkaError
from pydantic import ValidationError

from ecovisor.adapters.kafka import KafkaUnavailable, producer
from ecovisor.cli.follow import CLIENT_ID, open_topic, records
from ecovisor.cli.format import format_notification
from ecovisor.cli.options import KAFKA_TIMEOUT_S, BootstrapOpt, ConfigOpt, fail, kafka_of
from ecovisor.contract import schemas, topics

cmd_app = typer.Typer(
    help="Publish a command to ecovisor.commands (token from --token or $ECOVISOR_TOKEN).",
    no_args_is_help=True,
)

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
ContainerOpt = Annotated[str, typer.Option("--container", help="container id")]

# Command type -> its subcommand, filled by ``subcommand`` (a unit test checks that every
# command type of the contract has one).
CMD_NAMES: dict[str, str] = {}


def publish_command(command: schemas.Command, bootstrap: str, wait: bool, timeout: float) -> int:
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
                n = schemas.parse_notification(r.value)
            except ValueError:
                continue
            if n.command_id != command.command_id:
                continue
            typer.echo(format_notification(n))
            if n.type in schemas.COMMAND_OUTCOMES:
                return 0 if n.type == schemas.COMMAND_SUCCEEDED else 1
    finally:
        if cons is not None:
            cons.close()
    typer.echo(f"no final outcome within {timeout:.0f} s", err=True)
    return 2


def _publish(command: schemas.Command, bootstrap: str) -> None:
    try:
        prod = producer(bootstrap, CLIENT_ID, timeout=KAFKA_TIMEOUT_S)
    except KafkaUnavailable as e:
        raise fail(str(e)) from None
    try:
        # wait for the broker's ack: exit 0 means the command is on the topic
        sent = prod.send(topics.COMMANDS, key=command.app.encode(), value=command.to_json())
        sent.get(KAFKA_TIMEOUT_S)
    except KafkaError as e:
        raise fail(f"could not publish to {topics.COMMANDS} on {bootstrap}: {e}") from None
    finally:
        prod.close()


def send(
    cls: type[schemas.Command],
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
        command = cls(site=site_id, time=schemas.utcnow(), app=app_id, token=token, **fields)
    except ValidationError as e:
        raise fail(f"invalid command: {schemas.describe_validation_error(e)}") from None
    raise typer.Exit(publish_command(command, boot, wait, timeout))


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

FieldsOf = Callable[..., dict[str, Any]]


def subcommand(name: str, cls: type[schemas.Command]) -> Callable[[FieldsOf], FieldsOf]:
    """Register ``fields_of`` as ``ecovisor cmd NAME`` publishing a ``cls`` command.

    Typer reads a command's options from its signature, so the registered function gets
    ``fields_of``'s own options plus the shared ones as its ``__signature__``; when run,
    it hands the shared options to ``send`` and the others to ``fields_of``."""

    def register(fields_of: FieldsOf) -> FieldsOf:
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in inspect.signature(fields_of, eval_str=True).parameters.values()
        ]
        required = [p for p in own if p.default is inspect.Parameter.empty]
        optional = [p for p in own if p.default is not inspect.Parameter.empty]
        params = [_APP, *required, _TOKEN, *optional, *_TRAILING]

        def run(**opts: Any) -> None:
            shared = {k: opts.pop(k) for k in _SHARED}
            send(cls, fields_of(**opts), **shared)

        run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        run.__name__ = run.__qualname__ = fields_of.__name__
        run.__doc__ = fields_of.__doc__
        cmd_app.command(name)(run)
        CMD_NAMES[cls.model_fields["type"].default] = name
        return fields_of

    return register


def set_or_remove(value: float | None, remove: bool, option: str) -> float | None:
    """A setting given as ``OPTION V`` or ``--remove`` (sent as null): exactly one."""
    if (value is None) == (not remove):
        raise fail(f"give exactly one of {option} or --remove", 2)
    return None if remove else value


# ---------------------------------------------------------------------------------------
# one function per command type, in the order of docs/cli.md
# ---------------------------------------------------------------------------------------


@subcommand("set-powercap", schemas.SetContainerPowercap)
def set_powercap(
    container: ContainerOpt,
    watts: Annotated[float | None, typer.Option("--watts", help="cap in W")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="remove the cap")] = False,
) -> dict[str, Any]:
    """set_container_powercap(container, W); --remove sends null."""
    return {"container": container, "watts": set_or_remove(watts, remove, "--watts")}


@subcommand("set-charge-rate", schemas.SetBatteryChargeRate)
def set_charge_rate(
    watts: Annotated[float, typer.Option("--watts", help="charge at this rate until full")],
) -> dict[str, Any]:
    """set_battery_charge_rate(W)."""
    return {"watts": watts}


@subcommand("set-max-discharge", schemas.SetBatteryMaxDischarge)
def set_max_discharge(
    watts: Annotated[float, typer.Option("--watts", help="max discharge rate in W")],
) -> dict[str, Any]:
    """set_battery_max_discharge(W)."""
    return {"watts": watts}


@subcommand("set-carbon-rate", schemas.SetCarbonRate)
def set_carbon_rate(
    container: ContainerOpt,
    mg_per_s: Annotated[float | None, typer.Option("--mg-per-s", help="rate limit")] = None,
    window_s: Annotated[float, typer.Option("--window-s")] = 60.0,
    remove: Annotated[bool, typer.Option("--remove")] = False,
) -> dict[str, Any]:
    """set_carbon_rate(container, mg/s) over a window; --remove sends null."""
    return {
        "container": container,
        "mg_per_s": set_or_remove(mg_per_s, remove, "--mg-per-s"),
        "window_s": window_s,
    }


@subcommand("set-carbon-budget", schemas.SetCarbonBudget)
def set_carbon_budget(
    grams: Annotated[float | None, typer.Option("--grams", help="budget per period")] = None,
    period_s: Annotated[float, typer.Option("--period-s")] = 3600.0,
    remove: Annotated[bool, typer.Option("--remove")] = False,
) -> dict[str, Any]:
    """set_carbon_budget(g) per period for the app; --remove sends null."""
    return {"grams": set_or_remove(grams, remove, "--grams"), "period_s": period_s}


@subcommand("suspend", schemas.SuspendContainer)
def suspend(container: ContainerOpt) -> dict[str, Any]:
    """Suspend (freeze) a container."""
    return {"container": container}


@subcommand("resume", schemas.ResumeContainer)
def resume(container: ContainerOpt) -> dict[str, Any]:
    """Resume (thaw) a container."""
    return {"container": container}


@subcommand("scale", schemas.ScaleContainer)
def scale(
    container: ContainerOpt,
    cpus: Annotated[float, typer.Option("--cpus", help="CPU allowance in cores")],
) -> dict[str, Any]:
    """Vertical scaling: set a container's CPU allowance."""
    return {"container": container, "cpus": cpus}


@subcommand("scale-app", schemas.ScaleApp)
def scale_app(
    template: Annotated[str, typer.Option("--template", help="container template id")],
    replicas: Annotated[int, typer.Option("--replicas")],
) -> dict[str, Any]:
    """Horizontal scaling: run this many replicas of a container template."""
    return {"template": template, "replicas": replicas}
