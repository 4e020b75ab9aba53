"""The environment's part of the configuration: the variables that override the stack
endpoints of the site configuration (docker compose passes these), those every Kafka
client authenticates with, and where the site's internal key is read from. See
docs/configuration.md."""

from __future__ import annotations

import os

from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import DEFAULT_CONFIG_ENV

# Environment overrides of the stack endpoints (docker compose passes these).
ENV_KAFKA_BOOTSTRAP = "ECOVISOR_KAFKA_BOOTSTRAP"
ENV_MQTT_HOST = "ECOVISOR_MQTT_HOST"
ENV_MQTT_PORT = "ECOVISOR_MQTT_PORT"
ENV_INFLUXDB_URL = "ECOVISOR_INFLUXDB_URL"
ENV_VARS = (DEFAULT_CONFIG_ENV, ENV_KAFKA_BOOTSTRAP, ENV_MQTT_HOST, ENV_MQTT_PORT, ENV_INFLUXDB_URL)

# How every Kafka client authenticates (read by ecovisor.adapters.kafka only; docker compose
# sets them per service, docs/configuration.md). None set: PLAINTEXT, no authentication.
ENV_KAFKA_SECURITY_PROTOCOL = "ECOVISOR_KAFKA_SECURITY_PROTOCOL"
ENV_KAFKA_SASL_MECHANISM = "ECOVISOR_KAFKA_SASL_MECHANISM"
ENV_KAFKA_USERNAME = "ECOVISOR_KAFKA_USERNAME"
ENV_KAFKA_PASSWORD = "ECOVISOR_KAFKA_PASSWORD"
ENV_KAFKA_SSL_CAFILE = "ECOVISOR_KAFKA_SSL_CAFILE"
KAFKA_CLIENT_ENV_VARS = (
    ENV_KAFKA_SECURITY_PROTOCOL,
    ENV_KAFKA_SASL_MECHANISM,
    ENV_KAFKA_USERNAME,
    ENV_KAFKA_PASSWORD,
    ENV_KAFKA_SSL_CAFILE,
)


def kafka_is_external(cfg: EcovisorConfig) -> bool:
    """Does ``kafka_bootstrap`` name a broker outside the embedded stack?"""
    return bool(os.environ.get(ENV_KAFKA_BOOTSTRAP) or cfg.stack.kafka_bootstrap)


def kafka_bootstrap(cfg: EcovisorConfig) -> str:
    """host:port of the Kafka-compatible broker: env, then config, then embedded."""
    env = os.environ.get(ENV_KAFKA_BOOTSTRAP)
    if env:
        return env
    if cfg.stack.kafka_bootstrap:
        return cfg.stack.kafka_bootstrap
    return f"127.0.0.1:{cfg.stack.kafka_port}"


def internal_key(cfg: EcovisorConfig) -> str | None:
    """The site's internal key: ``$<site.internal_key_env>``, then ``site.internal_key``;
    None when neither is set (internal topics and views are then not authenticated)."""
    return os.environ.get(cfg.site.internal_key_env) or cfg.site.internal_key


def mqtt_endpoint(cfg: EcovisorConfig) -> tuple[str, int]:
    host = os.environ.get(ENV_MQTT_HOST) or cfg.stack.mqtt_host
    port = int(os.environ.get(ENV_MQTT_PORT) or cfg.stack.mqtt_port)
    return host, port


def influxdb_url(cfg: EcovisorConfig) -> str | None:
    return os.environ.get(ENV_INFLUXDB_URL) or cfg.stack.influxdb_url
