"""In-process implementation of :class:`streaming.store.WindowStore`, for the single-process run
without Redis. Same semantics as :class:`streaming.redis_store.RedisStore`, checked by one contract
test suite."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence

from streaming.depth import DepthRow
from streaming.klines import Bar, encode_bar
from streaming.store import (
    BarEvent,
    BookStatus,
    SymbolWindows,
    WriteBatch,
    WriteResult,
    new_closes,
    revised_field,
    trim_oldest,
)

__all__ = ["MemoryStore"]


class MemoryStore:
    def __init__(self, *, window_bars: int = 256, depth_rows: int = 300, events_maxlen: int = 100_000) -> None:
        self.window_bars = window_bars
        self.depth_rows = depth_rows
        self._bars: dict[tuple[str, str], dict[int, Bar]] = {}
        self._books: dict[tuple[str, int], BookStatus] = {}
        self._depth: dict[tuple[str, int], dict[int, DepthRow]] = {}
        self._status: dict[str, dict[str, str]] = {}
        self._repairs: set[tuple[str, str]] = set()
        self._events: deque[tuple[str, BarEvent]] = deque(maxlen=events_maxlen)
        self._seq = itertools.count(1)

    async def write(self, batch: WriteBatch) -> WriteResult:
        result = WriteResult()
        for key, bars in batch.bars.items():
            window = self._bars.setdefault(key, {})
            if key in batch.replace:
                bound, keep = batch.replace[key], {b.start for b in bars}
                for start in [s for s in window if s <= bound and s not in keep]:
                    del window[start]
            before = max(window, default=-1)
            inserted = revised = 0
            first_revised = 2**63
            fresh = []
            for bar in bars:
                old = window.get(bar.start)
                if old is None:
                    inserted += 1
                    if bar.start > before:
                        fresh.append(bar.start)
                elif encode_bar(old) != encode_bar(bar):  # exact strings, like Redis members
                    revised += 1
                    first_revised = min(first_revised, bar.start)
                window[bar.start] = bar
            if revised:  # marked with the write, as the Redis script does
                self._status.setdefault(key[0], {})[revised_field(key[1])] = str(first_revised)
            trim_oldest(window, self.window_bars)
            result.inserted[key] = inserted
            result.revised[key] = revised
            result.events += [BarEvent(key[0], key[1], s) for s in new_closes(before, sorted(fresh))]
        self._books.update(batch.books)
        for dkey, rows in batch.depth_rows.items():
            dwindow = self._depth.setdefault(dkey, {})
            for row in rows:
                dwindow[row.ts] = row
            trim_oldest(dwindow, self.depth_rows)
        for symbol, fields in batch.status.items():
            self._status.setdefault(symbol, {}).update(fields)
        for ev in result.events:
            self._events.append((f"{next(self._seq)}-0", ev))
        return result

    async def read_symbol(
        self,
        symbol: str,
        intervals: Sequence[str],
        depth: int,
        *,
        with_depth: bool = True,
        depth_after_ms: int | None = None,
    ) -> SymbolWindows:
        bars = {iv: [b for _, b in sorted(self._bars.get((symbol, iv), {}).items())] for iv in intervals}
        after = -1 if depth_after_ms is None else depth_after_ms
        held = self._depth.get((symbol, depth), {}) if with_depth else {}
        rows = [r for ts, r in sorted(held.items()) if ts > after]
        return SymbolWindows(
            symbol=symbol,
            bars=bars,
            book=self._books.get((symbol, depth)),
            depth=rows,
            status=dict(self._status.get(symbol, {})),
        )

    async def bars_after(self, symbol: str, interval: str, start: int) -> list[Bar]:
        return [b for t, b in sorted(self._bars.get((symbol, interval), {}).items()) if t > start]

    async def request_repair(self, symbol: str, interval: str) -> None:
        self._repairs.add((symbol, interval))

    async def take_repairs(self, count: int = 100) -> list[tuple[str, str]]:
        taken = sorted(self._repairs)[:count]
        self._repairs.difference_update(taken)
        return taken

    async def read_events(self, after: str = "0", count: int = 1000) -> list[tuple[str, BarEvent]]:
        after_n = int(after.split("-")[0])
        return [(i, e) for i, e in self._events if int(i.split("-")[0]) > after_n][:count]

    async def announce(self, events: Sequence[BarEvent]) -> None:
        for ev in events:
            self._events.append((f"{next(self._seq)}-0", ev))

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
