"""The emergency rule: multi-scale momentum, used when no model can vote (DESIGN.md).

``score = 0.5·mom3 + 0.3·mom7 + 0.2·mom14`` with ``momN = close[t] / close[t-N] - 1``;
long above +0.0005, short below -0.0005, flat between. Transparent on purpose. This module owns the
rule and the signal built from it: serving (:func:`fallback_signal`, called by the signal engine)
and offline evaluation (``models.evaluate``, on whole series) use the same
:func:`momentum_score` and :func:`momentum_direction`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from inference.checks import check_window
from inference.signal import BarRef, ComponentReport, Direction, Freshness, NoSignal, Signal, StageLatency
from streaming.klines import Bar

__all__ = ["FALLBACK_BARS", "THRESHOLD", "fallback_signal", "momentum_direction", "momentum_score"]

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


_DIRECTIONS: dict[int, Direction] = {1: "long", -1: "short", 0: "flat"}


def fallback_signal(
    *,
    symbol: str,
    bar: BarRef,
    interval: str,
    bars: Sequence[Bar],
    why: str,
    components: tuple[ComponentReport, ...],
    freshness: Freshness,
    latency: StageLatency,
    produced_at: int,
    produced_wall_ms: int,
) -> Signal | NoSignal:
    """The rule's signal at ``bar`` from the closed ``bars`` of ``interval`` (the finest), or the
    :class:`NoSignal` saying why its input is unusable. ``why`` says why no component voted."""
    problem = check_window(bars, interval, FALLBACK_BARS, bar.close_time)
    if problem is not None:
        return NoSignal(
            symbol=symbol,
            bar=bar,
            reason=f"fallback_input:{problem}",
            detail=f"no component voted ({why}); the fallback rule's {interval}m input: {problem}",
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
        horizon=f"next {interval}m bar (momentum rule)",
    )
