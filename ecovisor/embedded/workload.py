"""A CPU burner for demo containers: holds a target utilisation of one core.

``python -m ecovisor.embedded.workload --utilization 0.3`` busy-loops for U x period and sleeps for
the rest of each period (~100 ms), so a cgroup's CPU counters grow at about U CPU-s/s
(less when a power cap throttles it). SIGTERM/SIGINT stop it cleanly.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time


def duty_cycle(utilization: float, period_s: float) -> tuple[float, float]:
    """(busy seconds, idle seconds) of one period for a utilisation in [0, 1]."""
    u = min(1.0, max(0.0, utilization))
    return u * period_s, (1.0 - u) * period_s


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ecovisor.embedded.workload", description=__doc__)
    ap.add_argument("--utilization", type=float, default=0.3, help="fraction of one core, 0..1")
    ap.add_argument("--period", type=float, default=0.1, help="duty-cycle period in seconds")
    ap.add_argument("--duration", type=float, default=0.0, help="stop after N s (0 = forever)")
    args = ap.parse_args(argv)
    if not 0.0 <= args.utilization <= 1.0 or args.period <= 0:
        print("error: --utilization must be in [0, 1] and --period > 0", file=sys.stderr)
        return 2
    running = True

    def stop(_signum: int, _frame: object) -> None:
        nonlocal running
        running = False

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    busy, idle = duty_cycle(args.utilization, args.period)
    end = time.monotonic() + args.duration if args.duration > 0 else float("inf")
    x = 0
    while running and time.monotonic() < end:
        t0 = time.monotonic()
        while time.monotonic() - t0 < busy:
            x = (x * 1103515245 + 12345) & 0x7FFFFFFF  # keep the core busy
        remaining = args.period - (time.monotonic() - t0)
        if remaining > 0 and idle > 0:
            time.sleep(remaining)
    return 0


if __name__ == "__main__":
    sys.exit(main())
