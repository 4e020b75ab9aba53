"""cgroup backends of a container: v1, v2 and the embedded demo's process groups.

* ``CgroupV1Backend``  cpu (``cpu.cfs_quota_us``/``cpu.cfs_period_us``), cpuacct
  (``cpuacct.usage``) and freezer (``freezer.state``) hierarchies under a v1 mount root.
* ``CgroupV2Backend``  one unified directory: ``cpu.max``, ``cgroup.freeze``, ``cpu.stat``.
* ``ProcessBackend``   a cgroup v1 container whose processes Ecovisor starts itself (the
  embedded demo); adds ``spawn`` / ``stop`` for horizontal scaling from a template.

A limit in cores becomes a quota at the cgroup's own CFS period by the product's one
rounding rule (``power_cap.cores_to_quota_us``). See ``ecovisor.adapters.backends``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tenacity import RetryError, Retrying, retry_if_result, stop_after_delay, wait_fixed

from ecovisor.adapters.backends import BackendError, ContainerBackend
from ecovisor.core.power_cap import cores_to_quota_us, cpu_max_value, parse_cpu_max

DEFAULT_V1_ROOT = "/sys/fs/cgroup"
DEFAULT_V2_ROOT = "/sys/fs/cgroup"
V1_CONTROLLERS = ("cpu", "cpuacct", "freezer")


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


def _wait_until(done: Callable[[], bool], timeout: float, every: float) -> bool:
    """Poll ``done`` every ``every`` s until it is true (True) or ``timeout`` (False);
    its exceptions propagate."""
    try:
        Retrying(
            retry=retry_if_result(lambda ok: not ok),
            stop=stop_after_delay(timeout),
            wait=wait_fixed(every),
        )(done)
    except RetryError:
        return False
    return True


def _quota_us(cores: float, period_us: int) -> int:
    try:
        return cores_to_quota_us(cores, period_us)
    except ValueError as e:  # e.g. a period the kernel would not have
        raise BackendError(str(e)) from None


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
        quota = _quota_us(cores, period)
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
        if not _wait_until(lambda: _read(state) == target, timeout, every=0.005):
            raise BackendError(f"{state} did not reach {target} within {timeout} s")

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

    def _cpu_max(self) -> tuple[int | None, int]:
        text = _read(self.dir / "cpu.max")
        try:
            return parse_cpu_max(text)
        except ValueError as e:
            raise BackendError(f"unexpected cpu.max content {text!r} in {self.dir}: {e}") from None

    def get_cpu_limit(self) -> float | None:
        quota, period = self._cpu_max()
        return None if quota is None else quota / period

    def set_cpu_limit(self, cores: float | None) -> float | None:
        _, period = self._cpu_max()
        quota = None if cores is None else _quota_us(cores, period)
        _write(self.dir / "cpu.max", cpu_max_value(quota, period))
        return None if quota is None else quota / period

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
        try:
            self.dir.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:  # e.g. EBUSY: processes still in it
            raise BackendError(f"cannot remove {self.dir}: {e.strerror or e}") from None

    def describe(self) -> dict[str, Any]:
        return {"backend": "cgroup_v2", "cgroup": self.path, "root": str(self.root)}


def backend_of(
    kind: str | None, path: str, root: str | None = None
) -> CgroupV1Backend | CgroupV2Backend:
    """The backend of a cgroup recorded as ``{"type", "cgroup", "root"}``."""
    return (CgroupV2Backend if kind == "cgroup_v2" else CgroupV1Backend)(path, root)


def kill_all(backend: CgroupV1Backend | CgroupV2Backend, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process of a container cgroup until it is empty or ``timeout``;
    returns the pids still in it ([] when it emptied). A task of a frozen v1 freezer
    does not die on SIGKILL, so every round thaws first (a suspend still in flight could
    freeze it again)."""
    if not backend.exists():
        return []

    def gone() -> bool:
        with contextlib.suppress(BackendError):
            backend.thaw()
        for pid in backend.procs():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        return not backend.procs()

    if _wait_until(gone, timeout, every=0.05):
        return []
    return backend.procs()


# --- process group (embedded demo) -------------------------------------------------------


def cgexec_argv(path: str, root: str | None, command: list[str], uid: int) -> list[str]:
    """argv of the demo launcher placing ``command`` into cgroup ``path``, run as ``uid``
    (the app's ``EcovisorConfig.workload_uid``) when the launcher starts as root."""
    argv = [sys.executable, "-m", "actuators.cgexec", "--cgroup", path, "--uid", str(uid)]
    if root:
        argv += ["--root", root]
    return [*argv, "--", *command]


class ProcessBackend(CgroupV1Backend):
    """A cgroup v1 container whose processes Ecovisor starts (embedded demo)."""

    def __init__(self, path: str, root: str | None = None) -> None:
        super().__init__(path, root)
        self._children: list[subprocess.Popen[bytes]] = []

    def spawn(self, command: list[str], log: Path | None = None, *, uid: int) -> int:
        """Create the cgroup and start ``command`` inside it as ``uid`` (the app's
        workload uid; cgexec drops to it when started as root); return the launcher pid.
        The output goes to ``log`` (appended), else is discarded."""
        try:
            out = log.open("ab") if log else subprocess.DEVNULL
        except OSError as e:  # e.g. the --log-dir does not exist
            raise BackendError(f"cannot open the replica's log {log}: {e.strerror or e}") from None
        try:
            self.create()
            proc = subprocess.Popen(
                cgexec_argv(self.path, str(self.root), command, uid),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            raise BackendError(f"cannot start {command[0]!r}: {e.strerror or e}") from None
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

    def _gone(self) -> bool:
        self._reap()
        return not self.procs()

    def stop(self, timeout: float = 3.0) -> None:
        """Stop every process of the container, then delete its cgroups."""
        if not self.exists():
            return
        with contextlib.suppress(BackendError):
            self.thaw()  # frozen tasks never handle SIGTERM
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.procs():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass  # exited meanwhile
                except OSError as e:  # e.g. EPERM: the cgroup would never empty
                    raise BackendError(
                        f"cannot signal pid {pid} of {self.path}: {e.strerror or e}"
                    ) from None
            if _wait_until(self._gone, timeout, every=0.02):
                break
        self._reap()
        self.remove()

    def describe(self) -> dict[str, Any]:
        return {"backend": "process", "cgroup": self.path, "root": str(self.root)}
