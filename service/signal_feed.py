"""The feeds that keep the API's :class:`~service.signal_cache.SignalCache` current.

* :class:`RedisSignalFeed` subscribes to ``P:signals`` and, once Redis has CONFIRMED the
  subscription, primes the cache from the signal store's :meth:`~RedisSignalStore.snapshot` of
  every configured symbol. It primes again after every reconnect (pub/sub is at-most-once: what was
  published while the connection was down is only in the keys) and every ``resync_s`` (no-signal
  records are not published, and a message can be lost without a disconnect). redis-py's silent
  pub/sub reconnect is turned off on the feed's own client, so every reconnect goes through the prime.
* :class:`StoreSignalFeed` does the same for an in-process store with ``subscribe()``
  (:class:`~inference.signal_store.MemorySignalStore`, the single-process run).

Each feed owns its tasks through a :class:`~streaming.supervisor.TaskSupervisor`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

import redis.asyncio as aioredis
import redis.exceptions as rex

from inference.signal import Signal, SignalFormatError
from inference.signal_store import RedisSignalStore, SignalSnapshot, SignalStore
from service.metrics import ApiMetrics
from service.signal_cache import SignalCache
from streaming.backoff import Backoff
from streaming.errors import StoreError
from streaming.redis_client import RedisClient, fresh_topology
from streaming.supervisor import TaskSupervisor

__all__ = ["RedisSignalFeed", "SignalFeed", "StoreSignalFeed", "SubscribableSignalStore"]

log = logging.getLogger(__name__)


class SubscribableSignalStore(SignalStore, Protocol):
    def subscribe(self) -> AsyncIterator[Signal]:
        """Every signal that becomes a latest, from now on."""
        ...

    async def snapshot(self, symbols: Sequence[str]) -> SignalSnapshot:
        """Each symbol's latest signal and no-signal record."""
        ...


class SignalFeed(Protocol):
    @property
    def up(self) -> bool:
        """Subscribed and primed: the cache follows the store."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _Feed:
    """What both feeds share: the cache they fill, their tasks, and whether they are up."""

    def __init__(self, cache: SignalCache, metrics: ApiMetrics, resync_s: float, close_timeout_s: float) -> None:
        self._cache = cache
        self._metrics = metrics
        self._resync_s = resync_s
        self._tasks = TaskSupervisor("signal feed")
        self._close_timeout_s = close_timeout_s
        self._up = False

    @property
    def up(self) -> bool:
        """Subscribed and primed: the cache follows the store."""
        return self._up

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.feed_up.set(1 if up else 0)

    async def close(self) -> None:
        await self._tasks.cancel_all(self._close_timeout_s)
        self._set_up(False)

    def _prime(self, snapshot: SignalSnapshot) -> None:
        """Offer the cache what the store holds; the cache keeps only what moves it forward."""
        for entry in snapshot.symbols:
            if entry.signal is not None:
                try:
                    if self._cache.offer_json(entry.signal) is not None:
                        self._metrics.signal_updates.labels("prime").inc()
                except SignalFormatError as exc:
                    self._metrics.feed_errors.labels("bad_message").inc()
                    log.warning("%s: the stored latest signal is unreadable: %s", entry.symbol, exc)
            self._cache.set_no_signal(entry.symbol, entry.no_signal)


class _FeedStalled(Exception):
    """The pub/sub connection answers nothing (no subscribe confirmation, no pong)."""


class RedisSignalFeed(_Feed):
    """Feeds the cache from Redis: pub/sub for every new signal, the store's snapshot to prime."""

    def __init__(
        self,
        store: RedisSignalStore,
        subscriber: RedisClient,
        cache: SignalCache,
        metrics: ApiMetrics,
        *,
        resync_s: float = 5.0,
        backoff: Backoff | None = None,
        ping_s: float = 5.0,
        bar_clock: bool = False,
        close_timeout_s: float = 5.0,
    ) -> None:
        """The store's snapshot runs the prime; ``subscriber`` is a client of its own for the
        subscription, built WITHOUT retries so a lost connection surfaces here. ``bar_clock``: read the
        ingestor's bar-closed stream too, whose newest event moves the exchange clock on every prime."""
        super().__init__(cache, metrics, resync_s, close_timeout_s)
        self._store = store
        self._dropped = 0
        self._subscriber = subscriber
        self._backoff = backoff or Backoff(0.1, 5.0)
        self._ping_s = ping_s
        self._bar_clock = bar_clock
        self._ever_up = False

    async def start(self) -> None:
        self._tasks.spawn(self._run(), "api-signal-feed")

    async def _run(self) -> None:
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await fresh_topology(self._subscriber)
                await self._connect(pubsub)
                await self._listen(pubsub)
            except (StoreError, rex.RedisError, rex.RedisClusterException, OSError, _FeedStalled) as exc:
                self._metrics.feed_errors.labels("redis").inc()
                log.warning("signal feed lost (%s); the cache holds the last values", exc)
            except Exception:  # a bug must not end the feed: the cache would silently go stale
                self._metrics.feed_errors.labels("internal").inc()
                log.exception("signal feed failed")
            finally:
                self._set_up(False)
                await asyncio.shield(pubsub.aclose())
            delay = self._backoff.next_delay()
            log.info("signal feed: reconnecting in %.2f s", delay)
            await asyncio.sleep(delay)

    async def _connect(self, pubsub: aioredis.client.PubSub) -> None:
        channel = self._store.keys.signals_channel
        await pubsub.subscribe(channel)
        # Prime only once Redis confirms: a PUBLISH it handles before our SUBSCRIBE would be in
        # neither the keys we read nor the channel.
        deadline = asyncio.get_running_loop().time() + 5.0
        while True:
            msg = await pubsub.get_message(timeout=0.5)
            if msg is not None and msg["type"] == "subscribe":
                break
            if msg is not None and msg["type"] == "message":
                await self._on_message(msg["data"])
            if asyncio.get_running_loop().time() > deadline:
                raise _FeedStalled(f"no confirmation of SUBSCRIBE {channel}")
        await self.prime()
        if self._ever_up:
            self._metrics.feed_reconnects.inc()
            log.info("signal feed: resubscribed to %s and re-read %d symbols", channel, len(self._cache.symbols))
        self._ever_up = True
        self._backoff.reset()
        self._set_up(True)

    async def _listen(self, pubsub: aioredis.client.PubSub) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        next_resync, next_ping, last_pong = now + self._resync_s, now + self._ping_s, now
        while True:
            msg = await pubsub.get_message(timeout=min(1.0, self._ping_s))
            now = loop.time()
            if msg is not None:
                if msg["type"] == "message":
                    await self._on_message(msg["data"])
                elif msg["type"] == "pong":
                    last_pong = now
            if now >= next_resync:
                await self.prime()
                next_resync = now + self._resync_s
            if now >= next_ping:
                await pubsub.ping()
                next_ping = now + self._ping_s
            if now - last_pong > 3 * self._ping_s:
                raise _FeedStalled(f"no pong from Redis for {now - last_pong:.1f} s")

    async def _on_message(self, data: bytes) -> None:
        """Offer a published signal to the cache only if it is the one the store holds as latest.

        Anyone who can reach Redis can PUBLISH on the channel; only the worker's publish script
        writes the latest key and publishes the same bytes in one atomic step. So a message is
        believed when it is byte for byte the stored latest of a configured symbol; anything else is
        dropped and counted (``unverified``), and the next prime reads the truth anyway."""
        channel = self._store.keys.signals_channel
        try:
            signal = Signal.from_json(data)
        except SignalFormatError as exc:
            self._drop("bad_message", f"a message on {channel} that is not a signal: {exc}")
            return
        symbol = self._cache.normalise(signal.symbol)
        if symbol is None or symbol != signal.symbol:
            self._drop("unknown_symbol", f"a signal on {channel} for {signal.symbol[:32]!r}, not a configured symbol")
            return
        stored = await self._store.latest_raw(symbol)
        if stored != data:
            try:
                newer = stored is not None and Signal.from_json(stored).bar.start > signal.bar.start
            except SignalFormatError:
                newer = False
            if newer:  # a genuine one overtaken by the next bar (a backlog, a fast replay): the next prime has it
                self._metrics.feed_errors.labels("superseded").inc()
                return
            self._drop("unverified", f"a signal on {channel} for {symbol} that is not the stored latest (forged?)")
            return
        if self._cache.offer(signal, data) is not None:  # parsed once, above
            self._metrics.signal_updates.labels("pubsub").inc()

    def _drop(self, kind: str, detail: str) -> None:
        self._metrics.feed_errors.labels(kind).inc()
        self._dropped += 1
        if self._dropped <= 10 or self._dropped % 1000 == 0:  # a flood must not flood the log
            log.warning("signal feed dropped %s (%d dropped so far)", detail, self._dropped)

    async def prime(self) -> None:
        """Read every configured symbol's latest signal and no-signal record in one round trip."""
        snapshot = await self._store.snapshot(self._cache.symbols, bar_clock=self._bar_clock)
        self._prime(snapshot)
        # The ingestor's newest bar-closed event moves the exchange clock even when no worker runs,
        # so a dead worker's last signal turns stale instead of being served forever.
        if snapshot.newest_bar_close_ms is not None:
            self._cache.observe(snapshot.newest_bar_close_ms)


class StoreSignalFeed(_Feed):
    """Feeds the cache from an in-process store (``subscribe()`` + ``snapshot()``)."""

    def __init__(
        self,
        store: SubscribableSignalStore,
        cache: SignalCache,
        metrics: ApiMetrics,
        *,
        resync_s: float = 5.0,
        close_timeout_s: float = 5.0,
    ) -> None:
        super().__init__(cache, metrics, resync_s, close_timeout_s)
        self._store = store

    async def start(self) -> None:
        self._tasks.spawn(self._consume(), "api-signal-feed")
        # The new task runs to its first await — inside subscribe(), queue registered — before we
        # resume: nothing published from here on is missed by the prime below.
        await asyncio.sleep(0)
        await self.prime()
        self._tasks.spawn(self._resync(), "api-signal-resync")
        self._set_up(True)

    async def _consume(self) -> None:
        async for signal in self._store.subscribe():
            if self._cache.offer(signal) is not None:
                self._metrics.signal_updates.labels("pubsub").inc()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self._resync_s)
            try:
                await self.prime()
            except StoreError as exc:
                log.warning("re-reading the signal store failed: %s", exc)

    async def prime(self) -> None:
        self._prime(await self._store.snapshot(self._cache.symbols))
