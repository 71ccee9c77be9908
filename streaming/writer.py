"""Coalescing writer between the hot receive path and the window store.

The receive loop never awaits the store: it hands closed bars, book states and depth rows to this
writer, which keeps *the latest value per key* (bars by start, one state per book, depth rows by
slot) and flushes them in one pipelined batch. Memory is bounded by the windows themselves: at most
``window_bars`` bars per (symbol, interval), one state per book, ``depth_rows`` rows per book.

When the store is unreachable nothing is dropped: the pending batch is kept (still bounded) and
retried with backoff; on recovery ``on_recovered`` runs so the owner can backfill what REST knows
and the buffer could not hold.

A bar-closed event is made by the write that first stores its bar (``WriteResult.events``). A write
that fails can still have stored part of its batch (a Redis Cluster pipeline spans nodes: the live
ones apply their part, and the reply that would have carried the events is lost with the error), so
the retry finds those bars present and announces nothing for them. The writer therefore remembers
the bars of every failed write and, at the next successful one, announces each of them that the
successful write did not (:meth:`WindowWriter._missed`). It also announces the ``reannounce`` newest
closes written before an outage once more: a failed-over master can take the last writes it
acknowledged with it (replication is asynchronous), events and the signals they led to included.
A repeat is harmless: a worker publishes each (symbol, bar) once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from streaming.backoff import Backoff
from streaming.depth import DepthRow
from streaming.errors import StoreError, StoreUnavailable
from streaming.klines import Bar
from streaming.metrics import IngestMetrics
from streaming.store import BarEvent, BookStatus, WindowStore, WriteBatch, WriteResult, trim_oldest

__all__ = ["WindowWriter"]

log = logging.getLogger(__name__)


class WindowWriter:
    def __init__(
        self,
        store: WindowStore,
        metrics: IngestMetrics,
        *,
        linger_s: float = 0.005,
        backoff: Backoff | None = None,
        on_recovered: Callable[[], Awaitable[None]] | None = None,
        on_revised: Callable[[str, str], None] | None = None,
        reannounce: int = 3,
    ) -> None:
        self._store = store
        self._on_revised = on_revised
        self._metrics = metrics
        self._linger_s = linger_s
        self._backoff = backoff or Backoff(base_s=0.2, cap_s=5.0)
        self._on_recovered = on_recovered
        if reannounce < 1:
            raise ValueError("reannounce must be at least 1 (the newest close)")
        self._reannounce = reannounce
        # per window: the newest ``reannounce`` bar starts stored (ascending), and as they were at the
        # first failed write since the last success
        self._recent: dict[tuple[str, str], list[int]] = {}
        self._recent_at_loss: dict[tuple[str, str], list[int]] | None = None
        # per window: bar starts a failed write held (stored or not; announced or not)
        self._unconfirmed: dict[tuple[str, str], set[int]] = {}
        self._bars: dict[tuple[str, str], dict[int, Bar]] = {}
        self._books: dict[tuple[str, int], BookStatus] = {}
        self._rows: dict[tuple[str, int], dict[int, DepthRow]] = {}
        self._status: dict[str, dict[str, str]] = {}
        self._replace: dict[tuple[str, str], int] = {}
        self._dirty = asyncio.Event()
        self._lock = asyncio.Lock()  # one flush at a time
        self._healthy = True
        self.flushes = 0

    # -- producers (synchronous, never block) ---------------------------------------------------
    def put_bars(self, symbol: str, interval: str, bars: list[Bar], *, replace: bool = False) -> None:
        """Queue closed bars. ``replace``: they are the exchange's record of the window up to their
        newest start (a REST rebuild), so the write removes every other member up to it."""
        if replace and bars:
            key = (symbol, interval)
            self._replace[key] = max(self._replace.get(key, 0), max(b.start for b in bars))
        pending = self._bars.setdefault((symbol, interval), {})
        for bar in bars:
            pending[bar.start] = bar
        trim_oldest(pending, self._store.window_bars)
        self._dirty.set()

    def put_book(self, symbol: str, depth: int, status: BookStatus) -> None:
        self._books[(symbol, depth)] = status
        self._dirty.set()

    def put_depth_row(self, symbol: str, depth: int, row: DepthRow) -> None:
        pending = self._rows.setdefault((symbol, depth), {})
        pending[row.ts] = row
        trim_oldest(pending, self._store.depth_rows)
        self._dirty.set()

    def stored(self, symbol: str, interval: str, newest: int) -> None:
        """The store already holds ``symbol``'s ``interval`` window up to ``newest`` (read at start-up)."""
        self._remember((symbol, interval), [newest])

    def put_status(self, symbol: str, fields: dict[str, str]) -> None:
        self._status.setdefault(symbol, {}).update(fields)
        self._dirty.set()

    @property
    def pending(self) -> bool:
        return bool(self._bars or self._books or self._rows or self._status)

    @property
    def healthy(self) -> bool:
        return self._healthy

    # -- flushing -------------------------------------------------------------------------------
    async def flush(self) -> WriteResult:
        """Write everything pending now. Raises ``StoreError`` and keeps the batch on failure."""
        async with self._lock:
            batch = WriteBatch(
                bars={k: sorted(v.values(), key=lambda b: b.start) for k, v in self._bars.items()},
                books=dict(self._books),
                depth_rows={k: sorted(v.values(), key=lambda r: r.ts) for k, v in self._rows.items()},
                status={k: dict(v) for k, v in self._status.items()},
                replace={k: v for k, v in self._replace.items() if k in self._bars},
            )
            self._bars, self._books, self._rows, self._status = {}, {}, {}, {}
            self._replace = {}
            try:
                result = await self._store.write(batch)
            except StoreUnavailable:
                self._restore(batch)
                raise
            except StoreError as exc:
                # Not an outage: retrying the same batch would fail forever. Drop it, loudly.
                self._metrics.store_errors.inc()
                log.error("window store refused a batch, dropped: %s", exc)
                raise
            except BaseException:
                self._restore(batch)  # cancelled mid-write (shutdown): the final flush retries it
                raise
            self.flushes += 1
            for key, bars in batch.bars.items():
                self._remember(key, [b.start for b in bars[-self._reannounce :]])
            if self._recent_at_loss is not None:
                await self._announce(self._missed(batch, result))
            for err in result.errors:
                self._metrics.store_errors.inc()
                log.error("window store refused part of a batch: %s", err)
            for key, n in result.revised.items():
                if n:
                    log.warning("%d closed bar(s) of %s %s changed on rewrite; the window waits for REST", n, *key)
                    self._metrics.bars_revised.inc(n)
                    if self._on_revised is not None:
                        self._on_revised(*key)
            return result

    @property
    def stored_newest(self) -> dict[tuple[str, str], int]:
        """Per window, the newest bar start known to be in the store."""
        return {key: starts[-1] for key, starts in self._recent.items() if starts}

    def _remember(self, key: tuple[str, str], starts: list[int]) -> None:
        if starts:
            self._recent[key] = sorted({*self._recent.get(key, ()), *starts})[-self._reannounce :]

    def _unconfirm(self, batch: WriteBatch) -> None:
        """A write failed: its bars may be stored without their events; at the first failure since
        the last success (an outage begins), the newest closes stored before it are in doubt too."""
        if self._recent_at_loss is None:
            self._recent_at_loss = {key: list(starts) for key, starts in self._recent.items()}
        for key, bars in batch.bars.items():
            doubtful = self._unconfirmed.setdefault(key, set())
            doubtful.update(b.start for b in bars)
            if len(doubtful) > self._store.window_bars:  # older ones are out of the window anyway
                self._unconfirmed[key] = set(sorted(doubtful)[-self._store.window_bars :])

    def _missed(self, batch: WriteBatch, result: WriteResult) -> list[BarEvent]:
        """The events the failed writes since the last success may have swallowed, less the ones
        ``result`` (the first success, of ``batch``) made: a bar of ``batch`` or one of the
        ``reannounce`` newest stored before the failures (a bar trimmed from the pending ones was
        never written), from the oldest of those on (an older one, a REST rebuild of history, never
        had an event); a window unknown before announces its newest only."""
        made = {(e.symbol, e.interval, e.start) for e in result.events}
        before, self._recent_at_loss = self._recent_at_loss or {}, None
        missed = []
        for key in sorted(self._unconfirmed.keys() | before.keys()):
            recent = before.get(key, [])
            doubtful = self._unconfirmed.get(key, set()) & {b.start for b in batch.bars.get(key, ())}
            kept = sorted(doubtful | set(recent))
            if not kept:
                continue
            candidates = [s for s in kept if s >= recent[0]] if recent else kept[-1:]
            missed += [BarEvent(*key, s) for s in candidates if (*key, s) not in made]
        self._unconfirmed = {}
        return missed

    async def _announce(self, events: list[BarEvent]) -> None:
        if not events:
            return
        try:
            await self._store.announce(events)
        except StoreError as exc:  # the store keeps them and sends them with its next write
            log.warning("%d bar closes not announced yet (%s); they go with the next write", len(events), exc)
        else:
            log.info("after the outage: announced %d bar closes it may have swallowed", len(events))

    def _restore(self, batch: WriteBatch) -> None:
        """Put a failed batch back underneath anything newer that arrived meanwhile."""
        self._unconfirm(batch)
        for key, bound in batch.replace.items():
            self._replace[key] = max(self._replace.get(key, 0), bound)
        for key, bars in batch.bars.items():
            newer = self._bars.get(key, {})
            merged = {b.start: b for b in bars}
            merged.update(newer)
            trim_oldest(merged, self._store.window_bars)
            self._bars[key] = merged
        for bkey, book in batch.books.items():
            self._books.setdefault(bkey, book)
        for rkey, rows in batch.depth_rows.items():
            newer_rows = self._rows.get(rkey, {})
            merged_rows = {r.ts: r for r in rows}
            merged_rows.update(newer_rows)
            trim_oldest(merged_rows, self._store.depth_rows)
            self._rows[rkey] = merged_rows
        for symbol, fields in batch.status.items():
            self._status[symbol] = {**fields, **self._status.get(symbol, {})}
        self._dirty.set()

    async def run(self) -> None:
        """Flush loop; runs until cancelled. Store outages are retried with backoff, never raised."""
        while True:
            await self._dirty.wait()
            if self._linger_s:
                await asyncio.sleep(self._linger_s)  # let a burst of updates coalesce
            self._dirty.clear()
            try:
                await self.flush()
            except StoreUnavailable as exc:
                self._metrics.store_errors.inc()
                self._metrics.store_up.set(0)
                if self._healthy:
                    log.error("window store unreachable, keeping updates pending: %s", exc)
                self._healthy = False
                await asyncio.sleep(self._backoff.next_delay())
                continue
            except StoreError:
                continue  # counted and logged in flush; the batch was dropped
            except Exception:
                log.exception("window writer: unexpected error; batch dropped")
                continue
            self._metrics.store_up.set(1)
            if not self._healthy:
                self._healthy = True
                self._backoff.reset()
                log.warning("window store is reachable again; pending updates written")
                if self._on_recovered is not None:
                    await self._on_recovered()
