"""Where signals go: the latest per symbol, a bounded audit stream, pub/sub, and "why no signal".

Redis layout (``P`` = key prefix; ``{SYM}`` is the same Redis Cluster hash tag as the windows, so
one script updates every key of a symbol atomically):

=============================  ======  ==========================================================
``P:{SYM}:signal``             STRING  the latest signal's JSON (the newest bar published)
``P:{SYM}:signals``            STREAM  audit: one entry per (symbol, bar), fields ``start``, ``signal``
                                       (the JSON compressed, :func:`inference.compact.pack`);
                                       ``MAXLEN ~ audit_maxlen`` (``CANDLECAST_SIGNAL_AUDIT_HOURS``)
``P:{SYM}:signal:bars``        ZSET    bar starts already published (dedupe), newest ``dedupe_keep``
                                       (as many as the audit keeps; an event older than all of them
                                       is refused as too old to tell, never published twice)
``P:{SYM}:nosignal``           HASH    why the newest bar has no signal (:class:`NoSignal` fields)
``P:signals``                  PUBSUB  every signal that became the latest, as JSON
=============================  ======  ==========================================================

Exactly once per (symbol, bar): the publish script adds the bar start to ``signal:bars`` and
appends to the audit stream only if it is not there yet, so two workers (or a re-delivered event)
never publish the same bar twice. A signal for an older bar than the latest (a claimed event
finished after a newer one) is audited but neither replaces the latest nor is pushed: subscribers
only ever see time move forward.

The audit holds each signal's JSON compressed (:mod:`inference.compact`; about a third of its 3.4 kB
with nine components): it is most of a symbol's memory, and read only for history and scoring; the
latest key and the channel carry the JSON as written, served byte for byte.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Protocol

from inference.compact import pack, unpack
from inference.signal import NoSignal, Signal, SignalFormatError
from streaming.bar_events import BarEventError, decode_bar_event
from streaming.klines import interval_ms
from streaming.redis_boundary import client_db, store_errors, text
from streaming.redis_client import RedisClient
from streaming.redis_keys import RedisKeys

__all__ = [
    "AUDIT_MAXLEN",
    "MemorySignalStore",
    "Published",
    "RedisSignalStore",
    "SignalSnapshot",
    "SignalStore",
    "SymbolSnapshot",
    "from_audit",
    "once_per_bar_lua",
]

log = logging.getLogger(__name__)


class Published(Enum):
    LATEST = "latest"  # new latest: written, audited, pushed
    AUDITED = "audited"  # older than the latest: audited only
    DUPLICATE = "duplicate"  # this (symbol, bar) was already published: nothing written
    TOO_OLD = "too_old"  # older than every bar the dedupe set remembers: refused, as it cannot tell


@dataclass(frozen=True, slots=True)
class SymbolSnapshot:
    """What the store holds for one symbol: its latest signal as stored, and its no-signal record."""

    symbol: str
    signal: bytes | None  # the latest signal's JSON exactly as the worker wrote it (None: none yet)
    no_signal: NoSignal | None  # None: no record, or one that cannot be read (logged)


@dataclass(frozen=True, slots=True)
class SignalSnapshot:
    """Every asked symbol's :class:`SymbolSnapshot`, read at one moment (one round trip)."""

    symbols: tuple[SymbolSnapshot, ...]
    newest_bar_close_ms: int | None = None  # the newest bar-closed event's close, when asked for


def _no_signal_or_none(symbol: str, fields: dict[str, str]) -> NoSignal | None:
    if not fields:
        return None
    try:
        return NoSignal.from_fields(fields)
    except SignalFormatError as exc:
        log.warning("%s: the stored no-signal record is unreadable: %s", symbol, exc)
        return None


class SignalStore(Protocol):
    async def publish(self, signal: Signal) -> Published:
        """Write ``signal`` once per (symbol, bar); raises ``StoreUnavailable`` if unreachable."""
        ...

    async def record_no_signal(self, record: NoSignal) -> bool:
        """Record why a bar has no signal, unless it (or a newer bar) has one. True if recorded."""
        ...

    async def latest(self, symbol: str) -> Signal | None: ...

    async def history(self, symbol: str, count: int = 100) -> list[Signal]:
        """The newest ``count`` audited signals, newest first."""
        ...

    async def no_signal(self, symbol: str) -> NoSignal | None: ...

    async def published_starts(self, symbol: str, count: int) -> list[int]:
        """The bar starts of the newest ``count`` published signals, ascending."""
        ...

    async def close(self) -> None: ...


def once_per_bar_lua(bars: str, keep: str) -> str:
    """The Lua that makes a script act once per bar start ``ARGV[1]``: it returns 0 when the ZSET
    ``bars`` already holds that start, -1 when the set is full (``keep`` starts) and the start is older
    than all of them (too old to tell); else it adds the start, trims the set to ``keep`` and goes on
    with ``start``, ``keep`` and ``top`` (the newest start before this one, WITHSCORES) defined."""
    return f"""
local start = tonumber(ARGV[1])
if redis.call('ZSCORE', {bars}, ARGV[1]) then return 0 end
local keep = tonumber({keep})
local n = redis.call('ZCARD', {bars})
if n >= keep then
  local oldest = redis.call('ZRANGE', {bars}, 0, 0, 'WITHSCORES')
  if start < tonumber(oldest[2]) then return -1 end
end
local top = redis.call('ZRANGE', {bars}, -1, -1, 'WITHSCORES')
redis.call('ZADD', {bars}, start, ARGV[1])
n = n + 1
if n > keep then redis.call('ZREMRANGEBYRANK', {bars}, 0, n - keep - 1) end
"""


# KEYS: latest, audit, published bars (zset), nosignal.
# ARGV: start, json, audit_maxlen, dedupe_keep, channel, the audit entry (the JSON compressed).
# Returns 2 = new latest, 1 = audited only (older bar), 0 = duplicate, -1 = too old to dedupe.
_PUBLISH = (
    once_per_bar_lua("KEYS[3]", "ARGV[4]")
    + """
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], '*', 'start', ARGV[1], 'signal', ARGV[6])
if top[2] and tonumber(top[2]) > start then return 1 end
redis.call('SET', KEYS[1], ARGV[2])
local ns = tonumber(redis.call('HGET', KEYS[4], 'bar_start') or '-1')
if ns <= start then redis.call('DEL', KEYS[4]) end
redis.call('PUBLISH', ARGV[5], ARGV[2])
return 2
"""
)

# KEYS: nosignal, published bars. ARGV: start, then field/value pairs. Returns 1 if recorded.
_NO_SIGNAL = """
local start = tonumber(ARGV[1])
local top = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if top[2] and tonumber(top[2]) >= start then return 0 end
local ns = tonumber(redis.call('HGET', KEYS[1], 'bar_start') or '-1')
if ns > start then return 0 end
redis.call('DEL', KEYS[1])
local args = {}
for i = 2, #ARGV do args[#args + 1] = ARGV[i] end
redis.call('HSET', KEYS[1], unpack(args))
return 1
"""


AUDIT_MAXLEN = 1440  # 24 hours of 1m bars (Settings.signal_audit_maxlen)
DEDUPE_KEEP = AUDIT_MAXLEN  # published bar starts remembered: as long as the audit (a claimed or replayed
# event older than all of them is refused as too old, loudly); 150 kB a symbol in Redis


def from_audit(raw: bytes) -> Signal:
    """The signal of an audit entry (compressed, or plain JSON as older entries are); raises
    :class:`SignalFormatError` for anything else."""
    try:
        return Signal.from_json(unpack(raw))
    except ValueError as exc:
        raise SignalFormatError(str(exc)) from None


class RedisSignalStore:
    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "cc",
        audit_maxlen: int = AUDIT_MAXLEN,
        dedupe_keep: int | None = None,
    ) -> None:
        self._r = client
        self.prefix = prefix
        self.keys = RedisKeys(prefix, db=client_db(client))
        self.audit_maxlen = audit_maxlen
        self.dedupe_keep = max(audit_maxlen, DEDUPE_KEEP) if dedupe_keep is None else dedupe_keep
        self._publish = client.register_script(_PUBLISH)
        self._no_signal = client.register_script(_NO_SIGNAL)

    async def publish(self, signal: Signal) -> Published:
        s = signal.symbol
        keys = [self.keys.signal_latest(s), self.keys.signal_audit(s), self.keys.signal_bars(s), self.keys.no_signal(s)]
        raw = signal.to_json()
        args: list[Any] = [
            signal.bar.start,
            raw,
            self.audit_maxlen,
            self.dedupe_keep,
            self.keys.signals_channel,
            pack(raw),
        ]
        with store_errors("publish signal"):
            outcome = int(await self._publish(keys=keys, args=args))
        return {2: Published.LATEST, 1: Published.AUDITED, -1: Published.TOO_OLD}.get(outcome, Published.DUPLICATE)

    async def record_no_signal(self, record: NoSignal) -> bool:
        args: list[Any] = [record.bar.start]
        for k, v in record.to_fields().items():
            args += [k, v]
        keys = [self.keys.no_signal(record.symbol), self.keys.signal_bars(record.symbol)]
        with store_errors("record no-signal"):
            return bool(await self._no_signal(keys=keys, args=args))

    async def latest(self, symbol: str) -> Signal | None:
        raw = await self.latest_raw(symbol)
        return None if raw is None else Signal.from_json(raw)

    async def latest_raw(self, symbol: str) -> bytes | None:
        """The latest signal's stored bytes, exactly as the worker's publish script wrote them."""
        with store_errors("read latest signal"):
            raw = await self._r.get(self.keys.signal_latest(symbol))
        return raw.encode() if isinstance(raw, str) else raw

    async def history(self, symbol: str, count: int = 100) -> list[Signal]:
        with store_errors("read signal history"):
            entries = await self._r.xrevrange(self.keys.signal_audit(symbol), count=count)
        out = []
        for entry_id, fields in entries or []:
            raw = (fields or {}).get(b"signal")
            try:
                if not isinstance(raw, bytes):
                    raise SignalFormatError("no signal field")
                out.append(from_audit(raw))
            except SignalFormatError:
                log.warning("skipping a foreign entry %r in %s", entry_id, self.keys.signal_audit(symbol))
        return out

    async def published_starts(self, symbol: str, count: int) -> list[int]:
        with store_errors("read the published bars"):
            members: Any = await self._r.zrange(self.keys.signal_bars(symbol), -count, -1, withscores=True)
        return [int(score) for _member, score in members or []]

    async def no_signal(self, symbol: str) -> NoSignal | None:
        with store_errors("read no-signal"):
            raw = await self._r.hgetall(self.keys.no_signal(symbol))
        if not raw:
            return None
        return NoSignal.from_fields({text(k): text(v) for k, v in raw.items()})

    async def snapshot(self, symbols: Sequence[str], *, bar_clock: bool = False) -> SignalSnapshot:
        """Each symbol's latest signal and no-signal record in one round trip; with ``bar_clock``
        also the close time of the newest event on the ingestor's bar-closed stream, so a reader's
        exchange clock moves even while no worker publishes."""
        pipe = self._r.pipeline(transaction=False)
        for s in symbols:
            pipe.get(self.keys.signal_latest(s))
            pipe.hgetall(self.keys.no_signal(s))
        if bar_clock:
            pipe.xrevrange(self.keys.bar_events, count=1)
        with store_errors("read the signal snapshot"):
            replies: list[Any] = await pipe.execute()
        out = tuple(
            SymbolSnapshot(
                s,
                replies[2 * i],
                _no_signal_or_none(s, {text(k): text(v) for k, v in (replies[2 * i + 1] or {}).items()}),
            )
            for i, s in enumerate(symbols)
        )
        newest = _newest_close(replies[-1], self.keys.bar_events) if bar_clock else None
        return SignalSnapshot(out, newest)

    async def close(self) -> None:
        await self._r.aclose()


def _newest_close(entries: Any, events_key: str) -> int | None:
    """The close time of the newest entry of the bar-closed stream (``start`` + one ``interval``)."""
    for _id, fields in entries or []:
        try:
            event = decode_bar_event(fields or {})
            return event.start + interval_ms(event.interval)
        except (BarEventError, ValueError):
            log.debug("ignoring a foreign entry in %s", events_key)
    return None


@dataclass
class _SymbolState:
    latest: Signal | None = None
    audit: deque[bytes] = field(default_factory=deque)  # audit entries (compressed JSON), as in Redis
    bars: set[int] = field(default_factory=set)
    no_signal: NoSignal | None = None


class MemorySignalStore:
    """The in-process equivalent, for the single-process run. Subscribers get bounded queues: when
    one is full its oldest signal is dropped (and counted in ``dropped``), never the publisher blocked."""

    def __init__(self, *, audit_maxlen: int = AUDIT_MAXLEN, subscriber_queue: int = 256) -> None:
        self.audit_maxlen = audit_maxlen
        self.dedupe_keep = max(audit_maxlen, DEDUPE_KEEP)  # as RedisSignalStore's
        self._symbols: dict[str, _SymbolState] = {}
        self._subscribers: set[asyncio.Queue[Signal]] = set()
        self._queue_size = subscriber_queue
        self.dropped = 0

    async def publish(self, signal: Signal) -> Published:
        st = self._symbols.setdefault(signal.symbol, _SymbolState(audit=deque(maxlen=self.audit_maxlen)))
        start = signal.bar.start
        if start in st.bars:
            return Published.DUPLICATE
        if len(st.bars) >= self.dedupe_keep and start < min(st.bars):
            return Published.TOO_OLD
        newest = max(st.bars, default=None)
        st.bars.add(start)
        if len(st.bars) > self.dedupe_keep:
            st.bars.discard(min(st.bars))
        st.audit.append(pack(signal.to_json()))
        if newest is not None and newest > start:
            return Published.AUDITED
        st.latest = signal
        if st.no_signal is not None and st.no_signal.bar.start <= start:
            st.no_signal = None
        for q in self._subscribers:
            if q.full():
                q.get_nowait()
                self.dropped += 1
            q.put_nowait(signal)
        return Published.LATEST

    async def record_no_signal(self, record: NoSignal) -> bool:
        st = self._symbols.setdefault(record.symbol, _SymbolState(audit=deque(maxlen=self.audit_maxlen)))
        start = record.bar.start
        if st.bars and max(st.bars) >= start:
            return False
        if st.no_signal is not None and st.no_signal.bar.start > start:
            return False
        st.no_signal = record
        return True

    async def latest(self, symbol: str) -> Signal | None:
        st = self._symbols.get(symbol)
        return st.latest if st else None

    async def history(self, symbol: str, count: int = 100) -> list[Signal]:
        st = self._symbols.get(symbol)
        return [from_audit(raw) for raw in itertools.islice(reversed(st.audit), count)] if st else []

    async def no_signal(self, symbol: str) -> NoSignal | None:
        st = self._symbols.get(symbol)
        return st.no_signal if st else None

    async def published_starts(self, symbol: str, count: int) -> list[int]:
        st = self._symbols.get(symbol)
        return sorted(st.bars)[-count:] if st is not None and count > 0 else []

    async def snapshot(self, symbols: Sequence[str]) -> SignalSnapshot:
        """Each symbol's latest signal (as JSON) and no-signal record."""
        out = []
        for s in symbols:
            st = self._symbols.get(s)
            latest = None if st is None or st.latest is None else st.latest.to_json()
            out.append(SymbolSnapshot(s, latest, None if st is None else st.no_signal))
        return SignalSnapshot(tuple(out))

    async def subscribe(self) -> AsyncIterator[Signal]:
        """Every signal that becomes a latest, from now on, until the caller stops iterating."""
        q: asyncio.Queue[Signal] = asyncio.Queue(self._queue_size)
        self._subscribers.add(q)
        try:
            while True:
                yield await q.get()
        finally:
            self._subscribers.discard(q)

    async def close(self) -> None:
        return None
