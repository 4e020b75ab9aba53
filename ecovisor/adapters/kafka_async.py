"""The asyncio side of the Kafka adapter (aiokafka, the client Faust is built on): for
the services that already run an event loop (the ledger worker, the REST API).

``assigned_consumer`` is the async twin of ``ecovisor.adapters.kafka.assigned_consumer``:
no consumer group, every partition of the given topics assigned, positions left to the
caller (seek to the beginning, to the end, or to a stored offset).

Both builders authenticate as ``ecovisor.adapters.kafka.aiokafka_options`` says (the
``ECOVISOR_KAFKA_*`` environment; nothing set: PLAINTEXT).
"""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from ecovisor.adapters.kafka import KafkaUnavailable, aiokafka_options, checked_fetch_wait


async def assigned_consumer(
    bootstrap: str, topic_names: list[str], **options: Any
) -> tuple[AIOKafkaConsumer, list[TopicPartition]]:
    """A started consumer assigned every partition of ``topic_names``. A topic that does
    not exist raises KafkaUnavailable (topics are created up front; tansu does not
    auto-create them)."""
    if "fetch_max_wait_ms" in options:
        checked_fetch_wait(options["fetch_max_wait_ms"])
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        **{**aiokafka_options(), **options},
    )
    await consumer.start()
    try:
        await consumer.topics()  # fetch metadata so partitions are known
        tps: list[TopicPartition] = []
        for t in topic_names:
            parts = consumer.partitions_for_topic(t)
            if not parts:
                raise KafkaUnavailable(f"topic {t!r} does not exist (create topics up front)")
            tps.extend(TopicPartition(t, p) for p in sorted(parts))
        consumer.assign(tps)
    except BaseException:
        await consumer.stop()
        raise
    return consumer, tps


async def started_producer(bootstrap: str, **options: Any) -> AIOKafkaProducer:
    """A started producer; ``acks='all'`` unless the caller says otherwise."""
    options.setdefault("acks", "all")
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, **{**aiokafka_options(), **options})
    await producer.start()
    return producer
