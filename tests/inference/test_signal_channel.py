"""Two instances on one Redis server, in different databases, never hear each other's signals:
Redis pub/sub ignores the database number, so the channel names it (a real server, real clients)."""

from __future__ import annotations

import asyncio
import uuid

import redis.asyncio as aioredis
from redis.asyncio.client import PubSub

from inference.signal_store import RedisSignalStore
from service.bench import sample_signal
from tests.inference.kit import T0

PREFIX = f"chan-{uuid.uuid4().hex[:8]}"  # one prefix for both: only the database differs


def _db_url(redis_url: str, db: int) -> str:
    base, _, _ = redis_url.rpartition("/")
    return f"{base}/{db}"


async def _next(pubsub: PubSub, within_s: float) -> bytes | None:
    """The next message on the subscription, or None if none came within ``within_s``."""
    try:
        async with asyncio.timeout(within_s):
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
                if message is not None:
                    data: bytes = message["data"]
                    return data
    except TimeoutError:
        return None


async def test_instances_in_two_databases_do_not_cross_talk(redis_url: str) -> None:
    a = aioredis.Redis.from_url(_db_url(redis_url, 0))
    b = aioredis.Redis.from_url(_db_url(redis_url, 1))
    store_a, store_b = RedisSignalStore(a, prefix=PREFIX), RedisSignalStore(b, prefix=PREFIX)
    assert store_a.keys.signals_channel != store_b.keys.signals_channel
    listen_a, listen_b = a.pubsub(), b.pubsub()
    await listen_a.subscribe(store_a.keys.signals_channel)
    await listen_b.subscribe(store_b.keys.signals_channel)
    try:
        signal = sample_signal(T0, "BTCUSDT")
        await store_b.publish(signal)
        assert await _next(listen_b, 5.0) == signal.to_json()  # its own instance hears it
        assert await _next(listen_a, 0.5) is None  # the other database's never does
    finally:
        for listener in (listen_a, listen_b):
            await listener.aclose()
        for client in (a, b):
            await client.delete(*[k async for k in client.scan_iter(f"{PREFIX}:*")] or ["-"])
            await client.aclose()
