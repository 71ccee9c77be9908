"""The fallback signal is the seed's momentum rule of ``inference.fallback`` — the same ``momentum_score``
and ``momentum_direction`` offline evaluation uses — on the closed 1h bars, whatever the signal's own
bar; bad or missing 1h input is a NoSignal."""

from __future__ import annotations

from decimal import Decimal

import numpy as np
import pytest

from inference.fallback import FALLBACK_BARS, fallback_signal, momentum_direction, momentum_score
from inference.signal import BarRef, Freshness, NoSignal, Signal, StageLatency
from streaming.klines import Bar
from tests.inference.kit import MINUTE, T0

HOUR = 60 * MINUTE
CLOSE = T0 + 20 * HOUR + 37 * MINUTE  # a 1m close at :37; the newest closed 1h bar closed at :00


def closes_to_bars(closes: list[float]) -> list[Bar]:
    """1h bars with these closes, the newest closing at the last full hour before ``CLOSE``."""
    start = CLOSE - 37 * MINUTE - len(closes) * HOUR
    return [
        Bar(
            start + i * HOUR,
            Decimal(repr(c)),
            Decimal(repr(c)),
            Decimal(repr(c)),
            Decimal(repr(c)),
            Decimal(1),
            Decimal(0),
        )
        for i, c in enumerate(closes)
    ]


def signal_of(bars: list[Bar] | None) -> Signal | NoSignal:
    return fallback_signal(
        symbol="BTCUSDT",
        bar=BarRef("1", CLOSE - MINUTE, CLOSE),
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
    assert s.ladder == "rule"  # the failover ladder's last rung
    score = momentum_score(np.array(closes[-FALLBACK_BARS:]))[-1:]
    assert s.direction == direction == {1: "long", -1: "short", 0: "flat"}[int(momentum_direction(score)[0])]
    assert s.score == max(-1.0, min(1.0, float(score[0])))  # clipped to [-1, 1] (the 5.0 case)
    assert (s.p_up, s.confidence, s.agreement) == (None, None, None)
    assert s.horizon == "log return over the next 1 min (momentum rule on 1h closes)"  # what the engine serves


def test_the_score_is_the_seeds_weighted_mean_of_recent_1h_returns() -> None:
    # 14 returns, oldest first: +1 % seven times, then -1 % four times, then +2 % three times.
    returns = [0.01] * 7 + [-0.01] * 4 + [0.02] * 3
    closes = [100.0]
    for r in returns:
        closes.append(closes[-1] * (1 + r))
    mom3 = 0.02
    mom7 = (4 * -0.01 + 3 * 0.02) / 7
    mom14 = (7 * 0.01 + 4 * -0.01 + 3 * 0.02) / 14
    expected = 0.5 * mom3 + 0.3 * mom7 + 0.2 * mom14
    assert momentum_score(np.array(closes))[-1] == pytest.approx(expected, rel=1e-9)
    s = signal_of(closes_to_bars(closes))
    assert isinstance(s, Signal) and s.direction == "long" and s.score == pytest.approx(expected, rel=1e-9)


def test_without_1h_klines_there_is_no_fallback_and_the_reason_says_so() -> None:
    s = signal_of(None)
    assert isinstance(s, NoSignal) and s.reason == "fallback_input:timeframe_not_ingested"


def test_a_1h_window_missing_the_last_hour_is_stale_not_used() -> None:
    bars = closes_to_bars([100.0 + i for i in range(20)])[:-1]  # the newest closed hour is missing
    s = signal_of(bars)
    assert isinstance(s, NoSignal) and s.reason == "fallback_input:stale_window"


def test_too_few_closes_is_a_no_signal_naming_the_input_problem() -> None:
    s = signal_of(closes_to_bars([100.0] * (FALLBACK_BARS - 1)))
    assert isinstance(s, NoSignal) and s.reason == "fallback_input:short_window"
    assert s.detail == "no component voted (models_missing); the fallback rule's 1h input: short_window"
