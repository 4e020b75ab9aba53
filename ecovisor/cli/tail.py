"""``ecovisor tail``: follow a topic (an app's notifications, the ledger, dead letters,
alerts, telemetry, commands, acks) as readable lines or JSON lines."""

from __future__ import annotations

from typing import Annotated

import typer

from ecovisor.cli.follow import open_topic, records
from ecovisor.cli.format import format_json, format_record
from ecovisor.cli.options import BootstrapOpt, ConfigOpt, fail, kafka_of
from ecovisor.contract import topics

# what can be tailed -> its topic; besides these, "notifications" (one topic per app)
SITE_TOPICS = {
    "ledger": topics.LEDGER,
    "deadletter": topics.DEADLETTER,
    "alerts": topics.ALERTS,
    "telemetry": topics.TELEMETRY,
    "commands": topics.COMMANDS,
    "acks": topics.ACTUATOR_ACKS,
}
TAILABLE = ("notifications", *SITE_TOPICS)


def topic_for(what: str, app_id: str | None) -> str:
    if what not in TAILABLE:
        raise fail(f"cannot tail {what!r}; choose one of {', '.join(TAILABLE)}", 2)
    if what == "notifications":
        if not app_id:
            raise fail("tail notifications needs --app", 2)
        return topics.notifications(app_id)
    return SITE_TOPICS[what]


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
    topic = topic_for(what, app_id)
    boot, _ = kafka_of(config, bootstrap)
    cons = open_topic(boot, topic, from_beginning)
    n = 0
    try:
        for rec in records(cons, idle_timeout=idle_timeout or None):
            typer.echo(format_json(rec.value) if as_json else format_record(what, rec.value))
            n += 1
            if max_messages and n >= max_messages:
                break
    except KeyboardInterrupt:
        pass
    finally:
        cons.close()
