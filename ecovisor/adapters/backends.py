"""Container backends: how one container's CPU limit, freezing and CPU usage are reached.

* ``CgroupV1Backend``  cpu (``cpu.cfs_quota_us``/``cpu.cfs_period_us``), cpuacct
  (``cpuacct.usage``) and freezer (``freezer.state``) hierarchies under a v1 mount root.
* ``CgroupV2Backend``  one unified directory: ``cpu.max``, ``cgroup.freeze``, ``cpu.stat``.
* ``ProcessBackend``   a cgroup v1 container whose processes Ecovisor starts itself (the
  embedded demo); adds ``spawn`` / ``stop`` for horizontal scaling from a template.
* ``LxdBackend``       an LXD instance through pylxd: ``limits.cpu.allowance`` (as the
  Ecovisor prototype did), freeze/unfreeze via the instance state, usage from the state.

CPU limits are in cores (0.3 = 30 % of one core); ``None`` means unlimited. Every failure
(missing cgroup, permission, unreachable LXD) raises ``BackendError`` with a readable
reason; the actuator service turns it into an ``ok=False`` acknowledgement.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from ecovisor.contract.config import ContainerBackend as BackendConfig

DEFAULT_V1_ROOT = "/sys/fs/cgroup"
DEFAULT_V2_ROOT = "/sys/fs/cgroup"
DEFAULT_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel rejects cfs quotas below 1 ms
V1_CONTROLLERS = ("cpu", "cpuacct", "freezer")


class BackendError(RuntimeError):
    """A container action that could not be carried out (the reason is the message)."""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise BackendError(f"{path} does not exist (container cgroup missing?)") from None
    except OSError as e:
        raise BackendError(f"cannot read {path}: {e.strerror or e}") from None


def _write(path: Path, value: str) -> None:
    if not path.parent.is_dir():
        raise BackendError(f"cgroup {path.parent} does not exist")
    try:
        # Each write to a cgroup file is one kernel call; open without truncating
        # semantics that matter (cgroupfs ignores O_TRUNC) and write the whole value.
        with path.open("w") as fh:
            fh.write(value)
    except OSError as e:
        raise BackendError(f"cannot write {value!r} to {path}: {e.strerror or e}") from None


def cores_to_quota_us(cores: float, period_us: int) -> int:
    """CFS quota for a CPU limit in cores over a period (at least the kernel minimum)."""
    if not cores > 0:
        raise ValueError(f"a CPU limit must be > 0 cores, got {cores!r}")
    return max(MIN_QUOTA_US, round(cores * period_us))


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


# --- cgroup v1 -----------------------------------------------------------------------


class CgroupV1Backend(ContainerBackend):
    """cgroup v1: separate cpu, cpuacct and freezer hierarchies (co-mounted also works,
    since the usual mounts expose ``cpu`` and ``cpuacct`` as directories or symlinks)."""

    def __init__(self, path: str, root: str | None = None) -> None:
        self.path = path.strip("/")
        self.root = Path(root or DEFAULT_V1_ROOT)
        self.name = self.path

    def dir(self, controller: str) -> Path:
        return self.root / controller / self.path

    def exists(self) -> bool:
        return all(self.dir(c).is_dir() for c in V1_CONTROLLERS)

    def create(self) -> None:
        for c in V1_CONTROLLERS:
            try:
                self.dir(c).mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise BackendError(f"cannot create cgroup {self.dir(c)}: {e.strerror}") from None

    def join(self, pid: int) -> None:
        """Move a process into every controller of this container."""
        for c in V1_CONTROLLERS:
            _write(self.dir(c) / "cgroup.procs", str(pid))

    def procs(self) -> list[int]:
        d = self.dir("cpuacct")
        if not d.is_dir():
            return []
        return [int(x) for x in _read(d / "cgroup.procs").split()]

    def period_us(self) -> int:
        return int(_read(self.dir("cpu") / "cpu.cfs_period_us"))

    def get_cpu_limit(self) -> float | None:
        quota = int(_read(self.dir("cpu") / "cpu.cfs_quota_us"))
        return None if quota < 0 else quota / self.period_us()

    def set_cpu_limit(self, cores: float | None) -> float | None:
        qfile = self.dir("cpu") / "cpu.cfs_quota_us"
        if cores is None:
            _write(qfile, "-1")
            return None
        period = self.period_us()
        quota = cores_to_quota_us(cores, period)
        _write(qfile, str(quota))
        return quota / period

    def freeze(self) -> None:
        self._freezer("FROZEN")

    def thaw(self) -> None:
        self._freezer("THAWED")

    def _freezer(self, target: str, timeout: float = 2.0) -> None:
        state = self.dir("freezer") / "freezer.state"
        _write(state, target)
        # FREEZING is transitional: wait until every task has stopped, so "suspended"
        # in the acknowledgement means no CPU from here on.
        deadline = time.monotonic() + timeout
        while _read(state) != target:
            if time.monotonic() > deadline:
                raise BackendError(f"{state} did not reach {target} within {timeout} s")
            time.sleep(0.005)

    def is_frozen(self) -> bool:
        return _read(self.dir("freezer") / "freezer.state") == "FROZEN"

    def usage_s(self) -> float:
        return int(_read(self.dir("cpuacct") / "cpuacct.usage")) / 1e9

    def remove(self) -> None:
        """Delete the (empty) cgroup directories; nested leaf first is the caller's job."""
        for c in V1_CONTROLLERS:
            d = self.dir(c)
            with contextlib.suppress(FileNotFoundError):
                try:
                    d.rmdir()
                except OSError as e:
                    if e.errno != errno.ENOENT:
                        raise BackendError(f"cannot remove {d}: {e.strerror}") from None

    def describe(self) -> dict[str, Any]:
        return {"backend": "cgroup_v1", "cgroup": self.path, "root": str(self.root)}


# --- cgroup v2 -----------------------------------------------------------------------


class CgroupV2Backend(ContainerBackend):
    """cgroup v2 (unified hierarchy): ``cpu.max`` = "<quota|max> <period>",
    ``cgroup.freeze`` = 0/1, ``cpu.stat`` usage_usec."""

    def __init__(self, path: str, root: str | None = None) -> None:
        self.path = path.strip("/")
        self.root = Path(root or DEFAULT_V2_ROOT)
        self.name = self.path

    @property
    def dir(self) -> Path:
        return self.root / self.path

    def exists(self) -> bool:
        return self.dir.is_dir()

    def create(self) -> None:
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise BackendError(f"cannot create cgroup {self.dir}: {e.strerror}") from None

    def join(self, pid: int) -> None:
        _write(self.dir / "cgroup.procs", str(pid))

    def procs(self) -> list[int]:
        f = self.dir / "cgroup.procs"
        return [int(x) for x in _read(f).split()] if f.exists() else []

    def _cpu_max(self) -> tuple[str, int]:
        parts = _read(self.dir / "cpu.max").split()
        if len(parts) != 2:
            raise BackendError(f"unexpected cpu.max content {parts!r} in {self.dir}")
        return parts[0], int(parts[1])

    def get_cpu_limit(self) -> float | None:
        quota, period = self._cpu_max()
        return None if quota == "max" else int(quota) / period

    def set_cpu_limit(self, cores: float | None) -> float | None:
        _, period = self._cpu_max()
        if cores is None:
            _write(self.dir / "cpu.max", f"max {period}")
            return None
        quota = cores_to_quota_us(cores, period)
        _write(self.dir / "cpu.max", f"{quota} {period}")
        return quota / period

    def freeze(self) -> None:
        _write(self.dir / "cgroup.freeze", "1")

    def thaw(self) -> None:
        _write(self.dir / "cgroup.freeze", "0")

    def is_frozen(self) -> bool:
        # cgroup.events "frozen 1" is the kernel's confirmation; cgroup.freeze is the
        # request. Report the request when events are unavailable.
        events = self.dir / "cgroup.events"
        if events.exists():
            for line in _read(events).splitlines():
                k, _, v = line.partition(" ")
                if k == "frozen":
                    return v.strip() == "1"
        return _read(self.dir / "cgroup.freeze") == "1"

    def usage_s(self) -> float:
        for line in _read(self.dir / "cpu.stat").splitlines():
            k, _, v = line.partition(" ")
            if k == "usage_usec":
                return int(v) / 1e6
        raise BackendError(f"no usage_usec in {self.dir / 'cpu.stat'}")

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.dir.rmdir()

    def describe(self) -> dict[str, Any]:
        return {"backend": "cgroup_v2", "cgroup": self.path, "root": str(self.root)}


# --- process group (embedded demo) -------------------------------------------------------


def cgexec_argv(path: str, root: str | None, command: list[str]) -> list[str]:
    """argv of the demo launcher placing ``command`` into cgroup ``path``."""
    argv = [sys.executable, "-m", "actuators.cgexec", "--cgroup", path]
    if root:
        argv += ["--root", root]
    return [*argv, "--", *command]


class ProcessBackend(CgroupV1Backend):
    """A cgroup v1 container whose processes Ecovisor starts (embedded demo)."""

    def __init__(self, path: str, root: str | None = None) -> None:
        super().__init__(path, root)
        self._children: list[subprocess.Popen[bytes]] = []

    def spawn(self, command: list[str], log: Path | None = None) -> int:
        """Create the cgroup and start ``command`` inside it; return the launcher pid."""
        self.create()
        out = log.open("ab") if log else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(
                cgexec_argv(self.path, str(self.root), command),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            raise BackendError(f"cannot start {command[0]!r}: {e.strerror}") from None
        finally:
            if log:
                out.close()  # type: ignore[union-attr]
        self._children.append(proc)
        return proc.pid

    def _reap(self) -> None:
        """Collect our exited launchers so none linger as zombies (processes left from an
        earlier run of the service are not our children; init reaps those)."""
        self._children = [c for c in self._children if c.poll() is None]

    def running(self) -> bool:
        return bool(self.procs())

    def stop(self, timeout: float = 3.0) -> None:
        """Stop every process of the container, then delete its cgroups."""
        if not self.exists():
            return
        with contextlib.suppress(BackendError):
            self.thaw()  # frozen tasks never handle SIGTERM
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.procs():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + timeout
            while self.procs() and time.monotonic() < deadline:
                self._reap()
                time.sleep(0.02)
            if not self.procs():
                break
        self._reap()
        self.remove()

    def describe(self) -> dict[str, Any]:
        return {"backend": "process", "cgroup": self.path, "root": str(self.root)}


# --- LXD -------------------------------------------------------------------------------

ALLOWANCE_PERIOD_MS = 100


def cores_to_allowance(cores: float) -> str:
    """LXD ``limits.cpu.allowance`` as a hard limit: "<quota>ms/<period>ms"."""
    if not cores > 0:
        raise ValueError(f"a CPU limit must be > 0 cores, got {cores!r}")
    quota_ms = max(1, round(cores * ALLOWANCE_PERIOD_MS))
    return f"{quota_ms}ms/{ALLOWANCE_PERIOD_MS}ms"


def allowance_to_cores(value: str | None) -> float | None:
    """Cores of a hard ``limits.cpu.allowance`` ("25ms/100ms"); None for unset or a soft
    percentage (a share under contention, not a limit)."""
    if not value or value.endswith("%"):
        return None
    quota, _, period = value.partition("/")
    try:
        return float(quota.removesuffix("ms")) / float(period.removesuffix("ms"))
    except ValueError:
        raise BackendError(f"unreadable limits.cpu.allowance {value!r}") from None


ALLOWANCE_KEY = "limits.cpu.allowance"


class LxdBackend(ContainerBackend):
    """An LXD instance. ``endpoint`` is a unix socket path or an https/http URL; None
    uses the local LXD socket. The pylxd client is created lazily and dropped on a
    connection failure, so an LXD restart is picked up on the next action."""

    def __init__(
        self,
        instance: str,
        endpoint: str | None = None,
        cert: tuple[str, str] | None = None,
        verify: bool | str = True,
        timeout: float = 5.0,
    ) -> None:
        self.instance = instance
        self.endpoint = endpoint
        self.cert, self.verify, self.timeout = cert, verify, timeout
        self.name = instance
        self._client: Any = None

    def _lxd(self) -> Any:
        import pylxd

        if self._client is None:
            try:
                self._client = pylxd.Client(
                    endpoint=self.endpoint, cert=self.cert, verify=self.verify, timeout=self.timeout
                )
            except Exception as e:  # pylxd raises several types for one cause
                raise BackendError(
                    f"LXD at {self.endpoint or 'local socket'} unreachable: {e}"
                ) from None
        return self._client

    def _call(self, fn: Any) -> Any:
        from pylxd import exceptions as lxd_exc
        from requests.exceptions import RequestException

        try:
            return fn(self._lxd())
        except lxd_exc.NotFound:
            raise BackendError(f"LXD instance {self.instance!r} not found") from None
        except (lxd_exc.LXDAPIException, lxd_exc.ClientConnectionFailed) as e:
            self._client = None
            raise BackendError(f"LXD error on {self.instance!r}: {e}") from None
        except RequestException as e:
            self._client = None
            raise BackendError(
                f"LXD at {self.endpoint or 'local socket'} unreachable: {e}"
            ) from None

    def _instance(self, client: Any) -> Any:
        return client.instances.get(self.instance)

    def exists(self) -> bool:
        try:
            return bool(self._call(lambda c: c.instances.exists(self.instance)))
        except BackendError:
            return False

    def get_cpu_limit(self) -> float | None:
        inst = self._call(self._instance)
        return allowance_to_cores(inst.config.get(ALLOWANCE_KEY))

    def get_allowance(self) -> str | None:
        return self._call(self._instance).config.get(ALLOWANCE_KEY)

    def set_allowance(self, value: str | None) -> None:
        """Write the raw allowance (None deletes the key, LXD's default: unlimited)."""

        def put(c: Any) -> None:
            inst = self._instance(c)
            config = dict(inst.config)
            if value is None:
                config.pop(ALLOWANCE_KEY, None)
            else:
                config[ALLOWANCE_KEY] = value
            inst.config = config
            inst.save(wait=True)

        self._call(put)

    def snapshot_limit(self) -> Any:
        # the raw allowance, so a soft "50%" share comes back as it was
        return self.get_allowance()

    def restore_limit(self, snapshot: Any) -> float | None:
        self.set_allowance(snapshot)
        return allowance_to_cores(snapshot)

    def set_cpu_limit(self, cores: float | None) -> float | None:
        self.set_allowance(None if cores is None else cores_to_allowance(cores))
        return None if cores is None else allowance_to_cores(cores_to_allowance(cores))

    def freeze(self) -> None:
        self._call(lambda c: self._instance(c).freeze(wait=True))

    def thaw(self) -> None:
        self._call(lambda c: self._instance(c).unfreeze(wait=True))

    def is_frozen(self) -> bool:
        return bool(self._call(lambda c: self._instance(c).status == "Frozen"))

    def usage_s(self) -> float:
        st = self._call(lambda c: self._instance(c).state())
        return float((st.cpu or {}).get("usage", 0)) / 1e9

    # horizontal scaling: copy a template instance, start, stop, delete
    def create_copy(self, source: str) -> None:
        def create(c: Any) -> None:
            c.instances.create(
                {"name": self.instance, "source": {"type": "copy", "source": source}},
                wait=True,
            )
            c.instances.get(self.instance).start(wait=True)

        self._call(create)

    def destroy(self) -> None:
        def delete(c: Any) -> None:
            inst = self._instance(c)
            if inst.status != "Stopped":
                inst.stop(wait=True)
            inst.delete(wait=True)

        self._call(delete)

    def describe(self) -> dict[str, Any]:
        return {"backend": "lxd", "instance": self.instance, "endpoint": self.endpoint}


def make_backend(cfg: BackendConfig) -> ContainerBackend:
    """The backend for a container's configuration."""
    if cfg.type == "cgroup_v1":
        return CgroupV1Backend(cfg.cgroup or "", cfg.root)
    if cfg.type == "process":
        return ProcessBackend(cfg.cgroup or "", cfg.root)
    if cfg.type == "cgroup_v2":
        return CgroupV2Backend(cfg.cgroup or "", cfg.root)
    if cfg.type == "lxd":
        return LxdBackend(cfg.instance or "", cfg.lxd_endpoint)
    raise BackendError(f"unknown backend type {cfg.type!r}")  # pragma: no cover
