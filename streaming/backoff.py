"""Capped exponential backoff with jitter, reset after a healthy connection.

Delays and randomness are injectable so tests run in milliseconds (cf. redis-py ``backoff.py``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

__all__ = ["Backoff"]


@dataclass
class Backoff:
    base_s: float = 0.5
    cap_s: float = 30.0
    healthy_after_s: float = 30.0  # a connection that lived this long resets the sequence
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def next_delay(self) -> float:
        """Uniform in [c/2, c], c = min(cap, base·2^attempt): "equal jitter", never near zero, so a
        flapping feed cannot turn into a reconnect storm (Bybit: < 500 connects / 5 min)."""
        ceiling = min(self.cap_s, self.base_s * (2**self.attempt))
        self.attempt = min(self.attempt + 1, 32)
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.attempt = 0

    def connection_ended(self, lived_s: float, delivered: bool = False) -> None:
        """Reset after a healthy connection: one that lived ``healthy_after_s``, or one on which every
        subscribed topic delivered data (under frequent drops no connection lives 30 s, yet each was
        healthy while it lasted: the next must not wait the capped delay)."""
        if lived_s >= self.healthy_after_s or delivered:
            self.reset()
