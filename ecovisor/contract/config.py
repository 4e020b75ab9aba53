"""Site configuration: one YAML file describing a site's physical energy system, its
applications (shares, tokens, containers and their backends, policies), its edge
collectors and the stack endpoints. Validated by ``ecovisor config check``.
See docs/configuration.md."""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from ecovisor.contract.schemas import (
    MAX_MAGNITUDE,
    AppId,
    Command,
    Ident,
    ScaleApp,
    ScaleContainer,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
)
from ecovisor.core.power_cap import DEFAULT_PERIOD_US, CpuQuota, quota_for_container_cap
from ecovisor.core.power_model import AnyPowerModel, PowerModelSpec
from ecovisor.core.sci import SECONDS_PER_YEAR, EmbodiedShare
from ecovisor.core.shares import AppShare, SiteShape

# Float slack when comparing a requested value with a configured limit.
_EPS = 1e-9


ENV_INTERNAL_KEY = "ECOVISOR_INTERNAL_KEY"


class ConfigError(Exception):
    """A site configuration that cannot be used, with readable reasons."""


def one_line(err: BaseException) -> str:
    """An error as one line (every entry point exits with one line, never a traceback)."""
    return " ".join(str(err).split())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class NodeConfig(_Strict):
    id: Ident
    cores: int = Field(ge=1)
    power_model: PowerModelSpec = PowerModelSpec(preset="ecovisor-microserver")
    meter: Literal["model", "rapl", "kepler"] = "model"
    kepler_url: str | None = None
    credential: str | None = Field(
        None,
        min_length=8,
        max_length=4096,
        repr=False,
        description="MQTT password of this device (default: derived from the internal key)",
    )

    @model_validator(mode="after")
    def _resolves(self) -> NodeConfig:
        self.model()  # a model that cannot be resolved is a configuration error, at load
        return self

    def model(self) -> AnyPowerModel:
        """The node's power model: the one definition the collectors, the ledger's cap
        validation and the actuators use (its configured cores override the preset's).
        Never raises for a loaded configuration (checked at load)."""
        return self.power_model.resolve(self.cores)


class ContainerBackend(_Strict):
    """Where a container lives and how it is controlled."""

    type: Literal["cgroup_v1", "cgroup_v2", "lxd", "process"]
    cgroup: str | None = Field(
        None, description="cgroup path relative to the hierarchy root, e.g. ecovisor/web-1"
    )
    root: str | None = Field(None, description="cgroup mount root override (tests, v2 trees)")
    instance: str | None = Field(None, description="LXD instance name")
    lxd_endpoint: str | None = None

    @model_validator(mode="after")
    def _needs(self) -> ContainerBackend:
        if self.type in ("cgroup_v1", "cgroup_v2", "process") and not self.cgroup:
            raise ValueError(f"backend {self.type} needs 'cgroup' (a cgroup path)")
        if self.type == "lxd" and not self.instance:
            raise ValueError("backend lxd needs 'instance'")
        return self


class ContainerConfig(_Strict):
    id: Ident
    node: Ident
    backend: ContainerBackend
    size: float = Field(1.0, gt=0, description="relative size for idle attribution 'size'")
    command: list[str] | None = Field(
        None, description="embedded demo: a workload started inside the container's cgroup"
    )


class ContainerTemplate(_Strict):
    """Template for horizontal scaling (scale_app)."""

    id: Ident
    node: Ident
    backend: ContainerBackend
    command: list[str] | None = None
    # bounded like ScaleApp.replicas: the actuator walks every replica slot
    max_replicas: int = Field(8, ge=0, le=256)

    # The one naming rule of replicas: replica i (1-based) of template T is container
    # ``T-i``, its backend the template's with the controlled name suffixed ``-i``.
    def replica_id(self, index: int) -> str:
        return f"{self.id}-{index}"

    def replica_backend(self, index: int) -> ContainerBackend:
        b = self.backend
        if b.type == "lxd":  # a copy of the template instance
            return b.model_copy(update={"instance": f"{b.instance}-{index}"})
        return b.model_copy(update={"cgroup": f"{b.cgroup}-{index}"})


class PolicyConfig(_Strict):
    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")]
    args: list[str] = Field(default_factory=list)


@dataclass(frozen=True)
class Placement:
    """A container's owner, node and backend (see EcovisorConfig.locate)."""

    container: str
    app: str
    node: str
    backend: ContainerBackend
    template: str | None = None
    replica: int | None = None
    size: float = 1.0


class AppConfig(_Strict):
    id: AppId
    token: str = Field(min_length=8, max_length=4096, repr=False)  # as Command.token
    shares: AppShare = AppShare()
    containers: list[ContainerConfig] = Field(default_factory=list)
    templates: list[ContainerTemplate] = Field(default_factory=list)
    policies: list[PolicyConfig] = Field(default_factory=list)


class SourceConfig(_Strict):
    """An edge collector or device: its type and type-specific options (validated by the
    collector itself at start and by ``ecovisor config check``)."""

    type: str
    id: Ident | None = None
    options: dict[str, Any] = Field(default_factory=dict)
    credential: str | None = Field(
        None,
        min_length=8,
        max_length=4096,
        repr=False,
        description="MQTT password of this device (default: derived from the internal key)",
    )


class SiteLimits(_Strict):
    """Bounds at the edge: a message or request outside them is refused (422 or a dead
    letter) with the reason, so no single message can stop the ledger (docs/reliability.md)."""

    # at most the contract's static ceiling, which no command can pass anyway
    max_carbon_budget_g: float = Field(
        1.0e6, gt=0, le=MAX_MAGNITUDE, description="ceiling of set_carbon_budget grams per period"
    )
    max_carbon_rate_mg_per_s: float = Field(
        1.0e6, gt=0, le=MAX_MAGNITUDE, description="ceiling of set_carbon_rate mg/s"
    )
    clock_skew_s: float = Field(
        300.0,
        gt=0,
        le=86_400,
        description="telemetry event time at most this far ahead of the site's clock",
    )
    max_message_bytes: int = Field(
        65_536, ge=1_024, le=900_000, description="largest telemetry or command payload"
    )
    max_sources: int = Field(
        1_000,
        ge=1,
        le=1_500,
        description="telemetry sources the ledger tracks per site (the snapshot stays < 1 MB)",
    )
    source_expiry_s: float = Field(
        3_600.0,
        gt=0,
        le=604_800,
        description="a source silent this long is forgotten (its dedupe state)",
    )
    replay_clock_source: Ident | None = Field(
        None, description="the only source whose clock messages are accepted (None: none)"
    )
    clock_max_step_s: float = Field(
        86_400.0, gt=0, le=366 * 86_400, description="largest advance of one clock message"
    )


class EmbodiedHardware(_Strict):
    """One piece of hardware for the embodied term M of SCI (docs/configuration.md):
    its embodied carbon, its lifetime (the time share of an interval is
    interval / lifetime) and how it is shared by the apps (the resource share)."""

    name: Ident
    node: Ident | None = Field(None, description="the node it is; None: the whole site")
    embodied_kg: float = Field(ge=0, le=1_000_000, description="kgCO2eq, manufacture")
    lifetime_years: float = Field(gt=0, le=50)
    share: Literal["containers", "equal"] = Field(
        "containers",
        description="containers: by the app's configured containers on it (its size); "
        "equal: equally among the apps with a container on it",
    )


class EmbodiedConfig(_Strict):
    hardware: list[EmbodiedHardware] = Field(default_factory=list, max_length=1024)


class SiteConfig(_Strict):
    id: Ident
    shape: SiteShape = SiteShape()
    nodes: list[NodeConfig] = Field(default_factory=list)
    solar: SourceConfig | None = None
    carbon: SourceConfig | None = None
    battery: SourceConfig | None = None
    embodied: EmbodiedConfig | None = Field(None, description="hardware for SCI's M term")
    grace_s: float = Field(0.5, ge=0, description="a tick closes after tick_s + grace_s")
    limits: SiteLimits = SiteLimits()
    # The secret of the site's internal services (ledger, actuators, API -> ledger views):
    # signs actuator messages and guards the ledger views. Read from this environment
    # variable first; ``internal_key`` (a literal) is for demos and tests only.
    internal_key_env: str = Field(
        ENV_INTERNAL_KEY, description="environment variable holding the internal key"
    )
    internal_key: str | None = Field(
        None,
        min_length=16,
        repr=False,  # never in logs or error messages
        description="literal internal key (demo/tests; prefer the env)",
    )


class StackConfig(_Strict):
    """Endpoints. ``kafka_bootstrap: null`` starts the embedded broker (tansu)."""

    kafka_bootstrap: str | None = None
    kafka_port: int = Field(19092, ge=1, le=65535)
    mqtt_host: str = "127.0.0.1"
    mqtt_port: int = Field(11883, ge=1, le=65535)
    mqtt_embedded: bool = True
    timeseries: Literal["auto", "victoria-metrics", "influxdb", "none"] = "auto"
    victoria_metrics_port: int = Field(18428, ge=1, le=65535)
    influxdb_url: str | None = None
    influxdb_org: str = "ecovisor"
    influxdb_bucket: str = "ecovisor"
    influxdb_token_env: str = "INFLUXDB_TOKEN"
    api_port: int = Field(18080, ge=1, le=65535)
    ledger_web_port: int = Field(16066, ge=1, le=65535)
    state_dir: str = ".ecovisor"
    # supervisord's startsecs of the product services: alive this long = started; a
    # quicker crash, 3 times in a row, is FATAL (docs/embedded-stack.md#health)
    service_startsecs: int = Field(10, ge=1, le=300)


class EcovisorConfig(_Strict):
    schema_version: Literal[1] = 1
    site: SiteConfig
    apps: list[AppConfig] = Field(default_factory=list)
    # The site operator's bearer token (the dashboard's operator view, the /v1/site
    # routes: every app, the site's sources, the command log); None = no operator access
    operator_token: str | None = Field(
        None, min_length=8, max_length=4096, repr=False,  # as an app's token
        description="bearer token of the site operator (docs/dashboard.md)",
    )  # fmt: skip
    stack: StackConfig = StackConfig()

    @model_validator(mode="after")
    def _consistent(self) -> EcovisorConfig:
        errors: list[str] = []
        app_ids = [a.id for a in self.apps]
        for dup in {x for x in app_ids if app_ids.count(x) > 1}:
            errors.append(f"app id {dup!r} is used twice")
        tokens = [a.token for a in self.apps]
        if len(set(tokens)) != len(tokens):
            errors.append("two apps share a token; every app needs its own credential")
        if self.operator_token is not None and self.operator_token in tokens:
            errors.append("operator_token is also an app's token; the operator needs its own")
        nodes = {n.id for n in self.site.nodes}
        seen: dict[str, str] = {}
        for a in self.apps:
            for c in [*a.containers, *a.templates]:
                if c.id in seen:
                    errors.append(
                        f"container {c.id!r} is mapped to both {seen[c.id]!r} and {a.id!r}"
                    )
                seen[c.id] = a.id
                if c.node not in nodes:
                    errors.append(f"app {a.id!r} container {c.id!r}: unknown node {c.node!r}")
        errors += _isolation_errors(self)
        for h in self.site.embodied.hardware if self.site.embodied else ():
            if h.node is not None and h.node not in nodes:
                errors.append(f"embodied hardware {h.name!r}: unknown node {h.node!r}")
        solar = sum(a.shares.solar_fraction for a in self.apps)
        if solar > 1 + 1e-9:
            errors.append(f"solar fractions of the apps add up to {solar:.3f} > 1")
        cap = sum(a.shares.battery_capacity_wh for a in self.apps)
        if cap > self.site.shape.battery_capacity_wh + 1e-9:
            errors.append(
                f"battery shares add up to {cap} Wh > site battery "
                f"{self.site.shape.battery_capacity_wh} Wh"
            )
        if self.site.solar is not None and self.site.shape.solar_nameplate_w <= 0:
            # the ledger refuses solar energy beyond the nameplate: at 0 W, all of it
            errors.append(
                "site.solar is configured but site.shape.solar_nameplate_w is 0: "
                "set the array's peak W (solar counters are bounded by it)"
            )
        if errors:
            raise ValueError("; ".join(errors))
        return self

    # --- lookups used by the ledger, actuators, API --------------------------------
    def app(self, app_id: str) -> AppConfig:
        for a in self.apps:
            if a.id == app_id:
                return a
        raise KeyError(app_id)

    def embodied_shares(self, app_id: str) -> list[EmbodiedShare]:
        """The app's share of each piece of ``site.embodied`` hardware (SCI's M term,
        ``core.sci``): the resource share by the hardware's ``share`` rule over the
        configured containers on it (its node, or the whole site)."""
        out = []
        for h in self.site.embodied.hardware if self.site.embodied else ():
            on = [(a.id, c) for a in self.apps for c in a.containers
                  if h.node is None or c.node == h.node]  # fmt: skip
            if h.share == "containers":
                mine = sum(1 for a, _ in on if a == app_id)
                share = mine / len(on) if on else 0.0
            else:
                apps = {a for a, _ in on}
                share = 1.0 / len(apps) if app_id in apps else 0.0
            out.append(EmbodiedShare(name=h.name, embodied_kg=h.embodied_kg,
                                     lifetime_s=h.lifetime_years * SECONDS_PER_YEAR,
                                     resource_share=share))  # fmt: skip
        return out

    def app_for_token(self, token: str) -> AppConfig | None:
        """The app owning a token (constant-time comparison per app)."""
        found = None
        for a in self.apps:
            if hmac.compare_digest(a.token.encode(), token.encode()):
                found = a
        return found

    def is_operator_token(self, token: str) -> bool:
        """Whether ``token`` is the site's operator token (constant-time comparison)."""
        op = self.operator_token
        return op is not None and hmac.compare_digest(op.encode(), token.encode())

    def owner_of(self, container: str) -> str | None:
        """The app of a *configured* container (template replicas are not included: the
        API tells a replica that is not running from one that is another app's)."""
        where = self.locate(container)
        return where.app if where is not None and where.template is None else None

    def placements(self) -> dict[str, Placement]:
        """Every container id the site can have: the configured containers and each
        replica ``<template>-<i>`` (1 <= i <= max_replicas) of a template. The one
        ownership rule of the product (ledger telemetry, commands, actuators)."""
        out = {
            t.replica_id(i): Placement(
                t.replica_id(i), a.id, t.node, t.replica_backend(i), template=t.id, replica=i
            )
            for a in self.apps
            for t in a.templates
            for i in range(1, t.max_replicas + 1)
        }
        for a in self.apps:  # a configured name wins (the validator forbids clashes)
            for c in a.containers:
                out[c.id] = Placement(c.id, a.id, c.node, c.backend, size=c.size)
        return out

    def locate(self, container: str) -> Placement | None:
        """Where a container belongs (see ``placements``), or None."""
        return self.placements().get(container)

    def container(self, container: str) -> ContainerConfig | None:
        for a in self.apps:
            for c in a.containers:
                if c.id == container:
                    return c
        return None

    def template(self, template: str) -> tuple[AppConfig, ContainerTemplate]:
        """A container template and the app that owns it; KeyError if none."""
        for a in self.apps:
            for t in a.templates:
                if t.id == template:
                    return a, t
        raise KeyError(f"no container template {template!r} in the site configuration")

    def node(self, node_id: str) -> NodeConfig:
        for n in self.site.nodes:
            if n.id == node_id:
                return n
        raise KeyError(node_id)

    def idle_sharers(self, container: str) -> dict[str, float]:
        """The containers a power cap assumes share ``container``'s node idle power, with
        their sizes: the configured containers on that node, plus ``container`` itself
        (a template replica counts itself). Other running replicas are not counted: the
        ledger that validates a cap does not track them, and leaving them out can only
        raise the idle share, so the cap holds whichever replicas run."""
        where = self.locate(container)
        if where is None:
            raise KeyError(f"container {container!r} is not in the site configuration")
        out = {c.id: c.size for a in self.apps for c in a.containers if c.node == where.node}
        out.setdefault(container, where.size)
        return out

    def cap_quota(
        self, container: str, watts: float | None, period_us: int = DEFAULT_PERIOD_US
    ) -> CpuQuota:
        """A power cap of ``container`` as a CPU quota, through its node's power model and
        its idle share under the site's idle attribution (``idle_sharers``). The one
        cap -> quota rule: the ledger computes it when it accepts ``set_container_powercap``
        and the actuator writes what the ledger computed. Raises KeyError (unknown
        container) or ``power_cap.CapRejected`` (a ValueError: below the floor)."""
        sizes = self.idle_sharers(container)  # KeyError for an unknown container
        return quota_for_container_cap(
            self.node(self.placements()[container].node).model(),
            watts,
            container=container,
            members=list(sizes),
            idle_mode=self.site.shape.idle_attribution,
            sizes=sizes,
            period_us=period_us,
        )

    def shares(self) -> dict[str, AppShare]:
        return {a.id: a.shares for a in self.apps}

    def command_bound_error(self, cmd: Command) -> tuple[str, str] | None:
        """``(field, reason)`` when a command's value is beyond this site's bounds, else
        None: carbon limits within ``site.limits``, a power cap within its node's peak
        modelled power (no container can draw more), cpus within the node's cores,
        replicas within the template's max. The one bounds rule: the API answers 422
        with it, the ledger rejects with it. Who owns what is not checked here (an
        unknown container or template: None), nor what depends on the app's share
        (``share_bound_error``, applied by the ledger)."""
        lim = self.site.limits
        if isinstance(cmd, SetCarbonBudget) and cmd.grams is not None:
            if cmd.grams > lim.max_carbon_budget_g:
                return "grams", (
                    f"carbon budget {cmd.grams:g} g above the site's limit "
                    f"{lim.max_carbon_budget_g:g} g (site.limits.max_carbon_budget_g)"
                )
        elif isinstance(cmd, SetCarbonRate) and cmd.mg_per_s is not None:
            if cmd.mg_per_s > lim.max_carbon_rate_mg_per_s:
                return "mg_per_s", (
                    f"carbon rate {cmd.mg_per_s:g} mg/s above the site's limit "
                    f"{lim.max_carbon_rate_mg_per_s:g} mg/s (site.limits.max_carbon_rate_mg_per_s)"
                )
        elif isinstance(cmd, SetContainerPowercap | ScaleContainer):
            return self._container_bound_error(cmd)
        elif isinstance(cmd, ScaleApp):
            try:
                _, tpl = self.template(cmd.template)
            except KeyError:
                return None  # ownership is checked elsewhere
            if cmd.replicas > tpl.max_replicas:
                return "replicas", (
                    f"replicas {cmd.replicas} above the template's max {tpl.max_replicas}"
                )
        return None

    def _container_bound_error(
        self, cmd: SetContainerPowercap | ScaleContainer
    ) -> tuple[str, str] | None:
        where = self.locate(cmd.container)
        if where is None:
            return None
        node = self.node(where.node)
        if isinstance(cmd, ScaleContainer):
            if cmd.cpus > node.cores:
                return "cpus", f"cpus {cmd.cpus:g} above the node's {node.cores} cores"
            return None
        peak = node.model().peak_power_w
        if cmd.watts is not None and cmd.watts > peak + _EPS:
            return "watts", (
                f"power cap {cmd.watts:g} W above node {node.id!r}'s peak {peak:g} W (its "
                f"power model at full load; null removes the cap)"
            )
        return None

    def share_bound_error(self, cmd: Command) -> tuple[str, str] | None:
        """``(field, reason)`` when a battery rate is above the app's share limit (the
        C-rate of its battery share), else None."""
        if not isinstance(cmd, SetBatteryChargeRate | SetBatteryMaxDischarge):
            return None
        try:
            share = self.app(cmd.app).shares
        except KeyError:
            return None
        if isinstance(cmd, SetBatteryChargeRate):
            what, limit = "charge rate", share.charge_limit_w
        else:
            what, limit = "max discharge", share.discharge_limit_w
        if cmd.watts > limit + _EPS:
            return "watts", f"{what} {cmd.watts:g} W above the share's limit {limit:g} W"
        return None


def _backend_keys(b: ContainerBackend, suffix: str = "") -> list[str]:
    keys = []
    if b.cgroup:
        under = f" under {b.root}" if b.root else ""
        keys.append(f"cgroup {b.cgroup.strip('/')}{suffix}{under}")
    if b.instance:
        keys.append(f"lxd instance {b.instance}{suffix}")
    return keys


def _isolation_errors(cfg: EcovisorConfig) -> list[str]:
    """Template replicas are named ``<template>-<i>`` (cgroup/instance ``<name>-<i>``) by
    the actuator, and a container is controlled through its backend: a replica name or a
    backend shared with another app would let one app stop or cap another's workload."""
    errors: list[str] = []
    ids = {c.id: a.id for a in cfg.apps for c in [*a.containers, *a.templates]}
    backends: dict[str, str] = {}

    def claim(key: str, app: str, what: str) -> None:
        other = backends.setdefault(key, app)
        if other != app:
            errors.append(f"{key} is used by both {other!r} and {app!r} ({what})")

    for a in cfg.apps:
        for c in a.containers:
            for key in _backend_keys(c.backend):
                claim(key, a.id, f"container {c.id!r}")
        for t in a.templates:
            for i in range(1, max(t.max_replicas, 1) + 1):
                rid = t.replica_id(i)
                if rid in ids:
                    errors.append(
                        f"container {rid!r} of {ids[rid]!r} has the name of replica {i} of "
                        f"template {t.id!r} of {a.id!r}"
                    )
                for key in _backend_keys(t.backend, f"-{i}"):
                    claim(key, a.id, f"replica {rid!r}")
    return errors


_ENV = re.compile(r"\$\{([A-Z_][A-Z0-9_]*)(?::-([^}]*))?\}")


def _expand_env(text: str) -> str:
    """${VAR} and ${VAR:-default} in the YAML text, so tokens need not live in the file."""

    def sub(m: re.Match[str]) -> str:
        val = os.environ.get(m.group(1))
        if val is None:
            if m.group(2) is None:
                raise ConfigError(f"environment variable {m.group(1)} is not set")
            return m.group(2)
        return val

    return _ENV.sub(sub, text)


def _format_errors(err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e.get("loc", ())) or "<root>"
        msg = e.get("msg", "")
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_config(text: str, origin: str = "<string>") -> EcovisorConfig:
    try:
        data = yaml.safe_load(_expand_env(text))
    except yaml.YAMLError as e:
        raise ConfigError(f"{origin}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level")
    try:
        return EcovisorConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{origin}: invalid configuration:\n{_format_errors(e)}") from e


def load_config(path: str | os.PathLike[str]) -> EcovisorConfig:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such configuration file")
    return parse_config(p.read_text(), origin=str(p))


DEFAULT_CONFIG_ENV = "ECOVISOR_CONFIG"

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


def config_path(explicit: str | None) -> str:
    """The configuration file to use: --config, then $ECOVISOR_CONFIG."""
    path = explicit or os.environ.get(DEFAULT_CONFIG_ENV)
    if not path:
        raise ConfigError(f"no configuration: pass --config FILE or set {DEFAULT_CONFIG_ENV}")
    return path
