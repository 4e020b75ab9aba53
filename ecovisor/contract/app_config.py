"""The ``apps`` section of the site configuration: an application's share, token,
containers and their backends, container templates (horizontal scaling) and policies.
See docs/configuration.md."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from ecovisor.contract.envelope import AppId, Ident
from ecovisor.contract.site_config import StrictModel
from ecovisor.core.shares import AppShare


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
        if self.type == "lxd" and not self.instance:
            raise ValueError("backend lxd needs 'instance'")
        return self


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
