"""Every Kafka topic and MQTT topic pattern of Ecovisor, defined once.

Kafka (public): commands in, per-app notifications out, the ledger, dead letters.
Kafka (internal): bridged telemetry, actuator commands and acknowledgements, alerts.
MQTT: edge devices publish telemetry under ``ecovisor/<site>/telemetry/<kind>/<source>``
and receive control messages under ``ecovisor/<site>/control/<kind>/<device>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# --- Kafka: public -------------------------------------------------------------------
COMMANDS = "ecovisor.commands"
LEDGER = "ecovisor.ledger"
DEADLETTER = "ecovisor.deadletter"
NOTIFICATIONS_PREFIX = "ecovisor.notifications."

# --- Kafka: internal -----------------------------------------------------------------
TELEMETRY = "ecovisor.telemetry"  # every MQTT telemetry message, keyed by site id
ACTUATOR_CONTAINERS = "ecovisor.actuator.containers"  # caps, suspend/resume, scale
ACTUATOR_BATTERY = "ecovisor.actuator.battery"  # aggregate battery setpoints per site
ACTUATOR_ACKS = "ecovisor.actuator.acks"  # applied / failed
ALERTS = "ecovisor.alerts"  # site alerts for operators (battery drift, ...)
CONTAINERS = "ecovisor.containers"  # ContainerEvent: replicas added/removed (scaling)

_APP_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def notifications(app: str) -> str:
    """Per-application notification topic (one per app so Kafka ACLs can isolate)."""
    if not _APP_ID.match(app):
        raise ValueError(f"invalid app id {app!r}: use [a-z0-9][a-z0-9_-]*, max 63 chars")
    return NOTIFICATIONS_PREFIX + app


# --- Kafka: partitions (docs/ledger.md, Partitioning) ---------------------------------
# Keyed by site and read by a ledger group: created with the group's partition count, so
# a site's messages are on partition site_partition(site, N) of each (co-partitioned with
# the group's table changelogs). Every other topic is created with one partition.
KEYED_BY_SITE = (TELEMETRY, COMMANDS, ACTUATOR_ACKS)
MAX_PARTITIONS = 1024  # the most a ledger group has (the most workers that can share it)


def check_partitions(partitions: int) -> int:
    """``partitions`` if it is a ledger group's partition count (1..MAX_PARTITIONS), else
    ValueError with the reason in one line."""
    if not 1 <= partitions <= MAX_PARTITIONS:
        raise ValueError(f"partitions must be in 1..{MAX_PARTITIONS}, got {partitions}")
    return partitions


def topic_partitions(
    names: Iterable[str], partitions: int, keyed: Iterable[str] = KEYED_BY_SITE
) -> dict[str, int]:
    """Each of ``names`` -> the partition count it is created with for a ledger group of
    ``partitions`` partitions: that count for a topic keyed by site (``keyed``: the
    site-keyed topics; the ledger adds its tables' changelogs), 1 for any other. The one
    rule the ledger (``prepare_topics``) and ``ecovisor topics`` create topics by."""
    n = check_partitions(partitions)
    by_site = set(keyed)
    return {t: n if t in by_site else 1 for t in names}


def site_partition(site: str, partitions: int) -> int:
    """The partition of ``site`` in a topic of ``partitions`` partitions keyed by site
    (telemetry, commands, acks, the ledger's tables): Kafka's default partitioner
    (murmur2 of the key), the one every producer here uses, so a site's messages and
    state meet on one partition number everywhere (docs/ledger.md, Partitioning)."""
    if partitions <= 1:
        return 0
    return (murmur2(site.encode()) & 0x7FFFFFFF) % partitions


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (the Java client's ``Utils.murmur2``), unsigned 32-bit.
    Here rather than imported from a Kafka client so the contract stays free of one
    (services that never touch Kafka import this module); a unit test checks it against
    aiokafka's partitioner."""
    m, r, mask = 0x5BD1E995, 24, 0xFFFFFFFF
    length = len(data)
    h = (0x9747B28C ^ length) & mask
    n4 = length // 4
    for i in range(n4):
        k = int.from_bytes(data[4 * i : 4 * i + 4], "little")
        k = (k * m) & mask
        k ^= k >> r
        k = (k * m) & mask
        h = (h * m) & mask
        h ^= k
    rest = length % 4
    tail = data[4 * n4 :]
    if rest == 3:
        h ^= tail[2] << 16
    if rest >= 2:
        h ^= tail[1] << 8
    if rest >= 1:
        h ^= tail[0]
        h = (h * m) & mask
    h ^= h >> 13
    h = (h * m) & mask
    h ^= h >> 15
    return h


def static_topics() -> list[str]:
    """Topics that exist independently of the configured applications."""
    return [
        COMMANDS,
        LEDGER,
        DEADLETTER,
        TELEMETRY,
        ACTUATOR_CONTAINERS,
        ACTUATOR_BATTERY,
        ACTUATOR_ACKS,
        ALERTS,
        CONTAINERS,
    ]


def all_topics(apps: list[str]) -> list[str]:
    """Every topic to create up front for a set of applications."""
    return static_topics() + [notifications(a) for a in sorted(apps)]


# --- MQTT ----------------------------------------------------------------------------
MQTT_ROOT = "ecovisor"
MQTT_TELEMETRY_SUBSCRIPTION = f"{MQTT_ROOT}/+/telemetry/#"
TELEMETRY_KINDS = (
    "solar", "carbon", "battery", "node", "container", "node_batch", "app_metrics"
)  # fmt: skip


def mqtt_site_telemetry(site: str) -> str:
    """The filter of one site's telemetry (what the site's bridge may read)."""
    return f"{MQTT_ROOT}/{site}/telemetry/#"


def mqtt_telemetry(site: str, kind: str, source: str) -> str:
    if kind not in TELEMETRY_KINDS:
        raise ValueError(f"unknown telemetry kind {kind!r}; expected one of {TELEMETRY_KINDS}")
    return f"{MQTT_ROOT}/{site}/telemetry/{kind}/{source}"


def mqtt_battery_control(site: str, device: str) -> str:
    return f"{MQTT_ROOT}/{site}/control/battery/{device}"


def parse_mqtt_telemetry(topic: str) -> tuple[str, str, str] | None:
    """(site, kind, source) of a telemetry topic, or None if it is not one."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[0] != MQTT_ROOT or parts[2] != "telemetry":
        return None
    if parts[3] not in TELEMETRY_KINDS:
        return None
    return parts[1], parts[3], parts[4]
