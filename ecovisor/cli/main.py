"""The ``ecovisor`` command line: run the embedded stack, check the site configuration,
publish commands, follow topics, export the ledger. See docs/cli.md.

This module only assembles the Typer app (the console script ``ecovisor`` and
``python -m ecovisor.cli``); each subcommand lives in the module named after it.
"""

from __future__ import annotations

import typer

from ecovisor.cli import export, kafka_acls, replay, sci, stack, tail, topics
from ecovisor.cli.commands import cmd_app
from ecovisor.cli.config import config_app

app = typer.Typer(
    help="Ecovisor: a virtual energy system per application, on a message bus.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# in --help order
app.command()(stack.up)
app.command()(stack.down)
app.command()(stack.status)
app.command()(stack.logs)
app.command()(tail.tail)
app.command("topics")(topics.topics_cmd)
app.command("export")(export.export)
app.command("replay")(replay.replay)
app.command("evaluate")(replay.evaluate)
app.command("sci")(sci.sci)
config_app.command("kafka-acls")(kafka_acls.kafka_acls)
app.add_typer(config_app, name="config")
app.add_typer(cmd_app, name="cmd")


def main() -> None:  # pragma: no cover - console entry alternative
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
