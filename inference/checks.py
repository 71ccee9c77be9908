"""Data checks before any inference: a component never votes on bad data.

A window is servable for a component needing ``need`` bars when its newest ``need`` bars are
contiguous, their values finite with positive prices, and the newest one is the most recent bar
closed on the exchange clock. A book is servable when READY and younger than ``max_age_ms`` of
exchange time. Each check returns ``None`` or a short reason code that the signal (or its absence)
reports.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from streaming.klines import Bar, interval_ms, is_contiguous, last_closed_start
from streaming.store import BookStatus

__all__ = ["bars_to_array", "check_book", "check_window"]


def check_window(bars: Sequence[Bar], interval: str, need: int, now_ms: int) -> str | None:
    """``None`` if the newest ``need`` bars can be used at exchange time ``now_ms``, else a reason."""
    if len(bars) < need:
        return "short_window" if bars else "empty_window"
    tail = bars[-need:]
    step = interval_ms(interval)
    if not is_contiguous([b.start for b in tail], step):
        return "holed_window"
    expected = last_closed_start(now_ms, step)
    if tail[-1].start < expected:
        return "stale_window"
    if tail[-1].start > expected:
        return "future_bar"
    for b in tail:
        prices = (b.open, b.high, b.low, b.close)
        if not all(p.is_finite() and p > 0 for p in prices) or not (b.volume.is_finite() and b.volume >= 0):
            return "bad_values"
        if not b.low <= min(b.open, b.close) <= max(b.open, b.close) <= b.high:
            return "bad_values"
    return None


def check_book(book: BookStatus | None, now_ms: int, max_age_ms: int) -> str | None:
    if book is None:
        return "no_book"
    if book.state != "READY":
        return "book_not_ready"
    if now_ms - book.ts > max_age_ms:
        return "book_stale"
    return None


def bars_to_array(bars: Sequence[Bar]) -> npt.NDArray[np.float64]:
    """(n, 5) open, high, low, close, volume as float64, for the feature and rendering code."""
    return np.array([(b.open, b.high, b.low, b.close, b.volume) for b in bars], dtype=np.float64).reshape(-1, 5)
