"""Order-book depth sampled into heatmap rows: ±2 % around mid, 100 bins a side.

Bin ``i`` on the bid side holds the summed size of bids with price in
``(mid·(1 - (i+1)·w), mid·(1 - i·w)]`` where ``w = 0.02 / 100``; asks mirror it above mid. Levels
beyond ±2 % are left out. Rows are float32 and travel as bytes so a worker can stack them into an
image without parsing.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from streaming.book import BookView
from streaming.errors import StoreError

__all__ = ["BAND", "BINS_PER_SIDE", "DepthRow", "decode_row", "encode_row", "sample_levels", "sample_row", "slot_start"]

BINS_PER_SIDE = 100
BAND = 0.02
_HEADER = struct.Struct("<qd")  # sample start (exchange ms), mid price


@dataclass(frozen=True, slots=True)
class DepthRow:
    ts: int  # start of the sampling slot, exchange ms
    mid: float
    bids: npt.NDArray[np.float32]  # bin 0 nearest mid
    asks: npt.NDArray[np.float32]


def slot_start(ts: int, sample_ms: int) -> int:
    """The sampling slot of an update at exchange time ``ts``: a book's row of a slot is taken at the
    first update inside it (the ingestor's rule, and the one ``candlecast train`` replays recordings by)."""
    return ts - ts % sample_ms


def sample_row(view: BookView, slot_ts: int) -> DepthRow:
    """Bin a READY book's levels (best first on each side) into one heatmap row."""
    return sample_levels(
        [float(p) for p, _ in view.bids],
        [float(q) for _, q in view.bids],
        [float(p) for p, _ in view.asks],
        [float(q) for _, q in view.asks],
        slot_ts,
    )


def sample_levels(
    bid_prices: list[float], bid_sizes: list[float], ask_prices: list[float], ask_sizes: list[float], slot_ts: int
) -> DepthRow:
    """As :func:`sample_row`, from float lists (any order): the ingestor's fast path.

    Both sides are binned in one pass (bids into bins 0-99, asks into 100-199 of one ``bincount``),
    each level by the same arithmetic as one side at a time: ``p - mid`` negated is exactly
    ``mid - p`` in IEEE arithmetic, and each bin sums its own side's sizes in their given order.
    """
    n_bids = len(bid_prices)
    if len(bid_sizes) != n_bids or len(ask_sizes) != len(ask_prices):
        counts = f"bids {n_bids}/{len(bid_sizes)}, asks {len(ask_prices)}/{len(ask_sizes)}"
        raise ValueError(f"prices and sizes differ in number: {counts}")
    offsets = np.array([*bid_prices, *ask_prices], dtype=np.float64)
    mid = float(offsets[:n_bids].max() + offsets[n_bids:].min()) / 2.0  # NumPy's: a NaN price makes mid NaN
    width = mid * BAND / BINS_PER_SIDE
    offsets -= mid
    offsets[:n_bids] *= -1.0  # bids: distance below mid
    offsets /= width
    idx = np.floor(offsets).astype(np.int64)
    keep = (idx >= 0) & (idx < BINS_PER_SIDE)
    idx[n_bids:] += BINS_PER_SIDE
    sizes = np.array([*bid_sizes, *ask_sizes], dtype=np.float64)
    binned = np.bincount(idx[keep], weights=sizes[keep], minlength=2 * BINS_PER_SIDE).astype(np.float32)
    return DepthRow(ts=slot_ts, mid=mid, bids=binned[:BINS_PER_SIDE], asks=binned[BINS_PER_SIDE:])


def encode_row(row: DepthRow) -> bytes:
    return _HEADER.pack(row.ts, row.mid) + row.bids.tobytes() + row.asks.tobytes()


def decode_row(raw: bytes) -> DepthRow:
    expected = _HEADER.size + 2 * BINS_PER_SIDE * 4
    if len(raw) != expected:
        raise StoreError(f"corrupt depth row: {len(raw)} bytes, expected {expected}")
    ts, mid = _HEADER.unpack_from(raw)
    body = np.frombuffer(raw, dtype=np.float32, offset=_HEADER.size)
    return DepthRow(ts=ts, mid=mid, bids=body[:BINS_PER_SIDE].copy(), asks=body[BINS_PER_SIDE:].copy())
