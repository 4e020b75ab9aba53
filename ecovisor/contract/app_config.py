"""The ``apps`` section of the site configuration: an application's share, token,
containers and their backends, container templates (horizontal scaling) and policies.
See docs/configuration.md."""

from __future__ import annotations

import posixpath
from typing import Annotated, Literal

from pydantic import Field, model_validator

from ecovisor.contract.envelope import AppId, Ident
from ecovisor.contract.site_config import StrictModel
from ecovisor.core.shares import AppShare

# Where cgroup hierarchies are mounted unless a backend's ``root`` says otherwise (both
# v1, whose controllers are directories below it, and v2).
DEFAULT_CGROUP_ROOT = "/sys/fs/cgroup"

# Bounds of ``run_as_uid``: no system account (< 1000, root included), not ``nobody``
# (65534, shared by many daemons) nor 65535 (-1 in 16 bits), below 2**31 - 1 (tools
# that take uids as signed 32-bit). The default rule is EcovisorConfig.workload_uid.
MIN_RUN_AS_UID = 1000
MAX_RUN_AS_UID = 2**31 - 2
SHARED_UIDS = (65534, 65535)


class ContainerBackend(StrictModel):
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
        if self.cgroup is not None:
            # a path that leaves its place ('..') or is the hierarchy's root would let the
            # isolation check compare names that are not the directories written to
            parts = self.cgroup.split("/")
            if ".." in parts or not self.cgroup_parts():
                raise ValueError(f"cgroup {self.cgroup!r}: a path below the root, without '..'")
        if self.type == "lxd" and not self.instance:
            raise ValueError("backend lxd needs 'instance'")
        return self

    def cgroup_parts(self, suffix: str = "") -> tuple[str, ...]:
        """The cgroup's path as its directories (``//`` and ``.`` removed), the last one
        suffixed (a replica's ``-i``)."""
        parts = tuple(p for p in (self.cgroup or "").split("/") if p not in ("", "."))
        return (*parts[:-1], parts[-1] + suffix) if parts else parts

    def cgroup_tree(self) -> tuple[str, str]:
        """Which hierarchy the cgroup is in: v1 (also ``process``) or v2, and its mount
        root (default ``DEFAULT_CGROUP_ROOT``), normalised."""
        root = posixpath.normpath(self.root or DEFAULT_CGROUP_ROOT)
        return ("v2" if self.type == "cgroup_v2" else "v1", root)


class ContainerConfig(StrictModel):
    id: Ident
    node: Ident
    backend: ContainerBackend
    size: float = Field(1.0, gt=0, description="relative size for idle attribution 'size'")
    command: list[str] | None = Field(
        None, description="embedded demo: a workload started inside the container's cgroup"
    )


class ContainerTemplate(StrictModel):
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


class PolicyConfig(StrictModel):
    name: Annotated[str, Field(pattern=r"^[a-z_][a-z0-9_]*$")]
    args: list[str] = Field(default_factory=list)


class AppConfig(StrictModel):
    id: AppId
    token: str = Field(min_length=8, max_length=4096, repr=False)  # as Command.token
    shares: AppShare = AppShare()
    containers: list[ContainerConfig] = Field(default_factory=list)
    templates: list[ContainerTemplate] = Field(default_factory=list)
    policies: list[PolicyConfig] = Field(default_factory=list)
    run_as_uid: int | None = Field(
        None, ge=MIN_RUN_AS_UID, le=MAX_RUN_AS_UID,
        description="uid (and gid) of the app's workloads when cgexec starts as root; "
        "default EcovisorConfig.workload_uid's rule",
    )  # fmt: skip

    @model_validator(mode="after")
    def _uid_not_shared(self) -> AppConfig:
        if self.run_as_uid in SHARED_UIDS:
            raise ValueError(f"run_as_uid {self.run_as_uid} is shared by other programs")
        return self
