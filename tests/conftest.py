"""Shared fixtures: real embedded servers on their own free ports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ecovisor.adapters.kafka import create_topics
from ecovisor.contract import topics
from ecovisor.embedded.servers import Server, free_port, mqtt_command, tansu_command


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tansu broker (Kafka protocol) with every static topic created."""
    port = free_port()
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    srv = Server(tansu_command(port), port, log).start()
    bootstrap = f"127.0.0.1:{port}"
    create_topics(bootstrap, topics.static_topics())
    yield bootstrap
    srv.stop()


@pytest.fixture()
def mqtt_server(tmp_path: Path) -> Iterator[Server]:
    """A real MQTT broker (mosquitto, or amqtt) with persistence, per test."""
    port = free_port()
    srv = Server(mqtt_command(port, tmp_path / "mqtt"), port, tmp_path / "mqtt.log").start()
    yield srv
    srv.stop()
