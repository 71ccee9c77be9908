"""Redis implementation of :class:`streaming.store.WindowStore` (key names in :mod:`streaming.redis_keys`)."""

from __future__ import annotations

import logging
import struct
from collections import deque
from collections.abc import Sequence
from typing import Any

from streaming.bar_events import BarEventError, decode_bar_event, encode_bar_event
from streaming.depth import DepthRow, decode_row, encode_row
from streaming.errors import StoreError
from streaming.klines import Bar, decode_bar, encode_bar
from streaming.redis_boundary import UNAVAILABLE, store_errors, text
from streaming.redis_client import RedisClient, connect, pipelined_script
from streaming.redis_keys import RedisKeys
from streaming.store import BarEvent, BookStatus, SymbolWindows, WriteBatch, WriteResult, new_closes, revised_field

__all__ = ["RedisStore"]

log = logging.getLogger(__name__)

# Idempotent upsert into a bounded time-keyed window, atomically (a script runs alone).
# KEYS[1] = ZSET, KEYS[2] = the symbol's status HASH (same hash tag); ARGV = maxlen, the status field
# that marks a revised window ('' for none), a start to replace up to ('' for none: the pairs are the
# exchange's record up to it, every other member at or before it goes, e.g. an undecodable one), then
# (score, member) pairs in ascending score. A member replaced by other values sets the status field
# to the oldest revised start in the same script, so no reader ever sees a revised window unmarked
# (streaming.store.revised_field).
# Returns {newest start before, newest start after, inserted, revised, starts inserted beyond the old newest...}.
_UPSERT_WINDOW = """
local key = KEYS[1]
local maxlen = tonumber(ARGV[1])
local mark = ARGV[2]
local first_revised = nil
if ARGV[3] ~= '' then
  local keep = {}
  for i = 4, #ARGV, 2 do keep[tonumber(ARGV[i])] = true end
  local older = redis.call('ZRANGEBYSCORE', key, '-inf', ARGV[3], 'WITHSCORES')
  for j = 1, #older, 2 do
    if not keep[tonumber(older[j + 1])] then redis.call('ZREM', key, older[j]) end
  end
end
local function newest()
  local top = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if top[2] then return top[2] end
  return '-1'
end
local before = newest()
local inserted, revised = 0, 0
local fresh = {}
for i = 4, #ARGV, 2 do
  local score, member = ARGV[i], ARGV[i + 1]
  local old = redis.call('ZRANGEBYSCORE', key, score, score)
  if #old == 0 then
    redis.call('ZADD', key, score, member)
    inserted = inserted + 1
    if tonumber(score) > tonumber(before) then table.insert(fresh, score) end
  elseif #old > 1 or old[1] ~= member then  -- two members at one start: one is damaged
    redis.call('ZREMRANGEBYSCORE', key, score, score)
    redis.call('ZADD', key, score, member)
    revised = revised + 1
    if first_revised == nil or tonumber(score) < tonumber(first_revised) then first_revised = score end
  end
end
if first_revised ~= nil and mark ~= '' then redis.call('HSET', KEYS[2], mark, first_revised) end
local n = redis.call('ZCARD', key)
if n > maxlen then redis.call('ZREMRANGEBYRANK', key, 0, n - maxlen - 1) end
local out = {before, newest(), inserted, revised}
for _, s in ipairs(fresh) do table.insert(out, s) end
return out
"""


class RedisStore:
    def __init__(
        self,
        client: RedisClient,
        *,
        prefix: str = "cc",
        window_bars: int = 256,
        depth_rows: int = 300,
        events_maxlen: int = 100_000,
        reuse_decoded: bool = False,
    ) -> None:
        """``reuse_decoded``: keep each window's bars as decoded by the last :meth:`read_symbol` of it,
        by their stored record, and decode only the records that are new (a worker reads every window
        of a symbol at each of its closes, and between two closes a window changes by a bar or two).
        A record maps to one bar whatever reads it, so a reused bar is the one decoding would give;
        what is kept is one window's bars per window read, replaced at each read."""
        self._r = client
        self.prefix = prefix
        self.window_bars = window_bars
        self.depth_rows = depth_rows
        self._events_maxlen = events_maxlen
        self.keys = RedisKeys(prefix)
        self._upsert = client.register_script(_UPSERT_WINDOW)
        self._unsent_events: deque[BarEvent] = deque(maxlen=100_000)
        self._decoded: dict[tuple[str, str], dict[bytes | str, Bar]] | None = {} if reuse_decoded else None

    @classmethod
    def from_url(cls, url: str, *, cluster: bool = False, **kwargs: Any) -> RedisStore:
        return cls(connect(url, cluster=cluster, health_check_interval=10), **kwargs)

    async def write(self, batch: WriteBatch) -> WriteResult:
        result = WriteResult()
        bar_keys = list(batch.bars)
        try:
            with store_errors():
                await self._write(batch, bar_keys, result)
        except (ValueError, TypeError, struct.error) as exc:
            raise StoreError(f"cannot encode batch: {exc}") from exc
        return result

    async def _write(self, batch: WriteBatch, bar_keys: list[tuple[str, str]], result: WriteResult) -> None:
        await self._send_events()  # events a failed attempt left behind go first, in order
        if not batch:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for symbol, interval in bar_keys:
                bound = batch.replace.get((symbol, interval))
                replace = "" if bound is None else str(bound)
                args: list[Any] = [self.window_bars, revised_field(interval), replace]
                for bar in sorted(batch.bars[(symbol, interval)], key=lambda b: b.start):
                    args += [bar.start, encode_bar(bar)]
                keys = [self.keys.kline(symbol, interval), self.keys.status(symbol)]
                await pipelined_script(pipe, self._upsert, _UPSERT_WINDOW, keys, args)
            for (symbol, depth), book in batch.books.items():
                pipe.hset(self.keys.book(symbol, depth), mapping=book.to_fields())  # type: ignore[arg-type]
            for (symbol, depth), rows in batch.depth_rows.items():
                args = [self.depth_rows, "", ""]
                for row in rows:
                    args += [row.ts, encode_row(row)]
                await pipelined_script(pipe, self._upsert, _UPSERT_WINDOW, [self.keys.depth(symbol, depth)], args)
            for symbol, fields in batch.status.items():
                pipe.hset(self.keys.status(symbol), mapping=fields)  # type: ignore[arg-type]
            # One bad key (say WRONGTYPE) must not fail, or endlessly retry, the whole batch.
            replies = await pipe.execute(raise_on_error=False)
        for reply in replies:
            if isinstance(reply, UNAVAILABLE):  # an outage, not this key's fault: the whole write retries
                raise reply
        for key, reply in zip(bar_keys, replies, strict=False):
            if isinstance(reply, Exception):
                result.errors.append(f"kline window {key}: {reply}")
                continue
            before, after, inserted, revised = int(reply[0]), int(reply[1]), int(reply[2]), int(reply[3])
            result.inserted[key] = inserted
            result.revised[key] = revised
            fresh = sorted(int(s) for s in reply[4:])
            result.events += [BarEvent(key[0], key[1], s) for s in new_closes(before, fresh) if s <= after]
        result.errors += [str(r) for r in replies[len(bar_keys) :] if isinstance(r, Exception)]
        self._unsent_events.extend(result.events)
        await self._send_events()

    async def _send_events(self) -> None:
        """Append pending bar-closed events; kept (bounded) for the next write if Redis fails.

        The windows and the events stream live in different hash slots, so one script cannot
        write both; keeping unsent events here makes their delivery survive an outage between the two.
        """
        if not self._unsent_events:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for ev in self._unsent_events:
                pipe.xadd(
                    self.keys.bar_events,
                    encode_bar_event(ev),  # type: ignore[arg-type]
                    maxlen=self._events_maxlen,
                    approximate=True,
                )
            await pipe.execute()
        self._unsent_events.clear()

    async def read_symbol(
        self,
        symbol: str,
        intervals: Sequence[str],
        depth: int,
        *,
        with_depth: bool = True,
        depth_after_ms: int | None = None,
    ) -> SymbolWindows:
        with store_errors():
            async with self._r.pipeline(transaction=True) as pipe:
                for interval in intervals:
                    pipe.zrange(self.keys.kline(symbol, interval), 0, -1)
                pipe.hgetall(self.keys.book(symbol, depth))
                pipe.hgetall(self.keys.status(symbol))
                if with_depth:
                    after = "-inf" if depth_after_ms is None else f"({depth_after_ms}"
                    pipe.zrangebyscore(self.keys.depth(symbol, depth), after, "+inf")
                replies = await pipe.execute()
        n = len(intervals)
        bars: dict[str, list[Bar]] = {}
        corrupt: set[str] = set()
        for i, iv in enumerate(intervals):
            # One damaged record costs its window (the components reading it are dropped), not the
            # whole symbol; its content is never repeated (it may hold anything).
            bars[iv] = self._decode_window(symbol, iv, replies[i], corrupt)
            if iv in corrupt:
                log.error("%s: undecodable records skipped", self.keys.kline(symbol, iv))
        try:
            book_raw: dict[bytes, bytes] = replies[n]
            book = BookStatus.from_fields({text(k): text(v) for k, v in book_raw.items()}) if book_raw else None
            status = {text(k): text(v) for k, v in replies[n + 1].items()}
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"corrupt data under {self.keys.symbol_scope(symbol)}: {exc}") from exc
        rows = _depth_rows(replies[n + 2], self.keys.depth(symbol, depth)) if with_depth else []
        return SymbolWindows(symbol=symbol, bars=bars, book=book, depth=rows, status=status, corrupt=frozenset(corrupt))

    def _decode_window(
        self, symbol: str, interval: str, members: Sequence[bytes | str], corrupt: set[str]
    ) -> list[Bar]:
        known = self._decoded.get((symbol, interval), {}) if self._decoded is not None else {}
        decoded: dict[bytes | str, Bar] = {}  # in the window's order (a sorted set's members are unique)
        for member in members:
            bar = known.get(member)
            if bar is None:
                try:
                    bar = decode_bar(member)
                except (StoreError, ValueError, UnicodeDecodeError):
                    corrupt.add(interval)
                    continue
            decoded[member] = bar
        if self._decoded is not None:
            self._decoded[(symbol, interval)] = decoded
        return list(decoded.values())

    async def bars_after(self, symbol: str, interval: str, start: int) -> list[Bar]:
        with store_errors():
            members = await self._r.zrangebyscore(self.keys.kline(symbol, interval), f"({start}", "+inf")
        out = []
        for member in members:
            try:
                if not isinstance(member, bytes | str):
                    raise ValueError("not a member")
                out.append(decode_bar(member))
            except (StoreError, ValueError, UnicodeDecodeError):
                log.warning("%s: an undecodable record skipped", self.keys.kline(symbol, interval))
        return out

    async def request_repair(self, symbol: str, interval: str) -> None:
        with store_errors():
            await self._r.sadd(self.keys.repairs, f"{symbol}|{interval}")

    async def take_repairs(self, count: int = 100) -> list[tuple[str, str]]:
        with store_errors():
            members = await self._r.spop(self.keys.repairs, count)
        out = []
        for m in members or []:
            symbol, _, interval = (m.decode(errors="replace") if isinstance(m, bytes) else str(m)).partition("|")
            if symbol and interval:
                out.append((symbol, interval))
        return sorted(out)

    async def read_events(self, after: str = "0", count: int = 1000) -> list[tuple[str, BarEvent]]:
        with store_errors():
            entries = await self._r.xrange(self.keys.bar_events, min=f"({after}" if after != "0" else "-", count=count)
        out = []
        for entry_id, fields in entries or []:
            try:
                out.append((text(entry_id), decode_bar_event(fields or {})))
            except BarEventError:
                log.warning("skipping a foreign entry %s in %s", text(entry_id), self.keys.bar_events)
        return out

    async def announce(self, events: Sequence[BarEvent]) -> None:
        self._unsent_events.extend(events)
        with store_errors("announce bar events"):
            await self._send_events()

    async def ping(self) -> None:
        with store_errors():
            await self._r.ping()

    async def delete_all(self) -> None:
        """Remove every key under this store's prefix (tests and ``--reset``)."""
        with store_errors():
            async for key in self._r.scan_iter(match=self.keys.all_keys, count=1000):
                await self._r.unlink(key)

    async def close(self) -> None:
        await self._r.aclose()


def _depth_rows(members: Sequence[bytes], key: str) -> list[DepthRow]:
    """The decodable heatmap rows of a depth window, oldest first. A damaged row is skipped (a missing
    sampling slot, which the readers' gap check judges), never the whole symbol, never repeated."""
    rows = []
    for member in members:
        try:
            rows.append(decode_row(member))
        except StoreError:
            log.error("%s: an undecodable depth row skipped", key)
    return rows
