"""MQTT -> Kafka bridge, at-least-once.

``python -m streams.bridge --config FILE`` subscribes (QoS 1, persistent session, stable
client id ``ecovisor-bridge-<site>``) to ``ecovisor/+/telemetry/#``, validates each message
against the contract (ecovisor.contract.telemetry) and the site (its id, apps, containers
and template replicas, nodes) and produces it to ``ecovisor.telemetry`` keyed by site id;
anything too large (checked before parsing), malformed, invalid, for another site or for
an app, container or node the site does not have goes to ``ecovisor.deadletter`` with the
reason and the raw payload (truncated). Each MQTT message is acknowledged (manual PUBACK)
only after Kafka confirmed its write (acks=all), strictly in arrival order; so a bridge
killed at any point loses nothing the MQTT broker accepted: unacknowledged messages are
redelivered to the persistent session on restart (duplicates are possible; the ledger
ignores them by (source, seq)).

Every message is acknowledged in the end: the broker holds back new deliveries while its
in-flight window (unacknowledged messages) is full, so one message never acknowledged
would stall every source. A write Kafka refuses for the message itself (too large, an
invalid record) is dead-lettered instead and acknowledged; a write that fails because
Kafka is unavailable is sent again (the head blocks later acks until it succeeds), so
order of acks never breaks.

Throughput: Kafka sends are asynchronous and batched (linger); a deque of pending
messages is acknowledged from its head as confirmations arrive.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from kafka import errors as kafka_errors
from pydantic import ValidationError
from tenacity import (
    RetryCallState,
    RetryError,
    Retrying,
    retry_if_exception_type,
    wait_exponential,
)

from ecovisor.adapters.kafka import COMPRESSION_TYPE, kafka_python_options
from ecovisor.contract import operator_messages, telemetry, topics
from ecovisor.contract.bus_access import (
    BRIDGE,
    bus_authenticated,
    mqtt_credentials,
    telemetry_source,
)
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import ConfigError, config_path, load_config, one_line
from ecovisor.contract.environment import kafka_bootstrap, mqtt_endpoint

log = logging.getLogger("ecovisor.bridge")

# Raw payload kept in the dead letter of an oversized message: enough to tell what it
# was, small enough that the dead letter itself always fits.
OVERSIZED_RAW_KEEP = 4_096
# Kafka refuses these for the message itself: sending it again cannot help.
_REFUSED: tuple[type[BaseException], ...] = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidRecordError,
    kafka_errors.CorruptRecordError,
    kafka_errors.InvalidTimestampError,
    TypeError,
    ValueError,
)


@dataclass(frozen=True)
class Scope:
    """What the bridge accepts telemetry for: its site, the largest payload, and the
    site's apps, containers (configured and every template replica: ``placements``,
    the ownership rule of the ledger) and nodes; precomputed once."""

    site: str
    max_bytes: int
    owners: dict[str, str] = field(default_factory=dict)  # container -> app
    placed: dict[str, str] = field(default_factory=dict)  # container -> its node
    apps: frozenset[str] = frozenset()
    nodes: frozenset[str] = frozenset()
    # on an authenticated broker: the one source each message may come from (the
    # broker's ACL lets a principal publish only its own sources' topics)
    source_of: Callable[[Any], str | None] | None = None

    @classmethod
    def of(cls, cfg: EcovisorConfig) -> Scope:
        return cls(
            site=cfg.site.id,
            max_bytes=cfg.site.limits.max_message_bytes,
            owners={c: p.app for c, p in cfg.placements().items()},
            placed={c: p.node for c, p in cfg.placements().items()},
            apps=frozenset(a.id for a in cfg.apps),
            nodes=frozenset(n.id for n in cfg.site.nodes),
            source_of=partial(telemetry_source, cfg) if bus_authenticated(cfg) else None,
        )

    def foreign_entries(self, b: telemetry.NodeBatch) -> list[tuple[int, str]]:
        """(index, reason) of each entry of a node batch this site does not take: a
        container it does not have, of another app, or not placed on the batch's node (a
        node's collector reports the containers placed on its node only: the placement
        the broker's ACLs give each node's principal, ``bus_access.mqtt_principals``)."""
        bad = []
        owners, placed, node = self.owners, self.placed, b.node
        for i, (app, c, _, _) in enumerate(b.rows()):
            owner = owners.get(c)
            if owner is None:
                why = (f"container {c!r} is not in site {self.site!r} (neither "
                       f"configured nor a template replica)")  # fmt: skip
            elif owner != app:
                why = f"container {c!r} belongs to app {owner!r}, not {app!r}"
            elif placed.get(c) != node:
                why = (f"container {c!r} is placed on node "
                       f"{placed.get(c)!r}, not {node!r}: a node reports its own "
                       f"containers only")  # fmt: skip
            else:
                continue
            bad.append((i, why))
        return bad

    def foreign(self, msg: Any) -> str | None:
        """Why a valid message is not for this site, else None."""
        if msg.site != self.site:
            return f"telemetry for site {msg.site!r}; this bridge serves site {self.site!r}"
        if isinstance(msg, telemetry.ContainerTelemetry):
            owner = self.owners.get(msg.container)
            if owner is None:
                return (
                    f"container {msg.container!r} is not in site {self.site!r} (neither "
                    f"configured nor a template replica)"
                )
            if owner != msg.app:
                return f"container {msg.container!r} belongs to app {owner!r}, not {msg.app!r}"
        app = getattr(msg, "app", None)
        if app is not None and app not in self.apps:
            return f"app {app!r} is not in site {self.site!r}"
        node = getattr(msg, "node", None)
        if node is not None and node not in self.nodes:
            return f"node {node!r} is not in site {self.site!r}"
        want = self.source_of(msg) if self.source_of is not None else None
        if want is not None and msg.source != want:
            return (
                f"{msg.kind} telemetry of this subject comes from source {want!r} only, "
                f"not {msg.source!r} (docs/contract.md#sources)"
            )
        return None


@dataclass(frozen=True)
class Routed:
    """Where one MQTT message goes in Kafka."""

    topic: str
    key: bytes | None
    value: bytes
    valid: bool
    reason: str | None = None
    origin: str = ""
    # dead letters of a node batch's entries, sent (and confirmed) before the batch
    extra: tuple[Routed, ...] = ()


def route(scope: Scope, mqtt_topic: str, payload: bytes) -> Routed:
    """Validate one MQTT message; pure (the dead letter's time is the only clock read)."""
    origin = f"mqtt:{mqtt_topic}"
    parsed = topics.parse_mqtt_telemetry(mqtt_topic)

    def dead(
        reason: str, site: str | None, keep: int = operator_messages.DEAD_LETTER_RAW_MAX
    ) -> Routed:
        dl = operator_messages.dead_letter(origin, reason, payload, keep)
        value = dl.model_dump_json().encode()
        key = site.encode() if site else None
        return Routed(topics.DEADLETTER, key, value, False, reason, origin)

    site = parsed[0] if parsed is not None else None
    if len(payload) > scope.max_bytes:  # before parsing: a large payload costs nothing more
        return dead(
            f"payload of {len(payload)} bytes is larger than site.limits.max_message_bytes "
            f"({scope.max_bytes})",
            site,
            OVERSIZED_RAW_KEEP,
        )
    if parsed is None:
        return dead(
            "topic is not ecovisor/<site>/telemetry/<kind>/<source> with a known kind", None
        )
    site, kind, source = parsed
    try:
        msg, bad = telemetry.parse_telemetry_entries(payload)
    except ValidationError as e:
        return dead(f"invalid telemetry: {operator_messages.describe_validation_error(e)}", site)
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
    why = scope.foreign(msg)
    if why is not None:
        return dead(why, site)
    extra: tuple[Routed, ...] = ()
    if isinstance(msg, telemetry.NodeBatch):
        msg, extra = _batch_entries(scope, msg, bad, origin, site)
    value = msg.model_dump_json().encode()
    return Routed(topics.TELEMETRY, site.encode(), value, True, None, origin, extra)


def _batch_entries(
    scope: Scope,
    b: telemetry.NodeBatch,
    bad: list[telemetry.BadEntry],
    origin: str,
    site: str,
) -> tuple[telemetry.NodeBatchColumnsTelemetry, tuple[Routed, ...]]:
    """A node batch without the entries the site does not take, in ``batch_version`` 2
    whatever version it came in (the ledger, its one reader, parses that form in a
    quarter of the instructions), and one dead letter for those entries (invalid ones:
    ``bad``, from the parse), each with its index as sent and reason."""
    foreign = scope.foreign_entries(b)
    if not bad and not foreign:
        return b.as_columns(), ()
    invalid = {i for i, _, _ in bad}  # indices as sent; the parsed batch lacks these
    sent = [i for i in range(b.n_entries + len(bad)) if i not in invalid]
    reasons = [f"entry {i}: {why}" for i, why, _ in bad]
    reasons += [f"entry {sent[i]}: {why}" for i, why in foreign]
    raw = json.dumps(
        [entry for _, _, entry in bad] + [b.entry(i).model_dump(mode="json") for i, _ in foreign]
    )
    dl = operator_messages.dead_letter(origin, f"node_batch: {len(reasons)} entries not taken: "
                                       + "; ".join(reasons), raw)  # fmt: skip
    note = Routed(topics.DEADLETTER, site.encode(), dl.model_dump_json().encode(), False,
                  dl.reason, origin)  # fmt: skip
    return b.as_columns(drop={i for i, _ in foreign}), (note,)


def refused(r: Routed, err: BaseException) -> Routed:
    """The dead letter of a message Kafka refused for itself (e.g. too large)."""
    reason = f"Kafka refused the message: {type(err).__name__}: {err}"
    dl = operator_messages.dead_letter(r.origin or r.topic, reason, r.value, OVERSIZED_RAW_KEEP)
    return Routed(topics.DEADLETTER, r.key, dl.model_dump_json().encode(), False, reason, r.origin)


class _Failed:
    """A send refused before it left (``KafkaProducer.send`` raised): a failed future,
    so the one acknowledgement path handles it."""

    is_done = True

    def __init__(self, exc: BaseException) -> None:
        self.exception = exc

    def failed(self) -> bool:
        return True


class RateLimitedLog:
    """One log line per key per ``interval_s`` (with how many were suppressed), over a
    bounded number of keys: a flood of bad messages from random topics cannot flood the
    log or grow this table."""

    def __init__(self, interval_s: float = 60.0, max_keys: int = 1_024) -> None:
        self.interval_s, self.max_keys = interval_s, max_keys
        self._last: dict[str, tuple[float, int]] = {}  # key -> (logged at, suppressed since)

    def warn(self, key: str, msg: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        last = self._last.get(key)
        if last is not None and now - last[0] < self.interval_s:
            self._last[key] = (last[0], last[1] + 1)
            return False
        if last is None and len(self._last) >= self.max_keys:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval_s}
            if len(self._last) >= self.max_keys:
                self._last.clear()
        more = f" ({last[1]} more since the last report)" if last and last[1] else ""
        log.warning("%s%s", msg, more)
        self._last[key] = (now, 0)
        return True


@dataclass
class _Pending:
    mid: int | None  # None: a batch entry's dead letter (its message is acked after it)
    gen: int  # MQTT connection generation: acks only make sense on the same connection
    routed: Routed
    future: Any


class Bridge:
    def __init__(
        self, cfg: EcovisorConfig | Scope, mqtt_host: str, mqtt_port: int, bootstrap: str
    ) -> None:
        self.scope = cfg if isinstance(cfg, Scope) else Scope.of(cfg)
        self.site, self.mqtt_host, self.mqtt_port, self.bootstrap = (
            self.scope.site,
            mqtt_host,
            mqtt_port,
            bootstrap,
        )
        self.dead_log = RateLimitedLog()
        self.client_id = f"ecovisor-bridge-{self.site}"
        self.credentials = None if isinstance(cfg, Scope) else mqtt_credentials(cfg, BRIDGE)
        # authenticated: the broker lets the bridge read its own site's telemetry only;
        # anonymous: every site's, so telemetry for another site is dead-lettered
        self.subscription = (
            topics.mqtt_site_telemetry(self.site)
            if self.credentials
            else topics.MQTT_TELEMETRY_SUBSCRIPTION
        )
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
                        # telemetry JSON compresses several times; the embedded broker
                        # keeps every record in memory (L1, docs/reliability.md)
                        compression_type=COMPRESSION_TYPE,
                        # one request in flight per connection keeps Kafka order on retries
                        max_in_flight_requests_per_connection=1,
                        request_timeout_ms=10_000,
                        delivery_timeout_ms=30_000,
                        retry_backoff_ms=200,
                        **kafka_python_options(),  # SASL when ECOVISOR_KAFKA_* say so
                    )
                    log.info("connected to Kafka at %s", self.bootstrap)

    def _send(self, r: Routed) -> Any:
        """The write's future; a send refused at once is a failed one (``_Failed``)."""
        try:
            fut = self.producer.send(r.topic, key=r.key, value=r.value)
        except Exception as e:  # too large, buffer full, ...: decided by _ack_ready
            return _Failed(e)
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
        client.subscribe(self.subscription, qos=1)

    def _on_disconnect(self, _c: Any, _u: Any, _f: Any, rc: Any, _p: Any = None) -> None:
        if not self.stop.is_set():
            log.warning("MQTT disconnected (%s); reconnecting with backoff", rc)

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        try:
            r = route(self.scope, msg.topic, msg.payload)
        except Exception as e:  # belt and braces: route() must not raise
            dl = operator_messages.dead_letter(
                f"mqtt:{msg.topic}", f"bridge error: {e}", msg.payload, OVERSIZED_RAW_KEEP
            )
            r = Routed(topics.DEADLETTER, None, dl.model_dump_json().encode(), False, str(e))
        self.counts["received"] += 1
        self.counts["forwarded" if r.valid else "dead_lettered"] += 1
        if not r.valid:
            self.dead_log.warn(msg.topic, f"dead-lettered {msg.topic}: {r.reason}")
        if msg.qos == 0:  # nothing to acknowledge; still forwarded (or its dead letter)
            for x in r.extra:
                self._send(x)
            fut = self._send(r)
            if isinstance(fut, _Failed) and isinstance(fut.exception, _REFUSED) and r.valid:
                self._send(refused(r, fut.exception))
            return
        # send outside the lock: a full producer buffer blocks here, and its sender thread
        # needs the lock to deliver the callbacks that free it. A batch's entry dead
        # letters go first, unacknowledged themselves (mid None): the message's ack
        # waits for them, in order.
        sent = [(None, x, self._send(x)) for x in r.extra] + [(msg.mid, r, self._send(r))]
        with self.cond:
            for mid, x, fut in sent:
                self.pending.append(_Pending(mid, self.gen, x, fut))
            self.cond.notify()

    def _connect_mqtt(self) -> None:
        from ecovisor.adapters.mqtt import connect_in_background, mqtt_client

        # persistent session: the broker keeps unacknowledged messages across reconnects
        c = mqtt_client(
            self.client_id,
            reconnect_min_s=1,
            reconnect_max_s=30,
            clean_session=False,
            manual_ack=True,
            credentials=self.credentials,
        )
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
        """Acknowledge the confirmed head of the queue, in order. A failed head is sent
        again after a pause (Kafka unavailable) or, when Kafka refused the message itself,
        replaced by its dead letter at once; a refused dead letter is logged and
        acknowledged: nothing blocks the queue for good."""
        ready: list[_Pending] = []
        backoff = False
        with self.cond:
            while self.pending:
                head = self.pending[0]
                if head.future is None or not head.future.is_done:
                    break
                if not head.future.failed():
                    ready.append(self.pending.popleft())
                    continue
                err = head.future.exception
                if not isinstance(err, _REFUSED):
                    self.counts["kafka_retries"] += 1
                    log.warning("Kafka write failed (%s); sending again", err)
                    head.future, backoff = None, True
                    break
                if head.routed.topic != topics.DEADLETTER:
                    self.counts["kafka_refused"] += 1
                    self.dead_log.warn(head.routed.origin, f"Kafka refused a message from "
                                       f"{head.routed.origin} ({err}); dead-lettered")  # fmt: skip
                    head.routed, head.future = refused(head.routed, err), None
                    break
                self.counts["dead_letter_refused"] += 1
                log.error("Kafka refused the dead letter of a message from %s (%s); "
                          "acknowledged without it", head.routed.origin, err)  # fmt: skip
                ready.append(self.pending.popleft())
            gen = self.gen
            head = self.pending[0] if self.pending else None
        if head is not None and head.future is None:
            if backoff:
                self.stop.wait(0.5)  # broker trouble: back off a little, then retry in order
            head.future = self._send(head.routed)
        for p in ready:
            if p.mid is None:
                continue
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
                head = self.pending[0] if self.pending else None
                if head is None or (head.future is not None and not head.future.is_done):
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
    bridge = Bridge(cfg, host, port, kafka_bootstrap(cfg))

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
