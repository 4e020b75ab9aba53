"""``ecovisor topics [--create] [--partitions N]``: the topics a site needs, whether the
broker has them with the partition counts a ledger group of N partitions needs, and
(with --create) creating the missing ones through the Kafka adapter.

How many partitions each topic gets is the ledger's rule, ``topics.topic_partitions``
(N for the site-keyed topics, 1 for the others; docs/ledger.md, Partitioning). A topic
that exists with another count is reported, never altered: adding partitions remaps
keys (a site's partition is murmur2(site) mod N), and Kafka cannot remove any."""

from __future__ import annotations

from typing import Annotated

import typer

from ecovisor.adapters.kafka import (
    KafkaUnavailable,
    create_topics,
    existing_partitions,
    existing_topics,
)
from ecovisor.cli.options import KAFKA_TIMEOUT_S, BootstrapOpt, ConfigOpt, fail, kafka_of
from ecovisor.contract import topics


def partition_count(value: int) -> int:
    """--partitions: a ledger group's partition count (``topics.check_partitions``:
    1..MAX_PARTITIONS), else a usage error (exit 2) naming the bounds."""
    try:
        return topics.check_partitions(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


PartitionsOpt = Annotated[
    int,
    typer.Option(
        "--partitions",
        metavar="N",
        callback=partition_count,
        help="partitions of the site-keyed topics (ecovisor.telemetry, ecovisor.commands, "
        "ecovisor.actuator.acks), as the ledger's --partitions N; every other topic has "
        f"1 (1..{topics.MAX_PARTITIONS})",
    ),
]


def _plural(n: int) -> str:
    return f"{n} partition{'' if n == 1 else 's'}"


def topics_cmd(
    create: Annotated[bool, typer.Option("--create", help="create missing topics")] = False,
    partitions: PartitionsOpt = 1,
    config: ConfigOpt = None,
    bootstrap: BootstrapOpt = None,
) -> None:
    """List the topics the site needs, whether they exist and with how many partitions;
    --create makes the missing ones."""
    boot, cfg = kafka_of(config, bootstrap)
    wanted = topics.topic_partitions(
        topics.all_topics([a.id for a in cfg.apps] if cfg else []), partitions
    )
    try:
        if create:
            create_topics(boot, wanted)
        existing = existing_topics(boot, KAFKA_TIMEOUT_S)
        others = sorted(t for t in existing - set(wanted) if not t.startswith("__"))
        have = existing_partitions(boot, [t for t in wanted if t in existing] + others,
                                   KAFKA_TIMEOUT_S)  # fmt: skip
    except KafkaUnavailable as e:
        raise fail(str(e)) from None
    keyed = set(topics.KEYED_BY_SITE)
    width = max(len(t) for t in wanted)
    missing = 0
    fewer: dict[str, int] = {}
    more: dict[str, int] = {}
    for t, want in wanted.items():
        n = have.get(t)
        if t not in existing:
            missing += 1
            status, count = "MISSING", f"wanted {_plural(want)}"
        elif n is None:
            status, count = "ok", f"partition count unknown (wanted {want})"
        elif n == want:
            status, count = "ok", f"{_plural(n)} (wanted {want})"
        elif t not in keyed:  # not read by site: the ledger does not depend on its count
            status, count = "ok", f"{_plural(n)} (created with {want}; not keyed by site)"
        elif n < want:
            fewer[t] = n
            status, count = "FEWER", f"{_plural(n)}, fewer than the {want} wanted"
        else:
            more[t] = n
            status, count = "MORE", f"{_plural(n)}, more than the {want} wanted"
        typer.echo(f"{status:<7} {t:<{width}}  {count}")
    for t in others:
        n = have.get(t)
        typer.echo(f"other   {t:<{width}}  {'?' if n is None else _plural(n)}")
    remedy = ("Use the count they have (here and the ledger's --partitions), or recreate "
              "these topics empty with the stack stopped.")
    if fewer:
        typer.echo(
            f"error: {_listed(fewer)} fewer partitions than the {partitions} wanted; left as "
            "they are. Kafka can add partitions, but that remaps keys (a site's partition is "
            "murmur2(site) mod N): a site's new messages would land on another partition "
            f"than its earlier ones and its ledger state, so it is not done here. {remedy}",
            err=True,
        )
    if more:
        typer.echo(
            f"error: {_listed(more)} more partitions than the {partitions} wanted; left as "
            f"they are (Kafka cannot remove partitions). {remedy}",
            err=True,
        )
    raise typer.Exit(1 if missing or fewer or more else 0)


def _listed(counts: dict[str, int]) -> str:
    """``a (1), b (1) have`` / ``a (1) has``."""
    names = ", ".join(f"{t} ({n})" for t, n in counts.items())
    return f"{names} {'has' if len(counts) == 1 else 'have'}"
