"""Historical bars for training and evaluation: loading, aggregation, samples, time splits.

Bars come from ``../shared/data`` (gzip CSV: ``open_time_ms,open,high,low,close,volume``, UTC, bar
open time). Higher timeframes are aggregated here from 1m bars exactly as the exchange forms them
(only complete, aligned buckets). In serving, no aggregation is needed: the ingestor subscribes to
``kline.{1,5,15,60}`` and keeps a window per interval.

Labels: the direction of the NEXT bar on the sample's own timeframe (``close[t+1] > close[t]``), so
a 1m component forecasts the next minute and a 1h component the next hour; the signal states each
component's horizon. Splits are by time per series, with a purge gap of the input length plus the
label horizon between train, validation and test, never shuffled across: one pair of cut times
for every series, so the test period is the same calendar span everywhere.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

__all__ = [
    "Series",
    "Split",
    "aggregate",
    "labels",
    "load_series",
    "next_returns",
    "sample_ends",
    "split_by_time",
    "symbol_of",
]

MINUTE_MS = 60_000
_SYMBOL = re.compile(r"_([A-Z0-9]+?(?:USDT|USDC|USD))_")


@dataclass(frozen=True)
class Series:
    """Contiguous-or-not bars of one symbol at one interval, oldest first."""

    name: str  # e.g. "bybit_linear_BTCUSDT_1m"
    symbol: str
    interval_min: int
    start_ms: npt.NDArray[np.int64]
    ohlcv: npt.NDArray[np.float64]  # (n, 5)

    def __len__(self) -> int:
        return len(self.start_ms)

    def contiguous_runs(self) -> list[tuple[int, int]]:
        """Half-open index ranges without holes (a sample must not straddle a hole)."""
        step = self.interval_min * MINUTE_MS
        breaks = np.flatnonzero(np.diff(self.start_ms) != step) + 1
        edges = [0, *breaks.tolist(), len(self)]
        return [(a, b) for a, b in itertools.pairwise(edges) if b > a]


def symbol_of(path: Path) -> str:
    m = _SYMBOL.search(path.name.replace(".csv.gz", "_"))
    if not m:
        raise ValueError(f"cannot tell the symbol from {path.name!r}")
    return m.group(1)


def load_series(path: Path) -> Series:
    df = pd.read_csv(path)
    expected = ["open_time_ms", "open", "high", "low", "close", "volume"]
    if list(df.columns[:6]) != expected:
        raise ValueError(f"{path}: expected columns {expected}, got {list(df.columns)}")
    df = df.sort_values("open_time_ms").drop_duplicates("open_time_ms")
    starts = df["open_time_ms"].to_numpy(np.int64)
    step = int(np.median(np.diff(starts[:10_000]))) if len(starts) > 1 else MINUTE_MS
    return Series(
        name=path.name.removesuffix(".csv.gz"),
        symbol=symbol_of(path),
        interval_min=step // MINUTE_MS,
        start_ms=starts,
        ohlcv=df[expected[1:]].to_numpy(np.float64),
    )


def aggregate(series: Series, minutes: int) -> Series:
    """Complete, aligned buckets of ``minutes`` from a finer series (a bucket with a hole is dropped)."""
    if minutes % series.interval_min:
        raise ValueError(f"cannot build {minutes}m bars from {series.interval_min}m bars")
    if minutes == series.interval_min:
        return series
    per = minutes // series.interval_min
    bucket = series.start_ms // (minutes * MINUTE_MS)
    frame = pd.DataFrame(series.ohlcv, columns=["o", "h", "l", "c", "v"])
    frame["b"] = bucket
    g = frame.groupby("b", sort=True)
    agg = g.agg(o=("o", "first"), h=("h", "max"), l=("l", "min"), c=("c", "last"), v=("v", "sum"), n=("o", "size"))
    agg = agg[agg["n"] == per]
    return Series(
        name=f"{series.name}->{minutes}m",
        symbol=series.symbol,
        interval_min=minutes,
        start_ms=(agg.index.to_numpy(np.int64) * minutes * MINUTE_MS),
        ohlcv=agg[["o", "h", "l", "c", "v"]].to_numpy(np.float64),
    )


@dataclass(frozen=True)
class Split:
    train: npt.NDArray[np.int64]
    val: npt.NDArray[np.int64]
    test: npt.NDArray[np.int64]


def sample_ends(series: Series, need: int) -> npt.NDArray[np.int64]:
    """Indices ``t`` with ``need`` bars ending at ``t`` and a label bar ``t + 1``, all in one contiguous run."""
    parts = [np.arange(a + need - 1, b - 1, dtype=np.int64) for a, b in series.contiguous_runs() if b - a > need]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def split_by_time(series: Series, need: int, train_end_ms: int, val_end_ms: int) -> Split:
    """Split sample ends by the time of their LABEL bar, with a purge gap of ``need`` bars.

    train: label bar starts before ``train_end_ms``; val: input window starts at or after
    ``train_end_ms`` and label before ``val_end_ms``; test: input window starts at or after
    ``val_end_ms``. So no input window or label of one part overlaps another part.
    """
    ends = sample_ends(series, need)
    label_start = series.start_ms[np.minimum(ends + 1, len(series) - 1)]
    window_start = series.start_ms[ends - need + 1]
    train = ends[label_start < train_end_ms]
    val = ends[(window_start >= train_end_ms) & (label_start < val_end_ms)]
    test = ends[window_start >= val_end_ms]
    return Split(train=train, val=val, test=test)


def labels(series: Series, ends: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    close = series.ohlcv[:, 3]
    return (close[ends + 1] > close[ends]).astype(np.float32)


def next_returns(series: Series, ends: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    close = series.ohlcv[:, 3]
    return close[ends + 1] / close[ends] - 1.0
