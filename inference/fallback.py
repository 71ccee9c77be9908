"""The emergency rule: multi-scale momentum on 1h closes, used when no model can vote (DESIGN.md).

As in seed 000 (§ "PatternSignalGenerator", written for Bybit's 1h klines): with the simple returns
``r[i] = close[i] / close[i-1] - 1`` of the 1h closes, ``momN`` is the MEAN of the last N returns and
``score = 0.5·mom3 + 0.3·mom7 + 0.2·mom14``; long above +0.0005, short below -0.0005, flat between.
(The seed's code averages the first items of Bybit's newest-first list, i.e. the latest bars: its
intent, followed here, is the latest returns.) The rule reads the 1h window whatever the signal's
own bar is: on 1m closes the same thresholds would trade nearly every minute. Transparent on purpose.

This module owns the rule and the signal built from it: serving (:func:`fallback_signal`, called by
the signal engine) and offline evaluation (``models.evaluate``, on whole series) use the same
:func:`momentum_score` and :func:`momentum_direction`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from inference.checks import check_window
from inference.ensemble import Economics, round_bp
from inference.signal import (
    BarRef,
    ComponentReport,
    Direction,
    Freshness,
    NoSignal,
    Signal,
    StageLatency,
    horizon_text,
)
from streaming.klines import Bar

__all__ = [
    "FALLBACK_BARS",
    "FALLBACK_INTERVAL",
    "THRESHOLD",
    "fallback_signal",
    "momentum_direction",
    "momentum_score",
]

WEIGHTS = ((3, 0.5), (7, 0.3), (14, 0.2))
THRESHOLD = 0.0005
FALLBACK_INTERVAL = "60"  # the rule reads 1h closes (Bybit's interval name)
FALLBACK_BARS = 15  # closes needed: 14 returns, so the current close and 14 before it


def momentum_score(close: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """Score for every close (NaN for the first 14, where mom14 is undefined)."""
    close = np.asarray(close, dtype=np.float64)
    score = np.full(len(close), np.nan)
    if len(close) >= FALLBACK_BARS:
        r = np.zeros(len(close))
        r[1:] = close[1:] / close[:-1] - 1.0
        c = np.cumsum(r)  # c[t] - c[t-n] = sum of the n returns ending at t
        t = np.arange(FALLBACK_BARS - 1, len(close))
        score[t] = sum(w * (c[t] - c[t - n]) / n for n, w in WEIGHTS)
    return score


def momentum_direction(score: npt.NDArray[np.float64], threshold: float = THRESHOLD) -> npt.NDArray[np.int8]:
    """+1 long, -1 short, 0 flat (also where the score is undefined)."""
    out = np.zeros(len(score), np.int8)
    out[score > threshold] = 1
    out[score < -threshold] = -1
    return out


_DIRECTIONS: dict[int, Direction] = {1: "long", -1: "short", 0: "flat"}


def fallback_signal(
    *,
    symbol: str,
    bar: BarRef,
    bars: Sequence[Bar] | None,
    why: str,
    components: tuple[ComponentReport, ...],
    freshness: Freshness,
    latency: StageLatency,
    produced_at: int,
    produced_wall_ms: int,
    horizon_minutes: int = 1,
    reference_price: float | None = None,
    money: Economics | None = None,
    refused: str | None = None,
) -> Signal | NoSignal:
    """The rule's signal at ``bar`` from the closed 1h ``bars`` (``None``: 1h klines are not
    ingested), or the :class:`NoSignal` saying why its input is unusable (``refused``: the reason the
    caller already refuses the 1h window for, e.g. ``unreconciled_window``). ``why`` says why no
    component voted."""
    problem = refused or (
        "timeframe_not_ingested"
        if bars is None
        else check_window(bars, FALLBACK_INTERVAL, FALLBACK_BARS, bar.close_time)
    )
    if problem is not None or bars is None:
        return NoSignal(
            symbol=symbol,
            bar=bar,
            reason=f"fallback_input:{problem}",
            detail=f"no component voted ({why}); the fallback rule's 1h input: {problem}",
            produced_at=produced_at,
            produced_wall_ms=produced_wall_ms,
        )
    closes = np.array([float(b.close) for b in bars[-FALLBACK_BARS:]], dtype=np.float64)
    score = momentum_score(closes)[-1:]
    return Signal(
        symbol=symbol,
        bar=bar,
        produced_at=produced_at,
        produced_wall_ms=produced_wall_ms,
        direction=_DIRECTIONS[int(momentum_direction(score)[0])],
        score=max(-1.0, min(1.0, float(score[0]))),
        p_up=None,
        confidence=None,
        agreement=None,
        source="fallback",
        fallback_reason=why,
        components=components,
        freshness=freshness,
        latency_ms=latency,
        horizon=f"{horizon_text(horizon_minutes)} (momentum rule on 1h closes)",
        horizon_minutes=horizon_minutes,
        reference_price=reference_price,
        expected_move_bp=None if money is None else round_bp(money.expected_move_bp),
        volatility_bp=None if money is None else round_bp(money.volatility_bp),
        cost_bp=None if money is None else money.cost_bp,
        partial=True,  # no model voted
        ladder="rule",
    )
