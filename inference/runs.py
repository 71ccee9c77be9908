"""A signal's session runs: its components' inputs built and their ONNX sessions run, against the
signal's deadline, for :class:`inference.engine.SignalEngine`.

The inputs are built one session's batch at a time (all EfficientNet timeframes of a symbol in one
``session.run``), a ladder rung with a rung below first, then the longest runs by their last; each
batch runs as soon as its own inputs are built, so rendering overlaps inference. The threads are the
engine's own: one builds every signal's inputs in turn (building holds the GIL, so a second would only
take turns with the first and with the threads returning from ONNX Runtime), and the session runs
have as many threads as they have slots (``inference_concurrency``, the ladder's rungs as many again),
so a run that holds a slot starts at once instead of queueing behind renders in a shared pool. Batches
of one session waiting for a slot (other symbols' signals at the same close) share one run
(:meth:`SessionRuns._run`).

A component whose window, leader window and depth rows are exactly those its last vote for the
symbol came from (a 5m window between two 5m closes), on the same CPU session, repeats
that vote with neither render nor run. :class:`Drafts` collects the reports: every component ends
with exactly one.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.components import LoadedComponent
from inference.config import WorkerConfig
from inference.decision import vote_report
from inference.errors import InferenceError
from inference.metrics import WorkerMetrics
from inference.runtime import CPU, ModelSession, RuntimeFailure
from inference.signal import ComponentReport

__all__ = ["Drafts", "SessionRuns", "Window", "ms"]

log = logging.getLogger(__name__)

# A component ready to run: its window as (n, 5) OHLCV floats, its leader's for the same bars (or
# None), and its checked depth window (or None).
Window = tuple[LoadedComponent, npt.NDArray[np.float64], npt.NDArray[np.float64] | None, npt.NDArray[np.float32] | None]


def ms(seconds: float) -> float:
    return round(seconds * 1000.0, 3)


def _digest(w: Window) -> bytes:
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
    """Building a batch's inputs failed in a way the renderer does not name (logged there)."""


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


@dataclass(eq=False)  # a batch is itself, whatever it holds: found and removed by identity
class _Batch:
    """One session's run in a signal: its windows, and their inputs once the render thread has built
    them (``inputs``, set on the event loop); ``members`` are those built, ``failed`` those not."""

    session: ModelSession
    windows: list[Window]
    inputs: asyncio.Future[list[_Built]]
    ran: asyncio.Future[tuple[npt.NDArray[np.float32], float]]  # set by the run its rows were in
    digests: dict[str, bytes] = field(default_factory=dict)  # by component: what its vote is remembered by
    members: list[tuple[LoadedComponent, npt.NDArray[np.float32]]] = field(default_factory=list)
    failed: list[LoadedComponent] = field(default_factory=list)
    started: bool = False  # its rows are in a run (its own, or another signal's it was merged into)
    run_started: float = 0.0  # when that run began (``perf_counter``), once started
    abandoned: bool = False  # its signal gave up on it before a run took it: never taken into one

    @property
    def components(self) -> list[LoadedComponent]:
        return [w[0] for w in self.windows]

    def settle(self, outcome: tuple[npt.NDArray[np.float32], float] | Exception) -> None:
        """Hand the batch its rows' output, or the run's error (not once its task gave up on it)."""
        if self.ran.done():
            return
        if isinstance(outcome, Exception):
            self.ran.set_exception(outcome)
        else:
            self.ran.set_result(outcome)


@dataclass
class Drafts:
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


class SessionRuns:
    """The session runs of one engine's signals: the semaphores that bound them, the late runs still
    in their threads, and each (symbol, component)'s last vote."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics) -> None:
        self.metrics = metrics
        self._sem = asyncio.Semaphore(config.inference_concurrency)
        # A ladder rung's runs (GPU-only) have their own: a stalled GPU holds its slots, not the CPU's.
        self._rung_sem = asyncio.Semaphore(config.inference_concurrency)
        # One thread per slot: a run holding a slot never waits for a thread. One render thread for
        # every signal: rendering holds the GIL, so more would only contend (measured: the top-of-hour
        # burst ~12 % slower with the default pool's six threads rendering side by side).
        n = config.inference_concurrency
        self._run_pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="cc-run")
        self._rung_pool = concurrent.futures.ThreadPoolExecutor(n, thread_name_prefix="cc-rung")
        self._render_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="cc-render")
        # Session runs that missed their budget but had started: a thread cannot be cancelled, so
        # the one running holds its semaphore slot until it returns (keeping concurrency honest).
        self._stragglers: set[asyncio.Task[_Ran]] = set()
        self._renders: set[asyncio.Future[None]] = set()  # render threads still finishing a batch
        self._run_s: dict[str, float] = {}  # each session's last run, by name: the render order
        self._votes: dict[tuple[str, str], _Remembered] = {}  # by (symbol, component): inputs unchanged are not run
        # Built batches waiting for a run slot, by session: the run that takes a slot takes them all.
        self._waiting: dict[int, list[_Batch]] = {}

    def waiting_rows(self) -> dict[str, int]:
        """A snapshot of the rows built and waiting for a run slot, by session name."""
        rows: dict[str, int] = {}
        for batches in self._waiting.values():
            for b in batches:
                rows[b.session.name] = rows.get(b.session.name, 0) + len(b.members)
        return rows

    def _build(
        self, windows: Sequence[Window], built: dict[tuple[Any, ...], npt.NDArray[np.float32] | str]
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

    async def run(
        self,
        symbol: str,
        windows: Sequence[Window],
        drafts: Drafts,
        deadline: float,
        rung_deadline: float | None = None,
        backed: frozenset[int] | set[int] = frozenset(),
        note: Callable[[str, str], None] = lambda name, provider: None,
    ) -> float:
        """Build the inputs of ``windows`` and run them, one batch per session (all EfficientNet
        timeframes in one ``session.run``); returns when the last input was built (``perf_counter``).

        One thread builds the inputs batch by batch, and each batch's run starts as soon as its own
        are built, so the rendering of one batch overlaps the inference of those before it. What is
        not back by ``deadline`` is dropped as ``late``, and so is a ladder rung's whose rung below
        stands by (its session's id in ``backed``) by ``rung_deadline``, so the rung below still has time.
        ``note(component, provider)`` records the provider each vote came from.

        A component reading exactly what its last vote for ``symbol`` was computed from (the same
        window, leader window and depth rows, by :func:`_digest`), on the same CPU session, votes that
        again with neither a render nor a run (latency 0): a 5m window between two 5m closes is read at
        every 1m close."""
        started = time.perf_counter()
        loop = asyncio.get_running_loop()
        batches: dict[int, _Batch] = {}
        for w in windows:
            c, session = w[0], w[0].session
            assert session is not None  # enabled components have one
            digest = _digest(w)
            seen = self._votes.get((symbol, c.name))
            if seen is not None and seen.digest == digest and seen.session() is session:
                self._vote(c, seen.row, session.provider, 0.0, drafts, note)  # the same input: the same vote
                continue
            if (batch := batches.get(id(session))) is None:
                batch = batches[id(session)] = _Batch(session, [], loop.create_future(), loop.create_future())
                # read once set, whoever awaits it: a batch whose task is gone (cancelled at shutdown
                # while merged into another's run) leaves no "exception was never retrieved"
                batch.ran.add_done_callback(lambda f: f.cancelled() or f.exception())
            batch.windows.append(w)
            batch.digests[c.name] = digest
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

        def fail(batch: _Batch, exc: Exception) -> None:  # on the loop
            delivered[0] = time.perf_counter()
            if not batch.inputs.done():
                batch.inputs.set_exception(_RenderFailed(exc))

        def build_all() -> None:  # in the render thread
            built: dict[tuple[Any, ...], npt.NDArray[np.float32] | str] = {}
            for key in order:
                if stop.is_set():
                    break
                batch = batches[key]
                try:
                    inputs = self._build(batch.windows, built)
                except Exception as exc:  # a renderer's bug costs its own batch, not the others nor the signal
                    log.exception("%s: building the inputs of %s failed", symbol, batch.session.name)
                    loop.call_soon_threadsafe(fail, batch, exc)
                else:
                    loop.call_soon_threadsafe(deliver, batch, inputs)

        render = loop.run_in_executor(self._render_pool, build_all)
        # Not a TaskSupervisor's: these tasks live for one signal, are awaited together against its
        # deadline, and the late ones are cancelled or kept as stragglers one by one.
        tasks = {
            asyncio.create_task(self._run(b), name=f"infer-{symbol}-{b.session.name}"): b for b in batches.values()
        }
        late: set[asyncio.Task[_Ran]] = set()
        done: set[asyncio.Task[_Ran]] = set()
        rung_until = deadline if rung_deadline is None else min(rung_deadline, deadline)
        try:
            rungs = {t for t, b in tasks.items() if id(b.session) in backed}
            if rungs and rung_deadline is not None:
                timeout = max(0.0, rung_until - time.perf_counter())
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
                    tasks[task].abandoned = True  # no run may take it while the cancellation is delivered
                    task.cancel()
        for task in late | done:
            batch = tasks[task]
            for c in batch.failed:
                drafts.drop(c, "bad_values")
        for task in late:
            batch = tasks[task]
            for c in _not_failed(batch):
                drafts.drop(c, "late")
            # A rung whose own run took at least half the time it had, and did not finish, has failed;
            # one that only started late, queued behind other signals' runs of it, is dropped, not
            # taken down: the wait says nothing about its GPU.
            allowed = (rung_until if id(batch.session) in backed else deadline) - started
            if batch.session.gpu_only and batch.started and time.perf_counter() - batch.run_started >= allowed / 2:
                batch.session.mark_broken("missed the latency budget")
        for task in done:
            batch = tasks[task]
            try:
                ran = task.result()
            except _RenderFailed:  # logged where it happened
                for c in _not_failed(batch):
                    drafts.drop(c, "error")
                continue
            except Exception as exc:
                level = logging.WARNING if isinstance(exc, RuntimeFailure) else logging.ERROR
                # the message, not the exception: a record holding it would hold the failed run's frames
                log.log(level, "%s: %s failed: %s", symbol, batch.session.name, str(exc))
                for c in _not_failed(batch):  # a ladder rung's GPU failed: the rung below runs
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
                if self._vote(c, row, provider, ms(seconds), drafts, note) and row is not None and provider == CPU:
                    memo = _Remembered(weakref.ref(batch.session), batch.digests[c.name], row.copy())
                    self._votes[(symbol, c.name)] = memo
        return delivered[0]

    @staticmethod
    def _vote(
        c: LoadedComponent,
        row: npt.NDArray[np.float64] | None,
        provider: str,
        ms: float,
        drafts: Drafts,
        note: Callable[[str, str], None],
    ) -> bool:
        """Record ``c``'s vote from its output ``row`` (None: the run's output had the wrong size);
        False when the row is not a vote (``bad_output``). ``note``: where the provider is recorded."""
        note(c.name, provider)
        report = vote_report(c, row, provider, ms) if row is not None else None
        if report is None:
            drafts.drop(c, "bad_output", ms)
            return False
        drafts.vote(c, report)
        return True

    async def _run(self, batch: _Batch) -> _Ran:
        """The batch's session run, once its inputs are built (None: none could be).

        Batches of the same CPU session waiting for a slot (other symbols' signals at the same close)
        go into one ``session.run``, up to :data:`MERGE_ROWS` rows: the one that gets a slot takes
        itself and the others waiting, and each of those returns as soon as that run is done, without
        a slot of its own. With one ONNX Runtime thread a row's output does not depend on the rows
        beside it (bit-identical for every shipped model, checked); a GPU session, or one on several
        threads, is never merged (its kernels may depend on the batch size)."""
        for c, built in await batch.inputs:
            if isinstance(built, str):
                log.warning("%s: cannot build the input: %s", c.name, built)
                batch.failed.append(c)
            else:
                batch.members.append((c, built))
        if not batch.members:
            return None
        waiting = self._waiting.setdefault(id(batch.session), [])
        waiting.append(batch)
        sem = self._rung_sem if batch.session.gpu_only else self._sem
        slot = asyncio.ensure_future(sem.acquire())
        try:
            either: set[asyncio.Future[Any]] = {slot, batch.ran}
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if slot.done() and not slot.cancelled() and not batch.started:
                await self._run_merged(batch.session, _take(waiting, batch, _mergeable(batch.session)))
        finally:
            if not slot.done():
                slot.cancel()  # the run it waited for is done (or the signal is given up)
            elif not slot.cancelled():
                sem.release()
            if not batch.started:  # given up before a run took it
                batch.abandoned = True
                waiting.remove(batch)
            if not waiting and self._waiting.get(id(batch.session)) is waiting:
                del self._waiting[id(batch.session)]
        return await batch.ran

    async def _run_merged(self, session: ModelSession, batches: list[_Batch]) -> None:
        """One ``session.run`` of ``batches``' rows; each batch's ``ran`` gets its rows' output, or the
        error (whatever fails, no batch is left waiting)."""
        now = time.perf_counter()
        for b in batches:
            b.started, b.run_started = True, now
        try:
            sizes = [len(b.members) for b in batches]
            x = np.stack([x for b in batches for _, x in b.members])
            started = time.perf_counter()
            pool = self._rung_pool if session.gpu_only else self._run_pool
            out = np.asarray(await asyncio.get_running_loop().run_in_executor(pool, session.run, x))
            seconds = time.perf_counter() - started
            self._run_s[session.name] = seconds * sizes[0] / len(x)  # the render order: one batch's share
            self.metrics.inference_seconds.labels(session.name, session.provider).observe(seconds)
            if len(batches) == 1:
                parts = [out]
            elif out.ndim and out.size and out.size % len(x) == 0:  # rows in, rows out: each its own
                parts = np.split(out.reshape(len(x), -1), np.cumsum(sizes)[:-1])
            else:  # an output that is not one row per input: no batch can vote from it (bad_output)
                parts = [np.zeros(0, np.float32)] * len(batches)
            for b, part in zip(batches, parts, strict=True):
                b.settle((part, seconds))
        except BaseException as exc:  # the others learn it as an error; a cancellation stays this task's
            failure = exc if isinstance(exc, Exception) else RuntimeFailure(f"{session.name}: the run was cancelled")
            for b in batches:
                b.settle(failure)
            raise

    def _straggler_done(self, task: asyncio.Task[_Ran]) -> None:
        self._stragglers.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("a late inference also failed: %s", str(task.exception()))

    async def close(self, timeout_s: float = 5.0) -> None:
        """Let late session runs and render threads finish (threads cannot be interrupted), then let
        the threads go (one still busy past ``timeout_s`` ends with its run)."""
        if pending := self._stragglers | self._renders:
            await asyncio.wait(pending, timeout=timeout_s)
        for pool in (self._run_pool, self._rung_pool, self._render_pool):
            pool.shutdown(wait=False, cancel_futures=True)


# At most this many rows in one merged run (the first batch always goes in whole): past 16 the
# per-row cost of the image models is flat, and a longer run only delays the signals in it.
MERGE_ROWS = 64


def _mergeable(session: ModelSession) -> bool:
    """A CPU session on one thread: its rows' outputs do not depend on the batch they run in."""
    return session.provider == CPU and session.threads == 1


def _take(waiting: list[_Batch], holder: _Batch, merge: bool) -> list[_Batch]:
    """``holder`` and, when ``merge``, the batches waiting beside it (none given up) while they fit in
    :data:`MERGE_ROWS` rows; all taken are removed from ``waiting``."""
    waiting.remove(holder)
    taken, rows = [holder], len(holder.members)
    for b in list(waiting) if merge else []:
        if not b.abandoned and rows + len(b.members) <= MERGE_ROWS:
            waiting.remove(b)
            taken.append(b)
            rows += len(b.members)
    return taken


def _not_failed(batch: _Batch) -> list[LoadedComponent]:
    """The batch's components but those whose input could not be built (dropped as ``bad_values``)."""
    failed = {id(c) for c in batch.failed}
    return [c for c in batch.components if id(c) not in failed]
