"""Container backends: how one container's CPU limit, freezing and CPU usage are reached.

This module holds what every backend shares: the interface (``ContainerBackend``), its
one error (``BackendError``) and the factory from a container's configured backend
(``make_backend``). The implementations:

* ``ecovisor.adapters.cgroups``  cgroup v1 (``CgroupV1Backend``), cgroup v2
  (``CgroupV2Backend``) and the embedded demo's ``ProcessBackend`` (a cgroup v1
  container whose processes Ecovisor starts itself);
* ``ecovisor.adapters.lxd``      an LXD instance through pylxd (``LxdBackend``).

CPU limits are in cores (0.3 = 30 % of one core); ``None`` means unlimited. Cores become
a kernel quota by one rule, ``ecovisor.core.power_cap.cores_to_quota_us`` (rounded
down). Every failure (missing cgroup, permission, unreachable LXD) raises
``BackendError`` with a readable reason; the actuator service turns it into an
``ok=False`` acknowledgement.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

from ecovisor.contract.app_config import ContainerBackend as BackendConfig


class BackendError(RuntimeError):
    """A container action that could not be carried out (the reason is the message)."""


class ContainerBackend(ABC):
    """One container's controls. Implementations raise BackendError on failure."""

    name: str

    @abstractmethod
    def exists(self) -> bool: ...

    @abstractmethod
    def get_cpu_limit(self) -> float | None:
        """The CPU limit in force, in cores (None = unlimited)."""

    @abstractmethod
    def set_cpu_limit(self, cores: float | None) -> float | None:
        """Apply a CPU limit in cores (None = unlimited); return the value written."""

    @abstractmethod
    def freeze(self) -> None: ...

    @abstractmethod
    def thaw(self) -> None: ...

    @abstractmethod
    def is_frozen(self) -> bool: ...

    @abstractmethod
    def usage_s(self) -> float:
        """Cumulative CPU seconds consumed by the container."""

    def snapshot_limit(self) -> Any:
        """The limit in force in the backend's own terms (JSON-able), to restore later."""
        return self.get_cpu_limit()

    def restore_limit(self, snapshot: Any) -> float | None:
        """Put back a limit taken by ``snapshot_limit``; return it in cores."""
        return self.set_cpu_limit(snapshot)

    def describe(self) -> dict[str, Any]:
        return {"backend": type(self).__name__, "name": self.name}


def make_backend(cfg: BackendConfig) -> ContainerBackend:
    """The backend for a container's configuration."""
    # imported here: the implementations import this module's interface
    from ecovisor.adapters.cgroups import CgroupV1Backend, CgroupV2Backend, ProcessBackend
    from ecovisor.adapters.lxd import LxdBackend

    if cfg.type == "cgroup_v1":
        return CgroupV1Backend(cfg.cgroup or "", cfg.root)
    if cfg.type == "process":
        return ProcessBackend(cfg.cgroup or "", cfg.root)
    if cfg.type == "cgroup_v2":
        return CgroupV2Backend(cfg.cgroup or "", cfg.root)
    if cfg.type == "lxd":
        return LxdBackend(cfg.instance or "", cfg.lxd_endpoint)
    raise BackendError(f"unknown backend type {cfg.type!r}")  # pragma: no cover
