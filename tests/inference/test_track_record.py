"""The track record's pure core: a served signal scored against the bars after it, and its summaries.

The summaries must mean what ``candlecast evaluate`` reports: the figures over a set of scores are
checked against :func:`models.metrics.strategy_report` on the same calls.
"""

from __future__ import annotations

import math
import random
from dataclasses import replace
from decimal import Decimal

import numpy as np
import orjson
import pytest

from inference.drift import DRIFT_FEATURES, MIN_SAMPLES, drift_inputs, input_statistics, psi
from inference.signal import ComponentReport, Signal, TrackRecord
from inference.track_record import (
    ComponentScore,
    Score,
    ScoreFormatError,
    outcome_code,
    performance,
    score_signal,
    track_from_codes,
    track_record,
)
from models.metrics import Part, strategy_report
from service.bench import sample_signal
from streaming.klines import Bar
from tests.inference.kit import MINUTE, T0, bar

CPU = "CPUExecutionProvider"


def _bars(n: int, start: int = T0) -> list[Bar]:
    return [bar(start + i * MINUTE) for i in range(n)]


def _signal(start: int, *, direction: str = "long", p_up: float = 0.56, horizon: int = 1, **extra: object) -> Signal:
    comps = (
        ComponentReport("tcn_1m", "1", "h", 0.6, 0.4, "v2", CPU, 0.3, "voted", horizon_minutes=horizon),
        ComponentReport("tcn_60m", "60", "h", None, 0.0, "v1", CPU, None, "dropped", "short_window", horizon),
    )
    s = sample_signal(start, direction=direction, components=comps)  # type: ignore[arg-type]
    fields: dict[str, object] = {
        "p_up": p_up,
        "horizon_minutes": horizon,
        "models": "abc123def456",
        "volatility_bp": 5.0,
        "edge_bp": 0.6,
        "cost_bp": 11.0,
    } | extra
    return replace(s, **fields)  # type: ignore[arg-type]


def test_a_signal_is_scored_on_the_close_its_horizon_ends_at() -> None:
    bars = _bars(300)
    at = 260
    one = score_signal(_signal(bars[at].start), bars)
    assert one is not None and one.scored
    expected = math.log(float(bars[at + 1].close) / float(bars[at].close))
    assert one.log_return == pytest.approx(expected, abs=1e-15)
    assert one.var_real_bp2 == pytest.approx((expected * 1e4) ** 2)
    assert [c.name for c in one.components] == ["tcn_1m", "tcn_60m"]
    assert one.components[1].p_up is None  # it did not vote
    assert len(one.inputs) == len(DRIFT_FEATURES)  # 241 bars of history before it

    three = score_signal(_signal(bars[at].start, horizon=3), bars)
    assert three is not None and three.scored
    steps = [math.log(float(bars[i + 1].close) / float(bars[i].close)) for i in range(at, at + 3)]
    assert three.log_return == pytest.approx(sum(steps), abs=1e-12)
    assert three.var_real_bp2 == pytest.approx(sum((x * 1e4) ** 2 for x in steps))


def test_a_signal_is_not_scored_before_its_closing_bar() -> None:
    bars = _bars(300)
    assert score_signal(_signal(bars[-1].start), bars) is None
    assert score_signal(_signal(bars[-3].start, horizon=3), bars) is None
    assert score_signal(_signal(bars[-4].start, horizon=3), bars) is not None


def test_a_hole_leaves_the_signal_unscored_with_its_reason() -> None:
    bars = _bars(300)
    at = bars[250].start
    no_close = [b for b in bars if b.start != at + MINUTE]
    s = score_signal(_signal(at), no_close)
    assert s is not None and not s.scored and s.reason == "missing_closing_bar" and s.log_return is None

    gap = [b for b in bars if b.start != at + 2 * MINUTE]
    s = score_signal(_signal(at, horizon=3), gap)
    assert s is not None and s.reason == "hole_in_horizon" and s.log_return is None

    no_ref = [b for b in bars if b.start != at]
    s = score_signal(_signal(at), no_ref)
    assert s is not None and s.reason == "missing_reference_bar"

    s = score_signal(_signal(bars[0].start - MINUTE), bars)
    assert s is not None and s.reason == "out_of_window"


def test_a_score_round_trips_and_bad_bytes_are_refused() -> None:
    bars = _bars(300)
    score = score_signal(_signal(bars[270].start), bars)
    assert score is not None
    assert Score.from_json(score.to_json()) == score
    for raw in (b"", b"[]", b'{"symbol": "BTCUSDT"}', b"\xff"):
        with pytest.raises(ScoreFormatError):
            Score.from_json(raw)
    # forged numbers: a start no bar has, a "scored" score without a return
    raw = score.to_json()
    start = f'"start":{score.start}'.encode()
    for bad in (
        raw.replace(start, b'"start":1e300'),
        raw.replace(start, f'"start":{score.start + 1}'.encode()),
        replace(score, log_return=None).to_json(),
        replace(score, log_return=float("inf")).to_json().replace(b'"log_return":null', b'"log_return":1e999'),
    ):
        assert bad != raw
        with pytest.raises(ScoreFormatError):
            Score.from_json(bad)


def _random_scores(n: int, seed: int, *, models: str = "m1") -> list[Score]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = 0.0 if rng.random() < 0.07 else rng.gauss(0.0, 5e-4)  # about 7 % of 1m bars do not move
        p = min(0.99, max(0.01, 0.5 + 0.04 * rng.gauss(0, 1) + (80.0 * r if rng.random() < 0.3 else 0.0)))
        direction = "long" if p >= 0.52 else "short" if p <= 0.48 else "flat"
        vol = None if rng.random() < 0.1 else rng.uniform(2, 9)
        out.append(
            Score(
                symbol="BTCUSDT",
                start=T0 + i * MINUTE,
                horizon_minutes=1,
                models=models,
                source="ensemble",
                direction=direction,
                p_up=p,
                tradeable=direction != "flat" and rng.random() < 0.2,
                edge_bp=(2 * p - 1) * 4.0,
                volatility_bp=vol,
                cost_bp=11.0,
                log_return=r,
                var_real_bp2=(r * 1e4) ** 2,
                reason=None,
                components=(ComponentScore("tcn_1m", "v2", min(0.99, max(0.01, p + rng.gauss(0, 0.01)))),),
            )
        )
    return out


def test_the_live_figures_are_the_evaluations_on_the_same_calls() -> None:
    scores = _random_scores(900, seed=3)
    live = performance("BTCUSDT", scores)["windows"]["last_1000"]["signal"]
    r = np.expm1(np.array([s.log_return for s in scores]))
    sign = {"long": 1, "short": -1, "flat": 0}
    call = np.array([sign[s.direction] for s in scores], np.int8)
    pos = np.array([c if s.tradeable else 0 for c, s in zip(call, scores, strict=True)], np.int8)
    vol = np.array([np.nan if s.volatility_bp is None else s.volatility_bp for s in scores])
    times = np.array([s.start for s in scores], np.int64)
    part = Part(
        "BTCUSDT",
        times,
        times // 86_400_000,
        np.array([s.p_up for s in scores]),
        call,
        pos,
        r,
        np.array([s.var_real_bp2 for s in scores]),
        vol**2,
        np.ones(len(scores)),  # the EWMA baseline: not part of the live record
    )
    offline = strategy_report([part], 1)
    assert live["n"] == offline["n"] == 900
    assert live["calls"] == offline["calls"]
    assert live["coverage"] == pytest.approx(offline["coverage"], abs=1e-6)
    assert live["hit_rate"] == pytest.approx(offline["accuracy_moved"], abs=1e-6)
    assert live["up_rate_moved"] == pytest.approx(offline["up_rate_moved"], abs=1e-6)
    for key in ("brier", "brier_skill", "log_loss", "qlike"):
        assert live[key] == pytest.approx(offline[key], abs=1e-6), key
    assert live["return_after_fees"] == pytest.approx(offline["return_taker"], abs=1e-6)
    assert live["tradeable"] > 0 and live["moved"] < 900  # the case exercises trades and unmoved bars
    low, high = live["hit_rate_ci"]
    assert low < live["hit_rate"] < high


def test_a_fallback_signal_is_no_call_as_in_the_evaluation() -> None:
    scores = _random_scores(300, seed=5)
    ruled = [replace(s, source="fallback", p_up=None, direction="long", tradeable=False) for s in scores[:100]]
    mixed = performance("BTCUSDT", [*ruled, *scores[100:]])["windows"]["last_1000"]["signal"]
    alone = performance("BTCUSDT", [*[replace(s, direction="flat", p_up=None) for s in ruled], *scores[100:]])
    figures = alone["windows"]["last_1000"]["signal"]
    assert mixed["fallback"] == 100
    for key in ("calls", "coverage", "hits", "judged", "hit_rate", "brier", "return_after_fees"):
        assert mixed[key] == figures[key], key
    assert track_record(ruled).calls == 0 and track_record(ruled).n == 100


def test_windows_series_and_components() -> None:
    old = _random_scores(300, seed=1, models="old")
    new = [replace(s, start=s.start + 300 * MINUTE, models="new") for s in _random_scores(1200, seed=2, models="new")]
    hole = replace(new[-5], log_return=None, var_real_bp2=None, reason="missing_closing_bar", start=new[-1].start + 1)
    book = performance("BTCUSDT", [*old, *new, hole], validation={"signal": {"accuracy_moved": 0.53}})
    assert orjson.loads(orjson.dumps(book)) == book  # plain JSON: what the API serves
    assert book["series"] == "new"  # a manifest change starts a new series
    assert book["earlier_series"] == {"old": 300}
    assert book["unscored"] == {"missing_closing_bar": 1}
    assert book["windows"]["last_100"]["signal"]["n"] == 100
    assert book["windows"]["last_1000"]["signal"]["n"] == 1000
    assert book["windows"]["last_24h"]["signal"]["n"] == 1200  # 20 h of 1m bars, all of the new series
    assert book["windows"]["last_1000"]["signal"]["first_start"] == new[200].start
    [comp] = book["windows"]["last_100"]["components"]
    assert (comp["name"], comp["version"], comp["votes"]) == ("tcn_1m", "v2", 100)
    assert book["validation"] == {"signal": {"accuracy_moved": 0.53}}
    spanned = performance("BTCUSDT", new, span=(new[10].start, new[19].start))["windows"]["span"]["signal"]
    assert (spanned["n"], spanned["first_start"], spanned["last_start"]) == (10, new[10].start, new[19].start)

    # a component's new version (same manifest series) is scored apart from the old one
    bumped = [replace(s, components=(ComponentScore("tcn_1m", "v3", s.components[0].p_up),)) for s in new[-30:]]
    versions = performance("BTCUSDT", [*new[:-30], *bumped])["windows"]["last_100"]["components"]
    assert [(c["version"], c["votes"]) for c in versions] == [("v2", 70), ("v3", 30)]

    # the short form each signal carries is kept as outcome codes; foreign or garbage codes are skipped
    codes = [outcome_code(s) for s in new[-100:]]
    assert track_from_codes([*codes, "", "x|y", "12|m|won", "abc|new|hit", "|||"]) == track_from_codes(codes)
    assert track_from_codes(["not a code"]) == TrackRecord(n=0, calls=0, hit_rate=None, as_of_bar=None)

    track = track_record([*old, *new])
    assert track.n == 100 and track.as_of_bar == new[-1].start
    last = new[-100:]
    judged = [s for s in last if s.direction != "flat" and s.log_return]
    right = [s for s in judged if (s.log_return > 0) == (s.direction == "long")]  # type: ignore[operator]
    assert track.calls == sum(1 for s in last if s.direction != "flat")
    assert track.hit_rate == pytest.approx(len(right) / len(judged), abs=1e-4)


def test_psi_is_small_on_the_training_distribution_and_large_off_it() -> None:
    rng = np.random.default_rng(0)
    train = rng.normal(size=(20_000, len(DRIFT_FEATURES)))
    stats = input_statistics(train, span=["2025-01-01", "2025-06-01"], samples=len(train))
    spec = stats["features"]["z_ret_1"]
    assert len(spec["edges"]) == 9 and sum(spec["expected"]) == pytest.approx(1.0, abs=1e-5)
    same = psi(rng.normal(size=1000).tolist(), spec["edges"], spec["expected"])
    shifted = psi((rng.normal(size=1000) * 2.5 + 1.0).tolist(), spec["edges"], spec["expected"])
    assert same is not None and same < 0.05
    assert shifted is not None and shifted > 0.25
    assert psi(rng.normal(size=MIN_SAMPLES - 1).tolist(), spec["edges"], spec["expected"]) is None
    with pytest.raises(ValueError, match="drift features"):
        input_statistics(train[:, :2], span=[], samples=0)


def test_drift_inputs_come_from_the_linear_features_and_refuse_bad_windows() -> None:
    bars = _bars(300)
    ohlcv = np.array([[float(b.open), float(b.high), float(b.low), float(b.close), float(b.volume)] for b in bars])
    x = drift_inputs(ohlcv)
    assert len(x) == len(DRIFT_FEATURES) and all(math.isfinite(v) for v in x)
    assert drift_inputs(ohlcv[:100]) == ()
    bad = ohlcv.copy()
    bad[-1, 3] = -1.0
    assert drift_inputs(bad) == ()
    # the features of a bar are those of the 241 bars closing at it, whatever comes after
    s = score_signal(_signal(bars[260].start), [*bars, Bar(bars[-1].start + MINUTE, *(Decimal(1),) * 6)])
    assert s is not None and s.inputs == drift_inputs(ohlcv[:261])
