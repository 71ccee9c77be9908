"""Causal technical features over OHLCV bars, shared by training (offline) and serving (live).

Every function here is a pure NumPy function of the bars it is given, oldest first. Value ``i`` of every
output depends only on bars ``0..i``: nothing looks ahead, so appending bars never changes earlier values
(the tests pin this bit for bit). Indicators follow TA-Lib's definitions, lookbacks (leading NaNs) and
order of arithmetic, so they agree with ``talib`` to ~1e-12 relative; the deviations are listed below.

Indicators (``FEATURE_NAMES`` order, lookback = leading NaNs):

==================  ========  ==================================================================
feature             lookback  definition
==================  ========  ==================================================================
``log_return``      1         ``ln(close[t] / close[t-1])``
``rsi_14``          14        TA-Lib RSI: Wilder averages of gains/losses seeded with their SMA
``macd_hist``       33        TA-Lib MACD(12, 26, 9) histogram ``macd - signal``
``atr_14``          14        TA-Lib ATR: Wilder average of true range seeded with SMA of TR[1..14]
``obv``             0         TA-Lib OBV, starting at ``volume[0]``
``bb_width_20``     19        ``(upper - lower) / middle`` of TA-Lib BBANDS(20, 2, 2, SMA)
``volume_ratio_20`` 19        ``volume[t] / mean(volume[t-19..t])``; 1.0 when that mean is 0
``hl_range``        0         ``(high - low) / close``
==================  ========  ==================================================================

``WARMUP_BARS`` (33) is the largest lookback: row ``WARMUP_BARS`` is the first with every feature defined.

Deviations from TA-Lib, all on inputs where TA-Lib's value is an artefact:

* RSI is 50 (neutral), not TA-Lib's 0, when the average gain and average loss are both exactly 0 (a
  perfectly flat market, e.g. an illiquid symbol or a halt). 0 would read as "maximally oversold".
* Bollinger width uses the two-pass population standard deviation of each window, summed in a fixed
  order, and ``2 * nbdev * std / middle`` instead of subtracting the two bands: each value is then a
  function of its own window only (bit-identical whatever history precedes it) and free of the
  cancellation in ``E[x^2] - E[x]^2`` and ``upper - lower`` at large price levels. On real BTCUSDT bars
  it agrees with TA-Lib to ~1e-11 relative.

Bad input raises ``FeatureError`` (a ``ValueError``) naming the array and the first offending index:
non-1-D or mismatched lengths, NaN or inf, a price <= 0, a negative volume, ``low > high``. Zero-volume
bars are valid and give finite features.

Feature set v1: the TCN input (``tcn_input``)
----------------------------------------------
``tcn_input(ohlcv, length)`` takes ``(N, 5)`` bars (open, high, low, close, volume; oldest first,
``N >= length + WARMUP_BARS``) and returns ``float32`` of shape ``(8, length)``, channels in
``FEATURE_NAMES`` order, for the window of the last ``length`` bars:

1. Only the last ``length + WARMUP_BARS`` bars are used; earlier rows are ignored. The recursive
   indicators (RSI, ATR, MACD) depend on where their recursion is seeded, so using a fixed number of bars
   makes the output a function of the window alone: training (which has all history) and serving (which
   has a Redis window of configurable size) get bit-identical inputs for the same bars.
2. ``indicator_matrix`` over those bars; the last ``length`` rows are the window (all defined).
3. Make every channel scale-free, using only bars inside the window (``c_last`` = the window's last
   close, known at prediction time):

   - ``log_return``, ``bb_width_20``, ``volume_ratio_20``, ``hl_range``: unchanged (already scale-free);
   - ``rsi_14``: ``rsi / 100 - 0.5``;
   - ``macd_hist``, ``atr_14``: divided by ``c_last``;
   - ``obv``: its first difference (the signed volume of each bar, which needs the OBV of the bar before
     the window), divided by the mean volume of the window (0 when that mean is 0).

4. Z-score each channel over the window: ``(x - mean(x)) / max(std(x), 1e-8)`` (population std); a
   channel that is exactly constant over the window becomes all zeros.

So no statistic from outside the window (past or future) enters the normalisation, and multiplying all
prices (or all volumes) of a symbol by a constant leaves the output unchanged up to rounding. Step 4
removes each channel's level within the window: the model sees the shape of each feature over the
window, not e.g. whether RSI sits at 80 or 20.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import ArrayLike, NDArray

from inference.errors import InferenceError

__all__ = [
    "FEATURE_NAMES",
    "FEATURE_SET_VERSION",
    "WARMUP_BARS",
    "FeatureError",
    "atr",
    "bollinger_width",
    "hl_range",
    "indicator_matrix",
    "log_returns",
    "macd_hist",
    "obv",
    "returns",
    "rsi",
    "tcn_input",
    "volume_ratio",
]

FloatArray = NDArray[np.float64]

FEATURE_SET_VERSION = "v1"
FEATURE_NAMES: tuple[str, ...] = (
    "log_return",
    "rsi_14",
    "macd_hist",
    "atr_14",
    "obv",
    "bb_width_20",
    "volume_ratio_20",
    "hl_range",
)

_RSI_PERIOD = 14
_MACD_FAST, _MACD_SLOW, _MACD_SIGNAL = 12, 26, 9
_ATR_PERIOD = 14
_BB_PERIOD, _BB_NBDEV = 20, 2.0
_VOLUME_PERIOD = 20
_STD_FLOOR = 1e-8

WARMUP_BARS: int = max(
    1,  # log_return
    _RSI_PERIOD,
    (_MACD_SLOW - 1) + (_MACD_SIGNAL - 1),
    _ATR_PERIOD,
    _BB_PERIOD - 1,
    _VOLUME_PERIOD - 1,
)


class FeatureError(InferenceError, ValueError):
    """The bars cannot be turned into features: the message names the array and the offending index."""


# --- validation -------------------------------------------------------------------------------------


def _as_series(values: ArrayLike, name: str) -> FloatArray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FeatureError(f"{name} is not numeric: {exc}") from exc
    if arr.ndim != 1:
        raise FeatureError(f"{name} must be 1-D, got shape {arr.shape}")
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise FeatureError(f"{name} contains NaN or inf (first at index {i}: {arr[i]})")
    return arr


def _prices(values: ArrayLike, name: str) -> FloatArray:
    arr = _as_series(values, name)
    bad = arr <= 0.0
    if bad.any():
        i = int(np.argmax(bad))
        raise FeatureError(f"{name} must be > 0 (first offending value at index {i}: {arr[i]})")
    return arr


def _volumes(values: ArrayLike, name: str = "volume") -> FloatArray:
    arr = _as_series(values, name)
    bad = arr < 0.0
    if bad.any():
        i = int(np.argmax(bad))
        raise FeatureError(f"{name} must be >= 0 (first offending value at index {i}: {arr[i]})")
    return arr


def _same_length(**arrays: FloatArray) -> int:
    lengths = {name: len(arr) for name, arr in arrays.items()}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{name}={n}" for name, n in lengths.items())
        raise FeatureError(f"length mismatch: {detail}")
    return next(iter(lengths.values()))


def _high_low(high: ArrayLike, low: ArrayLike) -> tuple[FloatArray, FloatArray]:
    h, lo = _prices(high, "high"), _prices(low, "low")
    _same_length(high=h, low=lo)
    bad = lo > h
    if bad.any():
        i = int(np.argmax(bad))
        raise FeatureError(f"low > high at index {i} (low={lo[i]}, high={h[i]})")
    return h, lo


def _period(value: int, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise FeatureError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _nan(n: int) -> FloatArray:
    return np.full(n, np.nan, dtype=np.float64)


# --- kernels (inputs already validated) ---------------------------------------------------------------


def _window_sums(x: FloatArray, period: int) -> FloatArray:
    """Sum of each trailing window ``x[t-period+1..t]``, summed left to right, for ``t >= period-1``.

    The fixed summation order (not ``np.sum``, whose pairwise blocking depends on the array layout)
    makes each value a function of its window alone, so prefixes of the input give bit-identical values.
    """
    windows = sliding_window_view(x, period)
    total = windows[:, 0].copy()
    for j in range(1, period):
        total += windows[:, j]
    return total


def _ema(x: list[float], period: int, first: int) -> FloatArray:
    """TA-Lib EMA (k = 2 / (period + 1)) seeded at index ``first`` with the SMA of ``x[first-period+1..first]``."""
    out = _nan(len(x))
    if first >= len(x):
        return out
    k = 2.0 / (period + 1)
    total = 0.0
    for value in x[first - period + 1 : first + 1]:
        total += value
    prev = total / period
    out[first] = prev
    for t in range(first + 1, len(x)):
        prev = ((x[t] - prev) * k) + prev
        out[t] = prev
    return out


def _rsi(close: FloatArray, period: int) -> FloatArray:
    n = len(close)
    out = _nan(n)
    if n <= period:
        return out
    # Same statements as TA-Lib's ta_RSI.c (multiply by period-1, add, divide), so values match bit for bit.
    diffs = np.diff(close).tolist()
    gain = loss = 0.0
    for d in diffs[:period]:
        if d < 0.0:
            loss -= d
        else:
            gain += d
    gain /= period
    loss /= period
    values = [_rsi_value(gain, loss)]
    for d in diffs[period:]:
        loss *= period - 1
        gain *= period - 1
        if d < 0.0:
            loss -= d
        else:
            gain += d
        loss /= period
        gain /= period
        values.append(_rsi_value(gain, loss))
    out[period:] = values
    return out


def _rsi_value(gain: float, loss: float) -> float:
    total = gain + loss
    # TA-Lib returns 0 here; a flat market is neutral, not oversold (see the module docstring).
    return 100.0 * (gain / total) if total != 0.0 else 50.0


def _macd_hist(close: FloatArray, fast: int, slow: int, signal: int) -> FloatArray:
    n = len(close)
    first_macd = slow - 1
    lookback = first_macd + signal - 1
    if n <= lookback:
        return _nan(n)
    x = close.tolist()
    # TA-Lib seeds BOTH EMAs at the slow EMA's first index: the fast EMA starts from the SMA of the `fast`
    # closes ending there, not of the first `fast` closes.
    macd = _ema(x, fast, first_macd) - _ema(x, slow, first_macd)
    signal_line = _nan(n)
    signal_line[first_macd:] = _ema(macd[first_macd:].tolist(), signal, signal - 1)
    return macd - signal_line


def _true_range(high: FloatArray, low: FloatArray, close: FloatArray) -> FloatArray:
    """True range for t >= 1 (index 0 of the result is bar 1); TA-Lib compares in this order."""
    prev_close = close[:-1]
    h, lo = high[1:], low[1:]
    greatest = h - lo
    greatest = np.maximum(greatest, np.abs(prev_close - h))
    return np.maximum(greatest, np.abs(prev_close - lo))


def _atr(high: FloatArray, low: FloatArray, close: FloatArray, period: int) -> FloatArray:
    n = len(close)
    out = _nan(n)
    if n <= period:
        return out
    tr = _true_range(high, low, close).tolist()
    total = 0.0
    for value in tr[:period]:
        total += value
    prev = total / period
    values = [prev]
    for value in tr[period:]:
        prev *= period - 1
        prev += value
        prev /= period
        values.append(prev)
    out[period:] = values
    return out


def _obv(close: FloatArray, volume: FloatArray) -> FloatArray:
    if len(close) == 0:
        return _nan(0)
    step = np.sign(np.diff(close)) * volume[1:]
    return np.cumsum(np.concatenate((volume[:1], step)))


def _bollinger_width(close: FloatArray, period: int, nbdev: float) -> FloatArray:
    n = len(close)
    out = _nan(n)
    if n < period:
        return out
    windows = sliding_window_view(close, period)
    mean = _window_sums(close, period) / period
    sq = np.zeros_like(mean)
    for j in range(period):
        dev = windows[:, j] - mean
        sq += dev * dev
    # (upper - lower) / middle == 2 * nbdev * std / middle, without cancelling two large band values.
    out[period - 1 :] = (2.0 * nbdev) * np.sqrt(sq / period) / mean
    return out


def _volume_ratio(volume: FloatArray, period: int) -> FloatArray:
    n = len(volume)
    out = _nan(n)
    if n < period:
        return out
    mean = _window_sums(volume, period) / period
    current = volume[period - 1 :]
    # Zero-volume bars are real (quiet markets): 0 / mean is 0, and a window with no volume at all is
    # "as usual", 1.0, rather than 0/0.
    ratio = np.ones_like(mean)
    np.divide(current, mean, out=ratio, where=mean > 0.0)
    out[period - 1 :] = ratio
    return out


# --- public indicators ------------------------------------------------------------------------------


def log_returns(close: ArrayLike) -> FloatArray:
    """``ln(close[t] / close[t-1])``; element 0 is NaN."""
    c = _prices(close, "close")
    out = _nan(len(c))
    out[1:] = np.log(c[1:] / c[:-1])
    return out


def returns(close: ArrayLike) -> FloatArray:
    """Simple returns ``close[t] / close[t-1] - 1``; element 0 is NaN."""
    c = _prices(close, "close")
    out = _nan(len(c))
    out[1:] = c[1:] / c[:-1] - 1.0
    return out


def rsi(close: ArrayLike, period: int = _RSI_PERIOD) -> FloatArray:
    """TA-Lib RSI in [0, 100]: Wilder averages seeded with the SMA of the first ``period`` gains/losses.

    NaN for the first ``period`` values; 50 where both averages are 0 (TA-Lib gives 0 there).
    """
    return _rsi(_prices(close, "close"), _period(period, "period", 2))


def macd_hist(
    close: ArrayLike, fast: int = _MACD_FAST, slow: int = _MACD_SLOW, signal: int = _MACD_SIGNAL
) -> FloatArray:
    """TA-Lib MACD histogram (``talib.MACD(...)[2]``); NaN for the first ``slow - 1 + signal - 1`` values."""
    fast = _period(fast, "fast", 2)
    slow = _period(slow, "slow", 2)
    signal = _period(signal, "signal", 1)
    if fast >= slow:
        raise FeatureError(f"fast period must be < slow period, got fast={fast}, slow={slow}")
    return _macd_hist(_prices(close, "close"), fast, slow, signal)


def atr(high: ArrayLike, low: ArrayLike, close: ArrayLike, period: int = _ATR_PERIOD) -> FloatArray:
    """TA-Lib ATR: Wilder average of the true range, seeded with the SMA of TR[1..period]; NaN for ``period``."""
    h, lo = _high_low(high, low)
    c = _prices(close, "close")
    _same_length(high=h, low=lo, close=c)
    return _atr(h, lo, c, _period(period, "period", 2))


def obv(close: ArrayLike, volume: ArrayLike) -> FloatArray:
    """TA-Lib on-balance volume: ``volume[0]``, then +volume on an up close, -volume on a down close."""
    c, v = _prices(close, "close"), _volumes(volume)
    _same_length(close=c, volume=v)
    return _obv(c, v)


def bollinger_width(close: ArrayLike, period: int = _BB_PERIOD, nbdev: float = _BB_NBDEV) -> FloatArray:
    """``(upper - lower) / middle`` of TA-Lib BBANDS (SMA middle, population std); NaN for ``period - 1``."""
    if not math.isfinite(nbdev) or nbdev <= 0.0:
        raise FeatureError(f"nbdev must be a finite number > 0, got {nbdev!r}")
    return _bollinger_width(_prices(close, "close"), _period(period, "period", 2), float(nbdev))


def volume_ratio(volume: ArrayLike, period: int = _VOLUME_PERIOD) -> FloatArray:
    """``volume[t] / mean(volume[t-period+1..t])`` (the current bar included); NaN for ``period - 1``.

    Zero volume is valid: the ratio is 0 when the window mean is > 0, and 1.0 when the whole window traded
    nothing (0/0 is read as "as usual").
    """
    return _volume_ratio(_volumes(volume), _period(period, "period", 1))


def hl_range(high: ArrayLike, low: ArrayLike, close: ArrayLike) -> FloatArray:
    """``(high - low) / close``."""
    h, lo = _high_low(high, low)
    c = _prices(close, "close")
    _same_length(high=h, low=lo, close=c)
    return (h - lo) / c


# --- matrices ---------------------------------------------------------------------------------------


def indicator_matrix(
    open_: ArrayLike, high: ArrayLike, low: ArrayLike, close: ArrayLike, volume: ArrayLike
) -> FloatArray:
    """All features, shape ``(N, len(FEATURE_NAMES))`` in ``FEATURE_NAMES`` order, NaN during each lookback.

    Row ``i`` depends only on bars ``0..i``. Raises ``FeatureError`` on bad input (see the module docstring).
    """
    o = _prices(open_, "open")
    h, lo = _high_low(high, low)
    c = _prices(close, "close")
    v = _volumes(volume)
    n = _same_length(open=o, high=h, low=lo, close=c, volume=v)
    if n == 0:
        raise FeatureError("no bars given")
    log_ret = _nan(n)
    log_ret[1:] = np.log(c[1:] / c[:-1])
    columns = (
        log_ret,
        _rsi(c, _RSI_PERIOD),
        _macd_hist(c, _MACD_FAST, _MACD_SLOW, _MACD_SIGNAL),
        _atr(h, lo, c, _ATR_PERIOD),
        _obv(c, v),
        _bollinger_width(c, _BB_PERIOD, _BB_NBDEV),
        _volume_ratio(v, _VOLUME_PERIOD),
        (h - lo) / c,
    )
    return np.column_stack(columns)


def tcn_input(ohlcv: NDArray[Any], length: int) -> NDArray[np.float32]:
    """Feature set v1 for the window of the last ``length`` bars: float32 ``(len(FEATURE_NAMES), length)``.

    ``ohlcv`` is ``(N, 5)``: open, high, low, close, volume, oldest first, with
    ``N >= length + WARMUP_BARS``; only the last ``length + WARMUP_BARS`` rows are read. The normalisation
    is in the module docstring. Raises ``FeatureError`` on bad input or a too-short history.
    """
    length = _period(length, "length", 2)
    bars = np.asarray(ohlcv)
    if bars.ndim != 2 or bars.shape[1] != 5:
        raise FeatureError(f"ohlcv must have shape (N, 5) (open, high, low, close, volume), got {bars.shape}")
    need = length + WARMUP_BARS
    if len(bars) < need:
        raise FeatureError(
            f"window too short: tcn_input(length={length}) needs length + WARMUP_BARS = {need} bars, got {len(bars)}"
        )
    bars = bars[-need:]
    matrix = indicator_matrix(bars[:, 0], bars[:, 1], bars[:, 2], bars[:, 3], bars[:, 4])
    window = matrix[WARMUP_BARS:].copy()
    close = np.asarray(bars[WARMUP_BARS - 1 :, 3], dtype=np.float64)
    volume = np.asarray(bars[WARMUP_BARS:, 4], dtype=np.float64)
    last_close = float(close[-1])

    col = {name: i for i, name in enumerate(FEATURE_NAMES)}
    window[:, col["rsi_14"]] = window[:, col["rsi_14"]] / 100.0 - 0.5
    window[:, col["macd_hist"]] /= last_close
    window[:, col["atr_14"]] /= last_close
    mean_volume = float(volume.mean())
    # OBV's first difference is the bar's signed volume; taken from the closes directly, not by
    # subtracting two large cumulative sums.
    signed_volume = np.sign(np.diff(close)) * volume
    window[:, col["obv"]] = signed_volume / mean_volume if mean_volume > 0.0 else 0.0

    centred = window - window.mean(axis=0)
    scale = np.maximum(window.std(axis=0), _STD_FLOOR)
    z = centred / scale
    z[:, np.ptp(window, axis=0) == 0.0] = 0.0
    out = np.ascontiguousarray(z.T, dtype=np.float32)
    if not np.isfinite(out).all():
        # Unreachable for validated bars unless values overflow float64/float32 (e.g. volumes near 1e308).
        raise FeatureError("tcn_input produced non-finite values (input magnitudes overflow)")
    return out
