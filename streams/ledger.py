"""The Faust ledger worker: per-tick virtual energy ledgers, notifications, commands.

``python -m streams.ledger --config FILE|DIR [--group NAME] [--partitions N]
[--web-port PORT] [--clock realtime|event]``

One site file: a worker of that site (its own group, one partition, as before groups).
A directory of site files (``*.yaml``): a worker of the group of those sites; start as
many as you like with the same arguments (and distinct ``--web-port``s on one host): they
share the sites' partitions, and a rebalance moves sites between them (docs/ledger.md,
Partitioning).

Data path (docs/ledger.md):

* ``ecovisor.telemetry`` -> ``TickClock`` (pure, in-memory aggregation per open tick,
  never a table write per sample) -> at each tick close the core's ``site_step`` ->
  ``ecovisor.ledger`` (one ``AppLedgerEntry`` per app, key ``site:app:k``),
  ``ecovisor.notifications.<app>`` (tick + events), ``ecovisor.actuator.battery``
  (aggregate setpoints), ``ecovisor.alerts`` (drift, grid limit).
* ``ecovisor.commands`` -> ``streams.commands`` validation -> lifecycle notifications,
  queued settings (apply from the next tick), ``ecovisor.actuator.containers``.
* ``ecovisor.actuator.acks`` -> ``command_applied`` / ``command_failed``.

Where each part lives:

* streams/ledger_worker.py: ``SiteLedger``, the state machine (no I/O) and its snapshot;
* streams/tick_notifications.py: ``TickData``, events, battery setpoint, alerts of a tick;
* streams/ledger_views.py: the HTTP state views the REST API reads;
* streams/ledger_service.py: ``LedgerService``, the I/O around one site's ledger;
* streams/ledger_app.py: the Faust app (agents, tables, reading each partition in
  sequence) and ``prepare_topics``, every topic it uses;
* streams/ledger_group.py: the group's sites and which of them this worker owns;
* this module: the process entry.
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path
from typing import Any

from ecovisor.adapters.faust_transport import WORKER_FETCH_MAX_WAIT_MS
from ecovisor.adapters.kafka import fetch_wait_arg, linger_arg
from ecovisor.contract.config_file import ConfigError, config_path, load_config, one_line
from ecovisor.contract.environment import kafka_bootstrap
from streams.gc_schedule import FULL_COLLECTIONS
from streams.ledger_app import PRODUCER_LINGER_MS, PartitionMismatch, build_app, prepare_topics
from streams.ledger_group import SiteGroup
from streams.ledger_service import hard_stop_on_crash

DIRECTORY_PARTITIONS = 16
HARD_STOP_S = 20.0  # after an unhandled error, exit 1 if Faust has not stopped by then


def port(text: str) -> int:
    """A TCP port for argparse: 1..65535."""
    n = int(text)
    if not 1 <= n <= 65_535:
        raise argparse.ArgumentTypeError(f"{n} is not a port (1..65535)")
    return n


def worker_for(app: Any, loglevel: str) -> Any:
    """The Faust worker of ``app``, logging at ``loglevel``, without Faust's terminal
    spinner: with one, Faust sets the root logger to DEBUG for the whole run (the spinner
    turns on every record), so each of aiokafka's debug lines (one per message sent)
    built a log record that no handler wrote: ~3 % of a busy worker's CPU."""
    import faust

    worker = faust.Worker(app, loglevel=loglevel, quiet=True, redirect_stdouts=False)
    worker.spinner = None
    return worker


def load_group(path: str, name: str | None, partitions: int | None) -> SiteGroup:
    """The sites of ``path`` (a site file, or a directory of ``*.yaml`` site files)."""
    p = Path(path)
    if p.is_dir():
        files = sorted(p.glob("*.yaml")) + sorted(p.glob("*.yml"))
        if not files:
            raise ConfigError(f"{p}: no site files (*.yaml) in this directory")
        cfgs = [load_config(f) for f in files]
        return SiteGroup.of(cfgs, name or p.resolve().name,
                            DIRECTORY_PARTITIONS if partitions is None else partitions)  # fmt: skip
    return SiteGroup.of([load_config(p)], name, partitions)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streams.ledger", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="a site file, or a directory of site files (*.yaml) "
                   "served by a group of workers (default $ECOVISOR_CONFIG)")  # fmt: skip
    p.add_argument("--group", help="the group's name (several sites; default: the "
                   "directory's name)")  # fmt: skip
    p.add_argument("--partitions", type=int, default=None,
                   help="partitions of the site-keyed topics: the most workers that can share "
                   "the sites (default 1 for one site file, 16 for a directory); fixed once "
                   "the topics exist")  # fmt: skip
    p.add_argument("--web-port", type=port, default=None,
                   help="port of the views and /metrics (default the first site's "
                   "stack.ledger_web_port; give each worker on one host its own)")  # fmt: skip
    p.add_argument("--web-bind", default="127.0.0.1",
                   help="address the views and /metrics listen on (default the loopback; "
                   "another address needs the sites' internal key: docs/ledger.md)")  # fmt: skip
    p.add_argument("--web-host", default="127.0.0.1",
                   help="host name the group's other workers reach this one at, to route a "
                   "view request to its site's owner ('hostname': this machine's)")  # fmt: skip
    p.add_argument(
        "--clock",
        choices=["realtime", "event"],
        default="realtime",
        help="realtime: a timer closes ticks at wall time >= end + grace; event: only the "
        "event-time watermark (telemetry or clock messages) closes ticks (replays)",
    )
    p.add_argument("--timeouts", type=float, default=3.0, help="broker session/rebalance s")
    p.add_argument("--fetch-wait-ms", type=fetch_wait_arg, default=WORKER_FETCH_MAX_WAIT_MS,
                   help="longest wait of the consumer's fetches, ms (default %(default)s): the "
                   "embedded broker holds a fetch that long even when records arrive, so "
                   "a shorter wait means lower latency and more empty fetches when idle "
                   "(the pipeline replay uses 2)")  # fmt: skip
    p.add_argument("--linger-ms", type=linger_arg, default=PRODUCER_LINGER_MS,
                   help="the producer's linger, ms (default %(default)s)")
    p.add_argument("--loglevel", default="warning")
    a = p.parse_args(argv)
    try:
        group = load_group(config_path(a.config), a.group, a.partitions)
    except ConfigError as e:
        print(f"streams.ledger: {one_line(e)}", file=sys.stderr)
        return 2
    bootstrap = kafka_bootstrap(next(iter(group.sites.values())))
    try:
        prepare_topics(group, bootstrap)
    except PartitionMismatch as e:
        print(f"streams.ledger: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - one clear line, not a traceback
        print(f"streams.ledger: cannot prepare Kafka topics at {bootstrap}: {e}", file=sys.stderr)
        return 3
    web_host = socket.gethostname() if a.web_host == "hostname" else a.web_host
    app = build_app(group, bootstrap=bootstrap, clock=a.clock, timeouts=a.timeouts,
                    web_port=a.web_port, web_bind=a.web_bind, web_host=web_host,
                    fetch_wait_ms=a.fetch_wait_ms, linger_ms=a.linger_ms)  # fmt: skip
    hard_stop_on_crash(app, HARD_STOP_S)  # a crash's stop must end the process
    worker = worker_for(app, a.loglevel)
    FULL_COLLECTIONS.take_over()  # full collections after a tick's outputs (gc_schedule)
    code: object = 0
    try:
        worker.execute_from_commandline()
    except SystemExit as e:
        code = e.code
    # Faust stops "cleanly" (exit 0) when a task or its producer crashes: a supervisor
    # would restart a crash loop forever and call it healthy. A crash exits 1.
    failure = app.ledger_service.failure or getattr(app, "crash_reason", None)
    if failure is not None:
        print(f"streams.ledger: stopped by an error: {one_line(failure)}", file=sys.stderr)
        return 1
    return code if isinstance(code, int) else (0 if code is None else 1)


if __name__ == "__main__":
    sys.exit(main())
