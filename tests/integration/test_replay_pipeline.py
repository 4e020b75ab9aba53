"""Both replay engines give the same ledger for the same experiment: the core engine
(in-process ``SiteLedger``) and the pipeline engine (the real ledger process in event
mode, the real API, the policy through ``EcovisorClient`` over HTTP + SSE, simulated
containers acknowledging the ledger's actions over Kafka). A BLAST job under
Wait&Scale on a carbon square wave: it waits out the high periods (0 replicas) and
runs scaled up in the low ones, so commands are decided on several ticks."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import replay.engine as engine
from ecovisor.contract.experiment import Experiment
from replay.engine import run_one
from replay.pipeline import run_pipeline

pytestmark = pytest.mark.integration

TICK_S = 600  # longer than the ledger's clock_skew_s (300 s): the clock bridges it
T0_US = 1_704_067_200 * 1_000_000  # 2024-01-01T00:00Z, a tick boundary
N = 30
ARRIVAL = 2
# 4 ticks low, 4 high, ...: the policy's threshold (200) splits them
CARBON = np.array([100.0 if (i // 4) % 2 == 0 else 400.0 for i in range(N)])


def experiment() -> Experiment:
    return Experiment.model_validate(
        {
            "name": "pipeline-vs-core",
            "site": {"tick_s": TICK_S},
            "traces": {"carbon": {"type": "csv", "path": ["unused.csv"]}},
            "window": {"start": "2024-01-01T00:00:00Z", "end": "2024-01-02T00:00:00Z"},
            "arrivals": {"warmup_h": 0, "max_runtime_h": 3},
            "runs": 1,
            "apps": [
                {
                    "id": "blast",
                    "workload": {"type": "blast", "work_h": 6.0, "base_cores": 8,
                                 "queue_limit": 3, "cores_per_replica": 4,
                                 "max_replicas": 8},  # fmt: skip
                    "policies": {
                        "ws": {
                            "policy": "wait_and_scale",
                            "args": ["--threshold", "200", "--factor", "3",
                                     "--template", "worker", "--base-replicas", "2"],
                        }  # fmt: skip
                    },
                }
            ],
        }
    )


def core_run(exp: Experiment, csv_path: Path) -> tuple[Any, list[tuple[int, str, dict]]]:
    """The core engine's run and its commands as (tick index that decided, type, fields)."""
    log: list[tuple[int, str, dict]] = []
    orig = engine.LedgerClient.command

    def record(self: Any, type: str, **fields: Any) -> Any:
        log.append(((self.now_us - T0_US) // (TICK_S * 1_000_000) - 1, type, fields))
        return orig(self, type, **fields)

    engine.LedgerClient.command = record  # type: ignore[method-assign]
    try:
        app = exp.apps[0]
        r = run_one(exp, app, "ws", 0, CARBON, np.zeros(N), T0_US, ARRIVAL, ledger_csv=csv_path)
    finally:
        engine.LedgerClient.command = orig  # type: ignore[method-assign]
    return r, log


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return [{k: v for k, v in r.items() if k != "site"} for r in csv.DictReader(f)]


def test_pipeline_and_core_engines_give_the_same_ledger(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    exp = experiment()
    core, core_cmds = core_run(exp, tmp_path / "core.csv")
    pipe = run_pipeline(exp, exp.apps[0], "ws", 0, CARBON, np.zeros(N), T0_US, ARRIVAL,
                        bootstrap=kafka_bootstrap, workdir=tmp_path / "pipe",
                        ledger_csv=tmp_path / "pipe.csv")  # fmt: skip
    p = pipe.result
    # the job ran, waited and scaled: commands on several ticks, and it finished
    assert core.finished and p.finished
    assert len({k for k, _, _ in core_cmds}) >= 3, core_cmds
    # the same commands on the same ticks
    assert pipe.commands == core_cmds
    # the same ledger: totals exact (integer mJ and µg, summed over the entries)...
    assert p.ticks == core.ticks
    assert p.entries_sum == core.entries_sum
    assert (p.carbon_g, p.energy_wh, p.runtime_h) == (core.carbon_g, core.energy_wh, core.runtime_h)
    # ...and entry by entry (the pipeline's site id has a suffix on a shared broker)
    assert rows(tmp_path / "pipe.csv") == rows(tmp_path / "core.csv")
    assert len(pipe.entries) == core.ticks
    assert p.series == core.series


def test_cli_replay_with_the_pipeline_engine(tmp_path: Path) -> None:
    """``ecovisor replay --engine pipeline``: its own broker, the table, the results
    and the ledger CSV, the services' logs kept under --out."""
    from typer.testing import CliRunner

    from ecovisor.cli.main import app

    rows_ = ["time,value"] + [f"2024-01-01T{h:02d}:00:00Z,{100 + 50 * h}" for h in range(12)]
    (tmp_path / "carbon.csv").write_text("\n".join(rows_) + "\n")
    (tmp_path / "exp.yaml").write_text(
        "schema_version: 1\nname: cli-pipeline\nsite: {tick_s: 600}\n"
        "traces: {carbon: {type: csv, path: [carbon.csv]}}\n"
        "window: {start: 2024-01-01T00:00:00Z, end: 2024-01-01T09:00:00Z}\n"
        "arrivals: {warmup_h: 0.5, max_runtime_h: 2}\nruns: 1\n"
        "apps:\n  - id: ml\n    workload: {type: ml_training, work_h: 0.5, base_cores: 4}\n"
        "    policies: {agnostic: {policy: carbon_agnostic}}\n"
    )
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["replay", str(tmp_path / "exp.yaml"), "--engine", "pipeline",
                                 "--out", str(out), "--quiet"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "| ml | agnostic | 1/1 |" in r.output
    assert (out / "results.jsonl").read_text().count("\n") == 1
    ledger = rows(out / "ledgers" / "ml" / "agnostic" / "run-00.csv")
    assert len(ledger) >= 3 and float(ledger[-1]["cum_energy_j"]) > 0
    assert (out / "pipeline" / "ml-agnostic-run00" / "ledger.log").exists()


def test_a_tick_larger_than_a_batch_is_sent_whole_and_in_order(kafka_bootstrap: str) -> None:
    """The engine hands a tick's records to its producer as batches of one partition: a
    tick over aiokafka's batch size (16 kB; a web service of 256 replicas sends ~18 kB on
    its first tick) goes in several, every record once and in order."""
    import uuid

    from kafka import KafkaConsumer, TopicPartition

    from ecovisor.adapters.kafka import create_topics
    from replay.pipeline import _Producer

    topic = f"pipeline-batches-{uuid.uuid4().hex[:8]}"
    create_topics(kafka_bootstrap, [topic])
    values = [f"{i:04d}".encode() * 1_500 for i in range(12)]  # 12 x 6 kB: 72 kB
    prod = _Producer(kafka_bootstrap)
    try:
        acks = prod.batch(topic, b"site-x", values).result(30)
    finally:
        prod.close()
    assert len(acks) >= 4  # several batches
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                      fetch_max_wait_ms=50)  # fmt: skip
    try:
        tp = TopicPartition(topic, 0)
        c.assign([tp])
        c.seek_to_beginning(tp)
        got: list[bytes] = []
        for _ in range(100):
            for batch in c.poll(timeout_ms=200).values():
                got.extend(r.value for r in batch)
            if len(got) >= len(values):
                break
    finally:
        c.close()
    assert got == values
