"""The signal store's snapshot: every symbol's latest signal (as stored) and no-signal record at once."""

from __future__ import annotations

import redis.asyncio as aioredis

from inference.signal import BarRef, NoSignal
from inference.signal_store import MemorySignalStore, RedisSignalStore
from streaming.redis_keys import RedisKeys
from tests.service.kit import MINUTE, T0, make_signal, redis_signals, unique_prefix


def _no_signal(start: int, symbol: str) -> NoSignal:
    bar = BarRef("1", start, start + MINUTE)
    return NoSignal(
        symbol, bar, "fallback_input:holed_window", "tcn_1m: holed_window", start + MINUTE, start + MINUTE + 40
    )


async def test_redis_snapshot_reads_signals_no_signals_and_the_newest_event(redis_url: str) -> None:
    prefix = unique_prefix()
    async with redis_signals(redis_url, prefix) as store:
        await store.publish(make_signal(T0, "BTCUSDT"))
        await store.record_no_signal(_no_signal(T0, "ETHUSDT"))
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.xadd(RedisKeys(prefix).bar_events, {"symbol": "BTCUSDT", "interval": "5", "start": str(T0)})
            snap = await RedisSignalStore(client, prefix=prefix).snapshot(
                ["BTCUSDT", "ETHUSDT", "SOLUSDT"], bar_clock=True
            )
        finally:
            await client.aclose()
    btc, eth, sol = snap.symbols
    assert btc.signal == make_signal(T0, "BTCUSDT").to_json() and btc.no_signal is None
    assert eth.signal is None and eth.no_signal == _no_signal(T0, "ETHUSDT")
    assert sol.signal is None and sol.no_signal is None
    assert snap.newest_bar_close_ms == T0 + 5 * MINUTE


async def test_memory_snapshot_matches_what_was_stored() -> None:
    store = MemorySignalStore()
    await store.publish(make_signal(T0, "BTCUSDT"))
    await store.record_no_signal(_no_signal(T0, "ETHUSDT"))
    btc, eth = (await store.snapshot(["BTCUSDT", "ETHUSDT"])).symbols
    assert btc.signal == make_signal(T0, "BTCUSDT").to_json()
    assert eth.no_signal == _no_signal(T0, "ETHUSDT") and eth.signal is None
