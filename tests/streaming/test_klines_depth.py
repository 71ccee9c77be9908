"""Pure helpers: interval arithmetic, hole finding, bar encoding, depth binning, backoff."""

from __future__ import annotations

import random
from decimal import Decimal

import numpy as np
import pytest

from streaming.backoff import Backoff
from streaming.book import BookView
from streaming.depth import BAND, BINS_PER_SIDE, decode_row, encode_row, sample_levels, sample_row
from streaming.errors import StoreError
from streaming.klines import (
    MINUTE_MS,
    Bar,
    decode_bar,
    encode_bar,
    interval_ms,
    is_contiguous,
    last_closed_start,
)


def test_interval_and_last_closed_start() -> None:
    assert interval_ms("60") == 3_600_000
    with pytest.raises(ValueError, match="fixed-length"):
        interval_ms("D")
    # 12:07:30 -> the last closed 5m bar started at 12:00 (12:05 is still open)
    noon = 1_700_000_000_000 - 1_700_000_000_000 % 3_600_000
    assert last_closed_start(noon + 7 * MINUTE_MS + 30_000, 5 * MINUTE_MS) == noon
    assert last_closed_start(noon + 10 * MINUTE_MS, 5 * MINUTE_MS) == noon + 5 * MINUTE_MS


def test_contiguity() -> None:
    m = MINUTE_MS
    assert is_contiguous([0, m, 2 * m], m)
    assert not is_contiguous([0, m, 3 * m], m)
    assert is_contiguous([], m)


def _bin_one_side(offsets: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    idx = np.floor(offsets).astype(np.int64)
    keep = (idx >= 0) & (idx < BINS_PER_SIDE)
    return np.bincount(idx[keep], weights=sizes[keep], minlength=BINS_PER_SIDE).astype(np.float32)


def test_one_pass_depth_binning_equals_binning_each_side_on_its_own() -> None:
    # sample_levels bins both sides in one bincount; each row must be bit for bit what binning each
    # side by itself gives (the rows models were trained on), on the tick grid where levels sit
    # exactly on bin edges, with levels beyond the band on both sides, and in any order
    rng = random.Random(5)
    for case in range(300):
        tick = rng.choice([0.01, 0.1, 0.5, 1e-5])
        mid_ticks = rng.randrange(1_000, 2_000_000)
        spread = rng.randrange(1, 5)
        n_bids, n_asks = rng.randrange(1, 60), rng.randrange(1, 60)
        far = int(mid_ticks * 0.03)  # some levels beyond the ±2 % band
        bid_t = rng.sample(range(mid_ticks - far, mid_ticks), n_bids)
        ask_t = rng.sample(range(mid_ticks + spread, mid_ticks + spread + far), n_asks)
        if case % 3 == 0:  # every level on the same few prices: bins fill from several levels
            bid_t = [mid_ticks - 1 - i % 7 for i in range(n_bids)]
        if case % 5 == 0:  # crossed: bids above mid and asks below it land outside their side's bins
            bid_t += [mid_ticks + spread + 3, mid_ticks + 2 * far]
            ask_t += [mid_ticks - 2, mid_ticks - 2 * far]
        bp = [float(f"{t * tick:.10g}") for t in bid_t]
        ap = [float(f"{t * tick:.10g}") for t in ask_t]
        bs = [round(rng.uniform(0.001, 50), 3) for _ in bp]
        aq = [round(rng.uniform(0.001, 50), 3) for _ in ap]
        row = sample_levels(bp, bs, ap, aq, 60_000)
        mid = (np.max(bp) + np.min(ap)) / 2.0
        width = mid * BAND / BINS_PER_SIDE
        assert row.mid == mid and row.ts == 60_000
        bids = _bin_one_side((mid - np.array(bp)) / width, np.array(bs))
        asks = _bin_one_side((np.array(ap) - mid) / width, np.array(aq))
        assert np.array_equal(row.bids, bids), case
        assert np.array_equal(row.asks, asks), case
        assert row.bids.dtype == row.asks.dtype == np.float32
        assert len(row.bids) == len(row.asks) == BINS_PER_SIDE


def test_depth_sampling_refuses_unpaired_levels_and_keeps_a_nan_price_visible() -> None:
    with pytest.raises(ValueError, match="differ in number"):
        sample_levels([99.0, 98.0], [1.0], [101.0], [1.0], 0)
    with pytest.raises(ValueError, match="differ in number"):
        sample_levels([99.0], [1.0], [101.0], [], 0)
    with np.errstate(invalid="ignore"):  # NaN offsets cast to integers: NumPy warns, and bins nothing
        row = sample_levels([99.0, float("nan")], [1.0, 1.0], [101.0], [1.0], 0)
    assert np.isnan(row.mid) and row.bids.sum() == 0 and row.asks.sum() == 0


def test_bar_encoding_keeps_exact_strings() -> None:
    b = Bar(
        1, Decimal("16649.50"), Decimal("16677"), Decimal("16608"), Decimal("16677.0"), Decimal("2.081"), Decimal("0")
    )
    raw = encode_bar(b)
    assert raw == b"1|16649.50|16677|16608|16677.0|2.081|0"
    assert encode_bar(decode_bar(raw)) == raw
    with pytest.raises(StoreError):
        decode_bar(b"1|2|3")
    with pytest.raises(StoreError):
        decode_bar(b"1|x|3|4|5|6|7")


def test_depth_bins_hand_checked() -> None:
    # mid 100, bin width = 100 * 0.02 / 100 = 0.02
    view = BookView(
        bids=(
            (Decimal("99.99"), Decimal("1")),
            (Decimal("99.97"), Decimal("2")),
            (Decimal("99.965"), Decimal("4")),
            (Decimal("97.9"), Decimal("8")),
        ),  # 97.9 is beyond -2 %: left out
        asks=((Decimal("100.01"), Decimal("3")), (Decimal("101.99"), Decimal("5"))),
        u=7,
        ts=1000,
    )
    r = sample_row(view, 1000)
    assert r.mid == pytest.approx(100.0)
    assert r.bids[0] == 1.0  # 99.99 is 0.01 below mid
    assert r.bids[1] == 6.0  # 99.97 and 99.965 are 0.03 / 0.035 below: bin 1
    assert r.bids.sum() == 7.0
    assert r.asks[0] == 3.0 and r.asks[99] == 5.0 and r.asks.sum() == 8.0
    back = decode_row(encode_row(r))
    assert back.ts == 1000 and np.array_equal(back.bids, r.bids) and np.array_equal(back.asks, r.asks)
    assert len(back.bids) == BINS_PER_SIDE
    with pytest.raises(StoreError):
        decode_row(b"short")


def test_backoff_is_capped_jittered_and_resets_after_a_healthy_connection() -> None:
    b = Backoff(base_s=1.0, cap_s=8.0, healthy_after_s=30.0, rng=random.Random(1))
    delays = [b.next_delay() for _ in range(8)]
    ceilings = [1, 2, 4, 8, 8, 8, 8, 8]
    assert all(c / 2 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    b.connection_ended(lived_s=5.0)  # short-lived: keep backing off
    assert b.next_delay() >= 4.0
    b.connection_ended(lived_s=60.0)
    assert b.next_delay() <= 1.0
    for _ in range(5):
        b.next_delay()
    b.connection_ended(lived_s=5.0, delivered=True)  # short, but every topic delivered: healthy
    assert b.next_delay() <= 1.0
