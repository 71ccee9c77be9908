"""The window store: what ingestion writes and what a worker reads, behind one interface.

Two implementations share this contract (and one contract test suite): :class:`RedisStore` for
deployments and :class:`MemoryStore` for the single-process run without Redis.

The Redis key layout (one symbol's keys share a hash slot, so a worker reads them all in one MULTI
round trip) is owned by :mod:`streaming.redis_keys`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from streaming.depth import DepthRow
from streaming.klines import Bar

__all__ = [
    "BarEvent",
    "BookStatus",
    "SymbolWindows",
    "WindowStore",
    "WriteBatch",
    "WriteResult",
    "new_closes",
    "revised_field",
    "trim_oldest",
]

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class BookStatus:
    """The published state of one (symbol, depth) book. Prices are exact decimal strings."""

    state: str  # NOT_READY | READY | INVALID
    reason: str
    u: int
    ts: int  # exchange time of the last applied message
    best_bid: str = ""
    best_bid_size: str = ""
    best_ask: str = ""
    best_ask_size: str = ""
    updated_wall_ms: int = 0  # local wall time of the write: tells whether the ingestor is alive

    def to_fields(self) -> dict[str, str]:
        return {
            "state": self.state,
            "reason": self.reason,
            "u": str(self.u),
            "ts": str(self.ts),
            "best_bid": self.best_bid,
            "best_bid_size": self.best_bid_size,
            "best_ask": self.best_ask,
            "best_ask_size": self.best_ask_size,
            "updated_wall_ms": str(self.updated_wall_ms),
        }

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> BookStatus:
        return cls(
            state=fields.get("state", "NOT_READY"),
            reason=fields.get("reason", ""),
            u=int(fields.get("u", "0") or 0),
            ts=int(fields.get("ts", "0") or 0),
            best_bid=fields.get("best_bid", ""),
            best_bid_size=fields.get("best_bid_size", ""),
            best_ask=fields.get("best_ask", ""),
            best_ask_size=fields.get("best_ask_size", ""),
            updated_wall_ms=int(fields.get("updated_wall_ms", "0") or 0),
        )


@dataclass(frozen=True, slots=True)
class BarEvent:
    """A closed bar at ``start`` joined the head of a window (see :func:`new_closes`)."""

    symbol: str
    interval: str
    start: int


@dataclass
class WriteBatch:
    """Everything one flush writes. Each part is idempotent, so a batch may be replayed."""

    bars: dict[tuple[str, str], list[Bar]] = field(default_factory=dict)
    books: dict[tuple[str, int], BookStatus] = field(default_factory=dict)
    depth_rows: dict[tuple[str, int], list[DepthRow]] = field(default_factory=dict)
    status: dict[str, dict[str, str]] = field(default_factory=dict)
    # Windows rebuilt from the exchange's record (REST, for a damaged window), with the newest start
    # of that record: any other member at or before it is removed in the same write (newer live
    # bars stay).
    replace: dict[tuple[str, str], int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.bars or self.books or self.depth_rows or self.status)


@dataclass
class WriteResult:
    inserted: dict[tuple[str, str], int] = field(default_factory=dict)  # bars new to the window
    revised: dict[tuple[str, str], int] = field(default_factory=dict)  # same start, other values
    events: list[BarEvent] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # parts the store refused (logged, not retried)


@dataclass(frozen=True)
class SymbolWindows:
    symbol: str
    bars: dict[str, list[Bar]]  # interval -> ascending by start
    book: BookStatus | None
    depth: list[DepthRow]
    status: dict[str, str]
    corrupt: frozenset[str] = frozenset()  # intervals whose window held undecodable records (skipped)


class WindowStore(Protocol):
    """Bounded, atomic, idempotent windows per symbol."""

    window_bars: int
    depth_rows: int

    async def write(self, batch: WriteBatch) -> WriteResult:
        """Apply a batch. Per window the update is atomic; raises ``StoreUnavailable`` if unreachable."""
        ...

    async def read_symbol(
        self,
        symbol: str,
        intervals: Sequence[str],
        depth: int,
        *,
        with_depth: bool = True,
        depth_after_ms: int | None = None,
    ) -> SymbolWindows:
        """Every window of one symbol, read consistently in one round trip.

        ``with_depth=False`` leaves out the depth-heatmap rows (hundreds of KB a symbol) for readers
        that do not use them, such as the worker on every bar close; ``depth_after_ms`` reads only the
        rows sampled after it (the heatmap CNN's minute, not the whole window).
        """
        ...

    async def bars_after(self, symbol: str, interval: str, start: int) -> list[Bar]:
        """The window's bars that start after ``start``, oldest first (usually none or one: a narrow
        read; an undecodable record is left out, the full read reports it)."""
        ...

    async def request_repair(self, symbol: str, interval: str) -> None:
        """Ask for ``interval``'s window of ``symbol`` to be rebuilt from REST: a reader found
        records in it it could not decode (idempotent; the ingestor takes the requests)."""
        ...

    async def take_repairs(self, count: int = 100) -> list[tuple[str, str]]:
        """Up to ``count`` pending repair requests, each returned once."""
        ...

    async def read_events(self, after: str = "0", count: int = 1000) -> list[tuple[str, BarEvent]]:
        """Bar-closed events after stream id ``after`` (oldest first)."""
        ...

    async def announce(self, events: Sequence[BarEvent]) -> None:
        """Append bar-closed events again. After an outage: on a Redis Cluster a write acknowledged
        in a master's last milliseconds dies with it (replication is asynchronous), an event or the
        signal it led to among them; the workers publish each (symbol, bar) once, so a repeat costs a
        recomputation, a loss a signal."""
        ...

    async def ping(self) -> None: ...

    async def close(self) -> None: ...


def revised_field(interval: str) -> str:
    """The symbol status field that marks ``interval``'s window as revised: a closed bar in it was
    rewritten with other values (its value: the oldest such start; empty once reconciled). The store
    sets it in the same atomic write; the ingestor reconciles the window from REST and clears it;
    the worker does not signal from a window so marked."""
    return f"revised:{interval}"


def new_closes(before: int, fresh: list[int]) -> list[int]:
    """Starts that deserve a bar-closed event: every bar added beyond the previous newest.

    Several closes can land in one write (a slow flush, a backfill after a reconnect, however long
    the gap): each gets its event, so a worker makes a signal for each and none is lost silently.
    An empty window (a first fill) announces only its newest bar: what came before is history.
    """
    if not fresh:
        return []
    if before < 0:
        return fresh[-1:]
    return fresh


def trim_oldest(window: dict[int, _T], maxlen: int) -> None:
    """Bound a time-keyed window in place, dropping the oldest keys."""
    if len(window) > maxlen:
        for key in sorted(window)[: len(window) - maxlen]:
            del window[key]
