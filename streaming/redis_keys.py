"""The Redis key layout: every key, stream and channel name under one prefix, in one place.

``{SYM}`` is a Redis Cluster hash tag, so every key of one symbol (its windows, book, status and
signals) lives in one slot and one script can update them atomically. The window keys are written
by :mod:`streaming.redis_store`; the signal keys by the worker's signal store and read by the API.

=============================  ======  ==============================================
``P:{SYM}:kline:{interval}``   ZSET    score = bar start (ms), member = ``encode_bar``
``P:{SYM}:book:{depth}``       HASH    book state, reason, u, ts, best bid/ask, sizes
``P:{SYM}:depth:{depth}``      ZSET    score = sample slot (ms), member = ``encode_row``
``P:{SYM}:status``             HASH    surfaced problems (failed subscriptions, REST bans)
``P:events:bars``              STREAM  one entry each time a window's newest bar advances
``P:{SYM}:signal``             STRING  the latest signal's JSON
``P:{SYM}:signals``            STREAM  the signal audit stream
``P:{SYM}:signal:bars``        ZSET    bar starts already published (dedupe)
``P:{SYM}:nosignal``           HASH    why the newest bar has no signal
``P:{SYM}:scores``             STREAM  the track record: one score per signal whose horizon passed
``P:{SYM}:scores:bars``        ZSET    bar starts already scored (exactly once)
``P:{SYM}:track``              LIST    the newest scores' outcomes: the short track record
``P:models:{ID}``              STRING  a manifest's validation figures and drift statistics
``P:db{N}:signals``             PUBSUB  every signal that became the latest
=============================  ======  ==============================================

Keys live in their database, but Redis pub/sub ignores the database number: the channel carries
the db (``db`` of the client) as well as the prefix, so two instances on one server never hear
each other's signals.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["RedisKeys"]


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """Names under ``prefix``: ``RedisKeys("cc").kline("BTCUSDT", "1") == "cc:{BTCUSDT}:kline:1"``."""

    prefix: str = "cc"
    db: int = 0  # the client's database: pub/sub is server-wide, so the channel names it

    def symbol_scope(self, symbol: str) -> str:
        """The hash-tagged stem every key of ``symbol`` starts with: ``cc:{BTCUSDT}``."""
        return f"{self.prefix}:{{{symbol}}}"

    @property
    def all_keys(self) -> str:
        """A ``SCAN MATCH`` pattern for every key under the prefix."""
        return f"{self.prefix}:*"

    # -- windows (streaming)
    def kline(self, symbol: str, interval: str) -> str:
        return f"{self.symbol_scope(symbol)}:kline:{interval}"

    def book(self, symbol: str, depth: int) -> str:
        return f"{self.symbol_scope(symbol)}:book:{depth}"

    def depth(self, symbol: str, depth: int) -> str:
        return f"{self.symbol_scope(symbol)}:depth:{depth}"

    def status(self, symbol: str) -> str:
        return f"{self.symbol_scope(symbol)}:status"

    @property
    def bar_events(self) -> str:
        return f"{self.prefix}:events:bars"

    @property
    def repairs(self) -> str:
        """SET of ``SYMBOL|interval``: windows a reader found damaged, for the ingestor to rebuild."""
        return f"{self.prefix}:repairs"

    # -- signals (written by the worker, read by the API)
    def signal_latest(self, symbol: str) -> str:
        return f"{self.symbol_scope(symbol)}:signal"

    def signal_audit(self, symbol: str) -> str:
        return f"{self.symbol_scope(symbol)}:signals"

    def signal_bars(self, symbol: str) -> str:
        return f"{self.symbol_scope(symbol)}:signal:bars"

    def no_signal(self, symbol: str) -> str:
        return f"{self.symbol_scope(symbol)}:nosignal"

    # -- the track record (scored by the worker, summarised by the API)
    def scores(self, symbol: str) -> str:
        return f"{self.symbol_scope(symbol)}:scores"

    def scored_bars(self, symbol: str) -> str:
        return f"{self.symbol_scope(symbol)}:scores:bars"

    def track(self, symbol: str) -> str:
        return f"{self.symbol_scope(symbol)}:track"

    def model_record(self, models: str) -> str:
        return f"{self.prefix}:models:{models}"

    @property
    def signals_channel(self) -> str:
        return f"{self.prefix}:db{self.db}:signals"
