"""The ``ecovisor`` command line: run the embedded stack, check the site configuration,
publish commands, follow topics. See docs/cli.md.

Colleagues' subcommands plug in without editing this file: any module
``ecovisor/cli_<name>.py`` defining ``register(app: typer.Typer) -> None`` is loaded.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ecovisor.contract import schemas, topics
from ecovisor.contract.config import (
    ConfigError,
    EcovisorConfig,
    config_path,
    kafka_bootstrap,
    load_config,
    mqtt_endpoint,
)

app = typer.Typer(
    help="Ecovisor: a virtual energy system per application, on a message bus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Site configuration.", no_args_is_help=True)
cmd_app = typer.Typer(
    help="Publish a command to ecovisor.commands (token from --token or $ECOVISOR_TOKEN).",
    no_args_is_help=True,
)
app.add_typer(config_app, name="config")
app.add_typer(cmd_app, name="cmd")

ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", "-c", help="site configuration file (default: $ECOVISOR_CONFIG)"),
]
StateOpt = Annotated[
    Path | None,
    typer.Option("--state-dir", help="stack state dir (default: the config's stack.state_dir)"),
]
BootstrapOpt = Annotated[
    str | None,
    typer.Option("--bootstrap", help="Kafka bootstrap host:port (default: from the config)"),
]


def _fail(msg: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {msg}", err=True)
    return typer.Exit(code)


def _load(config: str | None) -> tuple[EcovisorConfig, Path]:
    try:
        path = config_path(config)
        return load_config(path), Path(path)
    except ConfigError as e:
        raise _fail(str(e)) from None


def _state_dir(config: str | None, state_dir: Path | None) -> Path:
    from ecovisor.embedded.stack import state_dir_of

    if state_dir:
        return state_dir.resolve()
    if config or os.environ.get("ECOVISOR_CONFIG"):
        cfg, _ = _load(config)
        return state_dir_of(cfg)
    return (Path.cwd() / ".ecovisor").resolve()


# ---------------------------------------------------------------------------------------
# embedded stack
# ---------------------------------------------------------------------------------------


@app.command()
def up(
    config: ConfigOpt = None,
    detach: Annotated[bool, typer.Option("--detach", "-d", help="run in the background")] = False,
) -> None:
    """Start the embedded stack for a site (foreground: Ctrl-C stops everything)."""
    from ecovisor.embedded import stack

    cfg, path = _load(config)
    sd = stack.state_dir_of(cfg)
    try:
        rc = stack.up(cfg, path, sd, detach, say=lambda m: typer.echo(m))
    except stack.StackError as e:
        raise _fail(str(e)) from None
    raise typer.Exit(rc)


@app.command()
def down(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Stop every service of the embedded stack (no process is left behind)."""
    from ecovisor.embedded import stack

    raise typer.Exit(stack.down(_state_dir(config, state_dir), say=lambda m: typer.echo(m)))


@app.command()
def status(config: ConfigOpt = None, state_dir: StateOpt = None) -> None:
    """Each service and its state; exit 1 unless every service is RUNNING."""
    from ecovisor.embedded import stack

    sd = _state_dir(config, state_dir)
    if not stack.is_running(sd):
        if stack.clean_stale(sd, lambda m: typer.echo(m)):
            typer.echo("the stack is not running (stale state of a dead supervisord cleaned)")
        else:
            typer.echo(f"the stack is not running (state dir {sd})")
        raise typer.Exit(1)
    infos = stack.process_info(sd)
    typer.echo(stack.format_status(infos))
    for note in stack.read_state(sd).get("skipped", []):
        typer.echo(f"(not started) {note}")
    ok = stack.healthy(infos)
    typer.echo("healthy" if ok else "NOT healthy")
    raise typer.Exit(0 if ok else 1)


@app.command()
def logs(
    service: Annotated[str, typer.Argument(help="service name, as shown by `ecovisor status`")],
    follow: Annotated[bool, typer.Option("--follow", "-f")] = False,
    lines: Annotated[int, typer.Option("--lines", "-n")] = 50,
    config: ConfigOpt = None,
    state_dir: StateOpt = None,
) -> None:
    """Show (and follow) the log of one service."""
    from ecovisor.embedded import stack

    sd = _state_dir(config, state_dir)
    path = sd / "logs" / f"{service}.log"
    if not path.exists():
        known = sorted(p.stem for p in (sd / "logs").glob("*.log"))
        raise _fail(f"no log for {service!r}; known: {', '.join(known) or 'none'}")
    try:
        for line in stack.tail_file(path, lines, follow):
            typer.echo(line, nl=False)
    except KeyboardInterrupt:
        pass


# ---------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------


def config_summary(cfg: EcovisorConfig) -> str:
    """A readable summary (never prints tokens)."""
    s = cfg.site
    sh = s.shape
    out = [
        f"site {s.id}: tick {sh.tick_s} s, solar {sh.solar_nameplate_w} W peak, "
        f"battery {sh.battery_capacity_wh} Wh, grid limit {sh.grid_limit_w} W",
        f"  nodes: {', '.join(f'{n.id} ({n.cores} cores)' for n in s.nodes) or 'none'}",
    ]
    for kind in ("solar", "carbon", "battery"):
        src = getattr(s, kind)
        out.append(f"  {kind}: {f'{src.type} ({src.id or kind})' if src else 'none'}")
    for a in cfg.apps:
        sa = a.shares
        out.append(
            f"app {a.id}: solar {sa.solar_fraction:.0%}, battery {sa.battery_capacity_wh} Wh, "
            f"grid {sa.grid_w} W; {len(a.containers)} container(s), "
            f"{len(a.templates)} template(s), policies: "
            f"{', '.join(p.name for p in a.policies) or 'none'}"
        )
        for c in a.containers:
            out.append(f"  container {c.id} on {c.node} ({c.backend.type})")
    host, port = mqtt_endpoint(cfg)
    out.append(
        f"stack: kafka {kafka_bootstrap(cfg)}, mqtt {host}:{port}, state dir {cfg.stack.state_dir}"
    )
    return "\n".join(out)


def config_warnings(cfg: EcovisorConfig) -> list[str]:
    from ecovisor.embedded.stack import module_exists

    warns = []
    for a in cfg.apps:
        for p in a.policies:
            if not module_exists(f"policies.{p.name}"):
                warns.append(f"app {a.id}: policy module policies.{p.name} does not exist")
    return warns


SOURCE_VALIDATORS = {
    "solar": "collectors.solar",
    "carbon": "collectors.carbon",
    "battery": "collectors.battery_device",
}


def source_errors(cfg: EcovisorConfig) -> list[str]:
    """Type-specific options of site.solar/carbon/battery, checked by their collectors
    (``validate_options``; skipped for a collector that is not installed)."""
    from ecovisor.embedded.stack import module_exists

    errors = []
    for section, module in SOURCE_VALIDATORS.items():
        if getattr(cfg.site, section) is None or not module_exists(module):
            continue
        validate = getattr(importlib.import_module(module), "validate_options", None)
        if validate is None:
            continue
        try:
            validate(getattr(cfg.site, section))
        except ConfigError as e:
            errors.append(str(e))
    return errors


@config_app.command("check")
def config_check(config: ConfigOpt = None) -> None:
    """Validate a site configuration; print a summary or readable errors (exit 1)."""
    cfg, path = _load(config)
    errors = source_errors(cfg)
    if errors:
        typer.echo(f"error: {path}: invalid configuration:", err=True)
        for e in errors:
            typer.echo(f"  - {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"{path}: OK")
    typer.echo(config_summary(cfg))
    for w in config_warnings(cfg):
        typer.echo(f"warning: {w}")


# ---------------------------------------------------------------------------------------
# Kafka helpers (partition-assigned consumers: consumer groups fail on tansu)
# ---------------------------------------------------------------------------------------


def _bootstrap(config: str | None, bootstrap: str | None) -> tuple[str, EcovisorConfig | None]:
    if bootstrap:
        cfg = _load(config)[0] if (config or os.environ.get("ECOVISOR_CONFIG")) else None
        return bootstrap, cfg
    cfg, _ = _load(config)
    return kafka_bootstrap(cfg), cfg


def assigned_consumer(bootstrap: str, topic: str, from_beginning: bool) -> Any:
    from kafka import KafkaConsumer, TopicPartition

    cons = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    parts = None
    deadline = time.monotonic() + 10
    while not parts and time.monotonic() < deadline:
        parts = cons.partitions_for_topic(topic)
        if not parts:
            time.sleep(0.2)
    if not parts:
        cons.close()
        raise _fail(f"topic {topic} does not exist on {bootstrap} (see `ecovisor topics`)")
    tps = [TopicPartition(topic, p) for p in sorted(parts)]
    cons.assign(tps)
    if from_beginning:
        cons.seek_to_beginning(*tps)
    else:
        cons.seek_to_end(*tps)
        for tp in tps:  # resolve the end offset now, so nothing published later is missed
            cons.position(tp)
    return cons


def follow(cons: Any, idle_timeout: float | None) -> Iterator[Any]:
    last = time.monotonic()
    while True:
        batch = cons.poll(timeout_ms=500)
        got = False
        for recs in batch.values():
            for r in recs:
                got = True
                yield r
        if got:
            last = time.monotonic()
        elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
            return


# ---------------------------------------------------------------------------------------
# cmd
# ---------------------------------------------------------------------------------------

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

TERMINAL = ("command_rejected", "command_applied", "command_failed")


def publish_command(command: schemas.Command, bootstrap: str, wait: bool, timeout: float) -> int:
    """Publish one command (key = app id); with wait, print its lifecycle. Exit code:
    0 published/applied, 1 rejected/failed, 2 no outcome within the timeout."""
    from kafka import KafkaProducer

    cons = assigned_consumer(bootstrap, topics.notifications(command.app), False) if wait else None
    prod = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        prod.send(topics.COMMANDS, key=command.app.encode(), value=command.to_json()).get(15)
    finally:
        prod.close()
    typer.echo(command.command_id)
    if cons is None:
        return 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for recs in cons.poll(timeout_ms=300).values():
                for r in recs:
                    try:
                        n = schemas.parse_notification(r.value)
                    except ValueError:
                        continue
                    if n.command_id != command.command_id:
                        continue
                    typer.echo(format_notification(n))
                    if n.type in TERMINAL:
                        return 0 if n.type == "command_applied" else 1
    finally:
        cons.close()
    typer.echo(f"no final outcome within {timeout:.0f} s", err=True)
    return 2


def _send(
    cls: type[schemas.Command],
    config: str | None,
    bootstrap: str | None,
    site: str | None,
    wait: bool,
    timeout: float,
    **fields: Any,
) -> None:
    boot, cfg = _bootstrap(config, bootstrap)
    site_id = site or (cfg.site.id if cfg else None)
    if not site_id:
        raise _fail("no site id: pass --site or --config")
    try:
        command = cls(site=site_id, time=schemas.utcnow(), **fields)
    except ValueError as e:
        raise _fail(f"invalid command: {e}") from None
    raise typer.Exit(publish_command(command, boot, wait, timeout))


@cmd_app.command("set-powercap")
def cmd_set_powercap(
    app_id: AppOpt,
    container: ContainerOpt,
    token: TokenOpt,
    watts: Annotated[float | None, typer.Option("--watts", help="cap in W")] = None,
    remove: Annotated[bool, typer.Option("--remove", help="remove the cap")] = False,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """set_container_powercap(container, W); --remove sends null."""
    if (watts is None) == (not remove):
        raise _fail("give exactly one of --watts or --remove", 2)
    _send(
        schemas.SetContainerPowercap,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        container=container,
        watts=None if remove else watts,
    )


@cmd_app.command("set-charge-rate")
def cmd_set_charge_rate(
    app_id: AppOpt,
    watts: Annotated[float, typer.Option("--watts", help="charge at this rate until full")],
    token: TokenOpt,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """set_battery_charge_rate(W)."""
    _send(
        schemas.SetBatteryChargeRate,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        watts=watts,
    )


@cmd_app.command("set-max-discharge")
def cmd_set_max_discharge(
    app_id: AppOpt,
    watts: Annotated[float, typer.Option("--watts", help="max discharge rate in W")],
    token: TokenOpt,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """set_battery_max_discharge(W)."""
    _send(
        schemas.SetBatteryMaxDischarge,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        watts=watts,
    )


@cmd_app.command("set-carbon-rate")
def cmd_set_carbon_rate(
    app_id: AppOpt,
    container: ContainerOpt,
    token: TokenOpt,
    mg_per_s: Annotated[float | None, typer.Option("--mg-per-s", help="rate limit")] = None,
    window_s: Annotated[float, typer.Option("--window-s")] = 60.0,
    remove: Annotated[bool, typer.Option("--remove")] = False,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """set_carbon_rate(container, mg/s) over a window; --remove sends null."""
    if (mg_per_s is None) == (not remove):
        raise _fail("give exactly one of --mg-per-s or --remove", 2)
    _send(
        schemas.SetCarbonRate,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        container=container,
        mg_per_s=None if remove else mg_per_s,
        window_s=window_s,
    )


@cmd_app.command("set-carbon-budget")
def cmd_set_carbon_budget(
    app_id: AppOpt,
    token: TokenOpt,
    grams: Annotated[float | None, typer.Option("--grams", help="budget per period")] = None,
    period_s: Annotated[float, typer.Option("--period-s")] = 3600.0,
    remove: Annotated[bool, typer.Option("--remove")] = False,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """set_carbon_budget(g) per period for the app; --remove sends null."""
    if (grams is None) == (not remove):
        raise _fail("give exactly one of --grams or --remove", 2)
    _send(
        schemas.SetCarbonBudget,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        grams=None if remove else grams,
        period_s=period_s,
    )


@cmd_app.command("suspend")
def cmd_suspend(
    app_id: AppOpt,
    container: ContainerOpt,
    token: TokenOpt,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Suspend (freeze) a container."""
    _send(
        schemas.SuspendContainer,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        container=container,
    )


@cmd_app.command("resume")
def cmd_resume(
    app_id: AppOpt,
    container: ContainerOpt,
    token: TokenOpt,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Resume (thaw) a container."""
    _send(
        schemas.ResumeContainer,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        container=container,
    )


@cmd_app.command("scale")
def cmd_scale(
    app_id: AppOpt,
    container: ContainerOpt,
    cpus: Annotated[float, typer.Option("--cpus", help="CPU allowance in cores")],
    token: TokenOpt,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Vertical scaling: set a container's CPU allowance."""
    _send(
        schemas.ScaleContainer,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        container=container,
        cpus=cpus,
    )


@cmd_app.command("scale-app")
def cmd_scale_app(
    app_id: AppOpt,
    template: Annotated[str, typer.Option("--template", help="container template id")],
    replicas: Annotated[int, typer.Option("--replicas")],
    token: TokenOpt,
    site: SiteOpt = None,
    wait: WaitOpt = False,
    timeout: TimeoutOpt = 30.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Horizontal scaling: run this many replicas of a container template."""
    _send(
        schemas.ScaleApp,
        config,
        bootstrap,
        site,
        wait,
        timeout,
        app=app_id,
        token=token,
        template=template,
        replicas=replicas,
    )


# Every command type of the contract has a subcommand (checked by a unit test).
CMD_NAMES = {
    "set_container_powercap": "set-powercap",
    "set_battery_charge_rate": "set-charge-rate",
    "set_battery_max_discharge": "set-max-discharge",
    "set_carbon_rate": "set-carbon-rate",
    "set_carbon_budget": "set-carbon-budget",
    "suspend_container": "suspend",
    "resume_container": "resume",
    "scale_container": "scale",
    "scale_app": "scale-app",
}


# ---------------------------------------------------------------------------------------
# tail
# ---------------------------------------------------------------------------------------

TAILABLE = ("notifications", "ledger", "deadletter", "alerts", "telemetry", "commands", "acks")


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, dict):
        return "{" + " ".join(f"{k}={_short(x)}" for k, x in v.items()) + "}"
    return str(v)


def format_notification(n: schemas.Notification) -> str:
    parts = [n.time.isoformat(timespec="seconds"), n.app, n.type]
    if n.tick is not None:
        parts.append(f"tick={n.tick}")
    if n.command_id:
        parts.append(f"command={n.command_id}")
    if n.reason:
        parts.append(f"reason={n.reason!r}")
    keys = (
        "app_power_w",
        "solar_w",
        "grid_w",
        "grid_carbon_g_per_kwh",
        "battery_charge_level_wh",
        "carbon_g",
        "unserved_w",
    )
    if n.type == "tick":
        parts += [f"{k}={_short(n.data[k])}" for k in keys if k in n.data]
    elif n.data:
        parts.append(_short(n.data))
    return " ".join(parts)


def format_ledger_entry(obj: dict[str, Any]) -> str:
    """One line per ledger entry: mean powers (W) of the tick's flows, battery, carbon."""
    from ecovisor.core.entries import AppLedgerEntry

    e = AppLedgerEntry.model_validate(obj)
    f, dt = e.flows, e.tick_s
    w = lambda mj: f"{mj / 1000 / dt:.3g}"  # noqa: E731 - mJ over the tick to W
    when = datetime.fromtimestamp(e.t_start, UTC).isoformat(timespec="seconds")
    parts = [
        when, f"{e.site}/{e.app}", f"k={e.k}", f"demand_w={w(e.demand_mj)}",
        f"solar_w={w(f.solar_to_load)}+{w(f.solar_to_battery)}b",
        f"battery_w={w(f.battery_to_load)}", f"grid_w={w(f.grid_to_load)}+{w(f.grid_to_battery)}b",
        f"unserved_w={w(f.unserved)}", f"battery_wh={e.battery.after_wh:.4g}",
        f"carbon_mg={e.total.carbon_ug / 1000:.4g}", f"I={e.intensity_g_per_kwh:.4g}",
    ]  # fmt: skip
    if e.estimated:
        parts.append("estimated")
    return " ".join(parts)


def format_record(what: str, value: bytes) -> str:
    """One readable line for a record of a topic; falls back to compact JSON."""
    try:
        obj = json.loads(value)
    except ValueError:
        return value.decode("utf-8", "backslashreplace")
    try:
        if what == "notifications":
            return format_notification(schemas.Notification.model_validate(obj))
        if what == "deadletter":
            d = schemas.DeadLetter.model_validate(obj)
            raw = d.raw if len(d.raw) <= 120 else d.raw[:117] + "..."
            when = d.time.isoformat(timespec="seconds")
            return f"{when} {d.origin} reason={d.reason!r} raw={raw}"
        if what == "ledger":
            return format_ledger_entry(obj)
        if what == "alerts":
            a = schemas.Alert.model_validate(obj)
            return f"{a.time.isoformat(timespec='seconds')} {a.severity} {a.kind}: {a.message}"
    except ValueError:
        pass
    if isinstance(obj, dict):
        obj.pop("token", None)
        return " ".join(f"{k}={_short(v)}" for k, v in obj.items() if k != "schema_version")
    return json.dumps(obj)


def _topic_for(what: str, app_id: str | None) -> str:
    if what == "notifications":
        if not app_id:
            raise _fail("tail notifications needs --app", 2)
        return topics.notifications(app_id)
    return {
        "ledger": topics.LEDGER,
        "deadletter": topics.DEADLETTER,
        "alerts": topics.ALERTS,
        "telemetry": topics.TELEMETRY,
        "commands": topics.COMMANDS,
        "acks": topics.ACTUATOR_ACKS,
    }[what]


@app.command()
def tail(
    what: Annotated[str, typer.Argument(help=f"one of: {', '.join(TAILABLE)}")],
    app_id: Annotated[str | None, typer.Option("--app", help="app (for notifications)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="one JSON object per line")] = False,
    from_beginning: Annotated[bool, typer.Option("--from-beginning")] = False,
    max_messages: Annotated[int, typer.Option("--max", help="stop after N (0 = never)")] = 0,
    idle_timeout: Annotated[
        float, typer.Option("--idle-timeout", help="stop after N s without messages (0 = never)")
    ] = 0.0,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """Follow a topic: an app's notifications, the ledger, dead letters, alerts, ..."""
    if what not in TAILABLE:
        raise _fail(f"cannot tail {what!r}; choose one of {', '.join(TAILABLE)}", 2)
    topic = _topic_for(what, app_id)
    boot, _ = _bootstrap(config, bootstrap)
    cons = assigned_consumer(boot, topic, from_beginning)
    n = 0
    try:
        for rec in follow(cons, idle_timeout or None):
            if as_json:
                try:
                    obj = json.loads(rec.value)
                    if isinstance(obj, dict):
                        obj.pop("token", None)  # never echo credentials
                    typer.echo(json.dumps(obj, separators=(",", ":")))
                except ValueError:
                    typer.echo(json.dumps({"raw": rec.value.decode("utf-8", "backslashreplace")}))
            else:
                typer.echo(format_record(what, rec.value))
            n += 1
            if max_messages and n >= max_messages:
                break
    except KeyboardInterrupt:
        pass
    finally:
        cons.close()


@app.command("topics")
def topics_cmd(
    create: Annotated[bool, typer.Option("--create", help="create missing topics")] = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """List the topics the site needs and whether they exist; --create makes them."""
    from kafka.admin import KafkaAdminClient

    from ecovisor.adapters.kafka import KafkaUnavailable, create_topics

    boot, cfg = _bootstrap(config, bootstrap)
    wanted = topics.all_topics([a.id for a in cfg.apps] if cfg else [])
    if create:
        try:
            create_topics(boot, wanted)
        except KafkaUnavailable as e:
            raise _fail(str(e)) from None
    try:
        admin = KafkaAdminClient(bootstrap_servers=boot, client_id="ecovisor-cli")
    except Exception as e:  # kafka-python raises several types for an absent broker
        raise _fail(f"Kafka at {boot} not reachable: {e}") from None
    try:
        existing = set(admin.list_topics())
    finally:
        admin.close()
    missing = 0
    for t in wanted:
        ok = t in existing
        missing += not ok
        typer.echo(f"{'ok     ' if ok else 'MISSING'} {t}")
    for t in sorted(existing - set(wanted)):
        if not t.startswith("__"):
            typer.echo(f"other   {t}")
    raise typer.Exit(1 if missing else 0)


def _register_subcommands() -> None:
    """Subcommands that live in their own module of this package."""
    from ecovisor.cli import export

    export.register(app)


_register_subcommands()


def main() -> None:  # pragma: no cover - console entry alternative
    app()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
