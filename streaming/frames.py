"""Sans-I/O decoding of Bybit v5 public WebSocket frames into typed, frozen messages.

Messages are ``NamedTuple``s: immutable and typed like frozen dataclasses, and twice as fast to
build, which matters at tens of thousands of frames a second.

Only this module looks inside the JSON. Everything downstream works with the dataclasses below.
Responses to commands carry ``op``; data pushes carry ``topic`` (bybit_protocol.md §2.2).

Wire examples::

    {"success":true,"ret_msg":"","conn_id":"3cd8...","req_id":"7-1","op":"subscribe"}
    {"success":true,"ret_msg":"pong","conn_id":"4657...","req_id":"","op":"ping"}
    {"topic":"kline.5.BTCUSDT","type":"snapshot","ts":1672324988882,"data":[{"start":1672324800000,
     "end":1672325099999,"interval":"5","open":"16649.5","close":"16677","high":"16677","low":"16608",
     "volume":"2.081","turnover":"34666.4005","confirm":false,"timestamp":1672324988882}]}
    {"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1687940967466,"data":{"s":"BTCUSDT",
     "b":[["30247.20","30.028"],["30240.00","0"]],"a":[],"u":177400507,"seq":66544703342},"cts":1687940967464}
"""

from __future__ import annotations

import functools
import re
from decimal import Decimal, InvalidOperation
from typing import Any, Literal, NamedTuple

import msgspec
import orjson

from streaming.errors import FrameError, UnknownTopicError
from streaming.klines import Bar

__all__ = [
    "BookUpdate",
    "CommandResponse",
    "KlineBar",
    "KlineUpdate",
    "Level",
    "Message",
    "Pong",
    "parse_frame",
]

SYMBOL_RE = re.compile(r"^[A-Z0-9]{2,40}$")
KLINE_INTERVALS = frozenset({"1", "3", "5", "15", "30", "60", "120", "240", "360", "720"})
# 500 went offline 2025-09-30 but appears in historical files (data/orderbook); we never subscribe it.
BOOK_DEPTHS = frozenset({1, 50, 200, 500, 1000})
_DEPTH_PARAMS = frozenset(str(d) for d in BOOK_DEPTHS)  # exact strings: "²".isdigit() is True

Level = tuple[Decimal, Decimal]


class KlineBar(NamedTuple):
    """One candle as pushed: the bar's values (:class:`streaming.klines.Bar`) and ``confirm``, true
    only for a closed bar (bybit_protocol.md §3)."""

    bar: Bar
    confirm: bool


class KlineUpdate(NamedTuple):
    topic: str
    symbol: str
    interval: str
    ts: int
    bars: tuple[KlineBar, ...]


class BookUpdate(NamedTuple):
    topic: str
    symbol: str
    depth: int
    kind: Literal["snapshot", "delta"]
    ts: int
    u: int
    seq: int
    bids: tuple[Level, ...]
    asks: tuple[Level, ...]


class CommandResponse(NamedTuple):
    """The reply to a subscribe/unsubscribe (or any other) command."""

    op: str
    success: bool
    ret_msg: str
    req_id: str
    conn_id: str


class Pong(NamedTuple):
    req_id: str
    conn_id: str


Message = KlineUpdate | BookUpdate | CommandResponse | Pong


def parse_frame(raw: str | bytes) -> Message:
    """Decode one frame. Returns a typed message or raises :class:`FrameError`.

    :class:`UnknownTopicError` (a ``FrameError``) means the frame was well formed but for a topic
    we do not consume (``publicTrade.*``, ``tickers.*``, ...).
    """
    book, kline = _PREFIXES_B if isinstance(raw, bytes) else _PREFIXES_S
    fast: Message | None = None
    if raw.startswith(book):  # type: ignore[arg-type]
        fast = _typed_book(raw)
    elif raw.startswith(kline):  # type: ignore[arg-type]
        fast = _typed_kline(raw)
    return fast if fast is not None else _parse_general(raw)


def _parse_general(raw: str | bytes) -> Message:
    """Every frame the typed book path does not take, and the error messages for all of them."""
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError) as exc:
        raise FrameError(f"not JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise FrameError(f"expected a JSON object, got {type(obj).__name__}")
    topic = obj.get("topic")
    if topic is not None:
        if not isinstance(topic, str):
            raise FrameError("'topic' is not a string")
        return _parse_push(topic, obj)
    op = obj.get("op")
    if isinstance(op, str):
        return _parse_response(op, obj)
    raise FrameError("frame has neither 'topic' nor 'op'")


def _parse_response(op: str, obj: dict[str, Any]) -> CommandResponse | Pong:
    success = obj.get("success")
    ret_msg = obj.get("ret_msg", "")
    req_id = obj.get("req_id", "")
    conn_id = obj.get("conn_id", "")
    if not isinstance(ret_msg, str) or not isinstance(req_id, str) or not isinstance(conn_id, str):
        raise FrameError(f"malformed '{op}' response")
    # Linear/inverse pongs echo op "ping" with ret_msg "pong"; option/spread use op "pong".
    if op == "pong" or (op == "ping" and (ret_msg == "pong" or success is True)):
        return Pong(req_id=req_id, conn_id=conn_id)
    if not isinstance(success, bool):
        raise FrameError(f"'{op}' response without a boolean 'success'")
    return CommandResponse(op=op, success=success, ret_msg=ret_msg, req_id=req_id, conn_id=conn_id)


def _parse_push(topic: str, obj: dict[str, Any]) -> KlineUpdate | BookUpdate:
    route = _route(topic)
    if route[0] == "kline":
        return _parse_kline(topic, route[1], route[2], obj)
    return _parse_book(topic, int(route[1]), route[2], obj)


@functools.lru_cache(maxsize=65536)
def _route(topic: str) -> tuple[str, str, str]:
    """Validate a topic name once; a feed repeats the same few hundred topics."""
    parts = topic.split(".")
    if len(parts) == 3:
        kind, param, symbol = parts
        if SYMBOL_RE.fullmatch(symbol):
            if kind == "kline" and param in KLINE_INTERVALS:
                return kind, param, symbol
            if kind == "orderbook" and param in _DEPTH_PARAMS:
                return kind, param, symbol
    raise UnknownTopicError(f"unknown topic {topic[:100]!r}")


_MAX_INT = 2**53  # timestamps and ids must stay exact as doubles (Redis sorted-set scores)


def _int(obj: dict[str, Any], key: str, where: str) -> int:
    value = obj.get(key)
    if type(value) is not int or not 0 <= value < _MAX_INT:
        raise FrameError(f"{where}: '{key}' must be a non-negative integer, got {value!r:.40} (limit 2**53)")
    return value


def _dec(value: Any, where: str, *, positive: bool) -> Decimal:
    if not isinstance(value, str):
        raise FrameError(f"{where}: expected a decimal string, got {value!r}")
    try:
        d = Decimal(value)
    except InvalidOperation:
        raise FrameError(f"{where}: {value!r} is not a decimal") from None
    if not d.is_finite() or d < 0 or (positive and d == 0):
        raise FrameError(f"{where}: {value!r} is out of range")
    return d


def _parse_kline(topic: str, interval: str, symbol: str, obj: dict[str, Any]) -> KlineUpdate:
    ts = _int(obj, "ts", topic)
    data = obj.get("data")
    if not isinstance(data, list) or not data:
        raise FrameError(f"{topic}: 'data' must be a non-empty array")
    bars = []
    for item in data:
        if not isinstance(item, dict):
            raise FrameError(f"{topic}: kline element is not an object")
        if item.get("interval") != interval:
            raise FrameError(f"{topic}: element interval {item.get('interval')!r} does not match topic")
        confirm = item.get("confirm")
        if not isinstance(confirm, bool):
            raise FrameError(f"{topic}: 'confirm' must be a boolean")
        bar = Bar(
            start=_int(item, "start", topic),
            open=_dec(item.get("open"), topic, positive=True),
            high=_dec(item.get("high"), topic, positive=True),
            low=_dec(item.get("low"), topic, positive=True),
            close=_dec(item.get("close"), topic, positive=True),
            volume=_dec(item.get("volume"), topic, positive=False),
            turnover=_dec(item.get("turnover", "0"), topic, positive=False),
        )
        if not _consistent(bar):
            raise FrameError(f"{topic}: inconsistent OHLC at start {bar.start}")
        bars.append(KlineBar(bar, confirm))
    return KlineUpdate(topic=topic, symbol=symbol, interval=interval, ts=ts, bars=tuple(bars))


def _consistent(bar: Bar) -> bool:
    """Open and close within [low, high]."""
    return bar.low <= min(bar.open, bar.close) and max(bar.open, bar.close) <= bar.high


# Validated decimals by their wire string. A book's prices and sizes repeat all day, and building
# and range-checking a Decimal costs more than a dict lookup; bounded by clearing when full.
_POSITIVE: dict[str, Decimal] = {}
_NON_NEGATIVE: dict[str, Decimal] = {}
_CACHE_MAX = 500_000


def _cached(value: Any, cache: dict[str, Decimal], where: str, *, positive: bool) -> Decimal:
    d = cache.get(value) if type(value) is str else None
    if d is None:
        d = _dec(value, where, positive=positive)
        if len(cache) >= _CACHE_MAX:
            cache.clear()
        cache[value] = d
    return d


def _levels(raw: Any, where: str) -> tuple[Level, ...]:
    # The hot path of ingestion (a delta every 20 ms per symbol): cache hits stay inline.
    if type(raw) is not list:
        raise FrameError(f"{where}: side must be an array")
    out = []
    for level in raw:
        if type(level) is not list or len(level) != 2:
            raise FrameError(f"{where}: level must be [price, size]")
        try:
            out.append((_POSITIVE[level[0]], _NON_NEGATIVE[level[1]]))
        except (KeyError, TypeError):  # not seen yet, or not a string at all
            out.append(_new_level(level[0], level[1], where))
    return tuple(out)


def _new_level(price: Any, size: Any, where: str) -> Level:
    """A level not in the caches yet: validated (``FrameError`` if out of range), then cached."""
    return _cached(price, _POSITIVE, where, positive=True), _cached(size, _NON_NEGATIVE, where, positive=False)


def _parse_book(topic: str, depth: int, symbol: str, obj: dict[str, Any]) -> BookUpdate:
    kind = obj.get("type")
    if kind != "snapshot" and kind != "delta":
        raise FrameError(f"{topic}: 'type' must be snapshot or delta, got {kind!r}")
    data = obj.get("data")
    if not isinstance(data, dict):
        raise FrameError(f"{topic}: 'data' must be an object")
    if data.get("s") != symbol:
        raise FrameError(f"{topic}: data.s {data.get('s')!r} does not match topic")
    seq = data.get("seq", 0)
    if type(seq) is not int:
        raise FrameError(f"{topic}: 'seq' must be an integer")
    return BookUpdate(
        topic=topic,
        symbol=symbol,
        depth=depth,
        kind=kind,
        ts=_int(obj, "ts", topic),
        u=_int(data, "u", topic),
        seq=seq,
        bids=_levels(data.get("b"), topic),
        asks=_levels(data.get("a"), topic),
    )


# -- the hot paths: book and kline frames decoded straight into typed structs ----------------------
#
# Book frames are nine in ten of a feed, klines most of the rest. msgspec decodes and type-checks one
# in a single pass (the JSON types: strings, 2-element levels, integers, booleans), then the same
# range checks and decimal cache as the general path apply. Anything it does not accept as a valid
# frame (a type error, a range error, an unknown topic) goes through the general path instead, which
# names the problem: one decoder's verdict, one set of error messages, and a typed path can only be
# faster, never laxer (tests/streaming/test_frames.py checks both paths agree on every frame the
# fuzzer makes). msgspec skips a field its struct does not declare without checking it as orjson
# does (an invalid UTF-8 string, a number out of a double's range, nesting past the recursion limit),
# so the structs declare every field Bybit sends and forbid the rest: a frame with anything else
# takes the general path; and any exception of the typed decode, not only its own, sends the frame
# there too.

_BOOK_PREFIX_S = '{"topic":"orderbook.'
_BOOK_PREFIX_B = _BOOK_PREFIX_S.encode()


class _BookData(msgspec.Struct, forbid_unknown_fields=True):
    s: str
    b: list[tuple[str, str]]
    a: list[tuple[str, str]]
    u: int
    seq: int = 0


class _BookFrame(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    type: Literal["snapshot", "delta"]
    ts: int
    data: _BookData
    cts: int | None = None  # the matching engine's time: checked for type, not used


_BOOK_DECODER = msgspec.json.Decoder(_BookFrame)


def _typed_levels(side: list[tuple[str, str]], where: str) -> list[Level]:
    """A side with a string not seen yet: each level validated (``FrameError`` if out of range) and cached."""
    return [_new_level(price, size, where) for price, size in side]


def _typed_book(raw: str | bytes) -> BookUpdate | None:
    """The frame as a :class:`BookUpdate` when it is a valid book frame, else None (the general path decides)."""
    try:
        f = _BOOK_DECODER.decode(raw)
        kind, param, symbol = _route(f.topic)
        d = f.data
        if kind != "orderbook" or d.s != symbol or not 0 <= f.ts < _MAX_INT or not 0 <= d.u < _MAX_INT:
            return None
        # Every string seen before: the common case, inline. Plain loops, not comprehensions: on
        # Python 3.11 a comprehension is a function call, and a delta has two or four levels.
        positive, non_negative = _POSITIVE, _NON_NEGATIVE
        bids: list[Level] = []
        asks: list[Level] = []
        try:
            for price, size in d.b:
                bids.append((positive[price], non_negative[size]))
            for price, size in d.a:
                asks.append((positive[price], non_negative[size]))
        except KeyError:
            bids, asks = _typed_levels(d.b, f.topic), _typed_levels(d.a, f.topic)
        # Every field in order (topic, symbol, depth, kind, ts, u, seq, bids, asks), built by the C
        # tuple constructor that the NamedTuple's generated Python __new__ calls, skipping that call
        # on the path nine frames in ten take (the fuzz tests compare it with the general path's).
        fields = (f.topic, symbol, int(param), f.type, f.ts, d.u, d.seq, tuple(bids), tuple(asks))
        return tuple.__new__(BookUpdate, fields)
    except Exception:  # whatever it is, the general path names it
        return None


_KLINE_PREFIX_S = '{"topic":"kline.'
_KLINE_PREFIX_B = _KLINE_PREFIX_S.encode()
_PREFIXES_S = (_BOOK_PREFIX_S, _KLINE_PREFIX_S)  # what a frame starts with to take a typed path
_PREFIXES_B = (_BOOK_PREFIX_B, _KLINE_PREFIX_B)


class _KlineItem(msgspec.Struct, forbid_unknown_fields=True):
    start: int
    interval: str
    open: str
    high: str
    low: str
    close: str
    volume: str
    confirm: bool
    turnover: str = "0"
    end: int | None = None  # checked for type, not used (as ``timestamp``)
    timestamp: int | None = None


class _KlineFrame(msgspec.Struct, forbid_unknown_fields=True):
    topic: str
    ts: int
    data: list[_KlineItem]
    type: str | None = None  # "snapshot": checked for type, not used


_KLINE_DECODER = msgspec.json.Decoder(_KlineFrame)


def _typed_kline(raw: str | bytes) -> KlineUpdate | None:
    """The frame as a :class:`KlineUpdate` when it is a valid kline frame, else None (the general path decides)."""
    try:
        f = _KLINE_DECODER.decode(raw)
        kind, interval, symbol = _route(f.topic)
        if kind != "kline" or not 0 <= f.ts < _MAX_INT or not f.data:
            return None
        bars = []
        for item in f.data:
            if item.interval != interval or not 0 <= item.start < _MAX_INT:
                return None
            try:  # prices sit on the tick grid and repeat (the book's cache holds most of them)
                o, h, lo, c = _POSITIVE[item.open], _POSITIVE[item.high], _POSITIVE[item.low], _POSITIVE[item.close]
            except KeyError:
                o, h, lo, c = (
                    _cached(v, _POSITIVE, f.topic, positive=True) for v in (item.open, item.high, item.low, item.close)
                )
            # volumes grow with every push of a forming bar: caching them would only churn the cache
            bar = Bar(
                item.start,
                o,
                h,
                lo,
                c,
                _dec(item.volume, f.topic, positive=False),
                _dec(item.turnover, f.topic, positive=False),
            )
            if not _consistent(bar):
                return None
            bars.append(KlineBar(bar, item.confirm))
        return KlineUpdate(f.topic, symbol, interval, f.ts, tuple(bars))
    except Exception:  # whatever it is, the general path names it
        return None
