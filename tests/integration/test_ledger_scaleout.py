"""Two ledger workers of one group share four sites on the embedded broker; one is
SIGKILLed mid-run: the survivor takes its sites over, restores them from the changelogs
and every site's ledger is complete and exact (each entry equal to a fault-free,
in-process run of the same telemetry; an entry sent twice, identical)."""

from __future__ import annotations

import asyncio
import random
import re
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ecovisor.contract import topics
from ecovisor.contract.config_file import load_config
from ecovisor.contract.telemetry import CarbonTelemetry, NodeBatchTelemetry, SolarTelemetry
from ecovisor.core.entries import AppLedgerEntry
from ecovisor.embedded.servers import Server, free_port, tansu_command
from streams.ledger import load_group
from streams.ledger_app import prepare_topics
from streams.ledger_service import LedgerService
from tests.integration.test_ledger_e2e import ROOT, Reader, at, stop

pytestmark = pytest.mark.integration

PARTITIONS = 4
N_CONT = 4  # per app
TICKS = 16
PER_TICK = 2


def site_ids() -> list[str]:
    """Four site ids on four distinct partitions: two workers get two sites each."""
    by_part: dict[int, str] = {}
    i = 0
    while len(by_part) < PARTITIONS:
        s = f"so{i}"
        by_part.setdefault(topics.site_partition(s, PARTITIONS), s)
        i += 1
    return [by_part[p] for p in sorted(by_part)]


def write_site(d: Path, site: str, bootstrap: str) -> Path:
    apps = ""
    for a in ("a", "b"):
        app = f"{site}{a}"
        apps += f"  - id: {app}\n    token: tok-{app}-xxxxxxxx\n"
        apps += "    shares: {solar_fraction: 0.5, battery_capacity_wh: 2.0, grid_w: 50.0}\n"
        apps += "    containers:\n"
        for c in range(N_CONT):
            cid = f"{app}-{c}"
            apps += (f"      - {{id: {cid}, node: n1, "
                     f"backend: {{type: process, cgroup: r/{cid}}}}}\n")  # fmt: skip
    p = d / f"{site}.yaml"
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
  state_dir: "{d.parent / 'state'}"
"""
    )
    return p


def workload(site: str) -> list[bytes]:
    """Solar, carbon and one node batch per half tick; a duplicate batch now and then."""
    rng = random.Random(site)
    energy: dict[str, float] = {}
    solar_j = 0.0
    out: list[bytes] = []
    for i in range(TICKS * PER_TICK):
        t = i / PER_TICK
        solar_j += rng.uniform(0, 1.5)
        out.append(SolarTelemetry(site=site, time=at(t), source="pv", seq=i, power_w=3,
                                  energy_j=solar_j).to_json())  # fmt: skip
        co2 = rng.uniform(100, 400)
        out.append(CarbonTelemetry(site=site, time=at(t), source="co2", seq=i,
                                   intensity_g_per_kwh=co2).to_json())  # fmt: skip
        entries = []
        for a in ("a", "b"):
            for c in range(N_CONT):
                cid = f"{site}{a}-{c}"
                energy[cid] = energy.get(cid, 0.0) + rng.uniform(0, 0.6)
                entries.append({"container": cid, "app": f"{site}{a}", "cpu_s": 0.0,
                                "energy_j": round(energy[cid], 3)})  # fmt: skip
        b = NodeBatchTelemetry.model_validate(
            {"site": site, "time": at(t), "source": "node-n1", "seq": i, "node": "n1",
             "containers": entries}  # fmt: skip
        ).to_json()
        out.append(b)
        if rng.random() < 0.1:
            out.append(b)
    return out


def reference(cfg_path: Path, payloads: list[bytes]) -> dict[tuple[str, int], dict[str, Any]]:
    """The fault-free ledger of one site: the same LedgerService, in process."""
    from tests.unit.test_ledger_intake import FakeApp, Record

    loop = asyncio.new_event_loop()
    try:
        fake = FakeApp()
        svc = LedgerService(load_config(cfg_path), fake, {}, {}, "event")
        led = svc.loaded()
        recs = [Record(v, i) for i, v in enumerate(payloads)]
        loop.run_until_complete(svc.telemetry(led, 0, recs))
    finally:
        loop.close()
    out = {}
    for t, _, v in fake.producer.sent:
        if t == topics.LEDGER:
            e = AppLedgerEntry.model_validate_json(v)
            out[(e.app, e.k)] = e.model_dump(mode="json")
    return out


@pytest.fixture()
def broker(tmp_path: Path) -> Iterator[str]:
    """A broker of its own: the session's has the site-keyed topics with one partition."""
    port = free_port()
    srv = Server(tansu_command(port), port, tmp_path / "tansu.log").start()
    yield f"127.0.0.1:{port}"
    srv.stop()


def publish(bootstrap: str, by_site: dict[str, list[bytes]]) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    for site, payloads in by_site.items():
        for v in payloads:
            p.send(topics.TELEMETRY, v, key=site.encode())
    p.flush()
    p.close()


def start_worker(sites: Path, port: int, log: Path) -> Any:
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ECOVISOR_KAFKA_BOOTSTRAP", None)
    return subprocess.Popen(
        [sys.executable, "-m", "streams.ledger", "--config", str(sites), "--group", "pair",
         "--partitions", str(PARTITIONS), "--web-port", str(port), "--clock", "event",
         "--loglevel", "info"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def sites_ticking(port: int) -> set[str]:
    """The sites a worker has closed ticks of (its /metrics)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return set()
    out = set()
    for line in text.splitlines():
        if line.startswith("ecovisor_ledger_ticks_closed_total{"):
            site = line.split('site="', 1)[1].split('"', 1)[0]
            if float(line.rsplit(" ", 1)[1]) > 0:
                out.add(site)
    return out


def readiness(port: int) -> tuple[int, dict[str, Any]]:
    """A worker's ``GET /ready``: (status, body)."""
    import json
    import urllib.error

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ready", timeout=2) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def wait_ready(port: int, timeout: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    status, body = 0, {}
    while time.monotonic() < deadline:
        try:
            status, body = readiness(port)
        except OSError:
            status, body = 0, {}
        if status == 200:
            return body
        time.sleep(0.2)
    raise AssertionError(f"worker on {port} not ready: {status} {body}")


def group_of_four(broker: str, tmp_path: Path) -> tuple[list[str], Path, dict[str, Path],
                                                       dict[str, list[bytes]], dict]:  # fmt: skip
    """The four sites' files, topics, telemetry and fault-free ledgers."""
    sites = site_ids()
    d = tmp_path / "sites"
    d.mkdir()
    paths = {s: write_site(d, s, broker) for s in sites}
    prepare_topics(load_group(str(d), "pair", PARTITIONS), broker)
    payloads = {s: workload(s) for s in sites}
    want = {s: reference(paths[s], payloads[s]) for s in sites}
    return sites, d, paths, payloads, want


def entries_by_tick(reader: Reader, site: str) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """The site's entries read, normalised, by (app, tick): each copy sent."""
    got: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for e in reader.items:
        if e.get("site") == site:
            norm = AppLedgerEntry.model_validate(e).model_dump(mode="json")
            got.setdefault((e["app"], e["k"]), []).append(norm)
    return got


def test_two_workers_share_sites_and_survive_a_sigkill(broker: str, tmp_path: Path) -> None:
    sites, d, paths, payloads, want = group_of_four(broker, tmp_path)
    assert all(len(w) == 2 * (TICKS - 1) for w in want.values())  # the last tick stays open

    reader = Reader(broker, topics.LEDGER)
    ports = [free_port(), free_port()]
    procs = []
    try:
        publish(broker, {s: p[: len(p) // 2] for s, p in payloads.items()})
        procs = [start_worker(d, ports[i], tmp_path / f"w{i}.log") for i in range(2)]
        deadline = time.monotonic() + 60
        split: list[set[str]] = [set(), set()]
        while time.monotonic() < deadline:
            split = [sites_ticking(p) for p in ports]
            if split[0] and split[1] and split[0] | split[1] == set(sites):
                break
            time.sleep(0.3)
        assert split[0] and split[1], f"both workers own sites: {split}"
        assert not split[0] & split[1], f"a site on both workers: {split}"
        assert split[0] | split[1] == set(sites), split
        # each is ready, owning the sites it ticks (GET /ready names none, counts them)
        for port, own in zip(ports, split, strict=True):
            body = wait_ready(port)
            assert body["ready"] is True and body["reason"] is None
            assert body["sites"] == len(own) and body["partitions"] >= 1

        procs[1].send_signal(signal.SIGKILL)
        procs[1].wait(10)
        publish(broker, {s: p[len(p) // 2 :] for s, p in payloads.items()})

        def complete(_: Any) -> bool:
            have: dict[str, set[tuple[str, int]]] = {s: set() for s in sites}
            for e in reader.items:
                if e.get("site") in have:
                    have[e["site"]].add((e["app"], e["k"]))
            return all(have[s] >= set(want[s]) for s in sites)

        try:
            reader.wait(complete, timeout=120)
        except AssertionError:
            have: dict[str, set[tuple[str, int]]] = {s: set() for s in sites}
            for e in reader.items:
                if e.get("site") in have:
                    have[e["site"]].add((e["app"], e["k"]))
            missing = {s: sorted(k for _, k in set(want[s]) - have[s])[:4] for s in sites}
            raise AssertionError(f"incomplete after the kill (survivor had {split[0]}): "
                                 f"missing ticks per site {missing}") from None
        time.sleep(1.0)
        reader.poll()
        assert sites_ticking(ports[0]) >= split[1], "the survivor took the killed sites over"
        assert wait_ready(ports[0])["sites"] == len(sites)
        for s in sites:
            got = entries_by_tick(reader, s)
            assert set(got) == set(want[s]), s  # no tick lost, none extra
            for key, versions in got.items():
                for v in versions:  # re-sent after the takeover: identical
                    assert v == want[s][key], (s, key)
            last = max(k for _, k in want[s])
            for a in ("a", "b"):
                tot = got[(f"{s}{a}", last)][0]["cumulative"]["total"]
                assert tot["energy_mj"] > 0 and tot["carbon_ug"] > 0
    finally:
        reader.close()
        for p in procs:
            stop(p)


def test_a_partition_count_other_than_the_topics_is_refused(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    """The session's broker has the site-keyed topics with one partition: a group of four
    partitions would look for sites on the wrong partitions, so the worker exits 2."""
    import subprocess
    import sys

    d = tmp_path / "sites"
    d.mkdir()
    for s in ("pm1", "pm2"):
        write_site(d, s, kafka_bootstrap)
    r = subprocess.run(
        [sys.executable, "-m", "streams.ledger", "--config", str(d), "--partitions", "4"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 2, r.stderr
    assert "the group has 4 partition(s) but" in r.stderr and "ecovisor.telemetry has 1" in r.stderr
    from ecovisor.adapters.kafka import existing_topics

    assert "ecovisor-ledger-sites-snapshots-changelog" not in existing_topics(kafka_bootstrap)


def test_a_planned_move_re_sends_nothing(broker: str, tmp_path: Path) -> None:
    """A worker joining (a rebalance) and a worker stopped with SIGTERM move sites by
    plan: the leaving owner hands over a snapshot of its last closed tick
    (``LedgerService.hand_over``), so the next owner recomputes no tick and every entry
    is on the ledger topic exactly once, equal to the fault-free run. (Before the
    hand-over, the next owner started from a snapshot up to 5 s older and re-sent those
    ticks: identical, but a move should not replay.)"""
    sites, d, paths, payloads, want = group_of_four(broker, tmp_path)
    thirds = [{s: p[i * len(p) // 3 : (i + 1) * len(p) // 3] for s, p in payloads.items()}
              for i in range(3)]  # fmt: skip
    reader = Reader(broker, topics.LEDGER)
    ports = [free_port(), free_port()]
    logs = [tmp_path / "w0.log", tmp_path / "w1.log"]
    procs: list[Any] = []

    def have() -> dict[str, list[tuple[str, int]]]:
        out: dict[str, list[tuple[str, int]]] = {s: [] for s in sites}
        for e in reader.items:
            if e.get("site") in out:
                out[e["site"]].append((e["app"], e["k"]))
        return out

    def closed_all(prefix: dict[str, list[bytes]]) -> Any:
        # every tick the telemetry so far closes (as the fault-free run of it says)
        due = {s: set(reference(paths[s], p)) for s, p in prefix.items()}
        return lambda _: all(set(have()[s]) >= due[s] for s in sites)

    try:
        publish(broker, thirds[0])
        procs.append(start_worker(d, ports[0], logs[0]))
        reader.wait(closed_all(thirds[0]), timeout=60)
        procs.append(start_worker(d, ports[1], logs[1]))  # joins: a rebalance
        deadline = time.monotonic() + 60
        owned = [0, 0]
        while time.monotonic() < deadline and not (owned[0] and owned[1]
                                                   and sum(owned) == len(sites)):
            time.sleep(0.3)
            owned = [wait_ready(p)["sites"] for p in ports]
        assert owned[0] and owned[1] and sum(owned) == len(sites), owned
        publish(broker, thirds[1])
        reader.wait(closed_all({s: thirds[0][s] + thirds[1][s] for s in sites}), timeout=60)
        assert sites_ticking(ports[1]), "the joining worker took sites over"
        procs[1].send_signal(signal.SIGTERM)  # a graceful stop: its sites move to w0
        assert procs[1].wait(30) == 0, logs[1].read_text()[-2000:]
        publish(broker, thirds[2])
        reader.wait(lambda _: all(set(have()[s]) >= set(want[s]) for s in sites), timeout=90)
        time.sleep(1.0)
        reader.poll()
        for s in sites:
            got = entries_by_tick(reader, s)
            assert set(got) == set(want[s]), s
            twice = sorted(k for k, v in got.items() if len(v) > 1)
            assert not twice, f"site {s}: ticks sent more than once after a planned move: {twice}"
            for key, (v,) in got.items():
                assert v == want[s][key], (s, key)
        # the stopping worker wrote every site it held, drained, within its budget
        done = re.findall(r"handed over (\d+) of (\d+) site", logs[1].read_text())
        assert done and done[-1][0] == done[-1][1] != "0", done
    finally:
        reader.close()
        for p in procs:
            stop(p)
