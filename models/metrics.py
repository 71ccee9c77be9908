"""Strategy metrics, defined so they can be recomputed from ``predictions.csv.gz``.

The definitions a call is scored by are :mod:`inference.scoring`'s, shared with the live track
record (:mod:`inference.track_record`), so the backtest and the served signals' scores agree.

A :class:`Part` is one series (symbol) in time order: at each bar a probability ``p_up`` (NaN
when the strategy gives none), a ``call`` d ∈ {-1, 0, +1} (what accuracy judges), a ``position``
(what is traded: the ensemble trades only its tradeable calls), the simple return ``r`` over the
horizon, and the realized / forecast / EWMA variances over the horizon (bp²).

* classification, on bars that moved (``r != 0``): ``coverage`` = share of bars with a call;
  ``accuracy_moved`` over the calls; ``precision``/``recall``/``f1`` for the up class; ``majority_moved``
  = the accuracy of always guessing the commoner outcome (the bar to beat); ``accuracy_all`` counts
  unchanged bars as misses;
* probability, on moved bars with a ``p_up``: ``brier``, ``brier_skill = 1 - brier / brier(base
  rate)`` (the base rate of the same bars: > 0 is skill), ``log_loss``;
* volatility: ``qlike = mean(ln V + RV / V)`` of the forecast variance V and of the EWMA baseline's
  (lower is better);
* trading, per series: ``net_t = pos_t · r_t - fee · |pos_t - pos_{t-1}|`` (the last position is
  closed); returns are compounded per series and averaged over series (``return_gross``,
  ``return_taker`` at 0.055 %, ``return_maker`` at 0.02 % a side); ``sharpe``/``sortino`` annualised
  over the pooled net returns at the taker fee; ``max_drawdown`` the worst series; ``calmar`` =
  annualised mean return / max drawdown; ``win_rate`` over bars in a position; ``profit_factor``;
  ``trades`` = entries into a new non-zero position;
* 95 % intervals for accuracy and Sharpe: block bootstrap, resampling whole days (1,000 draws, seeded);
  ``small_sample`` when there are fewer than 500 calls.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from inference import scoring
from inference.scoring import accuracy, brier_skill, probability_scores, qlike

__all__ = ["MAKER_FEE", "TAKER_FEE", "Part", "brier_skill", "equity_curve", "net_returns", "qlike", "strategy_report"]

TAKER_FEE = 0.00055
MAKER_FEE = 0.0002
MINUTES_PER_YEAR = 365.0 * 24 * 60
SMALL_SAMPLE = 500
BOOTSTRAP_DRAWS = 1000

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Part:
    series: str
    times: npt.NDArray[np.int64]  # bar start at whose close the call is made (ms)
    day: npt.NDArray[np.int64]  # UTC day number, for the block bootstrap
    p_up: F64
    call: npt.NDArray[np.int8]
    position: npt.NDArray[np.int8]
    r: F64  # simple return over the horizon
    var_real: F64  # realized variance over the horizon, bp²
    var_pred: F64  # the strategy's variance forecast, bp² (NaN: none)
    ewma: F64  # the EWMA baseline's, bp²


def net_returns(position: npt.NDArray[np.int8], realized: F64, fee: float = TAKER_FEE) -> F64:
    return scoring.net_returns(position, realized, fee)


def _compound(p: Part, fee: float) -> float:
    return float(np.prod(1.0 + net_returns(p.position, p.r, fee)) - 1.0)


def _max_drawdown(p: Part, fee: float) -> float:
    equity = np.concatenate([[1.0], np.cumprod(1.0 + net_returns(p.position, p.r, fee))])
    return float(np.max(1.0 - equity / np.maximum.accumulate(equity)))


def equity_curve(parts: Sequence[Part], fee: float) -> tuple[npt.NDArray[np.int64], F64]:
    """The equal-weight book over the series: mean of each series' equity, on the union of bar times
    (a series holds its last value between its bars)."""
    times = np.unique(np.concatenate([p.times for p in parts]))
    curves = []
    for p in parts:
        eq = np.cumprod(1.0 + net_returns(p.position, p.r, fee))
        j = np.searchsorted(p.times, times, side="right") - 1
        curves.append(np.where(j >= 0, eq[np.maximum(j, 0)], 1.0))
    return times, np.mean(curves, axis=0)


def _sharpe(net: F64, per_year: float) -> float:
    sd = float(net.std()) if len(net) > 1 else 0.0
    return float(net.mean() / sd * math.sqrt(per_year)) if sd > 0 else float("nan")


def _bootstrap(parts: Sequence[Part], per_year: float, seed: int = 0) -> tuple[list[float], list[float]]:
    """95 % intervals of accuracy and Sharpe, resampling days (with all their series) with replacement."""
    call = np.concatenate([p.call for p in parts])
    r = np.concatenate([p.r for p in parts])
    net = np.concatenate([net_returns(p.position, p.r) for p in parts])
    day = np.concatenate([p.day for p in parts])
    days, inverse = np.unique(day, return_inverse=True)
    if len(days) < 2:
        return [float("nan")] * 2, [float("nan")] * 2
    groups = [np.flatnonzero(inverse == k) for k in range(len(days))]
    rng = np.random.default_rng(seed)
    accs, sharpes = [], []
    for _ in range(BOOTSTRAP_DRAWS):
        idx = np.concatenate([groups[k] for k in rng.integers(0, len(days), len(days))])
        hits, n = accuracy(call[idx], r[idx])
        accs.append(hits / n if n else np.nan)
        sharpes.append(_sharpe(net[idx], per_year))

    def ci(x: list[float]) -> list[float]:
        a = np.asarray(x, float)
        a = a[np.isfinite(a)]
        return [float(np.quantile(a, 0.025)), float(np.quantile(a, 0.975))] if len(a) else [float("nan")] * 2

    return ci(accs), ci(sharpes)


def strategy_report(parts: Sequence[Part], horizon_min: int) -> dict[str, object]:
    """Every figure of the module docstring for one strategy over its series."""
    cat = {
        k: np.concatenate([getattr(p, k) for p in parts]) for k in ("p_up", "call", "r", "var_real", "var_pred", "ewma")
    }
    call, r, p = cat["call"], cat["r"], cat["p_up"]
    n = len(r)
    moved = r != 0
    up = r > 0
    hits, judged = accuracy(call, r)
    tp = int(np.sum((call > 0) & up))
    fp = int(np.sum((call > 0) & moved & ~up))
    fn = int(np.sum((call <= 0) & up))
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    base = float(up[moved].mean()) if moved.any() else float("nan")
    prob = probability_scores(p, r)
    vol = np.isfinite(cat["var_pred"]) & np.isfinite(cat["ewma"])

    def vol_loss(pred: F64) -> float:
        return qlike(pred[vol], cat["var_real"][vol]) if vol.any() else float("nan")

    per_year = MINUTES_PER_YEAR / horizon_min
    net = np.concatenate([net_returns(x.position, x.r) for x in parts])
    downside = float(np.sqrt(np.mean(np.minimum(net, 0.0) ** 2))) if len(net) else 0.0
    in_pos = np.concatenate([x.position for x in parts]) != 0
    gains, losses = net[net > 0].sum(), net[net < 0].sum()
    trades = 0
    for x in parts:
        prev = np.concatenate([[0], x.position[:-1]])
        trades += int(np.sum((x.position != 0) & (x.position != prev)))
    mdd = max((_max_drawdown(x, TAKER_FEE) for x in parts), default=0.0)
    annual = float(net.mean() * per_year) if len(net) else float("nan")
    acc_ci, sharpe_ci = _bootstrap(parts, per_year)
    calls = int(np.sum(call != 0))
    return {
        "n": n,
        "calls": calls,
        "coverage": calls / n if n else float("nan"),
        "small_sample": calls < SMALL_SAMPLE,
        "up_rate_moved": base,
        "majority_moved": max(base, 1 - base) if base == base else float("nan"),
        "accuracy_moved": hits / judged if judged else float("nan"),
        "accuracy_ci": acc_ci,
        "accuracy_all": hits / calls if calls else float("nan"),  # unchanged bars count as misses
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan"),
        "brier": prob.brier,
        "brier_skill": prob.brier_skill,
        "log_loss": prob.log_loss,
        "qlike": vol_loss(cat["var_pred"]),
        "qlike_ewma": vol_loss(cat["ewma"]),
        "return_gross": float(np.mean([_compound(x, 0.0) for x in parts])),
        "return_taker": float(np.mean([_compound(x, TAKER_FEE) for x in parts])),
        "return_maker": float(np.mean([_compound(x, MAKER_FEE) for x in parts])),
        "sharpe": _sharpe(net, per_year),
        "sharpe_ci": sharpe_ci,
        "sortino": float(net.mean() / downside * math.sqrt(per_year)) if downside > 0 else float("nan"),
        "max_drawdown": mdd,
        "calmar": annual / mdd if mdd > 0 else float("nan"),
        "win_rate": float(np.mean(net[in_pos] > 0)) if in_pos.any() else float("nan"),
        "profit_factor": float(gains / -losses) if losses < 0 else float("nan"),
        "trades": trades,
        "exposure": float(in_pos.mean()) if len(in_pos) else 0.0,
        "horizon_minutes": horizon_min,
    }
