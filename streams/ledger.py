"""The Faust ledger worker: per-tick virtual energy ledgers, notifications, commands.

``python -m streams.ledger --config FILE [--clock realtime|event]``

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
* streams/ledger_app.py: the Faust app (telemetry batches, agents, tables, persistence)
  and ``prepare_topics``, every topic it uses;
* this module: the process entry.
"""

from __future__ import annotations

import argparse
import sys

from ecovisor.contract.config import (
    ConfigError,
    config_path,
    kafka_bootstrap,
    load_config,
    one_line,
)
from streams.ledger_app import build_app, prepare_topics


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m streams.ledger", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="site configuration (default $ECOVISOR_CONFIG)")
    p.add_argument(
        "--clock",
        choices=["realtime", "event"],
        default="realtime",
        help="realtime: a timer closes ticks at wall time >= end + grace; event: only the "
        "event-time watermark (telemetry or clock messages) closes ticks (replays)",
    )
    p.add_argument("--timeouts", type=float, default=3.0, help="broker session/rebalance s")
    p.add_argument("--loglevel", default="warning")
    a = p.parse_args(argv)
    try:
        cfg = load_config(config_path(a.config))
    except ConfigError as e:
        print(f"streams.ledger: {one_line(e)}", file=sys.stderr)
        return 2
    bootstrap = kafka_bootstrap(cfg)
    try:
        prepare_topics(cfg, bootstrap)
    except Exception as e:  # noqa: BLE001 - one clear line, not a traceback
        print(f"streams.ledger: cannot prepare Kafka topics at {bootstrap}: {e}", file=sys.stderr)
        return 3
    import faust

    app = build_app(cfg, bootstrap=bootstrap, clock=a.clock, timeouts=a.timeouts)
    worker = faust.Worker(app, loglevel=a.loglevel, quiet=True, redirect_stdouts=False)
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
