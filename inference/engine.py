"""The signal engine: a symbol's windows in, a :class:`Signal` or a :class:`NoSignal` out, for one closed bar.

:meth:`SignalEngine.compute` reads the windows through the :class:`WindowStore` protocol and hands
them to :meth:`SignalEngine.signal_at`, which knows nothing of where they came from. No Redis and
no consumer-group logic here: the worker (:mod:`inference.worker`) and offline tools drive the same
engine. Per signal, judged on the exchange clock — "now" is the bar's close time:

1. read every window of the symbol in one round trip; when a coarser bar closes at the same boundary
   (12:05 for 5m) and is not in the store yet, re-read for at most ``coarse_wait_ms``;
2. check each component's window (:class:`inference.checks.WindowCheck`, each window once); a
   failing one is dropped;
3. build the inputs and run the sessions (:class:`inference.runs.SessionRuns`: one batch per
   artifact, rendering overlapping inference; a window unchanged since the component's last vote
   repeats that vote, unrun);
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
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from inference.checks import BarFacts, WindowCheck, bars_to_array, check_window
from inference.components import LoadedComponent, ModelRegistry, ModelSet
from inference.config import WorkerConfig
from inference.decision import decide, slot, stacker_for, vote_report, weighs
from inference.ensemble import Economics, round_bp
from inference.fallback import FALLBACK_INTERVAL, fallback_signal
from inference.metrics import WorkerMetrics
from inference.runs import Drafts, SessionRuns, Window, ms
from inference.signal import BarRef, ComponentReport, Freshness, NoSignal, Signal, StageLatency, horizon_text
from streaming.clock import ExchangeClock
from streaming.errors import StoreError, StoreUnavailable
from streaming.klines import Bar, interval_ms
from streaming.store import BarEvent, SymbolWindows, WindowStore, revised_field

__all__ = ["SignalEngine", "decide", "vote_report"]

log = logging.getLogger(__name__)


def _closed(bars: Sequence[Bar], step: int, now: int) -> list[Bar]:
    """The bars closed at ``now``: a replayed or claimed event is judged as of its own close."""
    if bars and bars[-1].start + step <= now:
        return list(bars)
    return [b for b in bars if b.start + step <= now]


# A leader whose windows could not be decoded (a damaged book or status record): its readers drop out.
_UNREADABLE = SymbolWindows(symbol="", bars={}, book=None, depth=[], status={})


def _leader_window(
    c: LoadedComponent,
    symbol: str,
    closed: Mapping[str, list[Bar]],
    leaders: Mapping[str, SymbolWindows] | None,
    now: int,
    facts: Callable[[str, str], BarFacts],
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
    reason = check_window(bars, c.timeframe, c.bars_needed, now, facts(c.leader, c.timeframe))
    return bars[-c.bars_needed :] if reason is None else f"leader_{reason}"


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
        self.runs = SessionRuns(config, metrics)
        # Per (symbol, interval): the facts of the bars its last signal examined (see BarFacts).
        self._facts: dict[tuple[str, str], BarFacts] = {}

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
        facts: dict[tuple[str, str], BarFacts] = {}

        def facts_of(symbol: str, interval: str) -> BarFacts:
            if (f := facts.get((symbol, interval))) is None:
                f = facts[(symbol, interval)] = BarFacts(self._facts.get((symbol, interval)))
            return f

        checks = {iv: WindowCheck(bars, iv, now, facts_of(event.symbol, iv)) for iv, bars in closed.items()}
        drafts = Drafts()
        runnable: list[Window] = []
        stand_ins = models.stand_ins
        standby: list[Window] = []  # run only if their rung does not vote
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
            elif isinstance(lead := _leader_window(c, event.symbol, closed, leaders, now, facts_of), str):
                drafts.drop(c, lead)
            elif isinstance(depth := self._depth_window(c, windows, now), str):
                drafts.drop(c, depth)
            else:
                rung = stand_ins.get(c.name)
                ready = rung is not None and rung.session is not None and rung.session.broken is None
                if (window := arrays.get(c.timeframe)) is None:  # each timeframe's floats once: its longest tail
                    longest = max(d.bars_needed for d in models.components if d.timeframe == c.timeframe)
                    window = arrays[c.timeframe] = bars_to_array(
                        closed[c.timeframe][-longest:], facts_of(event.symbol, c.timeframe)
                    )
                lead_floats = (
                    None if lead is None or c.leader is None else bars_to_array(lead, facts_of(c.leader, c.timeframe))
                )
                (standby if ready else runnable).append((c, window[-c.bars_needed :], lead_floats, depth))

        for f in facts.values():  # every window's facts are in: what the next signal starts from
            f.settle()
        self._facts.update(facts)
        budget_s = self.config.latency_budget_ms / 1000.0
        deadline = t_read + budget_s
        backed = {id(stand_ins[c.name].session) for c, *_ in standby}  # rungs with a rung below, ready
        rung_deadline = t_read + self.config.rung_share * budget_s
        note = self.models.note_provider
        t_render = await self.runs.run(
            event.symbol, runnable, drafts, deadline, rung_deadline=rung_deadline, backed=backed, note=note
        )
        # The ladder: a component whose rung voted stands by; one whose rung did not runs now.
        fallen = [w for w in standby if drafts.reports[stand_ins[w[0].name].name].status != "voted"]
        for c, *_ in standby:
            if all(c is not f for f, *_ in fallen):
                drafts.drop(c, "standby")
        if fallen and time.perf_counter() < deadline:
            await self.runs.run(event.symbol, fallen, drafts, deadline, note=note)
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
            read=ms(t_read - t0),
            render=ms(t_render - t_read),
            infer=ms(max(0.0, t_infer - t_render)),
            ensemble=ms(t_ens - t_infer),
            total=ms(t_ens - t0),
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

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let late session runs and render threads finish (threads cannot be interrupted); a compute
        after it raises ``RuntimeError`` (its threads are gone)."""
        await self.runs.close(timeout_s)


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
