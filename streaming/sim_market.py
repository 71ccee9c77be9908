"""The exchange simulator's market model: historical bars, aggregation, intra-bar paths, a synthetic
order book and the simulated exchange clock.

Pure: no sockets and no event loop. :mod:`streaming.simulator` turns the events produced here into
Bybit wire frames and pushes them.

Bar values travel as the exact decimal strings of the source CSV (``open_time_ms,open,high,low,close,
volume``), so a confirmed bar pushed by the simulator equals the CSV row character for character.
Aggregated bars keep exact strings too: open/high/low/close are the strings of the 1m bars they come
from, volume and turnover are exact ``Decimal`` sums.
"""

from __future__ import annotations

import csv
import gzip
import itertools
import math
import random
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "AGGREGATE_MINUTES",
    "MINUTE_MS",
    "BarValues",
    "Bars",
    "BookEvent",
    "BucketAccumulator",
    "KlineEvent",
    "Side",
    "SimClock",
    "SymbolTape",
    "SyntheticBook",
    "aggregate",
    "diff_levels",
    "format_levels",
    "intrabar_price",
    "load_1m_bars",
    "open_bucket",
    "partial_bar",
    "symbol_from_path",
    "tick_for_price",
    "turnover_str",
]

MINUTE_MS = 60_000
AGGREGATE_MINUTES = (5, 15, 60)
_CSV_COLUMNS = ("open_time_ms", "open", "high", "low", "close", "volume")
# Plain decimals only: exponent notation would not survive as an exact Bybit-style string.
_DECIMAL_RE = re.compile(r"^\d+(?:\.\d+)?$")
_SYMBOL_RE = re.compile(r"^[A-Z0-9]+(?:USDT|USDC|USD)$")
# Bybit linear turnover strings carry 4 decimals (e.g. "293656450.7204").
_TURNOVER_QUANTUM = Decimal("0.0001")

Int64Array = npt.NDArray[np.int64]
Float64Array = npt.NDArray[np.float64]


class BarValues(NamedTuple):
    """One bar's values as the decimal strings that go on the wire."""

    open: str
    high: str
    low: str
    close: str
    volume: str
    turnover: str


@dataclass(frozen=True, slots=True, eq=False)
class Bars:
    """Column arrays of consecutive bars of one interval (floats for arithmetic, strings for the wire)."""

    interval_minutes: int
    start_ms: Int64Array
    open: Float64Array
    high: Float64Array
    low: Float64Array
    close: Float64Array
    volume: Float64Array
    open_s: tuple[str, ...]
    high_s: tuple[str, ...]
    low_s: tuple[str, ...]
    close_s: tuple[str, ...]
    volume_s: tuple[str, ...]
    turnover_s: tuple[str, ...]
    price_decimals: int  # most decimals seen in a price string: the tick is 10**-price_decimals
    volume_decimals: int

    def __len__(self) -> int:
        return len(self.start_ms)

    @property
    def interval_ms(self) -> int:
        return self.interval_minutes * MINUTE_MS

    def values(self, i: int) -> BarValues:
        return BarValues(
            self.open_s[i],
            self.high_s[i],
            self.low_s[i],
            self.close_s[i],
            self.volume_s[i],
            self.turnover_s[i],
        )

    def row(self, i: int) -> tuple[int, str, str, str, str, str]:
        """``(start, open, high, low, close, volume)`` of bar ``i``."""
        return (
            int(self.start_ms[i]),
            self.open_s[i],
            self.high_s[i],
            self.low_s[i],
            self.close_s[i],
            self.volume_s[i],
        )

    def index_of(self, start_ms: int) -> int | None:
        """Index of the bar starting at ``start_ms``, or ``None``."""
        k = int(np.searchsorted(self.start_ms, start_ms))
        if k < len(self.start_ms) and int(self.start_ms[k]) == start_ms:
            return k
        return None


def turnover_str(volume: str, close: str) -> str:
    """The simulator's turnover for a bar: ``volume * close`` rounded to 4 decimals.

    The source files carry no turnover; one rule for REST and WebSocket keeps both consistent.
    """
    return format((Decimal(volume) * Decimal(close)).quantize(_TURNOVER_QUANTUM), "f")


def _decimals(text: str) -> int:
    _, _, frac = text.partition(".")
    return len(frac)


def symbol_from_path(path: str | Path) -> str:
    """The instrument named in a bar file's name: ``bybit_linear_BTCUSDT_1m.csv.gz`` -> ``BTCUSDT``.

    The symbol is the first all-uppercase token ending in USDT, USDC or USD.
    """
    name = Path(path).name
    for token in re.split(r"[_.\-]", name):
        if _SYMBOL_RE.match(token):
            return token
    raise ValueError(
        f"cannot tell the symbol from file name {name!r}: expected an uppercase token ending in "
        "USDT, USDC or USD, e.g. bybit_linear_BTCUSDT_1m.csv.gz"
    )


def _open_text(path: Path) -> IO[str]:
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def load_1m_bars(path: str | Path) -> Bars:
    """Read a 1m bar CSV (optionally gzip) with columns ``open_time_ms,open,high,low,close,volume``.

    Raises ``ValueError`` naming the file and line when a row is malformed, out of order, not
    aligned to a minute, or has inconsistent OHLC.
    """
    path = Path(path)
    starts: list[int] = []
    cols: list[list[str]] = [[], [], [], [], []]
    with _open_text(path) as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: empty file")
        names = [h.strip() for h in header]
        try:
            idx = [names.index(c) for c in _CSV_COLUMNS]
        except ValueError:
            raise ValueError(f"{path}: header must contain {','.join(_CSV_COLUMNS)}, got {','.join(names)}") from None
        prev = -1
        for lineno, row in enumerate(reader, start=2):
            if not row:
                continue
            try:
                start = int(row[idx[0]])
                fields = [row[k].strip() for k in idx[1:]]
            except (ValueError, IndexError):
                raise ValueError(f"{path}:{lineno}: malformed row {row!r}") from None
            if not all(_DECIMAL_RE.match(f) for f in fields):
                raise ValueError(f"{path}:{lineno}: values must be plain decimals, got {fields!r}")
            if start % MINUTE_MS != 0 or start <= prev:
                raise ValueError(f"{path}:{lineno}: open_time_ms {start} is not minute-aligned or not increasing")
            o, h, lo, c = (float(f) for f in fields[:4])
            if not (0 < lo <= min(o, c) and max(o, c) <= h):
                raise ValueError(f"{path}:{lineno}: inconsistent OHLC {fields[:4]!r}")
            prev = start
            starts.append(start)
            for col, value in zip(cols, fields, strict=True):
                col.append(value)
    if not starts:
        raise ValueError(f"{path}: no bars")
    open_s, high_s, low_s, close_s, volume_s = (tuple(c) for c in cols)
    return Bars(
        interval_minutes=1,
        start_ms=np.asarray(starts, dtype=np.int64),
        open=np.asarray(open_s, dtype=np.float64),
        high=np.asarray(high_s, dtype=np.float64),
        low=np.asarray(low_s, dtype=np.float64),
        close=np.asarray(close_s, dtype=np.float64),
        volume=np.asarray(volume_s, dtype=np.float64),
        open_s=open_s,
        high_s=high_s,
        low_s=low_s,
        close_s=close_s,
        volume_s=volume_s,
        turnover_s=tuple(turnover_str(v, c) for v, c in zip(volume_s, close_s, strict=True)),
        price_decimals=max(_decimals(s) for col in (open_s, high_s, low_s, close_s) for s in col),
        volume_decimals=max(_decimals(s) for s in volume_s),
    )


def aggregate(bars_1m: Bars, minutes: int) -> Bars:
    """Resample 1m bars to ``minutes``: open=first, high=max, low=min, close=last, volume=sum.

    Only complete buckets aligned to the interval (``start % (minutes*60000) == 0``, every minute
    present) are produced: a bucket with a missing minute would be a bar the exchange never closed
    that way, so it is left out rather than invented.
    """
    if bars_1m.interval_minutes != 1:
        raise ValueError("aggregate() expects 1m bars")
    if minutes < 1:
        raise ValueError(f"minutes must be >= 1, got {minutes}")
    if minutes == 1:
        return bars_1m
    step = minutes * MINUTE_MS
    n = len(bars_1m)
    buckets = bars_1m.start_ms // step
    firsts = np.concatenate(([0], np.flatnonzero(np.diff(buckets)) + 1)).astype(np.int64)
    counts = np.diff(np.concatenate((firsts, [n])))
    # Starts are strictly increasing and minute-aligned, so `minutes` rows in one bucket are all of it.
    complete = firsts[counts == minutes]
    idx = complete[:, None] + np.arange(minutes, dtype=np.int64)
    rows = np.arange(len(complete))
    hi_idx = idx[rows, bars_1m.high[idx].argmax(axis=1)]
    lo_idx = idx[rows, bars_1m.low[idx].argmin(axis=1)]
    last = complete + minutes - 1
    vol_dec = [Decimal(s) for s in bars_1m.volume_s]
    turn_dec = [Decimal(s) for s in bars_1m.turnover_s]
    volume_s = tuple(format(sum(vol_dec[f : f + minutes], Decimal(0)), "f") for f in complete.tolist())
    turnover_s = tuple(format(sum(turn_dec[f : f + minutes], Decimal(0)), "f") for f in complete.tolist())
    return Bars(
        interval_minutes=minutes,
        start_ms=bars_1m.start_ms[complete],
        open=bars_1m.open[complete],
        high=bars_1m.high[hi_idx],
        low=bars_1m.low[lo_idx],
        close=bars_1m.close[last],
        volume=np.asarray(volume_s, dtype=np.float64),
        open_s=tuple(bars_1m.open_s[k] for k in complete.tolist()),
        high_s=tuple(bars_1m.high_s[k] for k in hi_idx.tolist()),
        low_s=tuple(bars_1m.low_s[k] for k in lo_idx.tolist()),
        close_s=tuple(bars_1m.close_s[k] for k in last.tolist()),
        volume_s=volume_s,
        turnover_s=turnover_s,
        price_decimals=bars_1m.price_decimals,
        volume_decimals=bars_1m.volume_decimals,
    )


# --- intra-bar price path -------------------------------------------------------------------------


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


def _fmt_units(units: int, decimals: int) -> str:
    if decimals == 0:
        return str(units)
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"


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
    close_s = _fmt_units(cur, bars.price_decimals)
    volume_s = _fmt_units(round(float(bars.volume[i]) * max(f, 0.0) * 10**bars.volume_decimals), bars.volume_decimals)
    return BarValues(
        open=bars.open_s[i],
        high=_fmt_units(max(*units, cur), bars.price_decimals),
        low=_fmt_units(min(*units, cur), bars.price_decimals),
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


# --- event tape -----------------------------------------------------------------------------------


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


# --- clock ----------------------------------------------------------------------------------------


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


# --- synthetic order book -------------------------------------------------------------------------


def tick_for_price(price: float) -> Decimal:
    """A power-of-ten tick about a millionth of ``price`` (0.1 for BTC near 100k)."""
    if not (price > 0 and math.isfinite(price)):
        raise ValueError(f"price must be positive, got {price!r}")
    return Decimal(1).scaleb(math.floor(math.log10(price)) - 6)


Side = list[tuple[int, str]]  # (price in ticks, size string), best first


def diff_levels(old: Mapping[int, str], new: Iterable[tuple[int, str]], *, descending: bool) -> Side:
    """Bybit delta levels turning side ``old`` into ``new``: changed or new sizes, ``"0"`` for removed."""
    new_map = dict(new)
    out = [(p, s) for p, s in new_map.items() if old.get(p) != s]
    out += [(p, "0") for p in old if p not in new_map]
    out.sort(key=lambda level: level[0], reverse=descending)
    return out


_FACTOR_BITS = 12


class SyntheticBook:
    """A deterministic, plausible L2 book around a mid price.

    ``depth`` levels a side: the touch one tick either side of mid, then levels on a fixed grid about
    1 bp apart, so a small move changes a few levels rather than all of them. Sizes are random
    (log-normal notional, seeded). Never crossed, never empty.
    """

    def __init__(
        self,
        mid: float,
        *,
        depth: int = 50,
        seed: int = 0,
        tick: Decimal | str | None = None,
        size_decimals: int = 3,
        level_notional: float = 25_000.0,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.tick = Decimal(tick) if tick is not None else tick_for_price(mid)
        if self.tick <= 0:
            raise ValueError(f"tick must be positive, got {self.tick}")
        self._tick_f = float(self.tick)
        self._size_decimals = size_decimals
        self._notional = level_notional
        self._size_scale = 10**size_decimals
        self._rng = random.Random(seed)
        self._factors = [self._rng.lognormvariate(0.0, 0.8) for _ in range(1 << _FACTOR_BITS)]
        self._bids: dict[int, str] = {}
        self._asks: dict[int, str] = {}
        self.mid = mid
        self.move_ticks(mid)

    def format_price(self, ticks: int) -> str:
        return format(self.tick * ticks, "f")

    def _size(self, ticks: int, rank: int) -> str:
        # A table lookup instead of a log-normal draw per level: sizes are the hot path at high speed.
        factor = self._factors[self._rng.getrandbits(_FACTOR_BITS)]
        units = round(self._notional * factor * (1.0 + 0.03 * rank) / (ticks * self._tick_f) * self._size_scale)
        return _fmt_units(max(1, units), self._size_decimals)

    def _layout(self, mid: float) -> tuple[list[int], list[int]]:
        m = mid / self._tick_f
        best_bid = max(1, math.ceil(m) - 1)
        grid = max(1, round(mid * 1e-4 / self._tick_f))
        first_bid = (best_bid - 1) // grid * grid
        # range() stops before 0: a price must stay positive even for a tiny mid.
        bids = [best_bid, *range(first_bid, max(0, first_bid - grid * (self.depth - 1)), -grid)]
        first_ask = (best_bid + 1) // grid * grid + grid
        asks = [best_bid + 1, *range(first_ask, first_ask + grid * (self.depth - 1), grid)]
        return bids, asks

    def _rebuild(self, side: dict[int, str], prices: list[int]) -> dict[int, str]:
        """Move ``side`` onto ``prices`` in place; return the changed levels (``"0"``: removed)."""
        keep = set(prices)
        changes = {p: "0" for p in side if p not in keep}
        for p in changes:
            del side[p]
        for rank, p in enumerate(prices):
            if p not in side:
                side[p] = changes[p] = self._size(p, rank)
        # Resting sizes change too: the touch often, a couple of deeper levels each update.
        if self._rng.random() < 0.5:
            side[prices[0]] = changes[prices[0]] = self._size(prices[0], 0)
        for _ in range(2):
            rank = self._rng.randrange(len(prices))
            side[prices[rank]] = changes[prices[rank]] = self._size(prices[rank], rank)
        return changes

    def move_to(self, mid: float) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Move the book to ``mid`` and return the delta ``(bids, asks)``, each best first.

        Sizes are absolute decimal strings; ``"0"`` removes a level (Bybit delta semantics).
        """
        bids, asks = self.move_ticks(mid)
        return (
            format_levels(self, sorted(bids.items(), reverse=True)),
            format_levels(self, sorted(asks.items())),
        )

    def move_ticks(self, mid: float) -> tuple[dict[int, str], dict[int, str]]:
        """:meth:`move_to` returning the changed levels by price in ticks, unsorted and unformatted."""
        if not (mid > 0 and math.isfinite(mid)):
            raise ValueError(f"mid must be positive, got {mid!r}")
        bid_prices, ask_prices = self._layout(mid)
        self.mid = mid
        return self._rebuild(self._bids, bid_prices), self._rebuild(self._asks, ask_prices)

    def levels(self, depth: int | None = None) -> tuple[Side, Side]:
        """``(bids, asks)`` best first with prices in ticks, at most ``depth`` a side."""
        n = self.depth if depth is None else depth
        bids = sorted(self._bids.items(), reverse=True)[:n]
        asks = sorted(self._asks.items())[:n]
        return bids, asks

    def snapshot(self, depth: int | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``(bids, asks)`` best first as ``(price, size)`` strings."""
        bids, asks = self.levels(depth)
        return format_levels(self, bids), format_levels(self, asks)


def format_levels(book: SyntheticBook, side: Sequence[tuple[int, str]]) -> list[tuple[str, str]]:
    """Tick-priced levels as wire ``(price, size)`` strings."""
    return [(book.format_price(p), s) for p, s in side]
