"""The ingestor: Bybit public stream + REST backfill ⇒ bounded windows in the store.

Owns the connections (topics sharded over several), one :class:`OrderBook` per symbol, the kline
hole detector, the REST reconciler and the coalescing writer. Every task it starts is named, held
and cancelled on :meth:`Ingestor.close`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from streaming.backoff import Backoff
from streaming.book import ApplyResult, BookState, OrderBook
from streaming.clock import MAX_AHEAD_MS, ExchangeClock, from_the_future
from streaming.connection import FeedConnection
from streaming.depth import sample_levels, slot_start
from streaming.errors import FrameError, RestBanned, RestRejected, RestRetryable, StoreError
from streaming.frames import BookUpdate, KlineUpdate
from streaming.klines import Bar, interval_ms, last_closed_start
from streaming.metrics import IngestMetrics
from streaming.ratelimit import RateLimiter
from streaming.rest import BybitRest
from streaming.store import BookStatus, WindowStore, revised_field
from streaming.supervisor import TaskSupervisor
from streaming.writer import WindowWriter

__all__ = ["IngestConfig", "Ingestor"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConfig:
    ws_url: str
    rest_url: str
    symbols: tuple[str, ...]
    intervals: tuple[str, ...] = ("1", "5", "15", "60")
    book_depth: int = 50
    symbols_per_connection: int = 10
    depth_sample_ms: int = 1000
    book_silence_s: float = 10.0
    kline_silence_s: float = 90.0
    ping_interval_s: float = 20.0
    pong_timeout_s: float = 10.0
    ack_timeout_s: float = 10.0
    subscribe_batch: int = 10
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    healthy_after_s: float = 30.0
    connects_per_minute: float = 60.0
    rest_rate_per_s: float = 20.0
    rest_ban_s: float = 600.0
    rest_retry_s: float = 2.0
    missed_close_grace_ms: int = 5000  # after a boundary, how long to wait for the confirm push
    max_future_ms: int = MAX_AHEAD_MS  # a frame stamped further ahead of the local wall clock is quarantined


class Ingestor:
    def __init__(
        self,
        config: IngestConfig,
        store: WindowStore,
        metrics: IngestMetrics,
        *,
        rest: BybitRest | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.metrics = metrics
        self.clock = ExchangeClock()
        self.rest = rest or BybitRest(config.rest_url, rate_per_s=config.rest_rate_per_s, ban_seconds=config.rest_ban_s)
        self.writer = WindowWriter(store, metrics, on_recovered=self._store_recovered, on_revised=self._on_revised)
        self.books = {s: OrderBook(s, config.book_depth) for s in config.symbols}
        self.newest: dict[tuple[str, str], int] = {}  # newest closed start known per window
        self._last_slot: dict[str, int] = {}
        self._reconcile_queue: asyncio.Queue[tuple[str, str, str]] = asyncio.Queue()
        self._reconcile_pending: set[tuple[str, str]] = set()  # queued or running
        self._reconcile_running: tuple[str, str] | None = None
        self._reconcile_rerun: set[tuple[str, str]] = set()  # asked again while running
        self._overdue_asked: dict[tuple[str, str], int] = {}
        self._tasks = TaskSupervisor("ingestor")
        self._closed = False
        self._frames = 0
        self._future = 0  # frames quarantined for a timestamp ahead of the wall clock
        self._counts = metrics.frames.counts  # bumped once a frame: plain ints, no lock
        shards = self._shards()
        limiter = RateLimiter(config.connects_per_minute / 60.0, burst=max(2, len(shards)))
        self.connections = [
            FeedConnection(
                f"ws{i}",
                config.ws_url,
                self._topics(shard),
                self,
                metrics,
                silence_s=self._silence_for,
                ping_interval_s=config.ping_interval_s,
                pong_timeout_s=config.pong_timeout_s,
                ack_timeout_s=config.ack_timeout_s,
                batch_size=config.subscribe_batch,
                backoff=Backoff(config.backoff_base_s, config.backoff_cap_s, config.healthy_after_s),
                connect_limiter=limiter,
            )
            for i, shard in enumerate(shards)
        ]
        self._conn_symbols = {c.name: shards[i] for i, c in enumerate(self.connections)}
        for iv in config.intervals:  # until the exchange clock is known, no window is known complete
            metrics.windows_incomplete.labels(interval=iv).set(len(config.symbols))
        # Read from the metrics server's thread: dict() copies each map in one step under the GIL.
        metrics.last_frame_source = lambda: {t: at for c in self.connections for t, at in dict(c.last_frame_at).items()}

    # -- topology -------------------------------------------------------------------------------
    def _shards(self) -> list[tuple[str, ...]]:
        n = self.config.symbols_per_connection
        syms = self.config.symbols
        return [syms[i : i + n] for i in range(0, len(syms), n)]

    def _topics(self, symbols: Sequence[str]) -> list[str]:
        topics = []
        for s in symbols:
            topics += [f"kline.{iv}.{s}" for iv in self.config.intervals]
            topics.append(f"orderbook.{self.config.book_depth}.{s}")
        return topics

    def _silence_for(self, topic: str) -> float:
        return self.config.book_silence_s if topic.startswith("orderbook.") else self.config.kline_silence_s

    # -- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        """Load what the store already holds, then start connections, writer and reconciler."""
        await self._load_store_state()
        self._tasks.spawn(self.writer.run(), "writer")
        self._tasks.spawn(self._reconciler(), "reconciler")
        self._tasks.spawn(self._freshness(), "freshness")
        self._tasks.spawn(self._repairs(), "repairs")
        for conn in self.connections:
            self._tasks.spawn(conn.run(), conn.name)
        for symbol in self.config.symbols:
            for iv in self._catch_up_order():
                self._schedule_reconcile(symbol, iv, "startup")

    def _catch_up_order(self) -> list[str]:
        """Coarsest first: a catch-up's finest bars announce signals (bar events), so the coarser
        windows those signals read are backfilled before them, not after (no ``stale_window``)."""
        return sorted(self.config.intervals, key=int, reverse=True)

    async def run(self) -> None:
        await self.start()
        try:
            await self._tasks.wait()
        finally:
            await self.close()

    async def close(self, timeout_s: float = 5.0) -> None:
        """Stop connections, mark books stopped, flush what is pending. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.cancel_all(timeout_s)
        for symbol, book in self.books.items():
            if book.state is not BookState.INVALID:
                book.invalidate("ingestor stopped")
            self._publish_book(symbol)
        try:
            await asyncio.wait_for(asyncio.shield(self.writer.flush()), timeout_s)
        except (StoreError, TimeoutError) as exc:
            log.error("final flush failed; %s", exc)
        await self.rest.close()

    async def _load_store_state(self) -> None:
        for symbol in self.config.symbols:
            try:
                windows = await self.store.read_symbol(symbol, self.config.intervals, self.config.book_depth)
            except StoreError as exc:
                log.error("cannot read existing windows for %s (%s); backfill will rebuild them", symbol, exc)
                continue
            for iv, bars in windows.bars.items():
                if bars:
                    self.newest[(symbol, iv)] = bars[-1].start
                    self.writer.stored(symbol, iv, bars[-1].start)
            if windows.depth:
                self._last_slot[symbol] = windows.depth[-1].ts

    # -- FeedHandler ----------------------------------------------------------------------------
    def on_connected(self, conn: FeedConnection) -> None:
        for symbol in self._conn_symbols[conn.name]:
            self.books[symbol].reset(f"connection #{conn.connection_number}: awaiting snapshot")
            self._publish_book(symbol)
            if conn.connection_number > 1:
                # A disconnect can hide a kline close (no sequence numbers on klines).
                for iv in self._catch_up_order():
                    self._schedule_reconcile(symbol, iv, "reconnect")

    def on_disconnected(self, conn: FeedConnection, reason: str) -> None:
        for symbol in self._conn_symbols[conn.name]:
            self.books[symbol].invalidate(f"disconnected: {reason}")
            self._publish_book(symbol)

    def on_subscribed(self, conn: FeedConnection, topics: Sequence[str]) -> None:
        for topic in topics:
            symbol = topic.rsplit(".", 1)[-1]
            if symbol in self.books:
                self.writer.put_status(symbol, {f"subscribe:{topic}": "ok"})

    def on_subscribe_failed(self, conn: FeedConnection, topics: Sequence[str], ret_msg: str) -> None:
        for topic in topics:
            symbol = topic.rsplit(".", 1)[-1]
            if symbol not in self.books:
                continue
            self.writer.put_status(symbol, {f"subscribe:{topic}": f"failed: {ret_msg}"})
            if topic.startswith("orderbook."):
                self.books[symbol].invalidate(f"subscribe failed: {ret_msg}")
                self._publish_book(symbol)

    def on_frame_error(self, conn: FeedConnection, raw: str | bytes, exc: FrameError) -> None:
        log.warning("[%s] bad frame (%s): %r", conn.name, exc, raw[:200])  # sliced first: a frame can be megabytes

    def on_message(self, conn: FeedConnection, msg: BookUpdate | KlineUpdate, recv_wall: float) -> None:
        if from_the_future(msg.ts, recv_wall * 1000, self.config.max_future_ms):
            self._quarantine(conn, msg, recv_wall)
            return
        if isinstance(msg, BookUpdate):
            self._on_book(conn, msg)
        else:
            self._on_kline(msg)
        self.clock.observe(msg.ts)
        self._frames += 1
        if self._frames % 16 == 0:  # a sample is plenty for a latency histogram
            self.metrics.ingest_lag.observe(max(0.0, recv_wall - msg.ts / 1000.0))

    def _quarantine(self, conn: FeedConnection, msg: BookUpdate | KlineUpdate, recv_wall: float) -> None:
        """Quarantine (count, log, drop) a frame stamped ahead of the local clock: one such frame would
        top a window (no later bar could follow it) and move every clock that reads it. Real or
        replayed data are never ahead of the wall clock."""
        self.metrics.messages.labels(type="future").inc()
        self._future += 1
        if self._future <= 10 or self._future % 1000 == 0:
            log.warning(
                "[%s] quarantined a %s frame stamped %d, %.0f s ahead of the local clock (%d so far)",
                conn.name,
                msg.topic,
                msg.ts,
                msg.ts / 1000 - recv_wall,
                self._future,
            )

    def _on_book(self, conn: FeedConnection, msg: BookUpdate) -> None:
        self._counts[msg.kind] += 1
        book = self.books.get(msg.symbol)
        if book is None or msg.depth != self.config.book_depth:
            self.metrics.messages.labels(type="unknown_topic").inc()
            return
        was = book.state
        result = book.apply(msg)
        if result is not ApplyResult.APPLIED:
            self._not_applied(conn, msg, book, result)
            return
        slot = slot_start(msg.ts, self.config.depth_sample_ms)
        if slot > self._last_slot.get(msg.symbol, -1):  # the first update of a sampling slot: its row
            self._last_slot[msg.symbol] = slot
            self.writer.put_depth_row(msg.symbol, self.config.book_depth, sample_levels(*book.float_levels(), slot))
            self._publish_book(msg.symbol)
        elif was is not BookState.READY:
            self._publish_book(msg.symbol)

    def _not_applied(self, conn: FeedConnection, msg: BookUpdate, book: OrderBook, result: ApplyResult) -> None:
        if result is ApplyResult.DROPPED:
            self.metrics.deltas_dropped.inc()
            return
        kind = book.reason.split(":", 1)[0].replace(" ", "_")  # INVALIDATED
        self.metrics.book_resyncs.labels(reason=kind).inc()
        log.warning("[%s] %s book INVALID (%s); resyncing", conn.name, msg.symbol, book.reason)
        self._publish_book(msg.symbol)
        conn.resync(msg.topic)

    def _publish_book(self, symbol: str) -> None:
        book = self.books[symbol]
        bid, ask = book.best_bid(), book.best_ask()
        status = BookStatus(
            state=book.state.value,
            reason=book.reason,
            u=book.last_u,
            ts=book.ts,
            best_bid=str(bid[0]) if bid and book.ready else "",
            best_bid_size=str(bid[1]) if bid and book.ready else "",
            best_ask=str(ask[0]) if ask and book.ready else "",
            best_ask_size=str(ask[1]) if ask and book.ready else "",
            updated_wall_ms=int(time.time() * 1000),
        )
        self.writer.put_book(symbol, self.config.book_depth, status)
        self.metrics.book_ready.labels(symbol=symbol).set(1 if book.ready else 0)

    def _on_kline(self, msg: KlineUpdate) -> None:
        self._counts["kline"] += 1
        if msg.symbol not in self.books or msg.interval not in self.config.intervals:
            self.metrics.messages.labels(type="unknown_topic").inc()
            return
        key = (msg.symbol, msg.interval)
        step = interval_ms(msg.interval)
        closed = []
        for pushed in msg.bars:
            if not pushed.confirm:
                continue
            b = pushed.bar
            # A closed bar starts on the interval grid and has ended by the push's own timestamp
            # (1 s of slack); anything else would poison the window and its newest-bar events.
            if b.start % step or b.start + step > msg.ts + 1_000:
                self.metrics.messages.labels(type="malformed").inc()
                log.warning("%s %s: rejecting closed bar at %d (push ts %d)", *key, b.start, msg.ts)
                continue
            closed.append(b)
        if not closed:
            return
        self.writer.put_bars(msg.symbol, msg.interval, closed)
        prev = self.newest.get(key)
        for bar in closed:
            if prev is not None and bar.start > prev + step:
                self.metrics.gaps_found.labels(trigger="stream").inc()
                log.warning("%s %s: hole before %d (newest was %d); backfilling", *key, bar.start, prev)
                self._schedule_reconcile(msg.symbol, msg.interval, "stream")
            prev = bar.start if prev is None else max(prev, bar.start)
        if prev is not None:
            self.newest[key] = prev

    async def _freshness(self) -> None:
        """A window's newest bar must be the last closed one on the exchange clock (protocol §7).

        Klines carry no sequence numbers, so a close push lost at a disconnect or stall is only
        visible this way: reconcile from REST once the close is overdue by a grace period.
        """
        while True:
            await asyncio.sleep(0.25)
            if not self.clock.known:
                continue
            now = self.clock.now_ms() - self.config.missed_close_grace_ms
            for key, newest in list(self.newest.items()):
                due = last_closed_start(now, interval_ms(key[1]))
                # Once per overdue bar: REST may not have it either (a halted market, a replay's end).
                if newest < due and self._overdue_asked.get(key, -1) < due:
                    self._overdue_asked[key] = due
                    self.metrics.gaps_found.labels(trigger="overdue").inc()
                    self._schedule_reconcile(*key, "overdue")
            self._count_incomplete(now)

    async def _repairs(self, every_s: float = 1.0) -> None:
        """Windows a reader found damaged (undecodable records, ``store.request_repair``) are rebuilt
        from REST: the exchange's bars replace the window's older members, the damaged ones with them."""
        while True:
            await asyncio.sleep(every_s)
            try:
                asked = await self.store.take_repairs()
            except StoreError:
                continue  # the writer's recovery hook reconciles every window once the store is back
            for symbol, iv in asked:
                if symbol in self.books and iv in self.config.intervals:
                    self.metrics.gaps_found.labels(trigger="corrupt").inc()
                    log.warning("%s %s: a reader found damaged records; rebuilding the window from REST", symbol, iv)
                    self._schedule_reconcile(symbol, iv, "corrupt")

    def _count_incomplete(self, now_ms: int) -> None:
        """Export how many windows per interval are behind the exchange clock or wait for a backfill."""
        for iv in self.config.intervals:
            due = last_closed_start(now_ms, interval_ms(iv))
            behind = sum(
                1
                for symbol in self.config.symbols
                if (key := (symbol, iv)) in self._reconcile_pending or self.newest.get(key, -1) < due
            )
            self.metrics.windows_incomplete.labels(interval=iv).set(behind)

    # -- backfill -------------------------------------------------------------------------------
    def _schedule_reconcile(self, symbol: str, interval: str, trigger: str) -> None:
        if (symbol, interval) == self._reconcile_running:
            self._reconcile_rerun.add((symbol, interval))  # its REST page may predate this hole
            return
        if (symbol, interval) in self._reconcile_pending:
            return
        self._reconcile_pending.add((symbol, interval))
        self._reconcile_queue.put_nowait((symbol, interval, trigger))

    def _on_revised(self, symbol: str, interval: str) -> None:
        """A closed bar was rewritten with other values: the store has marked the window (no signal
        is computed from it) and REST, the exchange's record, decides what it holds. Counted as a
        gap, except when it is REST's own repair of this window (then checked once more)."""
        if (symbol, interval) != self._reconcile_running:
            self.metrics.gaps_found.labels(trigger="revised").inc()
        self._schedule_reconcile(symbol, interval, "revised")

    async def _store_recovered(self) -> None:
        # What the store missed meanwhile is announced by the writer; what REST knows, reconciled here.
        for symbol in self.config.symbols:
            self._publish_book(symbol)
            for iv in self.config.intervals:
                self._schedule_reconcile(symbol, iv, "store_recovered")

    @property
    def frames_handled(self) -> int:
        """Kline and order-book frames handled so far."""
        return self._frames

    async def _reconciler(self) -> None:
        while True:
            symbol, iv, trigger = await self._reconcile_queue.get()
            self._reconcile_running = (symbol, iv)
            try:
                await self._reconcile(symbol, iv, trigger)
            except RestBanned as exc:
                self.metrics.rest_requests.labels(outcome="banned").inc()
                for sym in self.config.symbols:  # the ban is per IP: every window waits
                    self.writer.put_status(sym, {f"backfill:{i}": f"paused: {exc}" for i in self.config.intervals})
                await asyncio.sleep(max(0.0, exc.until_monotonic - time.monotonic()))
                self._requeue(symbol, iv, trigger)
            except RestRetryable as exc:
                self.metrics.rest_requests.labels(outcome="retryable").inc()
                log.warning("backfill %s %s failed (%s); retrying", symbol, iv, exc)
                self.writer.put_status(symbol, {f"backfill:{iv}": f"retrying: {exc}"})
                await asyncio.sleep(self.config.rest_retry_s)
                self._requeue(symbol, iv, trigger)
            except RestRejected as exc:
                self.metrics.rest_requests.labels(outcome="rejected").inc()
                log.error("backfill %s %s rejected: %s", symbol, iv, exc)
                self.writer.put_status(symbol, {f"backfill:{iv}": f"rejected: {exc}"})
                self._reconcile_pending.discard((symbol, iv))
            except StoreError as exc:
                # The bars stay pending in the writer; the writer's recovery hook reschedules us.
                log.warning("backfill %s %s could not be written yet: %s", symbol, iv, exc)
                self._reconcile_pending.discard((symbol, iv))
            else:
                self._reconcile_pending.discard((symbol, iv))
            finally:
                self._reconcile_running = None
            if (symbol, iv) in self._reconcile_rerun:
                self._reconcile_rerun.discard((symbol, iv))
                self._schedule_reconcile(symbol, iv, trigger)

    def _requeue(self, symbol: str, iv: str, trigger: str) -> None:
        self._reconcile_queue.put_nowait((symbol, iv, trigger))

    async def _reconcile(self, symbol: str, iv: str, trigger: str) -> None:
        """Make the window hold the newest ``window_bars`` closed bars REST knows, without holes."""
        log.debug("reconciling %s %s from REST (%s)", symbol, iv, trigger)
        want = self.store.window_bars
        collected: dict[int, Bar] = {}
        end: int | None = None
        for _ in range(want // 1000 + 2):  # bounded even if a server ignores ``end``
            page = await self.rest.klines(symbol, iv, end=end, limit=min(1000, want + 1))
            self.metrics.rest_requests.labels(outcome="ok").inc()
            self.clock.observe(page.server_time)
            for bar in page.bars:
                collected[bar.start] = bar
            if page.oldest_start is None or not page.bars or len(collected) >= want:
                break
            end = page.oldest_start - 1
        if not collected:
            return
        bars = [collected[s] for s in sorted(collected)[-want:]]
        self.writer.put_bars(symbol, iv, bars, replace=trigger == "corrupt")
        # reconciled: the mark goes in the same batch as REST's bars (a later live rewrite marks again)
        self.writer.put_status(symbol, {f"backfill:{iv}": "ok", revised_field(iv): ""})
        result = await self.writer.flush()
        inserted = result.inserted.get((symbol, iv), 0)
        key = (symbol, iv)
        self.newest[key] = max(self.newest.get(key, bars[-1].start), bars[-1].start)
        if inserted:
            self.metrics.bars_backfilled.inc(inserted)
            if (trigger != "startup" or len(bars) != inserted) and trigger not in ("revised", "corrupt"):  # counted
                self.metrics.gaps_found.labels(trigger=trigger).inc()
            log.info("backfilled %d bar(s) of %s %s (%s)", inserted, symbol, iv, trigger)
