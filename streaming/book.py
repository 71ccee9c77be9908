"""Local order book for one (symbol, depth), kept in sync with Bybit's snapshot/delta stream.

The rules (bybit_protocol.md §4.3, §7) as a state machine:

* NOT_READY until a snapshot arrives on the current connection; deltas before it are dropped.
* A snapshot clears and replaces both sides (never merges), sets ``u`` and makes the book READY.
* A delta is applied only when ``u == last_u + 1``; any other ``u`` makes the book INVALID until
  the next snapshot (the owner resubscribes to get one). Sizes are absolute; size ``"0"`` deletes.
* After every applied message both sides must be non-empty and best bid < best ask, else INVALID.
* Levels beyond the subscribed depth are trimmed (Bybit normally sends ``"0"`` for them itself).

Pure: no I/O, no clocks. Prices are exact ``Decimal``.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Collection
from dataclasses import dataclass
from decimal import Decimal

from streaming.frames import BookUpdate, Level

__all__ = ["ApplyResult", "BookState", "OrderBook"]


class BookState(enum.StrEnum):
    NOT_READY = "NOT_READY"
    READY = "READY"
    INVALID = "INVALID"


class ApplyResult(enum.Enum):
    APPLIED = "applied"
    DROPPED = "dropped"  # a delta while not READY: waiting for a snapshot
    INVALIDATED = "invalidated"  # this message broke the book


class _Side:
    """Price -> size with prices kept sorted ascending."""

    __slots__ = ("prices", "sizes")

    def __init__(self) -> None:
        self.sizes: dict[Decimal, Decimal] = {}
        self.prices: list[Decimal] = []

    def replace(self, levels: tuple[Level, ...]) -> None:
        self.sizes = {p: s for p, s in levels if s != 0}
        self.prices = sorted(self.sizes)

    def update(self, levels: tuple[Level, ...]) -> None:
        """Apply a delta's absolute sizes (size 0 deletes): one call per side, the loop inline —
        the per-level method calls cost as much as the updates on the path every delta takes."""
        sizes, prices = self.sizes, self.prices
        for price, size in levels:
            if size:
                if price not in sizes:
                    bisect.insort(prices, price)
                sizes[price] = size
            elif sizes.pop(price, None) is not None:
                del prices[bisect.bisect_left(prices, price)]

    def trim_low(self, keep: int) -> None:
        """Keep the ``keep`` highest prices (bids)."""
        if (extra := len(self.prices) - keep) > 0:
            for price in self.prices[:extra]:
                del self.sizes[price]
            del self.prices[:extra]

    def trim_high(self, keep: int) -> None:
        """Keep the ``keep`` lowest prices (asks)."""
        if len(self.prices) > keep:
            for price in self.prices[keep:]:
                del self.sizes[price]
            del self.prices[keep:]


# Floats of the book's decimals, by value, for depth sampling: a book samples its 200 numbers once a
# second and ``float(Decimal)`` costs several times a dict lookup (the parser hands out one Decimal
# object per wire string, whose hash is cached). Bounded by clearing when full, like the parser's
# (at the cap about 85 MB, measured).
_FLOATS: dict[Decimal, float] = {}
_FLOATS_MAX = 500_000


def _floats(values: Collection[Decimal]) -> list[float]:  # read twice on a miss
    try:
        return list(map(_FLOATS.__getitem__, values))  # a C loop: no bytecode per value
    except KeyError:
        if len(_FLOATS) >= _FLOATS_MAX:
            _FLOATS.clear()
        return [_FLOATS[d] if d in _FLOATS else _FLOATS.setdefault(d, float(d)) for d in values]


@dataclass(frozen=True, slots=True)
class BookView:
    """A consistent copy of the top of a READY book, for sampling and inspection."""

    bids: tuple[Level, ...]  # best first (descending price)
    asks: tuple[Level, ...]  # best first (ascending price)
    u: int
    ts: int


class OrderBook:
    def __init__(self, symbol: str, depth: int) -> None:
        self.symbol = symbol
        self.depth = depth
        self.state = BookState.NOT_READY
        self.reason = "awaiting snapshot"
        self.last_u = 0
        self.ts = 0
        self._bids = _Side()
        self._asks = _Side()

    def apply(self, msg: BookUpdate) -> ApplyResult:
        if msg.kind == "snapshot":
            self._bids.replace(msg.bids)
            self._asks.replace(msg.asks)
            return self._after(msg)
        if self.state is not BookState.READY:
            return ApplyResult.DROPPED
        if msg.u != self.last_u + 1:
            self.invalidate(f"u gap: expected {self.last_u + 1}, got {msg.u}")
            return ApplyResult.INVALIDATED
        self._bids.update(msg.bids)
        self._asks.update(msg.asks)
        return self._after(msg)

    def _after(self, msg: BookUpdate) -> ApplyResult:
        self.last_u = msg.u
        self.ts = msg.ts
        bids, asks = self._bids.prices, self._asks.prices
        if len(bids) > self.depth or len(asks) > self.depth:  # rare: Bybit deletes what leaves the depth itself
            self._bids.trim_low(self.depth)
            self._asks.trim_high(self.depth)
        if not bids or not asks:
            self.invalidate("empty side")
            return ApplyResult.INVALIDATED
        if bids[-1] >= asks[0]:
            self.invalidate(f"crossed: bid {bids[-1]} >= ask {asks[0]}")
            return ApplyResult.INVALIDATED
        self.state = BookState.READY
        self.reason = ""
        return ApplyResult.APPLIED

    def invalidate(self, reason: str) -> None:
        """Mark the book unusable until the next snapshot (gap, disconnect, crossed, ...)."""
        self.state = BookState.INVALID
        self.reason = reason

    def reset(self, reason: str) -> None:
        """A new connection: nothing is known until its first snapshot."""
        self.state = BookState.NOT_READY
        self.reason = reason
        self.last_u = 0
        self.ts = 0
        self._bids = _Side()
        self._asks = _Side()

    @property
    def ready(self) -> bool:
        return self.state is BookState.READY

    def best_bid(self) -> Level | None:
        if not self._bids.prices:
            return None
        p = self._bids.prices[-1]
        return p, self._bids.sizes[p]

    def best_ask(self) -> Level | None:
        if not self._asks.prices:
            return None
        p = self._asks.prices[0]
        return p, self._asks.sizes[p]

    def float_levels(self) -> tuple[list[float], list[float], list[float], list[float]]:
        """Bid prices, bid sizes, ask prices, ask sizes as floats, for sampling: each side's prices and
        sizes pair up by position, in no particular order (as :func:`~streaming.depth.sample_levels` takes them)."""
        b, a = self._bids.sizes, self._asks.sizes
        return _floats(b), _floats(b.values()), _floats(a), _floats(a.values())

    def view(self) -> BookView:
        bids = tuple((p, self._bids.sizes[p]) for p in reversed(self._bids.prices))
        asks = tuple((p, self._asks.sizes[p]) for p in self._asks.prices)
        return BookView(bids=bids, asks=asks, u=self.last_u, ts=self.ts)
