"""Tests for the sans-I/O Bybit frame parser (``streaming.frames.parse_frame``).

Pins three things: the golden samples in ``shared/bybit_samples`` decode to the exact typed values
(bybit_protocol.md §2.2, §2.4, §3, §4.2), malformed frames raise ``FrameError`` with a message that
says what is wrong, and for any input at all the parser returns one of its four message types or
raises ``FrameError`` — never anything else (the contract in ``streaming.errors.FrameError``).
"""

from __future__ import annotations

import copy
import json
import re
import zipfile
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from streaming import frames
from streaming.errors import FrameError, UnknownTopicError
from streaming.frames import BookUpdate, CommandResponse, KlineBar, KlineUpdate, Pong, parse_frame
from streaming.klines import Bar
from tests.streaming.kit import SHARED, XRP_OB500_ZIP, book_update

D = Decimal
MESSAGE_TYPES = (KlineUpdate, BookUpdate, CommandResponse, Pong)


SAMPLES = SHARED / "bybit_samples"

# Property tests must stay fast (< 3 s each) and must not write a .hypothesis/ database into the repo.
FUZZ = settings(max_examples=400, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


def _sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def _exact(levels: tuple[tuple[Decimal, Decimal], ...]) -> list[tuple[str, str]]:
    """Decimal == ignores trailing zeros; the wire strings must survive unchanged."""
    return [(str(p), str(s)) for p, s in levels]


# ---------------------------------------------------------------------------------------------------
# Golden fixtures
# ---------------------------------------------------------------------------------------------------


def _ack(conn_id: str, *, ret_msg: str = "", req_id: str = "", success: bool = True) -> CommandResponse:
    """The reply to a ``subscribe`` command."""
    return CommandResponse(op="subscribe", success=success, ret_msg=ret_msg, req_id=req_id, conn_id=conn_id)


OB50_SNAPSHOT = book_update(
    "snapshot",
    18521288,
    [("16493.50", "0.006"), ("16493.00", "0.100")],
    [("16611.00", "0.029"), ("16612.00", "0.213")],
    ts=1672304484978,
    seq=7961638724,
)

EXPECTED: dict[str, object] = {
    "docs_ws_pong_linear_docsexample.json": Pong(req_id="", conn_id="465772b1-7630-4fdc-a492-e003e6f0f260"),
    "docs_ws_pong_spot_docsexample.json": Pong(req_id="", conn_id="0970e817-426e-429a-a679-ff7f55e0b16a"),
    "docs_ws_pong_option_docsexample.json": Pong(req_id="", conn_id=""),
    "docs_ws_subscribe_success_linear_docsexample.json": _ack("3cd84cb1-4d06-4a05-930a-2efe5fc70f0f"),
    "docs_ws_subscribe_success_spot_docsexample.json": _ack(
        "2324d924-aa4d-45b0-a858-7b8be29ab52b", ret_msg="subscribe", req_id="10001"
    ),
    "nautilus_crates_ws_subscribe_success.json": _ack("cejreaspqfm9se7usbrg-2xh", req_id="sub-orderbook-1"),
    "nautilus_crates_ws_subscribe_failure.json": _ack(
        "cejreaspqfm9se7usbrg-2xh", ret_msg="Invalid topic: invalid.topic.BTCUSDT", success=False
    ),
    "nautilus_crates_ws_kline_confirm_false_docsexample.json": KlineUpdate(
        topic="kline.5.BTCUSDT",
        symbol="BTCUSDT",
        interval="5",
        ts=1672324988882,
        bars=(
            KlineBar(Bar(1672324800000, *map(D, ("16649.5", "16677", "16608", "16677", "2.081", "34666.4005"))), False),
        ),
    ),
    "nautilus_py_ws_orderbook50_snapshot_docsexample.json": OB50_SNAPSHOT,
    # Same message with the top-level ``cts`` added in 2023-12: an extra key changes nothing.
    "docs_ws_orderbook50_snapshot_docsexample_with_cts.json": OB50_SNAPSHOT,
    "nautilus_py_ws_orderbook50_delta_docsexample.json": book_update(
        "delta",
        177400507,
        [
            ("30247.20", "30.028"),
            ("30245.40", "0.224"),
            ("30242.10", "1.593"),
            ("30240.30", "1.305"),
            ("30240.00", "0"),
        ],
        [
            ("30248.70", "0"),
            ("30249.30", "0.892"),
            ("30249.50", "1.778"),
            ("30249.60", "0"),
            ("30251.90", "2.947"),
            ("30252.20", "0.659"),
            ("30252.50", "4.591"),
        ],
        ts=1687940967466,
        seq=66544703342,
    ),
    "nautilus_crates_ws_orderbook1_snapshot_FIXTURE.json": book_update(
        "snapshot",
        123456789,
        [("27450.00", "0.500"), ("27449.50", "1.000")],
        [("27451.00", "0.750"), ("27451.50", "0.900")],
        ts=1709891679000,
        seq=987654321,
        depth=1,
    ),
    "nautilus_crates_ws_orderbook1_delta_FIXTURE.json": book_update(
        "delta", 123456790, [("27450.00", "0.400")], [("27451.00", "0")], ts=1709891679500, seq=987654322, depth=1
    ),
}

# Well-formed pushes for topics we do not consume. ``trade.linear.BTCUSDT`` is a hand-made topic.
UNCONSUMED_TOPIC_SAMPLES = {
    "nautilus_py_ws_publicTrade_docsexample.json": "publicTrade.BTCUSDT",
    "nautilus_crates_ws_publictrade_FIXTURE.json": "trade.linear.BTCUSDT",
    "docs_ws_tickers_linear_snapshot_docsexample.json": "tickers.BTCUSDT",
    "nautilus_crates_ws_tickers_linear.json": "tickers.BTCUSDT",
}

# REST bodies are not WebSocket frames: no ``topic``, no ``op``.
REST_SAMPLES = (
    "docs_rest_kline_inverse_docsexample.json",
    "docs_rest_orderbook_spot_docsexample.json",
    "nautilus_crates_rest_kline_linear_FIXTURE.json",
    "nautilus_crates_rest_orderbook_FIXTURE.json",
    "nautilus_py_rest_kline_linear_D_recorded.json",
)


def test_every_sample_file_has_an_expectation() -> None:
    """A new sample dropped into bybit_samples must be classified here, not silently ignored."""
    on_disk = {p.name for p in SAMPLES.glob("*.json")}
    classified = set(EXPECTED) | set(UNCONSUMED_TOPIC_SAMPLES) | set(REST_SAMPLES)
    assert on_disk == classified


@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("as_text", [False, True], ids=["bytes", "str"])
def test_golden_sample_decodes_to_exact_message(name: str, as_text: bool) -> None:
    raw = _sample(name)
    msg = parse_frame(raw.decode() if as_text else raw)
    expected = EXPECTED[name]
    assert type(msg) is type(expected)
    assert msg == expected


@pytest.mark.parametrize(
    "name",
    sorted(n for n, m in EXPECTED.items() if isinstance(m, BookUpdate)),
)
def test_golden_book_levels_keep_wire_strings_and_order(name: str) -> None:
    msg = parse_frame(_sample(name))
    assert isinstance(msg, BookUpdate)
    wire = json.loads(_sample(name))["data"]
    assert _exact(msg.bids) == [tuple(level) for level in wire["b"]]
    assert _exact(msg.asks) == [tuple(level) for level in wire["a"]]
    assert all(isinstance(x, Decimal) for level in msg.bids + msg.asks for x in level)


def test_golden_delta_keeps_zero_sizes_as_deletes() -> None:
    msg = parse_frame(_sample("nautilus_py_ws_orderbook50_delta_docsexample.json"))
    assert isinstance(msg, BookUpdate)
    assert [p for p, s in msg.bids if s == 0] == [D("30240.00")]
    assert [p for p, s in msg.asks if s == 0] == [D("30248.70"), D("30249.60")]


def test_golden_kline_values_are_exact_decimals() -> None:
    msg = parse_frame(_sample("nautilus_crates_ws_kline_confirm_false_docsexample.json"))
    assert isinstance(msg, KlineUpdate)
    ((bar, confirm),) = msg.bars
    assert msg.interval == "5"
    assert confirm is False
    fields = (bar.open, bar.high, bar.low, bar.close, bar.volume, bar.turnover)
    assert all(type(x) is Decimal for x in fields)
    assert [str(x) for x in fields] == ["16649.5", "16677", "16608", "16677", "2.081", "34666.4005"]


@pytest.mark.parametrize(("name", "topic"), sorted(UNCONSUMED_TOPIC_SAMPLES.items()))
def test_unconsumed_topic_samples_raise_unknown_topic(name: str, topic: str) -> None:
    with pytest.raises(UnknownTopicError, match=re.escape(topic)):
        parse_frame(_sample(name))


@pytest.mark.parametrize("name", REST_SAMPLES)
def test_rest_samples_are_not_ws_frames(name: str) -> None:
    with pytest.raises(FrameError, match="neither 'topic' nor 'op'") as info:
        parse_frame(_sample(name))
    assert type(info.value) is FrameError


def test_recorded_xrp_ob500_stream_parses_line_by_line() -> None:
    with zipfile.ZipFile(XRP_OB500_ZIP) as zf:
        (member,) = zf.namelist()
        lines = zf.read(member).splitlines()
    msgs = [parse_frame(line) for line in lines]
    assert all(isinstance(m, BookUpdate) for m in msgs)
    books = [m for m in msgs if isinstance(m, BookUpdate)]
    assert [m.kind for m in books] == ["snapshot"] + ["delta"] * 49
    assert {(m.topic, m.symbol, m.depth) for m in books} == {("orderbook.500.XRPUSDT", "XRPUSDT", 500)}
    first = books[0]
    assert (first.u, first.seq, first.ts) == (20254869, 130020238981, 1733011200691)
    assert (len(first.bids), len(first.asks)) == (500, 500)
    assert first.bids[0] == (D("1.9531"), D("6203"))
    assert first.asks[0] == (D("1.9532"), D("10480"))


# ---------------------------------------------------------------------------------------------------
# Kline pushes at a bar boundary
# ---------------------------------------------------------------------------------------------------


def _bar(start: int, *, confirm: bool, interval: str = "5", **overrides: Any) -> dict[str, Any]:
    bar: dict[str, Any] = {
        "start": start,
        "end": start + 300_000 - 1,
        "interval": interval,
        "open": "16649.5",
        "close": "16677",
        "high": "16677",
        "low": "16608",
        "volume": "2.081",
        "turnover": "34666.4005",
        "confirm": confirm,
        "timestamp": start + 1000,
    }
    bar.update(overrides)
    return bar


def _kline_frame(*bars: dict[str, Any], topic: str = "kline.5.BTCUSDT") -> dict[str, Any]:
    data = list(bars) or [_bar(1672324800000, confirm=False)]
    return {"topic": topic, "data": data, "ts": 1672325100010, "type": "snapshot"}


def test_kline_push_with_closing_and_next_bar_keeps_both_in_order() -> None:
    closing = _bar(1672324800000, confirm=True, close="16680", high="16690")
    opening = _bar(1672325100000, confirm=False, open="16680", close="16681", high="16681", low="16679")
    msg = parse_frame(json.dumps(_kline_frame(closing, opening)))
    assert isinstance(msg, KlineUpdate)
    assert [(b.bar.start, b.confirm) for b in msg.bars] == [(1672324800000, True), (1672325100000, False)]
    assert msg.bars[0].bar.close == D("16680")
    assert msg.bars[1].bar.open == D("16680")
    assert msg.bars[1].bar.low == D("16679")


def test_kline_turnover_is_optional() -> None:
    bar = _bar(1672324800000, confirm=True)
    del bar["turnover"]
    msg = parse_frame(json.dumps(_kline_frame(bar)))
    assert isinstance(msg, KlineUpdate)
    assert msg.bars[0].bar.turnover == 0


# ---------------------------------------------------------------------------------------------------
# Malformed frames
# ---------------------------------------------------------------------------------------------------

_DROP = object()


def _book_frame(kind: str = "snapshot", topic: str = "orderbook.50.BTCUSDT") -> dict[str, Any]:
    return {
        "topic": topic,
        "type": kind,
        "ts": 1687940967466,
        "data": {
            "s": topic.rsplit(".", 1)[-1],
            "b": [["30247.20", "30.028"], ["30240.00", "0"]],
            "a": [["30248.70", "1.5"]],
            "u": 177400507,
            "seq": 66544703342,
        },
        "cts": 1687940967464,
    }


def _with(frame: dict[str, Any], path: tuple[str | int, ...], value: object) -> bytes:
    """A copy of ``frame`` with the value at ``path`` replaced (or removed for ``_DROP``)."""
    out = copy.deepcopy(frame)
    node: Any = out
    for key in path[:-1]:
        node = node[key]
    if value is _DROP:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return json.dumps(out).encode()


_KLINE = _kline_frame()
_BOOK = _book_frame()

MALFORMED = [
    pytest.param(b"{not json", "not JSON", id="not-json"),
    pytest.param(b"", "not JSON", id="empty"),
    pytest.param(b'{"topic":"kline.5.BTCUSDT"', "not JSON", id="truncated"),
    pytest.param(b'{"topic":"kline.5.\xff\xfe"}', "not JSON", id="invalid-utf8"),
    pytest.param(b'{"op":"ping","ret_msg":"\xc3"}', "not JSON", id="truncated-utf8-sequence"),
    pytest.param(b"[1, 2]", "expected a JSON object, got list", id="json-array"),
    pytest.param(b'"pong"', "expected a JSON object, got str", id="json-string"),
    pytest.param(b"null", "expected a JSON object", id="json-null"),
    pytest.param(b'{"success":true,"ret_msg":"pong"}', "neither 'topic' nor 'op'", id="no-topic-no-op"),
    pytest.param(b'{"op":7,"success":true}', "neither 'topic' nor 'op'", id="op-not-string"),
    pytest.param(_with(_KLINE, ("topic",), 5), "'topic' is not a string", id="topic-int"),
    pytest.param(_with(_KLINE, ("topic",), ["kline.5.BTCUSDT"]), "'topic' is not a string", id="topic-list"),
    pytest.param(b'{"op":"subscribe","ret_msg":""}', "without a boolean 'success'", id="ack-no-success"),
    pytest.param(b'{"op":"subscribe","success":"true"}', "without a boolean 'success'", id="ack-success-string"),
    pytest.param(b'{"op":"subscribe","success":true,"req_id":5}', "malformed 'subscribe'", id="req-id-int"),
    pytest.param(b'{"op":"ping","ret_msg":null}', "malformed 'ping'", id="ret-msg-null"),
    # kline
    pytest.param(_with(_KLINE, ("data",), {"start": 1}), "'data' must be a non-empty array", id="kline-data-obj"),
    pytest.param(_with(_KLINE, ("data",), []), "'data' must be a non-empty array", id="kline-data-empty"),
    pytest.param(_with(_KLINE, ("data",), _DROP), "'data' must be a non-empty array", id="kline-no-data"),
    pytest.param(_with(_KLINE, ("data", 0), "bar"), "kline element is not an object", id="kline-elem-str"),
    pytest.param(_with(_KLINE, ("data", 0, "interval"), "1"), "does not match topic", id="interval-mismatch"),
    pytest.param(_with(_KLINE, ("data", 0, "interval"), 5), "does not match topic", id="interval-int"),
    pytest.param(_with(_KLINE, ("data", 0, "confirm"), "false"), "'confirm' must be a boolean", id="confirm-str"),
    pytest.param(_with(_KLINE, ("data", 0, "confirm"), 0), "'confirm' must be a boolean", id="confirm-int"),
    pytest.param(_with(_KLINE, ("data", 0, "confirm"), _DROP), "'confirm' must be a boolean", id="no-confirm"),
    pytest.param(_with(_KLINE, ("data", 0, "open"), "NaN"), "'NaN' is out of range", id="open-nan"),
    pytest.param(_with(_KLINE, ("data", 0, "open"), "-1"), "'-1' is out of range", id="open-negative"),
    pytest.param(_with(_KLINE, ("data", 0, "open"), "0"), "'0' is out of range", id="open-zero"),
    pytest.param(_with(_KLINE, ("data", 0, "open"), "abc"), "'abc' is not a decimal", id="open-abc"),
    pytest.param(_with(_KLINE, ("data", 0, "high"), "Infinity"), "is out of range", id="high-inf"),
    pytest.param(_with(_KLINE, ("data", 0, "low"), 16608), "expected a decimal string", id="low-number"),
    pytest.param(_with(_KLINE, ("data", 0, "close"), _DROP), "expected a decimal string", id="no-close"),
    pytest.param(_with(_KLINE, ("data", 0, "volume"), "-0.5"), "is out of range", id="volume-negative"),
    pytest.param(_with(_KLINE, ("data", 0, "turnover"), None), "expected a decimal string", id="turnover-null"),
    pytest.param(_with(_KLINE, ("data", 0, "high"), "16000"), "inconsistent OHLC", id="high-below-low"),
    pytest.param(_with(_KLINE, ("data", 0, "open"), "16700"), "inconsistent OHLC", id="open-above-high"),
    pytest.param(_with(_KLINE, ("data", 0, "close"), "16600"), "inconsistent OHLC", id="close-below-low"),
    pytest.param(_with(_KLINE, ("data", 0, "start"), -1), "'start' must be a non-negative integer", id="start-neg"),
    pytest.param(_with(_KLINE, ("data", 0, "start"), "1"), "'start' must be a non-negative integer", id="start-str"),
    pytest.param(_with(_KLINE, ("ts",), _DROP), "'ts' must be a non-negative integer", id="kline-no-ts"),
    pytest.param(_with(_KLINE, ("ts",), True), "'ts' must be a non-negative integer", id="kline-ts-bool"),
    # orderbook
    pytest.param(_with(_BOOK, ("type",), "foo"), "'type' must be snapshot or delta, got 'foo'", id="ob-type-foo"),
    pytest.param(_with(_BOOK, ("type",), _DROP), "'type' must be snapshot or delta", id="ob-no-type"),
    pytest.param(_with(_BOOK, ("data",), []), "'data' must be an object", id="ob-data-list"),
    pytest.param(_with(_BOOK, ("data", "s"), "ETHUSDT"), "data.s 'ETHUSDT' does not match", id="ob-s-mismatch"),
    pytest.param(_with(_BOOK, ("data", "s"), _DROP), "data.s None does not match", id="ob-no-s"),
    pytest.param(_with(_BOOK, ("data", "u"), _DROP), "'u' must be a non-negative integer", id="u-missing"),
    pytest.param(_with(_BOOK, ("data", "u"), -1), "'u' must be a non-negative integer, got -1", id="u-negative"),
    pytest.param(
        _with(_KLINE, ("data", 0, "start"), 10**17), "'start' must be a non-negative integer", id="start-huge"
    ),
    pytest.param(_with(_BOOK, ("ts",), 2**64 - 1), "'ts' must be a non-negative integer", id="ts-huge"),
    pytest.param(_with(_BOOK, ("data", "u"), 1.5), "'u' must be a non-negative integer, got 1.5", id="u-float"),
    pytest.param(_with(_BOOK, ("data", "u"), 2.0), "'u' must be a non-negative integer, got 2.0", id="u-2.0"),
    pytest.param(_with(_BOOK, ("data", "u"), "7"), "'u' must be a non-negative integer", id="u-string"),
    pytest.param(_with(_BOOK, ("data", "u"), True), "'u' must be a non-negative integer", id="u-bool"),
    pytest.param(_with(_BOOK, ("data", "u"), 10**30), "'u' must be a non-negative integer", id="u-over-64bit"),
    pytest.param(_with(_BOOK, ("data", "seq"), "1"), "'seq' must be an integer", id="seq-string"),
    pytest.param(_with(_BOOK, ("ts",), -5), "'ts' must be a non-negative integer", id="ob-ts-negative"),
    pytest.param(
        _with(_BOOK, ("data", "b", 0), ["30247.20", "30.028", "1"]), "level must be \\[price, size\\]", id="level-3"
    ),
    pytest.param(_with(_BOOK, ("data", "b", 0), ["30247.20"]), "level must be \\[price, size\\]", id="level-1"),
    pytest.param(_with(_BOOK, ("data", "a", 0), "30248.70"), "level must be \\[price, size\\]", id="level-str"),
    pytest.param(
        _with(_BOOK, ("data", "a", 0), {"p": "1", "s": "1"}), "level must be \\[price, size\\]", id="level-obj"
    ),
    pytest.param(_with(_BOOK, ("data", "b"), _DROP), "side must be an array", id="no-bids"),
    pytest.param(_with(_BOOK, ("data", "a"), {"30248.70": "1"}), "side must be an array", id="asks-obj"),
    pytest.param(_with(_BOOK, ("data", "b", 0, 0), "0"), "'0' is out of range", id="price-zero"),
    pytest.param(_with(_BOOK, ("data", "b", 0, 0), "NaN"), "'NaN' is out of range", id="price-nan"),
    pytest.param(_with(_BOOK, ("data", "b", 0, 0), "-1"), "'-1' is out of range", id="price-negative"),
    pytest.param(_with(_BOOK, ("data", "b", 0, 0), "abc"), "'abc' is not a decimal", id="price-abc"),
    pytest.param(_with(_BOOK, ("data", "b", 0, 0), 30247.2), "expected a decimal string", id="price-float"),
    pytest.param(_with(_BOOK, ("data", "a", 0, 1), "-0.001"), "'-0.001' is out of range", id="size-negative"),
    pytest.param(_with(_BOOK, ("data", "a", 0, 1), "sNaN"), "'sNaN' is out of range", id="size-snan"),
    pytest.param(_with(_BOOK, ("data", "a", 0, 1), None), "expected a decimal string", id="size-null"),
]


@pytest.mark.parametrize(("raw", "message"), MALFORMED)
def test_malformed_frame_raises_frame_error_with_reason(raw: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message) as info:
        parse_frame(raw)
    # A broken frame must not be mistaken for a well-formed push we merely do not consume.
    assert type(info.value) is FrameError


def _compact(raw: bytes) -> bytes | None:
    try:
        return json.dumps(json.loads(raw), separators=(",", ":")).encode()
    except ValueError:
        return None


# Compact, as Bybit sends them: book and kline frames then start with the prefixes the typed paths take.
MALFORMED_COMPACT = [
    pytest.param(compact, p.values[1], id=p.id) for p in MALFORMED if (compact := _compact(p.values[0])) is not None
]


@pytest.mark.parametrize(("raw", "message"), MALFORMED_COMPACT)
def test_malformed_frame_sent_compact_is_refused_by_the_typed_paths_too(raw: bytes, message: str) -> None:
    with pytest.raises(FrameError, match=message) as info:
        parse_frame(raw)
    assert type(info.value) is FrameError


def test_malformed_book_message_names_the_topic() -> None:
    with pytest.raises(FrameError, match=r"^orderbook\.50\.BTCUSDT: "):
        parse_frame(_with(_BOOK, ("data", "u"), -1))


UNKNOWN_TOPICS = [
    pytest.param("orderbook.50.btcusdt", id="lowercase-symbol"),
    pytest.param("kline.5.btcusdt", id="kline-lowercase-symbol"),
    pytest.param("orderbook.30.BTCUSDT", id="depth-30"),
    pytest.param("orderbook.0.BTCUSDT", id="depth-0"),
    pytest.param("orderbook.-50.BTCUSDT", id="depth-negative"),
    pytest.param("orderbook.abc.BTCUSDT", id="depth-letters"),
    pytest.param("kline.2.BTCUSDT", id="interval-2"),
    pytest.param("kline.5m.BTCUSDT", id="interval-5m"),
    pytest.param("orderbook.50", id="two-parts"),
    pytest.param("orderbook.50.BTCUSDT.x", id="four-parts"),
    pytest.param("orderbook.50.", id="empty-symbol"),
    pytest.param("orderbook.50.BTC-USDT", id="symbol-dash"),
    pytest.param("liquidation.BTCUSDT", id="liquidation"),
    pytest.param("", id="empty-topic"),
    # Non-ASCII digits: str.isdigit() accepts them but they are not a Bybit depth.
    pytest.param("orderbook.\u00b2.BTCUSDT", id="depth-superscript-two"),
    pytest.param("orderbook.\uff15\uff10.BTCUSDT", id="depth-fullwidth-50"),
    # A regex ``$`` also matches before a trailing newline; the symbol must match in full.
    pytest.param("orderbook.50.BTCUSDT\n", id="symbol-trailing-newline"),
    pytest.param("kline.5.BTCUSDT\n", id="kline-symbol-trailing-newline"),
]


@pytest.mark.parametrize("topic", UNKNOWN_TOPICS)
def test_unsupported_topic_raises_unknown_topic_error(topic: str) -> None:
    frame = _kline_frame() if topic.startswith("kline") else _book_frame()
    frame["topic"] = topic
    if isinstance(frame["data"], dict):
        # The body names the topic's own symbol, so only the topic itself can be the problem.
        frame["data"]["s"] = topic.rsplit(".", 1)[-1]
    with pytest.raises(UnknownTopicError, match="unknown topic"):
        parse_frame(json.dumps(frame))


# ---------------------------------------------------------------------------------------------------
# Property tests: any input => a message or FrameError
# ---------------------------------------------------------------------------------------------------

_SYMBOL = re.compile(r"[A-Z0-9]{2,40}")


def _check_outcome(raw: str | bytes) -> None:
    """Parse ``raw``; anything but a message or FrameError fails. Returned messages must be sane."""
    try:
        msg = parse_frame(raw)
    except FrameError:
        return
    assert isinstance(msg, MESSAGE_TYPES)
    if isinstance(msg, KlineUpdate):
        assert _SYMBOL.fullmatch(msg.symbol)
        assert msg.topic == f"kline.{msg.interval}.{msg.symbol}"
        assert msg.bars
        assert type(msg.ts) is int
        assert msg.ts >= 0
        for bar, confirm in msg.bars:
            assert 0 < bar.low <= min(bar.open, bar.close) <= max(bar.open, bar.close) <= bar.high
            assert bar.volume >= 0
            assert bar.turnover >= 0
            assert type(bar.start) is int
            assert bar.start >= 0
            assert type(confirm) is bool
    elif isinstance(msg, BookUpdate):
        assert _SYMBOL.fullmatch(msg.symbol)
        assert msg.topic == f"orderbook.{msg.depth}.{msg.symbol}"
        assert msg.kind in ("snapshot", "delta")
        assert type(msg.u) is int
        assert msg.u >= 0
        assert type(msg.ts) is int
        assert msg.ts >= 0
        assert type(msg.seq) is int
        for price, size in msg.bids + msg.asks:
            assert type(price) is Decimal
            assert type(size) is Decimal
            assert price.is_finite()
            assert price > 0
            assert size.is_finite()
            assert size >= 0
    elif isinstance(msg, CommandResponse):
        assert type(msg.success) is bool
        assert all(isinstance(x, str) for x in (msg.op, msg.ret_msg, msg.req_id, msg.conn_id))
    else:
        assert isinstance(msg.req_id, str)
        assert isinstance(msg.conn_id, str)


@FUZZ
@given(st.binary(max_size=512))
def test_any_bytes_give_a_message_or_frame_error(raw: bytes) -> None:
    _check_outcome(raw)


@FUZZ
@given(st.text(max_size=512))
def test_any_text_gives_a_message_or_frame_error(raw: str) -> None:
    _check_outcome(raw)


_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@FUZZ
@given(
    st.dictionaries(
        st.sampled_from(["topic", "op", "type", "data", "ts", "success", "ret_msg", "req_id", "conn_id"]),
        _json_values,
        max_size=6,
    )
)
def test_any_json_object_with_protocol_keys_gives_a_message_or_frame_error(obj: dict[str, Any]) -> None:
    _check_outcome(json.dumps(obj))


# Near-valid frames: start from a valid kline/orderbook push and damage it in the ways a buggy or
# hostile peer would — swapped types, dropped keys, numbers as strings, huge ints, nested junk.

_junk = st.one_of(
    st.none(),
    st.booleans(),
    st.sampled_from([0, -1, 1, 2**63, 2**64, -(2**63) - 1, 10**30, 1.5, 2.0, -0.0, 1e308]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(
        ["", "0", "-0", "1", "1e9999", "1E-9999", "NaN", "sNaN", "-Infinity", "0x10", "1_000", " 1 ", "abc"]
    ),
    st.sampled_from(["snapshot", "delta", "5", "BTCUSDT", "btcusdt", "pong", "ping", "subscribe"]),
    st.text(max_size=6),
    st.lists(st.sampled_from(["1", "0", 1, None, []]), max_size=3),
    st.dictionaries(st.sampled_from(["s", "u", "b", "a", "interval"]), st.sampled_from(["1", 1, None]), max_size=2),
    _json_values,
)

_odd_param = st.text(
    alphabet=st.characters(categories=["Nd", "No", "Nl"]) | st.sampled_from("0123456789-+ ._"), max_size=3
)
_topics = st.one_of(
    st.sampled_from(
        [
            "kline.1.BTCUSDT",
            "kline.5.BTCUSDT",
            "kline.60.ETHUSDT",
            "orderbook.1.BTCUSDT",
            "orderbook.50.BTCUSDT",
            "orderbook.200.BTCUSDT",
            "orderbook.1000.BTCUSDT",
            "orderbook.50.btcusdt",
            "publicTrade.BTCUSDT",
        ]
    ),
    st.builds(
        lambda kind, param, sym: f"{kind}.{param}.{sym}",
        st.sampled_from(["kline", "orderbook"]),
        _odd_param,
        st.sampled_from(["BTCUSDT", "BTCUSDT\n", "B", "btc", ""]),
    ),
)


def _paths(node: Any, prefix: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    out: list[tuple[str | int, ...]] = []
    items: list[tuple[str | int, Any]] = (
        list(node.items()) if isinstance(node, dict) else list(enumerate(node)) if isinstance(node, list) else []
    )
    for key, child in items:
        out.append((*prefix, key))
        out.extend(_paths(child, (*prefix, key)))
    return out


@st.composite
def near_valid_frames(draw: st.DrawFn) -> str:
    kind = draw(st.sampled_from(["kline-one", "kline-two", "book-snapshot", "book-delta"]))
    if kind == "kline-one":
        frame = _kline_frame()
    elif kind == "kline-two":
        frame = _kline_frame(
            _bar(1672324800000, confirm=True),
            _bar(1672325100000, confirm=False, open="16677", low="16677"),
        )
    else:
        frame = _book_frame(kind.removeprefix("book-"))
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = _paths(frame)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        node: Any = frame
        for key in path[:-1]:
            node = node[key]
        action = draw(st.sampled_from(["replace", "replace", "drop", "stringify", "wrap", "topic"]))
        if action == "drop":
            del node[path[-1]]
        elif action == "stringify":
            node[path[-1]] = json.dumps(node[path[-1]])
        elif action == "wrap":
            node[path[-1]] = [node[path[-1]]]
        elif action == "topic":
            frame["topic"] = draw(_topics)
        else:
            node[path[-1]] = draw(_junk)
    return json.dumps(frame)


@FUZZ
@given(near_valid_frames())
def test_near_valid_frames_give_a_message_or_frame_error(raw: str) -> None:
    _check_outcome(raw)
    _check_outcome(raw.encode())


@FUZZ
@given(st.sampled_from(["kline", "orderbook"]), _odd_param)
def test_topic_parameter_junk_gives_a_message_or_frame_error(kind: str, param: str) -> None:
    frame = _kline_frame() if kind == "kline" else _book_frame()
    frame["topic"] = f"{kind}.{param}.BTCUSDT"
    _check_outcome(json.dumps(frame))


@FUZZ
@given(near_valid_frames())
def test_the_typed_paths_agree_with_the_general_one(raw: str) -> None:
    """Book frames (nine in ten of a feed) and klines (most of the rest) take a typed msgspec decode;
    each gives the general path's message where it answers, never accepts what the general path
    refuses, and leaves the rest to it (a field it declares, with an odd type: the general path,
    which ignores that field, decides)."""
    compact = json.dumps(json.loads(raw), separators=(",", ":"))  # as Bybit sends them
    for frame in (compact, compact.encode()):
        try:
            general: object = frames._parse_general(frame)
        except FrameError:
            general = None
        for typed_path, message_type in ((frames._typed_book, BookUpdate), (frames._typed_kline, KlineUpdate)):
            typed = typed_path(frame)
            if isinstance(general, message_type):
                assert typed is None or typed == general
            else:
                assert typed is None


_ITEM = '{"start":0,"interval":"1","open":"1","high":"1","low":"1","close":"1","volume":"0","confirm":true'


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(f'{{"topic":"kline.1.BTCUSDT","ts":1,"data":[{_ITEM},"end":1e400}}]}}'.encode(), id="overflow"),
        pytest.param(
            f'{{"topic":"kline.1.BTCUSDT","type":"snap","ts":1,"data":[{_ITEM}}}]}}'.encode().replace(b"snap", b"\xff"),
            id="bad-utf8",
        ),
        pytest.param(
            f'{{"topic":"kline.1.BTCUSDT","ts":1,"x":{"[" * 1000}{"]" * 1000},"data":[{_ITEM}}}]}}'.encode(),
            id="deep-nesting",
        ),
        pytest.param(
            b'{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"cts":1e400,'
            b'"data":{"s":"BTCUSDT","b":[],"a":[],"u":1}}',
            id="book-overflow",
        ),
        pytest.param(f'{{"topic":"kline.1.BTCUSDT","ts":1,"data":[{_ITEM}}}],"t":"\ud800"}}', id="lone-surrogate"),
    ],
)
def test_what_the_typed_decoder_would_skip_unchecked_goes_to_the_general_path(raw: str | bytes) -> None:
    """msgspec skips an undeclared field without checking it as orjson does (an invalid string, a
    number past a double, deep nesting), and raises more than its DecodeError: each of these frames
    gets the general path's verdict, an error it names or the same message."""
    try:
        expected: object = frames._parse_general(raw)
    except FrameError as exc:
        expected = str(exc)
    try:
        got: object = parse_frame(raw)
    except FrameError as exc:
        got = str(exc)
    assert got == expected


def test_a_real_kline_frame_takes_the_typed_path() -> None:
    raw = json.dumps(_kline_frame(), separators=(",", ":"))
    assert raw.startswith(frames._KLINE_PREFIX_S)
    typed = frames._typed_kline(raw)
    assert typed is not None and typed == frames._parse_general(raw) == parse_frame(raw)


def test_a_real_book_frame_takes_the_typed_path() -> None:
    raw = json.dumps(_book_frame("delta"), separators=(",", ":"))
    assert raw.startswith(frames._BOOK_PREFIX_S)
    typed = frames._typed_book(raw)
    assert typed is not None and typed == frames._parse_general(raw) == parse_frame(raw)
