"""Demo launcher: put a workload into its container's cgroup(s), then exec it.

    python -m actuators.cgexec --config FILE --container ID
    python -m actuators.cgexec --cgroup PATH [--root DIR] [--v2] --uid UID -- COMMAND...

The first form reads the container's backend and ``command`` from the site configuration
(cgroup_v1 / process: cpu, cpuacct and freezer hierarchies; cgroup_v2: one unified
directory). The second form is what the process backend uses for template replicas.
The process creates the cgroup(s), moves itself in, and execs the command, so the
workload's pid is the launcher's pid (supervisord and the actuators signal it directly).

Started as root, it drops to the app's own uid and gid (``EcovisorConfig.workload_uid``;
``--uid`` in the second form, which refuses to run as root without it) after joining the
cgroup, with no supplementary groups and no capabilities: the workload can write no
cgroup file (not even its own container's cap or freezer), signal, trace or read
``/proc/<pid>/environ`` of no other app's workload or platform process. Not started as
root, it cannot change uid and runs the command as its own user. Either way it sets
no_new_privs, so no setuid program or file capability gives the workload more, and the
workload gets a clean environment (``WORKLOAD_ENV``): none of the launcher's secrets.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import sys
from collections.abc import Mapping

from ecovisor.adapters.backends import BackendError
from ecovisor.adapters.cgroups import CgroupV1Backend, CgroupV2Backend
from ecovisor.contract.config_file import ConfigError, config_path, load_config, one_line
from ecovisor.contract.environment import ENV_VARS

PR_SET_NO_NEW_PRIVS = 38  # <linux/prctl.h>
# All a workload's environment keeps: the launcher's holds the platform's secrets (the
# actuator's internal key for replicas; tokens exported for `ecovisor up`), which the
# workload could read in its own /proc/self/environ. A command passes its own variables
# with `env NAME=VALUE ...`.
WORKLOAD_ENV = frozenset({"PATH", "PYTHONPATH", "LANG", "LANGUAGE", "TZ", *ENV_VARS})


class _DropError(Exception):
    """Privileges could not be dropped as required: the workload must not start."""


def _fail(msg: str) -> int:
    print(f"actuators.cgexec: {msg}", file=sys.stderr)
    return 2


def _set_no_new_privs() -> None:
    """prctl(PR_SET_NO_NEW_PRIVS, 1): execve never grants privileges again (setuid
    binaries, file capabilities); inherited by every child, cannot be unset."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        ul = ctypes.c_ulong  # prctl is variadic: pass the unsigned longs it reads
        rc = libc.prctl(PR_SET_NO_NEW_PRIVS, ul(1), ul(0), ul(0), ul(0))
    except (OSError, AttributeError) as e:  # no libc prctl (not Linux)
        raise _DropError(f"cannot set no_new_privs: prctl is unavailable ({e})") from None
    if rc != 0:
        err = ctypes.get_errno()
        raise _DropError(f"cannot set no_new_privs: {os.strerror(err)}")


def _status_field(name: str) -> str:
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key == name:
                return value.strip()
    return ""


def _drop_to(uid: int) -> None:
    """Become ``uid``/``uid`` (gid = uid) with no supplementary groups, for good: real,
    effective and saved ids (setuid as root sets all three), which also clears the
    permitted and effective capabilities. Checked afterwards: a securebits setting
    inherited from a parent (SECBIT_NO_SETUID_FIXUP) would keep them."""
    try:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    except OSError as e:  # e.g. EINVAL: the uid is not mapped in this user namespace
        raise _DropError(f"cannot switch to uid {uid}: {e.strerror or e}") from None
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (uid, uid, uid):
        raise _DropError(f"uid/gid still {os.getresuid()}/{os.getresgid()} after the switch")
    for caps in ("CapPrm", "CapEff", "CapAmb"):
        if int(_status_field(caps) or "0", 16):
            raise _DropError(f"{caps} not empty after switching to uid {uid}")


def _cwd() -> str:
    try:
        return os.getcwd()
    except OSError:  # removed meanwhile
        return "."


def workload_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The workload's environment: ``WORKLOAD_ENV`` and the locale (``LC_*``) only."""
    return {k: v for k, v in environ.items() if k in WORKLOAD_ENV or k.startswith("LC_")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m actuators.cgexec", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--config", help="site configuration (default $ECOVISOR_CONFIG)")
    p.add_argument("--container", help="container id from the site configuration")
    p.add_argument("--cgroup", help="cgroup path (instead of --config/--container)")
    p.add_argument("--root", help="cgroup mount root (default /sys/fs/cgroup)")
    p.add_argument("--v2", action="store_true", help="--cgroup is on a cgroup v2 hierarchy")
    p.add_argument("--uid", type=int, help="with --cgroup: the app's workload uid (gid the "
                   "same), required as root; --container takes its app's")  # fmt: skip
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND... (with --cgroup)")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else list(args.command)

    backend: CgroupV1Backend | CgroupV2Backend
    uid: int | None = args.uid
    if args.container:
        if args.uid is not None:
            return _fail("--uid goes with --cgroup; --container runs as its app's uid")
        try:
            cfg = load_config(config_path(args.config))
        except ConfigError as e:
            return _fail(one_line(e))
        c = cfg.container(args.container)
        app = cfg.owner_of(args.container)
        if c is None or app is None:
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
        uid = cfg.workload_uid(app)
    elif args.cgroup:
        backend = (CgroupV2Backend if args.v2 else CgroupV1Backend)(args.cgroup, args.root)
        if not command:
            return _fail("give the command after --")
    else:
        return _fail("give --container ID (with --config) or --cgroup PATH -- COMMAND")
    as_root = os.geteuid() == 0
    if as_root and uid is None:
        return _fail("started as root: give --uid (the app's workload uid); "
                     "cgexec does not run a workload as root")  # fmt: skip
    if uid is not None and not 0 < uid < 2**31 - 1:
        return _fail(f"--uid {uid}: not a workload uid (1..2147483646)")

    # "python" in a configured command means this interpreter (the project's venv)
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    try:
        backend.create()
        backend.join(os.getpid())  # as root: the workload cannot move itself later
    except BackendError as e:
        return _fail(str(e))
    try:
        if as_root and uid is not None:  # (as root without a uid returned above)
            _drop_to(uid)
        _set_no_new_privs()
    except _DropError as e:
        return _fail(str(e))
    who = f"uid {os.getuid()}"
    # looked up as the workload's user: PATH entries and modes it can use
    exe = command[0] if os.path.sep in command[0] else shutil.which(command[0])
    if not exe:
        return _fail(f"command not found for {who}: {command[0]!r}")
    if not os.access(".", os.R_OK | os.X_OK):
        return _fail(f"the working directory {_cwd()} is not readable by {who}")
    sys.stdout.flush()
    try:
        os.execve(exe, command, workload_env(os.environ))
    except OSError as e:  # e.g. EACCES: the interpreter below a directory it cannot enter
        return _fail(f"cannot run {exe} as {who}: {e.strerror or e}")
    return 0  # pragma: no cover - exec does not return


if __name__ == "__main__":
    sys.exit(main())
