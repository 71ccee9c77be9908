"""Ensemble arithmetic, pinned with hand-computed cases."""

from __future__ import annotations

import math

import pytest

from inference.ensemble import Thresholds, Vote, combine


def test_weighted_vote_direction_confidence_agreement() -> None:
    votes = [Vote("tcn_1m", 0.60, 1.0), Vote("tcn_5m", 0.55, 1.0), Vote("efficientnet_1m", 0.40, 2.0)]
    r = combine(votes)
    # (0.60 + 0.55 + 2 * 0.40) / 4 = 0.4875 -> score -0.025: inside ±0.05 -> flat
    assert r.p_up == pytest.approx(0.4875)
    assert r.score == pytest.approx(-0.025)
    assert r.direction == "flat"
    assert r.confidence == pytest.approx(0.025)
    # the votes lean long (0.20), long (0.10) and short (-0.20): none is flat like the ensemble
    assert r.agreement == 0.0
    assert r.votes == 3


def test_long_and_short_with_agreement() -> None:
    r = combine([Vote("a", 0.7, 1.0), Vote("b", 0.6, 1.0), Vote("c", 0.45, 1.0)])
    assert r.direction == "long"
    assert r.score == pytest.approx(2 * (1.75 / 3) - 1)
    assert r.agreement == pytest.approx(2 / 3)
    s = combine([Vote("a", 0.2, 3.0), Vote("b", 0.9, 1.0)])
    assert s.p_up == pytest.approx(0.375)
    assert s.direction == "short"
    assert s.agreement == pytest.approx(0.75)


def test_thresholds_are_configurable() -> None:
    t = Thresholds(long_above=0.2, short_below=0.1)
    assert combine([Vote("a", 0.625, 1.0)], t).direction == "long"  # score 0.25
    assert combine([Vote("a", 0.59, 1.0)], t).direction == "flat"
    assert combine([Vote("a", 0.44, 1.0)], t).direction == "short"


def test_unusable_votes_are_ignored_and_none_left_is_an_error() -> None:
    r = combine([Vote("nan", math.nan, 1.0), Vote("zero-weight", 0.9, 0.0), Vote("ok", 0.3, 1.0)])
    assert r.votes == 1
    assert r.p_up == pytest.approx(0.3)
    with pytest.raises(ValueError, match="no usable votes"):
        combine([Vote("nan", math.nan, 1.0), Vote("out of range", 1.5, 1.0)])
    with pytest.raises(ValueError, match="no usable votes"):
        combine([])
