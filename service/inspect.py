"""``candlecast inspect SYMBOL``: what the store holds for one symbol, as a JSON-ready dict."""

from __future__ import annotations

import time
from typing import Any

from service.settings import Settings
from streaming.klines import interval_ms, is_contiguous
from streaming.store import WindowStore

__all__ = ["inspect_symbol"]


async def inspect_symbol(store: WindowStore, symbol: str, settings: Settings, *, bars: int = 5) -> dict[str, Any]:
    symbol = symbol.strip().upper()
    windows = await store.read_symbol(symbol, settings.intervals, settings.book_depth)
    intervals: dict[str, Any] = {}
    for iv, window in windows.bars.items():
        starts = [b.start for b in window]
        shown = window if bars <= 0 else window[-bars:]
        intervals[iv] = {
            "count": len(window),
            "capacity": store.window_bars,
            "contiguous": is_contiguous(starts, interval_ms(iv)),
            "first_start": starts[0] if starts else None,
            "last_start": starts[-1] if starts else None,
            "bars": [
                {
                    "start": b.start,
                    "open": str(b.open),
                    "high": str(b.high),
                    "low": str(b.low),
                    "close": str(b.close),
                    "volume": str(b.volume),
                }
                for b in shown
            ],
        }
    book: dict[str, Any] | None = None
    if windows.book is not None:
        bk = windows.book
        book = {
            "depth": settings.book_depth,
            "state": bk.state,
            "reason": bk.reason,
            "u": bk.u,
            "best_bid": bk.best_bid or None,
            "best_ask": bk.best_ask or None,
            "exchange_ts": bk.ts,
            # Wall-clock seconds since the ingestor last wrote this book: a dead ingestor shows here.
            "age_s": round(time.time() - bk.updated_wall_ms / 1000, 3) if bk.updated_wall_ms else None,
        }
    depth = windows.depth
    return {
        "symbol": symbol,
        "known": symbol in settings.symbols or any(windows.bars.values()) or windows.book is not None,
        "configured": symbol in settings.symbols,
        "intervals": intervals,
        "book": book,
        "depth_window": {
            "rows": len(depth),
            "capacity": store.depth_rows,
            "first_ts": depth[0].ts if depth else None,
            "last_ts": depth[-1].ts if depth else None,
        },
        "status": windows.status,
    }
