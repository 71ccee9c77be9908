"""The signal store's snapshot: every symbol's latest signal (as stored) and no-signal record at once."""

from __future__ import annotations

import zlib

import pytest
import redis.asyncio as aioredis

from inference.compact import pack
from inference.signal import BarRef, NoSignal, SignalFormatError
from inference.signal_store import MemorySignalStore, RedisSignalStore, from_audit
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


# -- the audit stream holds each signal's JSON compressed ---------------------------------------------


async def test_the_audit_stores_signals_compressed_and_reads_them_back_equal(redis_url: str) -> None:
    signals = [make_signal(T0 + i * MINUTE, components=9) for i in range(3)]
    async with redis_signals(redis_url, unique_prefix()) as store:
        for s in signals:
            await store.publish(s)
        client = aioredis.Redis.from_url(redis_url)
        try:
            entries = await client.xrange(store.keys.signal_audit("BTCUSDT"))
            latest = await client.get(store.keys.signal_latest("BTCUSDT"))
        finally:
            await client.aclose()
        stored = [fields[b"signal"] for _id, fields in entries]
        assert all(len(raw) * 3 < len(s.to_json()) for raw, s in zip(stored, signals, strict=True))
        assert latest == signals[-1].to_json()  # the latest key stays the JSON, served byte for byte
        assert await store.history("BTCUSDT", 10) == signals[::-1]
    memory = MemorySignalStore()
    for s in signals:
        await memory.publish(s)
    assert await memory.history("BTCUSDT", 2) == signals[:0:-1]


def test_an_audit_entry_is_compressed_json_or_plain_json_and_nothing_else() -> None:
    signal = make_signal(T0)
    assert from_audit(pack(signal.to_json())) == signal
    assert from_audit(signal.to_json()) == signal  # entries written before compression
    for bad in (b"garbage", pack(signal.to_json())[:-5], zlib.compress(b"x" * (2 << 20))):
        with pytest.raises(SignalFormatError):
            from_audit(bad)


async def test_a_foreign_audit_entry_is_skipped_not_fatal(redis_url: str) -> None:
    async with redis_signals(redis_url, unique_prefix()) as store:
        await store.publish(make_signal(T0))
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.xadd(store.keys.signal_audit("BTCUSDT"), {"start": "1", "signal": zlib.compress(b"{not json")})
        finally:
            await client.aclose()
        assert [s.bar.start for s in await store.history("BTCUSDT")] == [T0]


def test_the_audit_keeps_a_time_span_of_the_finest_bars() -> None:
    from service.settings import load_settings

    assert load_settings().signal_audit_maxlen == 24 * 60  # the default: 24 hours of 1m bars
    assert load_settings(signal_audit_hours=6).signal_audit_maxlen == 360
    assert load_settings(intervals=["5", "60"]).signal_audit_maxlen == 24 * 12


async def test_a_bar_older_than_every_remembered_one_is_refused_as_too_old_not_as_a_duplicate(
    redis_url: str,
) -> None:
    """The dedupe set keeps the newest ``dedupe_keep`` starts: an older bar cannot be told from a
    duplicate, so it is refused, and says so (the worker logs it) rather than passing for a duplicate."""
    from inference.signal_store import Published

    memory = MemorySignalStore(audit_maxlen=3)
    memory.dedupe_keep = 3
    async with redis_signals(redis_url, unique_prefix()) as redis_store:
        redis_store.dedupe_keep = 3
        for store in (redis_store, memory):
            for i in range(1, 5):
                assert await store.publish(make_signal(T0 + i * MINUTE)) is Published.LATEST
            assert await store.publish(make_signal(T0 + 4 * MINUTE)) is Published.DUPLICATE
            assert await store.publish(make_signal(T0)) is Published.TOO_OLD  # older than the 3 kept
            assert await store.publish(make_signal(T0 + MINUTE)) is Published.TOO_OLD  # trimmed from the set


def test_the_audit_must_outlast_the_horizon_the_scorer_looks_back() -> None:
    from inference.scorer import LOOKBACK
    from service.settings import AUDIT_MARGIN_BARS, ConfigError, load_settings

    assert AUDIT_MARGIN_BARS > LOOKBACK
    with pytest.raises(ConfigError, match=r"CANDLECAST_SIGNAL_AUDIT_HOURS: .*keeps 1440 signals.*1440 min needs 1460"):
        load_settings(signal_horizon_min=1440)  # a day ahead needs more than a day of audit
    assert load_settings(signal_horizon_min=1440, signal_audit_hours=25).signal_audit_maxlen == 1500
