"""The inference worker: bar-closed events ⇒ one signal per symbol per close of the finest interval.

Events come through a Redis Stream consumer group (:class:`inference.events.RedisEventSource`):
several workers share them, each event is handled by one, and an event stays pending until its
signal (or its "no signal" record) is written, so a worker that dies or loses Redis mid-signal
leaves it to be retried — by itself once Redis is back (it re-reads its own pending entries), or by
another worker that claims it after ``claim_idle_ms``. Retries and two workers racing are harmless:
the signal store publishes each (symbol, bar) once.

What no pending entry remembers is made good by a sweep (every ``sweep_every_s``): Redis replicates
asynchronously, so a master that dies can take the writes it acknowledged in its last milliseconds
along — a bar-closed event (on the events' shard), or a published signal and its acknowledgement (on
the symbol's). A finest bar in the window that has no signal while a newer bar has one is handled
again, once, as if its event had come.

The consumer loop here reads, claims, dedupes (one handler per entry id) and publishes; each signal
is computed by :class:`inference.engine.SignalEngine` from the symbol's windows; the events come
from :mod:`inference.events`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from inference.components import ModelRegistry, ModelSet
from inference.config import WorkerConfig
from inference.engine import SignalEngine
from inference.events import Delivery, EventSource
from inference.metrics import WorkerMetrics
from inference.score_store import ScoreStore
from inference.scorer import Scorer
from inference.signal import BarRef, NoSignal, Signal, TrackRecord
from inference.signal_store import Published, SignalStore
from streaming.backoff import Backoff
from streaming.errors import StoreError, StoreUnavailable
from streaming.klines import interval_ms
from streaming.store import BarEvent, SymbolWindows, WindowStore
from streaming.supervisor import TaskSupervisor

__all__ = ["Worker"]

log = logging.getLogger(__name__)


class Worker:
    """Consumes bar-closed events and publishes signals. Owns its tasks: :meth:`close` stops them."""

    def __init__(
        self,
        config: WorkerConfig,
        store: WindowStore,
        events: EventSource,
        signals: SignalStore,
        models: ModelRegistry,
        metrics: WorkerMetrics,
        *,
        scores: ScoreStore | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self.signals = signals
        self.models = models
        self.metrics = metrics
        self.engine = SignalEngine(config, store, models, metrics)
        # the track record: every served signal scored once its horizon passes (None: not kept)
        self.scores = scores
        self.scorer = (
            Scorer(signals, scores, metrics, horizon_minutes=config.horizon_minutes) if scores is not None else None
        )
        self._backoff = backoff or Backoff(config.backoff_base_s, config.backoff_cap_s)
        self._retry_backoff = Backoff(config.backoff_base_s, config.backoff_cap_s)
        self._tasks = TaskSupervisor("worker")
        # Per-event handlers are not the supervisor's: they end by the thousand, each releasing its
        # slot and its entry id as it ends, while the supervisor keeps every task until cancel_all.
        self._handlers: dict[str, asyncio.Task[None]] = {}  # entry id -> its handler
        self._slots = asyncio.Semaphore(config.max_in_flight)
        # One signal of a symbol at a time, in event order: a backlog of one symbol is worked through
        # oldest first instead of all at once (they would compete for the sessions, miss the latency
        # budget and publish in the order they finish). Other symbols run beside it.
        self._symbol_turns: dict[str, asyncio.Lock] = {}
        self._check_pending = True  # re-read our own pending entries (at start, after a failure)
        self._swept: dict[tuple[str, int], None] = {}  # (symbol, bar) the sweep handled, oldest first
        self._closed = False
        self.handled = 0

    async def start(self) -> None:
        if not self.models.loaded:
            await self.models.load()
        kept = self.engine.store.window_bars
        for c in self.models.current.enabled:
            if c.bars_needed > kept:
                log.warning(
                    "%s needs %d bars but the store keeps %d per window: it will never vote (raise "
                    "CANDLECAST_WINDOW_BARS on the ingestor)",
                    c.name,
                    c.bars_needed,
                    kept,
                )
        self._tasks.spawn(self._reader(), "worker-reader")
        self._tasks.spawn(self._claimer(), "worker-claimer")
        self._tasks.spawn(self._backlog(), "worker-backlog")
        if self.config.sweep_every_s > 0:
            self._tasks.spawn(self._sweeper(), "worker-sweeper")
        self._tasks.spawn(self.models.watch(), "worker-models")

    async def run(self) -> None:
        await self.start()
        try:
            await self._tasks.wait()
        finally:
            await self.close()

    async def close(self) -> None:
        """Stop reading, let handlers in flight finish (bounded), then stop. Safe to call twice.

        An event whose handler is cancelled here stays pending in the group: it is retried."""
        if self._closed:
            return
        self._closed = True
        await self._tasks.cancel_all(self.config.close_timeout_s)
        handlers = list(self._handlers.values())
        if handlers:
            _, unfinished = await asyncio.wait(handlers, timeout=self.config.close_timeout_s)
            for task in unfinished:
                task.cancel()
            if unfinished:
                await asyncio.wait(unfinished, timeout=1.0)
        await self.engine.close(self.config.close_timeout_s)

    # -- loops ----------------------------------------------------------------------------------
    async def _reader(self) -> None:
        await self._until_ok(self.events.setup, "create the consumer group")
        cursor = "0"
        while True:
            try:
                if self._check_pending:
                    batch = await self.events.read(pending=True, after=cursor, count=self.config.read_count, block_ms=0)
                    if not batch:
                        self._check_pending, cursor = False, "0"
                        continue
                    cursor = batch[-1].id
                else:
                    batch = await self.events.read(
                        pending=False, after=">", count=self.config.read_count, block_ms=self.config.block_ms
                    )
                self._backoff.reset()
            except StoreError as exc:
                self.metrics.store_errors.inc()
                delay = self._backoff.next_delay()
                log.warning("reading events failed (%s); retrying in %.2f s", exc, delay)
                self._check_pending, cursor = True, "0"
                await asyncio.sleep(delay)
                continue
            for delivery in batch:
                await self._dispatch(delivery)

    async def _claimer(self) -> None:
        every = max(0.05, self.config.claim_idle_ms / 2000.0)
        tidy = 0.0
        while True:
            await asyncio.sleep(every)
            try:
                claimed = await self.events.claim(self.config.claim_idle_ms, self.config.read_count)
                if time.monotonic() > tidy:
                    tidy = time.monotonic() + 60.0
                    for name in await self.events.forget_idle_consumers(max(self.config.claim_idle_ms * 10, 600_000)):
                        log.info("removed idle consumer %s (nothing pending)", name)
            except StoreError as exc:
                log.warning("claiming idle events failed: %s", exc)
                continue
            for delivery in claimed:
                if delivery.id not in self._handlers:
                    self.metrics.events_claimed.inc()
                    log.info(
                        "took over event %s (idle > %d ms on its consumer)", delivery.id, self.config.claim_idle_ms
                    )
                    await self._dispatch(delivery)

    async def _sweeper(self) -> None:
        seen: set[tuple[str, int]] = set()  # missing at the previous sweep
        while True:
            await asyncio.sleep(self.config.sweep_every_s)
            missing_now: set[tuple[str, int]] = set()
            for symbol in list(self._symbol_turns):  # the symbols this worker has had events for
                try:
                    missing_now.update((symbol, start) for start in await self._unsignalled(symbol))
                except StoreError as exc:
                    log.debug("%s: sweep skipped: %s", symbol, exc)
                except Exception:
                    log.exception("%s: sweep failed", symbol)
            # Missing twice in a row, a sweep apart: not an event still queued or in hand somewhere.
            for symbol, start in sorted(missing_now & seen):
                self.metrics.bars_swept.inc()
                log.info("%s %s: no signal behind a newer one (event or signal lost?): handling it", symbol, start)
                self._swept[(symbol, start)] = None
                while len(self._swept) > 10_000:
                    del self._swept[next(iter(self._swept))]
                event = BarEvent(symbol, self.config.finest, start)
                await self._dispatch(Delivery(f"sweep-{symbol}-{start}", event, in_stream=False))
            seen = missing_now - seen

    async def _unsignalled(self, symbol: str) -> list[int]:
        """The finest bars of ``symbol``'s window between its oldest and newest of the last ``sweep_bars``
        published signals that have none, and that this worker has not swept before (a bar that ended
        with no signal, e.g. for a holed window, is tried once more per worker, no more)."""
        published = await self.signals.published_starts(symbol, self.config.sweep_bars)
        if len(published) < 2:
            return []
        done = set(published)
        bars = await self.engine.store.bars_after(symbol, self.config.finest, published[0])
        return [
            b.start
            for b in bars
            if b.start < published[-1] and b.start not in done and (symbol, b.start) not in self._swept
        ]

    async def _backlog(self) -> None:
        while True:
            try:
                lag, pending = await self.events.backlog()
                if lag is not None:
                    self.metrics.consumer_lag.set(lag)
                self.metrics.pending.set(pending)
            except StoreError as exc:
                log.debug("consumer group info unavailable: %s", exc)
            await asyncio.sleep(self.config.lag_every_s)

    async def _until_ok(self, op: Callable[[], Awaitable[None]], what: str) -> None:
        while True:
            try:
                await op()
                self._backoff.reset()
                return
            except StoreError as exc:
                delay = self._backoff.next_delay()
                log.warning("cannot %s (%s); retrying in %.2f s", what, exc, delay)
                await asyncio.sleep(delay)

    # -- one event ------------------------------------------------------------------------------
    async def _dispatch(self, delivery: Delivery) -> None:
        if delivery.id in self._handlers:
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(delivery), name=f"event-{delivery.id}")
        self._handlers[delivery.id] = task
        task.add_done_callback(functools.partial(self._handled, delivery.id))

    def _handled(self, entry_id: str, task: asyncio.Task[None]) -> None:
        self._handlers.pop(entry_id, None)
        self._slots.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("handler of event %s crashed", entry_id, exc_info=task.exception())

    async def _handle(self, delivery: Delivery) -> None:
        ev = delivery.event
        try:
            if ev is None or ev.interval != self.config.finest:
                # Coarser closes are read with the finest close at the same boundary; foreign entries skipped.
                self.metrics.events.labels("skipped").inc()
                await self.events.ack([delivery.id])
                return
            async with self._symbol_turns.setdefault(ev.symbol, asyncio.Lock()):  # FIFO: event order
                outcome = await self._signal(ev)
            if delivery.in_stream:
                await self.events.ack([delivery.id])
            self.metrics.events.labels(outcome).inc()
            self._retry_backoff.reset()
            self.handled += 1
        except StoreUnavailable as exc:
            # Not acknowledged: re-read from our pending list once Redis answers (or claimed by a peer).
            self.metrics.store_errors.inc()
            self.metrics.events.labels("retry").inc()
            if not delivery.in_stream and ev is not None:  # not pending anywhere: the next sweep retries it
                self._swept.pop((ev.symbol, ev.start), None)
            delay = self._retry_backoff.next_delay()
            log.warning("event %s left pending, Redis unavailable (%s); retry in %.2f s", delivery.id, exc, delay)
            await asyncio.sleep(delay)
            self._check_pending = True

    async def _signal(self, ev: BarEvent) -> str:
        t0 = time.perf_counter()
        windows: SymbolWindows | None = None
        models = self.models.current
        try:
            (result, windows), track = await asyncio.gather(
                self.engine.compute_read(ev), self._track(ev.symbol, models.id)
            )
            if track is not None and isinstance(result, Signal):
                result = replace(result, track_record=track)
        except StoreUnavailable:
            raise
        except Exception as exc:
            # A poison event (corrupt window data, a bug) must not be retried forever: say why, move on.
            log.exception("%s %s: signal failed", ev.symbol, ev.start)
            now = ev.start + interval_ms(ev.interval)
            result = NoSignal(
                ev.symbol,
                BarRef(ev.interval, ev.start, now),
                "store_error" if isinstance(exc, StoreError) else "internal_error",
                # what failed, never the message: it can quote stored bytes, and the API shows it
                f"{type(exc).__name__} while computing the signal (see the worker log)",
                self.engine.clock.now_ms(),
                int(time.time() * 1000),
            )
        if isinstance(result, NoSignal):
            await self.signals.record_no_signal(result)
            self.metrics.no_signals.labels(result.reason).inc()
            await self._score(ev, windows, models)
            return "no_signal"
        published = await self.signals.publish(result)
        await self._score(ev, windows, models)
        if published is Published.DUPLICATE:
            return "duplicate"
        if published is Published.TOO_OLD:  # older than every bar the dedupe set remembers
            log.warning(
                "%s %s: not published, older than every bar remembered as published (it cannot be told"
                " from a duplicate); a claim or a replay far behind?",
                ev.symbol,
                ev.start,
            )
            return "too_old"
        self.metrics.signals.labels(result.source, result.direction).inc()
        if result.fallback_reason is not None:
            self.metrics.fallbacks.labels(result.fallback_reason.split(":")[0]).inc()
        if result.source == "ensemble" and result.agreement is not None and result.confidence is not None:
            self.metrics.agreement.observe(result.agreement)
            self.metrics.confidence.observe(result.confidence)
        self.metrics.signal_compute_seconds.observe(time.perf_counter() - t0)
        self.metrics.bar_close_to_publish_seconds.observe(max(0.0, result.latency_ms.bar_close_to_publish / 1000.0))
        return "published" if published is Published.LATEST else "audited"

    async def _track(self, symbol: str, models: str) -> TrackRecord | None:
        """The symbol's track record under ``models`` for its next signal (None: none kept, or
        unreadable right now: the signal goes out without it, never held up by it)."""
        if self.scores is None:
            return None
        try:
            return await self.scores.track(symbol, models)
        except StoreError as exc:
            log.debug("%s: track record unavailable: %s", symbol, exc)
        except Exception:
            log.exception("%s: the track record could not be read; the signal goes out without it", symbol)
        return None

    async def _score(self, ev: BarEvent, windows: SymbolWindows | None, models: ModelSet) -> None:
        """Score the signals whose horizon has passed, on the window this signal was computed from (all
        its closed bars: an event handled late, after a failover, scores its own signal at once when
        the bar that ends its horizon is already in)."""
        if self.scorer is None or windows is None:
            return
        finest = self.config.finest
        newer = functools.partial(self.engine.store.bars_after, ev.symbol, finest)
        await self.scorer.after(ev.symbol, windows.bars.get(finest, []), models, newer)
