"""A token bucket: at most ``rate`` events a second on average, ``burst`` at once. Pure
(the caller passes the time), so one rule serves any entry point that must bound how
fast one tenant can make the platform work (the API's commands: docs/api.md)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TokenBucket:
    rate: float  # tokens added per second (> 0)
    burst: float  # most tokens held (>= 1)
    tokens: float = -1.0  # -1: full at the first take
    last: float = 0.0

    def take(self, now: float) -> float:
        """Take one token at time ``now`` (s, monotonic): 0.0 when taken, else the
        seconds until one is there (nothing taken). A clock going back adds nothing."""
        if self.tokens < 0:
            self.tokens, self.last = self.burst, now
        elif now > self.last:
            self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
            self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        return (1.0 - self.tokens) / self.rate
