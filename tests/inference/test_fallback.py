"""The fallback signal is the momentum rule of ``inference.fallback`` — the same ``momentum_score`` and
``momentum_direction`` offline evaluation uses — on the finest closed bars; bad input is a NoSignal."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from inference.fallback import FALLBACK_BARS, fallback_signal, momentum_direction, momentum_score
from inference.signal import BarRef, Freshness, NoSignal, Signal, StageLatency
from streaming.klines import Bar
from tests.inference.kit import MINUTE, T0

CLOSE = T0 + 60 * MINUTE


def closes_to_bars(closes: list[float]) -> list[Bar]:
    start = CLOSE - len(closes) * MINUTE
    return [
        Bar(
            start + i * MINUTE,
            Decimal(repr(c)),
            Decimal(repr(c)),
            Decimal(repr(c)),
            Decimal(repr(c)),
            Decimal(1),
            Decimal(0),
        )
        for i, c in enumerate(closes)
    ]


def signal_of(bars: list[Bar]) -> Signal | NoSignal:
    return fallback_signal(
        symbol="BTCUSDT",
        bar=BarRef("1", CLOSE - MINUTE, CLOSE),
        interval="1",
        bars=bars,
        why="models_missing",
        components=(),
        freshness=Freshness({}, None, None),
        latency=StageLatency(0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        produced_at=CLOSE,
        produced_wall_ms=CLOSE,
    )


@pytest.mark.parametrize(
    ("step", "direction"),
    [(0.01, "long"), (-0.01, "short"), (0.0, "flat"), (0.00002, "flat"), (5.0, "long")],
)
def test_the_served_direction_and_score_are_the_evaluated_rule(step: float, direction: str) -> None:
    closes = [100.0 * (1 + step) ** i if step < 1 else 100.0 * (i + 1) for i in range(20)]
    s = signal_of(closes_to_bars(closes))
    assert isinstance(s, Signal) and s.source == "fallback" and s.fallback_reason == "models_missing"
    score = momentum_score(np.array(closes[-FALLBACK_BARS:]))[-1:]
    assert s.direction == direction == {1: "long", -1: "short", 0: "flat"}[int(momentum_direction(score)[0])]
    assert s.score == max(-1.0, min(1.0, float(score[0])))  # clipped to [-1, 1] (the 5.0 case)
    assert (s.p_up, s.confidence, s.agreement) == (None, None, None)
    assert s.horizon == "next 1m bar (momentum rule)"


def test_too_few_closes_is_a_no_signal_naming_the_input_problem() -> None:
    s = signal_of(closes_to_bars([100.0] * (FALLBACK_BARS - 1)))
    assert isinstance(s, NoSignal) and s.reason == "fallback_input:short_window"
    assert s.detail == "no component voted (models_missing); the fallback rule's 1m input: short_window"
