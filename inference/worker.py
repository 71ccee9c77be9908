"""The inference worker: bar-closed events ⇒ one signal per symbol per close of the finest interval.

Events come through a Redis Stream consumer group (:class:`RedisEventSource`): several workers share
them, each event is handled by one, and an event stays pending until its signal (or its "no signal"
record) is written, so a worker that dies or loses Redis mid-signal leaves it to be retried — by
itself once Redis is back (it re-reads its own pending entries), or by another worker that claims
it after ``claim_idle_ms``. Retries and two workers racing are harmless: the signal store publishes
each (symbol, bar) once.

Per signal (:class:`SignalEngine`), judged on the exchange clock — "now" is the bar's close time:

1. read every window of the symbol in one round trip; when a coarser bar closes at the same boundary
   (12:05 for 5m) and is not in the store yet, re-read for at most ``coarse_wait_ms``;
2. check each component's window (:func:`inference.checks.check_window`); a failing one is dropped;
3. render the inputs in a thread, then run the components in one batch per artifact (all
   EfficientNet timeframes of the symbol in one ``session.run``), in threads behind a semaphore;
   what is not back within the latency budget is dropped as ``late``;
4. weighted ensemble; with no vote, the momentum rule on the finest closes; without even that
   input, no signal and a recorded reason.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from inference.checks import bars_to_array, check_window
from inference.components import LoadedComponent, ModelRegistry, ModelSet
from inference.config import WorkerConfig
from inference.ensemble import Vote, combine
from inference.events import Delivery, EventSource
from inference.fallback import FALLBACK_BARS, THRESHOLD, momentum_score
from inference.metrics import WorkerMetrics
from inference.runtime import ModelSession, RuntimeFailure
from inference.signal import BarRef, ComponentReport, Direction, Freshness, NoSignal, Signal, StageLatency
from inference.signal_store import Published, SignalStore
from streaming.backoff import Backoff
from streaming.clock import ExchangeClock
from streaming.errors import StoreError, StoreUnavailable
from streaming.klines import Bar, interval_ms
from streaming.store import BarEvent, SymbolWindows, WindowStore

__all__ = [
    "SignalEngine",
    "Worker",
]

log = logging.getLogger(__name__)


# --- one signal -----------------------------------------------------------------------------------


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _closed(bars: Sequence[Bar], step: int, now: int) -> list[Bar]:
    """The bars closed at ``now``: a replayed or claimed event is judged as of its own close."""
    if bars and bars[-1].start + step <= now:
        return list(bars)
    return [b for b in bars if b.start + step <= now]


@dataclass
class _Batch:
    session: ModelSession
    members: list[tuple[LoadedComponent, npt.NDArray[np.float32]]]
    started: bool = False


@dataclass
class _Drafts:
    """Component reports being assembled: every component ends with exactly one."""

    reports: dict[str, ComponentReport] = field(default_factory=dict)

    def drop(self, c: LoadedComponent, reason: str, latency_ms: float | None = None) -> None:
        provider = c.session.provider if c.session is not None else ""
        self.reports[c.name] = ComponentReport(
            c.name, c.timeframe, c.spec.horizon, None, c.weight, c.spec.version, provider, latency_ms, "dropped", reason
        )

    def vote(self, c: LoadedComponent, p_up: float, provider: str, latency_ms: float) -> None:
        self.reports[c.name] = ComponentReport(
            c.name, c.timeframe, c.spec.horizon, p_up, c.weight, c.spec.version, provider, latency_ms, "voted", None
        )


class SignalEngine:
    """Windows + models ⇒ a :class:`Signal` or a :class:`NoSignal`, for one closed bar."""

    def __init__(
        self,
        config: WorkerConfig,
        store: WindowStore,
        models: ModelRegistry,
        metrics: WorkerMetrics,
        *,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
    ) -> None:
        self.config = config
        self.store = store
        self.models = models
        self.metrics = metrics
        self.clock = ExchangeClock()
        self._wall_ms = wall_ms
        self._sem = asyncio.Semaphore(config.inference_concurrency)
        # Session runs that missed their budget but had started: a thread cannot be cancelled, so
        # they hold their semaphore slot until they return (keeping concurrency honest).
        self._stragglers: set[asyncio.Task[tuple[npt.NDArray[np.float32], float]]] = set()

    async def compute(self, event: BarEvent) -> Signal | NoSignal:
        """The signal at the close of ``event``'s bar (an event of the finest interval)."""
        t0 = time.perf_counter()
        now = event.start + interval_ms(event.interval)
        models = self.models.current  # one snapshot for the whole signal, whatever a reload does meanwhile
        windows = await self._read(event.symbol, now, models)
        t_read = time.perf_counter()
        self.clock.observe(now)
        if windows.book is not None and windows.book.ts > 0:
            self.clock.observe(windows.book.ts)

        closed = {iv: _closed(windows.bars.get(iv, []), interval_ms(iv), now) for iv in self.config.intervals}
        drafts = _Drafts()
        runnable: list[tuple[LoadedComponent, list[Bar]]] = []
        for c in models.components:
            if c.disabled is not None:
                drafts.drop(c, c.disabled)
            elif c.timeframe not in closed:
                drafts.drop(c, "timeframe_not_ingested")
            elif (reason := check_window(closed[c.timeframe], c.timeframe, c.bars_needed, now)) is not None:
                drafts.drop(c, reason)
            else:
                runnable.append((c, closed[c.timeframe][-c.bars_needed :]))

        deadline = t_read + self.config.latency_budget_ms / 1000.0
        inputs = await asyncio.to_thread(self._render, runnable, drafts) if runnable else []
        t_render = time.perf_counter()
        await self._infer(event.symbol, inputs, drafts, deadline)
        t_infer = time.perf_counter()

        reports = tuple(drafts.reports[c.name] for c in models.components)
        for r in reports:
            if r.status == "dropped" and r.reason is not None:
                self.metrics.components_dropped.labels(r.name, r.reason).inc()
        bar = BarRef(event.interval, event.start, now)
        freshness = Freshness(
            {iv: (bars[-1].start if bars else None) for iv, bars in windows.bars.items()},
            windows.book.state if windows.book is not None else None,
            (self.clock.now_ms() - windows.book.ts) if windows.book is not None and windows.book.ts > 0 else None,
        )
        voters = [r for r in reports if r.status == "voted" and r.p_up is not None]
        try:
            votes = [Vote(r.name, r.p_up, r.weight) for r in voters if r.p_up is not None]
            result = combine(votes, self.config.thresholds)
        except ValueError:
            result = None
        t_ens = time.perf_counter()
        wall = self._wall_ms()
        latency = StageLatency(
            read=_ms(t_read - t0),
            render=_ms(t_render - t_read),
            infer=_ms(t_infer - t_render),
            ensemble=_ms(t_ens - t_infer),
            total=_ms(t_ens - t0),
            bar_close_to_publish=float(wall - now),
        )
        if result is not None:
            horizons = list(dict.fromkeys(r.horizon for r in voters if r.weight > 0))
            return Signal(
                symbol=event.symbol,
                bar=bar,
                produced_at=self.clock.now_ms(),
                produced_wall_ms=wall,
                direction=_direction(result.direction),
                score=result.score,
                p_up=result.p_up,
                confidence=result.confidence,
                agreement=result.agreement,
                source="ensemble",
                fallback_reason=None,
                components=reports,
                freshness=freshness,
                latency_ms=latency,
                horizon="; ".join(horizons),
            )
        return self._fallback(event, bar, closed, reports, models, freshness, latency, wall)

    def _fallback(
        self,
        event: BarEvent,
        bar: BarRef,
        closed: dict[str, list[Bar]],
        reports: tuple[ComponentReport, ...],
        models: ModelSet,
        freshness: Freshness,
        latency: StageLatency,
        wall: int,
    ) -> Signal | NoSignal:
        if not models.components:
            why = "models_missing"
        else:
            reasons = sorted({r.reason or "zero_weight" for r in reports})
            why = "all_components_dropped: " + ", ".join(reasons)
        finest = self.config.finest
        bars = closed.get(finest, [])
        problem = check_window(bars, finest, FALLBACK_BARS, bar.close_time)
        if problem is not None:
            return NoSignal(
                symbol=event.symbol,
                bar=bar,
                reason=f"fallback_input:{problem}",
                detail=f"no component voted ({why}); the fallback rule's {finest}m input: {problem}",
                produced_at=self.clock.now_ms(),
                produced_wall_ms=wall,
            )
        closes = np.array([float(b.close) for b in bars[-FALLBACK_BARS:]], dtype=np.float64)
        score = float(momentum_score(closes)[-1])
        direction = _direction("long" if score > THRESHOLD else "short" if score < -THRESHOLD else "flat")
        return Signal(
            symbol=event.symbol,
            bar=bar,
            produced_at=self.clock.now_ms(),
            produced_wall_ms=wall,
            direction=direction,
            score=max(-1.0, min(1.0, score)),
            p_up=None,
            confidence=None,
            agreement=None,
            source="fallback",
            fallback_reason=why,
            components=reports,
            freshness=freshness,
            latency_ms=latency,
            horizon=f"next {finest}m bar (momentum rule)",
        )

    async def _read(self, symbol: str, now: int, models: ModelSet) -> SymbolWindows:
        intervals = self.config.intervals
        windows = await self.store.read_symbol(symbol, intervals, self.config.book_depth, with_depth=False)
        used = {c.timeframe for c in models.enabled}
        due = [iv for iv in intervals if iv != self.config.finest and iv in used and now % interval_ms(iv) == 0]
        deadline = time.monotonic() + self.config.coarse_wait_ms / 1000.0
        # A coarser bar closing at this boundary is usually written in the same flush as the finest
        # one, but may trail it: wait (bounded) only when its window is current but for that bar.
        while any(_one_behind(windows.bars.get(iv, []), iv, now) for iv in due):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(self.config.coarse_poll_ms / 1000.0, left))
            windows = await self.store.read_symbol(symbol, intervals, self.config.book_depth, with_depth=False)
        return windows

    def _render(
        self, runnable: list[tuple[LoadedComponent, list[Bar]]], drafts: _Drafts
    ) -> list[tuple[LoadedComponent, npt.NDArray[np.float32]]]:
        """Model inputs (runs in a thread). A window the renderer refuses drops its component."""
        out = []
        for c, bars in runnable:
            started = time.perf_counter()
            try:
                x = c.prepare(bars_to_array(bars))
            except (ValueError, ArithmeticError) as exc:
                log.warning("%s: cannot build the input: %s", c.name, exc)
                drafts.drop(c, "bad_values")
                continue
            self.metrics.render_seconds.labels(c.renderer).observe(time.perf_counter() - started)
            out.append((c, x))
        return out

    async def _infer(
        self,
        symbol: str,
        inputs: list[tuple[LoadedComponent, npt.NDArray[np.float32]]],
        drafts: _Drafts,
        deadline: float,
    ) -> None:
        batches: dict[int, _Batch] = {}
        for c, x in inputs:
            assert c.session is not None  # enabled components have one
            batches.setdefault(id(c.session), _Batch(c.session, [])).members.append((c, x))
        if not batches:
            return
        tasks = {
            asyncio.create_task(self._run(b), name=f"infer-{symbol}-{b.session.name}"): b for b in batches.values()
        }
        done, late = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
        for task in late:
            batch = tasks[task]
            for c, _ in batch.members:
                drafts.drop(c, "late")
            if batch.started:
                self._stragglers.add(task)
                task.add_done_callback(self._straggler_done)
            else:
                task.cancel()
        for task in done:
            batch = tasks[task]
            try:
                logits, seconds = task.result()
            except Exception as exc:
                level = logging.WARNING if isinstance(exc, RuntimeFailure) else logging.ERROR
                log.log(level, "%s: %s failed: %s", symbol, batch.session.name, exc)
                for c, _ in batch.members:
                    drafts.drop(c, "error")
                continue
            flat = np.asarray(logits, dtype=np.float64).reshape(-1)
            provider = batch.session.provider
            for i, (c, _) in enumerate(batch.members):
                self.models.note_provider(c.name, provider)
                if len(flat) != len(batch.members) or not math.isfinite(flat[i]):
                    drafts.drop(c, "bad_output", _ms(seconds))
                    continue
                drafts.vote(c, float(1.0 / (1.0 + math.exp(-flat[i]))), provider, _ms(seconds))

    async def _run(self, batch: _Batch) -> tuple[npt.NDArray[np.float32], float]:
        async with self._sem:
            batch.started = True
            x = np.stack([x for _, x in batch.members])
            started = time.perf_counter()
            out = await asyncio.to_thread(batch.session.run, x)
            seconds = time.perf_counter() - started
            self.metrics.inference_seconds.labels(batch.session.name, batch.session.provider).observe(seconds)
            return out, seconds

    def _straggler_done(self, task: asyncio.Task[tuple[npt.NDArray[np.float32], float]]) -> None:
        self._stragglers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a late inference also failed: %s", task.exception())

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let late session runs finish (their threads cannot be interrupted)."""
        if self._stragglers:
            await asyncio.wait(set(self._stragglers), timeout=timeout_s)


def _direction(value: str) -> Direction:
    if value == "long":
        return "long"
    if value == "short":
        return "short"
    return "flat"


def _one_behind(bars: Sequence[Bar], interval: str, now: int) -> bool:
    step = interval_ms(interval)
    closed = _closed(bars, step, now)
    return bool(closed) and closed[-1].start == now - 2 * step


# --- the worker -----------------------------------------------------------------------------------


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
        backoff: Backoff | None = None,
    ) -> None:
        self.config = config
        self.events = events
        self.signals = signals
        self.models = models
        self.metrics = metrics
        self.engine = SignalEngine(config, store, models, metrics)
        self._backoff = backoff or Backoff(config.backoff_base_s, config.backoff_cap_s)
        self._retry_backoff = Backoff(config.backoff_base_s, config.backoff_cap_s)
        self._tasks: list[asyncio.Task[None]] = []
        self._handlers: dict[str, asyncio.Task[None]] = {}  # entry id -> its handler
        self._slots = asyncio.Semaphore(config.max_in_flight)
        self._check_pending = True  # re-read our own pending entries (at start, after a failure)
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
        self._spawn(self._reader(), "worker-reader")
        self._spawn(self._claimer(), "worker-claimer")
        self._spawn(self._backlog(), "worker-backlog")
        self._spawn(self.models.watch(), "worker-models")

    async def run(self) -> None:
        await self.start()
        try:
            await asyncio.gather(*self._tasks)
        finally:
            await self.close()

    def _spawn(self, coro: object, name: str) -> None:
        self._tasks.append(asyncio.create_task(self._supervise(coro, name), name=name))

    async def _supervise(self, coro: object, name: str) -> None:
        try:
            await coro  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("worker task %s crashed", name)
            raise

    async def close(self) -> None:
        """Stop reading, let handlers in flight finish (bounded), then stop. Safe to call twice.

        An event whose handler is cancelled here stays pending in the group: it is retried."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=self.config.close_timeout_s)
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
            outcome = await self._signal(ev)
            await self.events.ack([delivery.id])
            self.metrics.events.labels(outcome).inc()
            self._retry_backoff.reset()
            self.handled += 1
        except StoreUnavailable as exc:
            # Not acknowledged: re-read from our pending list once Redis answers (or claimed by a peer).
            self.metrics.store_errors.inc()
            self.metrics.events.labels("retry").inc()
            delay = self._retry_backoff.next_delay()
            log.warning("event %s left pending, Redis unavailable (%s); retry in %.2f s", delivery.id, exc, delay)
            await asyncio.sleep(delay)
            self._check_pending = True

    async def _signal(self, ev: BarEvent) -> str:
        t0 = time.perf_counter()
        try:
            result = await self.engine.compute(ev)
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
                str(exc)[:500],
                self.engine.clock.now_ms(),
                int(time.time() * 1000),
            )
        if isinstance(result, NoSignal):
            await self.signals.record_no_signal(result)
            self.metrics.no_signals.labels(result.reason).inc()
            return "no_signal"
        published = await self.signals.publish(result)
        if published is Published.DUPLICATE:
            return "duplicate"
        self.metrics.signals.labels(result.source, result.direction).inc()
        if result.fallback_reason is not None:
            self.metrics.fallbacks.labels(result.fallback_reason.split(":")[0]).inc()
        if result.source == "ensemble" and result.agreement is not None and result.confidence is not None:
            self.metrics.agreement.observe(result.agreement)
            self.metrics.confidence.observe(result.confidence)
        self.metrics.signal_compute_seconds.observe(time.perf_counter() - t0)
        self.metrics.bar_close_to_publish_seconds.observe(max(0.0, result.latency_ms.bar_close_to_publish / 1000.0))
        return "published" if published is Published.LATEST else "audited"
