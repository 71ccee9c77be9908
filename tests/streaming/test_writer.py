"""The coalescing writer keeps everything pending through a Redis outage and writes it on recovery."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter
from decimal import Decimal
from pathlib import Path

from redis.crc import key_slot

from streaming.backoff import Backoff
from streaming.klines import MINUTE_MS, Bar
from streaming.metrics import IngestMetrics
from streaming.redis_client import connect
from streaming.redis_keys import RedisKeys
from streaming.redis_store import RedisStore
from streaming.store import BookStatus
from streaming.writer import WindowWriter
from tests.helpers import eventually
from tests.redis_cluster import RedisClusterServers
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
        # every close announced was stored: the ones trimmed from the pending bars (2-4) never were
        announced = sorted((e.start - T0) // MINUTE_MS for _, e in await store.read_events())
        assert announced == [0, 1, 1, *range(5, 15)]  # 1: its first write; 0 and 1 again after the outage
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


async def test_a_write_that_stored_part_of_its_batch_before_failing_still_announces_each_close(tmp_path: Path) -> None:
    """A Redis Cluster pipeline spans nodes: with BTCUSDT's master down, ETHUSDT's master applies its
    part of the batch and the write fails, its replies lost with the error. The retry finds ETHUSDT's
    bar stored, a close no write announces; the writer announces it itself, once. (The closes written
    before the outage are announced once more: a failed-over master can take its last writes along.)"""
    # a long node timeout: the cluster keeps serving the other slots, nobody fails over, the node returns
    cluster = RedisClusterServers(tmp_path, masters=3, node_timeout_ms=60_000)
    cluster.start()
    btc_at = cluster.master_of(key_slot(b"{BTCUSDT}"))
    assert cluster.master_of(key_slot(b"{ETHUSDT}")) != btc_at
    prefix = next(p for p in (f"w{uuid.uuid4().hex[:8]}" for _ in range(1000)) if _events_off(cluster, p, btc_at))
    store = RedisStore(connect(cluster.url, cluster=True), prefix=prefix, window_bars=10)
    metrics = IngestMetrics()
    writer = WindowWriter(store, metrics, linger_s=0, backoff=Backoff(0.05, 0.2))
    task = asyncio.create_task(writer.run())
    try:
        for symbol in ("BTCUSDT", "ETHUSDT"):
            writer.put_bars(symbol, "1", [bar(0), bar(1)])
        await eventually(lambda: writer.flushes >= 1 and not writer.pending, what="first flush")

        cluster.kill(btc_at)
        for symbol in ("BTCUSDT", "ETHUSDT"):
            writer.put_bars(symbol, "1", [bar(2)])
        await eventually(lambda: not writer.healthy, what="outage noticed")
        eth = await store.read_symbol("ETHUSDT", ["1"], 50, with_depth=False)
        assert eth.bars["1"][-1].start == bar(2).start  # stored by a write that failed

        await asyncio.to_thread(cluster.restart, btc_at)  # empty: its windows start over
        await eventually(lambda: writer.healthy and not writer.pending, 20, what="recovery")
        announced = Counter((e.symbol, (e.start - T0) // MINUTE_MS) for _, e in await store.read_events())
        for symbol in ("BTCUSDT", "ETHUSDT"):
            # bar 1: its first write and again; bar 0 again; bar 2 once (ETHUSDT's by the writer)
            assert [announced[(symbol, i)] for i in range(3)] == [1, 2, 1], symbol
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
        cluster.stop()


def _events_off(cluster: RedisClusterServers, prefix: str, node: object) -> bool:
    return cluster.master_of(key_slot(RedisKeys(prefix).bar_events.encode())) != node
