"""Tests for ``inference.features``: TA-Lib-compatible, causal indicators and the v1 TCN input.

What is pinned: hand-computed values on tiny series; agreement with TA-Lib (the reference, dev-only) on
real Bybit bars, NaN positions included; causality (a prefix of the bars gives bit-identical rows, and
bars after a window never reach it); the documented ``FeatureError`` for bad input; and the v1
normalisation (shape, dtype, finiteness, per-window z-scores, scale invariance, independence from how
much history the caller holds).
"""

from __future__ import annotations

import csv
import gzip
import math
from pathlib import Path

import numpy as np
import pytest
import talib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from inference.features import (
    FEATURE_NAMES,
    FEATURE_SET_VERSION,
    WARMUP_BARS,
    FeatureError,
    atr,
    bollinger_width,
    hl_range,
    indicator_matrix,
    log_returns,
    macd_hist,
    obv,
    returns,
    rsi,
    tcn_input,
    volume_ratio,
)
from inference.linear_features import LINEAR_FEATURES, LINEAR_SET_VERSION
from inference.manifest import Manifest
from tests.conftest import ARTIFACTS

Bars = NDArray[np.float64]
RTOL = 1e-9
PROPERTY = settings(max_examples=200, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _load(path: Path, rows: int | None = None) -> Bars:
    """(N, 5) open, high, low, close, volume from a gzip CSV (open_time_ms,open,high,low,close,volume)."""
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        assert next(reader)[:6] == ["open_time_ms", "open", "high", "low", "close", "volume"]
        out = []
        for i, row in enumerate(reader):
            if rows is not None and i >= rows:
                break
            out.append([float(v) for v in row[1:6]])
    return np.array(out, dtype=np.float64)


@pytest.fixture(scope="module")
def btc(bybit_btc_1m: Path) -> Bars:
    return _load(bybit_btc_1m, rows=3000)


def _matrix(bars: Bars) -> Bars:
    return indicator_matrix(bars[:, 0], bars[:, 1], bars[:, 2], bars[:, 3], bars[:, 4])


def _assert_same_nans(mine: Bars, ref: Bars) -> None:
    np.testing.assert_array_equal(np.isnan(mine), np.isnan(ref))


# ---------------------------------------------------------------------------------------------------
# Hand-checked values


def test_the_feature_set_is_the_one_the_shipped_models_were_trained_on() -> None:
    """Serving computes exactly the features, in the order, that every shipped sequence model's
    manifest entry names: renaming, reordering or adding one without retraining fails here."""
    manifest = Manifest.load(ARTIFACTS / "manifest.json")
    sequence_models = [c for c in manifest.components if c.kind == "tcn"]
    assert sequence_models
    for c in (c for c in manifest.components if c.kind == "linear"):
        assert c.preprocessing["features"] == LINEAR_SET_VERSION, c.name
        assert tuple(c.preprocessing["names"]) == LINEAR_FEATURES, c.name
        assert c.input["shape"][1] == len(LINEAR_FEATURES), c.name
    for c in sequence_models:
        assert c.preprocessing["features"] == FEATURE_SET_VERSION, c.name
        assert tuple(c.preprocessing["names"]) == FEATURE_NAMES, c.name
        assert c.input["shape"][1] == len(FEATURE_NAMES), c.name
    # MACD(12, 26, 9) has TA-Lib lookback (26 - 1) + (9 - 1) = 33, the largest of all features.
    assert WARMUP_BARS == 33
    assert issubclass(FeatureError, ValueError)


def test_returns_by_hand() -> None:
    close = [100.0, 110.0, 99.0]
    # 110/100 - 1 = 0.1; 99/110 - 1 = -0.1
    np.testing.assert_allclose(returns(close), [np.nan, 0.1, -0.1], rtol=1e-15)
    np.testing.assert_allclose(log_returns(close), [np.nan, math.log(1.1), math.log(0.9)], rtol=1e-15)


def test_rsi_16_bars_by_hand() -> None:
    close = [10, 11, 12, 11, 12, 13, 14, 13, 14, 15, 16, 15, 16, 17, 18, 17]
    # diffs 1..14: + + - + + + - + + + - + + +  -> gains 11, losses 3
    #   seed: avg gain 11/14, avg loss 3/14 -> RSI[14] = 100 * 11/14 / (14/14) = 78.5714...
    # diff 15 = -1: gain = (11/14 * 13 + 0) / 14 = 143/196, loss = (3/14 * 13 + 1) / 14 = 53/196
    #   -> RSI[15] = 100 * 143 / 196 = 72.9591...
    out = rsi(close)
    assert np.isnan(out[:14]).all()
    assert out[14] == pytest.approx(100 * 11 / 14, rel=1e-14)
    assert out[15] == pytest.approx(100 * 143 / 196, rel=1e-14)


def test_rsi_extremes_and_flat_market() -> None:
    up = np.arange(1.0, 21.0)
    np.testing.assert_allclose(rsi(up)[14:], 100.0)
    np.testing.assert_allclose(rsi(up[::-1])[14:], 0.0)
    # Documented deviation: a perfectly flat market is neutral (50); TA-Lib says 0 ("oversold").
    flat = np.full(20, 5.0)
    np.testing.assert_array_equal(rsi(flat)[14:], 50.0)
    np.testing.assert_array_equal(talib.RSI(flat, 14)[14:], 0.0)


def test_obv_by_hand() -> None:
    # starts at volume[0] = 5; up +3 -> 8; flat -> 8; down -2 -> 6; up +4 -> 10
    np.testing.assert_array_equal(obv([10, 11, 11, 9, 12], [5, 3, 7, 2, 4]), [5, 8, 8, 6, 10])


def test_hl_range_by_hand() -> None:
    # (11 - 9) / 10 = 0.2; (22 - 20) / 20 = 0.1
    np.testing.assert_allclose(hl_range([11, 22], [9, 20], [10, 20]), [0.2, 0.1], rtol=1e-15)


def test_atr_by_hand() -> None:
    high = [10, 11, 12, 11, 9]
    low = [8, 9, 11, 7, 8.5]
    close = [9, 10, 11.5, 8, 9]
    # TR[1] = max(11-9, |9-11|, |9-9|) = 2; TR[2] = max(1, |10-12|, |10-11|) = 2
    # TR[3] = max(4, |11.5-11|, |11.5-7|) = 4.5; TR[4] = max(0.5, |8-9|, |8-8.5|) = 1
    # ATR(3): [3] = (2 + 2 + 4.5) / 3 = 17/6; [4] = (17/6 * 2 + 1) / 3 = 20/9
    out = atr(high, low, close, period=3)
    assert np.isnan(out[:3]).all()
    np.testing.assert_allclose(out[3:], [17 / 6, 20 / 9], rtol=1e-15)


def test_volume_ratio_by_hand_with_zero_volume() -> None:
    # period 3: [2] 3 / mean(1,2,3)=2 -> 1.5; [3] 0 / mean(2,3,0) -> 0; [4] 0 / mean(3,0,0) -> 0;
    # [5] 0 / mean(0,0,0): no volume in the whole window -> 1.0 by definition; [6] 6 / mean(0,0,6)=2 -> 3
    out = volume_ratio([1, 2, 3, 0, 0, 0, 6], period=3)
    np.testing.assert_allclose(out, [np.nan, np.nan, 1.5, 0.0, 0.0, 1.0, 3.0], rtol=1e-15)
    np.testing.assert_array_equal(volume_ratio(np.full(25, 7.0))[19:], 1.0)


def test_bollinger_width_step_series_by_hand() -> None:
    close = np.array([100.0] * 10 + [110.0] * 11)
    # window [0..19]: ten 100s, ten 110s -> mean 105, population std 5 -> width (4 * 5) / 105
    # window [1..20]: nine 100s, eleven 110s -> mean 105.5, var (9 * 5.5^2 + 11 * 4.5^2) / 20 = 24.75
    out = bollinger_width(close)
    assert np.isnan(out[:19]).all()
    np.testing.assert_allclose(out[19:], [20 / 105, 4 * math.sqrt(24.75) / 105.5], rtol=1e-14)
    np.testing.assert_array_equal(bollinger_width(np.full(20, 3.0))[19:], 0.0)


def test_macd_hist_is_zero_on_a_constant_series() -> None:
    out = macd_hist(np.full(40, 7.0))
    assert np.isnan(out[:33]).all()
    np.testing.assert_array_equal(out[33:], 0.0)


def test_indicator_matrix_layout() -> None:
    bars = _random_bars(np.random.default_rng(1), 60)
    m = _matrix(bars)
    assert m.shape == (60, len(FEATURE_NAMES))
    assert m.dtype == np.float64
    # each column is the standalone function; warm-up is NaN, everything after is defined
    _, h, lo, c, v = bars.T
    expected = [
        log_returns(c),
        rsi(c),
        macd_hist(c),
        atr(h, lo, c),
        obv(c, v),
        bollinger_width(c),
        volume_ratio(v),
        hl_range(h, lo, c),
    ]
    for j, col in enumerate(expected):
        np.testing.assert_array_equal(m[:, j], col, err_msg=FEATURE_NAMES[j])
    assert np.isnan(m[:WARMUP_BARS]).any(axis=0).tolist() == [True, True, True, True, False, True, True, False]
    assert np.isfinite(m[WARMUP_BARS:]).all()


# ---------------------------------------------------------------------------------------------------
# Agreement with TA-Lib on real bars (the reference; NaN positions must match too)


def test_rsi_matches_talib(btc: Bars) -> None:
    close = btc[:, 3]
    for period in (14, 2, 30):
        mine, ref = rsi(close, period), talib.RSI(close, timeperiod=period)
        _assert_same_nans(mine, ref)
        np.testing.assert_allclose(mine, ref, rtol=RTOL, atol=0)


def test_macd_hist_matches_talib(btc: Bars) -> None:
    close = btc[:, 3]
    for fast, slow, signal in ((12, 26, 9), (5, 35, 5)):
        mine = macd_hist(close, fast, slow, signal)
        ref = talib.MACD(close, fastperiod=fast, slowperiod=slow, signalperiod=signal)[2]
        _assert_same_nans(mine, ref)
        np.testing.assert_allclose(mine, ref, rtol=RTOL, atol=0)


def test_atr_matches_talib(btc: Bars) -> None:
    _, high, low, close, _ = btc.T
    mine, ref = atr(high, low, close), talib.ATR(high, low, close, timeperiod=14)
    _assert_same_nans(mine, ref)
    np.testing.assert_allclose(mine, ref, rtol=RTOL, atol=0)


def test_obv_matches_talib(btc: Bars) -> None:
    close, volume = btc[:, 3], btc[:, 4]
    mine, ref = obv(close, volume), talib.OBV(close, volume)
    _assert_same_nans(mine, ref)
    np.testing.assert_allclose(mine, ref, rtol=RTOL, atol=0)


def test_bollinger_width_matches_talib(btc: Bars) -> None:
    close = btc[:, 3]
    # matype defaults to SMA (0): TA-Lib's classic Bollinger bands
    upper, middle, lower = talib.BBANDS(close, timeperiod=20, nbdevup=2.0, nbdevdn=2.0)
    mine = bollinger_width(close)
    _assert_same_nans(mine, upper)
    np.testing.assert_allclose(mine, (upper - lower) / middle, rtol=RTOL, atol=0)


def test_volume_ratio_matches_sma_of_volume(btc: Bars) -> None:
    volume = btc[:, 4]
    ref = volume / talib.SMA(volume, timeperiod=20)
    mine = volume_ratio(volume)
    _assert_same_nans(mine, ref)
    np.testing.assert_allclose(mine, ref, rtol=RTOL, atol=0)


# ---------------------------------------------------------------------------------------------------
# No look-ahead


def test_prefix_gives_identical_rows(btc: Bars) -> None:
    full = _matrix(btc)
    rng = np.random.default_rng(7)
    cuts = [1, 2, WARMUP_BARS, WARMUP_BARS + 1, len(btc), *rng.integers(3, len(btc), size=25).tolist()]
    for t in cuts:
        np.testing.assert_array_equal(_matrix(btc[:t])[-1], full[t - 1], err_msg=f"cut at {t}")


def test_changing_later_bars_never_changes_earlier_rows(btc: Bars) -> None:
    bars = btc[:400]
    t = 250
    changed = bars.copy()
    changed[t:, :4] *= 1.37  # a jump in every price after t ...
    changed[t:, 4] = 0.0  # ... and no volume
    np.testing.assert_array_equal(_matrix(changed)[:t], _matrix(bars)[:t])
    length = 64
    np.testing.assert_array_equal(tcn_input(changed[:t], length), tcn_input(bars[:t], length))


def test_tcn_input_depends_only_on_the_last_length_plus_warmup_bars(btc: Bars) -> None:
    # Serving holds a bounded window, training holds everything: the input must be the same either way.
    length = 64
    end = 2500
    reference = tcn_input(btc[end - length - WARMUP_BARS : end], length)
    for start in (0, 1000, end - length - WARMUP_BARS - 1):
        np.testing.assert_array_equal(tcn_input(btc[start:end], length), reference)


def _random_bars(rng: np.random.Generator, n: int, zero_volume_share: float = 0.2) -> Bars:
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, n)))
    open_ = np.concatenate(([close[0]], close[:-1]))
    high = np.maximum(open_, close) * (1.0 + rng.uniform(0.0, 0.01, n))
    low = np.minimum(open_, close) * (1.0 - rng.uniform(0.0, 0.01, n))
    volume = rng.exponential(10.0, n) * (rng.random(n) >= zero_volume_share)
    return np.column_stack((open_, high, low, close, volume))


@st.composite
def _bars(draw: st.DrawFn) -> Bars:
    n = draw(st.integers(min_value=1, max_value=120))
    steps = draw(hnp.arrays(np.float64, n, elements=st.floats(-0.2, 0.2)))
    wicks = draw(hnp.arrays(np.float64, (2, n), elements=st.floats(0.0, 0.1)))
    volume = draw(hnp.arrays(np.float64, n, elements=st.sampled_from([0.0, 1e-3, 1.0]) | st.floats(0.0, 1e9)))
    scale = draw(st.sampled_from([1e-6, 1.0, 1e5]))
    close = scale * np.exp(np.cumsum(steps))
    open_ = np.concatenate(([close[0]], close[:-1]))
    high = np.maximum(open_, close) * (1.0 + wicks[0])
    low = np.minimum(open_, close) * (1.0 - wicks[1])
    return np.column_stack((open_, high, low, close, volume))


@PROPERTY
@given(_bars(), st.data())
def test_property_rows_are_causal_and_finite_after_warmup(bars: Bars, data: st.DataObject) -> None:
    full = _matrix(bars)
    assert np.isfinite(full[WARMUP_BARS:]).all()
    t = data.draw(st.integers(min_value=1, max_value=len(bars)), label="cut")
    np.testing.assert_array_equal(_matrix(bars[:t]), full[:t])


@PROPERTY
@given(_bars().filter(lambda b: len(b) >= WARMUP_BARS + 2), st.data())
def test_property_tcn_input_is_finite_float32(bars: Bars, data: st.DataObject) -> None:
    length = data.draw(st.integers(min_value=2, max_value=len(bars) - WARMUP_BARS), label="length")
    x = tcn_input(bars, length)
    assert x.shape == (len(FEATURE_NAMES), length)
    assert x.dtype == np.float32
    assert np.isfinite(x).all()


# ---------------------------------------------------------------------------------------------------
# Bad input


def _corrupt(column: int, row: int, value: float) -> Bars:
    bars = _random_bars(np.random.default_rng(3), WARMUP_BARS + 20)
    bars[row, column] = value
    return bars


@pytest.mark.parametrize(
    ("bars", "message"),
    [
        pytest.param(_corrupt(3, 40, np.nan), r"close contains NaN or inf \(first at index 40", id="nan-close"),
        pytest.param(_corrupt(1, 5, np.inf), r"high contains NaN or inf \(first at index 5", id="inf-high"),
        pytest.param(_corrupt(4, 7, -np.inf), r"volume contains NaN or inf", id="inf-volume"),
        pytest.param(_corrupt(2, 9, 0.0), r"low must be > 0 .*index 9: 0\.0", id="zero-low"),
        pytest.param(_corrupt(0, 3, -1.0), r"open must be > 0 .*index 3: -1\.0", id="negative-open"),
        pytest.param(_corrupt(3, 0, 0.0), r"close must be > 0 .*index 0", id="zero-close"),
        pytest.param(_corrupt(4, 11, -2.0), r"volume must be >= 0 .*index 11: -2\.0", id="negative-volume"),
        pytest.param(_corrupt(2, 12, 1e9), r"low > high at index 12", id="low-above-high"),
    ],
)
def test_bad_bars_raise_feature_error(bars: Bars, message: str) -> None:
    with pytest.raises(FeatureError, match=message):
        _matrix(bars)
    with pytest.raises(FeatureError, match=message):
        tcn_input(bars, 20)


def test_length_mismatch_and_shape_errors() -> None:
    bars = _random_bars(np.random.default_rng(4), 50)
    o, h, lo, c, v = bars.T
    with pytest.raises(FeatureError, match=r"length mismatch: open=50, high=50, low=50, close=50, volume=49"):
        indicator_matrix(o, h, lo, c, v[:-1])
    with pytest.raises(FeatureError, match="length mismatch: close=50, volume=48"):
        obv(c, v[2:])
    with pytest.raises(FeatureError, match="close must be 1-D"):
        rsi(bars)
    with pytest.raises(FeatureError, match="close is not numeric"):
        rsi(["1.0", "x"])
    with pytest.raises(FeatureError, match="no bars given"):
        indicator_matrix([], [], [], [], [])
    with pytest.raises(FeatureError, match=r"ohlcv must have shape \(N, 5\)"):
        tcn_input(bars[:, :4], 10)
    with pytest.raises(FeatureError, match="length must be an integer >= 2"):
        tcn_input(bars, 1)
    with pytest.raises(FeatureError, match="fast period must be < slow period"):
        macd_hist(c, fast=26, slow=12)


def test_short_window_raises() -> None:
    length = 64
    bars = _random_bars(np.random.default_rng(5), length + WARMUP_BARS)
    assert tcn_input(bars, length).shape == (len(FEATURE_NAMES), length)
    with pytest.raises(FeatureError, match=r"window too short: .*needs length \+ WARMUP_BARS = 97 bars, got 96"):
        tcn_input(bars[1:], length)


def test_short_series_are_all_nan_not_errors() -> None:
    # Indicators themselves accept any length (TA-Lib style): undefined values are NaN.
    assert np.isnan(rsi([1.0, 2.0, 3.0])).all()
    assert np.isnan(macd_hist(np.arange(1.0, 34.0))).all()
    assert np.isnan(atr([2.0], [1.0], [1.5])).all()
    assert np.isnan(bollinger_width([1.0] * 19)).all()
    assert np.isnan(volume_ratio([1.0] * 19)).all()
    assert _matrix(_random_bars(np.random.default_rng(6), 1)).shape == (1, len(FEATURE_NAMES))


def test_zero_volume_bars_are_valid(bybit_btc_1m: Path) -> None:
    # Bybit BNBUSDT 1m has real zero-volume bars (quiet minutes): every feature must stay finite.
    bars = _load(bybit_btc_1m.with_name("bybit_linear_BNBUSDT_1m.csv.gz"))
    zero = np.flatnonzero(bars[:, 4] == 0.0)
    assert zero.size > 0
    m = _matrix(bars)
    assert np.isfinite(m[WARMUP_BARS:]).all()
    assert (m[zero[zero >= 19], FEATURE_NAMES.index("volume_ratio_20")] <= 1.0).all()
    for end in zero[zero >= 200][:20] + 1:
        assert np.isfinite(tcn_input(bars[:end], 64)).all()


def test_window_without_any_volume_gives_zero_volume_channels() -> None:
    bars = _random_bars(np.random.default_rng(8), 100)
    bars[:, 4] = 0.0
    x = tcn_input(bars, 48)
    assert np.isfinite(x).all()
    # OBV never moves and volume_ratio is 1.0 everywhere: both channels are constant, hence zeros
    np.testing.assert_array_equal(x[FEATURE_NAMES.index("obv")], 0.0)
    np.testing.assert_array_equal(x[FEATURE_NAMES.index("volume_ratio_20")], 0.0)


# ---------------------------------------------------------------------------------------------------
# tcn_input: feature set v1


def _v1_reference(bars: Bars, length: int) -> NDArray[np.float32]:
    """The normalisation as the module docstring states it, written out independently."""
    used = bars[-(length + WARMUP_BARS) :]
    m = _matrix(used)
    window = m[WARMUP_BARS:].copy()
    close, volume = used[:, 3], used[WARMUP_BARS:, 4]
    c_last = close[-1]
    window[:, 1] = window[:, 1] / 100.0 - 0.5
    window[:, 2] /= c_last
    window[:, 3] /= c_last
    window[:, 4] = np.diff(m[WARMUP_BARS - 1 :, 4]) / volume.mean()
    out = np.zeros_like(window)
    for j in range(window.shape[1]):
        col = window[:, j]
        if col.max() != col.min():
            out[:, j] = (col - col.mean()) / max(col.std(), 1e-8)
    return out.T.astype(np.float32)


def test_tcn_input_follows_the_documented_normalisation(btc: Bars) -> None:
    for end, length in ((500, 64), (3000, 128), (WARMUP_BARS + 2, 2)):
        x = tcn_input(btc[:end], length)
        np.testing.assert_allclose(x, _v1_reference(btc[:end], length), rtol=1e-5, atol=1e-5)


def test_tcn_input_shape_dtype_and_zscores(btc: Bars) -> None:
    x = tcn_input(btc, 64)
    assert x.shape == (len(FEATURE_NAMES), 64)
    assert x.dtype == np.float32
    assert x.flags.c_contiguous
    assert np.isfinite(x).all()
    np.testing.assert_allclose(x.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(x.std(axis=1), 1.0, rtol=1e-5)


def test_tcn_input_is_scale_invariant(btc: Bars) -> None:
    bars = btc[1000:1200]
    reference = tcn_input(bars, 128)
    for price_factor, volume_factor in ((1000.0, 1.0), (1e-6, 1.0), (1.0, 1000.0), (3.7, 1e-3)):
        scaled = bars.copy()
        scaled[:, :4] *= price_factor
        scaled[:, 4] *= volume_factor
        np.testing.assert_allclose(tcn_input(scaled, 128), reference, rtol=0, atol=1e-5)


def test_tcn_input_accepts_integer_and_float32_bars() -> None:
    bars = np.round(_random_bars(np.random.default_rng(9), 80) * 100)
    bars[:, 2] = np.minimum(bars[:, 2], bars[:, 1])
    bars[:, 2] = np.maximum(bars[:, 2], 1)
    expected = tcn_input(bars, 40)
    np.testing.assert_array_equal(tcn_input(bars.astype(np.int64), 40), expected)
    assert np.isfinite(tcn_input(bars.astype(np.float32), 40)).all()
