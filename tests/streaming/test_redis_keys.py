"""The Redis key layout: the names the ingestor, the worker and the API agree on."""

from __future__ import annotations

from streaming.redis_keys import RedisKeys


def test_window_keys_share_the_symbols_hash_slot() -> None:
    k = RedisKeys("cc")
    assert k.kline("BTCUSDT", "15") == "cc:{BTCUSDT}:kline:15"
    assert k.book("BTCUSDT", 50) == "cc:{BTCUSDT}:book:50"
    assert k.depth("BTCUSDT", 50) == "cc:{BTCUSDT}:depth:50"
    assert k.status("BTCUSDT") == "cc:{BTCUSDT}:status"
    assert k.bar_events == "cc:events:bars"
    assert k.all_keys == "cc:*"


def test_signal_keys_match_the_signal_store_layout() -> None:
    k = RedisKeys("p1")
    assert k.signal_latest("ETHUSDT") == "p1:{ETHUSDT}:signal"
    assert k.signal_audit("ETHUSDT") == "p1:{ETHUSDT}:signals"
    assert k.signal_bars("ETHUSDT") == "p1:{ETHUSDT}:signal:bars"
    assert k.no_signal("ETHUSDT") == "p1:{ETHUSDT}:nosignal"
    assert k.signals_channel == "p1:db0:signals"
    assert RedisKeys("p1", db=3).signals_channel == "p1:db3:signals"  # pub/sub is server-wide
    assert k.symbol_scope("ETHUSDT") == "p1:{ETHUSDT}"
