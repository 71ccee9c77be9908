"""The coalescing writer keeps everything pending through a Redis outage and writes it on recovery."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from streaming.backoff import Backoff
from streaming.klines import MINUTE_MS, Bar
from streaming.metrics import IngestMetrics
from streaming.redis_store import RedisStore
from streaming.store import BookStatus
from streaming.writer import WindowWriter
from tests.helpers import eventually
from tests.redis_server import RedisServer

T0 = 1_750_000_000_000 - 1_750_000_000_000 % MINUTE_MS


def bar(i: int) -> Bar:
    d = Decimal(100 + i)
    return Bar(T0 + i * MINUTE_MS, d, d + 1, d - 1, d, Decimal(1), Decimal(0))


async def test_outage_keeps_updates_and_recovery_writes_them(own_redis: RedisServer) -> None:
    store = RedisStore.from_url(own_redis.url, window_bars=10)
    metrics = IngestMetrics()
    recovered = asyncio.Event()

    async def on_recovered() -> None:
        recovered.set()

    writer = WindowWriter(store, metrics, linger_s=0, backoff=Backoff(0.05, 0.2), on_recovered=on_recovered)
    task = asyncio.create_task(writer.run())
    try:
        writer.put_bars("BTCUSDT", "1", [bar(0), bar(1)])
        await eventually(lambda: writer.flushes >= 1 and not writer.pending, what="first flush")

        own_redis.stop()
        for i in range(2, 15):  # more than the window: only the newest 10 can matter
            writer.put_bars("BTCUSDT", "1", [bar(i)])
        writer.put_book("BTCUSDT", 50, BookStatus("INVALID", "disconnected: test", 5, T0))
        await eventually(
            lambda: metrics.registry.get_sample_value("candlecast_ingest_store_up") == 0, what="outage noticed"
        )
        assert writer.pending and not writer.healthy

        own_redis.start()  # AOF: what was written before the outage is still there
        await asyncio.wait_for(recovered.wait(), 10)
        await eventually(lambda: not writer.pending, what="pending flushed")
        w = await store.read_symbol("BTCUSDT", ["1"], 50)
        assert [b.start for b in w.bars["1"]] == [T0 + i * MINUTE_MS for i in range(5, 15)]
        assert w.book is not None and w.book.state == "INVALID"
        assert metrics.registry.get_sample_value("candlecast_ingest_store_errors_total") >= 1
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_a_refused_key_does_not_block_the_rest_or_retry_forever(redis_store: RedisStore) -> None:
    await redis_store._r.set(redis_store.keys.status("ETHUSDT"), "not a hash")  # WRONGTYPE for HSET
    metrics = IngestMetrics()
    writer = WindowWriter(redis_store, metrics, linger_s=0)
    writer.put_bars("BTCUSDT", "1", [bar(0), bar(1)])
    writer.put_status("ETHUSDT", {"backfill:1": "ok"})
    result = await writer.flush()
    assert len(result.errors) == 1 and "WRONGTYPE" in result.errors[0]
    assert not writer.pending  # not restored: retrying could only fail again
    assert metrics.registry.get_sample_value("candlecast_ingest_store_errors_total") == 1
    w = await redis_store.read_symbol("BTCUSDT", ["1"], 50)
    assert len(w.bars["1"]) == 2
    assert result.events and result.events[0].start == T0 + MINUTE_MS
