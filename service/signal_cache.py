"""The API's in-process copy of the latest signal per symbol, kept current by a feed.

Requests never touch Redis: ``GET /signal/{symbol}`` and the WebSocket snapshot read
:class:`SignalCache`. A feed fills it:

* :class:`RedisSignalFeed` subscribes to ``P:signals`` and, once Redis has CONFIRMED the
  subscription, primes the cache from ``P:{SYM}:signal`` and ``P:{SYM}:nosignal`` of every configured
  symbol. It primes again after every reconnect (pub/sub is at-most-once: what was published while
  the connection was down is only in the keys) and every ``resync_s`` (no-signal records are not
  published, and a message can be lost without a disconnect). redis-py's silent pub/sub reconnect
  is turned off on the feed's own client, so every reconnect goes through the prime.
* :class:`StoreSignalFeed` does the same for an in-process store with ``subscribe()``
  (:class:`~inference.signal_store.MemorySignalStore`, the single-process run).

The cache only moves forward: a signal replaces the cached one only for a newer bar, whichever path
it came by, so a prime racing a pushed message can never turn the answer back.

Time is the EXCHANGE clock (DESIGN.md "Time"): the newest bar close the API has seen — from signals,
no-signal records, the ingestor's bar-closed events in Redis, and an in-process ingestor's clock
when there is one. A signal is servable while ``exchange now - its bar close <= max_age``
(2 finest bars + grace), never judged on the local wall clock.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import redis.asyncio as aioredis
import redis.exceptions as rex

from inference.signal import NoSignal, Signal, SignalFormatError
from inference.signal_store import RedisSignalStore, SignalStore, redis_errors
from service.metrics import ApiMetrics, Freshness
from streaming.backoff import Backoff
from streaming.clock import ExchangeClock
from streaming.errors import StoreError
from streaming.klines import interval_ms

__all__ = [
    "CachedSignal",
    "RedisSignalFeed",
    "SignalCache",
    "SignalFeed",
    "StoreSignalFeed",
    "SubscribableSignalStore",
    "Unavailable",
]

log = logging.getLogger(__name__)

Reason = Literal["warming_up", "no_signal", "stale"]
WARMING_UP_RETRY_S = 5


@dataclass(frozen=True, slots=True)
class CachedSignal:
    signal: Signal
    raw: bytes  # the JSON exactly as the worker wrote it: served as is, never re-serialised
    frame: str  # the WebSocket push, built once and shared by every subscriber

    @classmethod
    def build(cls, signal: Signal, raw: bytes) -> CachedSignal:
        # symbol is [A-Z0-9]+ (validated by Settings and matched against them): safe to splice in.
        frame = '{"op":"signal","symbol":"' + signal.symbol + '","signal":' + raw.decode() + "}"
        return cls(signal, raw, frame)


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why a symbol has no servable signal right now."""

    symbol: str
    reason: Reason
    message: str
    retry_after_s: int
    max_age_ms: int
    exchange_time_ms: int | None
    last: Signal | None  # the latest signal, when there is one (too old to serve)
    no_signal: NoSignal | None  # the newest bar's "why no signal" record, when newer than ``last``

    def details(self) -> dict[str, Any]:
        last = self.last
        ns = self.no_signal
        return {
            "symbol": self.symbol,
            "reason": self.reason,
            "retry_after_s": self.retry_after_s,
            "exchange_time_ms": self.exchange_time_ms,
            "max_age_ms": self.max_age_ms,
            "last_signal_bar": None
            if last is None
            else {"interval": last.bar.interval, "start": last.bar.start, "close_time": last.bar.close_time},
            "age_ms": None
            if last is None or self.exchange_time_ms is None
            else self.exchange_time_ms - last.bar.close_time,
            "no_signal": None
            if ns is None
            else {
                "reason": ns.reason,
                "detail": ns.detail,
                "bar": {"interval": ns.bar.interval, "start": ns.bar.start, "close_time": ns.bar.close_time},
                "produced_at": ns.produced_at,
            },
        }


class SignalCache:
    """Latest signal and no-signal record per configured symbol, and the exchange clock."""

    def __init__(
        self,
        symbols: Sequence[str],
        finest_interval: str,
        grace_s: float,
        *,
        external_clock: ExchangeClock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.symbols = tuple(symbols)
        self._known = frozenset(self.symbols)
        self.interval_ms = interval_ms(finest_interval)
        self.max_age_ms = 2 * self.interval_ms + int(grace_s * 1000)
        self.retry_after_s = max(1, min(30, math.ceil(self.interval_ms / 2000)))
        self.clock = ExchangeClock()
        self._external = external_clock
        self._monotonic = monotonic
        self._advanced_at: float | None = None
        self._latest: dict[str, CachedSignal] = {}
        self._no_signal: dict[str, NoSignal] = {}
        self._listeners: list[Callable[[CachedSignal], None]] = []

    # -- input -----------------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[CachedSignal], None]) -> None:
        """``listener`` is called (synchronously) with every new latest signal."""
        self._listeners.append(listener)

    def observe(self, close_ms: int) -> None:
        if close_ms > self.clock.now_ms():
            self.clock.observe(close_ms)
            self._advanced_at = self._monotonic()

    def offer_json(self, raw: bytes) -> CachedSignal | None:
        """A signal as published; raises :class:`SignalFormatError` for anything else."""
        return self._offer(Signal.from_json(raw), raw)

    def offer(self, signal: Signal) -> CachedSignal | None:
        return self._offer(signal, signal.to_json())

    def _offer(self, signal: Signal, raw: bytes) -> CachedSignal | None:
        symbol = signal.symbol
        if symbol not in self._known:
            return None
        self.observe(signal.bar.close_time)
        current = self._latest.get(symbol)
        if current is not None and current.signal.bar.start >= signal.bar.start:
            return None
        cached = CachedSignal.build(signal, raw)
        self._latest[symbol] = cached
        ns = self._no_signal.get(symbol)
        if ns is not None and ns.bar.start <= signal.bar.start:
            del self._no_signal[symbol]
        for listener in self._listeners:
            listener(cached)
        return cached

    def set_no_signal(self, symbol: str, record: NoSignal | None) -> None:
        """The store's current "why no signal" record for ``symbol`` (None: it has none)."""
        if symbol not in self._known:
            return
        current = self._latest.get(symbol)
        if record is None or (current is not None and current.signal.bar.start >= record.bar.start):
            self._no_signal.pop(symbol, None)
            return
        self.observe(record.bar.close_time)
        self._no_signal[symbol] = record

    # -- output ----------------------------------------------------------------------------------
    def normalise(self, symbol: str) -> str | None:
        """The configured symbol ``symbol`` names (case-insensitive), or None."""
        s = symbol.strip().upper()
        return s if s in self._known else None

    def now_ms(self) -> int | None:
        """The exchange clock: the newest bar close seen, or an in-process ingestor's clock if later."""
        if self._external is not None:
            self.observe(self._external.now_ms())
        return self.clock.now_ms() or None

    def seconds_since_advance(self) -> float | None:
        """Wall seconds since the exchange clock last moved (None before any data)."""
        self.now_ms()
        return None if self._advanced_at is None else self._monotonic() - self._advanced_at

    def latest(self, symbol: str) -> CachedSignal | None:
        return self._latest.get(symbol)

    def status(self, symbol: str) -> CachedSignal | Unavailable:
        """The signal to serve for a configured ``symbol``, or why there is none."""
        cached = self._latest.get(symbol)
        ns = self._no_signal.get(symbol)
        now = self.now_ms()
        if cached is None:
            if ns is not None:
                return self._unavailable(symbol, "no_signal", None, ns, now)
            return self._unavailable(symbol, "warming_up", None, None, now)
        if now is not None and now - cached.signal.bar.close_time > self.max_age_ms:
            if ns is not None and ns.bar.start > cached.signal.bar.start:
                return self._unavailable(symbol, "no_signal", cached.signal, ns, now)
            return self._unavailable(symbol, "stale", cached.signal, None, now)
        return cached

    def _unavailable(
        self, symbol: str, reason: Reason, last: Signal | None, ns: NoSignal | None, now: int | None
    ) -> Unavailable:
        if reason == "warming_up":
            message = f"no signal for {symbol} yet: the service is warming up"
            retry = WARMING_UP_RETRY_S
        elif reason == "no_signal":
            assert ns is not None
            message = f"no signal for {symbol} since the bar at {ns.bar.start}: {ns.reason}"
            retry = self.retry_after_s
        else:
            message = f"the latest signal for {symbol} is older than {self.max_age_ms} ms on the exchange clock"
            retry = self.retry_after_s
        return Unavailable(symbol, reason, message, retry, self.max_age_ms, now, last, ns)

    def freshness(self) -> Freshness:
        return Freshness(
            exchange_time_ms=self.now_ms(),
            signal_close_ms={
                s: (c.signal.bar.close_time if (c := self._latest.get(s)) is not None else None) for s in self.symbols
            },
            available={s: isinstance(self.status(s), CachedSignal) for s in self.symbols},
            latest={s: c.signal for s in self.symbols if (c := self._latest.get(s)) is not None},
            max_age_ms=self.max_age_ms,
        )


# --- feeds ----------------------------------------------------------------------------------------


class SubscribableSignalStore(SignalStore, Protocol):
    def subscribe(self) -> AsyncIterator[Signal]:
        """Every signal that becomes a latest, from now on."""
        ...


class SignalFeed(Protocol):
    @property
    def up(self) -> bool:
        """Subscribed and primed: the cache follows the store."""
        ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


class _OwnedTasks:
    """Named, referenced tasks; a crash is logged; ``close`` cancels them with a timeout."""

    def __init__(self, close_timeout_s: float) -> None:
        self._tasks: list[asyncio.Task[None]] = []
        self._close_timeout_s = close_timeout_s

    def spawn(self, coro: Any, name: str) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro, name=name)
        task.add_done_callback(self._done)
        self._tasks.append(task)

    @staticmethod
    def _done(task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s crashed", task.get_name(), exc_info=task.exception())

    async def cancel_all(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            _, stuck = await asyncio.wait(tasks, timeout=self._close_timeout_s)
            for task in stuck:
                log.warning("task %s did not stop within %.1f s", task.get_name(), self._close_timeout_s)


class _FeedStalled(Exception):
    """The pub/sub connection answers nothing (no subscribe confirmation, no pong)."""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisSignalFeed:
    def __init__(
        self,
        store: RedisSignalStore,
        commands: aioredis.Redis,
        subscriber: aioredis.Redis,
        cache: SignalCache,
        metrics: ApiMetrics,
        *,
        resync_s: float = 5.0,
        backoff: Backoff | None = None,
        ping_s: float = 5.0,
        events_key: str | None = None,
        close_timeout_s: float = 5.0,
    ) -> None:
        """``commands`` runs the prime (the store's client); ``subscriber`` is a client of its own
        for the subscription, built WITHOUT retries so a lost connection surfaces here."""
        self._store = store
        self._commands = commands
        self._subscriber = subscriber
        self._cache = cache
        self._metrics = metrics
        self._resync_s = resync_s
        self._backoff = backoff or Backoff(0.1, 5.0)
        self._ping_s = ping_s
        self._events_key = events_key
        self._tasks = _OwnedTasks(close_timeout_s)
        self._up = False
        self._ever_up = False

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        self._tasks.spawn(self._run(), "api-signal-feed")

    async def close(self) -> None:
        await self._tasks.cancel_all()
        self._set_up(False)

    def _set_up(self, up: bool) -> None:
        self._up = up
        self._metrics.feed_up.set(1 if up else 0)

    async def _run(self) -> None:
        while True:
            pubsub = self._subscriber.pubsub()
            try:
                await self._connect(pubsub)
                await self._listen(pubsub)
            except (StoreError, rex.RedisError, OSError, _FeedStalled) as exc:
                self._metrics.feed_errors.labels("redis").inc()
                log.warning("signal feed lost (%s); the cache holds the last values", exc)
            except Exception:  # a bug must not end the feed: the cache would silently go stale
                self._metrics.feed_errors.labels("internal").inc()
                log.exception("signal feed failed")
            finally:
                self._set_up(False)
                await asyncio.shield(pubsub.aclose())  # type: ignore[no-untyped-call]
            delay = self._backoff.next_delay()
            log.info("signal feed: reconnecting in %.2f s", delay)
            await asyncio.sleep(delay)

    async def _connect(self, pubsub: aioredis.client.PubSub) -> None:
        channel = self._store.channel
        await pubsub.subscribe(channel)
        # Prime only once Redis confirms: a PUBLISH it handles before our SUBSCRIBE would be in
        # neither the keys we read nor the channel.
        deadline = asyncio.get_running_loop().time() + 5.0
        while True:
            msg = await pubsub.get_message(timeout=0.5)
            if msg is not None and msg["type"] == "subscribe":
                break
            if msg is not None and msg["type"] == "message":
                self._on_message(msg["data"])
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
                    self._on_message(msg["data"])
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

    def _on_message(self, data: bytes) -> None:
        try:
            if self._cache.offer_json(data) is not None:
                self._metrics.signal_updates.labels("pubsub").inc()
        except SignalFormatError as exc:
            self._metrics.feed_errors.labels("bad_message").inc()
            log.warning("ignoring a message on %s that is not a signal: %s", self._store.channel, exc)

    async def prime(self) -> None:
        """Read every configured symbol's latest signal and no-signal record in one round trip."""
        symbols = self._cache.symbols
        pipe = self._commands.pipeline(transaction=False)
        for s in symbols:
            pipe.get(self._store.latest_key(s))
            pipe.hgetall(self._store.no_signal_key(s))
        if self._events_key is not None:
            pipe.xrevrange(self._events_key, count=1)
        with redis_errors("prime the signal cache"):
            replies: list[Any] = await pipe.execute()
        for i, s in enumerate(symbols):
            raw, ns = replies[2 * i], replies[2 * i + 1]
            if raw is not None:
                try:
                    if self._cache.offer_json(raw) is not None:
                        self._metrics.signal_updates.labels("prime").inc()
                except SignalFormatError as exc:
                    self._metrics.feed_errors.labels("bad_message").inc()
                    log.warning("%s: the stored latest signal is unreadable: %s", s, exc)
            record = None
            if ns:
                try:
                    record = NoSignal.from_fields({_text(k): _text(v) for k, v in ns.items()})
                except SignalFormatError as exc:
                    log.warning("%s: the stored no-signal record is unreadable: %s", s, exc)
            self._cache.set_no_signal(s, record)
        if self._events_key is not None:
            self._observe_event(replies[-1])

    def _observe_event(self, entries: Any) -> None:
        """The ingestor's newest bar-closed event moves the exchange clock even when no worker runs,
        so a dead worker's last signal turns stale instead of being served forever."""
        for _id, fields in entries or []:
            f = {_text(k): _text(v) for k, v in (fields or {}).items()}
            try:
                self._cache.observe(int(f["start"]) + interval_ms(f["interval"]))
            except (KeyError, ValueError):
                log.debug("ignoring a foreign entry in %s", self._events_key)


class StoreSignalFeed:
    """Feeds the cache from an in-process store (``subscribe()`` + ``latest()`` / ``no_signal()``)."""

    def __init__(
        self,
        store: SubscribableSignalStore,
        cache: SignalCache,
        metrics: ApiMetrics,
        *,
        resync_s: float = 5.0,
        close_timeout_s: float = 5.0,
    ) -> None:
        self._store = store
        self._cache = cache
        self._metrics = metrics
        self._resync_s = resync_s
        self._tasks = _OwnedTasks(close_timeout_s)
        self._up = False

    @property
    def up(self) -> bool:
        return self._up

    async def start(self) -> None:
        self._tasks.spawn(self._consume(), "api-signal-feed")
        # The new task runs to its first await — inside subscribe(), queue registered — before we
        # resume: nothing published from here on is missed by the prime below.
        await asyncio.sleep(0)
        await self.prime()
        self._tasks.spawn(self._resync(), "api-signal-resync")
        self._up = True
        self._metrics.feed_up.set(1)

    async def close(self) -> None:
        await self._tasks.cancel_all()
        self._up = False
        self._metrics.feed_up.set(0)

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
        for s in self._cache.symbols:
            signal = await self._store.latest(s)
            if signal is not None and self._cache.offer(signal) is not None:
                self._metrics.signal_updates.labels("prime").inc()
            self._cache.set_no_signal(s, await self._store.no_signal(s))
