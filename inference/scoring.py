"""How a call is scored: one set of definitions for ``candlecast evaluate`` and the live track record.

:mod:`models.metrics` builds the evaluation's table from these, :mod:`inference.track_record` the
served signals' rolling summaries, so the live figures and the backtest's mean the same thing:

* a call d ∈ {-1, 0, +1} is judged on bars that moved (``r != 0``): right when its sign is the move's;
* probabilities on moved bars: Brier, Brier skill against the base rate of the same bars, log loss
  (``p`` clipped to [1e-6, 1 - 1e-6]);
* volatility: QLIKE ``mean(ln V + RV / V)`` of the forecast variance (floored at 1e-4 bp²);
* trading: ``net_t = pos_t · r_t - fee · |pos_t - pos_{t-1}|`` with simple returns, the last position
  closed at the end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "SIGN",
    "ProbabilityScores",
    "accuracy",
    "brier_skill",
    "net_returns",
    "probability_scores",
    "qlike",
    "wilson",
]

F64 = npt.NDArray[np.float64]
_CLIP = 1e-6
SIGN = {"long": 1, "short": -1, "flat": 0}  # a signal's direction as the call d


def accuracy(call: npt.NDArray[np.int8], r: F64) -> tuple[int, int]:
    """(right, judged): calls on bars that moved, and those whose sign was the move's."""
    judged = (call != 0) & (r != 0)
    return int(np.sum(judged & ((call > 0) == (r > 0)))), int(judged.sum())


def brier_skill(p: F64, up: F64) -> float:
    """``1 - brier / brier(base rate of the same outcomes)``: > 0 is skill (NaN when all outcomes agree)."""
    ref = float(np.mean((float(up.mean()) - up) ** 2))
    return 1.0 - float(np.mean((p - up) ** 2)) / ref if ref > 0 else float("nan")


@dataclass(frozen=True, slots=True)
class ProbabilityScores:
    n: int
    brier: float
    brier_skill: float
    log_loss: float


def probability_scores(p: F64, r: F64) -> ProbabilityScores:
    """Brier, Brier skill and log loss of ``p`` (P(up)) on the bars that moved and have a ``p``."""
    ok = np.isfinite(p) & (r != 0)
    if not ok.any():
        nan = float("nan")
        return ProbabilityScores(0, nan, nan, nan)
    pp, yy = np.clip(p[ok], _CLIP, 1 - _CLIP), (r[ok] > 0).astype(np.float64)
    return ProbabilityScores(
        int(ok.sum()),
        float(np.mean((pp - yy) ** 2)),
        brier_skill(pp, yy),
        float(-np.mean(yy * np.log(pp) + (1 - yy) * np.log(1 - pp))),
    )


def qlike(var_pred: F64, var_real: F64) -> float:
    """``mean(ln V + RV / V)`` with the forecast variance floored at 1e-4 bp² (as serving floors it)."""
    v = np.maximum(var_pred, 1e-4)
    return float(np.mean(np.log(v) + var_real / v))


def net_returns(position: npt.NDArray[np.int8], realized: F64, fee: float) -> F64:
    d = position.astype(np.float64)
    prev = np.concatenate([[0.0], d[:-1]])
    net = d * realized - fee * np.abs(d - prev)
    if len(net):
        net[-1] -= fee * abs(d[-1])
    return np.asarray(net, dtype=np.float64)


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95 % Wilson score interval of a hit rate (NaN, NaN with no trials)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = hits / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)
