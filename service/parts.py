"""Building the service's parts from :class:`Settings`: one place, shared by every entry point
(``candlecast ingest | worker | api | run``), so a setting means the same thing everywhere."""

from __future__ import annotations

import contextlib
import logging
import os
import socket

import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry, start_http_server

from inference.components import ModelRegistry
from inference.config import WorkerConfig
from inference.ensemble import Thresholds
from inference.events import RedisEventSource
from inference.metrics import WorkerMetrics
from inference.signal_store import RedisSignalStore
from service.settings import Settings
from streaming.ingestor import IngestConfig
from streaming.memory_store import MemoryStore
from streaming.redis_store import RedisStore
from streaming.store import WindowStore

__all__ = ["ingest_config", "model_registry", "open_store", "redis_worker_io", "worker_config"]

log = logging.getLogger("candlecast")


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


def open_store(settings: Settings) -> WindowStore:
    if settings.redis_url is None:
        log.warning("CANDLECAST_REDIS_URL is not set: using the in-memory store (this process only)")
        return MemoryStore(window_bars=settings.window_bars, depth_rows=settings.depth_window)
    return RedisStore.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        window_bars=settings.window_bars,
        depth_rows=settings.depth_window,
    )


def worker_config(settings: Settings) -> WorkerConfig:
    return WorkerConfig(
        intervals=tuple(settings.intervals),
        book_depth=settings.book_depth,
        thresholds=Thresholds(settings.signal_long_above, settings.signal_short_below),
        latency_budget_ms=settings.latency_budget_ms,
        coarse_wait_ms=settings.coarse_wait_ms,
        inference_concurrency=settings.inference_concurrency,
        max_in_flight=settings.worker_max_in_flight,
        claim_idle_ms=settings.claim_idle_ms,
    )


def model_registry(settings: Settings, metrics: WorkerMetrics) -> ModelRegistry:
    return ModelRegistry(
        settings.artifacts_dir,
        prefer_gpu=settings.prefer_gpu,
        threads=settings.inference_threads,
        weights=settings.component_weights,
        poll_s=settings.manifest_poll_s,
        metrics=metrics,
    )


def redis_worker_io(
    settings: Settings, store: RedisStore, redis_url: str
) -> tuple[aioredis.Redis, RedisSignalStore, RedisEventSource, str]:
    """The worker's Redis side: a client, the signal store and its consumer-group event source."""
    consumer = settings.worker_consumer or f"{socket.gethostname()}-{os.getpid()}"
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
    signals = RedisSignalStore(client, prefix=settings.redis_prefix, audit_maxlen=settings.signal_audit_maxlen)
    events = RedisEventSource(client, store.events_key, group=settings.worker_group, consumer=consumer)
    return client, signals, events, consumer


def serve_metrics(stack: contextlib.AsyncExitStack, host: str, port: int, registry: CollectorRegistry) -> None:
    """Serve ``registry`` for Prometheus on ``host:port`` until ``stack`` closes; port 0 = not at all."""
    if port:
        server, thread = start_http_server(port, addr=host, registry=registry)
        stack.callback(thread.join, 5.0)
        stack.callback(server.shutdown)
