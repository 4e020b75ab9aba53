"""Kafka in docker-compose.yml, checked statically (no Docker engine here):
authentication and ACLs. The broker authenticates every listener another container can
reach and denies what no ACL allows, every service that uses Kafka logs in as its own
principal of ``ecovisor.contract.kafka_access`` (and no other service has Kafka
credentials), the committed ACL script is the one generated from that table and grants
each topic's reads and writes to the services that need them only."""

from __future__ import annotations

import re
from typing import Any

import pytest

from ecovisor.contract import kafka_access, topics
from ecovisor.contract.environment import (
    ENV_KAFKA_PASSWORD,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_SECURITY_PROTOCOL,
    ENV_KAFKA_USERNAME,
)
from tests.unit.compose_model import (
    ROOT,
    _compose,
    _module,
    _product_services,
    _site,
    _uses_kafka,
)

ACL_SCRIPT = ROOT / "deploy" / "kafka" / "kafka-acls.sh"
ACL_COMMAND = "ecovisor config kafka-acls --config deploy/compose-site.yaml"


def _principals() -> dict[str, kafka_access.KafkaPrincipal]:
    return {p.name: p for p in kafka_access.kafka_principals(_site())}


def _kafka_env() -> dict[str, Any]:
    return _compose()["services"]["kafka"]["environment"]


def _listeners(value: str) -> dict[str, tuple[str, int]]:
    out = {}
    for item in value.split(","):
        name, _, rest = item.partition("://")
        host, _, port = rest.rpartition(":")
        out[name] = (host, int(port))
    return out


def _protocols() -> dict[str, str]:
    pairs = _kafka_env()["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(",")
    return dict(pair.split(":") for pair in pairs)


def test_kafka_broker_authenticates_and_denies_what_no_acl_allows() -> None:
    env = _kafka_env()
    assert env["KAFKA_AUTHORIZER_CLASS_NAME"] == (
        "org.apache.kafka.metadata.authorizer.StandardAuthorizer"  # KRaft's authorizer
    )
    assert str(env["KAFKA_ALLOW_EVERYONE_IF_NO_ACL_FOUND"]).lower() == "false"
    assert env["KAFKA_SASL_ENABLED_MECHANISMS"] == kafka_access.SCRAM_MECHANISM
    # the only super user is the principal of the loopback PLAINTEXT listeners: the broker
    assert env["KAFKA_SUPER_USERS"] == "User:ANONYMOUS"
    listeners = _listeners(env["KAFKA_LISTENERS"])
    advertised = _listeners(env["KAFKA_ADVERTISED_LISTENERS"])
    protocols = _protocols()
    assert set(protocols) == set(listeners)
    for name, (host, _port) in listeners.items():
        if protocols[name] == "PLAINTEXT":
            # unauthenticated = ANONYMOUS = super user: only inside the broker's container
            assert host in ("127.0.0.1", "localhost"), f"{name} must listen on loopback only"
            assert advertised.get(name, ("127.0.0.1", 0))[0] in ("127.0.0.1", "localhost")
        else:
            assert protocols[name] in ("SASL_PLAINTEXT", "SASL_SSL"), name
            jaas = env[f"KAFKA_LISTENER_NAME_{name}_SCRAM___SHA___512_SASL_JAAS_CONFIG"]
            assert jaas.startswith("org.apache.kafka.common.security.scram.ScramLoginModule")
    # KRaft and inter-broker traffic stay on the loopback PLAINTEXT listeners
    assert protocols[env["KAFKA_CONTROLLER_LISTENER_NAMES"]] == "PLAINTEXT"
    assert protocols[env["KAFKA_INTER_BROKER_LISTENER_NAME"]] == "PLAINTEXT"
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"].split("@")[1].split(":")[0] == "127.0.0.1"
    # the services' bootstrap is an authenticated listener
    bootstrap = _compose()["x-ecovisor"]["environment"]["ECOVISOR_KAFKA_BOOTSTRAP"]
    host, _, port = bootstrap.partition(":")
    sasl = [n for n, hp in advertised.items() if hp == (host, int(port))]
    assert sasl and protocols[sasl[0]].startswith("SASL_"), "services must reach a SASL listener"
    # the image's configure script demands a JAAS file in KAFKA_OPTS when an advertised
    # listener's NAME contains "SASL_"; the JAAS config is per listener here instead
    assert "SASL_" not in env["KAFKA_ADVERTISED_LISTENERS"]
    # the host listener is published on the host's loopback only, as are InfluxDB (every
    # app's history behind a demo admin token), and by default MQTT and the API
    services = _compose()["services"]
    assert all(p.startswith("127.0.0.1:") for p in services["kafka"]["ports"])
    assert services["influxdb"]["ports"] == ["127.0.0.1:8086:8086"]
    assert services["mosquitto"]["ports"] == ["${MQTT_HOST_BIND:-127.0.0.1}:1883:1883"]
    health = " ".join(_compose()["services"]["kafka"]["healthcheck"]["test"])
    assert "--bootstrap-server 127.0.0.1:9094" in health and listeners["BROKER"][1] == 9094


@pytest.mark.parametrize("service", sorted(_product_services()))
def test_every_kafka_service_logs_in_as_its_own_principal(service: str) -> None:
    svc = _product_services()[service]
    module = _module(svc)
    env = svc.get("environment") or _compose()["x-ecovisor"]["environment"]
    if service == "mqtt-setup":  # `ecovisor config mqtt-auth` writes files, no broker
        assert not set(env) & {ENV_KAFKA_USERNAME, ENV_KAFKA_PASSWORD}
        return
    principal = kafka_access.principal_of_module(_site(), module)
    if not _uses_kafka(module):
        assert principal is None, f"{module} does not use Kafka but has principal {principal}"
        assert ENV_KAFKA_USERNAME not in env and ENV_KAFKA_PASSWORD not in env, (
            f"{service} does not use Kafka: it gets no Kafka credentials"
        )
        return
    assert principal is not None, f"{service} ({module}) uses Kafka but has no principal"
    assert env[ENV_KAFKA_SECURITY_PROTOCOL] == "SASL_PLAINTEXT"
    assert env[ENV_KAFKA_SASL_MECHANISM] == kafka_access.SCRAM_MECHANISM
    assert env[ENV_KAFKA_USERNAME] == principal.name
    var = kafka_access.password_env(principal.name)
    assert re.fullmatch(rf"\$\{{{var}:-[^}},\[\]=]{{8,}}\}}", env[ENV_KAFKA_PASSWORD]), (
        "a password variable with a default like the tokens', none of , [ ] ="
    )
    # the password the service logs in with is the one kafka-setup creates the user with
    setup = _compose()["services"]["kafka-setup"]["environment"]
    assert setup[var] == env[ENV_KAFKA_PASSWORD]


def test_every_kafka_principal_is_used_and_has_its_own_password() -> None:
    services = _product_services()
    users = {s["environment"][ENV_KAFKA_USERNAME] for s in services.values()
             if ENV_KAFKA_USERNAME in (s.get("environment") or {})}  # fmt: skip
    assert users == set(_principals()), "every principal is some service's, and only those"
    setup = _compose()["services"]["kafka-setup"]["environment"]
    defaults = [setup[kafka_access.password_env(n)] for n in _principals()]
    assert len(set(defaults)) == len(defaults), "no two principals share a password"


def test_kafka_setup_one_shot_creates_users_and_acls_first() -> None:
    services = _compose()["services"]
    setup = services["kafka-setup"]
    assert setup["image"] == services["kafka"]["image"]  # its kafka-configs.sh, kafka-acls.sh
    assert setup["restart"] == "no"
    # the loopback PLAINTEXT listener (super user) is reachable from its network namespace
    assert setup["network_mode"] == "service:kafka"
    assert setup["environment"]["KAFKA_BOOTSTRAP"] == "127.0.0.1:9094"
    assert setup["depends_on"]["kafka"]["condition"] == "service_healthy"
    mount = "./deploy/kafka/kafka-acls.sh:/etc/ecovisor/kafka-acls.sh:ro"
    assert mount in setup["volumes"]
    assert setup["command"] == ["/bin/sh", "/etc/ecovisor/kafka-acls.sh"]
    for name in _principals():
        assert kafka_access.password_env(name) in setup["environment"], name


def test_committed_acl_script_is_the_generated_one() -> None:
    want = kafka_access.render_acl_script(_site(), command=ACL_COMMAND)
    assert ACL_SCRIPT.read_text() == want, (
        f"deploy/kafka/kafka-acls.sh is stale: run `{ACL_COMMAND} --out deploy/kafka/kafka-acls.sh`"
    )


def _script_acls() -> list[kafka_access.Acl]:
    return kafka_access.parse_acl_script(ACL_SCRIPT.read_text())


def test_acl_script_covers_every_topic_of_the_site() -> None:
    acls = _script_acls()
    assert acls == kafka_access.kafka_acls(_site())
    site_topics = topics.all_topics([a.id for a in _site().apps])
    for t in site_topics:
        assert kafka_access.allowed(acls, t, "Create") == {"admin"}, t
        assert kafka_access.allowed(acls, t, "Write"), f"nobody may write {t}"
        assert kafka_access.allowed(acls, t, "Read"), f"nobody may read {t}"
    # the ledger's Faust changelogs (created by the ledger itself) and its consumer group
    from streams.ledger_app import faust_app_id, internal_topics

    app_id = faust_app_id(_site())
    for t in internal_topics(app_id):
        for op in ("Read", "Write", "Create", "Describe"):
            assert kafka_access.allowed(acls, t, op) == {"ledger"}, (t, op)
    groups = {(a.principal, a.name, a.pattern) for a in acls if a.resource == "group"}
    assert groups == {("ledger", app_id, "literal")}
    # nothing beyond the site's topics, the ledger's own prefix and its group
    for a in acls:
        if a.resource == "topic" and a.pattern == "literal":
            assert a.name in site_topics, a
        elif a.resource == "topic":
            assert (a.principal, a.name) == ("ledger", f"{app_id}-"), a


# Who may write and read each topic, written out by hand (not derived from the table
# under test): a service given a topic it does not need fails here.
ACTUATORS = {"actuator-containers", "actuator-battery"}
WRITERS = {
    topics.TELEMETRY: {"bridge"},  # only the bridge: telemetry is what devices reported
    topics.COMMANDS: {"api", "admin"},  # the REST API and the operator's CLI
    topics.LEDGER: {"ledger"},
    topics.ACTUATOR_CONTAINERS: {"ledger"},  # only the ledger acts on containers
    topics.ACTUATOR_BATTERY: {"ledger"},
    topics.ACTUATOR_ACKS: ACTUATORS,  # only the actuators acknowledge
    topics.ALERTS: {"ledger"},
    topics.CONTAINERS: {"actuator-containers"},
    topics.DEADLETTER: {"bridge", "ledger", *ACTUATORS},
}
READERS = {
    topics.TELEMETRY: {"ledger", "admin"},
    topics.COMMANDS: {"ledger", "admin"},
    topics.LEDGER: {"history", "admin"},
    topics.ACTUATOR_CONTAINERS: {"actuator-containers", "admin"},
    topics.ACTUATOR_BATTERY: {"actuator-battery", "admin"},
    topics.ACTUATOR_ACKS: {"ledger", *ACTUATORS, "admin"},
    topics.ALERTS: {"admin"},
    topics.CONTAINERS: {"admin"},
    topics.DEADLETTER: {"admin"},
}


def test_no_service_may_write_or_read_a_topic_it_does_not_need() -> None:
    acls = _script_acls()
    for t, who in WRITERS.items():
        assert kafka_access.allowed(acls, t, "Write") == who, t
    for t, who in READERS.items():
        assert kafka_access.allowed(acls, t, "Read") == who, t
    for app in _site().apps:
        t = topics.notifications(app.id)
        assert kafka_access.allowed(acls, t, "Write") == {"ledger"}, t  # notifications
        assert kafka_access.allowed(acls, t, "Read") == {"api", "admin"}, t  # B3 for Kafka
    assert set(WRITERS) | set(READERS) == set(topics.static_topics())
