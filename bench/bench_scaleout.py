"""Ledger scale-out benchmark: many sites on one and on two workers of one group, and a
worker SIGKILLed mid-run (docs/ledger.md, Partitioning).

Workload: ``--sites`` sites of ``--containers`` containers each (10 apps a site, one
node a site whose collector sends one node batch per tick, split under the site's
``max_message_bytes``), ``--ticks`` ticks of 1 s event time, on the embedded broker
(tansu, own port) with ``--partitions`` partitions. Every run is a new group (its own
consumer group and changelogs) reading the same telemetry, with ``--clock event``.

1. ``one``: the telemetry is in Kafka first, then ONE worker starts; rate = container
   samples of the ticks closed between the first and the last ledger entry / that time.
2. ``two``: TWO workers of one group, on a broker of their own: the telemetry is
   published tick by tick until each worker closes ticks of its sites (the group formed),
   then the rest at once; over those ticks: the sites each owns (its /metrics), each
   worker's rate over its own sites, the total (``group_formed`` false: within the
   time allowed it did not, and the figures may include a rebalance).
3. ``kill``: two workers; the telemetry is published tick by tick (``--pace`` s a tick,
   all sites) while they run; once half is out one worker is SIGKILLed. Reported: the
   time from the kill until each of its sites has a new ledger entry (from the
   survivor), and whether every site's entries equal run 1's (the fault-free ledger),
   entries sent twice included.
4. ``stop``: the same with SIGTERM instead: a graceful stop, the worker hands its sites
   over first (docs/ledger.md, Guarantees). Both report the entries sent more than once
   (after a kill, the ticks since the last snapshot; after a stop, none expected).
5. State in the tables: what the ``snapshots`` and ``counters`` tables hold at the end
   of run 1 (each key's newest value), in bytes per configured container of a site,
   and the ticks of view history the counters table covers. A worker persists at most
   every 5 s (``PERSIST_INTERVAL_S``): a run of a few seconds shows the tables as of its
   first tick; ``--ticks 200 --skip two,kill`` shows them full.

Usage: python bench/bench_scaleout.py [--sites 10] [--containers 1000] [--ticks 30]
       [--partitions 16] [--pace 0.25] [--skip one,two,kill,stop]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ecovisor.contract import topics  # noqa: E402
from ecovisor.embedded.servers import Server, free_port, tansu_command  # noqa: E402
from streams.ledger import load_group  # noqa: E402
from streams.ledger_app import prepare_topics  # noqa: E402

APPS = 10
MEASURED_TICKS_MIN = 10  # two workers: ticks published at once, after the group formed


def site_yaml(site: str, n: int, bootstrap: str, state: Path) -> str:
    apps = ""
    for a in range(APPS):
        apps += f"  - id: {site}-app{a}\n    token: {site}-bench-token-{a:04d}\n"
        apps += "    shares: {solar_fraction: 0.1, battery_capacity_wh: 10.0, grid_w: 1000.0}\n"
        apps += "    containers:\n"
        for c in range(n // APPS):
            cid = f"{site}-c{a}-{c}"
            apps += (f"      - {{id: {cid}, node: n1, backend: {{type: process, "
                     f"cgroup: b/{cid}}}}}\n")  # fmt: skip
    return f"""schema_version: 1
site:
  id: {site}
  shape: {{tick_s: 1.0, solar_nameplate_w: 100.0, battery_capacity_wh: 100.0}}
  grace_s: 0.5
  nodes: [{{id: n1, cores: 64}}]
apps:
{apps}stack:
  kafka_bootstrap: "{bootstrap}"
  state_dir: "{state}"
"""


def batches(site: str, n: int, ticks: int, t0: float, max_bytes: int) -> list[list[bytes]]:
    """Per tick, the grid's carbon intensity (``ledger_workload.carbon_sample``: a
    different value each tick, since 3 December 2026) and the node batches of one
    site (cumulative counters), as the collector sends them (``batch_version`` 2)."""
    from ledger_workload import carbon_sample

    from collectors.power import split_batches
    from ecovisor.contract.telemetry import NodeBatchColumnsTelemetry as Batch

    out = []
    seq = -1
    for i in range(ticks):
        t = datetime.fromtimestamp(t0 + i, UTC)
        rows = [(f"{site}-app{a}", f"{site}-c{a}-{c}", 0.0, round((i + 1) * (1.0 + c % 7), 3))
                for a in range(APPS) for c in range(n // APPS)]  # fmt: skip
        tick = [carbon_sample(site, i, t0 + i)[1]]
        for part in split_batches(rows, max_bytes):
            seq += 1
            tick.append(Batch(site=site, time=t, source="node-n1", seq=seq, node="n1",
                              containers=Batch.containers_of(part)).to_json())  # fmt: skip
        out.append(tick)
    return out


class Entries:
    """Every ledger entry written from now on, with the wall time it was read."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self.c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        tp = TopicPartition(topics.LEDGER, 0)
        self.c.assign([tp])
        self.c.seek_to_end(tp)
        self.c.position(tp)
        self.items: list[tuple[float, dict[str, Any]]] = []
        self.stop = False
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self) -> None:
        while not self.stop:
            for recs in self.c.poll(timeout_ms=100).values():
                now = time.monotonic()
                self.items.extend((now, json.loads(r.value)) for r in recs)

    def wait(self, n: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.items) < n:
            time.sleep(0.05)
        return len(self.items) >= n

    def close(self) -> None:
        self.stop = True
        self.th.join()
        self.c.close()


def start_worker(d: Path, group: str, partitions: int, port: int, log: Path) -> Any:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("ECOVISOR_KAFKA_BOOTSTRAP", None)
    return subprocess.Popen(
        [sys.executable, "-m", "streams.ledger", "--config", str(d), "--group", group,
         "--partitions", str(partitions), "--web-port", str(port), "--clock", "event"],
        cwd=ROOT, env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def stop(p: Any) -> None:
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def closed_counts(port: int) -> dict[str, float]:
    """Ticks a worker has closed so far, per site (its /metrics; a site it lost in a
    rebalance keeps its count)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    return {line.split('site="', 1)[1].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ecovisor_ledger_ticks_closed_total{")}  # fmt: skip


def owned(port: int) -> set[str]:
    """The sites a worker has closed ticks of."""
    return {s for s, v in closed_counts(port).items() if v > 0}


def publish(bootstrap: str, msgs: list[tuple[str, bytes]]) -> None:
    from kafka import KafkaProducer

    p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=512 * 1024,
                      max_request_size=8 * 1024 * 1024)  # fmt: skip
    for site, v in msgs:
        p.send(topics.TELEMETRY, v, key=site.encode())
    p.flush()
    p.close()


def rate(items: list[tuple[float, dict[str, Any]]], sites: set[str], n: int,
         from_k: int | None = None) -> dict[str, Any]:  # fmt: skip
    """Samples/s of ``sites``' closed ticks between their first and last entry (of the
    ticks from ``from_k`` on, when given)."""
    mine = [(t, e) for t, e in items
            if e["site"] in sites and (from_k is None or e["k"] >= from_k)]  # fmt: skip
    if len(mine) < 2:
        return {"error": "no entries"}
    ks = {e["k"] for _, e in mine}
    first, last = mine[APPS - 1][0], mine[-1][0]
    samples = (len(ks) - 1) * n * len(sites)
    return {"sites": len(sites), "ticks_closed": len(ks), "wall_s": round(last - first, 2),
            "samples_per_s": round(samples / max(1e-9, last - first))}  # fmt: skip


def run_group(d: Path, bootstrap: str, name: str, workers: int, parts: int, sites: list[str],
              n: int, ticks: int, logs: Path,
              publish_ticks: list[list[tuple[str, bytes]]] | None = None,
              ) -> dict[str, Any]:  # fmt: skip
    """``workers`` workers of group ``name`` until every tick's entries are out. The
    telemetry is in Kafka already, or ``publish_ticks`` (per tick): then they are
    published one by one until every worker has closed ticks of its sites (the group
    formed, no rebalance left), and the rest at once; the rates count only the ticks
    published at once (two workers started on pre-filled telemetry measured one worker
    reading alone until the other joined, then a rebalance)."""
    want = len(sites) * APPS * (ticks - 2)  # the last tick stays open; tick 0 with tick 1
    ent = Entries(bootstrap)
    ports = [free_port() for _ in range(workers)]
    procs = [start_worker(d, name, parts, p, logs / f"{name}-{i}.log")
             for i, p in enumerate(ports)]  # fmt: skip
    from_k = None
    formed = None
    at_form: list[dict[str, float]] = []
    try:
        if publish_ticks is not None:
            # tick by tick until every worker has closed ticks of its sites (the group
            # formed: a site's ticks close only while its owner reads new telemetry)
            i, formed, deadline = 0, False, time.monotonic() + 120
            while i < len(publish_ticks) - MEASURED_TICKS_MIN and time.monotonic() < deadline:
                publish(bootstrap, publish_ticks[i])
                i += 1
                time.sleep(0.25)
                if i >= 3 and all(owned(p) for p in ports):
                    formed = True
                    break
            # i ticks out: all but the last two closed (the clock's grace rule)
            ent.wait(len(sites) * APPS * max(0, i - 2), 120)
            at_form = [closed_counts(p) for p in ports]
            from_k = max((e["k"] for _, e in ent.items), default=-1) + 1
            publish(bootstrap, [m for tick in publish_ticks[i:] for m in tick])
        ok = ent.wait(want, 600)
        ends = [closed_counts(p) for p in ports]
    finally:
        for p in procs:
            stop(p)
        ent.close()
    out: dict[str, Any] = {"complete": ok, "entries": len(ent.items)}
    if formed is not None:
        out["group_formed"] = formed  # False: every figure below may include a rebalance
        out["measured_from_tick"] = from_k
    out["total"] = rate(ent.items, set(sites), n, from_k)
    if workers > 1:
        # each worker's sites: those it closed ticks of after the group formed (or at all)
        split = [{s for s, v in end.items() if v > (at_form[w].get(s, 0) if at_form else 0)}
                 for w, end in enumerate(ends)]  # fmt: skip
        out["split_is_a_partition"] = (sum(map(len, split)) == len(sites)
                                       and set().union(*split) == set(sites))  # fmt: skip
        out["workers"] = [{**rate(ent.items, s, n, from_k), "sites": sorted(s)}
                          for s in split]  # fmt: skip
    out["_entries"] = ent.items
    return out


def run_kill(d: Path, bootstrap: str, parts: int, sites: list[str], n: int,
             ticks: list[list[tuple[str, bytes]]], pace: float, logs: Path,
             reference: dict[tuple[str, str, int], dict[str, Any]] | None,
             sig: signal.Signals = signal.SIGKILL,
             ) -> dict[str, Any]:  # fmt: skip
    """Run 3 (``sig`` SIGKILL) or 4 (SIGTERM: a graceful stop, whose sites the worker
    hands over first)."""
    name = "kill" if sig == signal.SIGKILL else "stop"
    ent = Entries(bootstrap)
    ports = [free_port(), free_port()]
    procs = [start_worker(d, name, parts, p, logs / f"{name}-{i}.log")
             for i, p in enumerate(ports)]  # fmt: skip
    out: dict[str, Any] = {}
    try:
        half = len(ticks) // 2
        split: list[set[str]] = [set(), set()]
        for i, tick in enumerate(ticks):
            publish(bootstrap, tick)
            time.sleep(pace)
            if i == 2:  # both workers up and ticking before the pace matters
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline and not all(owned(p) for p in ports):
                    time.sleep(0.2)
            if i == half:
                split = [owned(p) for p in ports]
                victim = 1 if split[1] else 0
                killed_at = time.monotonic()
                procs[victim].send_signal(sig)
                procs[victim].wait(30)
                out["killed_worker_sites"] = sorted(split[victim])
                out["survivor_sites"] = sorted(split[1 - victim])
        want = len(sites) * APPS * (len(ticks) - 2)
        keys = lambda: {(e["site"], e["app"], e["k"]) for _, e in ent.items}  # noqa: E731
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and len(keys()) < want:
            time.sleep(0.2)
        out["complete"] = len(keys()) >= want
        back = {}
        for s in out.get("killed_worker_sites", []):
            after = [t for t, e in ent.items if e["site"] == s and t > killed_at]
            back[s] = round(min(after) - killed_at, 2) if after else None
        out["ticking_again_after_s"] = back
        seen = Counter((e["site"], e["app"], e["k"]) for _, e in ent.items)
        out["entries_sent_more_than_once"] = sum(1 for c in seen.values() if c > 1)
        if reference is not None:
            diff = 0
            for _, e in ent.items:
                ref = reference.get((e["site"], e["app"], e["k"]))
                if ref is None or ref != e:
                    diff += 1
            out["entries_differing_from_fault_free"] = diff
            out["entries_checked"] = len(ent.items)
    finally:
        for p in procs:
            stop(p)
        ent.close()
    return out


def table_state(bootstrap: str, group: str, sites: list[str], n: int, ticks_run: int
                ) -> dict[str, Any]:  # fmt: skip
    """What the tables hold at the end, read from their changelogs (the newest value of
    each key; deleted keys left out): per site, the snapshot and the ``counters`` table's
    values of its apps, in bytes per configured container, and the ticks of view history
    the counters table covers (streams/counters_table.py); and every record the counters
    changelog got (what a broker that keeps every record, as tansu, grows by) per
    container and tick run."""
    from kafka import KafkaConsumer

    from streams.counters_table import CountersTable
    from streams.view_history import row_log

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      auto_offset_reset="earliest", consumer_timeout_ms=3000)  # fmt: skip
    snaps: dict[str, int] = {}
    live: dict[bytes, bytes] = {}
    written = 0
    app_id = f"ecovisor-ledger-{group}"
    c.subscribe([f"{app_id}-snapshots-changelog", f"{app_id}-counters-changelog"])
    for r in c:
        if r.topic.endswith("snapshots-changelog"):
            if r.value is not None:
                snaps[r.key.decode()] = len(r.value)
        elif r.value is None:
            live.pop(r.key, None)
        else:
            live[r.key] = r.value
            written += len(r.key) + len(r.value)
    c.close()
    per_site = []
    ticks = []
    for s in sites:
        apps = [f"{s}-app{a}" for a in range(APPS)]
        table = CountersTable(live)
        for blocks, plain in table.read(apps).values():
            log = row_log(10**6)
            log.load(blocks, plain)
            ticks.append(len(log))
        counters = sum(table.bytes_held(a) for a in apps)
        per_site.append((snaps.get(s, 0) / n, counters / n))
    worst = max(per_site, key=sum) if per_site else (0.0, 0.0)
    return {
        "snapshot_bytes_per_container": round(max(p for p, _ in per_site), 1) if per_site else None,
        "snapshot_bytes_max": max(snaps.values()) if snaps else None,
        "counters_bytes_per_container": round(max(q for _, q in per_site), 1) if per_site else None,
        "tables_bytes_per_container": round(sum(worst), 1),
        "counters_ticks_kept": [min(ticks), max(ticks)] if ticks else None,
        "counters_changelog_bytes_per_container_tick":
            round(written / (n * len(sites) * ticks_run), 2),
    }


@contextlib.contextmanager
def own_broker(tmp: Path, name: str, sites: list[str], n: int, parts: int
               ) -> Iterator[tuple[Path, str]]:  # fmt: skip
    """A broker of its own for run ``name``: the sites' files (a directory) and its
    bootstrap, the group's topics made; stopped after."""
    port = free_port()
    broker = Server(tansu_command(port), port, tmp / f"tansu-{name}.log").start()
    try:
        bootstrap = f"127.0.0.1:{port}"
        d = tmp / f"sites-{name}"
        d.mkdir()
        for s in sites:
            (d / f"{s}.yaml").write_text(site_yaml(s, n, bootstrap, tmp / f"state-{name}"))
        prepare_topics(load_group(str(d), name, parts), bootstrap)
        yield d, bootstrap
    finally:
        broker.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sites", type=int, default=10)
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=30)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--pace", type=float, default=0.25)
    ap.add_argument("--skip", default="")
    a = ap.parse_args()
    skip = set(filter(None, a.skip.split(",")))
    print(f"machine: {platform.platform()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}")  # fmt: skip
    print(f"workload: {a.sites} sites x {a.containers} containers (10 apps, 1 node each), "
          f"{a.ticks} ticks of 1 s event time, node batches, {a.partitions} partitions, "
          "embedded broker (tansu), --clock event")  # fmt: skip
    tmp = Path(tempfile.mkdtemp(prefix="bench-scaleout-"))
    port = free_port()
    broker = Server(tansu_command(port), port, tmp / "tansu.log").start()
    bootstrap = f"127.0.0.1:{port}"
    try:
        d = tmp / "sites"
        d.mkdir()
        sites = [f"s{i:02d}" for i in range(a.sites)]
        for s in sites:
            (d / f"{s}.yaml").write_text(site_yaml(s, a.containers, bootstrap, tmp / "state"))
        group = load_group(str(d), "one", a.partitions)
        prepare_topics(group, bootstrap)
        max_bytes = next(iter(group.sites.values())).site.limits.max_message_bytes
        t0 = float(int(time.time()) - 200_000)
        per_site = {s: batches(s, a.containers, a.ticks, t0, max_bytes) for s in sites}
        ticks = [[(s, m) for s in sites for m in per_site[s][i]] for i in range(a.ticks)]
        results: dict[str, Any] = {}
        reference = None
        if "one" not in skip:
            publish(bootstrap, [m for tick in ticks for m in tick])
        if "one" not in skip:
            r = run_group(d, bootstrap, "one", 1, a.partitions, sites, a.containers, a.ticks, tmp)
            reference = {(e["site"], e["app"], e["k"]): e for _, e in r.pop("_entries")}
            results["one_worker"] = r
            results["state"] = table_state(bootstrap, "one", sites, a.containers, a.ticks)
            print("one worker:", json.dumps(r), flush=True)
            print("state:", json.dumps(results["state"]), flush=True)
        if "two" not in skip:
            # a broker of its own: the group forms on the first ticks, then the rest
            with own_broker(tmp, "two", sites, a.containers, a.partitions) as (d3, b3):
                r = run_group(d3, b3, "two", 2, a.partitions, sites, a.containers, a.ticks,
                              tmp, publish_ticks=ticks)  # fmt: skip
            r.pop("_entries")
            results["two_workers"] = r
            print("two workers:", json.dumps(r), flush=True)
        # a broker of its own, the same telemetry published tick by tick while the workers
        # run: its ledger must equal run 1's; SIGTERM: a graceful stop hands its sites over
        for name, sig in (("kill", signal.SIGKILL), ("stop", signal.SIGTERM)):
            if name in skip:
                continue
            with own_broker(tmp, name, sites, a.containers, a.partitions) as (dn, bn):
                r = run_kill(dn, bn, a.partitions, sites, a.containers, ticks, a.pace, tmp,
                             reference, sig=sig)  # fmt: skip
            results[name] = r
            print(f"{name}:", json.dumps(r), flush=True)
    finally:
        broker.stop()
    print(f"logs and state: {tmp}")


if __name__ == "__main__":
    main()
