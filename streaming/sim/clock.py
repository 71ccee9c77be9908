"""The simulated exchange clock: market time that runs ``speed`` times faster than the wall clock."""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["SimClock"]


class SimClock:
    """Exchange time of the simulation: starts at ``start_ms`` and runs ``speed`` market ms per wall ms.

    ``speed=600`` is ten minutes of market per wall second. ``monotonic`` is injectable for tests.
    """

    def __init__(self, start_ms: int, speed: float, monotonic: Callable[[], float] = time.monotonic) -> None:
        if not (speed > 0 and math.isfinite(speed)):
            raise ValueError(f"speed must be a positive finite number, got {speed!r}")
        self.start_ms = start_ms
        self.speed = speed
        self._monotonic = monotonic
        self._t0 = monotonic()

    def now_ms(self) -> int:
        return self.start_ms + int((self._monotonic() - self._t0) * 1000.0 * self.speed)

    def wall_seconds_until(self, market_ms: int) -> float:
        """Wall seconds until the clock reads ``market_ms`` (0 if already past)."""
        return max(0.0, (market_ms - self.now_ms()) / (1000.0 * self.speed))
