"""Shared MQTT publisher of every edge collector.

It stamps each telemetry message with the event time, the source id and a per-source
sequence number, publishes it with QoS 1 under ``ecovisor/<site>/telemetry/<kind>/<source>``
and survives broker loss: unacknowledged messages stay in paho's outgoing queue (bounded
by ``buffer_max``) and are re-sent after reconnecting (paho's own reconnect backoff, set
in ``mqtt_client``). A message that does not fit in the buffer is dropped and counted; the
counts are logged periodically and on close. Re-sent messages can arrive twice; consumers
ignore duplicates by (source, seq).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from paho.mqtt.enums import MQTTErrorCode

from ecovisor.adapters.mqtt import (
    RECONNECT_MAX_S,
    RECONNECT_MIN_S,
    connect_in_background,
    mqtt_client,
)
from ecovisor.contract import topics
from ecovisor.contract.envelope import utcnow
from ecovisor.contract.telemetry import Telemetry

log = logging.getLogger("ecovisor.collectors.publisher")


@dataclass
class PublisherStats:
    published: int = 0  # accepted into the buffer
    acked: int = 0  # PUBACK received from the broker
    dropped: int = 0  # rejected because the buffer was full
    connects: int = 0
    disconnects: int = 0

    @property
    def pending(self) -> int:
        return self.published - self.acked


class Publisher:
    """QoS 1 telemetry publisher with a bounded in-memory buffer (thread-safe)."""

    def __init__(
        self,
        site: str,
        host: str,
        port: int,
        *,
        client_id: str,
        buffer_max: int = 10_000,
        status_interval_s: float = 60.0,
        reconnect_min_s: float = RECONNECT_MIN_S,
        reconnect_max_s: float = RECONNECT_MAX_S,
        clock: Callable[[], float] = time.monotonic,
        seq_start: int | None = None,
        credentials: tuple[str, str] | None = None,
    ) -> None:
        if buffer_max < 1:
            raise ValueError("buffer_max must be >= 1")
        self.site, self.host, self.port = site, host, port
        self.buffer_max = buffer_max
        self.status_interval_s = status_interval_s
        self.stats = PublisherStats()
        self._clock = clock
        self._last_status = clock()
        # Sequence numbers start at the process start time in ms, so a restarted collector
        # never reuses a (source, seq) pair that consumers would drop as a duplicate.
        self._seq_start = int(time.time() * 1000) if seq_start is None else seq_start
        self._seq: dict[str, int] = {}
        self._lock = threading.Lock()
        # guards stats; notified on every PUBACK so close() can wait for the last one
        self._stats_lock = threading.Condition()
        self._connected = threading.Event()
        # A stable client id lets the broker recognise the device across restarts.
        c = mqtt_client(client_id, reconnect_min_s=reconnect_min_s,
                        reconnect_max_s=reconnect_max_s, credentials=credentials)  # fmt: skip
        # The whole buffer may be in flight at once: a reconnect re-sends all of it.
        c.max_queued_messages_set(buffer_max)
        c.max_inflight_messages_set(min(buffer_max, 1000))
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_publish = self._on_publish
        self._client = c

    # --- lifecycle -------------------------------------------------------------------
    def start(self, wait_s: float = 0.0) -> Publisher:
        """Connect in the background (retrying with backoff); optionally wait for it."""
        connect_in_background(self._client, self.host, self.port)
        if wait_s > 0:
            self._connected.wait(wait_s)
        return self

    def close(self, flush_s: float = 2.0) -> None:
        """Give pending messages up to ``flush_s`` to be acknowledged, then disconnect."""
        with self._stats_lock:
            self._stats_lock.wait_for(lambda: self.stats.pending <= 0, timeout=flush_s)
        self.report(final=True)
        self._client.disconnect()
        self._client.loop_stop()

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        return self._connected.wait(timeout)

    # --- publishing ------------------------------------------------------------------
    def next_seq(self, source: str) -> int:
        with self._lock:
            seq = self._seq.get(source, self._seq_start)
            self._seq[source] = seq + 1
            return seq

    def publish(
        self,
        model: type[Telemetry],
        source: str,
        *,
        time: datetime | None = None,
        **fields: Any,
    ) -> Telemetry | None:
        """Build, stamp and publish one telemetry message. Returns the message, or None
        when the buffer was full and it was dropped (counted in ``stats.dropped``)."""
        msg = model(
            site=self.site,
            source=source,
            seq=self.next_seq(source),
            time=time or utcnow(),
            **fields,
        )
        kind = model.model_fields["kind"].default
        ok = self.publish_raw(topics.mqtt_telemetry(self.site, kind, source), msg.to_json())
        return msg if ok else None

    def publish_raw(self, topic: str, payload: bytes) -> bool:
        # Never hold our lock inside paho: its network thread calls _on_publish while
        # holding paho's own queue lock.
        info = self._client.publish(topic, payload, qos=1)
        with self._stats_lock:
            if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
                self.stats.dropped += 1
                ok = False
            else:  # success or NO_CONN: queued in paho, sent after reconnecting
                self.stats.published += 1
                ok = True
        self.maybe_report()
        return ok

    def maybe_report(self) -> None:
        now = self._clock()
        if now - self._last_status >= self.status_interval_s:
            self._last_status = now
            self.report()

    def report(self, final: bool = False) -> None:
        s = self.stats
        level = logging.WARNING if s.dropped else logging.INFO
        log.log(
            level,
            "mqtt %s:%d %s: published=%d acked=%d pending=%d dropped=%d (buffer %d)%s",
            self.host,
            self.port,
            "connected" if self.connected else "DISCONNECTED",
            s.published,
            s.acked,
            s.pending,
            s.dropped,
            self.buffer_max,
            " [final]" if final else "",
        )

    # --- paho callbacks (network thread) ---------------------------------------------
    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if not rc.is_failure:
            self.stats.connects += 1
            self._connected.set()
            log.info("connected to mqtt %s:%d", self.host, self.port)

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        if self._connected.is_set():
            self.stats.disconnects += 1
            log.warning("mqtt %s:%d lost (%s); buffering", self.host, self.port, rc)
        self._connected.clear()

    def _on_publish(self, client: Any, userdata: Any, mid: int, rc: Any, props: Any) -> None:
        with self._stats_lock:
            self.stats.acked += 1
            self._stats_lock.notify_all()


def client_id(site: str, collector: str, source: str) -> str:
    """Stable MQTT client id of one collector process."""
    return f"ecovisor-{site}-{collector}-{source}"[:128]
