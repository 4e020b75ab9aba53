"""Site configuration: one YAML file describing a site's physical energy system, its
applications (shares, tokens, containers and their backends, policies), its edge
collectors and the stack endpoints. Validated by ``ecovisor config check``.
See docs/configuration.md.

This module holds the whole file's model (``EcovisorConfig``: the checks across its
sections and the rules it owns: placement and ownership, a container's cap -> quota,
the bounds of a command) and its ``stack`` section. The ``site`` section is in
``site_config``, the ``apps`` section in ``app_config``; reading the file is
``config_file``, the environment's overrides ``environment``."""

from __future__ import annotations

import hmac
import zlib
from dataclasses import dataclass
from typing import Literal

from pydantic import Field, model_validator

from ecovisor.contract.app_config import (
    AppConfig,
    ContainerBackend,
    ContainerConfig,
    ContainerTemplate,
)
from ecovisor.contract.commands import (
    Command,
    ScaleApp,
    ScaleContainer,
    SetBatteryChargeRate,
    SetBatteryMaxDischarge,
    SetCarbonBudget,
    SetCarbonRate,
    SetContainerPowercap,
)
from ecovisor.contract.site_config import NodeConfig, SiteConfig, StrictModel
from ecovisor.core.power_cap import DEFAULT_PERIOD_US, CpuQuota, quota_for_container_cap
from ecovisor.core.sci import SECONDS_PER_YEAR, EmbodiedShare
from ecovisor.core.shares import AppShare
from ecovisor.core.tick import validate_site

# Float slack when comparing a requested value with a configured limit.
_EPS = 1e-9

# Default workload uids (EcovisorConfig.workload_uid): 200000..265535, above the usual
# login uids (1000-60000) and the first subordinate-uid block (100000-165535).
WORKLOAD_UID_BASE = 200_000
WORKLOAD_UID_SPAN = 65_536


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


class StackConfig(StrictModel):
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
    # quicker crash, 3 times in a row, is FATAL
    # (docs/embedded-stack.md#health-crash-loops-are-not-healthy)
    service_startsecs: int = Field(10, ge=1, le=300)


class EcovisorConfig(StrictModel):
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
        uids: dict[int, str] = {}
        for a in self.apps:
            uid = self.workload_uid(a.id)
            other = uids.setdefault(uid, a.id)
            if other != a.id:  # one uid would let one app's workload signal the other's
                errors.append(
                    f"apps {other!r} and {a.id!r} would run their workloads as the same uid "
                    f"{uid}; give one of them another run_as_uid"
                )
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
        if not errors:  # the ledger's own check of the shares on the site's shape
            try:
                validate_site(self.site.shape, self.shares())
            except ValueError as e:
                errors.append(f"site: {e}")
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

    def command_rate(self, app_id: str) -> tuple[float, int]:
        """(commands a second on average, at once) the API lets ``app_id`` send: the
        site's ``limits.max_commands_per_s`` / ``command_burst``, else from the app's
        size: a policy may command each of its container slots (configured containers
        and every replica of its templates) and the app itself once a tick, twice over,
        and send two ticks' worth at once."""
        a = self.app(app_id)
        slots = len(a.containers) + sum(t.max_replicas for t in a.templates) + 1
        limits = self.site.limits
        rate = limits.max_commands_per_s or 2.0 * slots / self.site.shape.tick_s
        burst = limits.command_burst or int(2 * slots * 2) + 20
        return rate, burst

    def workload_uid(self, app_id: str) -> int:
        """The uid and gid the app's workloads run as when cgexec starts as root: its
        ``run_as_uid``, else ``WORKLOAD_UID_BASE + crc32(id) % WORKLOAD_UID_SPAN``. A
        function of the app's own id only, so adding or removing another app never moves
        it (running workloads keep their uid); the config check refuses two apps on one
        uid. KeyError for an unknown app."""
        a = self.app(app_id)
        if a.run_as_uid is not None:
            return a.run_as_uid
        return WORKLOAD_UID_BASE + zlib.crc32(a.id.encode()) % WORKLOAD_UID_SPAN

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


def _instance_key(b: ContainerBackend, suffix: str = "") -> str | None:
    return f"lxd instance {b.instance}{suffix}" if b.instance else None


def _cgroup_overlaps(claims: list[tuple[tuple[str, str, tuple[str, ...]], str, str]]
                     ) -> list[str]:  # fmt: skip
    """Cgroups of two apps that are the same directory or one inside the other: capping or
    freezing the outer one acts on the inner one too. ``claims``: (hierarchy, root,
    directories), app, what."""
    owner = {}
    errors = []
    for key, app, what in claims:
        other = owner.setdefault(key, (app, what))
        if other[0] != app:
            errors.append(f"cgroup {'/'.join(key[2])} is used by both {other[0]!r} "
                          f"({other[1]}) and {app!r} ({what})")  # fmt: skip
    for (tree, root, parts), app, what in claims:
        for n in range(1, len(parts)):
            above = owner.get((tree, root, parts[:n]))
            if above is not None and above[0] != app:
                inner, outer = "/".join(parts), "/".join(parts[:n])
                errors.append(f"cgroup {inner} of {app!r} ({what}) is inside cgroup "
                              f"{outer} of {above[0]!r} ({above[1]})")  # fmt: skip
    return errors


def _isolation_errors(cfg: EcovisorConfig) -> list[str]:
    """Template replicas are named ``<template>-<i>`` (cgroup/instance ``<name>-<i>``) by
    the actuator, and a container is controlled through its backend: a replica name or a
    backend shared with another app, or a cgroup inside another app's, would let one app
    stop or cap another's workload."""
    errors: list[str] = []
    ids = {c.id: a.id for a in cfg.apps for c in [*a.containers, *a.templates]}
    instances: dict[str, str] = {}
    cgroups: list[tuple[tuple[str, str, tuple[str, ...]], str, str]] = []

    def claim(b: ContainerBackend, suffix: str, app: str, what: str) -> None:
        if b.cgroup:
            cgroups.append(((*b.cgroup_tree(), b.cgroup_parts(suffix)), app, what))
        key = _instance_key(b, suffix)
        if key is not None:
            other = instances.setdefault(key, app)
            if other != app:
                errors.append(f"{key} is used by both {other!r} and {app!r} ({what})")

    for a in cfg.apps:
        for c in a.containers:
            claim(c.backend, "", a.id, f"container {c.id!r}")
        for t in a.templates:
            for i in range(1, max(t.max_replicas, 1) + 1):
                rid = t.replica_id(i)
                if rid in ids:
                    errors.append(
                        f"container {rid!r} of {ids[rid]!r} has the name of replica {i} of "
                        f"template {t.id!r} of {a.id!r}"
                    )
                claim(t.backend, f"-{i}", a.id, f"replica {rid!r}")
    return errors + _cgroup_overlaps(cgroups)
