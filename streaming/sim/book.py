"""The simulator's synthetic L2 order book: deterministic, plausible levels around a mid price.

Owns tick choice, the level layout, seeded sizes and the Bybit delta between two states of a side.
Pure: :mod:`streaming.sim.markets` moves it along the intra-bar path and frames its deltas.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal

from streaming.sim.bars import format_units

__all__ = ["Side", "SyntheticBook", "diff_levels", "format_levels", "tick_for_price"]


def tick_for_price(price: float) -> Decimal:
    """A power-of-ten tick about a millionth of ``price`` (0.1 for BTC near 100k)."""
    if not (price > 0 and math.isfinite(price)):
        raise ValueError(f"price must be positive, got {price!r}")
    return Decimal(1).scaleb(math.floor(math.log10(price)) - 6)


Side = list[tuple[int, str]]  # (price in ticks, size string), best first


def diff_levels(old: Mapping[int, str], new: Iterable[tuple[int, str]], *, descending: bool) -> Side:
    """Bybit delta levels turning side ``old`` into ``new``: changed or new sizes, ``"0"`` for removed."""
    new_map = dict(new)
    out = [(p, s) for p, s in new_map.items() if old.get(p) != s]
    out += [(p, "0") for p in old if p not in new_map]
    out.sort(key=lambda level: level[0], reverse=descending)
    return out


_FACTOR_BITS = 12


class SyntheticBook:
    """A deterministic, plausible L2 book around a mid price.

    ``depth`` levels a side: the touch one tick either side of mid, then levels on a fixed grid about
    1 bp apart, so a small move changes a few levels rather than all of them. Sizes are random
    (log-normal notional, seeded). Never crossed, never empty.
    """

    def __init__(
        self,
        mid: float,
        *,
        depth: int = 50,
        seed: int = 0,
        tick: Decimal | str | None = None,
        size_decimals: int = 3,
        level_notional: float = 25_000.0,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth = depth
        self.tick = Decimal(tick) if tick is not None else tick_for_price(mid)
        if self.tick <= 0:
            raise ValueError(f"tick must be positive, got {self.tick}")
        self._tick_f = float(self.tick)
        self._size_decimals = size_decimals
        self._notional = level_notional
        self._size_scale = 10**size_decimals
        self._rng = random.Random(seed)
        self._factors = [self._rng.lognormvariate(0.0, 0.8) for _ in range(1 << _FACTOR_BITS)]
        self._bids: dict[int, str] = {}
        self._asks: dict[int, str] = {}
        self.mid = mid
        self.move_ticks(mid)

    def format_price(self, ticks: int) -> str:
        return format(self.tick * ticks, "f")

    def _size(self, ticks: int, rank: int) -> str:
        # A table lookup instead of a log-normal draw per level: sizes are the hot path at high speed.
        factor = self._factors[self._rng.getrandbits(_FACTOR_BITS)]
        units = round(self._notional * factor * (1.0 + 0.03 * rank) / (ticks * self._tick_f) * self._size_scale)
        return format_units(max(1, units), self._size_decimals)

    def _layout(self, mid: float) -> tuple[list[int], list[int]]:
        m = mid / self._tick_f
        best_bid = max(1, math.ceil(m) - 1)
        grid = max(1, round(mid * 1e-4 / self._tick_f))
        first_bid = (best_bid - 1) // grid * grid
        # range() stops before 0: a price must stay positive even for a tiny mid.
        bids = [best_bid, *range(first_bid, max(0, first_bid - grid * (self.depth - 1)), -grid)]
        first_ask = (best_bid + 1) // grid * grid + grid
        asks = [best_bid + 1, *range(first_ask, first_ask + grid * (self.depth - 1), grid)]
        return bids, asks

    def _rebuild(self, side: dict[int, str], prices: list[int]) -> dict[int, str]:
        """Move ``side`` onto ``prices`` in place; return the changed levels (``"0"``: removed)."""
        keep = set(prices)
        changes = {p: "0" for p in side if p not in keep}
        for p in changes:
            del side[p]
        for rank, p in enumerate(prices):
            if p not in side:
                side[p] = changes[p] = self._size(p, rank)
        # Resting sizes change too: the touch often, a couple of deeper levels each update.
        if self._rng.random() < 0.5:
            side[prices[0]] = changes[prices[0]] = self._size(prices[0], 0)
        for _ in range(2):
            rank = self._rng.randrange(len(prices))
            side[prices[rank]] = changes[prices[rank]] = self._size(prices[rank], rank)
        return changes

    def move_to(self, mid: float) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """Move the book to ``mid`` and return the delta ``(bids, asks)``, each best first.

        Sizes are absolute decimal strings; ``"0"`` removes a level (Bybit delta semantics).
        """
        bids, asks = self.move_ticks(mid)
        return (
            format_levels(self, sorted(bids.items(), reverse=True)),
            format_levels(self, sorted(asks.items())),
        )

    def move_ticks(self, mid: float) -> tuple[dict[int, str], dict[int, str]]:
        """:meth:`move_to` returning the changed levels by price in ticks, unsorted and unformatted."""
        if not (mid > 0 and math.isfinite(mid)):
            raise ValueError(f"mid must be positive, got {mid!r}")
        bid_prices, ask_prices = self._layout(mid)
        self.mid = mid
        return self._rebuild(self._bids, bid_prices), self._rebuild(self._asks, ask_prices)

    def levels(self, depth: int | None = None) -> tuple[Side, Side]:
        """``(bids, asks)`` best first with prices in ticks, at most ``depth`` a side."""
        n = self.depth if depth is None else depth
        bids = sorted(self._bids.items(), reverse=True)[:n]
        asks = sorted(self._asks.items())[:n]
        return bids, asks

    def snapshot(self, depth: int | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        """``(bids, asks)`` best first as ``(price, size)`` strings."""
        bids, asks = self.levels(depth)
        return format_levels(self, bids), format_levels(self, asks)


def format_levels(book: SyntheticBook, side: Sequence[tuple[int, str]]) -> list[tuple[str, str]]:
    """Tick-priced levels as wire ``(price, size)`` strings."""
    return [(book.format_price(p), s) for p, s in side]
