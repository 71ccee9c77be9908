"""Historical bars for training and evaluation: loading, aggregation, samples, time splits.

Bars come from ``../shared/data`` (gzip CSV: ``open_time_ms,open,high,low,close,volume``, UTC, bar
open time), read by the project's one bar-file reader (:mod:`streaming.sim.bars`). Higher timeframes
are aggregated here from 1m bars exactly as the exchange forms them (only complete, aligned
buckets). In serving, no aggregation is needed: the ingestor subscribes to
``kline.{1,5,15,60}`` and keeps a window per interval.

Labels: the direction of the NEXT bar on the sample's own timeframe (``close[t+1] > close[t]``), so
a 1m component forecasts the next minute and a 1h component the next hour; the signal states each
component's horizon. A bar whose close is unchanged (about 6 % of Bybit 1m bars) is neither up nor
down: :func:`moved` leaves it out of training and validation samples rather than calling it "down".
Splits are by time per series, with a purge gap of the input length plus the
label horizon between train, validation and test, never shuffled across: one pair of cut times
for every series, so the test period is the same calendar span everywhere.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from streaming.sim.bars import MINUTE_MS, complete_buckets, read_bar_file, symbol_from_path

__all__ = [
    "MINUTE_MS",
    "Series",
    "Split",
    "aggregate",
    "horizon_ends",
    "horizon_targets",
    "labels",
    "load_series",
    "moved",
    "next_returns",
    "sample_ends",
    "split_by_time",
    "view_ends",
]


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


def load_series(path: Path) -> Series:
    """Read a bar file with the project's one reader (:func:`streaming.sim.bars.read_bar_file`),
    sorted, a repeated bar start keeping its first row (as training always read its data)."""
    bars = read_bar_file(path, sort=True)
    starts = bars.start_ms
    step = int(np.median(np.diff(starts[:10_000]))) if len(starts) > 1 else MINUTE_MS
    return Series(
        name=path.name.removesuffix(".csv.gz"),
        symbol=symbol_from_path(path),
        interval_min=step // MINUTE_MS,
        start_ms=starts,
        ohlcv=bars.ohlcv,
    )


def aggregate(series: Series, minutes: int) -> Series:
    """Complete, aligned buckets of ``minutes`` from a finer series (a bucket with a hole is dropped)."""
    if minutes % series.interval_min:
        raise ValueError(f"cannot build {minutes}m bars from {series.interval_min}m bars")
    if minutes == series.interval_min:
        return series
    idx = complete_buckets(series.start_ms, series.interval_min, minutes)
    x = series.ohlcv
    step = minutes * MINUTE_MS
    ohlcv = np.column_stack(
        [x[idx[:, 0], 0], x[idx, 1].max(axis=1), x[idx, 2].min(axis=1), x[idx[:, -1], 3], _bucket_sums(x[idx, 4])]
    )
    return Series(
        name=f"{series.name}->{minutes}m",
        symbol=series.symbol,
        interval_min=minutes,
        start_ms=series.start_ms[idx[:, 0]] // step * step,
        ohlcv=ohlcv,
    )


def _bucket_sums(rows: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Each row's sum as pandas' ``groupby().sum()`` computes it (compensated, in its own order).

    The shipped models were trained on volumes summed that way; NumPy's ``sum`` or a plain
    left-to-right sum differ in the last bit for about a third of the buckets.
    """
    k, per = rows.shape
    sums = pd.Series(rows.ravel()).groupby(np.repeat(np.arange(k), per)).sum()
    out: npt.NDArray[np.float64] = sums.to_numpy(np.float64)
    return out


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


def moved(series: Series, ends: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    """True where the label bar's close differs from the close at ``t``: a sample with a label."""
    close = series.ohlcv[:, 3]
    return np.asarray(close[ends + 1] != close[ends])


def next_returns(series: Series, ends: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    close = series.ohlcv[:, 3]
    return close[ends + 1] / close[ends] - 1.0


def view_ends(base: Series, coarse: Series, ends: npt.NDArray[np.int64], need: int) -> npt.NDArray[np.int64]:
    """For each base bar ``t`` of ``ends``: the index in ``coarse`` of the newest coarse bar closed when
    bar ``t`` closes, as the serving window of that interval holds it then; -1 where serving would
    refuse the window (``check_window``: the ``need`` coarse bars ending there are not consecutive, or
    the newest is not the last one due)."""
    if len(coarse) < need or not len(ends):
        return np.full(len(ends), -1, np.int64)
    step = coarse.interval_min * MINUTE_MS
    close_time = base.start_ms[ends] + base.interval_min * MINUTE_MS
    j = np.searchsorted(coarse.start_ms + step, close_time, side="right") - 1
    ok = j >= need - 1
    jj = np.maximum(j, need - 1)
    ok &= coarse.start_ms[jj] == (close_time // step) * step - step  # the last one due
    ok &= coarse.start_ms[jj] - coarse.start_ms[jj - need + 1] == (need - 1) * step  # consecutive
    return np.where(ok, j, -1).astype(np.int64)


def horizon_ends(series: Series, need: int, horizon: int) -> npt.NDArray[np.int64]:
    """Indices ``t`` with ``need`` bars ending at ``t`` and ``horizon`` more after it, in one contiguous run."""
    parts = [
        np.arange(a + need - 1, b - horizon, dtype=np.int64)
        for a, b in series.contiguous_runs()
        if b - a >= need + horizon
    ]
    return np.concatenate(parts) if parts else np.zeros(0, np.int64)


def horizon_targets(
    series: Series, ends: npt.NDArray[np.int64], horizon: int
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """(log return over the next ``horizon`` bars, its realized variance Σ r² in bp²) after each end."""
    logc = np.log(series.ohlcv[:, 3])
    r_h = logc[ends + horizon] - logc[ends]
    step = np.diff(logc, prepend=logc[0]) * 1e4
    csum = np.concatenate([[0.0], np.cumsum(step**2)])
    var = csum[ends + horizon + 1] - csum[ends + 1]
    return r_h, var
