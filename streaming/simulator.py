"""A Bybit v5 public *linear* exchange simulator for tests, benchmarks and the offline demo.

One port serves both the WebSocket stream (``ws://HOST:PORT/v5/public/linear``) and the REST kline
endpoint (``GET /v5/market/kline``, answered from websockets' ``process_request`` hook). The market
is either historical 1m bars replayed at ``speed`` (klines plus a synthetic order book, see
:mod:`streaming.sim_market`) or a stream recorded by :mod:`streaming.recorder`.

Wire behaviour follows bybit_protocol.md §2-§5:

* ``{"op":"subscribe","req_id":"7","args":[...]}`` is acked with
  ``{"success":true,"ret_msg":"","conn_id":"<uuid>","req_id":"7","op":"subscribe"}``; a bad topic
  (unknown kind, lowercase or unknown symbol, unsupported depth or interval) fails with
  ``error:handler not found,topic:<t>``, a repeat on one connection with
  ``error:already subscribed,topic:<t>`` (the first subscription keeps delivering), an unknown op
  with ``error:invalid op``. The valid topics of a request that also holds a bad one are still
  subscribed; ``ret_msg`` names the first bad topic.
* ``{"op":"ping"}`` is answered ``{"success":true,"ret_msg":"pong",...,"op":"ping"}``.
  Non-JSON text from a client is ignored.
* ``orderbook.{50,200,1000}.SYM``: a ``snapshot`` on subscribe carrying the stream's current ``u``,
  then ``delta`` frames with ``u`` + 1 each. One ``u`` sequence per (symbol, depth) shared by all
  connections; it advances while nobody listens, as on Bybit. ``orderbook.1.SYM`` is snapshot-only,
  as Bybit's level 1 has been since 2025-03 (pushed when the touch changes; no 3 s repeat).
* ``kline.{1,5,15,60}.SYM``: ``kline_updates_per_bar`` confirm=false pushes per minute, then the
  confirm=true bar at the boundary (closes first, then the new bar's first confirm=false). A
  confirmed bar carries the CSV strings exactly and equals the REST row for the same start.

* REST ``GET /v5/market/kline?category=linear&symbol=S&interval=I&start=&end=&limit=`` answers
  newest first with the still-open bar as ``list[0]`` (partial values, as on Bybit); ``start`` and
  ``end`` are inclusive; ``limit`` defaults to 200 and is capped at 1000. A bad symbol, interval,
  category or number is ``retCode 10001`` with HTTP 200; any other path is a 404.

Every ``ts`` is exchange time: the :class:`~streaming.sim_market.SimClock`, which starts
``start_offset_bars`` after the data begins and runs at ``speed``; REST ``time`` is the same clock.

Pacing: one market task emits each event when the clock reaches it and sleeps until the next one.
When it falls more than max(one bar, half a wall second) behind (very high speeds), the partial
kline pushes and book moves of the bars already past are skipped; every confirm=true bar is still
pushed and book ``u`` stays contiguous, so work per bar stays small and no backlog builds.

Backpressure: each connection has a bounded send queue (``send_queue_frames``). A client that lets
it fill is disconnected with close code 1008 ("send queue full"), so a slow reader never slows the
market or other clients and memory stays bounded. Frames are serialized once per event and the same
bytes are queued to every subscriber.

Faults (methods of :class:`ExchangeSimulator`): ``drop_connections``, ``stall``, ``skip_u``,
``send_malformed``, ``fail_subscribe`` and ``fail_rest``. During a stall the server neither reads
nor writes; what it would have sent is lost, what clients sent is answered afterwards.

Recorded replay (``SimulatorConfig.recorded``): pushes are replayed verbatim, paced by their ``ts``.
An order book is kept per recorded book topic, so a client subscribing mid-replay gets a snapshot
with the current ``u``; REST serves the confirm=true bars replayed so far.
"""

from __future__ import annotations

import asyncio
import bisect
import email.utils
import logging
import math
import random
import uuid
import zlib
from collections import deque
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from http import HTTPStatus
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response

from streaming.book import OrderBook
from streaming.errors import FrameError
from streaming.frames import BookUpdate, parse_frame
from streaming.sim_market import (
    AGGREGATE_MINUTES,
    MINUTE_MS,
    Bars,
    BookEvent,
    KlineEvent,
    Side,
    SimClock,
    SymbolTape,
    SyntheticBook,
    aggregate,
    diff_levels,
    format_levels,
    load_1m_bars,
    open_bucket,
    symbol_from_path,
)

__all__ = ["ExchangeSimulator", "RestFault", "SimulatorConfig"]

logger = logging.getLogger(__name__)

WS_PATH = "/v5/public/linear"
KLINE_PATH = "/v5/market/kline"
KLINE_INTERVALS = ("1", "5", "15", "60")
BOOK_DEPTHS = (1, 50, 200, 1000)
REST_DEFAULT_LIMIT = 200
REST_MAX_LIMIT = 1000

RestFault = Literal["retcode", "http403", "http500"]

_YIELD_EVERY = 64  # market events between forced yields, so catch-up never starves the loop
_MAX_SLEEP_S = 1.0
_TASK_CANCEL_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 2.0
_SUBSCRIBE_LOG_MAX = 10_000

Row = list[str]  # REST kline row: [start, open, high, low, close, volume, turnover]


@dataclass
class SimulatorConfig:
    """What the simulator replays and how.

    ``sources`` are 1m bar CSVs (the symbol comes from the file name); ``recorded`` replays a
    JSON-lines stream from :func:`streaming.recorder.record` instead. The clock starts
    ``start_offset_bars`` minutes after the latest first bar of all sources, so REST has history
    for every symbol. ``speed`` is market ms per wall ms.
    """

    sources: list[Path] = field(default_factory=list)
    recorded: Path | None = None
    speed: float = 600.0
    start_offset_bars: int = 1500
    host: str = "127.0.0.1"
    port: int = 0
    book_depth: int = 50
    kline_updates_per_bar: int = 3
    book_deltas_per_bar: int = 10
    seed: int = 0
    end_behaviour: Literal["stop"] = "stop"
    send_queue_frames: int = 10_000  # per connection; full => the client is closed with 1008

    def validate(self) -> None:
        if self.recorded is None and not self.sources:
            raise ValueError("SimulatorConfig needs at least one bar file in sources, or recorded")
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ValueError(f"speed must be a finite number > 0, got {self.speed}")
        if self.start_offset_bars < 0:
            raise ValueError("start_offset_bars must be >= 0")
        if self.book_depth < 1 or self.kline_updates_per_bar < 1 or self.book_deltas_per_bar < 0:
            raise ValueError("book_depth and kline_updates_per_bar must be >= 1, book_deltas_per_bar >= 0")
        if self.send_queue_frames < 1:
            raise ValueError("send_queue_frames must be >= 1")
        if self.end_behaviour != "stop":
            raise ValueError(f"unsupported end_behaviour {self.end_behaviour!r}")


# --- connections and fan-out ----------------------------------------------------------------------


class _Conn:
    """One accepted WebSocket connection and its bounded outgoing queue."""

    __slots__ = ("conn_id", "number", "queue", "slow", "topics", "ws")

    def __init__(self, number: int, ws: ServerConnection, queue_size: int) -> None:
        self.number = number
        self.ws = ws
        self.conn_id = str(uuid.uuid4())
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=queue_size)
        self.topics: set[str] = set()
        # Resolved when the queue overflows: the handler then closes the connection with 1008.
        self.slow: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def push(self, frame: bytes) -> None:
        if self.slow.done():
            return
        try:
            self.queue.put_nowait(frame)
        except asyncio.QueueFull:
            self.slow.set_result(None)

    def pause_reading(self) -> None:
        if not self.ws.transport.is_closing():
            self.ws.transport.pause_reading()

    def resume_reading(self) -> None:
        if not self.ws.transport.is_closing():
            self.ws.transport.resume_reading()


class _Hub:
    """Topic subscriptions, and the fault state the market sources consult while publishing."""

    def __init__(self) -> None:
        self.subs: dict[str, set[_Conn]] = {}
        self.skip_u: set[str] = set()  # symbols whose next book delta jumps u by 2
        self.not_stalled = asyncio.Event()
        self.not_stalled.set()

    def has(self, topic: str) -> bool:
        return topic in self.subs

    def send(self, conn: _Conn, frame: bytes) -> None:
        # During a stall everything the server would send is lost, like a frozen exchange.
        if self.not_stalled.is_set():
            conn.push(frame)

    def publish(self, topic: str, frame: bytes) -> None:
        """Queue one serialized frame to every subscriber of ``topic`` (the same bytes to all)."""
        subs = self.subs.get(topic)
        if subs and self.not_stalled.is_set():
            for conn in subs:
                conn.push(frame)

    def subscribe(self, conn: _Conn, topic: str) -> None:
        conn.topics.add(topic)
        self.subs.setdefault(topic, set()).add(conn)

    def unsubscribe(self, conn: _Conn, topic: str) -> None:
        conn.topics.discard(topic)
        subs = self.subs.get(topic)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.subs[topic]


# --- market sources -------------------------------------------------------------------------------


class _Market(Protocol):
    symbols: list[str]
    start_ms: int

    def topic_valid(self, topic: str) -> bool: ...

    def snapshot_frame(self, topic: str) -> bytes | None: ...

    def closed_rows(
        self, symbol: str, interval: str, now_ms: int, start: int | None, end: int | None, limit: int
    ) -> list[Row]: ...

    def open_row(self, symbol: str, interval: str, now_ms: int) -> Row | None: ...

    def closed_bars(self, symbol: str, interval: str, now_ms: int) -> list[tuple[int, str, str, str, str, str]]: ...

    async def run(self, clock: SimClock, hub: _Hub) -> None: ...


def _split_topic(topic: str) -> tuple[str, str, str] | None:
    parts = topic.split(".")
    if len(parts) != 3:
        return None
    return parts[0], parts[1], parts[2]


def _standard_topic(topic: str, symbols: Collection[str]) -> bool:
    parts = _split_topic(topic)
    if parts is None:
        return False
    kind, param, symbol = parts
    if symbol not in symbols:
        return False
    if kind == "kline":
        return param in KLINE_INTERVALS
    if kind == "orderbook":
        return param in {str(d) for d in BOOK_DEPTHS}
    return False


def _select(starts: Sequence[int], step: int, now_ms: int, start: int | None, end: int | None, limit: int) -> range:
    """Indices of closed bars (``start + step <= now``) in ``[start, end]``, newest ``limit``, newest first."""
    hi = bisect.bisect_right(starts, now_ms - step)
    if end is not None:
        hi = min(hi, bisect.bisect_right(starts, end))
    lo = bisect.bisect_left(starts, start) if start is not None else 0
    lo = max(lo, hi - max(limit, 0))
    return range(hi - 1, lo - 1, -1)


def _kline_frame(topic: str, ev: KlineEvent, step: int) -> bytes:
    v = ev.values
    return orjson.dumps(
        {
            "topic": topic,
            "type": "snapshot",
            "ts": ev.ts,
            "data": [
                {
                    "start": ev.start,
                    "end": ev.start + step - 1,
                    "interval": ev.interval,
                    "open": v.open,
                    "close": v.close,
                    "high": v.high,
                    "low": v.low,
                    "volume": v.volume,
                    "turnover": v.turnover,
                    "confirm": ev.confirm,
                    "timestamp": ev.ts,
                }
            ],
        }
    )


def _book_frame(
    topic: str,
    kind: Literal["snapshot", "delta"],
    symbol: str,
    ts: int,
    u: int,
    seq: int,
    bids: Sequence[tuple[str, str]],
    asks: Sequence[tuple[str, str]],
) -> bytes:
    return orjson.dumps(
        {
            "topic": topic,
            "type": kind,
            "ts": ts,
            "data": {"s": symbol, "b": bids, "a": asks, "u": u, "seq": seq},
            "cts": ts,
        }
    )


@dataclass
class _BookStream:
    """One (symbol, depth) orderbook topic: its ``u`` sequence and what subscribers last saw."""

    topic: str
    depth: int
    u: int
    # The levels last published, kept only for windows narrower than the book (and level 1).
    bids: dict[int, str] | None = None
    asks: dict[int, str] | None = None


class _SymbolFeed:
    def __init__(self, symbol: str, bars: Bars, config: SimulatorConfig, start_ms: int) -> None:
        self.symbol = symbol
        self.series: dict[str, Bars] = {"1": bars}
        for m in AGGREGATE_MINUTES:
            self.series[str(m)] = aggregate(bars, m)
        self.starts = {k: b.start_ms.tolist() for k, b in self.series.items()}
        self.tape = SymbolTape(
            bars,
            {m: self.series[str(m)] for m in AGGREGATE_MINUTES},
            start_ms,
            kline_updates=config.kline_updates_per_bar,
            book_updates=config.book_deltas_per_bar,
            # Fall behind by more than one bar or half a wall second and partial pushes are skipped.
            stale_after_ms=max(MINUTE_MS, int(config.speed * 500)),
        )
        key = f"{config.seed}/{symbol}"
        self.rng = random.Random(key)
        self.book = SyntheticBook(
            self.tape.price,
            depth=config.book_depth,
            seed=zlib.crc32(key.encode()),
            tick=Decimal(1).scaleb(-bars.price_decimals),
            size_decimals=bars.volume_decimals,
        )
        self.book_ts = start_ms
        self.seq = self.rng.randrange(10**9, 10**10)
        self.streams = [
            _BookStream(f"orderbook.{d}.{symbol}", d, self.rng.randrange(10**6, 10**8)) for d in BOOK_DEPTHS
        ]
        self.kline_topics = {i: f"kline.{i}.{symbol}" for i in KLINE_INTERVALS}


class _BarMarket:
    """Historical 1m bars replayed on the sim clock, with a synthetic book per symbol."""

    def __init__(self, feeds: dict[str, _SymbolFeed], start_ms: int) -> None:
        self.feeds = feeds
        self.symbols = list(feeds)
        self.start_ms = start_ms

    @classmethod
    def load(cls, config: SimulatorConfig) -> _BarMarket:
        """Read and aggregate every source (blocking: call it in a thread)."""
        loaded: dict[str, Bars] = {}
        for path in config.sources:
            symbol = symbol_from_path(path)
            if symbol in loaded:
                raise ValueError(f"two sources for symbol {symbol}: {path} and an earlier one")
            loaded[symbol] = load_1m_bars(path)
        start_ms = max(int(b.start_ms[0]) for b in loaded.values()) + config.start_offset_bars * MINUTE_MS
        feeds = {s: _SymbolFeed(s, b, config, start_ms) for s, b in loaded.items()}
        return cls(feeds, start_ms)

    def topic_valid(self, topic: str) -> bool:
        return _standard_topic(topic, self.feeds)

    def snapshot_frame(self, topic: str) -> bytes | None:
        parts = _split_topic(topic)
        if parts is None or parts[0] != "orderbook":
            return None
        feed = self.feeds[parts[2]]
        stream = next(s for s in feed.streams if s.topic == topic)
        bids, asks = feed.book.levels(stream.depth)
        stream.bids, stream.asks = dict(bids), dict(asks)
        return _book_frame(
            topic,
            "snapshot",
            feed.symbol,
            feed.book_ts,
            stream.u,
            feed.seq,
            format_levels(feed.book, bids),
            format_levels(feed.book, asks),
        )

    def closed_rows(
        self, symbol: str, interval: str, now_ms: int, start: int | None, end: int | None, limit: int
    ) -> list[Row]:
        feed = self.feeds[symbol]
        bars = feed.series[interval]
        rows = _select(feed.starts[interval], bars.interval_ms, now_ms, start, end, limit)
        return [[str(int(bars.start_ms[k])), *bars.values(k)] for k in rows]

    def open_row(self, symbol: str, interval: str, now_ms: int) -> Row | None:
        found = open_bucket(self.feeds[symbol].series["1"], int(interval), now_ms)
        if found is None:
            return None
        return [str(found[0]), *found[1]]

    def closed_bars(self, symbol: str, interval: str, now_ms: int) -> list[tuple[int, str, str, str, str, str]]:
        feed = self.feeds[symbol]
        bars = feed.series[interval]
        hi = bisect.bisect_right(feed.starts[interval], now_ms - bars.interval_ms)
        return [bars.row(k) for k in range(hi)]

    async def run(self, clock: SimClock, hub: _Hub) -> None:
        """Emit every event as the clock reaches it; return at the end of the data."""
        feeds = list(self.feeds.values())
        since_yield = 0
        while True:
            due: int | None = None
            feed: _SymbolFeed | None = None
            for f in feeds:
                t = f.tape.next_time()
                if t is not None and (due is None or t < due):
                    due, feed = t, f
            if due is None or feed is None:
                return
            now = clock.now_ms()
            if due > now:
                since_yield = 0
                await asyncio.sleep(min(clock.wall_seconds_until(due), _MAX_SLEEP_S))
                continue
            for ev in feed.tape.pop(now):
                if isinstance(ev, KlineEvent):
                    topic = feed.kline_topics[ev.interval]
                    if hub.has(topic):
                        hub.publish(topic, _kline_frame(topic, ev, int(ev.interval) * MINUTE_MS))
                else:
                    self._move_book(feed, ev, hub)
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)

    def _move_book(self, feed: _SymbolFeed, ev: BookEvent, hub: _Hub) -> None:
        changed_b, changed_a = feed.book.move_ticks(ev.mid)
        feed.book_ts = ev.ts
        # seq is a cross sequence: increasing, not continuous (bybit_protocol.md §4.3).
        feed.seq += feed.rng.randint(1, 40)
        skip = feed.symbol in hub.skip_u
        full: tuple[Side, Side] | None = None  # the whole-book delta, sorted once for every stream
        for stream in feed.streams:
            if not hub.has(stream.topic):
                stream.u += 1  # the sequence runs whether or not anyone listens, as on Bybit
                stream.bids = stream.asks = None
                continue
            kind: Literal["snapshot", "delta"] = "delta"
            if stream.depth == 1:
                # Level 1 is snapshot-only on Bybit linear: push the touch when it changes.
                bids, asks = feed.book.levels(1)
                if stream.bids == dict(bids) and stream.asks == dict(asks):
                    continue
                stream.bids, stream.asks = dict(bids), dict(asks)
                out_b, out_a = bids, asks
                kind = "snapshot"
            elif stream.depth >= feed.book.depth:
                if full is None:
                    full = sorted(changed_b.items(), reverse=True), sorted(changed_a.items())
                out_b, out_a = full
            else:
                # A window narrower than the book: diff what this depth showed against what it shows now.
                bids, asks = feed.book.levels(stream.depth)
                out_b = diff_levels(stream.bids or {}, bids, descending=True)
                out_a = diff_levels(stream.asks or {}, asks, descending=False)
                stream.bids, stream.asks = dict(bids), dict(asks)
            if not out_b and not out_a:
                continue
            if kind == "delta" and skip:
                stream.u += 2
                hub.skip_u.discard(feed.symbol)
            else:
                stream.u += 1
            hub.publish(
                stream.topic,
                _book_frame(
                    stream.topic,
                    kind,
                    feed.symbol,
                    ev.ts,
                    stream.u,
                    feed.seq,
                    format_levels(feed.book, out_b),
                    format_levels(feed.book, out_a),
                ),
            )


@dataclass(frozen=True, slots=True)
class _RecordedFrame:
    ts: int
    topic: str
    raw: bytes


class _RecordedSeries:
    """Closed bars of one (symbol, interval) seen so far in a replay, plus the latest open one."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.rows: dict[int, Row] = {}
        self.open: Row | None = None

    def close(self, row: Row) -> None:
        start = int(row[0])
        if start not in self.rows:
            bisect.insort(self.starts, start)
        self.rows[start] = row


class _RecordedMarket:
    """A recorded stream replayed in order, paced by each frame's exchange ``ts``."""

    def __init__(self, frames: list[_RecordedFrame]) -> None:
        self.frames = frames
        self.topics = {f.topic for f in frames}
        self.symbols = sorted({t.rsplit(".", 1)[-1] for t in self.topics})
        self.start_ms = frames[0].ts if frames else 0
        self.books: dict[str, OrderBook] = {}
        self.seqs: dict[str, int] = {}
        self.series: dict[tuple[str, str], _RecordedSeries] = {}

    @classmethod
    def load(cls, path: Path) -> _RecordedMarket:
        """Read a recorder file (blocking: call it in a thread). Command replies are left out."""
        frames: list[_RecordedFrame] = []
        prev_ts = 0
        with path.open("rb") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    record = orjson.loads(line)
                    text = record["frame"]
                    recv_ms = int(record.get("recv_ms", prev_ts))
                except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
                    raise ValueError(f"{path}:{lineno}: not a recorder line") from None
                if not isinstance(text, str):
                    raise ValueError(f"{path}:{lineno}: 'frame' must be a string")
                try:
                    obj = orjson.loads(text)
                except orjson.JSONDecodeError:
                    continue  # a malformed frame cannot be routed without its topic
                if not isinstance(obj, dict) or not isinstance(obj.get("topic"), str):
                    continue
                ts = obj.get("ts")
                # Pacing needs a non-decreasing exchange time; fall back to the local receive time.
                ts = ts if type(ts) is int else recv_ms
                prev_ts = max(prev_ts, ts)
                frames.append(_RecordedFrame(prev_ts, obj["topic"], text.encode()))
        return cls(frames)

    def topic_valid(self, topic: str) -> bool:
        return topic in self.topics or _standard_topic(topic, self.symbols)

    def snapshot_frame(self, topic: str) -> bytes | None:
        book = self.books.get(topic)
        if book is None or not book.ready:
            return None  # the recorded snapshot, when it comes, starts this subscriber's book
        view = book.view()
        return _book_frame(
            topic,
            "snapshot",
            book.symbol,
            view.ts,
            view.u,
            self.seqs.get(topic, 0),
            [(str(p), str(s)) for p, s in view.bids],
            [(str(p), str(s)) for p, s in view.asks],
        )

    def closed_rows(
        self, symbol: str, interval: str, now_ms: int, start: int | None, end: int | None, limit: int
    ) -> list[Row]:
        series = self.series.get((symbol, interval))
        if series is None:
            return []
        rows = _select(series.starts, int(interval) * MINUTE_MS, now_ms, start, end, limit)
        return [series.rows[series.starts[k]] for k in rows]

    def open_row(self, symbol: str, interval: str, now_ms: int) -> Row | None:
        series = self.series.get((symbol, interval))
        if series is None or series.open is None:
            return None
        if series.starts and int(series.open[0]) <= series.starts[-1]:
            return None
        return series.open

    def closed_bars(self, symbol: str, interval: str, now_ms: int) -> list[tuple[int, str, str, str, str, str]]:
        series = self.series.get((symbol, interval))
        if series is None:
            return []
        hi = bisect.bisect_right(series.starts, now_ms - int(interval) * MINUTE_MS)
        out = []
        for start in series.starts[:hi]:
            r = series.rows[start]
            out.append((start, r[1], r[2], r[3], r[4], r[5]))
        return out

    async def run(self, clock: SimClock, hub: _Hub) -> None:
        since_yield = 0
        for frame in self.frames:
            while frame.ts > clock.now_ms():
                since_yield = 0
                await asyncio.sleep(min(clock.wall_seconds_until(frame.ts), _MAX_SLEEP_S))
            self._apply(frame, hub)
            since_yield += 1
            if since_yield >= _YIELD_EVERY:
                since_yield = 0
                await asyncio.sleep(0)

    def _apply(self, frame: _RecordedFrame, hub: _Hub) -> None:
        kind = frame.topic.split(".", 1)[0]
        if kind == "orderbook":
            try:
                msg = parse_frame(frame.raw)
            except FrameError:
                msg = None
            if isinstance(msg, BookUpdate):
                book = self.books.get(frame.topic)
                if book is None:
                    book = self.books[frame.topic] = OrderBook(msg.symbol, msg.depth)
                book.apply(msg)
                self.seqs[frame.topic] = msg.seq
                if msg.kind == "delta" and msg.symbol in hub.skip_u and hub.has(frame.topic):
                    # Withholding one recorded delta is a u gap for the client; our book stays whole.
                    hub.skip_u.discard(msg.symbol)
                    return
        elif kind == "kline":
            self._note_klines(frame)
        hub.publish(frame.topic, frame.raw)

    def _note_klines(self, frame: _RecordedFrame) -> None:
        parts = _split_topic(frame.topic)
        if parts is None:
            return
        _, interval, symbol = parts
        try:
            data = orjson.loads(frame.raw)["data"]
            items: list[tuple[bool, Row]] = [
                (
                    item["confirm"] is True,
                    [
                        str(item["start"]),
                        item["open"],
                        item["high"],
                        item["low"],
                        item["close"],
                        item["volume"],
                        item.get("turnover", "0"),
                    ],
                )
                for item in data
            ]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        series = self.series.setdefault((symbol, interval), _RecordedSeries())
        for confirm, row in items:
            if confirm:
                series.close(row)
            else:
                series.open = row


# --- the server -----------------------------------------------------------------------------------


def _json_response(obj: Any, status: HTTPStatus = HTTPStatus.OK) -> Response:
    body = orjson.dumps(obj)
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", "application/json"),
        ]
    )
    return Response(status.value, status.phrase, headers, body)


async def _cancel_and_wait(tasks: Iterable[asyncio.Task[Any]], grace_s: float) -> None:
    """Cancel ``tasks``, wait up to ``grace_s`` and log any failure other than a closed socket."""
    pending = [t for t in tasks if not t.done()]
    for task in pending:
        task.cancel()
    todo = list(tasks)
    if not todo:
        return
    done, still = await asyncio.wait(todo, timeout=grace_s)
    for task in still:
        logger.warning("task %s did not stop within %.1fs", task.get_name(), grace_s)
    for task in done:
        if task.cancelled():
            continue
        exc = task.exception()
        if exc is not None and not isinstance(exc, ConnectionClosed):
            logger.error("task %s failed", task.get_name(), exc_info=exc)


class ExchangeSimulator:
    """A Bybit-compatible exchange on ``127.0.0.1``: WebSocket stream, REST klines and faults.

    Use as ``async with ExchangeSimulator(SimulatorConfig(sources=[path])) as sim:`` then connect to
    ``sim.ws_url`` / ``sim.rest_url``. The fault methods take effect immediately.
    """

    def __init__(self, config: SimulatorConfig) -> None:
        config.validate()
        self.config = config
        self.symbols: list[str] = [] if config.recorded is not None else [symbol_from_path(p) for p in config.sources]
        self.finished = asyncio.Event()
        self.subscribe_log: list[tuple[int, str, list[str], bool]] = []
        self.connection_count = 0
        self.rest_requests = 0
        self.slow_disconnects = 0  # connections closed with 1008 because their send queue filled
        self._market: _Market | None = None
        self._clock: SimClock | None = None
        self._server: Server | None = None
        self._port = 0
        self._hub = _Hub()
        self._conns: set[_Conn] = set()
        self._market_task: asyncio.Task[None] | None = None
        self._stall_end: asyncio.TimerHandle | None = None
        self._fail_topics: set[str] = set()
        self._rest_faults: deque[RestFault] = deque()
        self._started = False
        self._closed = False

    # --- lifecycle

    async def start(self) -> None:
        """Load the market, bind (port 0 picks a free port) and start the market task."""
        if self._started:
            raise RuntimeError("simulator already started")
        self._started = True
        market: _Market
        if self.config.recorded is not None:
            market = await asyncio.to_thread(_RecordedMarket.load, self.config.recorded)
        else:
            market = await asyncio.to_thread(_BarMarket.load, self.config)
        self._market = market
        self.symbols = list(market.symbols)
        self._clock = SimClock(market.start_ms, self.config.speed)
        self._server = await serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            # Bybit expects application pings; server keepalive pings would only add noise.
            ping_interval=None,
            compression=None,
            close_timeout=_CLOSE_TIMEOUT_S,
        )
        self._port = next(iter(self._server.sockets)).getsockname()[1]
        self._market_task = asyncio.create_task(self._run_market(market, self.clock), name="sim-market")
        logger.info("exchange simulator on %s serving %s", self.ws_url, ",".join(self.symbols))

    async def close(self) -> None:
        """Stop the market, close every connection with 1001 and unbind. Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._market_task is not None:
            await _cancel_and_wait([self._market_task], _TASK_CANCEL_TIMEOUT_S)
        self._end_stall()
        if self._server is not None:
            self._server.close(close_connections=True)  # 1001 going away
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=_TASK_CANCEL_TIMEOUT_S)
            except TimeoutError:
                logger.warning("simulator server did not close within %.1fs", _TASK_CANCEL_TIMEOUT_S)

    async def __aenter__(self) -> ExchangeSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _run_market(self, market: _Market, clock: SimClock) -> None:
        try:
            await market.run(clock, self._hub)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Logged here, once; `finished` stays unset so waiters time out rather than see an end.
            logger.exception("simulator market task failed")
            return
        logger.info("simulator reached the end of its data at %d", clock.now_ms())
        self.finished.set()

    # --- public state

    @property
    def clock(self) -> SimClock:
        if self._clock is None:
            raise RuntimeError("simulator not started")
        return self._clock

    @property
    def ws_url(self) -> str:
        return f"ws://{self.config.host}:{self._port}{WS_PATH}"

    @property
    def rest_url(self) -> str:
        return f"http://{self.config.host}:{self._port}"

    def _require_market(self) -> _Market:
        if self._market is None:
            raise RuntimeError("simulator not started")
        return self._market

    def bars(self, symbol: str, interval: str) -> list[tuple[int, str, str, str, str, str]]:
        """Closed bars ``(start, open, high, low, close, volume)`` as served, oldest first."""
        market = self._require_market()
        if symbol not in self.symbols or interval not in KLINE_INTERVALS:
            raise ValueError(f"unknown symbol/interval {symbol!r}/{interval!r}")
        return market.closed_bars(symbol, interval, self.clock.now_ms())

    # --- fault injection

    def drop_connections(self) -> None:
        """Abort every WebSocket connection without a close frame (the client sees 1006)."""
        for conn in list(self._conns):
            conn.ws.transport.abort()

    def stall(self, seconds: float) -> None:
        """Send nothing and read nothing on any connection for ``seconds``; sockets stay open.

        Frames produced meanwhile are lost; client messages wait in the socket and are answered
        after the stall. The market clock keeps running.
        """
        if seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        if self._hub.not_stalled.is_set():
            self._hub.not_stalled.clear()
            for conn in self._conns:
                conn.pause_reading()
        elif self._stall_end is not None and self._stall_end.when() >= deadline:
            return
        if self._stall_end is not None:
            self._stall_end.cancel()
        self._stall_end = loop.call_at(deadline, self._end_stall)

    def _end_stall(self) -> None:
        if self._stall_end is not None:
            self._stall_end.cancel()
            self._stall_end = None
        if not self._hub.not_stalled.is_set():
            self._hub.not_stalled.set()
            for conn in self._conns:
                conn.resume_reading()

    def skip_u(self, symbol: str) -> None:
        """Make the next orderbook delta of ``symbol`` jump ``u`` by 2 (a gap)."""
        if symbol not in self.symbols:
            raise ValueError(f"unknown symbol {symbol!r}")
        self._hub.skip_u.add(symbol)

    def send_malformed(self, payload: str = '{"topic":"kline.1.BTCUSDT","data":') -> None:
        """Push ``payload`` as a raw text frame to every connection."""
        frame = payload.encode()
        for conn in self._conns:
            self._hub.send(conn, frame)

    def fail_subscribe(self, topic: str) -> None:
        """Every later subscribe of ``topic`` fails with ``error:handler not found,topic:<topic>``."""
        self._fail_topics.add(topic)

    def fail_rest(self, kind: RestFault, count: int = 1) -> None:
        """The next ``count`` REST kline requests fail: retCode 10016, HTTP 403 or HTTP 500."""
        if kind not in ("retcode", "http403", "http500"):
            raise ValueError(f"unknown REST fault {kind!r}")
        self._rest_faults.extend([kind] * count)

    # --- WebSocket

    async def _handle(self, ws: ServerConnection) -> None:
        self.connection_count += 1
        conn = _Conn(self.connection_count, ws, self.config.send_queue_frames)
        self._conns.add(conn)
        if not self._hub.not_stalled.is_set():
            conn.pause_reading()
        reader = asyncio.create_task(self._read_loop(conn), name=f"sim-conn{conn.number}-reader")
        writer = asyncio.create_task(self._write_loop(conn), name=f"sim-conn{conn.number}-writer")
        try:
            await asyncio.wait((reader, writer, conn.slow), return_when=asyncio.FIRST_COMPLETED)
            if conn.slow.done():
                self.slow_disconnects += 1
                logger.warning("closing slow connection %d (%s): send queue full", conn.number, conn.conn_id)
                writer.cancel()
                await ws.close(CloseCode.POLICY_VIOLATION, "send queue full")
        finally:
            for topic in list(conn.topics):
                self._hub.unsubscribe(conn, topic)
            self._conns.discard(conn)
            if not conn.slow.done():
                conn.slow.cancel()
            await _cancel_and_wait((reader, writer), _TASK_CANCEL_TIMEOUT_S)

    async def _read_loop(self, conn: _Conn) -> None:
        try:
            async for raw in conn.ws:
                self._on_message(conn, raw)
        except ConnectionClosed:
            pass

    async def _write_loop(self, conn: _Conn) -> None:
        try:
            while True:
                frame = await conn.queue.get()
                if not self._hub.not_stalled.is_set():
                    await self._hub.not_stalled.wait()
                await conn.ws.send(frame, text=True)
        except ConnectionClosed:
            pass

    def _reply(self, conn: _Conn, op: str, req_id: str, success: bool, ret_msg: str) -> None:
        msg = {"success": success, "ret_msg": ret_msg, "conn_id": conn.conn_id, "req_id": req_id, "op": op}
        self._hub.send(conn, orjson.dumps(msg))

    def _on_message(self, conn: _Conn, raw: str | bytes) -> None:
        try:
            msg = orjson.loads(raw)
        except orjson.JSONDecodeError:
            logger.debug("connection %d sent non-JSON; ignored", conn.number)
            return
        if not isinstance(msg, dict):
            return
        op = msg.get("op")
        req = msg.get("req_id", "")
        req_id = req if isinstance(req, str) else orjson.dumps(req).decode()
        if op == "ping":
            self._reply(conn, "ping", req_id, True, "pong")
        elif op == "subscribe" or op == "unsubscribe":
            self._on_subscription(conn, op, req_id, msg.get("args"))
        else:
            self._reply(conn, op if isinstance(op, str) else "", req_id, False, "error:invalid op")

    def _log_subscription(self, number: int, op: str, topics: list[str], success: bool) -> None:
        self.subscribe_log.append((number, op, topics, success))
        if len(self.subscribe_log) > _SUBSCRIBE_LOG_MAX:
            # Introspection must not grow without bound in a long demo run: keep the recent half.
            del self.subscribe_log[: _SUBSCRIBE_LOG_MAX // 2]

    def _on_subscription(self, conn: _Conn, op: str, req_id: str, args: object) -> None:
        market = self._require_market()
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            self._log_subscription(conn.number, op, [], False)
            self._reply(conn, op, req_id, False, "error:args must be an array of topics")
            return
        topics: list[str] = list(args)
        error = ""
        snapshots: list[bytes] = []
        for topic in topics:
            problem = ""
            if topic in self._fail_topics or not market.topic_valid(topic):
                problem = f"error:handler not found,topic:{topic}"
            elif op == "subscribe" and topic in conn.topics:
                problem = f"error:already subscribed,topic:{topic}"
            elif op == "subscribe":
                self._hub.subscribe(conn, topic)
                snap = market.snapshot_frame(topic)
                if snap is not None:
                    snapshots.append(snap)
            else:
                self._hub.unsubscribe(conn, topic)
            error = error or problem
        self._log_subscription(conn.number, op, topics, not error)
        self._reply(conn, op, req_id, not error, error)
        # After the ack, before any later delta: nothing awaits between here and the market task.
        for snap in snapshots:
            self._hub.send(conn, snap)

    # --- REST

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        url = urlsplit(request.path)
        if url.path == WS_PATH:
            return None  # carry on with the WebSocket handshake
        if url.path != KLINE_PATH:
            return connection.respond(HTTPStatus.NOT_FOUND, "Not Found\n")
        self.rest_requests += 1
        if self._rest_faults:
            fault = self._rest_faults.popleft()
            if fault == "http403":
                return connection.respond(HTTPStatus.FORBIDDEN, "access too frequent")
            if fault == "http500":
                return connection.respond(HTTPStatus.INTERNAL_SERVER_ERROR, "Internal Server Error")
            return _json_response(self._envelope(10016, "Service error"))
        return _json_response(self._kline(parse_qs(url.query)))

    def _envelope(
        self, code: int, msg: str, result: dict[str, Any] | None = None, now_ms: int | None = None
    ) -> dict[str, Any]:
        return {
            "retCode": code,
            "retMsg": msg,
            "result": result if result is not None else {},
            "retExtInfo": {},
            # The rows were chosen at this very time: clients drop rows with start + interval > time.
            "time": self.clock.now_ms() if now_ms is None else now_ms,
        }

    def _kline(self, params: dict[str, list[str]]) -> dict[str, Any]:
        market = self._require_market()

        def one(name: str) -> str | None:
            values = params.get(name)
            return values[-1] if values else None

        if (one("category") or "linear") != "linear":
            return self._envelope(10001, "params error: the simulator serves category=linear only")
        symbol = one("symbol")
        if symbol is None or symbol not in self.symbols:
            return self._envelope(10001, "params error: symbol invalid")
        interval = one("interval")
        if interval is None or interval not in KLINE_INTERVALS:
            return self._envelope(10001, "Invalid period!")
        try:
            start = int(s) if (s := one("start")) is not None else None
            end = int(e) if (e := one("end")) is not None else None
            limit = int(one("limit") or REST_DEFAULT_LIMIT)
        except ValueError:
            return self._envelope(10001, "params error: start, end and limit must be integers")
        if limit < 1:
            return self._envelope(10001, "params error: limit must be in [1, 1000]")
        limit = min(limit, REST_MAX_LIMIT)
        now = self.clock.now_ms()
        rows: list[Row] = []
        # Like Bybit, the still-open bar comes first (newest first); clients must drop it.
        open_row = market.open_row(symbol, interval, now)
        if open_row is not None:
            ostart = int(open_row[0])
            if (start is None or ostart >= start) and (end is None or ostart <= end):
                rows.append(open_row)
        rows += market.closed_rows(symbol, interval, now, start, end, limit - len(rows))
        return self._envelope(0, "OK", {"symbol": symbol, "category": "linear", "list": rows}, now)
