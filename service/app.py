"""The signal API: ``create_app(settings)`` builds it; the lifespan owns everything it runs.

Routes (:mod:`service.routes`; JSON, errors in the one shape of :mod:`service.errors`)::

    GET /signal/{symbol}            the latest signal (404 unknown symbol, 503 + Retry-After: none servable)
    GET /signals                    every configured symbol: its signal, or why there is none
    GET /signal/{symbol}/history    newest first from the audit stream, ?limit=1..1000 (default 100)
    GET /signal/{symbol}/performance   the track record: scored signals over the last 100, 1,000 and 24 h
    GET /performance                the track record of every configured symbol
    WS  /ws                         subscriptions (protocol in :mod:`service.ws_protocol`)
    GET /healthz                    the process answers
    GET /readyz                     Redis reachable, data flowing, signals fresh (503 with the reasons)
    GET /metrics                    Prometheus text
    GET /docs, /redoc, /openapi.json   OpenAPI (Swagger UI and ReDoc from local files: no internet needed)

The lifespan creates the Redis clients, the signal cache and its feed, and the WebSocket hub; handlers
reach them through :func:`service.state.api_state` (a dependency), never through module globals. On shutdown it
closes WebSockets (1001), stops the feed (its tasks cancelled with a timeout), then the clients.

API keys (``CANDLECAST_API_KEYS``, :mod:`service.auth`): when set, ``/signal*`` and ``/ws`` need
``Authorization: Bearer <key>``; a browser, which cannot set headers on a WebSocket, may send
``{"op": "auth", "key": "..."}`` as its first message instead. A key in the URL is refused even when
valid (URLs end up in logs). Health, readiness, metrics and docs stay open; metrics carry each
symbol's latest direction and score, so a deployment that publishes the API moves them to a port of
their own (``CANDLECAST_API_METRICS_PORT``), as docker-compose.yml does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from inference.score_store import MemoryScoreStore, RedisScoreStore, ScoreStore
from inference.signal_store import RedisSignalStore, SignalStore
from service.auth import ApiKeys
from service.docs import install_docs
from service.errors import install_error_handlers
from service.metrics import ApiMetrics, RequestMetricsMiddleware
from service.performance import PerformanceBook
from service.routes import add_ops_routes, add_signal_routes
from service.schemas import DESCRIPTION, keep_example_nulls
from service.settings import Settings
from service.signal_cache import SignalCache
from service.signal_feed import RedisSignalFeed, SignalFeed, StoreSignalFeed, SubscribableSignalStore
from service.state import ApiState
from service.ws import WsHub
from service.ws_protocol import WsLimits
from streaming.backoff import Backoff
from streaming.clock import ExchangeClock
from streaming.redis_client import connect, readiness_ping
from streaming.supervisor import TaskSupervisor

__all__ = ["API_NEEDS_REDIS", "create_app"]

log = logging.getLogger(__name__)

API_NEEDS_REDIS = "the API serves the signals workers write to Redis"


# --- the app --------------------------------------------------------------------------------------


def create_app(
    settings: Settings,
    *,
    signal_store: SubscribableSignalStore | None = None,
    score_store: ScoreStore | None = None,
    registry: CollectorRegistry | None = None,
    exchange_clock: ExchangeClock | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """The API for ``settings``.

    ``signal_store``: serve from this in-process store (e.g. ``MemorySignalStore`` in the
    single-process run) instead of Redis; the caller owns and closes it, and ``score_store`` is the
    track record beside it (none: an empty one). ``registry``: the API's
    metrics go there and ``/metrics`` exposes all of it, so pass the registry the ingestor's and the
    worker's metrics live on to see them too. ``exchange_clock``: an in-process ingestor's clock,
    which moves the API's exchange time even between signals. ``monotonic``: the clock readiness
    measures a stalled feed with (tests pass one they move by hand).
    """
    redis_url = settings.require_redis(API_NEEDS_REDIS) if signal_store is None else None
    metrics = ApiMetrics(registry)
    keys = ApiKeys(k.get_secret_value() for k in settings.api_keys)
    limits = WsLimits(
        queue=settings.api_ws_queue,
        max_symbols=settings.api_ws_max_symbols,
        max_frame_bytes=settings.api_ws_max_frame_bytes,
        auth_timeout_s=settings.api_ws_auth_timeout_s,
        max_msgs_per_s=settings.api_ws_max_msgs_per_s,
        burst=settings.api_ws_burst,
    )
    finest = min(settings.intervals, key=int)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        async with AsyncExitStack() as stack:
            cache = SignalCache(
                settings.symbols,
                finest,
                settings.api_signal_grace_s,
                external_clock=exchange_clock,
                monotonic=monotonic,
                max_silence_s=settings.api_feed_max_silence_s,
            )
            store: SignalStore
            feed: SignalFeed
            ping: Callable[[], Awaitable[Any]] | None = None
            if signal_store is None:
                assert redis_url is not None  # required above
                client = connect(redis_url, cluster=settings.redis_cluster)
                stack.push_async_callback(client.aclose)
                # No retries on the subscription's client: redis-py would reconnect and resubscribe
                # silently, and the feed must know, to re-read what it missed meanwhile.
                subscriber = connect(redis_url, cluster=settings.redis_cluster, retries=False)
                stack.push_async_callback(subscriber.aclose)
                redis_store = RedisSignalStore(
                    client, prefix=settings.redis_prefix, audit_maxlen=settings.signal_audit_maxlen
                )
                store = redis_store
                feed = RedisSignalFeed(
                    redis_store,
                    subscriber,
                    cache,
                    metrics,
                    resync_s=settings.api_resync_s,
                    backoff=Backoff(min(0.1, settings.api_reconnect_max_s), settings.api_reconnect_max_s),
                    bar_clock=True,
                )
                ping = readiness_ping(client)
                scores: ScoreStore = RedisScoreStore(client, prefix=settings.redis_prefix)
            else:
                store = signal_store
                feed = StoreSignalFeed(signal_store, cache, metrics, resync_s=settings.api_resync_s)
                scores = score_store if score_store is not None else MemoryScoreStore()
            book = PerformanceBook(scores, settings.symbols)
            tasks = TaskSupervisor("api")
            stack.push_async_callback(tasks.cancel_all, 5.0)
            tasks.spawn(book.run(settings.api_performance_refresh_s), "api-performance")
            hub = WsHub(
                cache,
                limits,
                metrics,
                keys_enabled=keys.enabled,
                check_key=keys.valid,
                performance=lambda symbol: book.latest().get(symbol),
            )
            cache.add_listener(hub.publish)
            stack.push_async_callback(feed.close)
            await feed.start()
            stack.push_async_callback(hub.close)  # runs first: clients go before the feed
            hub.start()
            metrics.freshness_source = cache.freshness
            stack.callback(_detach_freshness, metrics)
            metrics.performance_source = book.latest
            log.info(
                "signal API: %d symbols from %s, keys %s",
                len(settings.symbols),
                "Redis" if signal_store is None else "the in-process store",
                "on" if keys.enabled else "off",
            )
            yield {"api": ApiState(settings, store, cache, hub, feed, keys, metrics, ping, book)}

    app = FastAPI(
        title="candlecast",
        version="0.1.0",
        summary="Live trading signals for Bybit linear perpetuals",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # service.docs serves them with local assets: no CDN, no internet
        redoc_url=None,
    )
    install_docs(app)
    install_error_handlers(app)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET"],
            allow_headers=["Authorization"],
            max_age=600,
        )
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    add_signal_routes(app, keys.enabled)
    add_ops_routes(app, metrics_route=not settings.api_metrics_port, keys_enabled=keys.enabled)
    keep_example_nulls(app)
    return app


def _detach_freshness(metrics: ApiMetrics) -> None:
    metrics.freshness_source = lambda: None
    metrics.performance_source = dict
