"""Strategy metrics after Bybit's taker fee, defined so they can be recomputed from predictions.csv.

Per series, in time order, with ``direction`` d_t ∈ {-1, 0, +1} held over the next bar:

* ``net_t = d_t · r_t - fee · |d_t - d_{t-1}|`` (d_{-1} = 0, and the final position is closed:
  one more ``fee · |d_last|``), fee = 0.055 % a side;
* per series, total return = Π(1 + net_t) - 1 and max drawdown = max(1 - equity/peak) with equity
  starting at 1; with several series (symbols) total_return is their mean (an equal-weight book, each
  traded alone) and max_drawdown the worst of them;
* sharpe = mean(net)/std(net)·√(bars per year); sortino uses √mean(min(net, 0)²) as the deviation;
* win_rate = share of bars in a position with net > 0; profit_factor = Σ net⁺ / |Σ net⁻|;
* trades = entries into a non-zero position that differs from the previous one;
* classification counts only bars with a call (p_up ≠ 0.5): up predicted when p_up > 0.5, and
  "up" means r_t > 0 strictly (an unchanged close counts as not up); precision/recall/f1 are for the
  up class; brier = mean((p_up - up)²) over all; majority_accuracy = max(up_rate, 1 - up_rate) is the
  accuracy of always guessing the commoner outcome, the bar to beat; accuracy_moved leaves out bars
  that closed unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

__all__ = ["TAKER_FEE", "net_returns", "strategy_metrics"]

TAKER_FEE = 0.00055
MINUTES_PER_YEAR = 365.0 * 24 * 60


def net_returns(
    direction: npt.NDArray[np.int8], realized: npt.NDArray[np.float64], fee: float = TAKER_FEE
) -> npt.NDArray[np.float64]:
    d = direction.astype(np.float64)
    prev = np.concatenate([[0.0], d[:-1]])
    net = d * realized - fee * np.abs(d - prev)
    if len(net):
        net[-1] -= fee * abs(d[-1])
    return np.asarray(net, dtype=np.float64)


def _compound(direction: npt.NDArray[np.int8], realized: npt.NDArray[np.float64]) -> float:
    return float(np.prod(1.0 + net_returns(direction, realized)) - 1.0)


def _max_drawdown(direction: npt.NDArray[np.int8], realized: npt.NDArray[np.float64]) -> float:
    equity = np.concatenate([[1.0], np.cumprod(1.0 + net_returns(direction, realized))])  # starts at 1
    return float(np.max(1.0 - equity / np.maximum.accumulate(equity)))


def strategy_metrics(
    parts: Sequence[tuple[npt.NDArray[np.float64], npt.NDArray[np.int8], npt.NDArray[np.float64]]],
    interval_min: int,
) -> dict[str, float | int]:
    """``parts``: per series (p_up, direction, realized next-bar return), each in time order."""
    p = np.concatenate([x[0] for x in parts]) if parts else np.zeros(0)
    d = np.concatenate([x[1] for x in parts]) if parts else np.zeros(0, np.int8)
    r = np.concatenate([x[2] for x in parts]) if parts else np.zeros(0)
    net = np.concatenate([net_returns(x[1], x[2]) for x in parts]) if parts else np.zeros(0)
    up = r > 0
    moved = r != 0  # a bar that closed unchanged is neither up nor down
    called = p != 0.5
    pred_up = p > 0.5
    tp = int(np.sum(called & pred_up & up))
    fp = int(np.sum(called & pred_up & ~up))
    fn = int(np.sum(called & ~pred_up & up))
    n_called = int(called.sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    in_pos = d != 0
    gains, losses = net[net > 0].sum(), net[net < 0].sum()
    bars_per_year = MINUTES_PER_YEAR / interval_min
    std = float(net.std()) if len(net) > 1 else float("nan")
    downside = float(np.sqrt(np.mean(np.minimum(net, 0.0) ** 2))) if len(net) else float("nan")
    trades = 0
    for _, dd, _ in parts:
        prev = np.concatenate([[0], dd[:-1]])
        trades += int(np.sum((dd != 0) & (dd != prev)))
    return {
        "n_predictions": len(p),
        "n_calls": n_called,
        "up_rate": float(up.mean()) if len(up) else float("nan"),  # the share of bars that closed up
        "majority_accuracy": float(max(up.mean(), 1 - up.mean())) if len(up) else float("nan"),
        "accuracy": float(np.sum(called & (pred_up == up)) / n_called) if n_called else float("nan"),
        "accuracy_moved": float(np.sum(called & moved & (pred_up == up)) / np.sum(called & moved))
        if np.sum(called & moved)
        else float("nan"),
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan"),
        "brier": float(np.mean((p - up) ** 2)) if len(p) else float("nan"),
        "total_return": float(np.mean([_compound(x[1], x[2]) for x in parts])) if parts else 0.0,
        "sharpe": float(net.mean() / std * math.sqrt(bars_per_year)) if std and std > 0 else float("nan"),
        "sortino": float(net.mean() / downside * math.sqrt(bars_per_year))
        if downside and downside > 0
        else float("nan"),
        "max_drawdown": max((_max_drawdown(x[1], x[2]) for x in parts), default=0.0),
        "win_rate": float(np.mean(net[in_pos] > 0)) if in_pos.any() else float("nan"),
        "profit_factor": float(gains / -losses) if losses < 0 else float("nan"),
        "trades": trades,
        "exposure": float(in_pos.mean()) if len(d) else 0.0,
        "interval_minutes": interval_min,
    }
