"""The signal engine: a symbol's windows in, a :class:`Signal` or a :class:`NoSignal` out, for one closed bar.

:meth:`SignalEngine.compute` reads the windows through the :class:`WindowStore` protocol and hands
them to :meth:`SignalEngine.signal_at`, which knows nothing of where they came from. No Redis and
no consumer-group logic here: the worker (:mod:`inference.worker`) and offline tools drive the same
engine. Per signal, judged on the exchange clock — "now" is the bar's close time:

1. read every window of the symbol in one round trip; when a coarser bar closes at the same boundary
   (12:05 for 5m) and is not in the store yet, re-read for at most ``coarse_wait_ms``;
2. check each component's window (:class:`inference.checks.WindowCheck`, each window once); a
   failing one is dropped;
3. render the inputs in a thread, one batch per artifact at a time (all EfficientNet timeframes of
   the symbol in one ``session.run``), and run each batch as soon as its inputs are built, in threads
   behind a semaphore, so rendering overlaps inference; a component whose window is exactly the one
   its last vote for the symbol came from (a 5m window between 5m closes) repeats that vote, unrun;
   what is not back within the latency budget is dropped as ``late``; a ladder rung (the B3) whose
   rung below stands by has the first ``rung_share`` of it (half): late by then, it is dropped and
   the rung below runs in the rest, in the same signal;
4. a component forecasting another horizon than the configured ``horizon_minutes`` is dropped as
   ``horizon_mismatch``; the votes are stacked and calibrated as the manifest's ``ensemble`` says
   (weighted mean for a manifest without one), the call priced (:func:`inference.ensemble.economics`);
   with no vote, the momentum rule on the 1h closes; without even that input, no signal and a
   recorded reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.checks import WindowCheck, bars_to_array, check_window
from inference.components import LoadedComponent, ModelRegistry, ModelSet
from inference.config import WorkerConfig
from inference.decision import decide, slot, stacker_for, vote_report, weighs
from inference.ensemble import Economics, round_bp
from inference.errors import InferenceError
from inference.fallback import FALLBACK_INTERVAL, fallback_signal
from inference.metrics import WorkerMetrics
from inference.runtime import CPU, ModelSession, RuntimeFailure
from inference.signal import BarRef, ComponentReport, Freshness, NoSignal, Signal, StageLatency, horizon_text
from streaming.clock import ExchangeClock
from streaming.errors import StoreError, StoreUnavailable
from streaming.klines import Bar, interval_ms
from streaming.store import BarEvent, SymbolWindows, WindowStore, revised_field

__all__ = ["SignalEngine", "decide", "vote_report"]

log = logging.getLogger(__name__)


def _ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _closed(bars: Sequence[Bar], step: int, now: int) -> list[Bar]:
    """The bars closed at ``now``: a replayed or claimed event is judged as of its own close."""
    if bars and bars[-1].start + step <= now:
        return list(bars)
    return [b for b in bars if b.start + step <= now]


# A leader whose windows could not be decoded (a damaged book or status record): its readers drop out.
_UNREADABLE = SymbolWindows(symbol="", bars={}, book=None, depth=[], status={})

# A component ready to run: its window as (n, 5) OHLCV floats, its leader's for the same bars (or
# None), and its checked depth window (or None).
_Window = tuple[
    LoadedComponent, npt.NDArray[np.float64], npt.NDArray[np.float64] | None, npt.NDArray[np.float32] | None
]


def _leader_window(
    c: LoadedComponent,
    symbol: str,
    closed: Mapping[str, list[Bar]],
    leaders: Mapping[str, SymbolWindows] | None,
    now: int,
) -> list[Bar] | str | None:
    """The leader's window a component reads beside the symbol's (None: it reads none; the leader
    itself reads its own window twice), or why it cannot: ``leader_not_ingested`` (the service does
    not hold the leader), else ``leader_`` + the leader window's check (``leader_stale_window``, ...)."""
    if c.leader is None:
        return None
    if c.leader == symbol:
        return closed[c.timeframe][-c.bars_needed :]
    held = (leaders or {}).get(c.leader)
    if held is _UNREADABLE:
        return "leader_unreadable"
    if held is None or not held.bars.get(c.timeframe):
        return "leader_not_ingested"
    if c.timeframe in held.corrupt:
        return "leader_corrupt_window"
    if held.status.get(revised_field(c.timeframe)):
        return "leader_unreconciled_window"
    bars = _closed(held.bars[c.timeframe], interval_ms(c.timeframe), now)
    reason = check_window(bars, c.timeframe, c.bars_needed, now)
    return bars[-c.bars_needed :] if reason is None else f"leader_{reason}"


def _digest(w: _Window) -> bytes:
    """What a component's input is computed from (its window, its leader's, its depth rows, and how:
    :attr:`LoadedComponent.input_key`), exactly."""
    h = hashlib.blake2b(repr(w[0].input_key).encode(), digest_size=16)
    for part in w[1:]:
        if part is None:
            h.update(b"-")
            continue
        h.update(f"{part.dtype.str}{part.shape}".encode())
        h.update(np.ascontiguousarray(part).data)
    return h.digest()


class _RenderFailed(Exception):
    """The render thread failed (logged there): the batches it had not built yet fail with it."""


@dataclass(frozen=True, slots=True)
class _Remembered:
    """A component's last vote for a symbol: the session that computed it, the digest of what its input
    was computed from (:func:`_digest`), its output row."""

    session: weakref.ref[ModelSession]
    digest: bytes
    row: npt.NDArray[np.float64]


# A component's built input, or why it could not be built.
_Built = tuple[LoadedComponent, npt.NDArray[np.float32] | str]
# A batch's run: its output and the seconds it took; None: none of its inputs could be built.
_Ran = tuple[npt.NDArray[np.float32], float] | None


@dataclass
class _Batch:
    """One session's run in a signal: its components, and their inputs once the render thread has
    built them (``inputs``, set on the event loop); ``members`` are those built, ``failed`` those not."""

    session: ModelSession
    components: list[LoadedComponent]
    inputs: asyncio.Future[list[_Built]]
    digests: dict[str, bytes] = field(default_factory=dict)  # by component: what its vote is remembered by
    members: list[tuple[LoadedComponent, npt.NDArray[np.float32]]] = field(default_factory=list)
    failed: list[LoadedComponent] = field(default_factory=list)
    started: bool = False


@dataclass
class _Drafts:
    """Component reports being assembled: every component ends with exactly one."""

    reports: dict[str, ComponentReport] = field(default_factory=dict)

    def drop(self, c: LoadedComponent, reason: str, latency_ms: float | None = None) -> None:
        provider = c.session.provider if c.session is not None else ""
        self.reports[c.name] = ComponentReport(
            c.name,
            c.timeframe,
            c.spec.horizon,
            None,
            c.weight,
            c.spec.version,
            provider,
            latency_ms,
            "dropped",
            reason,
            c.spec.horizon_min,
            stands_in_for=c.spec.stands_in_for or None,
        )

    def vote(self, c: LoadedComponent, report: ComponentReport) -> None:
        self.reports[c.name] = report


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
        # A ladder rung's runs (GPU-only) have their own: a stalled GPU holds its slots, not the CPU's.
        self._rung_sem = asyncio.Semaphore(config.inference_concurrency)
        # Session runs that missed their budget but had started: a thread cannot be cancelled, so
        # they hold their semaphore slot until they return (keeping concurrency honest).
        self._run_s: dict[str, float] = {}  # each session's last run, by name: the render order
        self._votes: dict[tuple[str, str], _Remembered] = {}  # by (symbol, component): inputs unchanged are not run
        self._stragglers: set[asyncio.Task[_Ran]] = set()
        self._renders: set[asyncio.Future[float]] = set()  # render threads still finishing a batch

    async def compute(self, event: BarEvent) -> Signal | NoSignal:
        """The signal at the close of ``event``'s bar (an event of the finest interval)."""
        return (await self.compute_read(event))[0]

    async def compute_read(self, event: BarEvent) -> tuple[Signal | NoSignal, SymbolWindows]:
        """:meth:`compute`, and the windows it was computed from (the worker scores past signals on them)."""
        t0 = time.perf_counter()
        now = event.start + interval_ms(event.interval)
        models = self.models.current  # one snapshot for the whole signal, whatever a reload does meanwhile
        # the symbol's windows and its leaders' (BTCUSDT for the two-layer CIPM) at once: one bounded wait
        windows, leaders = await asyncio.gather(
            self._read(event.symbol, now, models), self._read_leaders(event.symbol, now, models)
        )
        for iv in sorted(windows.corrupt):  # its components drop out; the ingestor rebuilds it from REST
            try:
                await self.store.request_repair(event.symbol, iv)
            except StoreError as exc:  # asked again at the next signal; this one goes on
                log.warning("%s %s: could not ask for a repair: %s", event.symbol, iv, exc)
        return await self.signal_at(event, windows, models, read_started=t0, leaders=leaders), windows

    async def signal_at(
        self,
        event: BarEvent,
        windows: SymbolWindows,
        models: ModelSet,
        *,
        read_started: float | None = None,
        leaders: Mapping[str, SymbolWindows] | None = None,
    ) -> Signal | NoSignal:
        """The signal at the close of ``event``'s bar from windows already read (``read_started``: the
        ``perf_counter`` time the read began, for the ``read`` latency; none means no read).
        ``leaders``: the windows of the symbols components read beside this one's (BTCUSDT for the
        two-layer CIPM), by symbol; one missing drops those components (``leader_not_ingested``)."""
        t_read = time.perf_counter()
        t0 = t_read if read_started is None else read_started
        now = event.start + interval_ms(event.interval)
        self.clock.observe(now)
        if windows.book is not None and windows.book.ts > 0:
            self.clock.observe(windows.book.ts)

        closed = {iv: _closed(windows.bars.get(iv, []), interval_ms(iv), now) for iv in self.config.intervals}
        # A window with a rewritten closed bar waits for the ingestor's REST reconcile (store.revised_field).
        unreconciled = {iv for iv in self.config.intervals if windows.status.get(revised_field(iv))}
        checks = {iv: WindowCheck(bars, iv, now) for iv, bars in closed.items()}  # each window examined once
        drafts = _Drafts()
        runnable: list[_Window] = []
        stand_ins = models.stand_ins
        standby: list[_Window] = []  # run only if their rung does not vote
        arrays: dict[str, npt.NDArray[np.float64]] = {}
        for c in models.components:
            if c.disabled is not None:
                drafts.drop(c, c.disabled)
            elif c.session is not None and c.session.broken is not None:
                drafts.drop(c, "gpu_failed")  # since a failed run: the rung below serves
            elif c.spec.horizon_min != self.config.horizon_minutes:
                drafts.drop(c, "horizon_mismatch")
            elif c.timeframe not in closed:
                drafts.drop(c, "timeframe_not_ingested")
            elif c.timeframe in windows.corrupt:
                drafts.drop(c, "corrupt_window")
            elif c.timeframe in unreconciled:
                drafts.drop(c, "unreconciled_window")
            elif (reason := checks[c.timeframe].reason(c.bars_needed)) is not None:
                drafts.drop(c, reason)
            elif isinstance(lead := _leader_window(c, event.symbol, closed, leaders, now), str):
                drafts.drop(c, lead)
            elif isinstance(depth := self._depth_window(c, windows, now), str):
                drafts.drop(c, depth)
            else:
                rung = stand_ins.get(c.name)
                ready = rung is not None and rung.session is not None and rung.session.broken is None
                window = arrays.get(c.timeframe)
                if window is None or len(window) < c.bars_needed:  # each timeframe's floats once, its longest tail
                    longest = max(d.bars_needed for d in models.components if d.timeframe == c.timeframe)
                    window = arrays[c.timeframe] = bars_to_array(closed[c.timeframe][-longest:])
                lead_floats = None if lead is None else bars_to_array(lead)
                (standby if ready else runnable).append((c, window[-c.bars_needed :], lead_floats, depth))

        budget_s = self.config.latency_budget_ms / 1000.0
        deadline = t_read + budget_s
        backed = {id(stand_ins[c.name].session) for c, *_ in standby}  # rungs with a rung below, ready
        rung_deadline = t_read + self.config.rung_share * budget_s
        t_render = await self._infer(
            event.symbol, runnable, drafts, deadline, rung_deadline=rung_deadline, backed=backed
        )
        # The ladder: a component whose rung voted stands by; one whose rung did not runs now.
        fallen = [w for w in standby if drafts.reports[stand_ins[w[0].name].name].status != "voted"]
        for c, *_ in standby:
            if all(c is not f for f, *_ in fallen):
                drafts.drop(c, "standby")
        if fallen and time.perf_counter() < deadline:
            await self._infer(event.symbol, fallen, drafts, deadline)
        for c, *_ in fallen:  # no time left for the rung below: nothing started, nothing wasted
            if c.name not in drafts.reports:
                drafts.drop(c, "late")
        t_infer = time.perf_counter()

        # A ladder's idle rung (no GPU for the B3; the B0 standing by) and an opt-in component left off
        # are not voices of this signal: `ladder` says which rung ran, the models metrics what is loaded.
        reports = tuple(r for r in (drafts.reports[c.name] for c in models.components) if r.reason not in IDLE)
        for r in reports:
            if r.status == "dropped" and r.reason is not None:
                self.metrics.components_dropped.labels(r.name, r.reason).inc()
        bar = BarRef(event.interval, event.start, now)
        freshness = Freshness(
            # as of this bar's close (what it was computed from), even when a late event finds newer bars
            {iv: (bars[-1].start if bars else None) for iv, bars in closed.items()},
            windows.book.state if windows.book is not None else None,
            (self.clock.now_ms() - windows.book.ts) if windows.book is not None and windows.book.ts > 0 else None,
        )
        voters = [r for r in reports if r.status == "voted" and r.p_up is not None]
        # the voices answering H are slots: a ladder (B3 over B0) is one, whichever rung of it ran; a
        # component whose vote weighs nothing (an opt-in one outside the stacker) is shown, not counted
        stacker = stacker_for(models.ensemble, self.config.horizon_minutes)
        answering = {
            slot(r)
            for r in reports
            if r.horizon_minutes == self.config.horizon_minutes and weighs(slot(r), r.weight, stacker)
        }
        finest = closed.get(self.config.finest, [])
        reference = float(finest[-1].close) if finest else None
        closes = _contiguous_closes(finest, self.config.finest)
        result, money = decide(voters, models.ensemble, self.config, closes, len(answering))
        if models.ensemble is not None and result is not None and result.calibrated:
            # a report's weight is what its vote counted for: the stacker's
            stacked = models.ensemble.weights
            reports = tuple(replace(r, weight=stacked.get(r.stands_in_for or r.name, 0.0)) for r in reports)
        t_ens = time.perf_counter()
        wall = self._wall_ms()
        latency = StageLatency(
            read=_ms(t_read - t0),
            render=_ms(t_render - t_read),
            infer=_ms(max(0.0, t_infer - t_render)),
            ensemble=_ms(t_ens - t_infer),
            total=_ms(t_ens - t0),
            bar_close_to_publish=float(wall - now),
        )
        if result is not None:
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
                horizon=horizon_text(self.config.horizon_minutes),
                horizon_minutes=self.config.horizon_minutes,
                reference_price=reference,
                expected_move_bp=round_bp(money.expected_move_bp),
                volatility_bp=round_bp(money.volatility_bp),
                edge_bp=round_bp(money.edge_bp),
                cost_bp=money.cost_bp,
                tradeable=money.tradeable,
                calibrated=result.calibrated,
                partial=len({slot(r) for r in voters} & answering) < len(answering),
                models=models.id,
                ladder=ladder_rung(voters, models),
            )
        # no vote: ``money`` is priced without a probability (no edge, never tradeable)
        refused = "unreconciled_window" if FALLBACK_INTERVAL in unreconciled else None
        out = self._fallback(event, bar, closed, reports, models, freshness, latency, wall, reference, money, refused)
        return replace(out, models=models.id) if isinstance(out, Signal) else out

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
        reference: float | None,
        money: Economics,
        refused: str | None = None,
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
            horizon_minutes=self.config.horizon_minutes,
            reference_price=reference,
            money=money,
            refused=refused,
        )

    def _depth_window(
        self, c: LoadedComponent, windows: SymbolWindows, now: int
    ) -> npt.NDArray[np.float32] | str | None:
        """The checked depth window a component reads (None: it reads none), or why it cannot: the
        book not READY when read (``book_not_ready``: it may have been rebuilt inside the window), another
        book depth than it was trained on (``book_depth_mismatch``), else the window's own check."""
        if not c.reads_depth:
            return None
        if int(c.spec.preprocessing["book_depth"]) != self.config.book_depth:
            return "book_depth_mismatch"
        if windows.book is None or windows.book.state != "READY":
            return "book_not_ready"
        return c.depth_input(windows.depth, now)

    async def _read(self, symbol: str, now: int, models: ModelSet) -> SymbolWindows:
        intervals = self.config.intervals
        # only the timeframes of components that answer this horizon (the others are dropped anyway)
        answering = [c for c in models.enabled if c.spec.horizon_min == self.config.horizon_minutes]
        used = {c.timeframe for c in answering}
        used.add(FALLBACK_INTERVAL)  # the rule may be needed
        due = [iv for iv in intervals if iv != self.config.finest and iv in used and now % interval_ms(iv) == 0]
        # A coarser bar closing at this boundary is usually written in the same flush as the finest
        # one, but may trail it: wait (bounded) only when its window is current but for that bar.
        # The depth rows (hundreds of KB) only when a component reads them, and only its grid's span.
        spans = [c.depth_span_ms for c in answering if c.reads_depth]
        after = now - max(spans) - 1 if spans else None  # a row exactly that old still counts
        return await self._read_until_current(symbol, intervals, due, now, depth_after_ms=after)

    async def _read_until_current(
        self, symbol: str, intervals: Sequence[str], due: Sequence[str], now: int, *, depth_after_ms: int | None = None
    ) -> SymbolWindows:
        """Read ``symbol``'s windows (and its depth rows after ``depth_after_ms``, when given); re-read for
        at most ``coarse_wait_ms`` while a window of ``due`` is current but for the bar closing at ``now``."""
        depth, with_depth = self.config.book_depth, depth_after_ms is not None
        windows = await self.store.read_symbol(
            symbol, intervals, depth, with_depth=with_depth, depth_after_ms=depth_after_ms
        )
        deadline = time.monotonic() + self.config.coarse_wait_ms / 1000.0
        while any(_one_behind(windows.bars.get(iv, []), iv, now) for iv in due):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            await asyncio.sleep(min(self.config.coarse_poll_ms / 1000.0, left))
            windows = await self.store.read_symbol(
                symbol, intervals, depth, with_depth=with_depth, depth_after_ms=depth_after_ms
            )
        return windows

    async def _read_leaders(self, symbol: str, now: int, models: ModelSet) -> dict[str, SymbolWindows]:
        """The windows of the symbols components read beside ``symbol``'s (the two-layer CIPM's
        BTCUSDT). A leader's bar closing at ``now`` may trail this symbol's by a moment: it is waited
        for as a coarser bar is."""
        wanted: dict[str, set[str]] = {}
        for c in models.enabled:
            if c.leader is not None and c.leader != symbol and c.spec.horizon_min == self.config.horizon_minutes:
                wanted.setdefault(c.leader, set()).add(c.timeframe)
        out = {}
        for leader, used in sorted(wanted.items()):
            intervals = tuple(iv for iv in self.config.intervals if iv in used)
            try:
                out[leader] = await self._read_until_current(leader, intervals, intervals, now)
            except StoreUnavailable:
                raise  # Redis itself is down: this signal cannot be read either
            except StoreError as exc:  # a damaged record of the leader's costs its readers, not the signal
                log.warning("%s: the leader %s cannot be read: %s", symbol, leader, exc)
                out[leader] = _UNREADABLE
        return out

    def _build(
        self, windows: Sequence[_Window], built: dict[tuple[Any, ...], npt.NDArray[np.float32] | str]
    ) -> list[_Built]:
        """Model inputs (in the render thread). A window the renderer refuses yields its reason.

        Components fed the same input (:attr:`LoadedComponent.input_key`) share one computation: ``built``
        holds every input of the signal so far."""
        out: list[_Built] = []
        for c, ohlcv, lead, depth in windows:
            key = c.input_key
            if key not in built:
                started = time.perf_counter()
                try:
                    built[key] = c.prepare(ohlcv, lead, depth)
                # FeatureError / RenderError name a bad window; a bare ValueError or ArithmeticError from
                # NumPy on an odd window still costs only these components, not the whole signal.
                except (InferenceError, ValueError, ArithmeticError) as exc:
                    built[key] = str(exc)
                else:
                    self.metrics.render_seconds.labels(c.renderer).observe(time.perf_counter() - started)
            out.append((c, built[key]))
        return out

    async def _infer(
        self,
        symbol: str,
        windows: Sequence[_Window],
        drafts: _Drafts,
        deadline: float,
        rung_deadline: float | None = None,
        backed: frozenset[int] | set[int] = frozenset(),
    ) -> float:
        """Build the inputs of ``windows`` and run them, one batch per session (all EfficientNet
        timeframes in one ``session.run``); returns when the last input was built (``perf_counter``).

        One thread builds the inputs batch by batch, and each batch's run starts as soon as its own
        are built, so the rendering of one batch overlaps the inference of those before it. What is
        not back by ``deadline`` is dropped as ``late``, and so is a ladder rung's whose rung below
        stands by (its session's id in ``backed``) by ``rung_deadline``, so the rung below still has time.

        A component reading exactly what its last vote for ``symbol`` was computed from (the same
        window, leader window and depth rows, by :func:`_digest`), on the same CPU session, votes that
        again with neither a render nor a run (latency 0): a 5m window between two 5m closes is read at
        every 1m close."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        batches: dict[int, _Batch] = {}
        groups: dict[int, list[_Window]] = {}
        for w in windows:
            c, session = w[0], w[0].session
            assert session is not None  # enabled components have one
            digest = _digest(w)
            seen = self._votes.get((symbol, c.name))
            if seen is not None and seen.digest == digest and seen.session() is session:
                self._vote(c, seen.row, session.provider, 0.0, drafts)  # the same input: the same vote
                continue
            if id(session) not in batches:
                batches[id(session)] = _Batch(session, [], loop.create_future())
                groups[id(session)] = []
            batches[id(session)].components.append(c)
            batches[id(session)].digests[c.name] = digest
            groups[id(session)].append(w)
        if not batches:
            return started
        # a ladder rung with a rung below first (it has the earlier deadline), then the longest runs
        # (by their last), so the slowest batch is not the last to start
        order = sorted(batches, key=lambda k: (k not in backed, -self._run_s.get(batches[k].session.name, 0.0)))
        delivered = [started]  # when the last batch's inputs were handed over (the render stage's end)
        stop = threading.Event()  # set once the signal no longer waits: the thread builds no more

        def deliver(batch: _Batch, built: list[_Built]) -> None:  # on the loop
            delivered[0] = time.perf_counter()
            if not batch.inputs.done():
                batch.inputs.set_result(built)

        def fail(exc: Exception) -> None:  # on the loop: every batch not yet built fails with it
            delivered[0] = time.perf_counter()
            for b in batches.values():
                if not b.inputs.done():
                    b.inputs.set_exception(_RenderFailed(exc))

        def build_all() -> float:  # in the render thread
            built: dict[tuple[Any, ...], npt.NDArray[np.float32] | str] = {}
            try:
                for key in order:
                    if stop.is_set():
                        break
                    loop.call_soon_threadsafe(deliver, batches[key], self._build(groups[key], built))
            except Exception as exc:  # a renderer's bug costs the components not yet built, not the signal
                log.exception("%s: building the inputs failed", symbol)
                loop.call_soon_threadsafe(fail, exc)
            return time.perf_counter()

        render = asyncio.ensure_future(asyncio.to_thread(build_all))
        # Not a TaskSupervisor's: these tasks live for one signal, are awaited together against its
        # deadline, and the late ones are cancelled or kept as stragglers one by one.
        tasks = {
            asyncio.create_task(self._run(b), name=f"infer-{symbol}-{b.session.name}"): b for b in batches.values()
        }
        late: set[asyncio.Task[_Ran]] = set()
        done: set[asyncio.Task[_Ran]] = set()
        try:
            rungs = {t for t, b in tasks.items() if id(b.session) in backed}
            if rungs and rung_deadline is not None:
                timeout = max(0.0, min(rung_deadline, deadline) - time.perf_counter())
                _, late = await asyncio.wait(rungs, timeout=timeout)
            if rest := set(tasks) - late:
                done, also_late = await asyncio.wait(rest, timeout=max(0.0, deadline - time.perf_counter()))
                late |= also_late
        except asyncio.CancelledError:  # the signal itself is cancelled (a worker shutting down)
            late = {t for t in tasks if not t.done()}
            raise
        finally:
            stop.set()  # the render thread builds no more
            if not render.done():  # it finishes the batch in hand in the background (close() waits)
                self._renders.add(render)
                render.add_done_callback(self._renders.discard)
            for task in late:  # what has started runs on (a thread cannot be interrupted); the rest never will
                if tasks[task].started:
                    self._stragglers.add(task)
                    task.add_done_callback(self._straggler_done)
                else:
                    task.cancel()
        for task in late | done:
            batch = tasks[task]
            for c in batch.failed:
                drafts.drop(c, "bad_values")
        for task in late:
            batch = tasks[task]
            for c in _unbuilt_or_built(batch):
                drafts.drop(c, "late")
            if batch.session.gpu_only and batch.started:  # a rung that ran past its time has failed
                batch.session.mark_broken("missed the latency budget")
        for task in done:
            batch = tasks[task]
            try:
                ran = task.result()
            except _RenderFailed:  # logged where it happened
                for c in _unbuilt_or_built(batch):
                    drafts.drop(c, "error")
                continue
            except Exception as exc:
                level = logging.WARNING if isinstance(exc, RuntimeFailure) else logging.ERROR
                log.log(level, "%s: %s failed: %s", symbol, batch.session.name, exc)
                for c in _unbuilt_or_built(batch):  # a ladder rung's GPU failed: the rung below runs
                    drafts.drop(c, "gpu_failed" if batch.session.gpu_only else "error")
                continue
            if ran is None:  # none of its inputs could be built
                continue
            logits, seconds = ran
            out = np.asarray(logits, dtype=np.float64)
            rows = out.reshape(len(batch.members), -1) if out.size and out.size % len(batch.members) == 0 else None
            provider = batch.session.provider
            for i, (c, _) in enumerate(batch.members):
                row = rows[i] if rows is not None else None
                # remembered from the CPU only: a GPU's run is cheap, and each run finds a lost GPU at once
                if self._vote(c, row, provider, _ms(seconds), drafts) and row is not None and provider == CPU:
                    memo = _Remembered(weakref.ref(batch.session), batch.digests[c.name], row.copy())
                    self._votes[(symbol, c.name)] = memo
        return delivered[0]

    def _vote(
        self, c: LoadedComponent, row: npt.NDArray[np.float64] | None, provider: str, ms: float, drafts: _Drafts
    ) -> bool:
        """Record ``c``'s vote from its output ``row`` (None: the run's output had the wrong size);
        False when the row is not a vote (``bad_output``)."""
        self.models.note_provider(c.name, provider)
        report = vote_report(c, row, provider, ms) if row is not None else None
        if report is None:
            drafts.drop(c, "bad_output", ms)
            return False
        drafts.vote(c, report)
        return True

    async def _run(self, batch: _Batch) -> _Ran:
        """The batch's session run, once its inputs are built (None: none could be)."""
        for c, built in await batch.inputs:
            if isinstance(built, str):
                log.warning("%s: cannot build the input: %s", c.name, built)
                batch.failed.append(c)
            else:
                batch.members.append((c, built))
        if not batch.members:
            return None
        async with self._rung_sem if batch.session.gpu_only else self._sem:
            batch.started = True
            x = np.stack([x for _, x in batch.members])
            started = time.perf_counter()
            out = await asyncio.to_thread(batch.session.run, x)
            seconds = time.perf_counter() - started
            self._run_s[batch.session.name] = seconds
            self.metrics.inference_seconds.labels(batch.session.name, batch.session.provider).observe(seconds)
            return out, seconds

    def _straggler_done(self, task: asyncio.Task[_Ran]) -> None:
        self._stragglers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a late inference also failed: %s", task.exception())

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let late session runs and render threads finish (threads cannot be interrupted)."""
        if pending := self._stragglers | self._renders:
            await asyncio.wait(pending, timeout=timeout_s)


def _unbuilt_or_built(batch: _Batch) -> list[LoadedComponent]:
    """The batch's components but those whose input could not be built (dropped as ``bad_values``)."""
    failed = {id(c) for c in batch.failed}
    return [c for c in batch.components if id(c) not in failed]


# Reports of components not meant to run here: a ladder's idle rungs, an opt-in component the
# operator did not enable. Left out of the signal (not missing votes, not drop events).
IDLE = frozenset({"gpu_not_bound", "standby", "opt_in_only"})


def ladder_rung(voters: Sequence[ComponentReport], models: ModelSet) -> str | None:
    """Which rung of the image-model ladder voted: ``efficientnet-b3`` over ``efficientnet-b0``
    (the variant of the highest rung that voted); None when no image model voted."""
    kinds = {c.name: c for c in models.components}
    rungs = [kinds[r.name] for r in voters if r.name in kinds and kinds[r.name].spec.kind == "efficientnet"]
    if not rungs:
        return None
    top = max(rungs, key=lambda c: bool(c.spec.stands_in_for))
    return f"efficientnet-{top.spec.variant or 'b0'}"


def _contiguous_closes(bars: Sequence[Bar], interval: str) -> list[float]:
    """The closes of the newest run of consecutive bars: a return across a hole is not one bar's."""
    step = interval_ms(interval)
    first = len(bars) - 1
    while first > 0 and bars[first].start - bars[first - 1].start == step:
        first -= 1
    return [float(b.close) for b in bars[max(first, 0) :]]


def _one_behind(bars: Sequence[Bar], interval: str, now: int) -> bool:
    step = interval_ms(interval)
    closed = _closed(bars, step, now)
    return bool(closed) and closed[-1].start == now - 2 * step
