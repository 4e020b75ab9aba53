"""``ecovisor topics [--create]``: the topics a site needs, whether the broker has them,
and (with --create) creating the missing ones through the Kafka adapter."""

from __future__ import annotations

from typing import Annotated

import typer

from ecovisor.adapters.kafka import KafkaUnavailable, create_topics, existing_topics
from ecovisor.cli.options import KAFKA_TIMEOUT_S, BootstrapOpt, ConfigOpt, fail, kafka_of
from ecovisor.contract import topics


def _existing(bootstrap: str) -> set[str]:
    try:
        return existing_topics(bootstrap, KAFKA_TIMEOUT_S)
    except KafkaUnavailable as e:
        raise fail(str(e)) from None


def topics_cmd(
    create: Annotated[bool, typer.Option("--create", help="create missing topics")] = False,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """List the topics the site needs and whether they exist; --create makes them."""
    boot, cfg = kafka_of(config, bootstrap)
    wanted = topics.all_topics([a.id for a in cfg.apps] if cfg else [])
    if create:
        try:
            create_topics(boot, wanted)
        except KafkaUnavailable as e:
            raise fail(str(e)) from None
    existing = _existing(boot)
    missing = 0
    for t in wanted:
        ok = t in existing
        missing += not ok
        typer.echo(f"{'ok     ' if ok else 'MISSING'} {t}")
    for t in sorted(existing - set(wanted)):
        if not t.startswith("__"):
            typer.echo(f"other   {t}")
    raise typer.Exit(1 if missing else 0)
