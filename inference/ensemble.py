"""Weighted vote of the component models into one signal (DESIGN.md "Ensemble").

Each available component votes P(up) for the next bar of its own timeframe. The ensemble's P(up)
is the weight-averaged vote; ``score = 2·P(up) - 1`` lies in [-1, 1]; the direction is long when
the score reaches ``long_above``, short when it reaches ``-short_below``, flat otherwise;
``confidence = |score|``; ``agreement`` is the weighted share of components that lean the same way
as the ensemble (for a flat ensemble: the share that does not lean either way beyond the threshold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from inference.signal import Direction

__all__ = ["EnsembleResult", "Thresholds", "Vote", "combine"]


@dataclass(frozen=True, slots=True)
class Vote:
    component: str
    p_up: float
    weight: float


@dataclass(frozen=True, slots=True)
class Thresholds:
    long_above: float = 0.05  # on the score; 0.05 ⇔ P(up) ≥ 0.525
    short_below: float = 0.05

    def direction(self, score: float) -> Direction:
        if score >= self.long_above:
            return "long"
        if score <= -self.short_below:
            return "short"
        return "flat"


@dataclass(frozen=True, slots=True)
class EnsembleResult:
    p_up: float
    score: float
    direction: Direction
    confidence: float
    agreement: float
    votes: int


def combine(votes: Sequence[Vote], thresholds: Thresholds = Thresholds()) -> EnsembleResult:
    """Combine votes; raises ``ValueError`` when there is nothing to combine (the caller falls back)."""
    usable = [v for v in votes if v.weight > 0 and math.isfinite(v.p_up) and 0.0 <= v.p_up <= 1.0]
    if not usable:
        raise ValueError("no usable votes")
    total = sum(v.weight for v in usable)
    p_up = sum(v.weight * v.p_up for v in usable) / total
    score = 2.0 * p_up - 1.0
    direction = thresholds.direction(score)
    agree = sum(v.weight for v in usable if thresholds.direction(2.0 * v.p_up - 1.0) == direction)
    return EnsembleResult(
        p_up=p_up,
        score=score,
        direction=direction,
        confidence=abs(score),
        agreement=agree / total,
        votes=len(usable),
    )
