"""Feature set r1, the linear component's input, and the EWMA volatility baseline.

Shared by training (``models.linear``), stacking and evaluation (``models.stack``,
``models.evaluate``) and serving (``inference.components``, ``inference.engine``). Like feature set
v1 (:mod:`inference.features`) each value is a function of the bars it is given and validated the
same way (``FeatureError`` names the array and the offending index).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

# the one validation of OHLCV input, shared with feature set v1
from inference.features import FeatureError, _high_low, _prices, _volumes

__all__ = ["EWMA_LAMBDA", "LINEAR_BARS", "LINEAR_FEATURES", "LINEAR_SET_VERSION", "ewma_variance", "linear_input"]

LINEAR_SET_VERSION = "r1"
_LOOKBACKS = (1, 2, 3, 5, 10, 15, 30, 60, 120, 240)  # bars of summed log return, vol-normalised
_VOL_SPANS = (1, 5, 15, 60, 240)  # bars over which realized variance and mean |return| are taken
_SIGMA_BARS = 60  # the volatility unit of the direction features
_Z_CLIP = 10.0
LINEAR_BARS = max(_LOOKBACKS) + 1  # closes needed: 240 returns
LINEAR_FEATURES: tuple[str, ...] = (
    *(f"z_ret_{k}" for k in _LOOKBACKS),
    "range_position_15",
    "body_z",
    "upper_wick_z",
    "lower_wick_z",
    "log_vol_ratio_15_60",
    "log_vol_ratio_60_240",
    "log_volume_ratio_60",
    "signed_volume_z",
    *(f"ln_rv_{k}" for k in _VOL_SPANS),
    *(f"ln_mean_abs_{k}" for k in _VOL_SPANS),
    "ln_hl_range",
)
EWMA_LAMBDA = 0.94  # RiskMetrics' decay for the volatility baseline


def linear_input(ohlcv: NDArray[Any]) -> NDArray[np.float32]:
    """Feature set r1 for the bar that closes the window: float32 ``(len(LINEAR_FEATURES),)``.

    Reads exactly the last ``LINEAR_BARS`` (241) rows of ``(N, 5)`` bars, so training and serving get
    the same numbers for the same bars whatever precedes them. With ``r`` the 240 log returns and ``s``
    the population std of the last 60 (floored at 1e-6):

    * direction features (scale-free, clipped to ±10): ``z_ret_k = Σ r[-k:] / (s·√k)``; where the close
      sits in the last 15 bars' high-low range (-0.5 … 0.5); the last bar's body and wicks over
      ``s·close``; ``ln s15/s60`` and ``ln s60/s240``; ``ln`` of the last volume over the mean of the last
      60 (0 when either is 0); the bar's signed volume over that mean;
    * volatility features (for the magnitude and volatility heads, log-linear): ``ln(0.01 + mean r²)``
      (r in bp) and ``ln(0.1 + mean |r|)`` over the last 1, 5, 15, 60 and 240 bars, and
      ``ln(0.1 + the last bar's high-low range over its close in bp)``.

    Raises ``FeatureError`` on bad input or a too-short history.
    """
    bars = np.asarray(ohlcv)
    if bars.ndim != 2 or bars.shape[1] != 5:
        raise FeatureError(f"ohlcv must have shape (N, 5) (open, high, low, close, volume), got {bars.shape}")
    if len(bars) < LINEAR_BARS:
        raise FeatureError(f"window too short: linear_input needs {LINEAR_BARS} bars, got {len(bars)}")
    bars = bars[-LINEAR_BARS:]
    o = _prices(bars[:, 0], "open")
    h, lo = _high_low(bars[:, 1], bars[:, 2])
    c = _prices(bars[:, 3], "close")
    v = _volumes(bars[:, 4])
    r = np.log(c[1:] / c[:-1])

    def sigma(k: int) -> float:
        return max(float(r[-k:].std()), 1e-6)

    s = sigma(_SIGMA_BARS)
    z = [float(r[-k:].sum()) / (s * math.sqrt(k)) for k in _LOOKBACKS]
    high15, low15 = float(h[-15:].max()), float(lo[-15:].min())
    position = (c[-1] - low15) / (high15 - low15) - 0.5 if high15 > low15 else 0.0
    scale = s * c[-1]
    body = (c[-1] - o[-1]) / scale
    upper = (h[-1] - max(o[-1], c[-1])) / scale
    lower = (min(o[-1], c[-1]) - lo[-1]) / scale
    mean_volume = float(v[-60:].mean())
    log_volume = math.log(v[-1] / mean_volume) if v[-1] > 0 and mean_volume > 0 else 0.0
    signed_volume = math.copysign(v[-1] / mean_volume, r[-1]) if mean_volume > 0 and r[-1] != 0 else 0.0
    direction = np.clip(
        [
            *z,
            position,
            body,
            upper,
            lower,
            math.log(sigma(15) / s),
            math.log(s / sigma(240)),
            log_volume,
            signed_volume,
        ],
        -_Z_CLIP,
        _Z_CLIP,
    )
    bp = r * 1e4
    rv = [math.log(0.01 + float(np.mean(bp[-k:] ** 2))) for k in _VOL_SPANS]
    mean_abs = [math.log(0.1 + float(np.mean(np.abs(bp[-k:])))) for k in _VOL_SPANS]
    hl = math.log(0.1 + (h[-1] - lo[-1]) / c[-1] * 1e4)
    out = np.array([*direction, *rv, *mean_abs, hl], dtype=np.float32)
    if not np.isfinite(out).all():
        raise FeatureError("linear_input produced non-finite values (input magnitudes overflow)")
    return out


def ewma_variance(close: ArrayLike, lam: float = EWMA_LAMBDA) -> float:
    """RiskMetrics' EWMA of squared 1-bar log returns over the closes given (bp² per bar).

    Seeded with the mean square of the first ten returns; the baseline every volatility forecast is
    scored against, and the signal's volatility when no component has a volatility head. Raises
    ``FeatureError`` with fewer than 11 closes.
    """
    c = _prices(close, "close")
    if len(c) < 11:
        raise FeatureError(f"ewma_variance needs at least 11 closes, got {len(c)}")
    sq = (np.log(c[1:] / c[:-1]) * 1e4) ** 2
    var = float(sq[:10].mean())
    for x in sq[10:]:
        var = lam * var + (1.0 - lam) * float(x)
    return var
