"""The ledger's intake and exit behaviour on real processes (docs/reliability.md):

* C1: new sources with epoch-ms first seqs no longer make the snapshot (one Kafka record)
  too large; the worker keeps running and closing ticks.
* F: an unhandled error (in a task of the worker, or Faust's producer refusing a record)
  exits non-zero, not 0; under supervisord a crash loop ends FATAL, or, when each run
  lives longer than startsecs, is counted from supervisord's log, and `ecovisor status`
  says NOT healthy with exit code 1.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from ecovisor.contract.telemetry import CarbonTelemetry
from ecovisor.embedded import stack
from ecovisor.embedded.plan import Plan, Service
from ecovisor.embedded.servers import free_port
from streams.ledger_app import prepare_topics
from tests.integration.test_ledger_e2e import Reader, start, stop

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 1, 1, tzinfo=UTC)
EPOCH_MS = 1_700_000_000_000


def site(tmp: Path, name: str, bootstrap: str) -> Path:
    p = tmp / f"{name}.yaml"
    p.write_text(
        f"""schema_version: 1
site:
  id: {name}
  shape: {{tick_s: 1.0}}
apps:
  - id: a
    token: token-of-{name}-a
stack:
  kafka_bootstrap: "{bootstrap}"
  ledger_web_port: {free_port()}
  state_dir: "{tmp / name}"
"""
    )
    prepare_topics(load_config(p), bootstrap)
    return p


def publish(bootstrap: str, name: str, msgs: list[CarbonTelemetry]) -> None:
    from kafka import KafkaProducer

    prod = KafkaProducer(bootstrap_servers=bootstrap)
    for m in msgs:
        prod.send(topics.TELEMETRY, m.to_json(), key=name.encode())
    prod.flush()
    prod.close()


def snapshot_persisted(bootstrap: str, cfg: Path, site: str, proc: subprocess.Popen[bytes],
                       log: Path, timeout: float = 30.0) -> None:
    """Until the worker's snapshot of ``site`` is in the snapshots changelog (a Faust
    table keyed by site); an AssertionError if the worker exits first or at the timeout."""
    from kafka import KafkaConsumer, TopicPartition

    from streams.ledger_app import faust_app_id

    topic = f"{faust_app_id(load_config(cfg))}-snapshots-changelog"
    cons = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(cons.partitions_for_topic(topic) or ())]
        assert tps, f"no topic {topic}"
        cons.assign(tps)
        cons.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()[-2000:]
            for recs in cons.poll(timeout_ms=200).values():
                if any(r.key == site.encode() for r in recs):
                    return
        raise AssertionError(f"no snapshot of {site} in {topic} after {timeout} s")
    finally:
        cons.close()


def test_many_new_sources_with_epoch_ms_seqs_do_not_stop_the_ledger(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """C1 on the demo stack: 20 sources, one message each, made a 1.15 MB snapshot; the
    worker crashed (MessageSizeTooLargeError) at its first persist, on every restart."""
    name = "zzsources"
    cfg = site(tmp_path, name, kafka_bootstrap)
    msgs = [
        CarbonTelemetry(site=name, time=T0, source=f"dev-{i}", seq=EPOCH_MS + i,
                        intensity_g_per_kwh=100.0)  # fmt: skip
        for i in range(50)
    ]
    msgs += [
        CarbonTelemetry(site=name, time=T0 + timedelta(seconds=s), source="dev-0",
                        seq=EPOCH_MS + 1000 * s, intensity_g_per_kwh=100.0)  # fmt: skip
        for s in range(1, 6)
    ]
    publish(kafka_bootstrap, name, msgs)
    reader = Reader(kafka_bootstrap, topics.LEDGER, name)
    log = tmp_path / "ledger.log"
    proc = start("streams.ledger", cfg, log, "--clock", "event")
    try:
        reader.wait(lambda xs: len(xs) >= 4, timeout=60)
        # past a persist: the site's snapshot is in its changelog (the record the
        # producer refused in C1), not merely 2 s later
        snapshot_persisted(kafka_bootstrap, cfg, name, proc, log)
        assert proc.poll() is None, log.read_text()[-2000:]
        assert "MessageSizeTooLarge" not in log.read_text()
    finally:
        reader.close()
        stop(proc)


INJECT = """
import sys
import streams.ledger_app as la
import streams.ledger_service as ls
import streams.ledger_worker as lw
if sys.argv[1] == "task":
    async def broken(self, led, partition, records):
        raise RuntimeError("injected failure")
    ls.LedgerService.telemetry = broken
else:  # the C1 failure: Faust's producer refuses the snapshot record
    lw.SiteLedger.snapshot = lambda self: b"x" * (la.SNAPSHOT_MAX_BYTES + 1)
if sys.argv[1] == "snapshot-stuck":  # ... and the app's stop never ends
    import asyncio
    import faust

    async def stuck(self):
        await asyncio.sleep(3600)
    faust.App.on_stop = stuck
from streams.ledger import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.mark.parametrize("failure", ["task", "snapshot", "snapshot-stuck"])
def test_a_crashed_ledger_exits_non_zero(
    kafka_bootstrap: str, tmp_path: Path, failure: str
) -> None:
    """F: Faust stops 'cleanly' when a task or its producer fails, and the worker exited
    0, so supervisord restarted it forever. An unhandled error now exits 1, with one line
    saying why. ``snapshot-stuck``: a crash inside Faust (its producer) whose stop then
    hangs (seen under the full suite's load) still exits 1 after HARD_STOP_S."""
    name = f"zzcrash{failure.replace('-', '')}"
    cfg = site(tmp_path, name, kafka_bootstrap)
    publish(kafka_bootstrap, name, [
        CarbonTelemetry(site=name, time=T0 + timedelta(seconds=s), source="c", seq=s,
                        intensity_g_per_kwh=1.0)
        for s in range(4)
    ])  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
    out = subprocess.run(
        [sys.executable, "-c", INJECT, failure, "--config", str(cfg), "--clock", "event"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert "streams.ledger: stopped by an error" in out.stderr


def test_a_crash_loop_is_not_healthy(tmp_path: Path) -> None:
    """F: supervisord with the stack's program settings. A program that dies at once
    ends FATAL after startretries; one that lives past startsecs before each crash is
    RUNNING most of the time and never FATAL: its exits are counted from supervisord's
    log. `ecovisor status` said "healthy" during such a loop; now NOT healthy, exit 1."""
    state = tmp_path / "state"
    (state / "logs").mkdir(parents=True)
    py = sys.executable
    plan = Plan(services=[
        Service("quick", [py, "-c", "raise SystemExit(1)"], 10, server=True, startsecs=1),
        Service("looping", [py, "-c", "import time; time.sleep(1.3); raise SystemExit(1)"],
                10, server=True, startsecs=1, startretries=100),
        Service("steady", [py, "-c", "import time; time.sleep(600)"], 10, server=True,
                startsecs=1),
    ])  # fmt: skip
    (state / "supervisord.conf").write_text(stack.render_supervisord_conf(plan, state, tmp_path))
    sup = subprocess.Popen(stack._supervisord_cmd(state, nodaemon=True),
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)  # fmt: skip
    try:
        deadline = time.monotonic() + 40
        infos: list = []
        while time.monotonic() < deadline:
            time.sleep(0.5)
            if not stack.is_running(state):
                continue
            infos = stack.process_info(state)
            by = {i["name"]: i for i in infos}
            if by["quick"]["statename"] == "FATAL" and by["looping"]["restarts"] > 3:
                break
        by = {i["name"]: i for i in infos}
        assert by["quick"]["statename"] == "FATAL", infos
        assert by["steady"]["statename"] == "RUNNING" and by["steady"]["restarts"] == 0
        assert by["looping"]["restarts"] > 3, infos
        assert not stack.healthy(infos)
        assert not stack.healthy([by["looping"], by["steady"]])  # even while RUNNING
        assert stack.healthy([by["steady"]])
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
        st = subprocess.run([py, "-m", "ecovisor.cli", "status", "--state-dir", str(state)],
                            capture_output=True, text=True, timeout=60, env=env)  # fmt: skip
        assert st.returncode == 1 and "NOT healthy" in st.stdout, st.stdout + st.stderr
        assert "exits in 10 min" in st.stdout
    finally:
        if stack.is_running(state):
            stack.rpc(state).supervisor.shutdown()
        try:
            sup.wait(30)
        except subprocess.TimeoutExpired:
            sup.kill()
            sup.wait()
