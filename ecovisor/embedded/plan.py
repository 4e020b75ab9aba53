"""What the embedded stack runs for a site: ``plan(cfg)`` turns a site configuration into
the list of supervised services (servers, bridge, ledger, history, actuators, collectors,
demo workloads, API, policies) with their start priorities and environment. Pure but for
locating binaries and modules, making the site's internal key on first use and writing
the embedded MQTT broker's configuration (password file, ACLs).
``ecovisor.embedded.stack`` renders and drives it."""

from __future__ import annotations

import importlib.util
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import DEFAULT_CONFIG_ENV, ConfigError
from ecovisor.contract.environment import (
    ENV_INFLUXDB_URL,
    ENV_KAFKA_BOOTSTRAP,
    ENV_MQTT_HOST,
    ENV_MQTT_PORT,
    influxdb_url,
    internal_key,
    kafka_bootstrap,
    kafka_is_external,
    mqtt_endpoint,
)
from ecovisor.embedded import servers as embedded
from ecovisor.embedded.mqtt_auth import BrokerAuth

# Priorities (lower starts first, stops last).
PRIO_SERVER = 10
PRIO_BRIDGE = 20
PRIO_LEDGER = 30
PRIO_HISTORY = 40
PRIO_ACTUATOR = 50
PRIO_COLLECTOR = 60
PRIO_WORKLOAD = 70
PRIO_API = 80
PRIO_POLICY = 90

# supervisord: a program that exits within startsecs of its start, startretries times in
# a row, ends FATAL (not restarted forever). A product service loads its state and
# replays its input first (the ledger: ~5-8 s here), so a crash loop there must be
# caught within 10 s; the servers answer within a second.
STARTSECS_SERVER = 1
STARTSECS_SERVICE = 10  # the default of stack.service_startsecs
STARTRETRIES = 3


@dataclass(frozen=True)
class Service:
    """One supervised program."""

    name: str
    command: list[str]
    priority: int
    server: bool = False  # started by supervisord itself (before topics exist)
    port: int | None = None  # servers: the port that answers when ready
    module: str | None = None  # python -m module (product services)
    startsecs: int = STARTSECS_SERVER  # alive this long = started (supervisord)
    startretries: int = STARTRETRIES


@dataclass
class Plan:
    services: list[Service] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # readable notes
    env: dict[str, str] = field(default_factory=dict)
    bootstrap: str = ""
    topics: list[str] = field(default_factory=list)
    # cgroups of the containers the stack launches (released when the stack stops)
    cgroups: list[dict[str, str | None]] = field(default_factory=list)


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def state_dir_of(cfg: EcovisorConfig, base: Path | None = None) -> Path:
    p = Path(cfg.stack.state_dir)
    return p if p.is_absolute() else (base or Path.cwd()) / p


INTERNAL_KEY_FILE = "internal.key"


def existing_stack_key(cfg: EcovisorConfig, state_dir: Path) -> str | None:
    """The key the stack's services use, if there is one already: the configured one
    (environment, then site file), else ``<state_dir>/internal.key``. Never makes one."""
    key = internal_key(cfg)
    if key:
        return key
    try:
        return (state_dir / INTERNAL_KEY_FILE).read_text().strip() or None
    except OSError:
        return None


def stack_internal_key(cfg: EcovisorConfig, state_dir: Path) -> str:
    """The site's internal key for the embedded stack: the configured one (environment or
    site file), else a random key kept in ``<state_dir>/internal.key`` (mode 0600, made
    on the first ``ecovisor up``), so the embedded stack always authenticates its internal
    topics and ledger views."""
    key = existing_stack_key(cfg, state_dir)
    if key:
        return key
    path = state_dir / INTERNAL_KEY_FILE
    if path.exists():  # unreadable or empty: never run unauthenticated on a bad key file
        raise ConfigError(f"{path}: unreadable or empty; remove it (a new key is made)")
    state_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def plan(
    cfg: EcovisorConfig,
    config_file: Path,
    state_dir: Path,
    python: str = sys.executable,
    exists: Callable[[str], bool] = module_exists,
) -> Plan:
    """Every service the site configuration asks for; missing modules are skipped."""
    p = Plan()
    st = cfg.stack
    ext_kafka = kafka_is_external(cfg)
    p.bootstrap = kafka_bootstrap(cfg)
    mqtt_host, mqtt_port = mqtt_endpoint(cfg)
    key = stack_internal_key(cfg, state_dir)
    p.env = {
        DEFAULT_CONFIG_ENV: str(config_file),
        ENV_KAFKA_BOOTSTRAP: p.bootstrap,
        ENV_MQTT_HOST: mqtt_host,
        ENV_MQTT_PORT: str(mqtt_port),
        "PYTHONUNBUFFERED": "1",
        # the product services share it (signatures, ledger views, their MQTT
        # passwords); never logged, never given to the apps' own processes
        cfg.site.internal_key_env: key,
    }
    data = state_dir / "data"

    if not ext_kafka:
        kafka = embedded.tansu_command(st.kafka_port)
        p.services.append(Service("kafka", kafka, PRIO_SERVER, True, st.kafka_port))
    if st.mqtt_embedded:
        p.services.append(
            Service(
                "mqtt",
                # authenticated: a password file and ACLs from the site's principals
                embedded.mqtt_command(mqtt_port, data / "mqtt", BrokerAuth.of(cfg, key)),
                PRIO_SERVER,
                True,
                mqtt_port,
            )
        )

    ts_url = influxdb_url(cfg)
    if st.timeseries in ("auto", "victoria-metrics") and not (st.timeseries == "auto" and ts_url):
        scrape = [  # their /metrics (docs/metrics.md); the ledger's needs the internal key
            embedded.ScrapeJob(
                embedded.LEDGER_SCRAPE_JOB, f"127.0.0.1:{st.ledger_web_port}", key
            ),
            embedded.ScrapeJob(embedded.API_SCRAPE_JOB, f"127.0.0.1:{st.api_port}"),
        ]
        vm = embedded.victoria_metrics_command(
            st.victoria_metrics_port, data / "victoria-metrics", scrape,
            embedded.scrape_interval_s(cfg.site.shape.tick_s),
        )  # fmt: skip
        if vm:
            p.services.append(
                Service("victoria-metrics", vm, PRIO_SERVER, True, st.victoria_metrics_port)
            )
            ts_url = f"http://127.0.0.1:{st.victoria_metrics_port}"
        else:
            p.skipped.append("victoria-metrics: not installed (no time-series store)")
            ts_url = None if st.timeseries == "victoria-metrics" else ts_url
    elif st.timeseries == "none":
        ts_url = None
    if ts_url:
        p.env[ENV_INFLUXDB_URL] = ts_url

    def py(name: str, module: str, prio: int, *args: str, app_code: bool = False) -> None:
        if not exists(module):
            p.skipped.append(f"{name}: module {module} is not available yet")
            return
        cmd = [python, "-m", module, "--config", str(config_file), *args]
        if app_code:  # workloads and policies are the apps': they do not get the key
            cmd = ["env", "-u", cfg.site.internal_key_env, *cmd]
        p.services.append(Service(name, cmd, prio, module=module, startsecs=st.service_startsecs))

    py("bridge", "streams.bridge", PRIO_BRIDGE)
    py("ledger", "streams.ledger", PRIO_LEDGER)
    if ts_url:
        py("history", "streams.history", PRIO_HISTORY)
    else:
        p.skipped.append("history: no time-series store configured or installed")
    containers = [c for a in cfg.apps for c in a.containers]
    if containers or any(a.templates for a in cfg.apps):
        py("actuator-containers", "actuators.containers", PRIO_ACTUATOR)
    if cfg.site.battery:
        py("actuator-battery", "actuators.battery", PRIO_ACTUATOR)
        py("collector-battery", "collectors.battery_device", PRIO_COLLECTOR)
    if cfg.site.solar:
        py("collector-solar", "collectors.solar", PRIO_COLLECTOR)
    if cfg.site.carbon:
        py("collector-carbon", "collectors.carbon", PRIO_COLLECTOR)
    if cfg.site.nodes or containers:
        py("collector-power", "collectors.power", PRIO_COLLECTOR)
    for c in containers:
        if c.command:
            py(f"container-{c.id}", "actuators.cgexec", PRIO_WORKLOAD, "--container", c.id,
               app_code=True)  # fmt: skip
            if c.backend.type != "lxd":
                p.cgroups.append(
                    {"type": c.backend.type, "cgroup": c.backend.cgroup, "root": c.backend.root}
                )
    py("api", "ecovisor.api", PRIO_API)
    for a in cfg.apps:
        for pol in a.policies:
            py(
                f"policy-{a.id}-{pol.name}",
                f"policies.{pol.name}",
                PRIO_POLICY,
                "--app",
                a.id,
                *pol.args,
                app_code=True,
            )
    p.topics = topics.all_topics([a.id for a in cfg.apps])
    return p
