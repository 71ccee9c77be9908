"""The signal engine: a symbol's windows in, a :class:`Signal` or a :class:`NoSignal` out, for one closed bar.

:meth:`SignalEngine.compute` reads the windows through the :class:`WindowStore` protocol and hands
them to :meth:`SignalEngine.signal_at`, which knows nothing of where they came from. No Redis and
no consumer-group logic here: the worker (:mod:`inference.worker`) and offline tools drive the same
engine. Per signal, judged on the exchange clock — "now" is the bar's close time:

1. read every window of the symbol in one round trip; when a coarser bar closes at the same boundary
   (12:05 for 5m) and is not in the store yet, re-read for at most ``coarse_wait_ms``;
2. check each component's window (:func:`inference.checks.check_window`); a failing one is dropped;
3. render the inputs in a thread, then run the components in one batch per artifact (all
   EfficientNet timeframes of the symbol in one ``session.run``), in threads behind a semaphore;
   what is not back within the latency budget is dropped as ``late``;
4. weighted ensemble; with no vote, the momentum rule on the 1h closes; without even that
   input, no signal and a recorded reason.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from inference.checks import bars_to_array, check_window
from inference.components import LoadedComponent, ModelRegistry, ModelSet
from inference.config import WorkerConfig
from inference.ensemble import Vote, combine
from inference.errors import InferenceError
from inference.fallback import FALLBACK_INTERVAL, fallback_signal
from inference.metrics import WorkerMetrics
from inference.runtime import ModelSession, RuntimeFailure
from inference.signal import BarRef, ComponentReport, Freshness, NoSignal, Signal, StageLatency
from streaming.clock import ExchangeClock
from streaming.klines import Bar, interval_ms
from streaming.store import BarEvent, SymbolWindows, WindowStore

__all__ = ["SignalEngine"]

log = logging.getLogger(__name__)


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
        return await self.signal_at(event, windows, models, read_started=t0)

    async def signal_at(
        self, event: BarEvent, windows: SymbolWindows, models: ModelSet, *, read_started: float | None = None
    ) -> Signal | NoSignal:
        """The signal at the close of ``event``'s bar from windows already read (``read_started``: the
        ``perf_counter`` time the read began, for the ``read`` latency; none means no read)."""
        t_read = time.perf_counter()
        t0 = t_read if read_started is None else read_started
        now = event.start + interval_ms(event.interval)
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
                direction=result.direction,
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
        return fallback_signal(
            symbol=event.symbol,
            bar=bar,
            bars=closed.get(FALLBACK_INTERVAL),
            why=why,
            components=reports,
            freshness=freshness,
            latency=latency,
            produced_at=self.clock.now_ms(),
            produced_wall_ms=wall,
        )

    async def _read(self, symbol: str, now: int, models: ModelSet) -> SymbolWindows:
        intervals = self.config.intervals
        windows = await self.store.read_symbol(symbol, intervals, self.config.book_depth, with_depth=False)
        used = {c.timeframe for c in models.enabled} | {FALLBACK_INTERVAL}  # the rule may be needed
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
            # FeatureError / RenderError name a bad window; a bare ValueError or ArithmeticError from
            # NumPy on an odd window still costs only this component, not the whole signal.
            except (InferenceError, ValueError, ArithmeticError) as exc:
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
        # Not a TaskSupervisor's: these tasks live for one signal, are awaited together against its
        # deadline, and the late ones are cancelled or kept as stragglers one by one.
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


def _one_behind(bars: Sequence[Bar], interval: str, now: int) -> bool:
    step = interval_ms(interval)
    closed = _closed(bars, step, now)
    return bool(closed) and closed[-1].start == now - 2 * step
