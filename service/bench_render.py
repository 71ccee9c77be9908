"""``candlecast bench render``: images/s of each renderer against mplfinance and pyts in the same run.

All renders draw the most recent bars of the real BTCUSDT 1-minute file: a 24-bar window for
:func:`ohlc_chart` and :func:`composite` (the model input), a 64-bar window for
:func:`candlestick_chart`, :func:`gasf`, :func:`gadf` and :func:`recurrence_plot`. Baselines, measured in
the same process:

* **mplfinance**: ``mpf.plot(type="candle", volume=True)`` of the same 64-bar window, Agg backend, axes
  off, rendered at 50 dpi to an in-memory PNG of about the candlestick image's size (192x64 px);
* **pyts**: ``GramianAngularField`` (summation / difference) and ``RecurrencePlot`` on the same 64-bar
  close series, one sample per call like the live path (numba kernels compiled before timing).

Each of our renderers and each pyts call is timed ``rounds`` times over ``repeats`` renders after a
warm-up, keeping the best round (shared, noisy machines); mplfinance, about a thousand times slower, is
timed once over a few renders. Prints JSON.
"""

from __future__ import annotations

import importlib
import os
import platform
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from inference.render import (
    RENDERER_VERSION,
    candlestick_chart,
    composite,
    gadf,
    gasf,
    ohlc_chart,
    recurrence_plot,
)

__all__ = ["DEFAULT_KLINES", "bench_render", "load_bars"]

DEFAULT_KLINES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "klines_1m" / "bybit_linear_BTCUSDT_1m.csv.gz"
)
SHORT_BARS = 24
LONG_BARS = 64
ROUNDS = 3


def load_bars(path: Path) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """``(open_time_ms, ohlcv)`` from a gzip CSV with columns ``open_time_ms,open,high,low,close,volume``."""
    table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.float64)
    return table[:, 0].astype(np.int64), np.ascontiguousarray(table[:, 1:6])


def _rate(fn: Callable[[], object], repeats: int, rounds: int = ROUNDS) -> float:
    """Best images/s over ``rounds`` timed loops of ``repeats`` calls, after a short warm-up."""
    for _ in range(min(repeats, 5)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, time.perf_counter() - start)
    return repeats / best


def _mplfinance_rate(times_ms: NDArray[np.int64], ohlcv: NDArray[np.float64], repeats: int) -> tuple[float, int]:
    """Renders/s of mplfinance drawing ``ohlcv`` as candles + volume into an in-memory PNG; also its byte size."""
    # Dev-only references, imported dynamically: serving never loads them, and they ship no type stubs.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    mpf: Any = importlib.import_module("mplfinance")
    pd: Any = importlib.import_module("pandas")

    frame = pd.DataFrame(
        ohlcv, columns=["Open", "High", "Low", "Close", "Volume"], index=pd.to_datetime(times_ms, unit="ms")
    )
    dpi = 50
    width_px, height_px = 3 * len(ohlcv), 64  # candlestick_chart's default size for this window
    png_size = 0

    def draw() -> None:
        nonlocal png_size
        buf = BytesIO()
        mpf.plot(
            frame,
            type="candle",
            volume=True,
            axisoff=True,
            figsize=(width_px / dpi, height_px / dpi),
            savefig={"fname": buf, "dpi": dpi},
            closefig=True,
        )
        png_size = buf.getbuffer().nbytes

    try:
        rate = _rate(draw, repeats, rounds=1)
    finally:
        plt.close("all")
    return rate, png_size


def _pyts_rates(series: NDArray[np.float64], repeats: int) -> dict[str, float]:
    image: Any = importlib.import_module("pyts.image")
    sample = series[None, :]
    summation = image.GramianAngularField(method="summation")
    difference = image.GramianAngularField(method="difference")
    recurrence = image.RecurrencePlot(dimension=1, threshold=None)
    return {
        "gasf": _rate(lambda: summation.transform(sample), repeats),
        "gadf": _rate(lambda: difference.transform(sample), repeats),
        "recurrence_plot": _rate(lambda: recurrence.transform(sample), repeats),
    }


def bench_render(repeats: int = 200, *, klines: Path | None = None) -> dict[str, Any]:
    """Measure every renderer and the mplfinance / pyts baselines on real bars; JSON-serialisable result."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    path = DEFAULT_KLINES if klines is None else klines
    times_ms, bars = load_bars(path)
    if len(bars) < LONG_BARS:
        raise ValueError(f"{path}: need at least {LONG_BARS} bars, got {len(bars)}")
    short = bars[-SHORT_BARS:]
    long = bars[-LONG_BARS:]
    close = long[:, 3].copy()

    ours: dict[str, tuple[int, Callable[[], object]]] = {
        "ohlc_chart": (SHORT_BARS, lambda: ohlc_chart(short[:, :4])),
        "composite": (SHORT_BARS, lambda: composite(short)),
        "candlestick_chart": (LONG_BARS, lambda: candlestick_chart(long)),
        "gasf": (LONG_BARS, lambda: gasf(close)),
        "gadf": (LONG_BARS, lambda: gadf(close)),
        "recurrence_plot": (LONG_BARS, lambda: recurrence_plot(close)),
    }
    renderers: dict[str, dict[str, Any]] = {}
    for name, (n_bars, fn) in ours.items():
        out = np.asarray(fn())
        renderers[name] = {
            "bars": n_bars,
            "shape": list(out.shape),
            "dtype": str(out.dtype),
            "images_per_s": round(_rate(fn, repeats), 1),
        }

    mpl_repeats = max(1, min(20, repeats // 10))
    mpl_rate, png_bytes = _mplfinance_rate(times_ms[-LONG_BARS:], long, mpl_repeats)
    pyts_rates = _pyts_rates(close, repeats)

    candle_ratio = renderers["candlestick_chart"]["images_per_s"] / mpl_rate
    renderers["candlestick_chart"]["ratio_vs_mplfinance"] = round(candle_ratio, 1)
    for name, rate in pyts_rates.items():
        renderers[name]["ratio_vs_pyts"] = round(renderers[name]["images_per_s"] / rate, 2)

    versions = {mod: importlib.import_module(mod).__version__ for mod in ("numpy", "mplfinance", "pyts")}
    return {
        "renderer_version": RENDERER_VERSION,
        "data": path.name,
        "repeats": repeats,
        "rounds": ROUNDS,
        "renderers": renderers,
        "baselines": {
            "mplfinance_candle_volume_png": {
                "bars": LONG_BARS,
                "repeats": mpl_repeats,
                "png_bytes": png_bytes,
                "images_per_s": round(mpl_rate, 2),
            },
            "pyts": {name: {"bars": LONG_BARS, "images_per_s": round(rate, 1)} for name, rate in pyts_rates.items()},
        },
        "ratio_vs_mplfinance": renderers["candlestick_chart"]["ratio_vs_mplfinance"],
        "ratio_vs_pyts": renderers["gasf"]["ratio_vs_pyts"],
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "versions": versions,
        },
        "note": (
            "images/s = renders per second, single thread, best of rounds. ratio_vs_mplfinance: "
            "candlestick_chart (64 bars + volume band, 64x192 uint8 array) vs mplfinance candle+volume of the "
            "same bars to an in-memory PNG at 50 dpi, ~192x64 px, axes off (mplfinance also encodes a PNG). "
            "ratio_vs_pyts: gasf vs pyts GramianAngularField(method='summation') on the same 64-close series, "
            "one sample per call; gadf and recurrence_plot likewise vs pyts."
        ),
    }
