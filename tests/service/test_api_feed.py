"""The in-process signal cache and what feeds it: correct after a Redis restart (a pub/sub reconnect
re-reads what it missed), and the same API over the in-memory store of the single-process run."""

from __future__ import annotations

import asyncio
import signal

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from inference.signal import BarRef, NoSignal, Signal
from inference.signal_store import MemorySignalStore, RedisSignalStore
from service.metrics import ApiMetrics
from service.signal_cache import SignalCache
from service.signal_feed import RedisSignalFeed
from streaming.backoff import Backoff
from tests.helpers import eventually
from tests.redis_server import RedisServer
from tests.service.kit import (
    MINUTE,
    T0,
    Api,
    api_settings,
    make_signal,
    next_signal,
    serving,
    subscribe,
    ws_connect,
)

pytestmark = pytest.mark.timeout(60)


def sample(metrics: ApiMetrics) -> float:
    return metrics.registry.get_sample_value("candlecast_api_signal_feed_reconnects_total") or 0.0


async def served(api: Api, symbol: str = "BTCUSDT") -> int | None:
    """The bar start of the signal GET /signal/{symbol} answers, or None for a non-200."""
    async with api.http() as http:
        r = await http.get(f"/signal/{symbol}")
    return Signal.from_json(r.content).bar.start if r.status_code == 200 else None


async def test_after_a_redis_restart_the_cache_re_reads_what_pubsub_missed(own_redis: RedisServer) -> None:
    # No periodic re-read here: only the reconnect can bring in what pub/sub did not deliver.
    settings = api_settings(own_redis.url, "cc", api_resync_s=3600)
    client = aioredis.Redis.from_url(own_redis.url)
    store = RedisSignalStore(client, prefix="cc")
    try:
        async with serving(settings) as api, ws_connect(api.ws_url) as ws:
            await subscribe(ws, ["BTCUSDT"])
            await store.publish(make_signal(T0))
            assert (await next_signal(ws))["signal"]["bar"]["start"] == T0
            assert await served(api) == T0

            # A message lost in flight: the key moved on, nothing was published.
            missed = make_signal(T0 + MINUTE, direction="short")
            await client.set(store.keys.signal_latest("BTCUSDT"), missed.to_json())
            await asyncio.sleep(0.2)
            assert await served(api) == T0  # the cache did not see it (and no request reads Redis)

            own_redis.stop()
            await eventually(lambda: api.sample("candlecast_api_signal_feed_up") == 0, 10, what="feed noticed")
            async with api.http() as http:
                r = await http.get("/readyz")
            assert r.status_code == 503
            assert {"redis_unreachable", "signal_feed_down"} <= set(r.json()["error"]["details"]["reasons"])
            assert await served(api) == T0  # the last value is still served during the outage

            own_redis.start()
            # Resubscribed, then re-read: the missed signal is served and pushed to subscribers.
            pushed = await next_signal(ws, within=15)
            assert Signal.from_json(orjson.dumps(pushed["signal"])) == missed
            assert await served(api) == T0 + MINUTE
            assert api.sample("candlecast_api_signal_feed_reconnects_total") == 1
            assert api.sample("candlecast_api_signal_updates_total", via="prime") == 1

            # And the subscription is live again.
            await client.aclose()
            client = aioredis.Redis.from_url(own_redis.url)
            store = RedisSignalStore(client, prefix="cc")
            await store.publish(make_signal(T0 + 2 * MINUTE))
            assert (await next_signal(ws))["signal"]["bar"]["start"] == T0 + 2 * MINUTE
            assert await served(api) == T0 + 2 * MINUTE
    finally:
        await client.aclose()


async def test_the_single_process_store_serves_the_same_api() -> None:
    store = MemorySignalStore()
    await store.publish(make_signal(T0))  # before the API starts: primed
    settings = api_settings(None, api_resync_s=0.1)
    async with serving(settings, signal_store=store) as api, api.http() as http:
        assert await served(api) == T0
        async with ws_connect(api.ws_url) as ws:
            _ack, snapshot = await subscribe(ws, ["BTCUSDT"])
            assert snapshot["signal"]["bar"]["start"] == T0
            await store.publish(make_signal(T0 + MINUTE))
            assert (await next_signal(ws))["signal"]["bar"]["start"] == T0 + MINUTE
        history = (await http.get("/signal/BTCUSDT/history")).json()
        assert [s["bar"]["start"] for s in history["signals"]] == [T0 + MINUTE, T0]

        # A no-signal record (not pushed by the store) is picked up by the re-read.
        why = NoSignal("BTCUSDT", BarRef("1", T0 + 2 * MINUTE, T0 + 3 * MINUTE), "all_models_failed", "", 0, 0)
        await store.record_no_signal(why)
        await store.publish(make_signal(T0 + 4 * MINUTE, "ETHUSDT"))  # moves the exchange clock

        async def holed() -> bool:
            r = await http.get("/signal/BTCUSDT")
            return r.status_code == 503 and r.json()["error"]["details"]["reason"] == "no_signal"

        await eventually(holed, 5)
        r = await http.get("/signal/BTCUSDT")
        d = r.json()["error"]["details"]
        assert d["reason"] == "no_signal" and d["no_signal"]["reason"] == "all_models_failed"
        ready = (await http.get("/readyz")).json()
        assert ready["checks"]["redis"] == "not_used" and ready["checks"]["signal_feed"] == "up"


async def test_a_quiet_feed_stays_up_on_pings_and_a_dead_one_is_noticed(own_redis: RedisServer) -> None:
    """With nothing published, the feed's own pings keep proving the subscription alive; once Redis
    stops answering (paused, the socket still open), the missing pongs end it."""
    cache = SignalCache(["BTCUSDT"], "1", 30.0)
    metrics = ApiMetrics(CollectorRegistry())
    client = aioredis.Redis.from_url(own_redis.url)
    subscriber = aioredis.Redis.from_url(own_redis.url, retry=Retry(NoBackoff(), 0), socket_timeout=5.0)
    feed = RedisSignalFeed(RedisSignalStore(client), subscriber, cache, metrics, ping_s=0.1, backoff=Backoff(0.05, 0.1))
    await feed.start()
    try:
        await eventually(lambda: feed.up, 5)
        await asyncio.sleep(1.0)  # ten ping periods, three missed pongs would end it
        assert feed.up and sample(metrics) == 0
        assert own_redis.proc is not None
        own_redis.proc.send_signal(signal.SIGSTOP)  # alive but silent: no FIN, no RST
        try:
            await eventually(lambda: not feed.up, 5, what="the silent subscription noticed")
        finally:
            own_redis.proc.send_signal(signal.SIGCONT)
        await eventually(lambda: feed.up, 10, what="back once Redis answers")
        assert sample(metrics) == 1
    finally:
        await feed.close()
        await subscriber.aclose()
        await client.aclose()
