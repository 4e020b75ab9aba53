"""`ecovisor status` / `stack.healthy`: a crash-looping program is not healthy (F).
supervisord marks FATAL only a program that dies within ``startsecs``, ``startretries``
times in a row; one that runs longer before each crash is RUNNING most of the time, so
its exits are counted from supervisord's log."""

from __future__ import annotations

import time
from pathlib import Path

from ecovisor.contract.config_file import load_config
from ecovisor.embedded import stack
from ecovisor.embedded.health import MAX_RESTARTS, problems, recent_exits

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo-site.yaml"


def stamp(ago_s: float, now: float) -> str:
    t = now - ago_s
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) + ",123"


def test_recent_exits_counts_this_runs_exits_in_the_window() -> None:
    now = time.time()
    log = "\n".join([
        f"{stamp(100, now)} WARN exited: ledger (exit status 1; not expected)",  # old run
        f"{stamp(90, now)} INFO supervisord started with pid 42",
        f"{stamp(80, now)} INFO spawned: 'ledger' with pid 43",
        f"{stamp(70, now)} WARN exited: ledger (exit status 1; not expected)",
        f"{stamp(60, now)} INFO exited: ledger (exit status 0; expected)",
        f"{stamp(50, now)} WARN exited: api (terminated by SIGKILL; not expected)",
        f"{stamp(40, now)} WARN stopped: bridge (terminated by SIGTERM)",  # a stop, not a crash
        "garbage line",
    ])  # fmt: skip
    assert recent_exits(log, now) == {"ledger": 2, "api": 1}
    assert recent_exits(log, now, window_s=55) == {"api": 1}


def info(name: str, state: str = "RUNNING", restarts: int = 0) -> dict:
    return {"name": name, "statename": state, "restarts": restarts, "pid": 1, "description": ""}


def test_fatal_backoff_and_crash_loops_are_unhealthy() -> None:
    ok = [info("kafka"), info("ledger")]
    assert stack.healthy(ok) and problems(ok) == []
    for state in ("FATAL", "BACKOFF", "EXITED", "STARTING"):
        bad = [info("kafka"), info("ledger", state)]
        assert not stack.healthy(bad)
        assert problems(bad) == [f"ledger is {state}"]
    looping = [info("kafka"), info("ledger", restarts=MAX_RESTARTS + 1)]
    assert not stack.healthy(looping)  # was "healthy": RUNNING between crashes
    assert "exited 3 times" in problems(looping)[0]
    assert stack.healthy([info("ledger", restarts=MAX_RESTARTS)])  # a restart or two
    assert not stack.healthy([])
    assert "3 exits in 10 min" in stack.format_status(looping)


def test_product_services_must_survive_startsecs_to_count_as_started(tmp_path: Path) -> None:
    """The ledger needs seconds to load its state before it can crash on it: with
    startsecs=1 such a crash loop never ended FATAL."""
    import configparser

    p = stack.plan(load_config(DEMO), DEMO, tmp_path, exists=lambda _m: True)
    ini = configparser.RawConfigParser()
    ini.read_string(stack.render_supervisord_conf(p, tmp_path, tmp_path))
    assert ini["program:ledger"]["startsecs"] == "10"
    assert ini["program:ledger"]["startretries"] == "3"
    assert ini["program:kafka"]["startsecs"] == "1"
