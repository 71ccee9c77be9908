"""Pure NumPy image renderers shared by model training and live serving.

Every function is a deterministic, vectorised function of its input arrays: no plotting library, no
fonts, no global state, so the image a model was trained on is bit-for-bit the image it is served.
Inputs are oldest-first rows; prices are float64 (anything convertible is accepted and copied, never
mutated). Bad input raises :class:`RenderError` naming the argument::

    >>> ohlc = np.array([[100.0, 101.0, 99.0, 100.5], [100.5, 102.0, 100.0, 101.5]])
    >>> ohlc_chart(ohlc, height=5).shape
    (5, 6)

Bump :data:`RENDERER_VERSION` whenever any output changes for some input: trained weights are tied to it.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray

from inference.errors import InferenceError

__all__ = [
    "BOOK_BINS_PER_SIDE",
    "RENDERER_VERSION",
    "RenderError",
    "book_heatmap",
    "candlestick_chart",
    "composite",
    "gadf",
    "gasf",
    "ohlc_chart",
    "ohlc_input",
    "ohlc_pair",
    "recurrence_plot",
]

RENDERER_VERSION = "v1"
BOOK_BINS_PER_SIDE = 100

_WHITE = np.uint8(255)
_DOWN_GRAY = np.uint8(128)


class RenderError(InferenceError, ValueError):
    """An input a renderer cannot draw: wrong shape, non-finite values, impossible bars, bad sizes."""


# --- validation -------------------------------------------------------------------------------------------


def _as_array(value: Any, name: str, dtype: type[np.floating[Any]] = np.float64) -> NDArray[Any]:
    try:
        return np.asarray(value, dtype=dtype)
    except (TypeError, ValueError) as exc:
        raise RenderError(f"{name}: not a numeric array ({exc})") from exc


def _float_array(value: Any, name: str, dtype: type[np.floating[Any]] = np.float64) -> NDArray[Any]:
    arr = _as_array(value, name, dtype)
    if arr.size == 0:
        raise RenderError(f"{name}: empty")
    if not np.isfinite(arr).all():
        raise RenderError(f"{name}: contains NaN or inf")
    return arr


def _check_size(name: str, value: int, minimum: int) -> int:
    # bool is an int subclass; a True height is a caller bug, not a 1-pixel image.
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise RenderError(f"{name}: expected an int, got {type(value).__name__}")
    if value < minimum:
        raise RenderError(f"{name}: must be >= {minimum}, got {value}")
    return int(value)


def _bars(value: Any, name: str, columns: int) -> NDArray[np.float64]:
    """Validate oldest-first bar rows: ``open, high, low, close`` (+ ``volume`` when ``columns == 5``)."""
    arr = _as_array(value, name)
    if arr.ndim != 2 or arr.shape[1] != columns or arr.shape[0] == 0:
        want = "(n, 4) open, high, low, close" if columns == 4 else "(n, 5) open, high, low, close, volume"
        raise RenderError(f"{name}: expected shape {want} with n >= 1, got {arr.shape}")
    o, h, lo, c = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
    # One pass on the hot path: NaN fails every comparison, and low > 0 with open/close/high >= low
    # implies every price is positive. Open and close must lie on the bar because the price axis spans
    # only min(low)..max(high).
    ok = (lo > 0) & (h < np.inf) & (np.minimum(o, c) >= lo) & (np.maximum(o, c) <= h)
    if columns == 5:
        ok &= (arr[:, 4] >= 0) & (arr[:, 4] < np.inf)
    if not ok.all():
        raise RenderError(f"{name}: {_diagnose_bars(arr)}")
    return arr


def _diagnose_bars(arr: NDArray[np.float64]) -> str:
    o, h, lo, c = arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3]
    if not np.isfinite(arr).all():
        return "contains NaN or inf"
    if (arr[:, :4] <= 0).any():
        return "prices must be > 0"
    if (h < lo).any():
        return "high < low"
    if (np.maximum(o, c) > h).any() or (np.minimum(o, c) < lo).any():
        return "open/close outside the bar's low..high"
    return "negative volume"


def _series(value: Any, name: str) -> NDArray[np.float64]:
    arr = _float_array(value, name)
    if arr.ndim != 1:
        raise RenderError(f"{name}: expected a 1-D series, got shape {arr.shape}")
    return arr


# --- price charts -----------------------------------------------------------------------------------------


def _price_rows(prices: NDArray[np.float64], top: float, bottom: float, rows: int) -> NDArray[np.intp]:
    """Pixel row of each price on a ``rows``-high axis from ``top`` (row 0) down to ``bottom`` (last row).

    ``round((top - p) / (top - bottom) * (rows - 1))`` with round-half-even (NumPy ``rint``, as Python's
    ``round``); a flat axis (``top == bottom``) puts every price on the middle row ``(rows - 1) // 2``.
    """
    if top == bottom:
        return np.full(prices.shape, (rows - 1) // 2, dtype=np.intp)
    return np.rint((top - prices) / (top - bottom) * (rows - 1)).astype(np.intp)


def ohlc_chart(ohlc: NDArray[np.float64], height: int = 54) -> NDArray[np.uint8]:
    """The CIPM OHLC bar image of Jiang, Kelly & Xiu, "(Re-)Imag(in)ing Price Trends" (2023).

    ``ohlc`` is ``(n, 4)`` open, high, low, close, oldest first. Returns ``(height, 3 * n)`` uint8, black (0)
    background with white (255) marks, 3 columns per bar: left = open tick, middle = high-low bar, right =
    close tick. The price axis is scaled per image from the window's min low (bottom row) to its max high
    (row 0); see :func:`_price_rows` for the exact rounding and the flat-window rule.
    """
    arr = _bars(ohlc, "ohlc", 4)
    height = _check_size("height", height, 1)
    n = arr.shape[0]
    top, bottom = float(arr[:, 1].max()), float(arr[:, 2].min())
    r_open, r_high, r_low, r_close = _price_rows(arr, top, bottom, height).T
    bar_idx = np.arange(n)
    img = np.zeros((height, 3 * n), dtype=np.uint8)
    rows = np.arange(height)[:, None]
    # High has the smaller row index (higher price = nearer the top).
    img[:, 1::3] = ((rows >= r_high) & (rows <= r_low)) * _WHITE
    img[r_open, 3 * bar_idx] = _WHITE
    img[r_close, 3 * bar_idx + 2] = _WHITE
    return img


def _candle_columns(n: int, width: int) -> tuple[NDArray[np.intp], NDArray[np.bool_], NDArray[np.bool_]]:
    """Per output column: its candle index, whether it is drawn at all, whether it carries the wick.

    Candle ``i`` owns columns ``[i * width // n, (i + 1) * width // n)``. A slot of 2+ columns leaves its
    last column as the 1-px gap; the body fills the rest, and the wick sits in the body's middle column
    (left of centre when the body width is even).
    """
    edges = (np.arange(n + 1) * width) // n
    slot = np.diff(edges)
    candle = np.repeat(np.arange(n), slot)
    pos = np.arange(width) - edges[candle]
    slot_w = slot[candle]
    body_w = np.where(slot_w >= 2, slot_w - 1, slot_w)
    drawn = pos < body_w
    wick = pos == (body_w - 1) // 2
    return candle, drawn, wick


def candlestick_chart(
    ohlcv: NDArray[np.float64], height: int = 64, width: int | None = None, volume_frac: float = 0.2
) -> NDArray[np.uint8]:
    """Grayscale candlesticks over a volume band; ``(height, width)`` uint8.

    ``ohlcv`` is ``(n, 5)`` open, high, low, close, volume, oldest first. Up candles (close >= open) are
    255, down candles 128, background 0; ``width`` defaults to ``3 * n`` and must be >= ``n`` (slot layout:
    :func:`_candle_columns`). Each candle fills its body columns between open and close and its wick column
    from low to high.

    The bottom ``round(height * volume_frac)`` rows are the volume band, separated from the price area by
    one empty row; each candle's body columns get a bar of ``round(volume / max_volume * band)`` rows from
    the bottom in the candle's colour (an all-zero-volume window leaves the band empty). ``volume_frac = 0``
    gives a price-only chart with no gap row. The price axis spans the window's min low to max high with
    the same rounding as :func:`ohlc_chart`.
    """
    arr = _bars(ohlcv, "ohlcv", 5)
    n = arr.shape[0]
    height = _check_size("height", height, 1)
    width = 3 * n if width is None else _check_size("width", width, n)
    frac = float(volume_frac)
    if not 0.0 <= frac < 1.0:
        raise RenderError(f"volume_frac: must be in [0, 1), got {volume_frac}")
    band = round(height * frac)
    price_rows = height - band - 1 if band > 0 else height
    if price_rows < 1:
        raise RenderError(f"height {height} with volume_frac {volume_frac} leaves no rows for prices")

    o, _, _, c, vol = arr.T
    top, bottom = float(arr[:, 1].max()), float(arr[:, 2].min())
    r_open, r_high, r_low, r_close = _price_rows(arr[:, :4], top, bottom, price_rows).T
    colour = np.where(c >= o, _WHITE, _DOWN_GRAY).astype(np.uint8)

    candle, drawn, wick = _candle_columns(n, width)
    col_top = np.where(wick, r_high[candle], np.minimum(r_open, r_close)[candle])
    col_bottom = np.where(wick, r_low[candle], np.maximum(r_open, r_close)[candle])
    col_colour = np.where(drawn, colour[candle], np.uint8(0))

    img = np.zeros((height, width), dtype=np.uint8)
    rows = np.arange(price_rows)[:, None]
    img[:price_rows] = np.where((rows >= col_top) & (rows <= col_bottom), col_colour, np.uint8(0))
    vmax = float(vol.max())
    if band > 0 and vmax > 0.0:
        filled = np.rint(vol / vmax * band).astype(np.intp)[candle]
        band_rows = np.arange(band)[:, None]
        img[height - band :] = np.where(band_rows >= band - filled, col_colour, np.uint8(0))
    return img


# --- time-series images ------------------------------------------------------------------------------------


def _unit_cos_sin(series: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """``cos(phi), sin(phi)`` with ``phi = arccos(x)``, ``x`` the series min-max rescaled to ``[-1, 1]``.

    Same arithmetic as pyts ``MinMaxScaler(sample_range=(-1, 1))`` (scikit-learn's): a constant series maps
    to -1. ``sin(arccos x) = sqrt(1 - x^2)`` since ``phi`` is in ``[0, pi]``.
    """
    lo, hi = series.min(), series.max()
    span = hi - lo
    scale = 2.0 / span if span > 0 else 2.0
    x = (series - lo) * scale - 1.0
    return x, np.sqrt(np.clip(1.0 - x * x, 0.0, 1.0))


def _gasf_from(cos: NDArray[np.float64], sin: NDArray[np.float64]) -> NDArray[np.float32]:
    # cos(a + b) expanded, as pyts computes it, avoiding arccos/cos round trips.
    return (np.multiply.outer(cos, cos) - np.multiply.outer(sin, sin)).astype(np.float32)


def gasf(series: NDArray[np.float64]) -> NDArray[np.float32]:
    """Gramian Angular Summation Field ``G[i, j] = cos(phi_i + phi_j)``, ``(n, n)`` float32 in ``[-1, 1]``.

    Equals ``pyts.image.GramianAngularField(method="summation")`` at ``image_size = n``.
    """
    cos, sin = _unit_cos_sin(_series(series, "series"))
    return _gasf_from(cos, sin)


def gadf(series: NDArray[np.float64]) -> NDArray[np.float32]:
    """Gramian Angular Difference Field ``G[i, j] = sin(phi_i - phi_j)``, ``(n, n)`` float32 in ``[-1, 1]``.

    pyts' sign convention (``outer(sin, cos) - outer(cos, sin)``); equals
    ``pyts.image.GramianAngularField(method="difference")`` at ``image_size = n``.
    """
    cos, sin = _unit_cos_sin(_series(series, "series"))
    return (np.multiply.outer(sin, cos) - np.multiply.outer(cos, sin)).astype(np.float32)


def recurrence_plot(series: NDArray[np.float64], threshold: float | None = None) -> NDArray[np.float32]:
    """Recurrence plot of a 1-D series, ``(n, n)`` float32.

    ``threshold=None``: the distances ``|x_i - x_j|`` (equals ``pyts.image.RecurrencePlot(dimension=1,
    threshold=None)``). A number ``t >= 0``: the binary plot ``|x_i - x_j| <= t`` as 0.0/1.0, so the
    diagonal is always 1. pyts' numeric threshold is strict (``< t``); the two agree unless a distance
    equals ``t`` exactly.
    """
    x = _series(series, "series")
    dist = np.abs(np.subtract.outer(x, x))
    if threshold is None:
        return dist.astype(np.float32)
    t = float(threshold)
    if not np.isfinite(t) or t < 0:
        raise RenderError(f"threshold: must be a finite number >= 0, got {threshold}")
    return (dist <= t).astype(np.float32)


def book_heatmap(rows: NDArray[np.float32]) -> NDArray[np.float32]:
    """Order-book depth over time as a ``(200, T)`` float32 image in ``[0, 1]``.

    ``rows`` is ``(T, 200)``, oldest first: 100 bid bins (bin 0 nearest the mid, moving away) then 100 ask
    bins. Price runs down the image with asks on top: row 0 = farthest ask, row 99 = nearest ask, row 100 =
    nearest bid, row 199 = farthest bid; time runs left to right. Values are ``log1p(depth)`` divided by the
    image max (an all-zero book gives zeros). Depth must be finite and >= 0.
    """
    arr = _float_array(rows, "rows", np.float32)
    if arr.ndim != 2 or arr.shape[1] != 2 * BOOK_BINS_PER_SIDE:
        raise RenderError(f"rows: expected shape (T, {2 * BOOK_BINS_PER_SIDE}), got {arr.shape}")
    if (arr < 0).any():
        raise RenderError("rows: negative depth")
    bids = arr[:, :BOOK_BINS_PER_SIDE]
    asks_far_first = arr[:, : BOOK_BINS_PER_SIDE - 1 : -1]
    img = np.log1p(np.concatenate([asks_far_first, bids], axis=1).T)
    peak = img.max()
    if peak > 0:
        img /= peak
    return np.ascontiguousarray(img, dtype=np.float32)


# --- model input --------------------------------------------------------------------------------------------


def _nearest_index(src: int, dst: int) -> NDArray[np.intp]:
    """Nearest-neighbour source index of each of ``dst`` output pixels over ``src`` inputs (pixel centres)."""
    return ((2 * np.arange(dst) + 1) * src) // (2 * dst)


def _window(ohlcv: NDArray[np.float64], height: int, bars: int) -> tuple[NDArray[np.float64], int]:
    """The last ``bars`` rows of ``(N, 5)`` bars, validated, and the checked height."""
    bars = _check_size("bars", bars, 1)
    height = _check_size("height", height, 1)
    full = _as_array(ohlcv, "ohlcv")
    if full.ndim != 2 or full.shape[1] != 5:
        raise RenderError(f"ohlcv: expected shape (n, 5) open, high, low, close, volume, got {full.shape}")
    if full.shape[0] < bars:
        raise RenderError(f"ohlcv: need at least {bars} rows, got {full.shape[0]}")
    return _bars(full[-bars:], "ohlcv", 5), height


def ohlc_input(ohlcv: NDArray[np.float64], height: int = 54, bars: int = 24) -> NDArray[np.float32]:
    """The CIPM model's input (seed 001): ``(1, height, 3 * bars)`` float32 in ``[0, 1]``, the
    :func:`ohlc_chart` of the last ``bars`` rows of ``(N, 5)`` bars / 255 (the composite's channel 0)."""
    window, height = _window(ohlcv, height, bars)
    out = ohlc_chart(window[:, :4], height).astype(np.float32)[None]
    out /= np.float32(255)
    return out


def ohlc_pair(
    ohlcv: NDArray[np.float64], leader: NDArray[np.float64], height: int = 54, bars: int = 24
) -> NDArray[np.float32]:
    """The two-layer CIPM's input (seed 001: BTC leads the alts): ``(2, height, 3 * bars)``, the
    :func:`ohlc_input` of the symbol's bars over that of the leader's bars for the same minutes (for
    the leader itself, its own image twice)."""
    return np.concatenate([ohlc_input(ohlcv, height, bars), ohlc_input(leader, height, bars)])


def composite(ohlcv: NDArray[np.float64], height: int = 54, bars: int = 24) -> NDArray[np.float32]:
    """The model input: ``(3, height, 3 * bars)`` float32 in ``[0, 1]`` from the last ``bars`` rows of ``ohlcv``.

    Only those rows are read or validated; ``ohlcv`` is ``(N, 5)`` with ``N >= bars``.

    * channel 0: :func:`ohlc_chart` / 255;
    * channel 1: volume profile: each bar's 3 columns hold 1.0 in the bottom
      ``round(volume / max_volume * height)`` rows (an all-zero-volume window gives zeros);
    * channel 2: the GASF of the log close series, resized to ``(height, 3 * bars)`` by nearest-neighbour
      index mapping (source index ``((2 * i + 1) * bars) // (2 * size)``, so each bar's 3 columns share one
      source column), mapped from ``[-1, 1]`` to ``[0, 1]``.

    Invariant to the price level: the log closes enter as ``log(close / min(close))``, so multiplying all
    prices by a constant leaves the image unchanged (bit-for-bit for powers of two).
    """
    window, height = _window(ohlcv, height, bars)
    width = 3 * bars

    out = np.empty((3, height, width), dtype=np.float32)
    out[0] = ohlc_chart(window[:, :4], height)
    out[0] /= np.float32(255)

    vol = window[:, 4]
    vmax = float(vol.max())
    if vmax > 0.0:
        filled = np.repeat(np.rint(vol / vmax * height).astype(np.intp), 3)
        out[1] = np.arange(height)[:, None] >= height - filled
    else:
        out[1] = 0.0

    close = window[:, 3]
    cos, sin = _unit_cos_sin(np.log(close / close.min()))
    field = _gasf_from(cos, sin)
    resized = field[np.ix_(_nearest_index(bars, height), _nearest_index(bars, width))]
    out[2] = (resized + np.float32(1)) * np.float32(0.5)
    np.clip(out[2], 0.0, 1.0, out=out[2])
    return out
