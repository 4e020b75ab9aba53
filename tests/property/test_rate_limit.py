"""The token bucket's promise: over any interval, at most ``burst`` + ``rate`` x its
length events are let through, and a caller that waits what it was told gets one."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ecovisor.core.rate_limit import TokenBucket


@given(
    rate=st.floats(0.1, 1_000),
    burst=st.integers(1, 50),
    gaps=st.lists(st.floats(0, 2), min_size=1, max_size=300),
)
def test_never_more_than_burst_plus_rate_times_elapsed(rate: float, burst: int,
                                                       gaps: list[float]) -> None:  # fmt: skip
    b = TokenBucket(rate, burst)
    now, taken = 0.0, 0
    for g in gaps:
        now += g
        if b.take(now) == 0.0:
            taken += 1
    assert taken <= burst + rate * now + 1e-6


@given(rate=st.floats(0.1, 1_000), burst=st.integers(1, 50))
def test_waiting_the_answer_gives_a_token(rate: float, burst: int) -> None:
    b = TokenBucket(rate, burst)
    for _ in range(burst):
        assert b.take(10.0) == 0.0
    wait = b.take(10.0)
    assert wait > 0 and b.take(10.0 + wait * 1.000001) == 0.0


def test_a_clock_going_back_adds_nothing() -> None:
    b = TokenBucket(1.0, 1)
    assert b.take(100.0) == 0.0
    assert b.take(50.0) > 0 and b.take(100.5) > 0 and b.take(101.0) == 0.0
