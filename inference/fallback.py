"""The emergency rule: multi-scale momentum, used when no model can vote (DESIGN.md).

``score = 0.5·mom3 + 0.3·mom7 + 0.2·mom14`` with ``momN = close[t] / close[t-N] - 1``;
long above +0.0005, short below -0.0005, flat between. Transparent on purpose.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

__all__ = ["FALLBACK_BARS", "THRESHOLD", "momentum_direction", "momentum_score"]

WEIGHTS = ((3, 0.5), (7, 0.3), (14, 0.2))
THRESHOLD = 0.0005
FALLBACK_BARS = 15  # closes needed: the current one and 14 before it


def momentum_score(close: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Score for every bar (NaN for the first 14, where mom14 is undefined)."""
    close = np.asarray(close, dtype=np.float64)
    score = np.full(len(close), np.nan)
    if len(close) >= FALLBACK_BARS:
        t = np.arange(14, len(close))
        score[t] = sum(w * (close[t] / close[t - n] - 1.0) for n, w in WEIGHTS)
    return score


def momentum_direction(score: npt.NDArray[np.float64], threshold: float = THRESHOLD) -> npt.NDArray[np.int8]:
    """+1 long, -1 short, 0 flat (also where the score is undefined)."""
    out = np.zeros(len(score), np.int8)
    out[score > threshold] = 1
    out[score < -threshold] = -1
    return out
