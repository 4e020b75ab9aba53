"""Ledger worker benchmark on the real embedded servers (own ports, temp dirs).

1. Throughput from a pre-filled Kafka topic: N container samples are written to
   ``ecovisor.telemetry`` first, then ONE ledger worker (``python -m streams.ledger
   --clock event``) is started; rate = samples consumed between the first and the last
   ledger entry / that wall time (so worker start-up and group join are excluded).
2. Throughput through the MQTT bridge: the same samples published over MQTT (QoS 1) to
   mosquitto, bridged to Kafka by ``python -m streams.bridge``, worker running.
3. Tick-close latency at 1 s ticks, real-time clock: every second one sample per
   container is published over MQTT stamped with the wall clock; latency = the tick
   notification consumed minus the publish of that tick's last sample (it includes the
   configured grace, which is the time the ledger waits on purpose), and minus the
   tick's deadline (end + grace).
4. and 5. Node batches (``batch_version`` 2, ``NodeBatchColumnsTelemetry``): 1 and 2
   again with the containers on nodes of ``--per-node`` containers, each node's counters
   sent once per tick as the power collector sends them (split under
   ``site.limits.max_message_bytes`` by ``collectors.power.split_batches``), at each of
   ``--batch-containers`` containers per site. Rates are container samples/s (entries,
   not messages). ``intake``: the same batches, in each of ``--batch-versions`` (default
   1 and 2, for the comparison), through the parse and ``SiteLedger.ingest_batch`` in
   this process, each timed apart from ``SiteLedger.close``, so the figures say which
   bounds a worker. ``--intake-stop build|parse|ingest`` ends each intake run after that
   stage, for instruction counts: two callgrind runs that differ only in the stage give
   the stage's instructions by subtraction (docs/ledger.md, Node batches). Only the
   intake mode left (``--skip kafka,mqtt,latency,kafka-batch,mqtt-batch``): no servers.

Every workload has the grid's carbon intensity, one ``CarbonTelemetry`` per tick with a
different value each tick (since 3 December 2026; ``--no-carbon`` leaves it out): without
it every carbon figure is 0, and the ledger skips the work a real site does every tick
(each container's carbon and carbon history, carbon events); at 1,000 containers in
process that halved the cost of closing a tick. Figures measured before that date are
for a site without a carbon signal.

Every throughput run also reports the CPU seconds each process used between the first
and the last ledger entry (``/proc/<pid>/stat``, the process and its children): the
worker, the bridge, the Kafka broker and the MQTT broker share this machine's cores,
so ``samples_per_worker_cpu_s`` says what one worker does per core of its own.

Usage: python bench/bench_ledger.py [--containers 1000] [--ticks 60] [--per-tick 1]
       [--skip kafka,mqtt,latency,intake,kafka-batch,mqtt-batch]
       [--batch-containers 1000,10000] [--per-node 1000] [--batch-versions 1,2]
       [--intake-stop build|parse|ingest|close] [--no-carbon]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ledger_workload import (  # noqa: E402
    batch_workload,
    sample,
    site_yaml,
    workload,
)

from ecovisor.contract import topics  # noqa: E402
from ecovisor.contract.config_file import load_config  # noqa: E402
from ecovisor.embedded.servers import Server, free_port, mqtt_command, tansu_command  # noqa: E402
from streams.ledger import prepare_topics  # noqa: E402


def start(module: str, cfg: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", module, "--config", str(cfg), *args],
        cwd=ROOT,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
    )


def wait_log(path: Path, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"no {text!r} in {path} after {timeout} s")


def stop(p: subprocess.Popen[bytes]) -> None:
    p.terminate()
    try:
        p.wait(15)
    except subprocess.TimeoutExpired:
        p.kill()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its descendants so far."""
    parent: dict[int, int] = {}
    ticks: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        parent[int(d)] = int(fields[1])
        ticks[int(d)] = int(fields[11]) + int(fields[12])
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        total += ticks.get(p, 0)
        todo.extend(c for c, pp in parent.items() if pp == p)
    return total / CLK_TCK


def cpu_probe(procs: dict[str, int]) -> Any:
    """A probe giving each named process tree's CPU seconds so far."""
    return lambda: {name: tree_cpu_s(pid) for name, pid in list(procs.items())}


def cpu_between(probes: list[dict[str, float]], i: int, j: int) -> dict[str, float]:
    return {k: round(probes[j][k] - probes[i][k], 2) for k in probes[j]}


def ledger_watch(bootstrap: str, topic: str, stop_at: int, timeout: float,
                 probe: Any = None, probes: list[Any] | None = None,
                 site: str | None = None) -> list[float]:
    """Wall times at which each new record of `topic` was consumed, until `stop_at`;
    ``probe``: called once per fetched batch, its result appended to ``probes`` once
    per record (the CPU used so far when that record was seen). ``site``: only the
    records keyed ``site:...`` count (an earlier run's worker may still write one while
    it stops: counted, it shifted the run's first entry and had no CPU probe)."""
    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    tp = TopicPartition(topic, 0)
    c.assign([tp])
    c.seek_to_end(tp)
    times: list[float] = []
    deadline = time.monotonic() + timeout
    while len(times) < stop_at and time.monotonic() < deadline:
        for batch in c.poll(timeout_ms=100).values():
            now = time.monotonic()
            if site is not None:
                prefix = f"{site}:".encode()
                batch = [r for r in batch if (r.key or b"").startswith(prefix)]
            times.extend(now for _ in batch)
            if probe is not None and probes is not None and batch:
                seen = probe()
                probes.extend(seen for _ in batch)
    c.close()
    return times


def run_throughput(
    d: Path, bootstrap: str, mqtt_port: int, n: int, ticks: int, per_tick: int, via_mqtt: bool,
    per_node: int | None = None, servers: dict[str, int] | None = None, carbon: bool = True,
) -> dict[str, Any]:  # fmt: skip
    """``servers``: name -> pid of the brokers, whose CPU is reported too; ``carbon``:
    the workload has a carbon intensity signal."""
    servers = servers or {}
    from kafka import KafkaProducer

    site = "bench-mqtt" if via_mqtt else "bench-kafka"
    if per_node is not None:  # node batches: a site of its own per size
        site += f"-batch-{n}"
        per_tick = 1
    cfg_path = d / f"{site}.yaml"
    cfg_path.write_text(
        site_yaml(n, bootstrap, mqtt_port, free_port(), d / site, 0.5, site, per_node)
    )
    cfg = load_config(cfg_path)
    prepare_topics(cfg, bootstrap)
    t0 = float(int(time.time()) - 100_000 - (3000 if via_mqtt else 0) - (n if per_node else 0))
    if per_node is None:
        msgs = workload(n, ticks, per_tick, t0, site, carbon)
    else:
        msgs = batch_workload(n, per_node, ticks, t0, site, cfg.site.limits.max_message_bytes,
                              carbon=carbon)  # fmt: skip
    # the ledger consumer group starts at the committed offset, else the earliest; use a
    # fresh site per run by starting from what is already in the topic: measure by entries
    apps = 10
    if not via_mqtt:
        p = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, batch_size=256 * 1024)
        for _, payload in msgs:
            p.send(topics.TELEMETRY, payload, key=site.encode())
        p.flush()
        p.close()
    # samples sit on tick starts: the last two ticks stay open (end + grace not reached)
    closed = ticks - 2
    want = apps * closed
    watch: list[float] = []
    probes: list[dict[str, float]] = []
    procs = dict(servers)  # the worker and bridge join below, before any entry is seen
    th = threading.Thread(target=lambda: watch.extend(
        ledger_watch(bootstrap, topics.LEDGER, want, 300, cpu_probe(procs), probes, site)))
    th.start()
    time.sleep(1.0)
    worker = start("streams.ledger", cfg_path, d / f"ledger-{site}.log", "--clock", "event")
    procs["worker"] = worker.pid
    bridge = None
    try:
        if via_mqtt:
            import paho.mqtt.client as mqtt

            bridge = start("streams.bridge", cfg_path, d / f"bridge-{site}.log")
            procs["bridge"] = bridge.pid
            # MQTT drops what is published before the bridge subscribed: wait for it (a
            # site of 10,000 containers took ~14 s to load on a loaded machine)
            wait_log(d / f"bridge-{site}.log", "MQTT connected", 120)
            time.sleep(2.0)  # its subscription; the worker joins its group
            cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
            cl.max_inflight_messages_set(1000)
            cl.max_queued_messages_set(0)
            cl.connect("127.0.0.1", mqtt_port)
            cl.loop_start()
            infos = [cl.publish(t, pl, qos=1) for t, pl in msgs]
            for i in infos:
                i.wait_for_publish(120)
            cl.loop_stop()
            cl.disconnect()
        th.join()
    finally:
        if bridge:
            stop(bridge)
        stop(worker)
    if len(watch) < want:
        return {"error": f"only {len(watch)} of {want} entries; see {d}"}
    # tick 0 closes once tick 1's samples arrive; the last closes after all samples:
    # between them the worker consumed (ticks - 2) ticks' worth of samples
    first, last = watch[apps - 1], watch[-1]
    samples_between = (ticks - 2) * n * per_tick
    cpu = cpu_between(probes, apps - 1, len(probes) - 1)
    return {
        "messages": len(msgs),
        "samples": n * ticks * per_tick,
        "ticks_closed": closed,
        "wall_s": round(last - first, 3),
        "samples_per_s": round(samples_between / (last - first)),
        "ticks_per_s": round((closed - 1) / (last - first), 2),
        "cpu_s": cpu,
        "samples_per_worker_cpu_s": round(samples_between / max(cpu["worker"], 0.01)),
    }


def run_latency(d: Path, bootstrap: str, mqtt_port: int, n: int, ticks: int) -> dict[str, Any]:
    import paho.mqtt.client as mqtt
    from kafka import KafkaConsumer, TopicPartition

    grace = 0.2
    site = "bench-latency"
    cfg_path = d / "latency.yaml"
    cfg_path.write_text(site_yaml(n, bootstrap, mqtt_port, free_port(), d / site, grace, site))
    cfg = load_config(cfg_path)
    prepare_topics(cfg, bootstrap)
    worker = start("streams.ledger", cfg_path, d / "ledger-l.log", "--clock", "realtime")
    bridge = start("streams.bridge", cfg_path, d / "bridge-l.log")
    # a short fetch wait: the embedded broker does not always answer a waiting fetch when
    # a record arrives, so kafka-python's default 500 ms would be measured, not the ledger
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                      fetch_max_wait_ms=10)  # fmt: skip
    tp = TopicPartition(topics.notifications("app0"), 0)
    c.assign([tp])
    c.seek_to_end(tp)
    last_pub: dict[int, float] = {}
    got: dict[int, float] = {}
    stop_ev = threading.Event()

    def consume() -> None:
        while not stop_ev.is_set():
            for batch in c.poll(timeout_ms=50).values():
                now = time.time()
                for r in batch:
                    m = json.loads(r.value)
                    if m["type"] == "tick" and m["tick"] not in got:
                        got[m["tick"]] = now

    th = threading.Thread(target=consume)
    th.start()
    cl = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-lat")
    cl.max_inflight_messages_set(1000)
    cl.connect("127.0.0.1", mqtt_port)
    cl.loop_start()
    per_app = n // 10

    def publish_tick(i: int) -> None:
        """One sample per container in the middle of the next second."""
        now = time.time()
        time.sleep(max(0.0, int(now) + 1.5 - now))
        k = int(time.time())
        for a in range(10):
            for cc in range(per_app):
                cid = f"c{a}-{cc}"
                t = time.time()
                cl.publish(
                    topics.mqtt_telemetry(site, "container", f"pm-{cid}"),
                    sample(site, cid, f"app{a}", i, t, (i + 1) * 1.0),
                    qos=1,
                )
        last_pub[k] = time.time()

    try:
        # warm-up: ticks until the worker has joined its group and closed one (a fixed
        # 5 s wait measured a slow join as latency when the bench's earlier runs still
        # loaded the machine: p99 6.4 s in one run, 21 ms alone)
        i, deadline = 0, time.monotonic() + 120
        while not got and time.monotonic() < deadline:
            publish_tick(i)
            i += 1
        warm = set(last_pub)
        for j in range(ticks):
            publish_tick(i + j)
        time.sleep(3.0)
    finally:
        stop_ev.set()
        th.join()
        cl.loop_stop()
        c.close()
        stop(bridge)
        stop(worker)
    # the first two measured ticks: warm-up too (the worker's first closes after a join)
    seen = sorted(k for k in last_pub if k in got and k not in warm)[2:]
    if len(seen) < 1:
        return {"error": f"only {len(got)} ticks seen; see {d}"}
    lat = sorted(got[k] - last_pub[k] for k in seen)
    ded = sorted(got[k] - (k + 1 + grace) for k in seen)

    def pct(xs: list[float], p: float) -> float:
        return round(1000 * xs[min(len(xs) - 1, int(p * len(xs)))], 1)

    return {
        "ticks": len(lat),
        "publish_to_notification_ms": {"p50": pct(lat, 0.5), "p99": pct(lat, 0.99)},
        "deadline_to_notification_ms": {"p50": pct(ded, 0.5), "p99": pct(ded, 0.99)},
        "grace_ms": grace * 1000,
        "mean_ms": round(1000 * statistics.mean(lat), 1),
    }


INTAKE_STAGES = ("build", "parse", "ingest", "close")


def run_intake(
    n: int, per_node: int, ticks: int, version: int = 2, stop: str = "close",
    carbon: bool = True,
) -> dict[str, Any]:
    """In process, no brokers: the worker's per-message path for node batches of
    ``version`` (parse, ``SiteLedger.ingest_batch``) apart from closing ticks
    (``SiteLedger.close``, with the worker's full garbage collections after it:
    ``streams.gc_schedule``), each timed on its own: which of them bounds a worker.
    ``stop``: the last stage run (``INTAKE_STAGES``; for instruction counts). ``close``
    includes rendering what it sends (the worker sends every entry and notification):
    ``render_ms_per_tick`` of it, and compressing the view history's full blocks."""
    import gc

    from ecovisor.contract.config_file import parse_config
    from ecovisor.contract.telemetry import TELEMETRY_ADAPTER
    from ecovisor.core.tick_clock import to_us
    from streams.gc_schedule import FullCollections
    from streams.ledger_worker import SiteLedger

    t0 = 1_700_000_000.0
    cfg = parse_config(site_yaml(n, "127.0.0.1:1", 1, 1, Path("/tmp/unused"), 0.5, "bi",
                                 per_node))  # fmt: skip
    msgs = [p for _, p in batch_workload(n, per_node, ticks, t0, "bi",
                                         cfg.site.limits.max_message_bytes, version,
                                         carbon)]  # fmt: skip
    samples = n * ticks
    out: dict[str, Any] = {
        "batch_version": version,
        "messages": len(msgs),
        "samples": samples,
        "bytes_per_sample": round(sum(map(len, msgs)) / samples, 1),
        "stop": stop,
    }
    if stop == "build":
        return out
    led = SiteLedger.new(cfg)
    parse, ingest = TELEMETRY_ADAPTER.validate_json, led.ingest_batch
    parse_s = ingest_s = close_s = render_s = 0.0
    k = None
    clock = time.perf_counter
    # the worker's garbage collections (streams.ledger's main): with CPython's automatic
    # full collections, a version 1 parse (a model per entry) set them off every few
    # batches over the ledger's growing state (~8 instead of ~1-2 us per sample at 40
    # ticks of 1,000 containers)
    thresholds, full = gc.get_threshold(), FullCollections()
    full.take_over()
    try:
        for raw in msgs:
            a = clock()
            b = parse(raw)
            parse_s += clock() - a
            if stop == "parse":
                continue
            a = clock()
            t_us = to_us(b.time.timestamp())
            if b.kind == "carbon":
                why = led.ingest(b, t_us, None)
                refused = [(-1, why)] if why else []
            else:
                refused = ingest(b, t_us, None)
            ingest_s += clock() - a
            assert not refused, refused[:2]
            if stop == "close" and b.kind != "carbon" and k != t_us // 1_000_000:
                # a new tick: close the ones before it, as event mode
                k = t_us // 1_000_000
                a = clock()
                outs, _ = led.close(t_us)
                r = clock()
                for o in outs:
                    o.value  # noqa: B018  (rendered on first read, as when sent)
                render_s += clock() - r
                led.compact_history()  # as the worker after sending (view history blocks)
                full.maybe_collect()
                close_s += clock() - a
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
    out["parse_us_per_sample"] = round(1e6 * parse_s / samples, 3)
    if stop == "parse":
        return out
    intake_s = parse_s + ingest_s
    out["ingest_us_per_sample"] = round(1e6 * ingest_s / samples, 3)
    out["intake_us_per_sample"] = round(1e6 * intake_s / samples, 3)
    out["intake_samples_per_s"] = round(samples / intake_s)
    if stop == "close":
        closed = led.clock.next_close - int(t0)
        out["ticks_closed"] = closed
        out["close_ms_per_tick"] = round(1000 * close_s / max(1, closed), 1)
        out["render_ms_per_tick"] = round(1000 * render_s / max(1, closed), 1)
        out["samples_per_s_with_close"] = round(samples / (intake_s + close_s))
    return out


def run_intakes(a: argparse.Namespace, n: int) -> None:
    """The intake mode at ``n`` containers, once per ``--batch-versions``."""
    if "intake" in set(a.skip.split(",")):
        return
    print(f"intake workload: {n} containers in 10 apps of one site on nodes of "
          f"{a.per_node}, {a.ticks} ticks of 1 s, one cumulative sample per container and "
          f"tick, as node batches split under the default max_message_bytes; "
          f"{'no carbon signal' if a.no_carbon else 'a carbon intensity sample per tick'}; "
          f"stages up to {a.intake_stop}", flush=True)  # fmt: skip
    for v in [int(x) for x in a.batch_versions.split(",") if x]:
        r = run_intake(n, a.per_node, a.ticks, v, a.intake_stop, not a.no_carbon)
        print(f"node batches (version {v}), {n} containers, in process (parse, intake; "
              f"close):", json.dumps(r), flush=True)  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--containers", type=int, default=1000)
    ap.add_argument("--ticks", type=int, default=40)
    ap.add_argument("--per-tick", type=int, default=1, help="samples per container per tick")
    ap.add_argument("--latency-ticks", type=int, default=20)
    ap.add_argument(
        "--skip", default="",
        help="comma list of: kafka,mqtt,latency,intake,kafka-batch,mqtt-batch"
    )
    ap.add_argument("--batch-containers", default="1000,10000",
                    help="site sizes of the node-batch modes (comma list)")  # fmt: skip
    ap.add_argument("--per-node", type=int, default=1000, help="containers per node (batches)")
    ap.add_argument("--batch-versions", default="1,2",
                    help="batch_version(s) the intake mode compares (comma list)")  # fmt: skip
    ap.add_argument("--intake-stop", choices=INTAKE_STAGES, default="close",
                    help="the intake mode's last stage (for instruction counts)")  # fmt: skip
    ap.add_argument("--no-carbon", action="store_true",
                    help="no carbon intensity signal (every carbon figure 0: the workload "
                         "of the figures before 3 December 2026)")  # fmt: skip
    a = ap.parse_args()
    skip = set(a.skip.split(","))
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.platform()}"
    )
    brokers = {"kafka", "mqtt", "latency", "kafka-batch", "mqtt-batch"} - skip
    if not brokers:  # the intake mode only: no servers (e.g. under callgrind)
        for n in [int(x) for x in a.batch_containers.split(",") if x]:
            run_intakes(a, n)
        return
    print(
        f"workload: {a.containers} containers in 10 apps of one site, 1 s ticks, "
        f"{a.per_tick} sample(s) per container per tick, {a.ticks} ticks; "
        f"{'no carbon signal' if a.no_carbon else 'a carbon intensity sample per tick'}; "
        f"one worker"
    )
    td = tempfile.mkdtemp(prefix="bench-ledger-")
    print(f"logs: {td}")
    if True:
        d = Path(td)
        kport, mport = free_port(), free_port()
        tansu = Server(tansu_command(kport), kport, d / "tansu.log").start()
        mqtt_srv = Server(mqtt_command(mport, d / "mqtt"), mport, d / "mqtt.log").start()
        bootstrap = f"127.0.0.1:{kport}"
        servers = {name: srv.proc.pid for name, srv in (("kafka_broker", tansu),
                                                         ("mqtt_broker", mqtt_srv)) if srv.proc}
        try:
            if "kafka" not in skip:
                r = run_throughput(d, bootstrap, mport, a.containers, a.ticks, a.per_tick, False,
                                   servers=servers, carbon=not a.no_carbon)
                print("pre-filled Kafka topic -> ledger:", json.dumps(r))
            if "mqtt" not in skip:
                r = run_throughput(d, bootstrap, mport, a.containers, a.ticks, a.per_tick, True,
                                   servers=servers, carbon=not a.no_carbon)
                print("MQTT -> bridge -> Kafka -> ledger:", json.dumps(r))
            if "latency" not in skip:
                r = run_latency(d, bootstrap, mport, a.containers, a.latency_ticks)
                print("tick-close latency (real-time clock, MQTT):", json.dumps(r))
            for n in [int(x) for x in a.batch_containers.split(",") if x]:
                if "intake" not in skip:
                    run_intakes(a, n)
                for mode, via_mqtt in (("kafka-batch", False), ("mqtt-batch", True)):
                    if mode in skip:
                        continue
                    r = run_throughput(d, bootstrap, mport, n, a.ticks, 1, via_mqtt, a.per_node,
                                       servers, not a.no_carbon)
                    path = "MQTT -> bridge -> Kafka -> ledger" if via_mqtt else (
                        "pre-filled Kafka topic -> ledger")  # fmt: skip
                    print(f"node batches, {n} containers on {-(-n // a.per_node)} node(s) of "
                          f"<= {a.per_node}, {path}:", json.dumps(r))  # fmt: skip
        finally:
            mqtt_srv.stop()
            tansu.stop()


if __name__ == "__main__":
    main()
