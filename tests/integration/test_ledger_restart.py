"""SIGKILL the Faust ledger worker mid-stream, restart it: the ledger is identical to an
uninterrupted run (every entry, hence every cumulative total), duplicates included."""

from __future__ import annotations

import json
import random
import signal
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from ecovisor.contract.telemetry import CarbonTelemetry, ContainerTelemetry, SolarTelemetry
from ecovisor.embedded.servers import free_port
from streams.ledger_app import prepare_topics
from tests.integration.test_ledger_e2e import Reader, at, start, stop

pytestmark = pytest.mark.integration

N_CONT = 20  # per app
TICKS = 40
PER_TICK = 4


def config(tmp: Path, site: str, bootstrap: str) -> Path:
    apps = ""
    for app in ("a", "b"):
        apps += f"  - id: {app}\n    token: tok-{site}-{app}-xxxx\n"
        apps += "    shares: {solar_fraction: 0.5, battery_capacity_wh: 2.0, grid_w: 50.0}\n"
        apps += "    containers:\n"
        for c in range(N_CONT):
            cid = f"{site}-{app}{c}"
            apps += (
                f"      - {{id: {cid}, node: n1, backend: {{type: process, cgroup: r/{cid}}}}}\n"
            )
    p = tmp / f"{site}.yaml"
    p.write_text(
        f"""schema_version: 1
site:
  id: {site}
  shape: {{tick_s: 1.0, solar_nameplate_w: 4.0, battery_capacity_wh: 4.0}}
  grace_s: 0.5
  nodes: [{{id: n1, cores: 8}}]
apps:
{apps}stack:
  kafka_bootstrap: "{bootstrap}"
  ledger_web_port: {free_port()}
  state_dir: "{tmp / site}"
"""
    )
    return p


def workload(site: str, seed: int = 7) -> list[bytes]:
    rng = random.Random(seed)
    out: list[Any] = []
    energy: dict[str, float] = {}
    solar_j = 0.0
    for i in range(TICKS * PER_TICK):
        t = i / PER_TICK
        solar_j += rng.uniform(0, 1.5)
        out.append(
            SolarTelemetry(site=site, time=at(t), source="pv", seq=i, power_w=3, energy_j=solar_j)
        )
        if i % 3 == 0:
            out.append(
                CarbonTelemetry(
                    site=site,
                    time=at(t),
                    source="co2",
                    seq=i,
                    intensity_g_per_kwh=rng.uniform(100, 400),
                )
            )
        for app in ("a", "b"):
            for c in range(N_CONT):
                cid = f"{site}-{app}{c}"
                energy[cid] = energy.get(cid, 0.0) + rng.uniform(0, 0.6)
                m = ContainerTelemetry(
                    site=site,
                    time=at(t),
                    source=f"pm-{cid}",
                    seq=i,
                    app=app,
                    container=cid,
                    node="n1",
                    cpu_s=0.0,
                    energy_j=round(energy[cid], 3),
                )
                out.append(m)
                if rng.random() < 0.02:
                    out.append(m)  # duplicate
    return [m.to_json() for m in out]


def publish(bootstrap: str, payloads: list[bytes], site: str) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for v in payloads:
        p.send(topics.TELEMETRY, v, key=site.encode())
    p.flush()
    p.close()


def entries_of(reader: Reader, site: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
    out: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in reader.items:
        if e.get("site") == site:
            out.setdefault((e["app"], e["k"]), []).append(e)
    return out


def normalised(e: dict[str, Any], site: str) -> str:
    return json.dumps(e, sort_keys=True).replace(site, "SITE")


def test_sigkill_restart_gives_identical_ledger(kafka_bootstrap: str, tmp_path: Path) -> None:
    ref_site, kill_site = "zzref", "zzkil"  # distinct from any other text in an entry
    want = 2 * (TICKS - 1)  # the last tick stays open
    reader = Reader(kafka_bootstrap, topics.LEDGER)
    procs = []
    try:
        # the uninterrupted reference run and the interrupted run side by side (their own
        # sites, hence Faust apps and consumer groups): the reference's start-up and
        # ticks overlap the interrupted run's instead of preceding it
        ref_cfg = config(tmp_path, ref_site, kafka_bootstrap)
        prepare_topics(load_config(ref_cfg), kafka_bootstrap)
        publish(kafka_bootstrap, workload(ref_site), ref_site)
        # interrupted run: publish 60 %, SIGKILL once some ticks are out, publish the rest
        kill_cfg = config(tmp_path, kill_site, kafka_bootstrap)
        prepare_topics(load_config(kill_cfg), kafka_bootstrap)
        payloads = workload(kill_site)
        cut = int(len(payloads) * 0.6)
        publish(kafka_bootstrap, payloads[:cut], kill_site)
        ref = start("streams.ledger", ref_cfg, tmp_path / "ref.log", "--clock", "event")
        procs.append(ref)
        w1 = start("streams.ledger", kill_cfg, tmp_path / "kill1.log", "--clock", "event")
        procs.append(w1)
        reader.wait(lambda _: len(entries_of(reader, kill_site)) >= 2 * 10, timeout=60)
        time.sleep(0.3)  # let it get further than the last snapshot
        w1.send_signal(signal.SIGKILL)
        w1.wait(10)
        before_kill = len(entries_of(reader, kill_site))
        assert before_kill < want, "the kill must happen mid-stream"
        publish(kafka_bootstrap, payloads[cut:], kill_site)
        w2 = start("streams.ledger", kill_cfg, tmp_path / "kill2.log", "--clock", "event")
        procs.append(w2)
        reader.wait(lambda _: len(entries_of(reader, ref_site)) >= want
                    and len(entries_of(reader, kill_site)) >= want, timeout=90)  # fmt: skip
        time.sleep(1.0)
        reader.poll()
        ref_e = entries_of(reader, ref_site)
        got = entries_of(reader, kill_site)
        assert sorted(got) == sorted(ref_e)
        for key, versions in got.items():
            # re-sent entries (after the restart) are identical to the first ones
            assert len({normalised(v, kill_site) for v in versions}) == 1, key
            assert normalised(versions[0], kill_site) == normalised(ref_e[key][0], ref_site)
        # the restart resumed from a snapshot (the first ticks were not recomputed)
        first_k = min(k for _, k in got)
        assert len(got[("a", first_k)]) == 1
        last_k = max(k for _, k in got)
        for app in ("a", "b"):
            tot = got[(app, last_k)][0]["cumulative"]["total"]
            assert tot == ref_e[(app, last_k)][0]["cumulative"]["total"]
            assert tot["energy_mj"] > 0 and tot["carbon_ug"] > 0
    finally:
        reader.close()
        for p in procs:
            stop(p)


def test_a_command_is_anchored_after_the_telemetry_already_in_kafka(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Regression (found by reliability/chaos.py): in event mode a command is anchored to
    the worker's driving time, capped at its own tick. A worker that had just (re)started
    took its commands before reading the telemetry already in Kafka: after a SIGKILL the
    restored snapshot's older tick, on a fresh start none. So a charge rate accepted
    during tick 9 applied from tick 5 (a restored snapshot of tick 4) or here from tick 1,
    ticks already emitted were emitted again with other content, and totals changed.
    Now commands wait until the telemetry replay has caught up with the partition."""
    from ecovisor.contract.commands import SetBatteryChargeRate, sign_command

    site = "zzcmd"
    k0 = int(at(0).timestamp())
    cfg_path = config(tmp_path, site, kafka_bootstrap)
    cfg = load_config(cfg_path)
    prepare_topics(cfg, kafka_bootstrap)

    def telemetry(ticks: range) -> list[bytes]:
        out = []
        for i in ticks:
            for half in (0.0, 0.5):
                t, seq = i + half, int(2 * (i + half))
                out.append(SolarTelemetry(site=site, time=at(t), source="pv", seq=seq,
                                          power_w=1.0, energy_j=0.5 * seq).to_json())  # fmt: skip
                for app in ("a", "b"):
                    c = f"{site}-{app}0"
                    m = ContainerTelemetry(site=site, time=at(t), source=f"pm-{c}", seq=seq,
                                           app=app, container=c, node="n1", cpu_s=0.0,
                                           energy_j=0.4 * seq)  # fmt: skip
                    out.append(m.to_json())
        return out

    from kafka import KafkaProducer

    # everything up to tick 9 (its watermark 9.5 closes ticks 0-8) and, in tick 9, the
    # command: all in Kafka before the worker starts
    publish(kafka_bootstrap, telemetry(range(10)), site)
    cmd = sign_command(SetBatteryChargeRate(site=site, time=at(9.75), app="b",
                                            command_id="late-start", watts=0.5),
                       cfg.app("b").token)  # fmt: skip
    p = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    p.send(topics.COMMANDS, cmd.to_json(), key=b"b").get(30)
    p.close()
    reader = Reader(kafka_bootstrap, topics.LEDGER, site)
    notes = Reader(kafka_bootstrap, topics.notifications("b"), site)
    w = start("streams.ledger", cfg_path, tmp_path / "cmd.log", "--clock", "event")
    try:
        notes.wait(lambda ns: any(n["type"] == "command_accepted" for n in ns), timeout=60)
        publish(kafka_bootstrap, telemetry(range(10, 12)), site)  # closes ticks 9 and 10
        notes.wait(lambda ns: any(n["type"] == "command_applied" for n in ns), timeout=60)
        reader.wait(lambda _: ("b", k0 + 10) in entries_of(reader, site), timeout=30)
        got = entries_of(reader, site)
        rates = {k - k0: es[0]["settings"]["charge_rate_w"] for (a, k), es in got.items()
                 if a == "b"}  # fmt: skip
        assert rates == {**{k: 0.0 for k in range(10)}, 10: 0.5}
        (applied,) = [n for n in notes.items if n["type"] == "command_applied"]
        assert applied["tick"] == k0 + 10
    finally:
        reader.close()
        notes.close()
        stop(w)


def test_the_counters_view_spans_a_restart(kafka_bootstrap: str, tmp_path: Path) -> None:
    """The counters view history persisted in the ``counters`` table (in blocks,
    streams/counters_table.py) is read back by the next worker: after a SIGKILL and a
    restart, the view over the ticks the first worker closed answers as before the kill,
    and over the whole run it equals the ledger's cumulative totals."""
    import httpx

    site = "zzcnt"
    cfg_path = config(tmp_path, site, kafka_bootstrap)
    cfg = load_config(cfg_path)
    prepare_topics(cfg, kafka_bootstrap)
    payloads = workload(site, seed=11)
    # ticks 0..29 first (closes 0..28: grace 0.5 s), then, once the worker's persist
    # interval has passed, tick 30's samples: closing tick 29 persists the table (a
    # block of ticks 0-15, an open block 16-29) with the snapshot
    times = [datetime.fromisoformat(json.loads(p)["time"]) for p in payloads]
    first = [p for p, t in zip(payloads, times, strict=True) if t < at(30)]
    second = [p for p, t in zip(payloads, times, strict=True) if at(30) <= t < at(31)]
    rest = payloads[len(first) + len(second):]
    k0 = int(at(0).timestamp())
    reader = Reader(kafka_bootstrap, topics.LEDGER, site)
    base = f"http://127.0.0.1:{cfg.stack.ledger_web_port}/ecovisor/counters/a"
    span = {"t1": at(0).isoformat(), "t2": at(29).isoformat()}
    procs = []
    try:
        publish(kafka_bootstrap, first, site)
        w1 = start("streams.ledger", cfg_path, tmp_path / "c1.log", "--clock", "event")
        procs.append(w1)
        reader.wait(lambda _: ("a", k0 + 28) in entries_of(reader, site), timeout=60)
        time.sleep(5.5)  # PERSIST_INTERVAL_S
        publish(kafka_bootstrap, second, site)
        reader.wait(lambda _: ("a", k0 + 29) in entries_of(reader, site), timeout=30)
        time.sleep(1.0)  # the persist after tick 29's close
        before = httpx.get(base, params=span, timeout=5).json()
        assert before["ticks"] == [k0, k0 + 28]
        w1.send_signal(signal.SIGKILL)
        w1.wait(10)
        publish(kafka_bootstrap, rest, site)
        w2 = start("streams.ledger", cfg_path, tmp_path / "c2.log", "--clock", "event")
        procs.append(w2)
        last = k0 + TICKS - 2  # the last tick stays open
        reader.wait(lambda _: ("a", last) in entries_of(reader, site), timeout=60)
        time.sleep(0.5)
        got = entries_of(reader, site)
        # the new worker went on from the snapshot: it did not close the early ticks again
        assert len(got[("a", k0 + 5)]) == 1
        after = httpx.get(base, params=span, timeout=5).json()
        assert after == before
        whole = httpx.get(base, params={"t1": at(0).isoformat(),
                                        "t2": at(TICKS).isoformat()}, timeout=5).json()  # fmt: skip
        assert whole["ticks"] == [k0, last]
        cum = got[("a", last)][0]["cumulative"]["total"]
        assert round(whole["energy_j"] * 1000) == cum["energy_mj"] > 0
    finally:
        reader.close()
        for p in procs:
            stop(p)
