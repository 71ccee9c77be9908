"""Dataset building (aggregation, labels, time split with purge, de-duplication) and strategy metrics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from models.data import (
    MINUTE_MS,
    Series,
    aggregate,
    labels,
    load_series,
    moved,
    next_returns,
    sample_ends,
    split_by_time,
    view_ends,
)
from models.datasets import Cuts, build_tcn_samples, build_view_samples, series_for_timeframe, view_need
from models.metrics import TAKER_FEE, Part, net_returns, strategy_report
from tests.conftest import SHARED


def synthetic(n: int, minutes: int = 1, start: int = 1_748_000_000_000 - 1_748_000_000_000 % 3_600_000) -> Series:
    rng = np.random.default_rng(3)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.001, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * 1.001
    low = np.minimum(open_, close) * 0.999
    vol = rng.uniform(1, 5, n)
    starts = start + np.arange(n, dtype=np.int64) * minutes * MINUTE_MS
    return Series("SYN_BTCUSDT_1m", "BTCUSDT", minutes, starts, np.column_stack([open_, high, low, close, vol]))


def test_aggregate_matches_a_hand_resample_and_drops_incomplete_buckets() -> None:
    s = synthetic(125)  # starts on an hour boundary: two complete hours + 5 minutes
    h = aggregate(s, 60)
    assert len(h) == 2
    first = s.ohlcv[:60]
    assert h.ohlcv[0].tolist() == [
        first[0, 0],
        first[:, 1].max(),
        first[:, 2].min(),
        first[-1, 3],
        pytest.approx(first[:, 4].sum()),
    ]
    assert h.start_ms.tolist() == [s.start_ms[0], s.start_ms[0] + 3_600_000]
    holed = Series(s.name, s.symbol, 1, np.delete(s.start_ms, 70), np.delete(s.ohlcv, 70, axis=0))
    assert len(aggregate(holed, 60)) == 1  # the hour with a missing minute is not a bar


def test_labels_are_the_next_bar_direction() -> None:
    s = synthetic(50)
    ends = np.array([10, 20, 30])
    close = s.ohlcv[:, 3]
    assert labels(s, ends).tolist() == [float(close[t + 1] > close[t]) for t in ends]
    assert next_returns(s, ends) == pytest.approx(close[ends + 1] / close[ends] - 1)


def test_an_unchanged_close_is_no_training_label() -> None:
    s = synthetic(400)
    ohlcv = s.ohlcv.copy()
    flat = np.arange(150, 400, 3)  # every third label bar closes where the bar before it did
    ohlcv[flat, 3] = ohlcv[flat - 1, 3]
    ohlcv[flat, 1] = np.maximum(ohlcv[flat, 1], ohlcv[flat, 3])
    ohlcv[flat, 2] = np.minimum(ohlcv[flat, 2], ohlcv[flat, 3])
    s = Series(s.name, s.symbol, 1, s.start_ms, ohlcv)
    ends = sample_ends(s, 97)
    assert not moved(s, ends).all() and moved(s, ends).any()
    cuts = Cuts(train_end=int(s.start_ms[-1]) + MINUTE_MS, val_end=int(s.start_ms[-1]) + 2 * MINUTE_MS)
    train = build_tcn_samples([s], cuts, "train", cap=10_000)
    assert len(train) == int(moved(s, ends).sum())  # every moved sample, none of the unchanged
    assert set(train.y.tolist()) == {0.0, 1.0}


def test_samples_never_straddle_a_hole() -> None:
    s = synthetic(300)
    holed = Series(s.name, s.symbol, 1, np.delete(s.start_ms, 150), np.delete(s.ohlcv, 150, axis=0))
    ends = sample_ends(holed, 20)
    for t in ends:
        window = holed.start_ms[t - 19 : t + 2]  # input bars and the label bar
        assert np.all(np.diff(window) == MINUTE_MS)


def test_time_split_purges_so_no_window_or_label_crosses_parts() -> None:
    s = synthetic(3000)
    need = 97
    t1 = int(s.start_ms[1000])
    t2 = int(s.start_ms[2000])
    sp = split_by_time(s, need, t1, t2)
    assert len(sp.train) and len(sp.val) and len(sp.test)
    # train labels end before t1; val windows start at/after t1; test windows start at/after t2
    assert s.start_ms[sp.train.max() + 1] < t1
    assert s.start_ms[sp.val.min() - need + 1] >= t1
    assert s.start_ms[sp.val.max() + 1] < t2
    assert s.start_ms[sp.test.min() - need + 1] >= t2
    assert sp.train.max() < sp.val.min() < sp.val.max() < sp.test.min()


def test_a_view_is_the_coarse_window_serving_holds_at_each_1m_close() -> None:
    """view_ends agrees with serving's own check (inference.checks.check_window) at every 1m close,
    holes included: the coarse window it picks is the one the worker would read, or none."""
    from decimal import Decimal

    from inference.checks import check_window
    from streaming.klines import Bar

    s = synthetic(2_000)
    keep = np.ones(len(s), bool)
    keep[700:703] = False  # a 3-minute hole: the 5m buckets holding it are never formed
    s = Series(s.name, s.symbol, 1, s.start_ms[keep], s.ohlcv[keep])
    coarse = aggregate(s, 5)
    bars = [
        Bar(int(t), *(Decimal(repr(float(v))) for v in row), Decimal(0))
        for t, row in zip(coarse.start_ms, coarse.ohlcv, strict=True)
    ]
    need = 20
    ends = np.arange(len(s), dtype=np.int64)
    j = view_ends(s, coarse, ends, need)
    for t, k in zip(ends.tolist(), j.tolist(), strict=True):
        now = int(s.start_ms[t]) + MINUTE_MS  # the 1m bar t closes
        held = [b for b in bars if b.start + 5 * MINUTE_MS <= now]  # what the 5m window holds then
        verdict = check_window(held, "5", need, now)
        assert (verdict is None) == (k >= 0), (t, verdict, k)
        if k >= 0:
            assert held[-1].start == coarse.start_ms[k]
    assert (j >= 0).sum() > 1_500 and (j < 0).sum() > 100  # both cases occur (warm-up, the hole)


def test_view_samples_ask_the_h_minute_question_on_the_coarse_window() -> None:
    from inference.features import tcn_input

    s = synthetic(6_000, start=Cuts().train_end - 3_000 * MINUTE_MS)
    for part in ("train", "val"):
        v = build_view_samples("tcn", [s], 5, Cuts(), part, cap=100_000, horizon=3)
        assert len(v) > 1_000 and v.sources == [f"{s.name}->5m"]
        if part == "train":
            assert v.span[1] < Cuts().train_end
        else:
            assert v.span[0] >= Cuts().train_end + view_need("tcn") * 5 * MINUTE_MS  # the window after the cut
    # one sample by hand: cut the series so that one 1m close alone has a full 97-bar 5m window and
    # its 3-minute outcome: the last minute of 5m bucket k, the window the buckets k-96..k
    coarse = aggregate(s, 5)
    k = 800
    first = int(np.searchsorted(s.start_ms, coarse.start_ms[k - 96]))
    t = int(np.searchsorted(s.start_ms, coarse.start_ms[k] + 4 * MINUTE_MS))
    cut = Series(s.name, s.symbol, 1, s.start_ms[first : t + 4], s.ohlcv[first : t + 4])
    one = build_view_samples("tcn", [cut], 5, Cuts(), "val", cap=100, horizon=3)
    close = s.ohlcv[:, 3]
    assert len(one) == 1 and one.y[0] == float(close[t + 3] > close[t])
    np.testing.assert_array_equal(one.x[0], tcn_input(coarse.ohlcv[k - 96 : k + 1], 64))
    with pytest.raises(ValueError, match="asked at 1m closes"):
        build_view_samples("tcn", [coarse], 15, Cuts(), "train", cap=10, horizon=1)


def test_shared_data_series_are_deduplicated_per_market() -> None:
    series = series_for_timeframe(SHARED / "data", 60)
    seen: dict[tuple[str, str], set[int]] = {}
    for s in series:
        market = (s.name.split(s.symbol)[0], s.symbol)
        times = set(s.start_ms.tolist())
        assert not (seen.setdefault(market, set()) & times), f"{s.name} repeats bars of {market}"
        seen[market] |= times
    names = {s.name for s in series}
    assert "binance_spot_BTCUSDT_1h" in names
    assert "bybit_linear_BTCUSDT_1m->60m" in names


def test_cuts_leave_the_newest_bybit_bars_for_testing() -> None:
    s = load_series(SHARED / "data" / "klines_1m" / "bybit_linear_BTCUSDT_1m.csv.gz")
    sp = split_by_time(s, 97, Cuts().train_end, Cuts().val_end)
    assert len(sp.test) > 5000  # about five days of 1m bars after 2025-06-15


def test_training_reads_a_dump_with_repeated_and_reordered_rows_in_order_first_row_kept(tmp_path: Path) -> None:
    path = tmp_path / "bybit_linear_BTCUSDT_1m.csv"
    path.write_text(
        "open_time_ms,open,high,low,close,volume\n120000,3,3,3,3,1\n0,1,1,1,1,1\n60000,2,2,2,2,1\n60000,9,9,9,9,1\n"
    )
    s = load_series(path)
    assert s.symbol == "BTCUSDT" and s.interval_min == 1
    assert s.start_ms.tolist() == [0, 60_000, 120_000]
    assert s.ohlcv[:, 3].tolist() == [1.0, 2.0, 3.0]
    from streaming.sim.bars import read_bar_file

    with pytest.raises(ValueError, match=r"bybit_linear_BTCUSDT_1m\.csv"):
        read_bar_file(path)  # the simulator replays files as they are: out of order is an error


def part(
    p: list[float] | None,
    call: list[int],
    r: list[float],
    position: list[int] | None = None,
    days: list[int] | None = None,
) -> Part:
    n = len(r)
    nan = np.full(n, np.nan)
    return Part(
        "SYN",
        np.arange(n, dtype=np.int64) * MINUTE_MS,
        np.asarray(days if days is not None else [0] * n, np.int64),
        np.asarray(p, float) if p is not None else nan,
        np.asarray(call, np.int8),
        np.asarray(position if position is not None else call, np.int8),
        np.asarray(r, float),
        np.ones(n),
        nan,
        np.ones(n),
    )


def test_metrics_hand_checked() -> None:
    r = [0.01, -0.005, -0.02, 0.003]
    d = [1, 1, -1, 0]
    net = net_returns(np.array(d, np.int8), np.array(r))
    # enter long (1 side), hold, flip to short (2 sides), exit to flat (1 side)
    assert net.tolist() == pytest.approx([0.01 - TAKER_FEE, -0.005, 0.02 - 2 * TAKER_FEE, -TAKER_FEE])
    m = strategy_report([part([0.6, 0.6, 0.4, 0.5], d, r)], horizon_min=1)
    assert (m["n"], m["calls"], m["coverage"]) == (4, 3, 0.75)
    assert m["small_sample"] is True
    assert m["accuracy_moved"] == pytest.approx(2 / 3)  # up right, up wrong, down right
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)  # two bars went up; one was called up
    up = np.array([1.0, 0, 0, 1])
    brier = np.mean((np.array([0.6, 0.6, 0.4, 0.5]) - up) ** 2)
    assert m["brier"] == pytest.approx(brier)
    assert m["brier_skill"] == pytest.approx(1 - brier / 0.25)  # base rate 0.5 on these bars
    assert m["return_taker"] == pytest.approx(np.prod(1 + net) - 1)
    assert m["return_gross"] == pytest.approx(np.prod(1 + np.array(d) * np.array(r)) - 1)
    assert m["return_maker"] > m["return_taker"]
    assert m["trades"] == 2
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["profit_factor"] == pytest.approx((net[0] + net[2]) / -(net[1] + net[3]))
    equity = np.cumprod(1 + net)
    assert m["max_drawdown"] == pytest.approx(1 - equity[1] / equity[0])
    assert m["sharpe"] == pytest.approx(net.mean() / net.std() * math.sqrt(365 * 24 * 60))
    assert m["accuracy_ci"] == [None, None] or all(x != x for x in m["accuracy_ci"])  # one day: no interval


def test_the_ensemble_is_judged_on_its_calls_but_trades_only_its_positions() -> None:
    r = [0.01, -0.01, 0.01, 0.02]
    m = strategy_report([part([0.6, 0.4, 0.6, 0.45], [1, -1, 1, -1], r, position=[0, 0, 1, 0])], horizon_min=1)
    assert m["accuracy_moved"] == pytest.approx(3 / 4)
    assert m["trades"] == 1
    assert m["return_taker"] == pytest.approx((1.01 - TAKER_FEE) * (1 - TAKER_FEE) - 1)


def test_day_block_bootstrap_gives_an_interval_around_the_accuracy() -> None:
    rng = np.random.default_rng(1)
    n = 2000
    r = rng.normal(0, 1e-3, n)
    call = np.where(rng.random(n) < 0.6, np.sign(r), -np.sign(r)).astype(int).tolist()  # right 60 % of the time
    m = strategy_report([part(None, call, r.tolist(), days=(np.arange(n) // 100).tolist())], horizon_min=1)
    low, high = m["accuracy_ci"]
    assert low < m["accuracy_moved"] < high
    assert low > 0.55 and high < 0.65


def test_qlike_prefers_the_true_variance_to_a_wrong_one() -> None:
    rng = np.random.default_rng(2)
    var = rng.uniform(1, 50, 5000)
    realized = var * rng.chisquare(1, 5000)
    p = part(None, [0] * 5000, [0.0] * 5000)
    truth = Part(p.series, p.times, p.day, p.p_up, p.call, p.position, p.r, realized, var, np.full(5000, 20.0))
    m = strategy_report([truth], horizon_min=1)
    assert m["qlike"] < m["qlike_ewma"]


def test_buy_and_hold_pays_the_fee_once_each_way() -> None:
    r = [0.01, 0.02, -0.01]
    m = strategy_report([part(None, [1, 1, 1], r)], horizon_min=60)
    assert m["return_taker"] == pytest.approx((1.01 - TAKER_FEE) * 1.02 * (0.99 - TAKER_FEE) - 1)
    assert m["trades"] == 1
    assert m["horizon_minutes"] == 60
    assert m["brier"] != m["brier"]  # no probability, no Brier


def test_shared_data_root_exists() -> None:
    assert (SHARED / "data" / "klines_1m").is_dir(), Path(SHARED)


def test_drawdown_counts_from_the_starting_equity_and_unchanged_bars_are_not_up() -> None:
    r = [-0.10, -0.05, 0.0]
    m = strategy_report([part(None, [1, 1, 1], r)], horizon_min=1)
    equity_end = (0.9 - TAKER_FEE) * 0.95 * (1 - TAKER_FEE)
    assert m["return_taker"] == pytest.approx(equity_end - 1)
    assert m["max_drawdown"] == pytest.approx(1 - equity_end)  # from 1.0, not from the first bar's close
    assert m["up_rate_moved"] == 0.0
    assert m["majority_moved"] == 1.0
    assert m["accuracy_moved"] == 0.0  # two moved bars, both down, both called up
    assert m["accuracy_all"] == 0.0


def test_several_series_are_an_equal_weight_book() -> None:
    a = part(None, [1, 1], [0.10, 0.0])
    b = part(None, [1, 1], [-0.10, 0.0])
    m = strategy_report([a, b], horizon_min=60)
    ra = (1.10 - TAKER_FEE) * (1 - TAKER_FEE) - 1
    rb = (0.90 - TAKER_FEE) * (1 - TAKER_FEE) - 1
    assert m["return_taker"] == pytest.approx((ra + rb) / 2)
    assert m["max_drawdown"] == pytest.approx(-rb)


def test_the_threshold_is_chosen_on_the_calls_serving_would_make() -> None:
    """A bar below the quorum (NaN probability) is never called: it counts against coverage."""
    from models.stack import choose_threshold

    r = np.random.default_rng(0).normal(size=4000)
    p = np.where(r > 0, 0.56, 0.44)
    _, every = choose_threshold(p, r)
    assert every["coverage"] == 1.0 and every["accuracy_moved"] == 1.0
    p[:3000] = np.nan  # three quarters of the bars without a quorum
    _, some = choose_threshold(p, r)
    assert some["calls"] == 1000 and some["coverage"] == pytest.approx(0.25)
    p[:3600] = np.nan  # 400 calls left: under the 500 a threshold needs, so none qualifies
    assert choose_threshold(p, r)[0] == 0.5
