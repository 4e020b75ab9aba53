"""L1: the high-volume topics get bounds when they are created. ``create_topics`` gives
telemetry, dead letters, alerts, commands and every notification stream a retention
(time and size), Faust's table changelogs compaction, and leaves the ledger (the
accounting record) and the actuator topics (replayed to restore setpoints) unbounded.
The broker is replaced by a recording admin client: tansu 0.6 accepts these configs but
neither reports nor enforces them (docs/reliability.md)."""

from __future__ import annotations

from typing import Any

import kafka.admin
import pytest

from ecovisor.adapters import kafka as adapter
from ecovisor.contract import topics


class RecordingAdmin:
    created: list[Any] = []

    def __init__(self, **_kw: Any) -> None:
        pass

    def list_topics(self) -> list[str]:
        return []

    def create_topics(self, new: list[Any]) -> None:
        RecordingAdmin.created.extend(new)

    def close(self) -> None:
        pass


def test_create_topics_sets_retention_and_compaction(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka.admin, "KafkaAdminClient", RecordingAdmin)
    RecordingAdmin.created = []
    changelogs = ["ecovisor-ledger-demo-snapshots-changelog",
                  "ecovisor-ledger-demo-counters-changelog"]  # fmt: skip
    adapter.create_topics("127.0.0.1:1", [*topics.all_topics(["web", "batch"]), *changelogs])
    got = {t.name: dict(t.topic_configs) for t in RecordingAdmin.created}
    week = str(7 * 24 * 3600 * 1000)
    for t in (topics.TELEMETRY, topics.DEADLETTER, topics.ALERTS, topics.COMMANDS,
              topics.notifications("web"), topics.notifications("batch")):  # fmt: skip
        assert got[t] == {"retention.ms": week, "retention.bytes": str(1 << 30)}, t
    for t in changelogs:
        assert got[t] == {"cleanup.policy": "compact"}, t
    for t in (topics.LEDGER, topics.ACTUATOR_CONTAINERS, topics.ACTUATOR_BATTERY,
              topics.ACTUATOR_ACKS, topics.CONTAINERS):  # fmt: skip
        assert got[t] == {}, t
    assert set(got) == set(topics.all_topics(["web", "batch"])) | set(changelogs)
