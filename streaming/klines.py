"""Closed-bar windows: the bar type, interval arithmetic, contiguity and hole finding.

A window's invariant (bybit_protocol.md §7): consecutive starts differ by exactly one interval, and
its last bar is the most recent fully closed one, judged on the exchange clock. Pure functions only.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from decimal import Decimal
from typing import NamedTuple

from streaming.errors import StoreError

__all__ = [
    "Bar",
    "decode_bar",
    "encode_bar",
    "interval_ms",
    "last_closed_start",
]

MINUTE_MS = 60_000


class Bar(NamedTuple):
    """A closed bar. Values keep the exchange's exact decimal strings.

    A named tuple, not a frozen dataclass: every signal decodes its four windows from the store
    (about 1,000 bars), and a frozen dataclass's ``__init__`` cost as much as the six Decimals."""

    start: int
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    turnover: Decimal


def interval_ms(interval: str) -> int:
    """Milliseconds in a fixed-length Bybit interval given in minutes (``"1"``, ``"60"``, ...)."""
    if not (interval.isascii() and interval.isdigit()) or int(interval) <= 0:
        raise ValueError(f"not a fixed-length minute interval: {interval!r}")
    return int(interval) * MINUTE_MS


def last_closed_start(now_ms: int, step_ms: int) -> int:
    """Start of the most recent bar that has fully closed at ``now_ms``."""
    return (now_ms // step_ms) * step_ms - step_ms


def is_contiguous(starts: Sequence[int], step_ms: int) -> bool:
    return all(b - a == step_ms for a, b in itertools.pairwise(starts))


def encode_bar(bar: Bar) -> bytes:
    """``start|open|high|low|close|volume|turnover`` with exact decimal strings."""
    return f"{bar.start}|{bar.open}|{bar.high}|{bar.low}|{bar.close}|{bar.volume}|{bar.turnover}".encode()


def decode_bar(raw: bytes | str) -> Bar:
    text = raw.decode() if isinstance(raw, bytes) else raw
    try:
        start, o, h, lo, c, v, t = text.split("|")
        return Bar(int(start), Decimal(o), Decimal(h), Decimal(lo), Decimal(c), Decimal(v), Decimal(t))
    except (ValueError, ArithmeticError) as exc:  # a field too many or too few, or not a number
        raise StoreError(f"corrupt bar record {text[:80]!r}") from exc
