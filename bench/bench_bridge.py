"""Throughput of the MQTT->Kafka bridge (at-least-once: manual PUBACK after acks=all).

Workload: N container-telemetry messages published at QoS 1 as fast as one paho client
can, through mosquitto, the bridge process and tansu; timed from the first publish until
the last message is readable in ecovisor.telemetry. Prints messages/s and the machine.
``BENCH_BRIDGE_BATCH=B`` (B > 0): N node batches of B containers each instead, every
container placed on the batch's node, in ``batch_version`` ``BENCH_BRIDGE_BATCH_VERSION``
(default 2, the collector's; 1: the list of objects); prints container samples/s too.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import paho.mqtt.client as mqtt
from kafka import KafkaConsumer, TopicPartition

from ecovisor.adapters.kafka import create_topics
from ecovisor.contract import telemetry, topics
from ecovisor.embedded.servers import Server, free_port, mqtt_command, tansu_command

N = int(os.environ.get("BENCH_BRIDGE_N", "20000"))
BATCH = int(os.environ.get("BENCH_BRIDGE_BATCH", "0"))  # containers per node batch; 0: none
VERSION = int(os.environ.get("BENCH_BRIDGE_BATCH_VERSION", "2"))  # of the node batches


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-bridge-"))
    kport, mport = free_port(), free_port()
    kafka = Server(tansu_command(kport), kport, tmp / "tansu.log").start()
    broker = Server(mqtt_command(mport, tmp / "mqtt"), mport, tmp / "mqtt.log").start()
    boot = f"127.0.0.1:{kport}"
    bridge = None
    try:
        create_topics(boot, topics.static_topics())
        cfg = tmp / "site.yaml"
        conts = [f"web-{i + 1}" for i in range(max(1, BATCH))]
        cfg.write_text(  # the bridge forwards only the site's own containers' telemetry
            "site: {id: bench, nodes: [{id: n1, cores: 2}]}\n"
            "apps: [{id: web, token: bench-token, containers: ["
            + ", ".join(f"{{id: {c}, node: n1, backend: {{type: process, cgroup: b/{c}}}}}"
                        for c in conts)  # fmt: skip
            + "]}]\n"
            f"stack: {{kafka_bootstrap: '{boot}', mqtt_port: {mport}}}\n"
        )
        env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
        bridge = subprocess.Popen(
            [sys.executable, "-m", "streams.bridge", "--config", str(cfg)],
            stdout=(tmp / "bridge.log").open("wb"), stderr=subprocess.STDOUT, env=env,
        )  # fmt: skip
        time.sleep(1.5)  # let it connect and subscribe
        cons = KafkaConsumer(bootstrap_servers=boot, enable_auto_commit=False)
        tp = TopicPartition(topics.TELEMETRY, 0)
        cons.assign([tp])
        cons.seek_to_end(tp)
        cons.position(tp)
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-pub")
        pub.max_inflight_messages_set(1000)
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", mport)
        pub.loop_start()
        t = datetime(2024, 1, 1, tzinfo=UTC)
        if BATCH:
            model = telemetry.NODE_BATCH_MODELS[VERSION]
            payloads = [
                model(site="bench", time=t, source="batch-n1", seq=i, node="n1",
                      containers=model.containers_of(("web", c, i, i) for c in conts)).to_json()
                for i in range(N)
            ]  # fmt: skip
            topic = topics.mqtt_telemetry("bench", "node_batch", "batch-n1")
            if len(payloads[0]) > 65_536:  # the default site.limits.max_message_bytes
                raise SystemExit(f"a batch of {BATCH} is {len(payloads[0])} B, over the "
                                 "bridge's 65,536 B limit: use fewer containers")  # fmt: skip
        else:
            payloads = [
                telemetry.ContainerTelemetry(site="bench", time=t, source="meter", seq=i,
                                             app="web", container="web-1", cpu_s=i,
                                             energy_j=i).to_json()
                for i in range(N)
            ]  # fmt: skip
            topic = topics.mqtt_telemetry("bench", "container", "meter")
        t0 = time.perf_counter()
        infos = [pub.publish(topic, p, qos=1) for p in payloads]
        got = 0
        deadline = time.monotonic() + 300
        while got < N and time.monotonic() < deadline:
            got += sum(len(recs) for recs in cons.poll(timeout_ms=200).values())
        elapsed = time.perf_counter() - t0
        accepted = sum(i.is_published() for i in infos)
        pub.loop_stop()
        cons.close()
        mq = Path(broker.cmd[0]).name
        print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python "
              f"{platform.python_version()}; {mq}, tansu, bridge, client on loopback")  # fmt: skip
        what = (f"node batch (version {VERSION}) of {BATCH} containers" if BATCH
                else "ContainerTelemetry")  # fmt: skip
        print(f"workload: {N} {what} messages (~{len(payloads[0])} B), QoS 1, "
              "one publisher, bridge with manual PUBACK after Kafka acks=all")  # fmt: skip
        print(f"bridge throughput: {got / elapsed:,.0f} messages/s "
              f"({got} in Kafka in {elapsed:.2f} s; broker accepted {accepted})")  # fmt: skip
        if BATCH:
            print(f"  = {got * BATCH / elapsed:,.0f} container samples/s")
        return 0 if got >= N else 1
    finally:
        if bridge is not None:
            bridge.terminate()
            bridge.wait(10)
        broker.stop()
        kafka.stop()


if __name__ == "__main__":
    sys.exit(main())
