"""Historical bar files and their aggregation: the one reader of the project's 1m bar CSVs.

Owns the file format (``open_time_ms,open,high,low,close,volume``, optionally gzip), the
symbol-from-file-name rule, and resampling to 5/15/60-minute bars. Bar values travel as the exact
decimal strings of the source CSV, so a confirmed bar pushed by the simulator equals the CSV row
character for character; aggregated bars keep exact strings too (open/high/low/close are the strings
of the 1m bars they come from, volume and turnover exact ``Decimal`` sums). Pure: no I/O but reading
the file. Used by the simulator and by ``models/`` for training data.
"""

from __future__ import annotations

import csv
import gzip
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, NamedTuple

import numpy as np
import numpy.typing as npt

__all__ = [
    "AGGREGATE_MINUTES",
    "MINUTE_MS",
    "BarFile",
    "BarValues",
    "Bars",
    "aggregate",
    "complete_buckets",
    "format_units",
    "load_1m_bars",
    "read_bar_file",
    "symbol_from_path",
    "turnover_str",
]

MINUTE_MS = 60_000
AGGREGATE_MINUTES = (5, 15, 60)
_CSV_COLUMNS = ("open_time_ms", "open", "high", "low", "close", "volume")
# Plain decimals only: exponent notation would not survive as an exact Bybit-style string.
_DECIMAL_RE = re.compile(r"^\d+(?:\.\d+)?$")
_DECIMAL_COLUMN_RE = re.compile(r"\d+(?:\.\d+)?(?:\n\d+(?:\.\d+)?)*")
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


@dataclass(frozen=True, slots=True, eq=False)
class BarFile:
    """A bar CSV as read: starts, the five value columns as the file's strings, and as floats."""

    path: Path
    start_ms: Int64Array
    strings: tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...], tuple[str, ...]]
    ohlcv: Float64Array  # (n, 5): open, high, low, close, volume

    def __len__(self) -> int:
        return len(self.start_ms)


def read_bar_file(path: str | Path, *, sort: bool = False) -> BarFile:
    """Read a bar CSV (optionally gzip) with columns ``open_time_ms,open,high,low,close,volume``.

    Any interval: starts must be minute-aligned and strictly increasing. Raises ``ValueError``
    naming the file and line when a row is malformed, out of order, not aligned to a minute, or
    has inconsistent OHLC. With ``sort`` (training data, where exchange dumps repeat or reorder
    rows), rows are first put in start order and a repeated start keeps its first row.
    """
    path = Path(path)
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
        rows = list(reader)
    if sort:
        rows = _sorted_unique(rows, idx[0])
    found = _read_fast(rows, idx)
    if found is None:
        starts, cols = _read_checked(path, rows, idx)
        found = np.asarray(starts, dtype=np.int64), cols, np.asarray(cols, dtype=np.float64).reshape(5, -1)
    start_ms, cols, values = found
    if not len(start_ms):
        raise ValueError(f"{path}: no bars")
    strings = (tuple(cols[0]), tuple(cols[1]), tuple(cols[2]), tuple(cols[3]), tuple(cols[4]))
    return BarFile(path, start_ms, strings, np.ascontiguousarray(values.T))


def _sorted_unique(rows: list[list[str]], start_col: int) -> list[list[str]]:
    """Rows in start order (stable), the first of each start kept; a row whose start is not an
    integer stays where it is for the checked reader to name."""
    try:
        keyed = sorted(((int(r[start_col]), i) for i, r in enumerate(rows) if r))
    except (ValueError, IndexError):
        return rows
    out, last = [], None
    for start, i in keyed:
        if start != last:
            out.append(rows[i])
            last = start
    return out


def _read_fast(rows: list[list[str]], idx: list[int]) -> tuple[Int64Array, list[list[str]], Float64Array] | None:
    """Whole-column checks for a well-formed file; ``None`` sends it to :func:`_read_checked`."""
    rows = [r for r in rows if r]
    try:
        cols = [[r[k] for r in rows] for k in idx]
        starts = np.asarray(cols[0], dtype=np.int64)
    except (ValueError, IndexError, OverflowError):
        return None
    values = cols[1:]
    if not all(_DECIMAL_COLUMN_RE.fullmatch("\n".join(c)) for c in values if c):
        return None
    if len(starts) and (int(starts[0]) < 0 or np.any(starts % MINUTE_MS) or np.any(np.diff(starts) <= 0)):
        return None
    floats = np.asarray(values, dtype=np.float64).reshape(5, -1)
    o, h, lo, c = floats[0], floats[1], floats[2], floats[3]
    if not np.all((lo > 0) & (lo <= np.minimum(o, c)) & (np.maximum(o, c) <= h)):
        return None
    return starts, values, floats


def _read_checked(path: Path, rows: list[list[str]], idx: list[int]) -> tuple[list[int], list[list[str]]]:
    """Row by row, so the error names the first bad line."""
    starts: list[int] = []
    cols: list[list[str]] = [[], [], [], [], []]
    prev = -1
    for lineno, row in enumerate(rows, start=2):
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
    return starts, cols


def load_1m_bars(path: str | Path) -> Bars:
    """Read a 1m bar file (:func:`read_bar_file`) into :class:`Bars` with exact wire strings."""
    f = read_bar_file(path)
    open_s, high_s, low_s, close_s, volume_s = f.strings
    return Bars(
        interval_minutes=1,
        start_ms=f.start_ms,
        open=np.ascontiguousarray(f.ohlcv[:, 0]),
        high=np.ascontiguousarray(f.ohlcv[:, 1]),
        low=np.ascontiguousarray(f.ohlcv[:, 2]),
        close=np.ascontiguousarray(f.ohlcv[:, 3]),
        volume=np.ascontiguousarray(f.ohlcv[:, 4]),
        open_s=open_s,
        high_s=high_s,
        low_s=low_s,
        close_s=close_s,
        volume_s=volume_s,
        turnover_s=tuple(turnover_str(v, c) for v, c in zip(volume_s, close_s, strict=True)),
        price_decimals=max(_decimals(s) for col in (open_s, high_s, low_s, close_s) for s in col),
        volume_decimals=max(_decimals(s) for s in volume_s),
    )


def complete_buckets(start_ms: Int64Array, base_minutes: int, minutes: int) -> Int64Array:
    """Row indices ``(buckets, minutes // base_minutes)`` of every complete ``minutes`` bucket.

    ``start_ms`` are strictly increasing starts of ``base_minutes`` bars, so a bucket holding
    ``minutes // base_minutes`` rows holds all of them; a bucket with a hole is left out.
    """
    if minutes < base_minutes or minutes % base_minutes:
        raise ValueError(f"cannot build {minutes}m bars from {base_minutes}m bars")
    per = minutes // base_minutes
    buckets = start_ms // (minutes * MINUTE_MS)
    firsts = np.concatenate(([0], np.flatnonzero(np.diff(buckets)) + 1)).astype(np.int64)
    counts = np.diff(np.concatenate((firsts, [len(start_ms)])))
    complete = firsts[counts == per]
    idx: Int64Array = complete[:, None] + np.arange(per, dtype=np.int64)
    return idx


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
    idx = complete_buckets(bars_1m.start_ms, 1, minutes)
    complete = idx[:, 0]
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


def format_units(units: int, decimals: int) -> str:
    """An integer count of ``10**-decimals`` as a plain decimal string: ``(12345, 2)`` -> ``"123.45"``."""
    if decimals == 0:
        return str(units)
    whole, frac = divmod(units, 10**decimals)
    return f"{whole}.{frac:0{decimals}d}"
