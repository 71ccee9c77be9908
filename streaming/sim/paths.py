"""Intra-bar price paths: what a bar looks like part-way through, and the still-open higher bar.

A bar is walked at constant speed along the usual OHLC path (an up bar dips first then rallies, a
down bar the reverse), so the simulator can push plausible confirm=false klines and book moves
between closes. :class:`BucketAccumulator` and :func:`open_bucket` build the still-open 5/15/60
bar from finished 1m bars plus the current partial one. Pure.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

import numpy as np

from streaming.sim.bars import MINUTE_MS, Bars, BarValues, format_units, turnover_str

__all__ = ["BucketAccumulator", "intrabar_price", "open_bucket", "partial_bar"]


def _path(o: float, h: float, lo: float, c: float) -> tuple[float, float, float, float]:
    # The usual OHLC path assumption: an up bar dips first then rallies, a down bar the reverse.
    return (o, lo, h, c) if c >= o else (o, h, lo, c)


def _walk(o: float, h: float, lo: float, c: float, f: float) -> tuple[float, list[float]]:
    """The price at fraction ``f`` of the bar on its path (constant speed) and the vertices passed."""
    vertices = _path(o, h, lo, c)
    legs = [abs(b - a) for a, b in itertools.pairwise(vertices)]
    total = sum(legs)
    if total == 0.0 or f <= 0.0:
        return o, [o]
    dist = min(f, 1.0) * total
    passed = [o]
    for k, leg in enumerate(legs):
        if dist <= leg:
            a, b = vertices[k], vertices[k + 1]
            return a + (b - a) * (dist / leg if leg else 0.0), passed
        dist -= leg
        passed.append(vertices[k + 1])
    return c, passed


def intrabar_price(o: float, h: float, lo: float, c: float, f: float) -> float:
    """Price at fraction ``f`` in [0, 1] of a bar: open at 0, close at 1, touching high and low between."""
    return _walk(o, h, lo, c, f)[0]


def partial_bar(bars: Bars, i: int, f: float) -> BarValues:
    """Bar ``i`` as seen a fraction ``f`` into it: running high/low/close on the path, volume ``f``·v.

    ``f >= 1`` returns the bar's exact values. Prices are rounded to the file's precision.
    """
    if f >= 1.0:
        return bars.values(i)
    o, h, lo, c = float(bars.open[i]), float(bars.high[i]), float(bars.low[i]), float(bars.close[i])
    current, passed = _walk(o, h, lo, c, f)
    scale = 10**bars.price_decimals
    units = [round(p * scale) for p in passed]
    cur = round(current * scale)
    close_s = format_units(cur, bars.price_decimals)
    volume_s = format_units(round(float(bars.volume[i]) * max(f, 0.0) * 10**bars.volume_decimals), bars.volume_decimals)
    return BarValues(
        open=bars.open_s[i],
        high=format_units(max(*units, cur), bars.price_decimals),
        low=format_units(min(*units, cur), bars.price_decimals),
        close=close_s,
        volume=volume_s,
        turnover=turnover_str(volume_s, close_s),
    )


class BucketAccumulator:
    """Running OHLCV of the finished 1m bars of one higher-interval bucket."""

    __slots__ = ("bucket_start", "high", "low", "open", "turnover", "volume")

    def __init__(self, bucket_start: int) -> None:
        self.bucket_start = bucket_start
        self.open: str | None = None
        self.high: str | None = None
        self.low: str | None = None
        self.volume = Decimal(0)
        self.turnover = Decimal(0)

    def add(self, bar: BarValues) -> None:
        if self.open is None:
            self.open = bar.open
        if self.high is None or float(bar.high) > float(self.high):
            self.high = bar.high
        if self.low is None or float(bar.low) < float(self.low):
            self.low = bar.low
        self.volume += Decimal(bar.volume)
        self.turnover += Decimal(bar.turnover)

    def with_partial(self, part: BarValues) -> BarValues:
        """The bucket's still-open bar: the finished minutes plus the current minute's partial."""
        high = part.high if self.high is None or float(part.high) > float(self.high) else self.high
        low = part.low if self.low is None or float(part.low) < float(self.low) else self.low
        return BarValues(
            open=self.open if self.open is not None else part.open,
            high=high,
            low=low,
            close=part.close,
            volume=format(self.volume + Decimal(part.volume), "f"),
            turnover=format(self.turnover + Decimal(part.turnover), "f"),
        )


def open_bucket(bars_1m: Bars, minutes: int, now_ms: int) -> tuple[int, BarValues] | None:
    """The still-open ``minutes`` bar at ``now_ms`` as ``(start, values)``, or ``None`` without data."""
    current = bars_1m.index_of(now_ms // MINUTE_MS * MINUTE_MS)
    if current is None:
        return None
    step = minutes * MINUTE_MS
    bucket = now_ms // step * step
    acc = BucketAccumulator(bucket)
    first = int(np.searchsorted(bars_1m.start_ms, bucket))
    for j in range(first, current):
        acc.add(bars_1m.values(j))
    f = (now_ms - int(bars_1m.start_ms[current])) / MINUTE_MS
    return bucket, acc.with_partial(partial_bar(bars_1m, current, f))
