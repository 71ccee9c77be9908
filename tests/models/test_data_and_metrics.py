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
)
from models.datasets import Cuts, build_tcn_samples, series_for_timeframe
from models.metrics import TAKER_FEE, net_returns, strategy_metrics
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


def test_metrics_hand_checked() -> None:
    p = np.array([0.6, 0.6, 0.4, 0.5])
    d = np.array([1, 1, -1, 0], np.int8)
    r = np.array([0.01, -0.005, -0.02, 0.003])
    net = net_returns(d, r)
    # enter long (1 side), hold, flip to short (2 sides), exit to flat (1 side)
    assert net.tolist() == pytest.approx([0.01 - TAKER_FEE, -0.005, 0.02 - 2 * TAKER_FEE, -TAKER_FEE])
    m = strategy_metrics([(p, d, r)], interval_min=1)
    assert m["n_predictions"] == 4
    assert m["n_calls"] == 3  # p == 0.5 is no call
    assert m["accuracy"] == pytest.approx(2 / 3)  # up right, up wrong, down right
    assert m["precision"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(1.0)
    assert m["brier"] == pytest.approx(np.mean([(0.6 - 1) ** 2, 0.6**2, 0.4**2, (0.5 - 1) ** 2]))
    assert m["total_return"] == pytest.approx(np.prod(1 + net) - 1)
    assert m["trades"] == 2
    assert m["win_rate"] == pytest.approx(2 / 3)
    assert m["profit_factor"] == pytest.approx((net[0] + net[2]) / -(net[1] + net[3]))
    equity = np.cumprod(1 + net)
    assert m["max_drawdown"] == pytest.approx(1 - equity[1] / equity[0])
    assert m["sharpe"] == pytest.approx(net.mean() / net.std() * math.sqrt(365 * 24 * 60))


def test_buy_and_hold_pays_the_fee_once_each_way() -> None:
    r = np.array([0.01, 0.02, -0.01])
    m = strategy_metrics([(np.ones(3), np.ones(3, np.int8), r)], interval_min=60)
    assert m["total_return"] == pytest.approx((1.01 - TAKER_FEE) * 1.02 * (0.99 - TAKER_FEE) - 1)
    assert m["trades"] == 1
    assert m["interval_minutes"] == 60


def test_shared_data_root_exists() -> None:
    assert (SHARED / "data" / "klines_1m").is_dir(), Path(SHARED)


def test_drawdown_counts_from_the_starting_equity_and_unchanged_bars_are_not_up() -> None:
    r = np.array([-0.10, -0.05, 0.0])
    m = strategy_metrics([(np.ones(3), np.ones(3, np.int8), r)], interval_min=1)
    equity_end = (0.9 - TAKER_FEE) * 0.95 * (1 - TAKER_FEE)
    assert m["total_return"] == pytest.approx(equity_end - 1)
    assert m["max_drawdown"] == pytest.approx(1 - equity_end)  # from 1.0, not from the first bar's close
    assert m["up_rate"] == 0.0
    assert m["majority_accuracy"] == 1.0
    assert m["accuracy_moved"] == 0.0  # two moved bars, both down, both called up


def test_several_series_are_an_equal_weight_book() -> None:
    a = (np.ones(2), np.ones(2, np.int8), np.array([0.10, 0.0]))
    b = (np.ones(2), np.ones(2, np.int8), np.array([-0.10, 0.0]))
    m = strategy_metrics([a, b], interval_min=60)
    ra = (1.10 - TAKER_FEE) * (1 - TAKER_FEE) - 1
    rb = (0.90 - TAKER_FEE) * (1 - TAKER_FEE) - 1
    assert m["total_return"] == pytest.approx((ra + rb) / 2)
    assert m["max_drawdown"] == pytest.approx(-rb)
