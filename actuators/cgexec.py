"""Demo launcher: put a workload into its container's cgroup(s), then exec it.

    python -m actuators.cgexec --config FILE --container ID
    python -m actuators.cgexec --cgroup PATH [--root DIR] [--v2] -- COMMAND...

The first form reads the container's backend and ``command`` from the site configuration
(cgroup_v1 / process: cpu, cpuacct and freezer hierarchies; cgroup_v2: one unified
directory). The second form is what the process backend uses for template replicas.
The process creates the cgroup(s), moves itself in, and execs the command, so the
workload's pid is the launcher's pid (supervisord and the actuators signal it directly).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

from ecovisor.adapters.backends import BackendError
from ecovisor.adapters.cgroups import CgroupV1Backend, CgroupV2Backend
from ecovisor.contract.config_file import ConfigError, config_path, load_config, one_line


def _fail(msg: str) -> int:
    print(f"actuators.cgexec: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actuators.cgexec", description=__doc__)
    p.add_argument("--config", help="site configuration (default $ECOVISOR_CONFIG)")
    p.add_argument("--container", help="container id from the site configuration")
    p.add_argument("--cgroup", help="cgroup path (instead of --config/--container)")
    p.add_argument("--root", help="cgroup mount root (default /sys/fs/cgroup)")
    p.add_argument("--v2", action="store_true", help="--cgroup is on a cgroup v2 hierarchy")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND... (with --cgroup)")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else list(args.command)

    backend: CgroupV1Backend | CgroupV2Backend
    if args.container:
        try:
            cfg = load_config(config_path(args.config))
        except ConfigError as e:
            return _fail(one_line(e))
        c = cfg.container(args.container)
        if c is None:
            return _fail(f"container {args.container!r} is not in the site configuration")
        b = c.backend
        if b.type == "lxd":
            return _fail(f"container {c.id!r} is an LXD instance; LXD starts it, not cgexec")
        if b.type == "cgroup_v2":
            backend = CgroupV2Backend(b.cgroup or "", b.root)
        else:
            backend = CgroupV1Backend(b.cgroup or "", b.root)
        command = command or list(c.command or [])
        if not command:
            return _fail(f"container {c.id!r} has no 'command' in the site configuration")
    elif args.cgroup:
        backend = (CgroupV2Backend if args.v2 else CgroupV1Backend)(args.cgroup, args.root)
        if not command:
            return _fail("give the command after --")
    else:
        return _fail("give --container ID (with --config) or --cgroup PATH -- COMMAND")

    # "python" in a configured command means this interpreter (the project's venv)
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    exe = command[0] if os.path.sep in command[0] else shutil.which(command[0])
    if not exe:
        return _fail(f"command not found: {command[0]!r}")
    try:
        backend.create()
        backend.join(os.getpid())
    except BackendError as e:
        return _fail(str(e))
    sys.stdout.flush()
    os.execv(exe, command)
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
