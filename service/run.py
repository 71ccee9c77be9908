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

import uvicorn
from prometheus_client import CollectorRegistry

from inference.metrics import WorkerMetrics
from inference.signal_store import MemorySignalStore, RedisSignalStore
from inference.worker import EventSource, MemoryEventSource, Worker, WorkerConfig
from service.app import create_app
from service.parts import model_registry, open_store, redis_worker_io, serve_metrics
from service.server import server_config
from service.settings import Settings
from streaming.ingestor import IngestConfig, Ingestor
from streaming.metrics import IngestMetrics
from streaming.redis_store import RedisStore
from streaming.simulator import ExchangeSimulator, SimulatorConfig

__all__ = ["run_service"]

log = logging.getLogger("candlecast")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: this process's owner decides when to stop."""

    @contextlib.contextmanager
    def capture_signals(self):  # type: ignore[no-untyped-def]
        yield


async def run_service(
    settings: Settings,
    ingest: IngestConfig,
    worker_config: WorkerConfig,
    *,
    replay: list[Path] | None = None,
    speed: float = 60.0,
    replay_offset_bars: int = 20_000,
    bound: asyncio.Future[str] | None = None,
) -> None:
    """Run until cancelled. ``bound`` (tests) receives the API's base URL once it listens."""
    registry = CollectorRegistry()
    async with contextlib.AsyncExitStack() as stack:
        if replay is not None:
            sim = await stack.enter_async_context(
                ExchangeSimulator(SimulatorConfig(sources=replay, speed=speed, start_offset_bars=replay_offset_bars))
            )
            # Replayed bars are historical by design: readiness then judges the feed by whether the
            # exchange clock keeps moving (the stall check), not by its distance to the wall clock.
            settings = settings.model_copy(update={"symbols": sim.symbols, "api_ready_max_lag_s": 0.0})
            ingest = IngestConfig(
                **{**ingest.__dict__, "ws_url": sim.ws_url, "rest_url": sim.rest_url, "symbols": tuple(sim.symbols)}
            )
            print(
                f"replaying {', '.join(sim.symbols)} at {speed:g}x from {sim.ws_url} (no internet; book is synthetic)",
                flush=True,
            )
        events: EventSource
        signals: RedisSignalStore | MemorySignalStore
        memory_signals: MemorySignalStore | None = None
        store = open_store(settings)
        stack.push_async_callback(store.close)
        if isinstance(store, RedisStore) and settings.redis_url is not None:
            client, signals, events, _ = redis_worker_io(settings, store, settings.redis_url)
            stack.push_async_callback(client.aclose)
            where = settings.redis_url
        else:
            memory_signals = MemorySignalStore(audit_maxlen=settings.signal_audit_maxlen)
            signals = memory_signals
            events = MemoryEventSource(store)
            where = "the in-memory store (CANDLECAST_REDIS_URL not set)"
        ingestor = Ingestor(ingest, store, IngestMetrics(registry))
        worker_metrics = WorkerMetrics(registry)
        models = model_registry(settings, worker_metrics)
        worker = Worker(worker_config, store, events, signals, models, worker_metrics)
        app = create_app(settings, signal_store=memory_signals, registry=registry, exchange_clock=ingestor.clock)
        server = _Server(server_config(app, settings))
        serve_metrics(stack, settings.metrics_host, settings.api_metrics_port, registry)

        await models.load()
        for c in models.current.components:
            state = (
                f"on {c.session.provider}"
                if c.session is not None and c.disabled is None
                else f"DISABLED ({c.disabled})"
            )
            print(f"model {c.spec.name:18s} {c.spec.horizon:14s} {state}", flush=True)
        print(f"ingesting {', '.join(ingest.symbols)} from {ingest.ws_url} into {where}", flush=True)
        tasks = [
            asyncio.create_task(ingestor.run(), name="ingestor"),
            asyncio.create_task(worker.run(), name="worker"),
            asyncio.create_task(server.serve(), name="api"),
            asyncio.create_task(_announce(server, signals, settings, bound), name="console"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
        finally:
            server.should_exit = True
            for task in reversed(tasks):  # console, api, worker, ingestor
                if task.get_name() != "api":
                    task.cancel()
            await asyncio.wait(tasks, timeout=10)
            print("stopped", flush=True)


async def _announce(
    server: uvicorn.Server,
    signals: RedisSignalStore | MemorySignalStore,
    settings: Settings,
    bound: asyncio.Future[str] | None,
) -> None:
    """A readable console: where the API listens, then the first signal of each symbol."""
    while not server.started:  # noqa: ASYNC110 - uvicorn exposes a flag, not an event
        await asyncio.sleep(0.05)
    host, port = next(s for srv in server.servers for s in srv.sockets).getsockname()[:2]
    url = f"http://{host}:{port}"
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
