"""The event tape: the timed sequence of kline pushes and book moves one symbol's bars produce.

Pure: :class:`SymbolTape` says what happens at which market time; the market in
:mod:`streaming.sim.markets` turns those events into Bybit frames on the clock.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from streaming.sim.bars import MINUTE_MS, Bars, BarValues
from streaming.sim.paths import BucketAccumulator, intrabar_price, partial_bar

__all__ = ["BookEvent", "KlineEvent", "SymbolTape", "TapeEvent"]


class KlineEvent(NamedTuple):
    """A kline push: ``confirm`` is true for a closed bar."""

    ts: int
    interval: str
    start: int
    values: BarValues
    confirm: bool


class BookEvent(NamedTuple):
    """The book moves to ``mid``."""

    ts: int
    mid: float


TapeEvent = KlineEvent | BookEvent

# Tie order within a bar's schedule: the book move to the close price, then the close itself, which
# must stay the bar's last item (the next bar's opening push follows it).
_BOOK, _KLINE, _CLOSE = 0, 1, 2


class SymbolTape:
    """The timed event sequence of one symbol replayed from its 1m bars.

    Per 1m bar starting at S: ``kline_updates`` confirm=false pushes at S + j·60s/n (the first at S,
    right after the previous bar's close), ``book_updates`` book moves along the intra-bar path, and
    at S + 60 s the confirm=true bar with the CSV values, then the confirm=true 5/15/60 bars whose
    bucket ends there. Each kline push carries the 1m bar and the open 5/15/60 bars.

    When the consumer falls more than ``stale_after_ms`` of market time behind a bar's close, the
    bar's partial pushes and book moves are skipped and only its closes are produced, so a very
    high speed costs a few events per bar instead of an unbounded backlog.
    """

    def __init__(
        self,
        bars: Bars,
        aggregates: Mapping[int, Bars],
        start_ms: int,
        *,
        kline_updates: int,
        book_updates: int,
        stale_after_ms: int,
    ) -> None:
        if kline_updates < 1:
            raise ValueError("kline_updates must be >= 1")
        if book_updates < 0:
            raise ValueError("book_updates must be >= 0")
        self._bars = bars
        self._aggs = dict(aggregates)
        self._stale_after = stale_after_ms
        self._i = int(np.searchsorted(bars.start_ms, start_ms))
        items = [(j * MINUTE_MS // kline_updates, _KLINE, j / kline_updates) for j in range(kline_updates)]
        items += [((j + 1) * MINUTE_MS // book_updates, _BOOK, (j + 1) / book_updates) for j in range(book_updates)]
        items.append((MINUTE_MS, _CLOSE, 1.0))
        self._schedule = sorted(items, key=lambda it: (it[0], it[1]))
        self._close_k = len(self._schedule) - 1
        self._k = 0
        self._accs: dict[int, BucketAccumulator] = {}
        if self._i < len(bars):
            s = int(bars.start_ms[self._i])
            for m in self._aggs:
                acc = self._acc(m, s)
                for j in range(int(np.searchsorted(bars.start_ms, acc.bucket_start)), self._i):
                    acc.add(bars.values(j))

    @property
    def exhausted(self) -> bool:
        return self._i >= len(self._bars)

    @property
    def price(self) -> float:
        """The open of the bar in progress (the last close once exhausted)."""
        if self.exhausted:
            return float(self._bars.close[-1])
        return float(self._bars.open[self._i])

    def next_time(self) -> int | None:
        """Market time of the next event, or ``None`` at the end of the data."""
        if self.exhausted:
            return None
        return int(self._bars.start_ms[self._i]) + self._schedule[self._k][0]

    def _acc(self, minutes: int, start: int) -> BucketAccumulator:
        bucket = start // (minutes * MINUTE_MS) * (minutes * MINUTE_MS)
        acc = self._accs.get(minutes)
        if acc is None or acc.bucket_start != bucket:
            acc = self._accs[minutes] = BucketAccumulator(bucket)
        return acc

    def pop(self, now_ms: int) -> list[TapeEvent]:
        """Produce the next event(s); ``now_ms`` is the market clock, used only to detect lag."""
        if self.exhausted:
            return []
        bars, i = self._bars, self._i
        s = int(bars.start_ms[i])
        if now_ms >= s + MINUTE_MS + self._stale_after:
            self._k = self._close_k
        offset, kind, frac = self._schedule[self._k]
        t = s + offset
        if kind == _CLOSE:
            values = bars.values(i)
            out: list[TapeEvent] = [KlineEvent(t, "1", s, values, True)]
            for m, agg in self._aggs.items():
                acc = self._acc(m, s)
                acc.add(values)
                if (s + MINUTE_MS) % (m * MINUTE_MS) == 0:
                    k = agg.index_of(acc.bucket_start)
                    if k is not None:
                        out.append(KlineEvent(t, str(m), acc.bucket_start, agg.values(k), True))
            self._i += 1
            self._k = 0
            return out
        self._k += 1
        if kind == _BOOK:
            o, h, lo, c = bars.open[i], bars.high[i], bars.low[i], bars.close[i]
            return [BookEvent(t, intrabar_price(float(o), float(h), float(lo), float(c), frac))]
        part = partial_bar(bars, i, frac)
        events: list[TapeEvent] = [KlineEvent(t, "1", s, part, False)]
        for m in self._aggs:
            acc = self._acc(m, s)
            events.append(KlineEvent(t, str(m), acc.bucket_start, acc.with_partial(part), False))
        return events
