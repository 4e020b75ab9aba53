"""One chaos run (reliability/chaos.py): the edge publishes the workload through a fresh
pipeline, paced and in lockstep where determinism needs it, while the faults play; then
what it produced."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

from ecovisor.contract import notifications, topics
from ecovisor.contract.commands import sign_command
from reliability.chaos_faults import Kill, inject_kills
from reliability.chaos_outcome import Outcome, dump, outcome
from reliability.chaos_stack import WAIT_S, Pipeline, Tail, remove_cgroups
from reliability.chaos_workload import SITE, TOKENS, Workload, at

BACKLOG_TICKS = 4  # the publisher runs at most this far ahead of the ledger's last tick
KILL_SLACK_TICKS = 8  # ... and this far past a kill position not yet reached


def run_once(
    wl: Workload, work: Path, name: str, top: str, kills: list[Kill], rate: float | None,
    log: Callable[[str], None],
) -> Outcome:  # fmt: skip
    t_start = time.monotonic()
    p = Pipeline(work, name, top)
    errors: list[BaseException] = []
    try:
        p.up()
        assert p.tail is not None
        tail = p.tail
        threads = [
            threading.Thread(
                target=inject_kills,
                args=(p, [k for k in kills if k.service == s], errors, log),
                daemon=True,
            )  # fmt: skip
            for s in sorted({k.service for k in kills})
        ]
        for th in threads:
            th.start()
        sent: set[tuple[str, int]] = set()
        pending = sorted(kills, key=lambda k: k.position)
        t_pub = time.monotonic()
        for s in wl.steps:
            if errors:
                raise errors[0]
            if s is wl.steps[-1]:  # every kill happens before the last ticks can close
                p.published = wl.ticks
                for k in pending:
                    p.wait(f"kill of {k.service} at {k.position}", k.done.is_set,
                         timeout=4 * WAIT_S)  # fmt: skip
            if s.tick > p.published:
                p.published = s.tick
                # the edge's pace; at most BACKLOG_TICKS ahead of the ledger; and not past
                # a kill position that is not yet done
                if rate:
                    now = time.monotonic()
                    t_pub = max(t_pub + 1.0 / rate, now)
                    time.sleep(t_pub - now)
                p.wait(f"the ledger to close trace tick {s.tick - BACKLOG_TICKS}",
                     lambda s=s: tail.closed() >= s.tick - BACKLOG_TICKS)  # fmt: skip
                for k in pending:
                    if k.position <= s.tick - KILL_SLACK_TICKS:
                        p.wait(f"kill of {k.service} at {k.position}", k.done.is_set,
                             timeout=4 * WAIT_S)  # fmt: skip
            if s.kind == "mqtt":
                p.publish(s)
                assert s.ident is not None
                sent.add(s.ident)
            elif s.kind == "clock":
                # deterministic only once everything before it is in Kafka
                p.flush_mqtt()
                p.wait("the bridge to forward the data before a clock message",
                     p.forwarded(set(sent)))  # fmt: skip
                p.to_kafka(topics.TELEMETRY, SITE.encode(), s.payload)
            else:
                assert s.command is not None
                # lockstep: the tick before closed, so the ledger is in the command's tick
                p.flush_mqtt()
                p.wait(f"the ledger to close trace tick {s.tick - 1}",
                     lambda s=s: tail.closed() >= s.tick - 1)  # fmt: skip
                # dated in its own tick, then signed again (the signature covers the time)
                cmd = sign_command(s.command.model_copy(update={"time": at(s.tick + 0.75)}),
                                   TOKENS[s.command.app])  # fmt: skip
                p.to_kafka(topics.COMMANDS, cmd.app.encode(), cmd.to_json())
                cid = cmd.command_id
                p.wait(f"the ledger to accept or reject {cid}", lambda cid=cid: any(
                    n["type"] in ("command_accepted", "command_rejected")
                    for n in tail.outcomes.get(cid, [])))  # fmt: skip
        p.published = wl.ticks + KILL_SLACK_TICKS + 1
        for th in threads:
            th.join(4 * WAIT_S)
        if errors:
            raise errors[0]
        p.wait("every tick closed", lambda: tail.closed() >= wl.ticks - 1)

        def outcomes_final() -> bool:
            with tail.lock:
                got = tail.outcomes
                return all(
                    any(
                        n["type"] in notifications.COMMAND_OUTCOMES
                        for n in got.get(c.command_id, [])
                    )
                    for c in wl.commands
                )

        p.wait("every command's outcome", outcomes_final)
        for name_, svc in p.services.items():
            if not svc.alive():
                raise RuntimeError(f"{name_} exited (code {svc.proc and svc.proc.returncode})")
        quiet(tail)
        if tail.error is not None:
            raise tail.error
        out = outcome(p, wl, kills, time.monotonic() - t_start)
        dump(out, p.work / "outcome.json")
        return out
    finally:
        p.down()
        remove_cgroups(top)


def quiet(tail: Tail, for_s: float = 1.0) -> None:
    """Until no new record arrived for ``for_s`` (re-emitted ticks included)."""

    def count() -> int:
        with tail.lock:
            return sum(len(v) for v in tail.records.values())

    last, since = count(), time.monotonic()
    while time.monotonic() - since < for_s:
        time.sleep(0.1)
        n = count()
        if n != last:
            last, since = n, time.monotonic()
