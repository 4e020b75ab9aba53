"""What one telemetry sample may change, PURE (no I/O): the checks the tick clock
(``ecovisor.core.tick_clock``) runs before a sample enters a tick.

* ``SeqWindow``: the dedupe state of one source, O(window) whatever its seq values.
* ``CounterGuard``: cumulative counters (container, node, solar energy) against what
  their source can physically produce, and counter resets.
* ``value_error``: every number bounded before it becomes integer mJ.

docs/ledger.md#ticks, docs/reliability.md.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ecovisor.core.units import MAX_COUNTER, MAX_MAGNITUDE, US_PER_S

# A counter may rise by at most max_power_w x (elapsed x margin + slack): margin for a
# meter reading above the model's peak, slack for samples stamped close together.
COUNTER_MARGIN = 1.5
COUNTER_SLACK_S = 2.0

# A seq accepted below the highest is at most this far below it (then "too old"), so a
# remembered one costs at most 10 digits in the snapshot whatever the seqs are.
MAX_BELOW = 2**32
MAX_JUMP = 2**32  # a seq further above a source's highest waits for a confirming one

MaxPower = Callable[[str], float | None]


def value_error(msg: Any) -> str | None:
    """Why a sample's numbers cannot be taken (NaN, negative or beyond the bounds)."""
    kind = msg.kind
    if kind in ("container", "node", "solar"):
        checks = [("energy_j", msg.energy_j, MAX_COUNTER)]
        if kind == "solar":
            checks.append(("power_w", msg.power_w, MAX_MAGNITUDE))
    elif kind == "carbon":
        checks = [("intensity_g_per_kwh", msg.intensity_g_per_kwh, MAX_MAGNITUDE)]
    elif kind == "battery":
        checks = [("stored_wh", msg.stored_wh, MAX_MAGNITUDE), ("capacity_wh", msg.capacity_wh,
                                                              MAX_MAGNITUDE)]  # fmt: skip
    else:
        return None
    for name, v, top in checks:
        if not 0 <= v <= top:  # also NaN
            return f"{name} {v!r} is outside 0..{top:g}"
    return None


@dataclass
class SeqWindow:
    """Seen seqs of one source: the highest (``hwm``) and the last ``window`` accepted
    seqs below it (``recent``, ascending). A first seq of 1.7e12 (epoch ms) costs nothing.
    Exact: an accepted seq is evicted only as the smallest, so once ``recent`` is full
    every evicted seq lies below it, and anything below it is refused as too old."""

    hwm: int
    last_us: int  # newest event time (expiry)
    recent: list[int] = field(default_factory=list)
    held: int | None = None  # a jump of more than MAX_JUMP, refused until confirmed

    def hold_jump(self, seq: int) -> bool:
        """Whether ``seq`` is a jump of more than ``MAX_JUMP`` above the highest seq of a
        source already seen, not confirmed: refuse it (one stray or spoofed message with
        seq 1.7e12 made every later honest seq "too old" until the source expired). The
        next seq above it within ``MAX_JUMP`` confirms the renumbering (a device that
        restarted counting from epoch ms loses one message); an in-sequence seq drops
        the held one."""
        if self.hwm < 0 or seq - self.hwm <= MAX_JUMP:
            self.held = None
            return False
        if self.held is not None and self.held < seq <= self.held + MAX_JUMP:
            self.held = None
            return False
        self.held = seq
        return True

    def accept(self, seq: int, window: int) -> bool | None:
        """True: new; False: a duplicate; None: older than the window (unknown)."""
        if seq > self.hwm:
            if self.hwm >= 0:
                self.recent.append(self.hwm)  # the largest of them
            self.hwm = seq
        elif seq == self.hwm:
            return False
        else:
            recent = self.recent
            i = bisect_left(recent, seq)
            if i < len(recent) and recent[i] == seq:
                return False
            if (i == 0 and len(recent) >= window) or self.hwm - seq > MAX_BELOW:
                return None
            insort(recent, seq)
        if len(self.recent) > window:
            del self.recent[0]
        return True

    def dump(self) -> list[Any]:
        # distances below hwm: small numbers whatever the seqs are
        out: list[Any] = [self.hwm, self.last_us, [self.hwm - r for r in self.recent]]
        if self.held is not None:
            out.append(self.held)
        return out

    @classmethod
    def load(cls, v: list[Any], window: int, now_us: int) -> SeqWindow:
        if len(v) == 2:  # before v2: [hwm, unseen seqs of the 4096 below it]
            holes = set(v[1])
            below = [r for r in range(max(0, v[0] - window), v[0]) if r not in holes]
            return cls(v[0], now_us, below)
        held = v[3] if len(v) > 3 else None
        return cls(v[0], v[1], [v[0] - d for d in v[2]], held)


@dataclass
class _Latest:
    """The last accepted sample (highest seq) of one counter. Booked values are
    ``raw + offset``: a reset moves ``offset`` so the booked counter never goes back."""

    seq: int
    t_us: int  # the newest event time of the samples it took (never goes back)
    raw: int  # mJ as sent
    offset: int  # mJ added to raw values since the last reset
    epoch: int  # seq of the last reset (-1: none): older samples are of the counter before
    suspect: tuple[int, int, int] | None = None  # a refused jump (seq, t_us, raw)


class CounterGuard:
    """Cumulative counters checked against their last accepted sample (by seq).

    ``check`` returns the value to book (``raw + offset``) and a reason: value None is a
    refusal (a *fault*: an increment beyond ``max_power_w`` x elapsed x margin + slack,
    never booked; or a sample older than the counter's last reset; or one counter too
    many); a value with a reason is a *reset*: the counter went back (or a refused jump
    was confirmed by the next sample), the new value is the baseline and nothing is
    booked for that interval.

    Elapsed time is measured from the counter's **newest** accepted sample time
    (``_Latest.t_us`` never goes back): a sample with a higher seq but an older time
    (backdated) used to move it back, so that the next sample's allowance covered
    decades and any jump was booked."""

    def __init__(self, max_counters: int, max_power_w: MaxPower | None) -> None:
        self.max_counters = max_counters
        self.max_power_w = max_power_w
        # max_power_w per counter key, looked up once: it comes from the configuration,
        # fixed for the guard's life (one cache entry per tracked counter at most)
        self._max_w: dict[str, float | None] = {}
        self.latest: dict[str, _Latest] = {}
        # counters renumbered by ``check`` since the caller last looked (it resets the
        # seq of its own baselines of them, then clears this)
        self.renumbered: list[str] = []
        self.n_faults = 0
        self.n_resets = 0

    def allowance(self, key: str, elapsed_us: int) -> float:
        """mJ a counter may rise by in ``elapsed_us`` (inf: no physical bound known)."""
        try:
            max_w = self._max_w[key]
        except KeyError:
            max_w = self.max_power_w(key) if self.max_power_w is not None else None
            if key in self.latest:  # tracked: bounded by max_counters
                self._max_w[key] = max_w
        if max_w is None:
            return float("inf")
        return max_w * (max(0, elapsed_us) / US_PER_S * COUNTER_MARGIN + COUNTER_SLACK_S) * 1e3

    def check(
        self, key: str, seq: int, t_us: int, raw: int, floor_us: int | None = None
    ) -> tuple[int | None, str | None]:
        """``floor_us``: the caller refuses samples older than this (the replay horizon,
        ``TickClock.floor_us``); a counter whose newest sample is below it follows the
        next sample whatever its seq (below)."""
        last = self.latest.get(key)
        if last is None:
            if len(self.latest) >= self.max_counters:
                return None, f"counter {key!r} refused: the site tracks {len(self.latest)}"
            self.latest[key] = _Latest(seq, t_us, raw, 0, -1)
            return raw, None
        if seq <= last.seq and floor_us is not None and last.t_us < floor_us:
            # Every sample this counter took is older than the floor, and this one is not
            # (the caller refused it otherwise): it is the newest whatever its seq, so a
            # source forgotten and started again from a lower seq is followed, not held
            # "out of order" until its seqs pass the old ones. The value rules still apply.
            last.seq = last.epoch = -1
            last.suspect = None
            self.renumbered.append(key)
        if seq < last.seq:  # out of order: it must fit below the newer sample
            if seq < last.epoch:
                return None, (f"seq {seq} of counter {key!r} is from before its reset at "
                              f"seq {last.epoch}: its value is not comparable")  # fmt: skip
            if raw > last.raw or last.raw - raw > self.allowance(key, last.t_us - t_us):
                self.n_faults += 1
                return None, (f"counter {key!r} seq {seq} = {raw / 1e3:g} J does not fit "
                              f"the later seq {last.seq} = {last.raw / 1e3:g} J")  # fmt: skip
            if t_us > last.t_us:  # t_us: the newest time the counter took
                last.t_us = t_us
            return raw + last.offset, None
        rise = raw - last.raw
        if rise < 0:
            return self._rebase(key, last, seq, t_us, raw), (
                f"counter {key!r} went back from {last.raw / 1e3:g} J (seq {last.seq}) to "
                f"{raw / 1e3:g} J (seq {seq}): a reset; the new value is the baseline, "
                f"nothing booked for that interval"
            )
        # from the newest sample time: a backdated sample (elapsed < 0) may add the slack
        allowance = self.allowance(key, t_us - last.t_us)
        if rise <= allowance:
            last.seq, last.raw, last.suspect = seq, raw, None
            if t_us > last.t_us:  # never back: the next allowance counts from the newest
                last.t_us = t_us
            return raw + last.offset, None
        s = last.suspect
        if s is not None and 0 <= raw - s[2] <= self.allowance(key, t_us - s[1]):
            # a second sample consistent with the refused jump: the counter did jump (a
            # replaced meter): a new baseline, the jump itself never booked
            return self._rebase(key, last, seq, max(t_us, s[1]), raw), (
                f"counter {key!r} jumped from {last.raw / 1e3:g} J (seq {last.seq}) and "
                f"stays there ({raw / 1e3:g} J, seq {seq}): the new baseline, the jump "
                f"not booked"
            )
        last.suspect = (seq, t_us, raw)
        self.n_faults += 1
        max_w = self.max_power_w(key) if self.max_power_w is not None else None
        elapsed_s = max(0, t_us - last.t_us) / US_PER_S
        return None, (
            f"counter {key!r} rose by {rise / 1e3:g} J in {elapsed_s:g} s "
            f"(seq {last.seq} -> {seq}): more than the source can produce "
            f"({allowance / 1e3:g} J at most at {max_w:g} W); not booked"
        )

    def _rebase(self, key: str, last: _Latest, seq: int, t_us: int, raw: int) -> int:
        """A new baseline at ``raw``: the booked value stays where it was, and so does
        the newest time (a backdated reset must not widen the next allowance)."""
        self.n_resets += 1
        booked = last.raw + last.offset
        self.latest[key] = _Latest(seq, max(t_us, last.t_us), raw, booked - raw, seq)
        return booked

    def forget(self, key: str, before_us: int) -> None:
        """Drop a counter whose last sample is older than ``before_us``."""
        last = self.latest.get(key)
        if last is not None and last.t_us < before_us:
            del self.latest[key]
            self._max_w.pop(key, None)

    def dump(self) -> dict[str, list[Any]]:
        return {
            k: [x.seq, x.t_us, x.raw, x.offset, x.epoch, list(x.suspect) if x.suspect else None]
            for k, x in self.latest.items()
        }

    def load(self, d: dict[str, list[Any]]) -> None:
        for k, v in d.items():
            self.latest[k] = _Latest(v[0], v[1], v[2], v[3], v[4], tuple(v[5]) if v[5] else None)


# (index in the batch, container, app, cumulative mJ) of one container in a node batch
BatchEntry = tuple[int, str, str, int]


__all__ = [
    "COUNTER_MARGIN",
    "COUNTER_SLACK_S",
    "BatchEntry",
    "CounterGuard",
    "SeqWindow",
    "value_error",
]
