"""The services a pipeline replay runs on (replay/pipeline.py): the embedded broker
(tansu, started on a free port unless a bootstrap is given), the real ledger worker
(``python -m streams.ledger --clock event``) and the real REST API
(``python -m ecovisor.api``), as processes, for one app's site; and the site's
configuration file they read."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import yaml

from ecovisor.adapters.kafka import create_topics
from ecovisor.api.state_source import ledger_readiness
from ecovisor.contract import topics
from ecovisor.contract.config import EcovisorConfig
from ecovisor.contract.config_file import load_config
from ecovisor.contract.experiment import AppSpec, Experiment, site_config
from ecovisor.embedded.servers import (
    Server,
    StackError,
    free_port,
    stop_process,
    tansu_command,
    wait_for_port,
)
from streams.ledger import prepare_topics

ROOT = Path(__file__).resolve().parents[1]
CLOCK_SOURCE = "replay-pipeline"  # the site's replay clock source (site.limits)
# The services' consumers' longest fetch wait (ms) and the ledger's producer linger: the
# embedded broker holds a fetch for its whole wait even when records arrive, so each of
# the lock-step's two hops through it waited up to the live 25 ms (ledger) and 20 ms (API)
# ~5-7 ms each on average (docs/replay-pipeline.md, Speed). While a replay runs, each
# consumer then sends up to ~500 fetches a second when idle.
FETCH_WAIT_MS = 2
LINGER_MS = 0


def pipeline_config(
    exp: Experiment, app: AppSpec, bootstrap: str, workdir: Path, unique: bool
) -> tuple[EcovisorConfig, Path]:
    """``site_config`` of the app (the core engine's site) with what the live services
    need: the stack's endpoints, an internal key (actions and acks signed, as on the
    embedded stack) and the replay clock source. ``unique``: a fresh site id, for a
    broker shared with other runs (the ledger's Faust tables live in changelog topics
    named after the site: a second run of the same site would restore the first's)."""
    cfg = site_config(exp, app)
    site = cfg.site.id + (f"-{uuid.uuid4().hex[:8]}" if unique else "")
    # the API's command rate is per second of wall time, which a replay compresses: its
    # policy may send a day's commands in seconds
    limits = cfg.site.limits.model_copy(
        update={"replay_clock_source": CLOCK_SOURCE, "max_commands_per_s": 100_000.0,
                "command_burst": 1_000_000}
    )  # fmt: skip
    stack = cfg.stack.model_copy(
        update={
            "kafka_bootstrap": bootstrap,
            "api_port": free_port(),
            "ledger_web_port": free_port(),
            "mqtt_port": free_port(),
            "state_dir": str(workdir / "state"),
        }
    )
    site_cfg = cfg.site.model_copy(
        update={"id": site, "limits": limits, "internal_key": secrets.token_hex(16)}
    )
    full = cfg.model_copy(update={"site": site_cfg, "stack": stack})
    path = workdir / "site.yaml"
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # holds the key
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(full.model_dump(mode="json", exclude_none=True), f, sort_keys=False)
    return load_config(path), path  # validated as the services will read it


def _env() -> dict[str, str]:
    # no ECOVISOR_* of the caller's shell: the services read only the file given
    env = {k: v for k, v in os.environ.items() if not k.startswith("ECOVISOR_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


class PipelineStack:
    """Broker (own or given), ledger and API for one site; a context manager that
    stops what it started (process groups, SIGTERM then SIGKILL)."""

    def __init__(self, workdir: Path, bootstrap: str | None = None) -> None:
        self.workdir = workdir
        self.own_broker = bootstrap is None
        self.bootstrap = bootstrap or ""
        self.broker: Server | None = None
        self.procs: list[subprocess.Popen[bytes]] = []

    def start_broker(self) -> str:
        if self.own_broker and self.broker is None:
            port = free_port()
            log = self.workdir / "tansu.log"
            self.broker = Server(tansu_command(port), port, log).start()
            self.bootstrap = f"127.0.0.1:{port}"
            create_topics(self.bootstrap, topics.static_topics())
        return self.bootstrap

    def start_services(self, cfg: EcovisorConfig, path: Path) -> str:
        """The ledger (event clock) and the API on ``cfg``; the API's URL once it listens."""
        prepare_topics(cfg, self.bootstrap)
        self._spawn("ledger", "streams.ledger", "--config", str(path), "--clock", "event",
                    "--timeouts", "1", "--fetch-wait-ms", str(FETCH_WAIT_MS),
                    "--linger-ms", str(LINGER_MS))  # fmt: skip
        self._spawn("api", "ecovisor.api", "--config", str(path),
                    "--notify-fetch-wait-ms", str(FETCH_WAIT_MS))  # fmt: skip
        try:
            wait_for_port(cfg.stack.api_port, timeout=60)
        except StackError:
            raise StackError(f"the API did not start; see {self.workdir / 'api.log'}") from None
        self.wait_ledger_ready(cfg.stack.ledger_web_port)
        return f"http://127.0.0.1:{cfg.stack.api_port}"

    def wait_ledger_ready(self, port: int, timeout: float = 60.0) -> None:
        """Until the ledger's ``GET /ready`` says ready (joined its group, tables
        recovered, caught up): the run's first tick then no longer carries the join."""
        deadline = time.monotonic() + timeout
        r = None
        while time.monotonic() < deadline:
            self.check()
            r = ledger_readiness(f"http://127.0.0.1:{port}")
            if r.ready:
                return
            time.sleep(0.05)
        why = r.reason if r is not None else "not asked"
        raise StackError(f"the ledger was not ready after {timeout:g} s ({why}); see "
                         f"{self.workdir / 'ledger.log'}")  # fmt: skip

    def _spawn(self, name: str, module: str, *args: str) -> None:
        with (self.workdir / f"{name}.log").open("ab") as fh:
            self.procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", module, *args],
                    cwd=ROOT,
                    env=_env(),
                    stdout=fh,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            )

    def check(self) -> None:
        """Raise if a service process has exited (its log names why)."""
        for p in self.procs:
            if p.poll() is not None:
                name = "ledger" if "streams.ledger" in p.args else "api"  # type: ignore[operator]
                raise StackError(
                    f"the {name} process exited ({p.returncode}); see "
                    f"{self.workdir / (name + '.log')}"
                )

    def stop_services(self) -> None:
        for p in reversed(self.procs):
            stop_process(p)
        self.procs.clear()

    def __enter__(self) -> PipelineStack:
        self.workdir.mkdir(parents=True, exist_ok=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop_services()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None


