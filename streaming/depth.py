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

__all__ = ["BAND", "BINS_PER_SIDE", "DepthRow", "decode_row", "encode_row", "sample_row"]

BINS_PER_SIDE = 100
BAND = 0.02
_HEADER = struct.Struct("<qd")  # sample start (exchange ms), mid price


@dataclass(frozen=True, slots=True)
class DepthRow:
    ts: int  # start of the sampling slot, exchange ms
    mid: float
    bids: npt.NDArray[np.float32]  # bin 0 nearest mid
    asks: npt.NDArray[np.float32]


def sample_row(view: BookView, slot_ts: int) -> DepthRow:
    best_bid = float(view.bids[0][0])
    best_ask = float(view.asks[0][0])
    mid = (best_bid + best_ask) / 2.0
    width = mid * BAND / BINS_PER_SIDE
    bids = np.zeros(BINS_PER_SIDE, dtype=np.float32)
    asks = np.zeros(BINS_PER_SIDE, dtype=np.float32)
    bp = np.fromiter((float(p) for p, _ in view.bids), dtype=np.float64, count=len(view.bids))
    bs = np.fromiter((float(s) for _, s in view.bids), dtype=np.float64, count=len(view.bids))
    ap = np.fromiter((float(p) for p, _ in view.asks), dtype=np.float64, count=len(view.asks))
    as_ = np.fromiter((float(s) for _, s in view.asks), dtype=np.float64, count=len(view.asks))
    bi = np.floor((mid - bp) / width).astype(np.int64)
    ai = np.floor((ap - mid) / width).astype(np.int64)
    keep_b = (bi >= 0) & (bi < BINS_PER_SIDE)
    keep_a = (ai >= 0) & (ai < BINS_PER_SIDE)
    np.add.at(bids, bi[keep_b], bs[keep_b])
    np.add.at(asks, ai[keep_a], as_[keep_a])
    return DepthRow(ts=slot_ts, mid=mid, bids=bids, asks=asks)


def encode_row(row: DepthRow) -> bytes:
    return _HEADER.pack(row.ts, row.mid) + row.bids.tobytes() + row.asks.tobytes()


def decode_row(raw: bytes) -> DepthRow:
    expected = _HEADER.size + 2 * BINS_PER_SIDE * 4
    if len(raw) != expected:
        raise StoreError(f"corrupt depth row: {len(raw)} bytes, expected {expected}")
    ts, mid = _HEADER.unpack_from(raw)
    body = np.frombuffer(raw, dtype=np.float32, offset=_HEADER.size)
    return DepthRow(ts=ts, mid=mid, bids=body[:BINS_PER_SIDE].copy(), asks=body[BINS_PER_SIDE:].copy())
