"""The embedded stack: every Ecovisor process of a site, supervised by supervisord.

``plan(cfg)`` turns a site configuration into a list of services (pure, no I/O besides
locating binaries and modules). ``write_supervisord_conf`` renders them into
``<state_dir>/supervisord.conf``. ``up``/``down``/``status`` drive supervisord through its
XML-RPC interface on a unix socket in the state dir. See docs/embedded-stack.md.

Start order: supervisord starts only the servers (Kafka-compatible broker, MQTT broker,
time-series store) on its own; ``up`` waits until they answer, creates every Kafka topic,
then starts the other services in priority order. So no service ever sees a missing topic.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shlex
import signal
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ecovisor.adapters.kafka import KafkaUnavailable, create_topics
from ecovisor.contract import topics
from ecovisor.contract.config import (
    DEFAULT_CONFIG_ENV,
    ENV_INFLUXDB_URL,
    ENV_KAFKA_BOOTSTRAP,
    ENV_MQTT_HOST,
    ENV_MQTT_PORT,
    EcovisorConfig,
    influxdb_url,
    kafka_bootstrap,
    mqtt_endpoint,
)
from ecovisor.embedded import servers as embedded
from ecovisor.embedded.servers import StackError

# Priorities (lower starts first, stops last).
PRIO_SERVER = 10
PRIO_BRIDGE = 20
PRIO_LEDGER = 30
PRIO_HISTORY = 40
PRIO_ACTUATOR = 50
PRIO_COLLECTOR = 60
PRIO_WORKLOAD = 70
PRIO_API = 80
PRIO_POLICY = 90

Printer = Callable[[str], None]


@dataclass(frozen=True)
class Service:
    """One supervised program."""

    name: str
    command: list[str]
    priority: int
    server: bool = False  # started by supervisord itself (before topics exist)
    port: int | None = None  # servers: the port that answers when ready
    module: str | None = None  # python -m module (product services)


@dataclass
class Plan:
    services: list[Service] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # readable notes
    env: dict[str, str] = field(default_factory=dict)
    bootstrap: str = ""
    topics: list[str] = field(default_factory=list)
    # cgroups of the containers the stack launches (released when the stack stops)
    cgroups: list[dict[str, str | None]] = field(default_factory=list)


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def state_dir_of(cfg: EcovisorConfig, base: Path | None = None) -> Path:
    p = Path(cfg.stack.state_dir)
    return p if p.is_absolute() else (base or Path.cwd()) / p


def plan(
    cfg: EcovisorConfig,
    config_file: Path,
    state_dir: Path,
    python: str = sys.executable,
    exists: Callable[[str], bool] = module_exists,
) -> Plan:
    """Every service the site configuration asks for; missing modules are skipped."""
    p = Plan()
    st = cfg.stack
    ext_kafka = bool(os.environ.get(ENV_KAFKA_BOOTSTRAP) or st.kafka_bootstrap)
    p.bootstrap = kafka_bootstrap(cfg)
    mqtt_host, mqtt_port = mqtt_endpoint(cfg)
    p.env = {
        DEFAULT_CONFIG_ENV: str(config_file),
        ENV_KAFKA_BOOTSTRAP: p.bootstrap,
        ENV_MQTT_HOST: mqtt_host,
        ENV_MQTT_PORT: str(mqtt_port),
        "PYTHONUNBUFFERED": "1",
    }
    data = state_dir / "data"

    if not ext_kafka:
        kafka = embedded.tansu_command(st.kafka_port)
        p.services.append(Service("kafka", kafka, PRIO_SERVER, True, st.kafka_port))
    if st.mqtt_embedded:
        p.services.append(
            Service(
                "mqtt",
                embedded.mqtt_command(mqtt_port, data / "mqtt"),
                PRIO_SERVER,
                True,
                mqtt_port,
            )
        )

    ts_url = influxdb_url(cfg)
    if st.timeseries in ("auto", "victoria-metrics") and not (st.timeseries == "auto" and ts_url):
        vm = embedded.victoria_metrics_command(st.victoria_metrics_port, data / "victoria-metrics")
        if vm:
            p.services.append(
                Service("victoria-metrics", vm, PRIO_SERVER, True, st.victoria_metrics_port)
            )
            ts_url = f"http://127.0.0.1:{st.victoria_metrics_port}"
        else:
            p.skipped.append("victoria-metrics: not installed (no time-series store)")
            ts_url = None if st.timeseries == "victoria-metrics" else ts_url
    elif st.timeseries == "none":
        ts_url = None
    if ts_url:
        p.env[ENV_INFLUXDB_URL] = ts_url

    def py(name: str, module: str, prio: int, *args: str) -> None:
        if not exists(module):
            p.skipped.append(f"{name}: module {module} is not available yet")
            return
        cmd = [python, "-m", module, "--config", str(config_file), *args]
        p.services.append(Service(name, cmd, prio, module=module))

    py("bridge", "streams.bridge", PRIO_BRIDGE)
    py("ledger", "streams.ledger", PRIO_LEDGER)
    if ts_url:
        py("history", "streams.history", PRIO_HISTORY)
    else:
        p.skipped.append("history: no time-series store configured or installed")
    containers = [c for a in cfg.apps for c in a.containers]
    if containers or any(a.templates for a in cfg.apps):
        py("actuator-containers", "actuators.containers", PRIO_ACTUATOR)
    if cfg.site.battery:
        py("actuator-battery", "actuators.battery", PRIO_ACTUATOR)
        py("collector-battery", "collectors.battery_device", PRIO_COLLECTOR)
    if cfg.site.solar:
        py("collector-solar", "collectors.solar", PRIO_COLLECTOR)
    if cfg.site.carbon:
        py("collector-carbon", "collectors.carbon", PRIO_COLLECTOR)
    if cfg.site.nodes or containers:
        py("collector-power", "collectors.power", PRIO_COLLECTOR)
    for c in containers:
        if c.command:
            py(f"container-{c.id}", "actuators.cgexec", PRIO_WORKLOAD, "--container", c.id)
            if c.backend.type != "lxd":
                p.cgroups.append(
                    {"type": c.backend.type, "cgroup": c.backend.cgroup, "root": c.backend.root}
                )
    py("api", "ecovisor.api", PRIO_API)
    for a in cfg.apps:
        for pol in a.policies:
            py(
                f"policy-{a.id}-{pol.name}",
                f"policies.{pol.name}",
                PRIO_POLICY,
                "--app",
                a.id,
                *pol.args,
            )
    p.topics = topics.all_topics([a.id for a in cfg.apps])
    return p


# ---------------------------------------------------------------------------------------
# supervisord configuration
# ---------------------------------------------------------------------------------------


def _pct(s: str) -> str:
    """supervisord expands %(name)s in values; escape literal percent signs."""
    return s.replace("%", "%%")


def socket_path(state_dir: Path) -> Path:
    """The control socket; unix socket paths are limited to ~107 bytes."""
    sock = state_dir / "supervisor.sock"
    if len(str(sock)) < 100:
        return sock
    digest = hashlib.sha1(str(state_dir).encode()).hexdigest()[:12]
    return Path("/tmp") / f"ecovisor-{digest}.sock"


def render_supervisord_conf(p: Plan, state_dir: Path, workdir: Path) -> str:
    logs = state_dir / "logs"
    env = ",".join(f'{k}="{_pct(v)}"' for k, v in sorted(p.env.items()))
    out = [
        "; generated by `ecovisor up` -- do not edit, it is rewritten on every start",
        "[unix_http_server]",
        f"file={_pct(str(socket_path(state_dir)))}",
        "chmod=0700",
        "",
        "[supervisord]",
        f"logfile={_pct(str(logs / 'supervisord.log'))}",
        f"pidfile={_pct(str(state_dir / 'supervisord.pid'))}",
        f"directory={_pct(str(workdir))}",
        "loglevel=info",
        "minfds=1024",
        f"identifier=ecovisor-{hashlib.sha1(str(state_dir).encode()).hexdigest()[:8]}",
        "",
        "[rpcinterface:supervisor]",
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface",
        "",
        "[supervisorctl]",
        f"serverurl=unix://{_pct(str(socket_path(state_dir)))}",
        "",
    ]
    for s in p.services:
        out += [
            f"[program:{s.name}]",
            f"command={_pct(shlex.join(s.command))}",
            f"directory={_pct(str(workdir))}",
            f"priority={s.priority}",
            f"autostart={'true' if s.server else 'false'}",
            "autorestart=true",
            "startsecs=1",
            "startretries=5",
            "stopsignal=TERM",
            "stopwaitsecs=10",
            # the whole process tree goes: no orphans from workers' children
            "stopasgroup=true",
            "killasgroup=true",
            "redirect_stderr=true",
            f"stdout_logfile={_pct(str(logs / (s.name + '.log')))}",
            "stdout_logfile_maxbytes=20MB",
            "stdout_logfile_backups=2",
            f"environment={env}",
            "",
        ]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------
# Talking to a running supervisord
# ---------------------------------------------------------------------------------------


def rpc(state_dir: Path) -> Any:
    from supervisor.xmlrpc import SupervisorTransport

    transport = SupervisorTransport(None, None, f"unix://{socket_path(state_dir)}")
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)


def supervisord_pid(state_dir: Path) -> int | None:
    """The pid of a live supervisord of this state dir, else None."""
    pidfile = state_dir / "supervisord.pid"
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def pid_alive(pid: int) -> bool:
    """True when the pid exists and is not a zombie (read from /proc)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def is_running(state_dir: Path) -> bool:
    if supervisord_pid(state_dir) is None:
        return False
    try:
        return rpc(state_dir).supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def read_state(state_dir: Path) -> dict[str, Any]:
    try:
        return json.loads((state_dir / "stack.json").read_text())
    except (OSError, ValueError):
        return {}


def _write_state(state_dir: Path, data: dict[str, Any]) -> None:
    tmp = state_dir / "stack.json.tmp"
    tmp.write_text(json.dumps(data, indent=2))
    tmp.replace(state_dir / "stack.json")


def process_info(state_dir: Path) -> list[dict[str, Any]]:
    return list(rpc(state_dir).supervisor.getAllProcessInfo())


def _kill_tree_leftovers(pids: list[int], cmdlines: dict[str, str]) -> list[int]:
    """SIGKILL recorded process groups still alive with the same command line (stale
    state after supervisord itself died). Returns the pids that were killed."""
    killed = []
    for pid in pids:
        if not pid_alive(pid):
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if cmd.strip() != cmdlines.get(str(pid), "").strip():
            continue  # pid reused by an unrelated process
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        killed.append(pid)
    return killed


def _record_pids(state_dir: Path) -> None:
    data = read_state(state_dir)
    pids: dict[str, str] = {}
    for info in process_info(state_dir):
        pid = int(info.get("pid") or 0)
        if pid:
            with contextlib.suppress(OSError):
                raw = Path(f"/proc/{pid}/cmdline").read_bytes()
                pids[str(pid)] = raw.replace(b"\0", b" ").decode()
    sup = supervisord_pid(state_dir)
    data["pids"] = pids
    data["supervisord_pid"] = sup
    _write_state(state_dir, data)


def clean_stale(state_dir: Path, say: Printer) -> bool:
    """Remove the leftovers of a supervisord that died. True if something was stale."""
    if supervisord_pid(state_dir) is not None:
        return False
    stale = False
    data = read_state(state_dir)
    pids = [int(p) for p in data.get("pids", {})]
    killed = _kill_tree_leftovers(pids, data.get("pids", {}))
    if killed:
        say(f"killed {len(killed)} orphaned process(es) of a dead supervisord: {killed}")
        stale = True
    release_cgroups(data.get("cgroups", []), say)
    for f in (socket_path(state_dir), state_dir / "supervisord.pid", state_dir / "stack.json"):
        if f.exists():
            f.unlink()
            stale = True
    return stale


# ---------------------------------------------------------------------------------------
# up / down / status
# ---------------------------------------------------------------------------------------


def prepare(
    cfg: EcovisorConfig, config_file: Path, state_dir: Path, workdir: Path | None = None
) -> Plan:
    workdir = workdir or Path.cwd()
    (state_dir / "logs").mkdir(parents=True, exist_ok=True)
    p = plan(cfg, config_file.resolve(), state_dir)
    (state_dir / "supervisord.conf").write_text(render_supervisord_conf(p, state_dir, workdir))
    _write_state(
        state_dir,
        {
            "config": str(config_file.resolve()),
            "site": cfg.site.id,
            "bootstrap": p.bootstrap,
            "services": [asdict(s) for s in p.services],
            "skipped": p.skipped,
            "cgroups": p.cgroups,
        },
    )
    return p


def release_cgroups(cgroups: list[dict[str, Any]], say: Printer) -> None:
    """Remove the (now empty) cgroups of the containers the stack launched, so a cap,
    quota or freeze of this run never outlives it: the embedded broker keeps no state,
    and with an external broker the container actuator re-applies the last setpoints."""
    from ecovisor.adapters.backends import (
        V1_CONTROLLERS,
        BackendError,
        CgroupV1Backend,
        CgroupV2Backend,
    )

    for cg in cgroups:
        path, root = cg.get("cgroup"), cg.get("root")
        if not path:
            continue
        backend = (CgroupV2Backend if cg.get("type") == "cgroup_v2" else CgroupV1Backend)(
            path, root
        )
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


def _wait_socket(state_dir: Path, proc: subprocess.Popen[bytes] | None, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if is_running(state_dir):
            return
        if proc is not None and proc.poll() is not None and proc.returncode != 0:
            raise StackError(
                f"supervisord exited with {proc.returncode}; see {state_dir}/logs/supervisord.log"
            )
        time.sleep(0.1)
    raise StackError(f"supervisord did not answer within {timeout:.0f} s")


def start_services(p: Plan, state_dir: Path, say: Printer, timeout: float = 60.0) -> None:
    """Wait for the servers, create every topic, then start the rest in priority order."""
    server = rpc(state_dir)
    for s in p.services:
        if s.server and s.port:
            say(f"  waiting for {s.name} on port {s.port} ...")
            deadline = time.monotonic() + timeout
            while not embedded.port_open(s.port, timeout=0.3):
                state = server.supervisor.getProcessInfo(s.name)["statename"]
                if state in ("FATAL", "EXITED") or time.monotonic() > deadline:
                    raise StackError(
                        f"{s.name} did not come up ({state}); see `ecovisor logs {s.name}`"
                    )
                time.sleep(0.1)
    say(f"  creating {len(p.topics)} topics on {p.bootstrap} ...")
    try:
        create_topics(p.bootstrap, p.topics, timeout=timeout)
    except KafkaUnavailable as e:
        raise StackError(str(e)) from e
    for s in sorted((s for s in p.services if not s.server), key=lambda s: s.priority):
        say(f"  starting {s.name}")
        server.supervisor.startProcess(s.name, False)


def wait_healthy(state_dir: Path, timeout: float = 15.0) -> list[dict[str, Any]]:
    """Wait until no process is STARTING/BACKOFF any more (or timeout); final infos."""
    deadline = time.monotonic() + timeout
    infos = process_info(state_dir)
    while time.monotonic() < deadline:
        infos = process_info(state_dir)
        if all(i["statename"] in ("RUNNING", "FATAL", "EXITED", "STOPPED") for i in infos):
            break
        time.sleep(0.2)
    return infos


def format_status(infos: list[dict[str, Any]]) -> str:
    width = max([len(i["name"]) for i in infos] + [8])
    lines = [f"{'SERVICE':<{width}}  {'STATE':<8}  {'PID':>7}  DETAIL"]
    for i in infos:
        lines.append(
            f"{i['name']:<{width}}  {i['statename']:<8}  {i.get('pid') or '-':>7}  "
            f"{i.get('description', '')}"
        )
    return "\n".join(lines)


def healthy(infos: list[dict[str, Any]]) -> bool:
    return bool(infos) and all(i["statename"] == "RUNNING" for i in infos)


def _supervisord_cmd(state_dir: Path, nodaemon: bool) -> list[str]:
    exe = Path(sys.executable).with_name("supervisord")
    base = [str(exe)] if exe.is_file() else [sys.executable, "-m", "supervisor.supervisord"]
    return [*base, *(["-n"] if nodaemon else []), "-c", str(state_dir / "supervisord.conf")]


def up(
    cfg: EcovisorConfig,
    config_file: Path,
    state_dir: Path,
    detach: bool,
    say: Printer = print,
) -> int:
    if is_running(state_dir):
        raise StackError(f"a stack is already running from {state_dir}; run `ecovisor down`")
    if clean_stale(state_dir, say):
        say("cleaned stale state of a previous run")
    p = prepare(cfg, config_file, state_dir)
    busy = [f"{s.name} port {s.port}" for s in p.services if s.server and s.port
            and embedded.port_open(s.port, timeout=0.3)]  # fmt: skip
    if busy:
        raise StackError(
            f"already in use: {', '.join(busy)} (another stack or server?); change the "
            "ports in the configuration's stack section or stop it"
        )
    for note in p.skipped:
        say(f"  skip {note}")
    say(f"starting supervisord (state in {state_dir}) ...")
    log = (state_dir / "logs" / "supervisord.out").open("ab")
    if detach:
        # supervisord daemonises itself; the launcher exits once the daemon forked
        proc = subprocess.Popen(
            _supervisord_cmd(state_dir, nodaemon=False),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        proc.wait(30)
        try:
            _wait_socket(state_dir, None, 20)
            start_services(p, state_dir, say)
            _record_pids(state_dir)
            infos = wait_healthy(state_dir)
            _record_pids(state_dir)
        except Exception:
            say("start failed; stopping what was started")
            down(state_dir, say=lambda _m: None)
            raise
        say(format_status(infos))
        say(
            "stack running in the background: `ecovisor status`, `ecovisor logs <service>`, "
            "`ecovisor down`"
        )
        return 0 if healthy(infos) else 1

    proc = subprocess.Popen(
        _supervisord_cmd(state_dir, nodaemon=True),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    stopping = False

    def _stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            say(f"\nreceived {signal.Signals(signum).name}: stopping every service ...")
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)

    old = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        try:
            _wait_socket(state_dir, proc, 20)
            start_services(p, state_dir, say)
            _record_pids(state_dir)
            infos = wait_healthy(state_dir)
            _record_pids(state_dir)
            say(format_status(infos))
            say(
                "stack running; Ctrl-C stops everything "
                "(`ecovisor status`, `ecovisor logs <service> -f` in another shell)"
            )
        except (StackError, OSError, xmlrpc.client.Error) as e:
            if not stopping:
                say(f"error: {e}")
                _stop(signal.SIGTERM, None)
        rc = proc.wait()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    clean_stale(state_dir, lambda _m: None)
    say("stopped.")
    return 0 if stopping or rc == 0 else 1


def down(state_dir: Path, say: Printer = print, timeout: float = 30.0) -> int:
    pid = supervisord_pid(state_dir)
    if pid is None:
        if clean_stale(state_dir, say):
            say("no supervisord running; cleaned stale state")
        else:
            say("nothing running")
        return 0
    data = read_state(state_dir)
    try:
        say("stopping services ...")
        server = rpc(state_dir)
        with contextlib.suppress(xmlrpc.client.Fault):
            server.supervisor.stopAllProcesses(True)
        server.supervisor.shutdown()
    except (OSError, xmlrpc.client.Error) as e:
        say(f"supervisord did not answer ({e}); sending SIGTERM")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        say("supervisord still alive; killing it")
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    left = _kill_tree_leftovers([int(p) for p in data.get("pids", {})], data.get("pids", {}))
    if left:
        say(f"killed leftover processes: {left}")
    clean_stale(state_dir, lambda _m: None)
    say("stack stopped")
    return 0


def tail_file(path: Path, lines: int, follow: bool) -> Iterator[str]:
    """Last ``lines`` lines of a log, then (with follow) new lines as they are written."""
    if not path.exists():
        raise StackError(f"no log at {path}")
    with path.open("rb") as fh:
        fh.seek(0, os.SEEK_END)
        size = fh.tell()
        fh.seek(max(0, size - 256 * 1024))
        tail = fh.read().decode("utf-8", "replace").splitlines()[-lines:] if lines else []
        yield from (t + "\n" for t in tail)
        while follow:
            chunk = fh.readline()
            if chunk:
                yield chunk.decode("utf-8", "replace")
            else:
                time.sleep(0.2)
