"""MQTT -> Kafka bridge, at-least-once.

``python -m streams.bridge --config FILE`` subscribes (QoS 1, persistent session, stable
client id ``ecovisor-bridge-<site>``) to ``ecovisor/+/telemetry/#``, validates each message
against the contract (ecovisor.contract.schemas) and produces it to ``ecovisor.telemetry`` keyed by
site id; anything malformed or invalid goes to ``ecovisor.deadletter`` with the reason and
the raw payload. Each MQTT message is acknowledged (manual PUBACK) only after Kafka
confirmed its write (acks=all), strictly in arrival order; so a bridge killed at any point
loses nothing the MQTT broker accepted: unacknowledged messages are redelivered to the
persistent session on restart (duplicates are possible; the ledger ignores them by
(source, seq)).

Throughput: Kafka sends are asynchronous and batched (linger); a deque of pending
messages is acknowledged from its head as confirmations arrive. A failed write is sent
again (the head blocks later acks until it succeeds), so order of acks never breaks.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import logging
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    wait_exponential,
)

from ecovisor.contract import schemas, topics
from ecovisor.contract.config import (
    ConfigError,
    config_path,
    kafka_bootstrap,
    load_config,
    mqtt_endpoint,
    one_line,
)

log = logging.getLogger("ecovisor.bridge")


@dataclass(frozen=True)
class Routed:
    """Where one MQTT message goes in Kafka."""

    topic: str
    key: bytes | None
    value: bytes
    valid: bool
    reason: str | None = None


def route(mqtt_topic: str, payload: bytes) -> Routed:
    """Validate one MQTT message; pure (the dead letter's time is the only clock read)."""
    origin = f"mqtt:{mqtt_topic}"
    parsed = topics.parse_mqtt_telemetry(mqtt_topic)

    def dead(reason: str, site: str | None) -> Routed:
        dl = schemas.dead_letter(origin, reason, payload)
        value = dl.model_dump_json().encode()
        return Routed(topics.DEADLETTER, site.encode() if site else None, value, False, reason)

    if parsed is None:
        return dead(
            "topic is not ecovisor/<site>/telemetry/<kind>/<source> with a known kind", None
        )
    site, kind, source = parsed
    try:
        msg = schemas.parse_telemetry(payload)
    except ValidationError as e:
        return dead(f"invalid telemetry: {schemas.describe_validation_error(e)}", site)
    except Exception as e:  # never crash on input, whatever it is
        return dead(f"unreadable payload: {type(e).__name__}: {e}", site)
    mismatch = [
        f"{name} {got!r} != topic's {want!r}"
        for name, got, want in (
            ("site", msg.site, site),
            ("kind", msg.kind, kind),
            ("source", msg.source, source),
        )  # fmt: skip
        if got != want
    ]
    if mismatch:
        return dead("payload does not match its topic: " + "; ".join(mismatch), site)
    return Routed(topics.TELEMETRY, site.encode(), msg.model_dump_json().encode(), True)


@dataclass
class _Pending:
    mid: int
    gen: int  # MQTT connection generation: acks only make sense on the same connection
    routed: Routed
    future: Any


class Bridge:
    def __init__(self, site: str, mqtt_host: str, mqtt_port: int, bootstrap: str) -> None:
        self.site, self.mqtt_host, self.mqtt_port, self.bootstrap = (
            site,
            mqtt_host,
            mqtt_port,
            bootstrap,
        )
        self.client_id = f"ecovisor-bridge-{site}"
        self.pending: collections.deque[_Pending] = collections.deque()
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.gen = 0
        self.counts = collections.Counter[str]()
        self.producer: Any = None
        self.client: Any = None

    # --- Kafka --------------------------------------------------------------------
    def _connect_kafka(self) -> None:
        """The producer, retried with backoff (0.5 s doubling up to 15 s) until Kafka
        answers or the bridge is stopped (then ``self.producer`` stays None)."""
        from kafka import KafkaProducer
        from kafka.errors import KafkaError

        def retrying_in(rs: RetryCallState) -> None:
            err = rs.outcome.exception() if rs.outcome else None
            delay = rs.next_action.sleep if rs.next_action else 0.0
            log.warning("Kafka at %s not reachable (%s); retrying in %.1f s",
                        self.bootstrap, err, delay)  # fmt: skip

        retrying = Retrying(
            retry=retry_if_exception_type(KafkaError),
            wait=wait_exponential(multiplier=0.5, max=15.0),
            stop=lambda _rs: self.stop.is_set(),
            sleep=self.stop.wait,  # a stop ends the wait at once
            before_sleep=retrying_in,
        )
        with contextlib.suppress(RetryError):  # stopped before Kafka answered
            for attempt in retrying:
                with attempt:
                    if self.stop.is_set():
                        return
                    self.producer = KafkaProducer(
                        bootstrap_servers=self.bootstrap,
                        client_id=self.client_id,
                        acks="all",
                        linger_ms=5,
                        batch_size=256 * 1024,
                        # one request in flight per connection keeps Kafka order on retries
                        max_in_flight_requests_per_connection=1,
                        request_timeout_ms=10_000,
                        delivery_timeout_ms=30_000,
                        retry_backoff_ms=200,
                    )
                    log.info("connected to Kafka at %s", self.bootstrap)

    def _send(self, r: Routed) -> Any:
        fut = self.producer.send(r.topic, key=r.key, value=r.value)
        fut.add_both(self._wake)
        return fut

    def _wake(self, _result: Any) -> None:
        with self.cond:
            self.cond.notify()

    # --- MQTT ---------------------------------------------------------------------
    def _on_connect(self, client: Any, _u: Any, flags: Any, rc: Any, _p: Any = None) -> None:
        if rc.is_failure:
            log.warning("MQTT connect refused: %s", rc)
            return
        with self.cond:
            self.gen += 1
        log.info("MQTT connected to %s:%d (session present: %s)", self.mqtt_host,
                 self.mqtt_port, getattr(flags, "session_present", "?"))  # fmt: skip
        client.subscribe(topics.MQTT_TELEMETRY_SUBSCRIPTION, qos=1)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if not self.stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting with backoff", rc)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            r = route(msg.topic, msg.payload)
        except Exception as e:  # belt and braces: route() must not raise
            dl = schemas.dead_letter(f"mqtt:{msg.topic}", f"bridge error: {e}", msg.payload)
            r = Routed(topics.DEADLETTER, None, dl.model_dump_json().encode(), False, str(e))
        self.counts["received"] += 1
        self.counts["forwarded" if r.valid else "dead_lettered"] += 1
        if msg.qos == 0:  # nothing to acknowledge; still forwarded
            self._send(r)
            return
        # send outside the lock: a full producer buffer blocks here, and its sender thread
        # needs the lock to deliver the callbacks that free it
        fut = self._send(r)
        with self.cond:
            self.pending.append(_Pending(msg.mid, self.gen, r, fut))
            self.cond.notify()

    def _connect_mqtt(self) -> None:
        from ecovisor.adapters.mqtt import connect_in_background, mqtt_client

        # persistent session: the broker keeps unacknowledged messages across reconnects
        c = mqtt_client(self.client_id, reconnect_min_s=1, reconnect_max_s=30,
                        clean_session=False, manual_ack=True)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        # an exception in a callback must not kill the network thread; the message stays
        # unacknowledged and the broker redelivers it
        c.suppress_exceptions = True
        connect_in_background(c, self.mqtt_host, self.mqtt_port, keepalive_s=30)
        self.client = c

    # --- acknowledgements ---------------------------------------------------------
    def _ack_ready(self) -> None:
        """Acknowledge the confirmed head of the queue, in order; resend a failed head."""
        ready: list[_Pending] = []
        with self.cond:
            while self.pending:
                head = self.pending[0]
                if not head.future.is_done:
                    break
                if head.future.failed():
                    self.counts["kafka_retries"] += 1
                    log.warning("Kafka write failed (%s); sending again", head.future.exception)
                    head.future = None
                    break
                ready.append(self.pending.popleft())
            gen = self.gen
            head = self.pending[0] if self.pending else None
        if head is not None and head.future is None:
            self.stop.wait(0.5)  # broker trouble: back off a little, then retry in order
            head.future = self._send(head.routed)
        for p in ready:
            if p.gen == gen:
                self.client.ack(p.mid, 1)
                self.counts["acked"] += 1
            # else: the connection changed; the broker redelivers it to the session

    def run(self) -> None:
        self._connect_kafka()
        if self.stop.is_set():
            return
        self._connect_mqtt()
        last_log = time.monotonic()
        logged: dict[str, int] = {}
        while not self.stop.is_set():
            with self.cond:
                if not self.pending or not self.pending[0].future.is_done:
                    self.cond.wait(0.5)
            self._ack_ready()
            if time.monotonic() - last_log > 10:
                last_log = time.monotonic()
                if dict(self.counts) != logged:
                    logged = dict(self.counts)
                    log.info("counts %s pending %d", logged, len(self.pending))
        self.close()

    def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            self.client.loop_stop()
        if self.producer is not None:
            self.producer.flush(10)
            self.producer.close(5)
        log.info("stopped; counts %s (unacknowledged messages are redelivered on restart)",
                 dict(self.counts))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m streams.bridge", description=__doc__)
    ap.add_argument("--config", help="site configuration (default: $ECOVISOR_CONFIG)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    logging.getLogger("kafka").setLevel(logging.WARNING)
    try:
        cfg = load_config(config_path(args.config))
    except ConfigError as e:
        print(f"streams.bridge: {one_line(e)}", file=sys.stderr)
        return 2
    host, port = mqtt_endpoint(cfg)
    bridge = Bridge(cfg.site.id, host, port, kafka_bootstrap(cfg))

    def stop(_s: int, _f: object) -> None:
        bridge.stop.set()
        with bridge.cond:
            bridge.cond.notify()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    bridge.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
