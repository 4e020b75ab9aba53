"""Whether the embedded stack is healthy, from supervisord's process infos and its log.
Pure: ``ecovisor.embedded.stack`` reads both and asks here.

Unhealthy: any program not RUNNING (FATAL: it gave up after ``startretries`` quick
exits; BACKOFF: between such retries; STARTING, EXITED, STOPPED ...), or a program that
exited more than ``MAX_RESTARTS`` times in the last ``RESTART_WINDOW_S`` (a crash loop of
a program that runs longer than its ``startsecs`` before each crash never goes FATAL,
and is RUNNING most of the time). See docs/embedded-stack.md."""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

RESTART_WINDOW_S = 600.0
MAX_RESTARTS = 2  # more exits than this in the window: a crash loop


_EXITED = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ [A-Z]+ exited: (\S+) \(")


def recent_exits(log_text: str, now: float, window_s: float = RESTART_WINDOW_S) -> dict[str, int]:
    """Exits per program in a supervisord log since its last start and within
    ``window_s`` before ``now`` (epoch s). supervisord logs local time, ms precision:
    ``2024-05-01 10:00:00,123 WARN exited: ledger (exit status 1; not expected)``
    (INFO when the exit was expected: a restart all the same)."""
    lines = log_text.splitlines()
    for i in range(len(lines) - 1, -1, -1):  # only this run of supervisord
        if "supervisord started with pid" in lines[i]:
            lines = lines[i + 1 :]
            break
    out: dict[str, int] = {}
    for line in lines:
        m = _EXITED.match(line)
        if m is None:
            continue
        when = time.mktime(datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S").timetuple())
        if now - when <= window_s:
            out[m.group(2)] = out.get(m.group(2), 0) + 1
    return out


def problems(infos: list[dict[str, Any]]) -> list[str]:
    """What is wrong, one line per program (empty: healthy). ``infos``: supervisord's
    process infos, each with ``restarts`` (exits in the window) when known."""
    if not infos:
        return ["no service is configured"]
    out = []
    for i in infos:
        if i["statename"] != "RUNNING":
            out.append(f"{i['name']} is {i['statename']}")
        elif i.get("restarts", 0) > MAX_RESTARTS:
            out.append(
                f"{i['name']} exited {i['restarts']} times in the last "
                f"{RESTART_WINDOW_S / 60:g} min (a crash loop?): `ecovisor logs {i['name']}`"
            )
    return out


__all__ = ["MAX_RESTARTS", "RESTART_WINDOW_S", "problems", "recent_exits"]
