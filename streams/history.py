"""History sink: ledger entries -> time series, with influxdb-client.

``python -m streams.history --config FILE``

Reads ``ecovisor.ledger`` with a partition-assigned consumer (no consumer group: tansu
does not support kafka-python groups) and writes, per ``AppLedgerEntry``:

* ``ecovisor_app`` (tags site, app; time = tick start): ``demand_j``, ``solar_j``,
  ``battery_j``, ``grid_j``, ``unserved_j``, ``carbon_g``, ``intensity_g_per_kwh``,
  ``battery_wh``, ``cum_energy_j``, ``cum_carbon_g``, ``estimated`` (0/1);
* ``ecovisor_container`` (tags site, app, container): ``energy_j``, ``carbon_g``.

Target (``stack.timeseries``): ``victoria-metrics`` (its ``/api/v2/write`` takes
influxdb-client writes; metric names become ``<measurement>_<field>``), ``influxdb``
(``stack.influxdb_url`` / ``ECOVISOR_INFLUXDB_URL``, token from the env variable named by
``stack.influxdb_token_env``), ``auto`` (InfluxDB when a URL is configured, else
victoria-metrics) or ``none``. The consumer position is kept in
``<state_dir>/history-<site>.offsets.json`` after each write; a point written twice has
the same series and timestamp (idempotent in InfluxDB).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tenacity import Retrying, stop_after_attempt, wait_exponential

from ecovisor.adapters.kafka import KafkaUnavailable, assigned_consumer, create_topics
from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError, config_path, load_config, one_line
from ecovisor.contract.environment import influxdb_url, kafka_bootstrap
from ecovisor.core.units import mj_to_j, ug_to_g

log = logging.getLogger("ecovisor.history")


def target(cfg: EcovisorConfig) -> tuple[str, str, str, str] | None:
    """(kind, url, token, bucket) of the time-series store, or None for 'none'."""
    st = cfg.stack
    url = influxdb_url(cfg)
    kind = st.timeseries
    if kind == "none":
        return None
    if kind == "influxdb" or (kind == "auto" and url):
        if not url:
            raise ConfigError("stack.timeseries is influxdb but no influxdb_url is set")
        return "influxdb", url, os.environ.get(st.influxdb_token_env, ""), st.influxdb_bucket
    return "victoria-metrics", f"http://127.0.0.1:{st.victoria_metrics_port}", "", "ecovisor"


def points(entry: dict[str, Any]) -> list[Any]:
    """influxdb-client Points of one ledger entry (pure apart from object creation)."""
    from influxdb_client import Point, WritePrecision

    t_ns = round(entry["t_start"] * 1e9)
    f = entry["flows"]
    tot = entry["total"]
    cum = entry["cumulative"]["total"]
    p = (
        Point("ecovisor_app")
        .tag("site", entry["site"])
        .tag("app", entry["app"])
        .field("demand_j", mj_to_j(entry["demand_mj"]))
        .field("solar_j", mj_to_j(tot["solar_mj"]))
        .field("battery_j", mj_to_j(f["battery_to_load"]))
        .field("grid_j", mj_to_j(tot["grid_mj"]))
        .field("unserved_j", mj_to_j(f["unserved"]))
        .field("carbon_g", ug_to_g(tot["carbon_ug"]))
        .field("intensity_g_per_kwh", float(entry["intensity_g_per_kwh"]))
        .field("battery_wh", float(entry["battery"]["after_wh"]))
        .field("cum_energy_j", mj_to_j(cum["energy_mj"]))
        .field("cum_carbon_g", ug_to_g(cum["carbon_ug"]))
        .field("estimated", 1 if entry.get("estimated") else 0)
        .time(t_ns, WritePrecision.NS)
    )
    out = [p]
    for c, line in sorted(entry["containers"].items()):
        out.append(
            Point("ecovisor_container")
            .tag("site", entry["site"])
            .tag("app", entry["app"])
            .tag("container", c)
            .field("energy_j", mj_to_j(line["energy_mj"]))
            .field("carbon_g", ug_to_g(line["carbon_ug"]))
            .time(t_ns, WritePrecision.NS)
        )
    return out


def run(cfg: EcovisorConfig, stop: threading.Event) -> int:
    """Copy ledger entries to the time-series store until ``stop``; 1 if a write keeps
    failing (the positions file still points at the unwritten entries)."""
    from influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import SYNCHRONOUS

    tgt = target(cfg)
    if tgt is None:
        log.info("stack.timeseries is none: nothing to do")
        return 0
    kind, url, token, bucket = tgt
    state = Path(cfg.stack.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    pos_file = state / f"history-{cfg.site.id}.offsets.json"
    positions: dict[str, int] = json.loads(pos_file.read_text()) if pos_file.exists() else {}
    bootstrap = kafka_bootstrap(cfg)
    create_topics(bootstrap, [topics.LEDGER])  # the sink may start before the ledger
    consumer, tps = assigned_consumer(
        bootstrap, topics.LEDGER, f"ecovisor-history-{cfg.site.id}", fetch_max_wait_ms=500
    )
    for tp in tps:
        if str(tp.partition) in positions:
            consumer.seek(tp, positions[str(tp.partition)])
        else:
            consumer.seek_to_beginning(tp)
    client = InfluxDBClient(url=url, token=token or "unused", org=cfg.stack.influxdb_org)
    writer = client.write_api(write_options=SYNCHRONOUS)
    # a store restarting or briefly overloaded: 5 attempts, 0.5 s doubling up to 5 s
    write = Retrying(
        stop=stop_after_attempt(5),
        wait=wait_exponential(multiplier=0.5, max=5.0),
        before_sleep=lambda rs: log.warning(
            "write to %s failed (%s), retrying", url, rs.outcome and rs.outcome.exception()
        ),
        reraise=True,
    )
    log.info("writing ledger entries to %s at %s", kind, url)
    try:
        while not stop.is_set():
            batch = consumer.poll(timeout_ms=500, max_records=5000)
            pts: list[Any] = []
            for tp, records in batch.items():
                for r in records:
                    try:
                        entry = json.loads(r.value)
                        if entry.get("site") == cfg.site.id:
                            pts.extend(points(entry))
                    except (ValueError, KeyError, TypeError) as e:
                        log.warning("skipping malformed ledger record at %s: %s", r.offset, e)
                    positions[str(tp.partition)] = r.offset + 1
            if pts:
                try:
                    write(writer.write, bucket=bucket, org=cfg.stack.influxdb_org, record=pts)
                except Exception as e:  # noqa: BLE001 - reported, the entries stay unread
                    log.error("giving up on %d points (%s); will retry from the same "
                              "offsets", len(pts), e)  # fmt: skip
                    return 1
            if batch:
                pos_file.write_text(json.dumps(positions))
    finally:
        consumer.close()
        client.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streams.history", description=__doc__)
    ap.add_argument("--config", help="site configuration (default $ECOVISOR_CONFIG)")
    ap.add_argument("--log-level", default="INFO")
    a = ap.parse_args(argv)
    logging.basicConfig(level=a.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        cfg = load_config(config_path(a.config))
        target(cfg)
    except ConfigError as e:
        print(f"streams.history: {one_line(e)}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        return run(cfg, stop)
    except KafkaUnavailable as e:
        print(f"streams.history: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
