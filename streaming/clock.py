"""The exchange clock: time as the exchange reports it, never the local wall clock.

Staleness and "the most recent closed bar" are judged on it (DESIGN.md "Time"), so a replay at any
speed behaves like the live market and a skewed local clock cannot make good data look stale.
"""

from __future__ import annotations

__all__ = ["MAX_AHEAD_MS", "ExchangeClock", "from_the_future"]

# No real or replayed exchange time is this far ahead of the local wall clock (a sane skew bound).
MAX_AHEAD_MS = 300_000


def from_the_future(ts_ms: int, wall_ms: float, max_ahead_ms: int = MAX_AHEAD_MS) -> bool:
    """An exchange timestamp further ahead of the local wall clock than any real one can be: it must
    not enter a window or move a clock (one such frame would freeze both for good)."""
    return ts_ms > wall_ms + max_ahead_ms


class ExchangeClock:
    """Monotone: the latest exchange timestamp observed (frame ``ts``, REST envelope ``time``)."""

    def __init__(self) -> None:
        self._now = 0

    def observe(self, ts_ms: int) -> None:
        if ts_ms > self._now:
            self._now = ts_ms

    def now_ms(self) -> int:
        return self._now

    @property
    def known(self) -> bool:
        return self._now > 0
