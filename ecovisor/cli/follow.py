"""Following a topic from the command line (``tail``, ``cmd --wait``): a consumer of the
Kafka adapter assigned every partition (no consumer group: they fail on the embedded
broker, and a CLI must never disturb other readers), and its records as they come."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from ecovisor.adapters.kafka import KafkaUnavailable, assigned_consumer
from ecovisor.cli.options import KAFKA_TIMEOUT_S, fail

if TYPE_CHECKING:
    from kafka import KafkaConsumer

CLIENT_ID = "ecovisor-cli"


def open_topic(bootstrap: str, topic: str, from_beginning: bool) -> KafkaConsumer:
    """A consumer of every partition of ``topic``, at its beginning or at its current end;
    an absent broker or topic fails with one line."""
    try:
        cons, parts = assigned_consumer(bootstrap, topic, CLIENT_ID, timeout=KAFKA_TIMEOUT_S)
    except KafkaUnavailable as e:
        raise fail(str(e)) from None
    if from_beginning:
        cons.seek_to_beginning(*parts)
    else:
        cons.seek_to_end(*parts)
        for tp in parts:  # resolve the end offset now, so nothing published later is missed
            cons.position(tp)
    return cons


def records(
    cons: KafkaConsumer, idle_timeout: float | None = None, until: float | None = None
) -> Iterator[Any]:
    """Records as they arrive; stops after ``idle_timeout`` s without one, or at the
    monotonic time ``until``."""
    last = time.monotonic()
    while until is None or time.monotonic() < until:
        got = False
        for recs in cons.poll(timeout_ms=300).values():
            for r in recs:
                got = True
                yield r
        if got:
            last = time.monotonic()
        elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
            return
