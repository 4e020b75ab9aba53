"""Where a container lives, from the site configuration: its app, node, backend and its
power model, including replicas started from a template (horizontal scaling).

Replica ``i`` (1-based) of template ``T`` is container ``T-i``; its backend is the
template's with the cgroup path suffixed ``-i`` (process backend) or the LXD instance
name suffixed ``-i`` (copied from the template's instance)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ecovisor.contract.config import AppConfig, ContainerTemplate, EcovisorConfig, NodeConfig
from ecovisor.contract.config import ContainerBackend as BackendConfig
from ecovisor.core.attribution import PowerModel
from ecovisor.core.power_cap import CpuQuota, quota_for_container_cap


@dataclass(frozen=True)
class Placement:
    container: str
    app: str
    node: str
    backend: BackendConfig
    template: str | None = None
    size: float = 1.0


def replica_id(template: str, index: int) -> str:
    return f"{template}-{index}"


def replica_backend(tpl: ContainerTemplate, index: int) -> BackendConfig:
    b = tpl.backend
    if b.type == "lxd":
        return b.model_copy(update={"instance": f"{b.instance}-{index}"})
    return b.model_copy(update={"cgroup": f"{b.cgroup}-{index}"})


def find_template(cfg: EcovisorConfig, template: str) -> tuple[AppConfig, ContainerTemplate]:
    for a in cfg.apps:
        for t in a.templates:
            if t.id == template:
                return a, t
    raise KeyError(f"no container template {template!r} in the site configuration")


def placement(cfg: EcovisorConfig, container: str) -> Placement:
    """The placement of a configured container or of a template replica (ownership by
    the configuration's one rule, ``EcovisorConfig.locate``)."""
    where = cfg.locate(container)
    if where is None:
        raise KeyError(f"container {container!r} is not in the site configuration")
    if where.template is None:
        c = cfg.container(container)
        assert c is not None
        return Placement(c.id, where.app, c.node, c.backend, size=c.size)
    _, t = find_template(cfg, where.template)
    assert where.replica is not None
    return Placement(container, where.app, t.node, replica_backend(t, where.replica),
                     template=t.id)  # fmt: skip


def node_model(node: NodeConfig) -> PowerModel:
    """The node's power model over its configured cores (the same one the ledger uses)."""
    return node.model()  # type: ignore[no-any-return]


def node_members(cfg: EcovisorConfig, node: str, replicas: Iterable[str] = ()) -> list[str]:
    """Containers on a node: the configured ones plus running replicas placed there."""
    out = [c.id for a in cfg.apps for c in a.containers if c.node == node]
    for r in replicas:
        try:
            if placement(cfg, r).node == node and r not in out:
                out.append(r)
        except KeyError:
            continue
    return out


def cap_quota(
    cfg: EcovisorConfig,
    container: str,
    watts: float | None,
    replicas: Iterable[str] = (),
    period_us: int = 100_000,
) -> CpuQuota:
    """W cap -> CPU quota through the core power model (idle floor included).
    Raises KeyError (unknown container) or power_cap.CapRejected (a ValueError)."""
    p = placement(cfg, container)
    node = cfg.node(p.node)
    members = node_members(cfg, p.node, replicas)
    sizes = {m: _size(cfg, m) for m in [*members, container]}
    return quota_for_container_cap(
        node_model(node),
        watts,
        container=container,
        members=members,
        idle_mode=cfg.site.shape.idle_attribution,
        sizes=sizes,
        period_us=period_us,
    )


def modelled_power_w(cfg: EcovisorConfig, container: str, busy_cores: float) -> float:
    """Modelled power of a container using ``busy_cores`` alone on its node: its active
    power under the node model plus its idle share (0 under attribution ``none``).
    Used by tests and the docs to state what a cap means in CPU."""
    p = placement(cfg, container)
    node = cfg.node(p.node)
    model = node_model(node)
    idle = cap_quota(cfg, container, None).idle_share_w
    return idle + model.dynamic_w(min(busy_cores / model.cores, 1.0))


def _size(cfg: EcovisorConfig, container: str) -> float:
    try:
        return placement(cfg, container).size
    except KeyError:
        return 1.0
