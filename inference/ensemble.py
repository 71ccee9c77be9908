"""The components' votes combined into one P(up), a call and its economics (DESIGN.md "Ensemble").

Every component that votes answers the same question: will the log return over the next
``horizon_minutes`` be positive? Two ways to combine:

* **stacked** (:func:`stack`, a manifest with an ``ensemble`` section): ``z = intercept + Σ wᵢ·logitᵢ``
  with weights a logistic regression earned on the validation span, then Platt calibration
  ``P(up) = sigmoid(a·z + b)``; long when ``P(up) >= threshold``, short when ``P(up) <= 1 - threshold``
  (the threshold was chosen on validation too). A component that did not vote adds nothing to ``z``.
* **weighted mean** (:func:`combine`, older manifests): the weight-averaged P(up), mapped by
  :class:`Thresholds` on ``score = 2·P(up) - 1``. Uncalibrated.

Either way ``score = 2·P(up) - 1``, ``confidence = |score|`` and ``agreement`` is the weighted share
of components leaning the same way as the ensemble (for a flat ensemble: the share not leaning
beyond the threshold). :func:`economics` then prices the call: ``edge_bp = (2·P(up) - 1)·E|move|``
(the expected signed log return), ``cost_bp`` the round trip at the configured fee, and the call is
``tradeable`` only when it is long or short and its edge clears the cost.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from inference.manifest import EnsembleSpec
from inference.signal import Direction

__all__ = [
    "Economics",
    "EnsembleResult",
    "Thresholds",
    "Vote",
    "combine",
    "economics",
    "round_bp",
    "sigmoid",
    "stack",
    "stack_direction",
    "stacked_p_up",
]

_P_CLIP = 1e-6


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
    calibrated: bool = False


def _usable(votes: Sequence[Vote]) -> list[Vote]:
    return [v for v in votes if math.isfinite(v.p_up) and 0.0 <= v.p_up <= 1.0]


def _logit(p: float) -> float:
    p = min(max(p, _P_CLIP), 1.0 - _P_CLIP)
    return math.log(p / (1.0 - p))


def sigmoid(z: float) -> float:
    """The logistic function, without overflow for large |z|."""
    return 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))


def combine(votes: Sequence[Vote], thresholds: Thresholds = Thresholds()) -> EnsembleResult:
    """Weighted mean; raises ``ValueError`` when there is nothing to combine (the caller falls back)."""
    usable = [v for v in _usable(votes) if v.weight > 0]
    if not usable:
        raise ValueError("no usable votes")
    total = sum(v.weight for v in usable)
    p_up = sum(v.weight * v.p_up for v in usable) / total
    score = 2.0 * p_up - 1.0
    direction = thresholds.direction(score)
    agree = sum(v.weight for v in usable if thresholds.direction(2.0 * v.p_up - 1.0) == direction)
    return EnsembleResult(p_up, score, direction, abs(score), agree / total, len(usable))


def stacked_p_up(logits: dict[str, float], spec: EnsembleSpec) -> float:
    """The calibrated P(up) from the components' logits (absent ones add 0)."""
    z = spec.intercept + sum(w * logits[name] for name, w in spec.weights.items() if name in logits)
    return sigmoid(float(spec.calibration["a"]) * z + float(spec.calibration["b"]))


def stack_direction(p_up: float, threshold: float) -> Direction:
    if p_up >= threshold:
        return "long"
    if p_up <= 1.0 - threshold:
        return "short"
    return "flat"


def stack(votes: Sequence[Vote], spec: EnsembleSpec) -> EnsembleResult:
    """The stacked, calibrated ensemble; raises ``ValueError`` when no vote has a stacker weight."""
    usable = [v for v in _usable(votes) if v.component in spec.weights]
    if not usable:
        raise ValueError("no usable votes")
    p_up = stacked_p_up({v.component: _logit(v.p_up) for v in usable}, spec)
    direction = stack_direction(p_up, spec.threshold)
    weights = {v.component: abs(spec.weights[v.component]) for v in usable}
    total = sum(weights.values())
    # A component with a negative weight pushes the call against its own lean: it agrees when it leans
    # the other way (its vote, as the stacker uses it, is 1 - p_up).
    agree = sum(
        weights[v.component]
        for v in usable
        if stack_direction(v.p_up if spec.weights[v.component] >= 0 else 1.0 - v.p_up, spec.threshold) == direction
    )
    score = 2.0 * p_up - 1.0
    return EnsembleResult(p_up, score, direction, abs(score), agree / total if total > 0 else 0.0, len(usable), True)


@dataclass(frozen=True, slots=True)
class Economics:
    expected_move_bp: float | None
    volatility_bp: float | None
    edge_bp: float | None
    cost_bp: float
    tradeable: bool


def round_bp(x: float | None) -> float | None:
    """A basis-point figure as the signal carries it (4 decimals)."""
    return None if x is None else round(x, 4)


def economics(
    p_up: float | None,
    direction: Direction,
    expected_move_bp: float | None,
    volatility_bp: float | None,
    fee_bp: float,
) -> Economics:
    """Price a call: ``edge_bp = (2·P(up) - 1)·expected_move_bp``; a round trip costs ``2·fee_bp``;
    tradeable only for a long/short call whose edge, in its own direction, exceeds the cost. Without
    a probability (the fallback rule) or a magnitude there is no edge and nothing is tradeable."""
    cost = 2.0 * fee_bp
    if p_up is None or expected_move_bp is None:
        return Economics(expected_move_bp, volatility_bp, None, cost, False)
    edge = (2.0 * p_up - 1.0) * expected_move_bp
    signed = edge if direction == "long" else -edge if direction == "short" else 0.0
    return Economics(expected_move_bp, volatility_bp, edge, cost, direction != "flat" and signed > cost)
