"""``ecovisor config check``: validate a site configuration and summarise it (never the
tokens). The type-specific options of site.solar/carbon/battery are checked by their
collectors' ``validate_options``. ``ecovisor config mqtt-auth``: the site's MQTT
principals, their ACLs and (on request) device passwords, and mosquitto's files."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Annotated

import typer

from ecovisor.cli.options import ConfigOpt, fail
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError, config_path, load_config
from ecovisor.contract.environment import internal_key, kafka_bootstrap, mqtt_endpoint

config_app = typer.Typer(help="Site configuration.", no_args_is_help=True)

# site section -> the collector that owns its type-specific options
SOURCE_VALIDATORS = {
    "solar": "collectors.solar",
    "carbon": "collectors.carbon",
    "battery": "collectors.battery_device",
}


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
    from ecovisor.embedded.plan import module_exists

    warns = []
    for a in cfg.apps:
        for p in a.policies:
            if not module_exists(f"policies.{p.name}"):
                warns.append(f"app {a.id}: policy module policies.{p.name} does not exist")
    return warns


def source_errors(cfg: EcovisorConfig) -> list[str]:
    """Type-specific options of site.solar/carbon/battery, checked by their collectors
    (``validate_options``; skipped for a collector that is not installed)."""
    from ecovisor.embedded.plan import module_exists

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
    try:
        path = config_path(config)
        cfg = load_config(path)
    except ConfigError as e:
        # the one command whose output is the full report: every error on its own line
        raise fail(str(e)) from None
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


@config_app.command("mqtt-auth")
def config_mqtt_auth(
    config: ConfigOpt = None,
    out: Annotated[
        Path | None,
        typer.Option(help="write mosquitto.passwd and mosquitto.acl (mode 0600) here"),
    ] = None,
    show_passwords: Annotated[
        bool, typer.Option(help="also print each device's password (for its collector)")
    ] = False,
) -> None:
    """The site's MQTT principals and what each may publish and subscribe to; with
    --out, the password file and ACLs of a mosquitto broker of your own. Needs the site's
    internal key ($ECOVISOR_INTERNAL_KEY or site.internal_key)."""
    from ecovisor.contract.bus_access import mqtt_principals
    from ecovisor.embedded.mqtt_auth import BrokerAuth, write_private

    try:
        cfg = load_config(config_path(config))
    except ConfigError as e:
        raise fail(str(e)) from None
    key = internal_key(cfg)
    if not key:
        raise fail(
            f"no internal key: set ${cfg.site.internal_key_env} (the MQTT passwords of the "
            "site's devices and services are derived from it)"
        )
    auth = BrokerAuth.of(cfg, key)
    for p in mqtt_principals(cfg):
        pw = auth.passwords[p.username]
        secret = f" password {pw}" if show_passwords and p.app is None else ""
        typer.echo(f"{p.username}:{secret}")
        for t in p.publish:
            typer.echo(f"  publish   {t}")
        for t in p.subscribe:
            typer.echo(f"  subscribe {t}")
    if out is not None:
        pw_file = write_private(out / "mosquitto.passwd", auth.mosquitto_passwords())
        acl_file = write_private(out / "mosquitto.acl", auth.mosquitto_acl())
        typer.echo(f"wrote {pw_file} and {acl_file}; in mosquitto.conf: allow_anonymous false, "
                   f"password_file {pw_file}, acl_file {acl_file}")  # fmt: skip
