"""Ending the containers the embedded stack launched when it stops: thaw their cgroups
(a task of a frozen cgroup v1 freezer handles no signal, not even SIGKILL), kill any
process still in them, and remove the emptied cgroups. Used by ``stack.down`` and by the
clean-up of a dead supervisord's leftovers. See docs/embedded-stack.md."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ecovisor.adapters.backends import BackendError
from ecovisor.adapters.cgroups import (
    V1_CONTROLLERS,
    CgroupV1Backend,
    CgroupV2Backend,
    backend_of,
    kill_all,
)

Printer = Callable[[str], None]


def container_backends(
    cgroups: list[dict[str, Any]],
) -> list[CgroupV1Backend | CgroupV2Backend]:
    """The backends of the cgroups recorded in ``stack.json`` (``Plan.cgroups``)."""
    return [backend_of(cg.get("type"), cg["cgroup"], cg.get("root"))
            for cg in cgroups if cg.get("cgroup")]  # fmt: skip


def thaw_cgroups(cgroups: list[dict[str, Any]], say: Printer) -> None:
    """Thaw the stack's container cgroups (v1 ``freezer.state`` THAWED, v2
    ``cgroup.freeze`` 0): a task of a frozen v1 freezer handles no signal, not even
    SIGKILL, so a container suspended through the API would stall its stop forever."""
    for b in container_backends(cgroups):
        try:
            if not b.exists():
                continue
            frozen = b.is_frozen()
            b.thaw()  # also when FREEZING, half way
            if frozen:
                say(f"thawed suspended container cgroup {b.path}")
        except (BackendError, OSError) as e:
            say(f"could not thaw cgroup {b.path}: {e}")


def cgroup_pids(cgroups: list[dict[str, Any]]) -> list[int]:
    """Every process still in the stack's container cgroups."""
    out: list[int] = []
    for b in container_backends(cgroups):
        with contextlib.suppress(BackendError, OSError):
            out += b.procs() if b.exists() else []
    return out


def kill_cgroup_processes(
    cgroups: list[dict[str, Any]], say: Printer, timeout: float = 5.0
) -> list[int]:
    """SIGKILL (after a thaw) every process still in the stack's container cgroups, e.g.
    a child that left supervisord's process group; wait at most ``timeout`` s for each.
    Returns the pids that were found (the ones still alive are reported)."""
    found: list[int] = []
    for b in container_backends(cgroups):
        try:
            pids = b.procs() if b.exists() else []
            if not pids:
                continue
            found += pids
            left = kill_all(b, timeout)
        except (BackendError, OSError) as e:
            say(f"could not empty cgroup {b.path}: {e}")
            continue
        say(f"killed {len(pids)} leftover process(es) of cgroup {b.path}: {pids}")
        if left:
            say(f"cgroup {b.path} still has processes {left} after {timeout:.0f} s")
    return found


def release_cgroups(cgroups: list[dict[str, Any]], say: Printer) -> None:
    """Remove the (now empty) cgroups of the containers the stack launched, so a cap,
    quota or freeze of this run never outlives it: the embedded broker keeps no state,
    and with an external broker the container actuator re-applies the last setpoints."""
    for cg in cgroups:
        path, root = cg.get("cgroup"), cg.get("root")
        if not path:
            continue
        backend = backend_of(cg.get("type"), path, root)
        try:
            if backend.exists() and backend.procs():
                say(f"cgroup {path} still has processes; left in place")
                continue
            backend.remove()
        except (BackendError, OSError) as e:
            say(f"could not remove cgroup {path}: {e}")
            continue
        # and the parents the launcher created (e.g. ecovisor/<site>), while empty: the
        # kernel refuses rmdir of a cgroup with children or tasks, so nothing shared goes
        base = Path(root or "/sys/fs/cgroup")
        dirs = [base] if cg.get("type") == "cgroup_v2" else [base / c for c in V1_CONTROLLERS]
        for d in dirs:
            for parent in list(Path(path.strip("/")).parents)[:-1]:
                try:
                    (d / parent).rmdir()
                except OSError:
                    break
