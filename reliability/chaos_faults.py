"""The chaos run's faults (reliability/chaos.py): the kill schedule drawn from the seed,
and the thread that SIGKILLs one service at its points and restarts it at once."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from reliability.chaos_stack import WAIT_S, Pipeline, first_tick_after


@dataclass
class Kill:
    service: str
    position: int  # trace tick at or after which it is due
    delay_s: float  # after the service's last restart is ready
    done: threading.Event = field(default_factory=threading.Event)
    at: float = 0.0
    published_tick: int = -1  # where the publisher was
    closed_tick: int = -1  # the ledger's last closed tick (trace index)
    start_no: int = 0  # the service's start that followed the kill
    ready_s: float | None = None  # restart -> ready line
    first_tick_s: float | None = None  # restart -> first tick beyond closed_tick
    during_recovery: bool = False  # before the previous restart closed a new tick


def schedule(services: list[str], kills: int, ticks: int, seed: int) -> list[Kill]:
    """Per service (its own random stream of the seed): ``kills`` trace positions in the
    middle 90 % of the trace, each with a delay of 0-1.5 s after the service is ready."""
    out = []
    lo, hi = max(1, int(ticks * 0.05)), max(2, int(ticks * 0.95))
    for s in services:
        rng = random.Random(f"{seed}:{s}")
        pos = sorted(rng.randrange(lo, hi) for _ in range(kills))
        out += [Kill(s, p, round(rng.uniform(0.0, 1.5), 3)) for p in pos]
    return out


def inject_kills(p: Pipeline, kills: list[Kill], errors: list[BaseException],
                 log: Callable[[str], None]) -> None:  # fmt: skip
    """Kill one service at its scheduled points, restarting it at once each time (as
    supervisord would): the next kill only once the restart is ready, after the kill's
    delay."""
    assert p.tail is not None
    tail = p.tail
    try:
        prev: Kill | None = None
        for n, k in enumerate(kills, 1):
            svc = p.services[k.service]
            p.wait(f"trace tick {k.position}", lambda k=k: p.published >= k.position,
                 timeout=6 * WAIT_S)  # fmt: skip
            p.wait(f"{svc.name} to recover from its restart", svc.ready)
            time.sleep(k.delay_s)
            if not svc.alive():
                code = svc.proc.returncode if svc.proc else None
                raise RuntimeError(f"{svc.name} exited by itself (code {code})")
            k.published_tick = p.published
            k.closed_tick = tail.closed()
            if prev is not None:
                k.during_recovery = first_tick_after(tail, prev.at, prev.closed_tick) is None
            svc.kill()
            k.at = time.monotonic()
            svc.start()
            k.start_no = svc.starts
            k.done.set()
            early = ", before a new tick since the last restart" if k.during_recovery else ""
            log(f"  killed {svc.name} #{n} at trace tick {k.published_tick} (ledger closed "
                f"{k.closed_tick}){early}")  # fmt: skip
            prev = k
        if prev is not None:
            p.wait(
                f"{prev.service} to recover from its last restart", p.services[prev.service].ready
            )
    except BaseException as e:
        errors.append(e)
        for k in kills:
            k.done.set()
