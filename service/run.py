"""``candlecast run``: ingestion, worker and API in one process and one event loop.

Redis when ``CANDLECAST_REDIS_URL`` is set, the in-memory store, event source and signal store
otherwise. With ``--replay`` an exchange simulator on loopback replays real bars, so the whole
service runs with no internet. Every part is owned here and shut down in order (API first, so no
request sees a half-stopped service; then the worker; then ingestion; then the stores).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path

from prometheus_client import CollectorRegistry

from inference.config import WorkerConfig
from inference.metrics import WorkerMetrics
from inference.signal_store import MemorySignalStore, RedisSignalStore
from service import compose
from service.settings import ConfigError, Settings
from streaming.errors import StoreError, StoreUnavailable
from streaming.ingestor import IngestConfig, Ingestor
from streaming.metrics import IngestMetrics
from streaming.redis_store import RedisStore
from streaming.sim.server import ExchangeSimulator
from streaming.store import WindowStore
from streaming.supervisor import TaskSupervisor

__all__ = ["run_service"]

log = logging.getLogger(__name__)


async def run_service(
    settings: Settings,
    ingest: IngestConfig,
    worker_config: WorkerConfig,
    *,
    replay: list[Path] | None = None,
    speed: float = 60.0,
    replay_offset_bars: int | None = None,
    loop: bool = False,
    bound: asyncio.Future[str] | None = None,
) -> None:
    """Run until cancelled, or until a replay reaches the end of its data (then again from its start
    with ``loop``: a fresh namespace each time). ``replay_offset_bars``: history before the replay
    clock (None: chosen from the data). ``bound`` receives the API's base URL once it listens, start-up
    done (the CLI freezes the start-up heap then; tests learn the URL)."""
    while True:
        try:
            await _run_once(settings, ingest, worker_config, replay, speed, replay_offset_bars, bound)
            return
        except _ReplayEnded as ended:
            if not loop:
                log.warning("%s; stopping (candlecast run --loop replays it again)", ended)
                return
            log.warning("%s; replaying it again from the start (--loop)", ended)
            bound = None


class _ReplayEnded(Exception):
    """The replay reached the end of its data."""


async def _end_of(
    sim: ExchangeSimulator, store: WindowStore, signals: RedisSignalStore | MemorySignalStore, depth: int
) -> str:
    """Once the data have ended and the worker has signalled (and scored) the last bars: a run that
    stopped at the last frame would drop the signals of the closes still in its backlog."""
    await sim.finished.wait()
    if not await _caught_up(sim.symbols, store, signals, depth, DRAIN_TIMEOUT_S):
        log.warning("the worker had not signalled the last bars %.0f s after the end of the data", DRAIN_TIMEOUT_S)
    return f"the replay of {', '.join(sim.symbols)} reached the end of its data"


DRAIN_TIMEOUT_S = 30.0
_SETTLED_S = 0.5  # the newest stored bar unchanged this long: the ingestor has written the last one


async def _caught_up(
    symbols: list[str],
    store: WindowStore,
    signals: RedisSignalStore | MemorySignalStore,
    depth: int,
    timeout_s: float,
) -> bool:
    """Whether, within ``timeout_s``, each symbol's newest stored 1m bar settles and gets its signal
    (or its no-signal record)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen: dict[str, int | None] = {}
    settled_since = loop.time()
    while loop.time() < deadline:
        try:
            newest: dict[str, int | None] = {}
            done = True
            for symbol in symbols:
                bars = (await store.read_symbol(symbol, ("1",), depth, with_depth=False)).bars.get("1", [])
                last = bars[-1].start if bars else None
                newest[symbol] = last
                latest, none = await signals.latest(symbol), await signals.no_signal(symbol)
                at = max(latest.bar.start if latest else -1, none.bar.start if none else -1)
                done = done and last is not None and at >= last
        except StoreError as exc:
            log.debug("waiting for the last signals: %s", exc)
            done = False
        else:
            if newest != seen:
                seen, settled_since = newest, loop.time()
            elif done and loop.time() - settled_since >= _SETTLED_S:
                return True
        await asyncio.sleep(0.1)
    return False


async def _run_once(
    settings: Settings,
    ingest: IngestConfig,
    worker_config: WorkerConfig,
    replay: list[Path] | None,
    speed: float,
    replay_offset_bars: int | None,
    bound: asyncio.Future[str] | None,
) -> None:
    registry = CollectorRegistry()
    sim: ExchangeSimulator | None = None
    async with contextlib.AsyncExitStack() as stack:
        if replay is not None:
            symbols = compose.replayed_symbols(settings, replay)
            sim = await compose.replay_simulator(stack, replay, speed, replay_offset_bars)
            # Replayed bars are historical by design: readiness then judges the feed by whether the
            # exchange clock keeps moving (the stall check), not by its distance to the wall clock.
            settings = settings.model_copy(update={"symbols": symbols, "api_ready_max_lag_s": 0.0})
            ingest = IngestConfig(
                **{**ingest.__dict__, "ws_url": sim.ws_url, "rest_url": sim.rest_url, "symbols": tuple(symbols)}
            )
            print(
                f"replaying {', '.join(symbols)} at {speed:g}x from {sim.ws_url} (no internet; book is synthetic)",
                flush=True,
            )
        if replay is not None and settings.redis_url is not None:
            # A replay starts from its first bar: the windows and signals of an earlier run, later in
            # the data, would stop every new one. It owns its namespace and starts it empty.
            prefix = f"{settings.redis_prefix}-replay"[:32]
            settings = settings.model_copy(update={"redis_prefix": prefix})
        store = compose.open_store(settings, reuse_decoded=settings.worker_reuse_decoded)  # its worker reads it
        stack.push_async_callback(store.close)
        if isinstance(store, RedisStore):
            try:
                await store.ping()
            except StoreUnavailable as exc:  # at start, from a terminal: say so, do not retry forever
                raise ConfigError(
                    f"run: Redis at {settings.redis_url} does not answer ({exc}): start it, or unset"
                    " CANDLECAST_REDIS_URL to run in memory"
                ) from None
        if replay is not None and isinstance(store, RedisStore):
            await store.delete_all()
            print(f"replay namespace: {settings.redis_prefix}:* in Redis, emptied at start", flush=True)
        io = compose.open_worker_io(settings, store)
        stack.push_async_callback(io.signals.close)
        ingestor = Ingestor(ingest, store, IngestMetrics(registry))
        worker = compose.worker(settings, store, io, WorkerMetrics(registry), worker_config)
        models = worker.models
        server = compose.api_server(
            settings,
            registry,
            signal_store=io.in_memory,
            score_store=io.scores_in_memory,
            exchange_clock=ingestor.clock,
        )
        compose.serve_metrics(stack, settings.metrics_host, settings.api_metrics_port, registry)

        await models.load()
        for c in models.current.components:
            state = (
                f"on {c.session.provider}"
                if c.session is not None and c.disabled is None
                else f"DISABLED ({c.disabled})"
            )
            print(f"model {c.spec.name:18s} {c.spec.horizon:14s} {state}", flush=True)
        print(f"ingesting {', '.join(ingest.symbols)} from {ingest.ws_url} into {io.where}", flush=True)
        tasks = TaskSupervisor("run")
        tasks.spawn(ingestor.run(), "ingestor")
        tasks.spawn(worker.run(), "worker")
        try:
            await server.start()
            tasks.spawn(server.wait(), "api")
            tasks.spawn(_announce(server.url, io.signals, settings, bound), "console")
            end = (
                tasks.spawn(_end_of(sim, store, io.signals, settings.book_depth), "end-of-replay")
                if sim is not None
                else None
            )
            # Until one part fails or the replay ends (the console ends by itself once every symbol
            # has signalled).
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    failure = None if task.cancelled() else task.exception()
                    if failure is not None:
                        raise failure
                if end is not None and end in done:
                    raise _ReplayEnded(end.result())
        finally:
            await server.close()  # the API first: no request sees a half-stopped service
            await tasks.cancel_all(10.0)
            print("stopped", flush=True)


async def _announce(
    url: str,
    signals: RedisSignalStore | MemorySignalStore,
    settings: Settings,
    bound: asyncio.Future[str] | None,
) -> None:
    """A readable console: where the API listens, then the first signal of each symbol."""
    symbols = settings.symbols
    metrics = f"http://{settings.metrics_host}:{settings.api_metrics_port}" if settings.api_metrics_port else url
    print(
        f"API on {url}  (GET {url}/signal/{symbols[0]}, WS {url.replace('http', 'ws')}/ws, {metrics}/metrics)",
        flush=True,
    )
    if bound is not None and not bound.done():
        bound.set_result(url)
    pending = set(symbols)
    while pending:
        await asyncio.sleep(0.5)
        for symbol in sorted(pending):
            latest = await signals.latest(symbol)
            if latest is not None:
                pending.discard(symbol)
                voted = sum(1 for c in latest.components if c.status == "voted")
                print(
                    f"first signal {symbol}: {latest.direction} (score {latest.score:+.3f}, source {latest.source}, "
                    f"{voted}/{len(latest.components)} components voted)",
                    flush=True,
                )
