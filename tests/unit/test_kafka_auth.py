"""Kafka client authentication from the environment, without a broker: the settings are
parsed in one place (``ecovisor.adapters.kafka.kafka_security``), and every client
builder hands them on: the kafka-python producer, consumer and admin client of the
adapter and the bridge's producer, the aiokafka consumer and producer (ledger, REST API),
and the ledger's Faust app. Nothing set: no security argument at all (PLAINTEXT, as
before; the embedded broker has no SASL)."""

from __future__ import annotations

import asyncio
import ssl
from typing import Any

import kafka.admin
import pytest

from ecovisor.adapters import kafka as adapter
from ecovisor.adapters import kafka_async
from ecovisor.contract.config_file import parse_config
from ecovisor.contract.environment import KAFKA_CLIENT_ENV_VARS

SASL_ENV = {
    "ECOVISOR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
    "ECOVISOR_KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
    "ECOVISOR_KAFKA_USERNAME": "ledger",
    "ECOVISOR_KAFKA_PASSWORD": "ledger-secret-1",
}
SASL_OPTIONS = {
    "security_protocol": "SASL_PLAINTEXT",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "ledger",
    "sasl_plain_password": "ledger-secret-1",
}
SECURITY_KEYS = {"security_protocol", "sasl_mechanism", "sasl_plain_username",
                 "sasl_plain_password", "ssl_context"}  # fmt: skip


@pytest.fixture(params=["plaintext", "sasl"])
def env(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The process environment without any Kafka setting, or with a SASL login."""
    for var in KAFKA_CLIENT_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    if request.param == "plaintext":
        return {}
    for k, v in SASL_ENV.items():
        monkeypatch.setenv(k, v)
    return SASL_ENV


def _security(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in kwargs.items() if k in SECURITY_KEYS}


def _expected(env: dict[str, str]) -> dict[str, Any]:
    return SASL_OPTIONS if env else {}


# --- the settings -----------------------------------------------------------------------
def test_nothing_set_is_plaintext_without_any_security_argument() -> None:
    assert adapter.kafka_security({}) == adapter.KafkaSecurity()
    assert adapter.kafka_python_options({}) == {}
    assert adapter.aiokafka_options({}) == {}
    assert adapter.faust_credentials({}) is None
    assert adapter.kafka_python_options({"ECOVISOR_KAFKA_SECURITY_PROTOCOL": "plaintext"}) == {}


def test_sasl_settings_become_the_clients_arguments() -> None:
    assert adapter.kafka_python_options(SASL_ENV) == SASL_OPTIONS
    assert adapter.aiokafka_options(SASL_ENV) == SASL_OPTIONS
    sec = adapter.kafka_security(SASL_ENV)
    assert "ledger-secret-1" not in repr(sec)  # the password is never in a repr
    # the mechanism defaults to SCRAM-SHA-512
    env = {k: v for k, v in SASL_ENV.items() if k != "ECOVISOR_KAFKA_SASL_MECHANISM"}
    assert adapter.kafka_security(env).mechanism == "SCRAM-SHA-512"


def test_sasl_ssl_gets_a_verifying_ssl_context() -> None:
    env = {**SASL_ENV, "ECOVISOR_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}
    for opts in (adapter.kafka_python_options(env), adapter.aiokafka_options(env)):
        ctx = opts.pop("ssl_context")
        assert isinstance(ctx, ssl.SSLContext) and ctx.verify_mode == ssl.CERT_REQUIRED
        assert opts == {**SASL_OPTIONS, "security_protocol": "SASL_SSL"}
    with pytest.raises(adapter.KafkaSettingsError, match="ECOVISOR_KAFKA_SSL_CAFILE"):
        adapter.kafka_python_options({**env, "ECOVISOR_KAFKA_SSL_CAFILE": "/no/such/ca.pem"})


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"ECOVISOR_KAFKA_SECURITY_PROTOCOL": "SSL"}, "expected one of PLAINTEXT"),
        # credentials without SASL would silently connect without them
        ({"ECOVISOR_KAFKA_USERNAME": "x", "ECOVISOR_KAFKA_PASSWORD": "y"},
         "ECOVISOR_KAFKA_USERNAME, ECOVISOR_KAFKA_PASSWORD set but .* is PLAINTEXT"),
        ({**SASL_ENV, "ECOVISOR_KAFKA_PASSWORD": ""}, "needs ECOVISOR_KAFKA_PASSWORD"),
        ({"ECOVISOR_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT"},
         "needs ECOVISOR_KAFKA_USERNAME and ECOVISOR_KAFKA_PASSWORD"),
        ({**SASL_ENV, "ECOVISOR_KAFKA_SASL_MECHANISM": "GSSAPI"}, "expected one of SCRAM"),
        ({**SASL_ENV, "ECOVISOR_KAFKA_SSL_CAFILE": "/ca.pem"}, "is for SASL_SSL"),
    ],
)  # fmt: skip
def test_unusable_settings_are_one_clear_error(env: dict[str, str], reason: str) -> None:
    with pytest.raises(adapter.KafkaSettingsError, match=reason):
        adapter.kafka_security(env)
    # services exit on it as on an unreachable broker (one line, non-zero)
    assert issubclass(adapter.KafkaSettingsError, adapter.KafkaUnavailable)


def test_the_libraries_accept_the_arguments() -> None:
    """The names are the libraries' own: real clients are built with them (kafka-python
    refuses unknown configs; nothing connects: the API version is given)."""
    from kafka import KafkaConsumer, KafkaProducer

    opts = adapter.kafka_python_options(SASL_ENV)
    prod = KafkaProducer(bootstrap_servers="127.0.0.1:1", api_version=(2, 8), **opts)
    cons = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 8), **opts)
    try:
        for client in (prod, cons):
            assert _security(client.config) == {**SASL_OPTIONS, "ssl_context": None}
    finally:
        prod.close(timeout=1)
        cons.close()

    async def build() -> None:
        from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

        aio = adapter.aiokafka_options(SASL_ENV)
        p = AIOKafkaProducer(bootstrap_servers="127.0.0.1:1", **aio)
        c = AIOKafkaConsumer(bootstrap_servers="127.0.0.1:1", group_id=None, **aio)
        for client in (p.client, c._client):
            assert (client._security_protocol, client._sasl_mechanism,
                    client._sasl_plain_username, client._sasl_plain_password) == (
                "SASL_PLAINTEXT", "SCRAM-SHA-512", "ledger", "ledger-secret-1")  # fmt: skip
        await p.stop()
        await c.stop()

    asyncio.run(build())


# --- every builder hands them on ----------------------------------------------------------
class Recorder:
    """Stands in for a client class: records its keyword arguments."""

    calls: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        Recorder.calls.append((type(self).__name__, kwargs))

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}

    def assign(self, _parts: Any) -> None:
        pass

    def list_topics(self) -> list[str]:
        return ["ecovisor.ledger"]

    def close(self, **_kw: Any) -> None:
        pass


class KafkaProducer(Recorder):
    pass


class KafkaConsumer(Recorder):
    pass


class KafkaAdminClient(Recorder):
    pass


def test_kafka_python_builders_pass_the_settings(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(adapter, "KafkaProducer", KafkaProducer)
    monkeypatch.setattr(adapter, "KafkaConsumer", KafkaConsumer)
    monkeypatch.setattr(kafka.admin, "KafkaAdminClient", KafkaAdminClient)
    Recorder.calls = []
    adapter.producer("kafka:9092", "ecovisor-actuator-containers")
    adapter.assigned_consumer("kafka:9092", "ecovisor.ledger", "ecovisor-history-demo")
    adapter.create_topics("kafka:9092", ["ecovisor.ledger"])
    assert adapter.existing_topics("kafka:9092") == {"ecovisor.ledger"}
    made = [name for name, _ in Recorder.calls]
    assert made == ["KafkaProducer", "KafkaConsumer", "KafkaAdminClient", "KafkaAdminClient"]
    for name, kwargs in Recorder.calls:
        assert kwargs["bootstrap_servers"] == "kafka:9092"
        assert _security(kwargs) == _expected(env), name


def test_the_bridge_producer_passes_the_settings(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from streams.bridge import Bridge, Scope

    monkeypatch.setattr(kafka, "KafkaProducer", KafkaProducer)  # imported when connecting
    Recorder.calls = []
    b = Bridge(Scope.of(parse_config("site: {id: s1}\n")), "127.0.0.1", 1, "kafka:9092")
    b._connect_kafka()
    assert isinstance(b.producer, KafkaProducer)
    [(_, kwargs)] = Recorder.calls
    assert kwargs["acks"] == "all"  # its own settings are kept
    assert _security(kwargs) == _expected(env)


class AIOClient:
    calls: list[tuple[str, dict[str, Any]]] = []

    def __init__(self, **kwargs: Any) -> None:
        AIOClient.calls.append((type(self).__name__, kwargs))

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def topics(self) -> set[str]:
        return {"ecovisor.notifications.web"}

    def partitions_for_topic(self, _topic: str) -> set[int]:
        return {0}

    def assign(self, _tps: Any) -> None:
        pass


class AIOKafkaConsumer(AIOClient):
    pass


class AIOKafkaProducer(AIOClient):
    pass


def test_aiokafka_builders_pass_the_settings(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ledger's telemetry consumer and the REST API's command bus use these two."""
    monkeypatch.setattr(kafka_async, "AIOKafkaConsumer", AIOKafkaConsumer)
    monkeypatch.setattr(kafka_async, "AIOKafkaProducer", AIOKafkaProducer)
    AIOClient.calls = []

    async def build() -> None:
        await kafka_async.assigned_consumer("kafka:9092", ["ecovisor.notifications.web"],
                                            fetch_max_wait_ms=50)  # fmt: skip
        await kafka_async.started_producer("kafka:9092")

    asyncio.run(build())
    [(_, cons), (_, prod)] = AIOClient.calls
    assert cons["group_id"] is None and cons["fetch_max_wait_ms"] == 50
    assert prod["acks"] == "all"
    for kwargs in (cons, prod):
        assert _security(kwargs) == _expected(env)


def test_the_ledger_faust_app_gets_the_credentials(env: dict[str, str], tmp_path: Any) -> None:
    from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth

    from streams.ledger_app import build_app

    cfg = parse_config(f"site: {{id: s1}}\nstack: {{state_dir: {tmp_path}}}\n")
    app = build_app(cfg, bootstrap="kafka:9092")
    creds = app.conf.broker_credentials
    # what Faust gives its aiokafka consumer and producer
    auth = credentials_to_aiokafka_auth(creds, app.conf.ssl_context)
    if not env:
        assert creds is None
        assert auth == {"security_protocol": "PLAINTEXT"}  # Faust's default, as before
    else:
        assert auth == {**SASL_OPTIONS, "ssl_context": None}
