"""``ecovisor config kafka-acls``: the site's Kafka principals, what each may read and
write, and the script that creates their SCRAM users and ACLs on Apache Kafka
(``ecovisor.contract.kafka_access``; docker compose runs ``deploy/kafka/kafka-acls.sh``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from ecovisor.cli.options import ConfigOpt, load
from ecovisor.contract.kafka_access import kafka_principals, principal_acls, render_acl_script


def kafka_acls(
    config: ConfigOpt = None,
    out: Annotated[
        Path | None, typer.Option(help="write the script to this file (default: stdout)")
    ] = None,
    table: Annotated[
        bool, typer.Option("--table", help="list the principals and their ACLs instead")
    ] = False,
) -> None:
    """The shell script (kafka-configs.sh, kafka-acls.sh) that creates every Kafka
    principal's SCRAM-SHA-512 user and allows it exactly the topics its service reads and
    writes; --table lists them. Passwords are not in it: the script reads them from
    ECOVISOR_KAFKA_PASSWORD_<PRINCIPAL> where it runs."""
    cfg, path = load(config)
    if table:
        for p in kafka_principals(cfg):
            typer.echo(f"{p.name} ({', '.join(p.modules)})")
            for a in principal_acls(p):
                star = "*" if a.pattern == "prefixed" else ""
                typer.echo(f"  {a.operation:<9} {a.resource} {a.name}{star}")
        return
    script = render_acl_script(cfg, command=f"ecovisor config kafka-acls --config {path}")
    if out is None:
        typer.echo(script, nl=False)
        return
    out.write_text(script)
    os.chmod(out, 0o755)
    typer.echo(f"wrote {out}")
