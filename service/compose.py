"""The composition root: every part of the service built from :class:`Settings`, in one place.

Every entry point (``candlecast ingest | worker | api | run``) builds its parts here, so a setting
means the same thing everywhere: the window store, the worker's Redis or in-memory I/O, the worker,
the API server, the replay simulator and the metrics endpoints. The entry points only own the
parts' lifetimes. FastAPI and uvicorn are imported only when an API server is built.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, start_http_server

from inference.components import ModelRegistry
from inference.config import WorkerConfig
from inference.ensemble import Thresholds
from inference.events import EventSource, MemoryEventSource, RedisEventSource
from inference.metrics import WorkerMetrics
from inference.score_store import MemoryScoreStore, RedisScoreStore
from inference.signal_store import MemorySignalStore, RedisSignalStore
from inference.worker import Worker
from service.settings import ConfigError, Settings
from streaming.clock import ExchangeClock
from streaming.ingestor import IngestConfig
from streaming.memory_store import MemoryStore
from streaming.redis_client import connect
from streaming.redis_store import RedisStore
from streaming.sim.bars import symbol_from_path
from streaming.sim.markets import ReplayDataError
from streaming.sim.server import ExchangeSimulator, SimulatorConfig
from streaming.store import WindowStore

if TYPE_CHECKING:
    from service.server import ApiServer

__all__ = [
    "WorkerIO",
    "api_server",
    "ingest_config",
    "model_registry",
    "open_simulator",
    "open_store",
    "open_worker_io",
    "replay_simulator",
    "replayed_symbols",
    "serve_metrics",
    "worker",
    "worker_config",
]

log = logging.getLogger(__name__)


def ingest_config(settings: Settings, ws_url: str | None = None, rest_url: str | None = None) -> IngestConfig:
    return IngestConfig(
        ws_url=ws_url or settings.bybit_ws_url,
        rest_url=rest_url or settings.bybit_rest_url,
        symbols=tuple(settings.symbols),
        intervals=tuple(settings.intervals),
        book_depth=settings.book_depth,
        symbols_per_connection=settings.symbols_per_connection,
        depth_sample_ms=settings.depth_sample_ms,
        book_silence_s=settings.book_silence_s,
        kline_silence_s=settings.kline_silence_s,
        rest_rate_per_s=settings.rest_requests_per_second,
    )


def open_store(settings: Settings, *, reuse_decoded: bool = False) -> WindowStore:
    """The window store of ``settings``; ``reuse_decoded`` for a process that computes signals: a
    Redis store then decodes only the bars each read finds new (see :class:`RedisStore`)."""
    if settings.redis_url is None:
        log.warning("CANDLECAST_REDIS_URL is not set: using the in-memory store (this process only)")
        return MemoryStore(window_bars=settings.window_bars, depth_rows=settings.depth_window)
    return RedisStore.from_url(
        settings.redis_url,
        cluster=settings.redis_cluster,
        prefix=settings.redis_prefix,
        window_bars=settings.window_bars,
        depth_rows=settings.depth_window,
        reuse_decoded=reuse_decoded,
    )


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        intervals=tuple(settings.intervals),
        book_depth=settings.book_depth,
        thresholds=Thresholds(settings.signal_long_above, settings.signal_short_below),
        horizon_minutes=settings.signal_horizon_min,
        fee_bp=settings.fee_bp,
        quorum=settings.signal_quorum,
        latency_budget_ms=settings.latency_budget_ms,
        coarse_wait_ms=settings.coarse_wait_ms,
        inference_concurrency=settings.inference_concurrency,
        max_in_flight=settings.worker_max_in_flight,
        claim_idle_ms=settings.claim_idle_ms,
        sweep_every_s=settings.worker_sweep_s,
    )


def model_registry(settings: Settings, metrics: WorkerMetrics) -> ModelRegistry:
    return ModelRegistry(
        settings.artifacts_dir,
        prefer_gpu=settings.prefer_gpu,
        threads=settings.inference_threads,
        weights=settings.component_weights,
        opt_in=settings.model_opt_in,
        poll_s=settings.manifest_poll_s,
        metrics=metrics,
    )


@dataclass(frozen=True)
class WorkerIO:
    """Where a worker reads bar-closed events and writes signals; ``signals.close()`` releases it."""

    signals: RedisSignalStore | MemorySignalStore
    events: EventSource
    consumer: str | None  # the Redis consumer name (None: in memory)
    where: str  # for the console
    scores: RedisScoreStore | MemoryScoreStore  # the track record (same client as the signals)

    @property
    def in_memory(self) -> MemorySignalStore | None:
        """The in-process signal store an API in the same process serves from (None: Redis)."""
        return self.signals if isinstance(self.signals, MemorySignalStore) else None

    @property
    def scores_in_memory(self) -> MemoryScoreStore | None:
        return self.scores if isinstance(self.scores, MemoryScoreStore) else None


def open_worker_io(settings: Settings, store: WindowStore) -> WorkerIO:
    """A Redis store's worker reads its consumer group and writes Redis signals; an in-memory
    store's reads the store's own events and writes an in-memory signal store."""
    if isinstance(store, RedisStore) and settings.redis_url is not None:
        consumer = settings.worker_consumer or f"{socket.gethostname()}-{os.getpid()}"
        client = connect(settings.redis_url, cluster=settings.redis_cluster)
        signals = RedisSignalStore(client, prefix=settings.redis_prefix, audit_maxlen=settings.signal_audit_maxlen)
        events = RedisEventSource(client, store.keys.bar_events, group=settings.worker_group, consumer=consumer)
        scores = RedisScoreStore(client, prefix=settings.redis_prefix)
        return WorkerIO(signals, events, consumer, settings.redis_url, scores)
    memory = MemorySignalStore(audit_maxlen=settings.signal_audit_maxlen)
    where = "the in-memory store (CANDLECAST_REDIS_URL not set)"
    return WorkerIO(memory, MemoryEventSource(store), None, where, MemoryScoreStore())


def worker(
    settings: Settings, store: WindowStore, io: WorkerIO, metrics: WorkerMetrics, config: WorkerConfig | None = None
) -> Worker:
    """The inference worker over ``store`` and ``io`` (``config``: default from ``settings``), with
    the model registry of ``settings`` (``worker.models``; load it before running)."""
    config = config if config is not None else worker_config(settings)
    return Worker(config, store, io.events, io.signals, model_registry(settings, metrics), metrics, scores=io.scores)


def api_server(
    settings: Settings,
    registry: CollectorRegistry,
    *,
    host: str | None = None,
    port: int | None = None,
    signal_store: MemorySignalStore | None = None,
    score_store: MemoryScoreStore | None = None,
    exchange_clock: ExchangeClock | None = None,
) -> ApiServer:
    """The API (:func:`service.app.create_app`) under its production uvicorn settings."""
    from service.app import create_app  # FastAPI and uvicorn: serving commands only
    from service.server import ApiServer, server_config

    app = create_app(
        settings, signal_store=signal_store, score_store=score_store, registry=registry, exchange_clock=exchange_clock
    )
    return ApiServer(server_config(app, settings, host=host, port=port))


BAR_FILES = (
    "gzip CSV bar files named after their symbol (e.g. bybit_linear_BTCUSDT_1m.csv.gz) with the header"
    " open_time_ms,open,high,low,close,volume"
)


def check_bar_files(paths: Sequence[Path]) -> None:
    """Each file exists and is gzip (its first two bytes), else a :class:`ConfigError` naming it."""
    for path in paths:
        try:
            with open(path, "rb") as fh:
                magic = fh.read(2)
        except FileNotFoundError:
            raise ConfigError(f"cannot replay {path}: no such file (expected {BAR_FILES})") from None
        except OSError as exc:
            raise ConfigError(f"cannot replay {path}: {exc.strerror or exc}") from None
        if magic != b"\x1f\x8b":
            raise ConfigError(f"cannot replay {path}: not a gzip file (expected {BAR_FILES})")


async def open_simulator(stack: contextlib.AsyncExitStack, config: SimulatorConfig) -> ExchangeSimulator:
    """An exchange simulator, started until ``stack`` closes; a file it cannot replay (missing, not
    gzip, no symbol in its name, a bad header or row) is a :class:`ConfigError` in one line."""
    check_bar_files(config.sources)
    try:
        return await stack.enter_async_context(ExchangeSimulator(config))
    except ReplayDataError as exc:  # too short, or the offset past the end: the message says it all
        raise ConfigError(f"cannot replay: {exc}") from None
    except (EOFError, ValueError) as exc:  # a truncated file, no symbol in a name, a bad header or row
        raise ConfigError(f"cannot replay: {exc} (expected {BAR_FILES})") from None


async def replay_simulator(
    stack: contextlib.AsyncExitStack, sources: list[Path], speed: float, offset_bars: int | None = None
) -> ExchangeSimulator:
    """An exchange simulator on loopback replaying ``sources`` (1m CSVs) until ``stack`` closes;
    ``offset_bars`` of history before its clock (None: chosen from the data)."""
    config = SimulatorConfig(sources=sources, speed=speed, start_offset_bars=offset_bars)
    return await open_simulator(stack, config)


def replayed_symbols(settings: Settings, sources: Sequence[Path]) -> list[str]:
    """The symbols a replay of ``sources`` serves, checked before anything starts: those its file
    names carry, or the ``CANDLECAST_SYMBOLS`` set explicitly when the files hold all of them (a
    symbol without a file, or a file name without a symbol, is a :class:`ConfigError`)."""
    try:
        available = sorted({symbol_from_path(p) for p in sources})
    except ValueError as exc:
        raise ConfigError(f"cannot replay: {exc}") from None
    if "symbols" not in settings.model_fields_set:
        return available
    missing = [s for s in settings.symbols if s not in available]
    if missing:
        raise ConfigError(
            f"CANDLECAST_SYMBOLS names {', '.join(missing)}, which the replay has no file for (it replays"
            f" {', '.join(available)}): give their files to --replay, or unset CANDLECAST_SYMBOLS"
        )
    return list(settings.symbols)


def serve_metrics(stack: contextlib.AsyncExitStack, host: str, port: int, registry: CollectorRegistry) -> None:
    """Serve ``registry`` for Prometheus on ``host:port`` until ``stack`` closes; port 0 = not at all."""
    if port:
        server, thread = start_http_server(port, addr=host, registry=registry)
        stack.callback(thread.join, 5.0)
        stack.callback(server.shutdown)
