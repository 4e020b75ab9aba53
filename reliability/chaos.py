"""Chaos with the event clock: SIGKILL each service at random points; the outcome must be
identical to the fault-free run.

    python reliability/chaos.py [--kills 20] [--seed 1] [--ticks 300]
                                [--services bridge,ledger,actuator] [--rate 6] [--keep]

A deterministic workload goes through the REAL pipeline with the event-time clock
(``streams.ledger --clock event``): telemetry of two apps' containers, solar and carbon
published on MQTT with QoS 1 (so the bridge is in the path), with duplicates, late
samples and gaps in the data bridged by replay clock messages
(``site.limits.replay_clock_source``, published on Kafka as docs/ledger.md says); and
app commands on ``ecovisor.commands`` (power caps through the container actuator onto
real cgroup v1 quotas, battery charge rates applied by the ledger, a rejected one).

Two runs, each on fresh brokers (tansu, mosquitto) and a fresh state dir:

1. fault-free;
2. the same workload while each chosen service is SIGKILLed (``os.killpg``, its whole
   process group) at ``--kills`` random points, each time restarted at once, as
   supervisord would. The schedule comes from ``--seed``: per service, the trace positions
   (ticks) to kill at and a delay after the service was last ready; a service is killed
   again only once its previous restart is ready (its log says so), so some kills land
   while it replays its backlog, none while it is still importing Python.

The telemetry publisher is NOT killed: it stands for the edge devices (MQTT QoS 1 to a
broker that keeps the bridge's persistent session); the brokers are not killed either.
What an edge restart does to its sequence numbers is a different question.

Compared, as downstream readers see it (consumers de-duplicate by (site, app, tick):
docs/ledger.md "Guarantees"): every app's ledger entry per tick (byte for byte; every
re-emitted copy must equal the first), the cumulative totals per app, the tick
notifications and events, the battery setpoints, every command's lifecycle notifications
(the time of an actuator's acknowledgement is wall time: left out), every published
telemetry message forwarded at least once, and the final CPU quota of each container's
cgroup. Figures: kills per service, ticks, wall time, recovery after each restart
(ready, and the first new tick closed), mismatches, the machine. Exit 1 on any
mismatch or a service that does not recover.

Not a test by itself: the short version is tests/integration/test_chaos.py; the figures
of the full run are in docs/reliability.md ("Chaos: SIGKILL with the event clock").
"""

# The pieces (this file: both runs, their comparison and the command line):
# chaos_workload.py (the site and its trace), chaos_stack.py (brokers, services, the tail
# of the topics, cgroups), chaos_faults.py (the kill schedule and the killer),
# chaos_run.py (one run), chaos_outcome.py (what a run produced; the checks of
# exactness), chaos_report.py (the figures).

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from reliability.chaos_faults import schedule  # noqa: E402
from reliability.chaos_outcome import Outcome, compare  # noqa: E402
from reliability.chaos_report import Report, render  # noqa: E402
from reliability.chaos_run import run_once  # noqa: E402
from reliability.chaos_stack import MODULES, WAIT_S, remove_cgroups  # noqa: E402
from reliability.chaos_workload import workload  # noqa: E402


def run(
    kills: int = 20,
    seed: int = 1,
    ticks: int = 300,
    services: tuple[str, ...] = ("bridge", "ledger", "actuator"),
    rate: float | None = 6.0,
    work: Path | None = None,
    log: Callable[[str], None] = lambda _m: None,
    parallel: bool = False,
) -> Report:
    """Both runs and their comparison; ``parallel``: the fault-free run side by side
    with the chaos run (its own brokers and cgroups; for the short test), else first."""
    for s in services:
        if s not in MODULES:
            raise ValueError(f"unknown service {s!r}; one of {sorted(MODULES)}")
    wl = workload(ticks, seed)
    own = work is None
    base = Path(tempfile.mkdtemp(prefix="ecovisor-chaos-")) if work is None else work
    top = f"ecovisor-chaos-{uuid.uuid4().hex[:8]}"
    tops = (f"{top}-ref", f"{top}-kil") if parallel else (top, top)
    plan = schedule(list(services), kills, ticks, seed)
    try:
        if parallel:
            log("fault-free and chaos runs side by side ...")
            box: list[Outcome | BaseException] = []

            def fault_free() -> None:
                try:
                    box.append(run_once(wl, base, "fault-free", tops[0], [], None, log))
                except BaseException as e:
                    box.append(e)

            th = threading.Thread(target=fault_free, daemon=True)
            th.start()
            got = run_once(wl, base, "chaos", tops[1], plan, rate, log)
            th.join(10 * WAIT_S)
            if not box or isinstance(box[0], BaseException):
                raise box[0] if box else TimeoutError("the fault-free run did not end")
            ref = box[0]
        else:
            log("fault-free run ...")
            ref = run_once(wl, base, "fault-free", tops[0], [], None, log)
            log(f"  {ref.wall_s:.1f} s; chaos run ...")
            got = run_once(wl, base, "chaos", tops[1], plan, rate, log)
        return Report(wl, ref, got, compare(wl, ref, got), list(services), kills, seed)
    finally:
        for t in set(tops):
            remove_cgroups(t)
        if own:
            shutil.rmtree(base, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python reliability/chaos.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs per service (default 20)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--ticks", type=int, default=300, help="trace length in 1-s ticks")
    ap.add_argument("--services", default="bridge,ledger,actuator",
                    help="comma-separated, of: bridge, ledger, actuator")  # fmt: skip
    ap.add_argument(
        "--rate",
        type=float,
        default=6.0,
        help="trace ticks per wall second the edge publishes in the chaos run",
    )
    ap.add_argument("--keep", metavar="DIR", help="keep logs and state in DIR")
    a = ap.parse_args(argv)
    services = tuple(s.strip() for s in a.services.split(",") if s.strip())
    work = None
    if a.keep:
        work = Path(a.keep)
        work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    try:
        rep = run(a.kills, a.seed, a.ticks, services, a.rate, work,
                  log=lambda m: print(m, flush=True))  # fmt: skip
    except (TimeoutError, RuntimeError) as e:
        keep = "" if a.keep else " (the logs are deleted: rerun with --keep DIR to keep them)"
        print(f"FAILED: {e}{keep}", file=sys.stderr)
        return 1
    print(render(rep))
    print(f"total wall time {time.monotonic() - t:.1f} s")
    return 1 if rep.mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
