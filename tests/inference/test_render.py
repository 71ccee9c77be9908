"""Tests for ``inference.render``: the NumPy images shared by training and serving.

What is pinned: pixel-exact images of hand-drawn tiny windows (OHLC bars with a flat bar and the open/close
ticks, candlesticks with an up and a down candle over a volume band, the book heatmap orientation, each
composite channel); the row rounding rule; agreement with pyts (the dev-only reference) for GASF, GADF and
recurrence plots on random and real Bybit series; determinism and read-only inputs; the composite's
price-level invariance and its use of only the last ``bars`` rows; and every documented ``RenderError``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.typing import NDArray

from inference.render import (
    RENDERER_VERSION,
    RenderError,
    book_heatmap,
    candlestick_chart,
    composite,
    gadf,
    gasf,
    ohlc_chart,
    ohlc_input,
    recurrence_plot,
)

Array = NDArray[Any]
W, G, _ = 255, 128, 0  # white (up / OHLC marks), gray (down), background
PROPERTY = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module")
def btc(bybit_btc_1m: Path) -> NDArray[np.float64]:
    """The first 2000 real BTCUSDT 1m bars as (n, 5) open, high, low, close, volume."""
    table = np.loadtxt(bybit_btc_1m, delimiter=",", skiprows=1, max_rows=2000, dtype=np.float64)
    return np.ascontiguousarray(table[:, 1:6])


def _frozen(a: Array) -> Array:
    """A read-only copy: a renderer writing into its input raises instead of silently corrupting it."""
    out = np.array(a, copy=True)
    out.flags.writeable = False
    return out


# --- ohlc_chart ------------------------------------------------------------------------------------------------


def test_ohlc_chart_matches_hand_drawn_bars_with_ticks_and_a_flat_bar() -> None:
    # Axis 5 (max high) .. 1 (min low) over 5 rows: row = 5 - price.
    ohlc = np.array(
        [
            [2.0, 4.0, 1.0, 3.0],  # open row 3, high row 1, low row 4, close row 2
            [3.0, 3.0, 3.0, 3.0],  # flat bar: everything on row 2
            [5.0, 5.0, 2.0, 2.0],  # open = high (row 0), close = low (row 3)
        ]
    )
    expected = np.array(
        [
            [_, _, _, _, _, _, W, W, _],
            [_, W, _, _, _, _, _, W, _],
            [_, W, W, W, W, W, _, W, _],
            [W, W, _, _, _, _, _, W, W],
            [_, W, _, _, _, _, _, _, _],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(ohlc_chart(ohlc, height=5), expected)


def test_ohlc_chart_rounds_rows_half_to_even() -> None:
    # Axis 10..1 over 7 rows: price 3.25 sits at (10 - 3.25) / 9 * 6 = 4.5 exactly -> row 4, as round(4.5) == 4;
    # price 7.75 sits at 1.5 -> row 2.
    bars = np.array([[10.0, 10.0, 1.0, 10.0], [3.25, 7.75, 3.25, 3.25]])
    img = ohlc_chart(bars, height=7)
    assert np.flatnonzero(img[:, 3]).tolist() == [4]
    assert np.flatnonzero(img[:, 4]).tolist() == [2, 3, 4]
    assert np.flatnonzero(img[:, 1]).tolist() == list(range(7))


def test_ohlc_chart_flat_window_draws_at_mid_height() -> None:
    flat = np.full((3, 4), 42.0)
    for height, row in ((5, 2), (6, 2), (54, 26), (1, 0)):
        img = ohlc_chart(flat, height=height)
        assert img.shape == (height, 9)
        assert set(np.flatnonzero(img.any(axis=1)).tolist()) == {row}
        assert img[row].tolist() == [W] * 9


def test_ohlc_chart_default_window_is_54_by_72_and_binary(btc: NDArray[np.float64]) -> None:
    img = ohlc_chart(btc[-24:, :4])
    assert img.shape == (54, 72)
    assert img.dtype == np.uint8
    assert set(np.unique(img).tolist()) <= {0, 255}
    # Scaled per image: the max high touches row 0 and the min low the last row.
    assert img[0, 1::3].any()
    assert img[-1, 1::3].any()
    # Exactly one open and one close tick per bar.
    assert (img[:, 0::3] == W).sum(axis=0).tolist() == [1] * 24
    assert (img[:, 2::3] == W).sum(axis=0).tolist() == [1] * 24


@PROPERTY
@given(
    hnp.arrays(
        np.float64,
        st.tuples(st.integers(1, 12), st.integers(4, 4)),
        elements=st.floats(allow_nan=True, allow_infinity=True, width=64),
    )
)
def test_ohlc_chart_draws_or_raises_render_error(ohlc: NDArray[np.float64]) -> None:
    try:
        img = ohlc_chart(ohlc, height=9)
    except RenderError:
        return
    n = ohlc.shape[0]
    assert img.shape == (9, 3 * n)
    bar = img[:, 1::3] == W
    # Each high-low bar is one contiguous, non-empty run of rows.
    for col in bar.T:
        rows = np.flatnonzero(col)
        assert rows.size > 0
        assert rows.tolist() == list(range(rows[0], rows[-1] + 1))


bar_rows = st.tuples(st.floats(1e-3, 1e6), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1), st.floats(0, 1e9)).map(
    lambda t: (t[0], t[0] * (1 + t[1]), t[2], t[3], t[4])
)


def _make_bar(low: float, high: float, fo: float, fc: float, vol: float) -> list[float]:
    return [low + fo * (high - low), high, low, low + fc * (high - low), vol]


@PROPERTY
@given(st.lists(bar_rows, min_size=1, max_size=30))
def test_valid_bars_always_render_with_ticks_on_their_bar(rows: list[tuple[float, float, float, float, float]]) -> None:
    ohlcv = np.array([_make_bar(*r) for r in rows])
    ohlcv[:, 0] = np.clip(ohlcv[:, 0], ohlcv[:, 2], ohlcv[:, 1])
    ohlcv[:, 3] = np.clip(ohlcv[:, 3], ohlcv[:, 2], ohlcv[:, 1])
    img = ohlc_chart(ohlcv[:, :4], height=16)
    bar = img[:, 1::3] == W
    open_row = np.argmax(img[:, 0::3] == W, axis=0)
    close_row = np.argmax(img[:, 2::3] == W, axis=0)
    cols = np.arange(len(rows))
    assert bar[open_row, cols].all()
    assert bar[close_row, cols].all()
    candle = candlestick_chart(ohlcv, height=20)
    assert candle.shape == (20, 3 * len(rows))
    assert set(np.unique(candle).tolist()) <= {0, 128, 255}


# --- candlestick_chart -----------------------------------------------------------------------------------------


def test_candlestick_chart_matches_hand_drawn_up_and_down_candles_with_volume_band() -> None:
    # height 10, volume_frac 0.2: price rows 0-6 (axis 7..1, row = 7 - price), gap row 7, volume rows 8-9.
    # Default width 6: candle 0 owns columns 0-2 (body 0-1, wick 0, gap 2), candle 1 owns 3-5.
    ohlcv = np.array(
        [
            [3.0, 6.0, 2.0, 5.0, 2.0],  # up: body rows 2-4, wick rows 1-5; volume 2/4 of 2 rows -> 1 row
            [6.0, 7.0, 1.0, 4.0, 4.0],  # down: body rows 1-3, wick rows 0-6; full volume -> 2 rows
        ]
    )
    expected = np.array(
        [
            [_, _, _, G, _, _],
            [W, _, _, G, G, _],
            [W, W, _, G, G, _],
            [W, W, _, G, G, _],
            [W, W, _, G, _, _],
            [W, _, _, G, _, _],
            [_, _, _, G, _, _],
            [_, _, _, _, _, _],
            [_, _, _, G, G, _],
            [W, W, _, G, G, _],
        ],
        dtype=np.uint8,
    )
    np.testing.assert_array_equal(candlestick_chart(ohlcv, height=10, volume_frac=0.2), expected)


def test_candlestick_chart_one_pixel_per_candle_has_no_gap_and_no_band_without_volume_frac() -> None:
    ohlcv = np.array([[3.0, 6.0, 2.0, 5.0, 2.0], [6.0, 7.0, 1.0, 4.0, 4.0]])
    img = candlestick_chart(ohlcv, height=7, width=2, volume_frac=0.0)
    # One column per candle: the wick column (low..high) in the candle's colour.
    expected = np.array([[_, G], [W, G], [W, G], [W, G], [W, G], [W, G], [_, G]], dtype=np.uint8)
    np.testing.assert_array_equal(img, expected)


def test_candlestick_chart_zero_volume_window_leaves_the_band_empty() -> None:
    ohlcv = np.array([[3.0, 6.0, 2.0, 5.0, 0.0], [6.0, 7.0, 1.0, 4.0, 0.0]])
    img = candlestick_chart(ohlcv, height=10)
    assert not img[7:].any()
    assert img[:7].any()


def test_candlestick_chart_sizes_and_gaps(btc: NDArray[np.float64]) -> None:
    window = btc[-64:]
    img = candlestick_chart(window)
    assert img.shape == (64, 192)
    assert img.dtype == np.uint8
    assert set(np.unique(img).tolist()) <= {0, 128, 255}
    assert not img[:, 2::3].any(), "every third column is the gap between candles"
    assert not img[64 - 13 - 1].any(), "gap row between price area and volume band"
    # Volume bars grow from the bottom row: a candle's body shows there iff its bar rounds to >= 1 row.
    tall_enough = np.rint(window[:, 4] / window[:, 4].max() * 13) >= 1
    np.testing.assert_array_equal(img[-1, 0::3] > 0, tall_enough)
    wide = candlestick_chart(window, height=96, width=400, volume_frac=0.25)
    assert wide.shape == (96, 400)
    up = window[:, 3] >= window[:, 0]
    # Each candle's first column carries its colour somewhere: up 255, down 128.
    first_cols = (np.arange(64) * 400) // 64
    colours = wide[:, first_cols].max(axis=0)
    assert np.array_equal(colours == W, up)


# --- gasf / gadf / recurrence ------------------------------------------------------------------------------


_PYTS_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    from pyts.image import GramianAngularField, RecurrencePlot

    src = np.load(sys.argv[1])
    out = {}
    for key in src.files:
        x = src[key][None, :]
        out[key + "/gasf"] = GramianAngularField(method="summation").transform(x)[0]
        out[key + "/gadf"] = GramianAngularField(method="difference").transform(x)[0]
        dist = RecurrencePlot(dimension=1, threshold=None).transform(x)[0]
        out[key + "/rp"] = dist
        # A threshold strictly between two distances, where pyts' "<" and our "<=" agree.
        levels = np.unique(dist)
        t = float((levels[len(levels) // 2] + levels[len(levels) // 2 - 1]) / 2) if len(levels) > 1 else 1.0
        out[key + "/rp_t"] = np.array(t)
        out[key + "/rp_bin"] = RecurrencePlot(dimension=1, threshold=t).transform(x)[0]
    np.savez(sys.argv[2], **out)
    """
)


@pytest.fixture(scope="module")
def series(btc: NDArray[np.float64]) -> dict[str, NDArray[np.float64]]:
    rng = np.random.default_rng(20240601)
    close = btc[:, 3]
    return {
        "normal64": rng.normal(size=64),
        "uniform24": rng.uniform(-5, 5, size=24),
        "two": np.array([3.0, -1.0]),
        "constant": np.full(10, 7.5),
        "btc_close64": close[-64:].copy(),
        "btc_logclose24": np.log(close[100:124]),
        "btc_close256": close[:256].copy(),
    }


@pytest.fixture(scope="module")
def pyts_ref(series: dict[str, NDArray[np.float64]], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Array]:
    """pyts outputs for ``series``, computed in a child interpreter with numba's JIT off.

    Importing pyts compiles its numba kernels eagerly (~20 s); with ``NUMBA_DISABLE_JIT`` the same pyts
    code runs as plain Python in ~2 s, and the flag stays out of this test session.
    """
    tmp = tmp_path_factory.mktemp("pyts")
    np.savez(tmp / "in.npz", allow_pickle=False, **series)
    env = {**os.environ, "NUMBA_DISABLE_JIT": "1"}
    subprocess.run(
        [sys.executable, "-c", _PYTS_SCRIPT, str(tmp / "in.npz"), str(tmp / "out.npz")],
        check=True,
        env=env,
        timeout=60,
        capture_output=True,
    )
    with np.load(tmp / "out.npz") as ref:
        return {k: ref[k] for k in ref.files}


SERIES_KEYS = ["normal64", "uniform24", "two", "constant", "btc_close64", "btc_logclose24", "btc_close256"]


@pytest.mark.parametrize("key", SERIES_KEYS)
def test_gramian_fields_equal_pyts(key: str, series: dict[str, Array], pyts_ref: dict[str, Array]) -> None:
    x = series[key]
    s, d = gasf(x), gadf(x)
    assert s.dtype == d.dtype == np.float32
    assert s.shape == d.shape == (len(x), len(x))
    np.testing.assert_allclose(s, pyts_ref[key + "/gasf"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(d, pyts_ref[key + "/gadf"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("key", SERIES_KEYS)
def test_recurrence_plot_equals_pyts(key: str, series: dict[str, Array], pyts_ref: dict[str, Array]) -> None:
    x = series[key]
    dist = recurrence_plot(x)
    assert dist.dtype == np.float32
    # float32 distances of prices near 1e5: equal to float32 precision.
    np.testing.assert_allclose(dist, pyts_ref[key + "/rp"], rtol=1e-6, atol=1e-6)
    binary = recurrence_plot(x, threshold=float(pyts_ref[key + "/rp_t"]))
    np.testing.assert_array_equal(binary, pyts_ref[key + "/rp_bin"])


def test_gasf_and_gadf_follow_their_definitions() -> None:
    x = np.array([0.0, 1.0, 0.5, 2.0])
    phi = np.arccos((x - x.min()) / (x.max() - x.min()) * 2 - 1)
    np.testing.assert_allclose(gasf(x), np.cos(phi[:, None] + phi[None, :]), atol=1e-6)
    np.testing.assert_allclose(gadf(x), np.sin(phi[:, None] - phi[None, :]), atol=1e-6)
    # Sign convention: row i, column j is sin(phi_i - phi_j), so the field is antisymmetric.
    # phi = pi, pi/2, 0 for the rescaled [-1, 0, 1]: G[1, 2] = sin(pi/2 - 0) = 1 and G[2, 1] = -1.
    field = gadf(np.array([0.0, 1.0, 2.0]))
    assert field[1, 2] == pytest.approx(1.0, abs=1e-6)
    assert field[2, 1] == pytest.approx(-1.0, abs=1e-6)


def test_recurrence_threshold_is_inclusive() -> None:
    x = np.array([0.0, 1.0, 3.0])
    np.testing.assert_array_equal(recurrence_plot(x, threshold=0), np.eye(3, dtype=np.float32))
    np.testing.assert_array_equal(
        recurrence_plot(x, threshold=2.0), np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1]], dtype=np.float32)
    )


# --- book_heatmap ------------------------------------------------------------------------------------------------


def test_book_heatmap_puts_asks_on_top_and_time_left_to_right() -> None:
    rows = np.zeros((3, 200), dtype=np.float32)
    rows[0, 0] = 3.0  # t0, nearest bid  -> row 100
    rows[1, 100] = 3.0  # t1, nearest ask -> row 99
    rows[2, 199] = 3.0  # t2, farthest ask -> row 0
    rows[2, 99] = 1.0  # t2, farthest bid -> row 199, smaller
    img = book_heatmap(rows)
    assert img.shape == (200, 3)
    assert img.dtype == np.float32
    expected = np.zeros((200, 3), dtype=np.float32)
    expected[100, 0] = expected[99, 1] = expected[0, 2] = 1.0
    expected[199, 2] = np.log1p(np.float32(1.0)) / np.log1p(np.float32(3.0))
    np.testing.assert_allclose(img, expected, rtol=1e-6, atol=0)
    assert img.max() == 1.0


def test_book_heatmap_bins_move_away_from_the_mid() -> None:
    rows = np.concatenate([np.arange(1, 101), np.arange(1, 101)]).astype(np.float32)[None, :]
    col = book_heatmap(rows)[:, 0]
    # Values grow with distance from the mid on both sides: asks upwards, bids downwards.
    assert np.all(np.diff(col[:100]) < 0)
    assert np.all(np.diff(col[100:]) > 0)
    assert col[0] == col[199] == 1.0


def test_book_heatmap_all_zero_book_gives_zeros() -> None:
    img = book_heatmap(np.zeros((5, 200), dtype=np.float32))
    assert img.shape == (200, 5)
    assert not img.any()


# --- composite ----------------------------------------------------------------------------------------------------


def test_composite_shape_dtype_range_and_channels(btc: NDArray[np.float64]) -> None:
    data = btc[:300]
    out = composite(data)
    assert out.shape == (3, 54, 72)
    assert out.dtype == np.float32
    assert out.min() >= 0.0
    assert out.max() <= 1.0
    window = data[-24:]
    np.testing.assert_array_equal(out[0], ohlc_chart(window[:, :4], 54).astype(np.float32) / 255)
    assert set(np.unique(out[1]).tolist()) <= {0.0, 1.0}
    # Channel 2: GASF of the log close, nearest-neighbour resized, each bar's 3 columns from one source column.
    field = gasf(np.log(window[:, 3]))
    src_rows = ((2 * np.arange(54) + 1) * 24) // (2 * 54)
    expected = (field[src_rows][:, np.repeat(np.arange(24), 3)] + 1) / 2
    np.testing.assert_allclose(out[2], expected, rtol=0, atol=1e-6)
    assert sorted(set(src_rows.tolist())) == list(range(24))


def test_composite_matches_hand_drawn_tiny_window() -> None:
    # bars=2, height=4: closes 1 and e give log-closes 0 and 1 -> x = -1, 1 -> phi = pi, 0.
    ohlcv = np.array([[1.0, 1.0, 1.0, 1.0, 1.0], [np.e, np.e, 1.0, np.e, 4.0]])
    out = composite(ohlcv, height=4, bars=2)
    volume = np.array([[0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(out[1], volume)
    gasf_img = np.array([[1, 1, 1, 0, 0, 0], [1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1]])
    np.testing.assert_allclose(out[2], gasf_img, atol=1e-6)
    # Channel 0 is the OHLC chart: bar 0 flat at the bottom, bar 1 spans the whole axis.
    ohlc = np.array([[_, _, _, W, W, W], [_, _, _, _, W, _], [_, _, _, _, W, _], [W, W, W, _, W, _]]) / 255
    np.testing.assert_array_equal(out[0], ohlc)


def test_composite_zero_volume_window_gives_empty_volume_channel(btc: NDArray[np.float64]) -> None:
    data = btc[:24].copy()
    data[:, 4] = 0.0
    assert not composite(data)[1].any()


@pytest.mark.parametrize("factor", [1000.0, 1024.0, 1e-3])
def test_composite_is_invariant_to_the_price_level(btc: NDArray[np.float64], factor: float) -> None:
    for start in (0, 500, 1500):
        data = btc[start : start + 40]
        scaled = data.copy()
        scaled[:, :4] *= factor
        assert composite(scaled).tobytes() == composite(data).tobytes()


def test_composite_reads_only_the_last_bars(btc: NDArray[np.float64]) -> None:
    data = btc[:100]
    changed = data.copy()
    changed[:-24] = np.nan  # older rows are not even validated
    assert composite(changed).tobytes() == composite(data).tobytes()
    assert composite(data[-24:]).tobytes() == composite(data).tobytes()
    changed = data.copy()
    changed[-1, 3] = changed[-1, 2]  # the newest close moves: the image must change
    assert composite(changed).tobytes() != composite(data).tobytes()


def test_the_cipm_input_is_the_composites_ohlc_channel_of_the_last_bars_only(btc: NDArray[np.float64]) -> None:
    data = btc[:100]
    image = ohlc_input(data, 54, 24)
    assert image.shape == (1, 54, 72) and image.dtype == np.float32
    assert image.tobytes() == composite(data, 54, 24)[:1].tobytes()
    changed = data.copy()
    changed[:-24] = np.nan  # older rows are not even validated
    assert ohlc_input(changed).tobytes() == image.tobytes()
    changed[-1, 1] = changed[-1, 2] - 1.0  # a high under its low
    with pytest.raises(RenderError, match="ohlcv"):
        ohlc_input(changed)
    with pytest.raises(RenderError, match="need at least 24 rows"):
        ohlc_input(data[-23:])


# --- determinism ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calls(btc: NDArray[np.float64]) -> dict[str, Callable[[], Array]]:
    w24, w64 = _frozen(btc[:24]), _frozen(btc[:64])
    close = _frozen(btc[:64, 3])
    book = _frozen(np.abs(np.random.default_rng(3).normal(size=(50, 200))).astype(np.float32))
    return {
        "ohlc_chart": lambda: ohlc_chart(w24[:, :4]),
        "candlestick_chart": lambda: candlestick_chart(w64),
        "gasf": lambda: gasf(close),
        "gadf": lambda: gadf(close),
        "recurrence_plot": lambda: recurrence_plot(close),
        "recurrence_plot_binary": lambda: recurrence_plot(close, threshold=50.0),
        "book_heatmap": lambda: book_heatmap(book),
        "composite": lambda: composite(w64),
    }


@pytest.mark.parametrize(
    "name",
    [
        "ohlc_chart",
        "candlestick_chart",
        "gasf",
        "gadf",
        "recurrence_plot",
        "recurrence_plot_binary",
        "book_heatmap",
        "composite",
    ],
)
def test_renderers_are_deterministic_and_leave_inputs_alone(name: str, calls: dict[str, Callable[[], Array]]) -> None:
    # Inputs are read-only arrays: any in-place write would raise.
    first, second = calls[name](), calls[name]()
    assert first.tobytes() == second.tobytes()
    assert first.flags.c_contiguous
    assert first is not second


def test_inputs_are_not_mutated(btc: NDArray[np.float64]) -> None:
    data = btc[:64].copy()
    before = data.copy()
    composite(data)
    candlestick_chart(data)
    ohlc_chart(data[:, :4])
    gasf(data[:, 3])
    np.testing.assert_array_equal(data, before)


def test_renderer_version_is_pinned() -> None:
    assert RENDERER_VERSION == "v1"


# --- errors ---------------------------------------------------------------------------------------------------

GOOD = np.array([[2.0, 4.0, 1.0, 3.0, 10.0], [3.0, 3.0, 3.0, 3.0, 5.0]])


def _bad(row: int, col: int, value: float) -> Array:
    out = GOOD.copy()
    out[row, col] = value
    return out


BAD_BARS: dict[str, tuple[Any, str]] = {
    "one-dimensional": (GOOD[0], "expected shape"),
    "too few columns": (GOOD[:, :3], "expected shape"),
    "empty": (np.empty((0, 5)), "expected shape"),
    "not numeric": ([["a", "b", "c", "d", "e"]], "not a numeric array"),
    "nan": (_bad(0, 3, np.nan), "NaN or inf"),
    "inf high": (_bad(0, 1, np.inf), "NaN or inf"),
    "-inf low": (_bad(0, 2, -np.inf), "NaN or inf"),
    "zero price": (np.array([[0.0, 0.0, 0.0, 0.0, 1.0]]), "prices must be > 0"),
    "negative price": (_bad(1, 2, -3.0), "prices must be > 0"),
    "high below low": (np.array([[2.0, 1.0, 2.0, 2.0, 1.0]]), "high < low"),
    "open above high": (_bad(0, 0, 5.0), "open/close outside"),
    "close below low": (_bad(0, 3, 0.5), "open/close outside"),
}


@pytest.mark.parametrize("case", list(BAD_BARS))
def test_bad_bars_raise_render_error(case: str) -> None:
    value, message = BAD_BARS[case]
    with pytest.raises(RenderError, match=message):
        candlestick_chart(value)
    arr = np.asarray(value)
    if arr.ndim == 2 and arr.shape[1] == 5 and arr.dtype.kind == "f":
        with pytest.raises(RenderError, match=message):
            ohlc_chart(arr[:, :4])
        if len(arr):
            with pytest.raises(RenderError, match=message):
                composite(arr, bars=len(arr))
    else:
        with pytest.raises(RenderError, match=message):
            ohlc_chart(value)


def test_negative_volume_raises() -> None:
    for fn in (candlestick_chart, lambda a: composite(a, bars=2)):
        with pytest.raises(RenderError, match="negative volume"):
            fn(_bad(0, 4, -1.0))
        with pytest.raises(RenderError, match="NaN or inf"):
            fn(_bad(0, 4, np.inf))


@pytest.mark.parametrize("height", [0, -1, True, 1.5, "54"])
def test_bad_heights_raise(height: Any) -> None:
    with pytest.raises(RenderError, match="height"):
        ohlc_chart(GOOD[:, :4], height=height)
    with pytest.raises(RenderError, match="height"):
        candlestick_chart(GOOD, height=height)
    with pytest.raises(RenderError, match="height"):
        composite(GOOD, height=height, bars=2)


def test_bad_candlestick_layouts_raise() -> None:
    with pytest.raises(RenderError, match="width"):
        candlestick_chart(GOOD, width=1)  # fewer columns than candles
    for frac in (1.0, -0.1, float("nan")):
        with pytest.raises(RenderError, match="volume_frac"):
            candlestick_chart(GOOD, volume_frac=frac)
    with pytest.raises(RenderError, match="no rows for prices"):
        candlestick_chart(GOOD, height=2, volume_frac=0.5)


def test_bad_composite_windows_raise() -> None:
    with pytest.raises(RenderError, match="at least 24 rows"):
        composite(GOOD)
    with pytest.raises(RenderError, match="bars"):
        composite(GOOD, bars=0)
    with pytest.raises(RenderError, match="expected shape"):
        composite(GOOD[:, :4], bars=1)


@pytest.mark.parametrize("fn", [gasf, gadf, recurrence_plot])
def test_bad_series_raise(fn: Callable[[Array], Array]) -> None:
    cases: list[tuple[Any, str]] = [
        (np.empty(0), "empty"),
        (np.ones((3, 3)), "1-D"),
        (np.array([1.0, np.nan]), "NaN or inf"),
        (np.array([1.0, np.inf]), "NaN or inf"),
        (["x"], "not a numeric array"),
    ]
    for value, message in cases:
        with pytest.raises(RenderError, match=message):
            fn(value)


@pytest.mark.parametrize("threshold", [-0.1, float("nan"), float("inf")])
def test_bad_recurrence_threshold_raises(threshold: float) -> None:
    with pytest.raises(RenderError, match="threshold"):
        recurrence_plot(np.array([1.0, 2.0]), threshold=threshold)


def test_bad_book_rows_raise() -> None:
    good = np.zeros((2, 200), dtype=np.float32)
    cases: list[tuple[Any, str]] = [
        (np.zeros(200, dtype=np.float32), "expected shape"),
        (np.zeros((2, 199), dtype=np.float32), "expected shape"),
        (np.zeros((0, 200), dtype=np.float32), "empty"),
        (np.where(np.arange(200) == 7, np.nan, good), "NaN or inf"),
        (np.where(np.arange(200) == 7, -1.0, good), "negative depth"),
    ]
    for value, message in cases:
        with pytest.raises(RenderError, match=message):
            book_heatmap(value)


def test_render_error_is_a_value_error() -> None:
    assert issubclass(RenderError, ValueError)
