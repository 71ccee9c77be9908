"""The signal cache's servability policy, pure: no server, no Redis (service.signal_cache)."""

from __future__ import annotations

import time
from collections.abc import Callable

from inference.signal import BarRef, NoSignal
from service.signal_cache import CachedSignal, SignalCache, Unavailable
from streaming.clock import ExchangeClock
from tests.service.kit import MINUTE, T0, make_signal


def _cache(
    *, external_clock: ExchangeClock | None = None, monotonic: Callable[[], float] = time.monotonic
) -> SignalCache:
    return SignalCache(["BTCUSDT", "ETHUSDT"], "1", 30.0, external_clock=external_clock, monotonic=monotonic)


def _no_signal(start: int) -> NoSignal:
    return NoSignal(
        "BTCUSDT", BarRef("1", start, start + MINUTE), "fallback_input:holed_window", "d", start + MINUTE, 0
    )


def test_max_age_is_two_finest_bars_plus_grace() -> None:
    cache = _cache()
    assert cache.max_age_ms == 2 * MINUTE + 30_000
    assert cache.retry_after_s == 30


def test_warming_up_until_a_signal_arrives() -> None:
    answer = _cache().status("BTCUSDT")
    assert isinstance(answer, Unavailable) and answer.reason == "warming_up" and answer.retry_after_s == 5


def test_a_signal_is_served_while_young_on_the_exchange_clock_then_stale() -> None:
    cache = _cache()
    cache.offer(make_signal(T0))
    assert isinstance(cache.status("BTCUSDT"), CachedSignal)
    close = T0 + MINUTE
    cache.observe(close + cache.max_age_ms)  # exactly max_age old: still served
    assert isinstance(cache.status("BTCUSDT"), CachedSignal)
    cache.observe(close + cache.max_age_ms + 1)
    answer = cache.status("BTCUSDT")
    assert isinstance(answer, Unavailable) and answer.reason == "stale"
    assert answer.details()["age_ms"] == cache.max_age_ms + 1


def test_the_cache_only_moves_forward() -> None:
    cache = _cache()
    assert cache.offer(make_signal(T0 + MINUTE)) is not None
    assert cache.offer(make_signal(T0)) is None  # older bar: ignored
    assert cache.offer(make_signal(T0 + MINUTE)) is None  # same bar: ignored
    latest = cache.latest("BTCUSDT")
    assert latest is not None and latest.signal.bar.start == T0 + MINUTE


def test_a_newer_no_signal_record_explains_a_stale_signal() -> None:
    cache = _cache()
    cache.offer(make_signal(T0))
    cache.set_no_signal("BTCUSDT", _no_signal(T0 + 2 * MINUTE))
    cache.observe(T0 + 10 * MINUTE)
    answer = cache.status("BTCUSDT")
    assert isinstance(answer, Unavailable) and answer.reason == "no_signal"
    assert answer.details()["no_signal"]["reason"] == "fallback_input:holed_window"
    # a signal for a newer bar clears the record; a record older than the signal is not kept
    cache.offer(make_signal(T0 + 3 * MINUTE))
    cache.set_no_signal("BTCUSDT", _no_signal(T0))
    answer = cache.status("BTCUSDT")
    assert isinstance(answer, Unavailable) and answer.reason == "stale" and answer.no_signal is None


def test_unknown_symbols_are_not_cached_and_names_are_normalised() -> None:
    cache = _cache()
    assert cache.offer(make_signal(T0, "SOLUSDT")) is None
    assert cache.normalise("btcusdt") == "BTCUSDT" and cache.normalise("SOLUSDT") is None
    for odd in (" btcusdt ", "BTCUSDT\t", "BTCUS\u017fDT", "BTC_USDT", ""):  # one spelling, nothing folded
        assert cache.normalise(odd) is None, repr(odd)


def test_an_in_process_ingestor_clock_moves_the_exchange_time() -> None:
    clock = ExchangeClock()
    cache = _cache(external_clock=clock)
    cache.offer(make_signal(T0))
    clock.observe(T0 + 10 * MINUTE)
    assert cache.now_ms() == T0 + 10 * MINUTE
    assert isinstance(cache.status("BTCUSDT"), Unavailable)


def test_seconds_since_advance_follow_the_injected_monotonic_clock() -> None:
    now = [100.0]
    cache = _cache(monotonic=lambda: now[0])
    assert cache.seconds_since_advance() is None
    cache.observe(T0)
    now[0] = 107.5
    assert cache.seconds_since_advance() == 7.5
    cache.observe(T0)  # not an advance
    assert cache.seconds_since_advance() == 7.5


def test_a_silent_feed_makes_the_latest_signal_stale_after_the_bound() -> None:
    now = [100.0]
    cache = SignalCache(["BTCUSDT"], "1", 30.0, monotonic=lambda: now[0], max_silence_s=180.0)
    cache.offer(make_signal(T0))
    assert not isinstance(cache.status("BTCUSDT"), Unavailable)
    now[0] += 180.5
    answer = cache.status("BTCUSDT")
    assert isinstance(answer, Unavailable) and answer.reason == "stale" and answer.last is not None
    off = SignalCache(["BTCUSDT"], "1", 30.0, monotonic=lambda: now[0], max_silence_s=0.0)
    off.offer(make_signal(T0))
    now[0] += 10_000
    assert not isinstance(off.status("BTCUSDT"), Unavailable)  # 0 turns the bound off


def test_a_record_from_the_future_is_ignored_and_moves_no_clock() -> None:
    """A 30-days-ahead signal or no-signal record of one symbol used to make every other symbol stale."""
    wall = [T0 + 2 * MINUTE]
    cache = SignalCache(["BTCUSDT", "ETHUSDT"], "1", 30.0, wall_ms=lambda: wall[0])
    eth = make_signal(T0, "ETHUSDT")
    cache.offer(eth)
    ahead = T0 + 30 * 24 * 60 * MINUTE
    assert cache.offer(make_signal(ahead, "BTCUSDT")) is None
    cache.set_no_signal("BTCUSDT", _no_signal(ahead))
    cache.observe(ahead + MINUTE)
    assert cache.now_ms() == T0 + MINUTE  # still the real bar's close
    assert cache.status("ETHUSDT") == cache.latest("ETHUSDT")  # still servable
    assert cache.latest("BTCUSDT") is None
