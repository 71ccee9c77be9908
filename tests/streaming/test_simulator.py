"""The Bybit exchange simulator, against real sockets: bars and aggregation, the synthetic book, the
WebSocket protocol (acks, pongs, failure strings), book and kline streams, REST klines, every fault
method, pacing at extreme speed, and a record -> replay round trip.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import functools
import gzip
import itertools
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

import httpx
import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError

from streaming.book import ApplyResult, BookState, OrderBook
from streaming.errors import FrameError
from streaming.frames import BookUpdate, KlineUpdate, parse_frame
from streaming.recorder import record
from streaming.sim.bars import MINUTE_MS, aggregate, load_1m_bars, symbol_from_path
from streaming.sim.book import SyntheticBook
from streaming.sim.clock import SimClock
from streaming.sim.paths import intrabar_price, partial_bar
from streaming.sim.server import ExchangeSimulator, SimulatorConfig
from tests.conftest import DATA_1M
from tests.helpers import eventually

BTC = "BTCUSDT"


# --- fixtures and helpers -------------------------------------------------------------------------


def write_head(src: Path, dst: Path, rows: int) -> Path:
    """Copy the header and the first ``rows`` bars of a gzip CSV."""
    with gzip.open(src, "rt") as fin, gzip.open(dst, "wt") as fout:
        for k, line in enumerate(fin):
            if k > rows:
                break
            fout.write(line)
    return dst


def csv_rows(path: Path) -> dict[int, list[str]]:
    with gzip.open(path, "rt", newline="") as fh:
        reader = csv.reader(fh)
        next(reader)
        return {int(r[0]): r[1:] for r in reader}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory, bybit_btc_1m: Path) -> Path:
    """1600 bars of BTC and ETH: 1500 of REST history and ~100 to stream (10 s at speed 600)."""
    d = tmp_path_factory.mktemp("bars")
    write_head(bybit_btc_1m, d / "bybit_linear_BTCUSDT_1m.csv.gz", 1600)
    write_head(DATA_1M / "bybit_linear_ETHUSDT_1m.csv.gz", d / "bybit_linear_ETHUSDT_1m.csv.gz", 1600)
    return d


@pytest.fixture(scope="module")
def btc_file(data_dir: Path) -> Path:
    return data_dir / "bybit_linear_BTCUSDT_1m.csv.gz"


@pytest.fixture
def sources(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("*.csv.gz"))


@pytest.fixture
async def sim(sources: list[Path]) -> AsyncIterator[ExchangeSimulator]:
    config = SimulatorConfig(sources=sources, speed=600.0)
    async with ExchangeSimulator(config) as s:
        yield s


class WsClient:
    """A WebSocket client that collects every frame (with its arrival time) in an owned task."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.url = url
        self.kwargs = kwargs
        self.frames: list[tuple[float, str, Any]] = []  # (monotonic, raw, parsed JSON or None)
        self.closed: ConnectionClosed | None = None
        self.ended = False

    async def __aenter__(self) -> WsClient:
        self.ws: ClientConnection = await connect(self.url, **self.kwargs)
        self._task = asyncio.create_task(self._collect(), name="test-ws-collect")
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._task.cancel()
        await asyncio.wait({self._task})
        await self.ws.close()

    async def _collect(self) -> None:
        try:
            async for msg in self.ws:
                raw = msg if isinstance(msg, str) else msg.decode()
                try:
                    obj = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    obj = None
                self.frames.append((time.monotonic(), raw, obj))
        except ConnectionClosed as exc:
            self.closed = exc
        self.ended = True

    async def send(self, obj: Any) -> None:
        await self.ws.send(orjson.dumps(obj).decode())

    async def subscribe(self, *topics: str, req_id: str | None = None) -> None:
        await self.send({"op": "subscribe", "req_id": req_id or uuid.uuid4().hex[:8], "args": list(topics)})

    def replies(self, req_id: str | None = None) -> list[dict[str, Any]]:
        out = [o for _, _, o in self.frames if isinstance(o, dict) and "op" in o]
        return [o for o in out if req_id is None or o.get("req_id") == req_id]

    def has_raw(self, raw: str) -> bool:
        return any(r == raw for _, r, _ in self.frames)

    def raw(self, topic: str) -> list[str]:
        return [r for _, r, o in self.frames if isinstance(o, dict) and o.get("topic") == topic]

    def pushes(self, topic: str) -> list[dict[str, Any]]:
        return [o for _, _, o in self.frames if isinstance(o, dict) and o.get("topic") == topic]

    def confirmed(self, topic: str) -> list[dict[str, Any]]:
        return [d for o in self.pushes(topic) for d in o["data"] if d["confirm"]]

    async def reply(self, req_id: str, within_s: float = 5.0) -> dict[str, Any]:
        await eventually(lambda: bool(self.replies(req_id)), within_s, what=f"reply to {req_id}")
        return self.replies(req_id)[0]


async def rest(sim: ExchangeSimulator, path: str = "/v5/market/kline", **params: Any) -> httpx.Response:
    async with httpx.AsyncClient(base_url=sim.rest_url, timeout=5.0) as client:
        return await client.get(path, params=params)


def feed_book(book: OrderBook, frames: list[str]) -> list[ApplyResult]:
    results = []
    for raw in frames:
        msg = parse_frame(raw)
        assert isinstance(msg, BookUpdate)
        results.append(book.apply(msg))
    return results


# --- pure market model ----------------------------------------------------------------------------


def test_symbol_from_path() -> None:
    assert symbol_from_path("bybit_linear_BTCUSDT_1m.csv.gz") == "BTCUSDT"
    assert symbol_from_path(Path("/x/binance_spot_DOGEUSDT_1m_2023.csv.gz")) == "DOGEUSDT"
    assert symbol_from_path("bybit_inverse_BTCUSD_1m.csv") == "BTCUSD"
    with pytest.raises(ValueError, match="cannot tell the symbol"):
        symbol_from_path("btc_1m.csv.gz")


@pytest.fixture(scope="module")
def full_btc(bybit_btc_1m: Path) -> Any:
    return load_1m_bars(bybit_btc_1m)


def test_load_keeps_the_csv_strings(full_btc: Any, bybit_btc_1m: Path) -> None:
    rows = csv_rows(bybit_btc_1m)
    assert len(full_btc) == len(rows)
    for k in (0, 1, 777, len(full_btc) - 1):
        start, *values = full_btc.row(k)
        assert values == rows[start][:5]
    assert full_btc.price_decimals == 1
    assert full_btc.volume_decimals == 3


def test_load_rejects_bad_files(tmp_path: Path) -> None:
    bad = tmp_path / "bybit_linear_BTCUSDT_1m.csv"
    bad.write_text("open_time_ms,open,high,low,close,volume\n60000,1,2,0.5,1.5,3\n60000,1,2,0.5,1.5,3\n")
    with pytest.raises(ValueError, match=r":3: open_time_ms 60000 is not minute-aligned or not increasing"):
        load_1m_bars(bad)
    bad.write_text("open_time_ms,open,high,low,close,volume\n60000,1,2,1.2,1.5,3\n")
    with pytest.raises(ValueError, match="inconsistent OHLC"):
        load_1m_bars(bad)
    bad.write_text("time,o,h,l,c,v\n")
    with pytest.raises(ValueError, match="header must contain"):
        load_1m_bars(bad)


def manual_resample(path: Path, minutes: int) -> dict[int, tuple[str, str, str, str, Decimal]]:
    """Complete ``minutes`` buckets of a 1m CSV, by plain grouping: (open, high, low, close, volume)."""
    step = minutes * MINUTE_MS
    groups: dict[int, list[list[str]]] = {}
    for start, values in csv_rows(path).items():  # ascending, as in the file
        groups.setdefault(start // step * step, []).append(values)
    return {
        bucket: (
            vs[0][0],
            max(vs, key=lambda v: float(v[1]))[1],
            min(vs, key=lambda v: float(v[2]))[2],
            vs[-1][3],
            sum((Decimal(v[4]) for v in vs), Decimal(0)),
        )
        for bucket, vs in groups.items()
        if len(vs) == minutes
    }


@pytest.mark.parametrize("minutes", [5, 15, 60])
def test_aggregate_matches_a_manual_resample(full_btc: Any, bybit_btc_1m: Path, minutes: int) -> None:
    expected = manual_resample(bybit_btc_1m, minutes)
    agg = aggregate(full_btc, minutes)
    assert len(agg) == len(expected) > 0
    assert agg.start_ms.tolist() == list(expected)
    assert (agg.start_ms % (minutes * MINUTE_MS) == 0).all()
    for k, (o, h, lo, c, v) in enumerate(expected.values()):
        got = agg.values(k)
        assert (got.open, got.high, got.low, got.close) == (o, h, lo, c)
        assert Decimal(got.volume) == v  # an exact decimal sum, not a float one
    assert agg.high.tolist() == [float(x[1]) for x in expected.values()]


def test_aggregate_leaves_out_incomplete_buckets(tmp_path: Path) -> None:
    path = tmp_path / "bybit_linear_XUSDT_1m.csv"
    lines = ["open_time_ms,open,high,low,close,volume"]
    lines += [f"{m * MINUTE_MS},10,11,9,10.5,1.5" for m in range(3, 20) if m != 12]  # 3..4 partial, 12 missing
    path.write_text("\n".join(lines) + "\n")
    bars = load_1m_bars(path)
    agg = aggregate(bars, 5)
    assert agg.start_ms.tolist() == [5 * MINUTE_MS, 15 * MINUTE_MS]
    assert agg.values(0).volume == "7.5"
    assert agg.values(0).turnover == format(Decimal("15.7500") * 5, "f")


def test_partial_bar_walks_towards_the_real_bar(full_btc: Any) -> None:
    for i in (0, 10, 500):
        o, h, lo, c = (float(x) for x in full_btc.row(i)[1:5])
        assert intrabar_price(o, h, lo, c, 0.0) == o
        assert intrabar_price(o, h, lo, c, 1.0) == pytest.approx(c)
        assert partial_bar(full_btc, i, 1.0) == full_btc.values(i)
        prev_vol = -1.0
        for f in (0.0, 0.2, 0.4, 0.6, 0.8, 0.99):
            p = partial_bar(full_btc, i, f)
            assert p.open == full_btc.open_s[i]
            assert lo <= float(p.low) <= min(float(p.open), float(p.close))
            assert max(float(p.open), float(p.close)) <= float(p.high) <= h
            assert float(p.volume) >= prev_vol
            prev_vol = float(p.volume)


def test_synthetic_book_is_deterministic_and_its_deltas_rebuild_it() -> None:
    a = SyntheticBook(106_000.0, depth=50, seed=7, tick="0.1")
    b = SyntheticBook(106_000.0, depth=50, seed=7, tick="0.1")
    assert a.snapshot() == b.snapshot()
    assert SyntheticBook(106_000.0, seed=8, tick="0.1").snapshot() != a.snapshot()

    def update(kind: Literal["snapshot", "delta"], u: int, bids: Any, asks: Any) -> BookUpdate:
        def dec(side: list[tuple[str, str]]) -> tuple[tuple[Decimal, Decimal], ...]:
            return tuple((Decimal(p), Decimal(s)) for p, s in side)

        return BookUpdate("orderbook.50.X", "X", 50, kind, 0, u, u, dec(bids), dec(asks))

    local = OrderBook("X", 50)
    assert local.apply(update("snapshot", 1, *a.snapshot())) is ApplyResult.APPLIED
    mid = 106_000.0
    for u in range(2, 400):
        mid *= 1.0 + 0.0004 * ((u * 7919) % 11 - 5) / 5  # a deterministic wander of a few bp
        bids, asks = a.move_to(mid)
        assert bids == sorted(bids, key=lambda lv: -Decimal(lv[0]))
        assert asks == sorted(asks, key=lambda lv: Decimal(lv[0]))
        assert local.apply(update("delta", u, bids, asks)) is ApplyResult.APPLIED, local.reason
        sb, sa = a.snapshot()
        assert len(sb) == len(sa) == 50
        assert Decimal(sb[0][0]) < Decimal(sa[0][0])
        assert Decimal(sb[0][0]) <= Decimal(str(mid)) <= Decimal(sa[0][0])
        assert local.view().bids == tuple((Decimal(p), Decimal(s)) for p, s in sb)
        assert local.view().asks == tuple((Decimal(p), Decimal(s)) for p, s in sa)


def test_sim_clock_runs_at_speed() -> None:
    t = [100.0]
    clock = SimClock(1_000_000, 600.0, monotonic=lambda: t[0])
    assert clock.now_ms() == 1_000_000
    t[0] += 0.5
    assert clock.now_ms() == 1_000_000 + 300_000
    assert clock.wall_seconds_until(1_000_000 + 360_000) == pytest.approx(0.1)
    assert clock.wall_seconds_until(0) == 0.0
    with pytest.raises(ValueError, match="speed"):
        SimClock(0, 0.0)


# --- REST -----------------------------------------------------------------------------------------


async def test_rest_kline_is_newest_first_with_the_open_bar_and_limits(sim: ExchangeSimulator) -> None:
    r = await rest(sim, category="linear", symbol=BTC, interval="1")
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["retCode"] == 0
    assert body["retMsg"] == "OK"
    assert body["retExtInfo"] == {}
    assert body["result"]["symbol"] == BTC
    assert body["result"]["category"] == "linear"
    rows = body["result"]["list"]
    assert len(rows) == 200  # default limit
    starts = [int(x[0]) for x in rows]
    assert starts == sorted(starts, reverse=True)
    assert all(a - b == MINUTE_MS for a, b in itertools.pairwise(starts))
    assert starts[0] + MINUTE_MS > body["time"]  # list[0] is the still-open bar
    assert all(isinstance(v, str) for row in rows for v in row)
    assert all(len(row) == 7 for row in rows)
    # closed rows are what sim.bars() reports, exactly
    served = {b[0]: list(b[1:]) for b in sim.bars(BTC, "1")}
    assert all(row[1:6] == served[int(row[0])] for row in rows[1:])

    big = (await rest(sim, symbol=BTC, interval="1", limit=5000)).json()["result"]["list"]
    assert len(big) == 1000

    # start and end are inclusive
    s0 = starts[10]
    window = (await rest(sim, symbol=BTC, interval="1", start=s0 - 4 * MINUTE_MS, end=s0)).json()
    assert [int(x[0]) for x in window["result"]["list"]] == [s0 - k * MINUTE_MS for k in range(5)]

    five = (await rest(sim, symbol=BTC, interval="5", limit=1000)).json()["result"]["list"]
    closed5 = {b[0]: list(b[1:]) for b in sim.bars(BTC, "5")}
    assert len(closed5) >= 290
    assert all(row[1:6] == closed5[int(row[0])] for row in five if int(row[0]) in closed5)
    assert sum(int(row[0]) not in closed5 for row in five) <= 1  # only the open bar is new

    for params, msg in (
        ({"symbol": "XRPUSDT", "interval": "1"}, "params error: symbol invalid"),
        ({"symbol": "btcusdt", "interval": "1"}, "params error: symbol invalid"),
        ({"symbol": BTC, "interval": "7"}, "Invalid period!"),
        ({"symbol": BTC, "interval": "1", "limit": "x"}, None),
        ({"category": "spot", "symbol": BTC, "interval": "1"}, None),
    ):
        r = await rest(sim, **params)
        assert r.status_code == 200
        assert r.json()["retCode"] == 10001, params
        assert msg is None or r.json()["retMsg"] == msg
    assert (await rest(sim, "/v5/market/orderbook", symbol=BTC)).status_code == 404
    assert sim.rest_requests == 9  # kline requests only


async def test_rest_faults(sim: ExchangeSimulator) -> None:
    sim.fail_rest("retcode")
    sim.fail_rest("http403", count=2)
    sim.fail_rest("http500")
    r = await rest(sim, symbol=BTC, interval="1")
    assert r.status_code == 200
    body = r.json()
    assert body["retCode"] == 10016
    assert body["retMsg"] == "Service error"
    assert body["result"] == {}
    for _ in range(2):
        r = await rest(sim, symbol=BTC, interval="1")
        assert r.status_code == 403
        assert r.text == "access too frequent"
    assert (await rest(sim, symbol=BTC, interval="1")).status_code == 500
    assert (await rest(sim, symbol=BTC, interval="1")).json()["retCode"] == 0


# --- WebSocket protocol ---------------------------------------------------------------------------


async def test_acks_pongs_and_failure_strings(sim: ExchangeSimulator) -> None:
    async with WsClient(sim.ws_url) as c:
        await c.subscribe("kline.1.BTCUSDT", req_id="a")
        ack = await c.reply("a")
        assert ack["success"] is True
        assert ack["ret_msg"] == ""
        assert ack["op"] == "subscribe"
        conn_id = ack["conn_id"]
        uuid.UUID(conn_id)

        await c.send({"op": "ping", "req_id": "p1"})
        assert await c.reply("p1") == {
            "success": True,
            "ret_msg": "pong",
            "conn_id": conn_id,
            "req_id": "p1",
            "op": "ping",
        }

        for n, topic in enumerate(
            [
                "orderbook.30.BTCUSDT",  # unsupported depth
                "orderbook.500.BTCUSDT",  # offline since 2025-09-30
                "kline.1.btcusdt",  # lowercase symbol
                "kline.1.XRPUSDT",  # not in the sim
                "kline.7.BTCUSDT",
                "liquidation.BTCUSDT",
            ]
        ):
            await c.subscribe(topic, req_id=f"bad{n}")
            ack = await c.reply(f"bad{n}")
            assert ack["success"] is False
            assert ack["ret_msg"] == f"error:handler not found,topic:{topic}"
            assert ack["conn_id"] == conn_id
            assert ack["op"] == "subscribe"

        await c.subscribe("kline.1.BTCUSDT", req_id="again")
        ack = await c.reply("again")
        assert ack["success"] is False
        assert ack["ret_msg"] == "error:already subscribed,topic:kline.1.BTCUSDT"

        await c.send({"op": "auth", "req_id": "x"})
        ack = await c.reply("x")
        assert ack["success"] is False
        assert ack["ret_msg"] == "error:invalid op"
        assert ack["op"] == "auth"

        await c.ws.send("this is not JSON")
        await c.ws.send("[1,2]")
        await c.send({"op": "ping"})
        await eventually(lambda: any(r.get("ret_msg") == "pong" and r["req_id"] == "" for r in c.replies()))

        # the first subscription kept delivering through all of that
        await eventually(lambda: len(c.pushes("kline.1.BTCUSDT")) >= 2)
        await c.send({"op": "unsubscribe", "req_id": "u", "args": ["kline.1.BTCUSDT"]})
        assert (await c.reply("u"))["success"] is True
        n_after = len(c.pushes("kline.1.BTCUSDT"))
        await c.send({"op": "ping", "req_id": "p2"})
        await c.reply("p2")
        # Three bars close on the simulator clock; an unsubscribed topic stays silent through them.
        three_bars_later = sim.clock.now_ms() + 3 * MINUTE_MS
        await eventually(lambda: sim.clock.now_ms() >= three_bars_later, what="three bars on the sim clock")
        assert len(c.pushes("kline.1.BTCUSDT")) == n_after
        assert not c.ended

    logged = [(op, args, ok) for n, op, args, ok in sim.subscribe_log]
    assert logged[0] == ("subscribe", ["kline.1.BTCUSDT"], True)
    assert ("subscribe", ["kline.1.btcusdt"], False) in logged
    assert logged[-1] == ("unsubscribe", ["kline.1.BTCUSDT"], True)
    assert {n for n, *_ in sim.subscribe_log} == {1}


async def test_fail_subscribe_fails_that_topic_only(sim: ExchangeSimulator) -> None:
    sim.fail_subscribe("kline.5.BTCUSDT")
    async with WsClient(sim.ws_url) as c:
        await c.subscribe("kline.1.BTCUSDT", "kline.5.BTCUSDT", req_id="mix")
        ack = await c.reply("mix")
        assert ack["success"] is False
        assert ack["ret_msg"] == "error:handler not found,topic:kline.5.BTCUSDT"
        assert ack["req_id"] == "mix"
        assert ack["op"] == "subscribe"
        assert ack["conn_id"]
        await eventually(lambda: len(c.pushes("kline.1.BTCUSDT")) >= 8, what="kline.1 still subscribed")
        assert c.pushes("kline.5.BTCUSDT") == []
    assert sim.subscribe_log[-1] == (1, "subscribe", ["kline.1.BTCUSDT", "kline.5.BTCUSDT"], False)


# --- streams --------------------------------------------------------------------------------------


async def test_book_snapshot_then_contiguous_deltas_shared_by_all(sim: ExchangeSimulator) -> None:
    topic = "orderbook.50.BTCUSDT"
    async with WsClient(sim.ws_url) as a, WsClient(sim.ws_url) as b:
        await a.subscribe(topic, "orderbook.1.BTCUSDT", "orderbook.200.ETHUSDT")
        await eventually(lambda: len(a.pushes(topic)) >= 30)
        await b.subscribe(topic)
        until = sim.clock.now_ms() + 20 * MINUTE_MS
        book_a, book_b = OrderBook(BTC, 50), OrderBook(BTC, 50)
        seen_a = seen_b = 0
        while sim.clock.now_ms() < until:  # the books must hold up over 20 bars of market
            await asyncio.sleep(0.05)
            fa, fb = a.raw(topic), b.raw(topic)
            for r in feed_book(book_a, fa[seen_a:]) + feed_book(book_b, fb[seen_b:]):
                assert r is ApplyResult.APPLIED
            seen_a, seen_b = len(fa), len(fb)
            assert book_a.state is BookState.READY
            assert book_b.state is BookState.READY
            bid, ask = book_a.best_bid(), book_a.best_ask()
            assert bid is not None
            assert ask is not None
            assert bid[0] < ask[0]

        pa, pb = a.pushes(topic), b.pushes(topic)
        assert pa[0]["type"] == "snapshot"
        assert pb[0]["type"] == "snapshot"
        assert all(p["type"] == "delta" for p in pa[1:] + pb[1:])
        us = [p["data"]["u"] for p in pa]
        assert us == list(range(us[0], us[0] + len(us)))
        assert len(pa[0]["data"]["b"]) == len(pa[0]["data"]["a"]) == 50
        # b joined later: its snapshot carries the stream's current u and then the same deltas, byte for byte
        first_b = pb[0]["data"]["u"]
        assert first_b > us[0]
        ra = {p["data"]["u"]: raw for p, raw in zip(pa, a.raw(topic), strict=True)}
        assert all(ra[p["data"]["u"]] == raw for p, raw in zip(pb[1:], b.raw(topic)[1:], strict=True))
        assert all(p["ts"] > 0 and "seq" in p["data"] and "cts" in p for p in pa)

        # depth 1 is snapshot-only; depth 200 of a 50-level synthetic book snapshots 50 levels
        l1 = a.pushes("orderbook.1.BTCUSDT")
        assert len(l1) > 5
        assert all(p["type"] == "snapshot" for p in l1)
        assert all(len(p["data"]["b"]) == len(p["data"]["a"]) == 1 for p in l1)
        assert len(a.pushes("orderbook.200.ETHUSDT")[0]["data"]["b"]) == 50

        # unsubscribe + subscribe again: a fresh snapshot continuing the shared sequence
        await b.send({"op": "unsubscribe", "req_id": "u", "args": [topic]})
        await b.reply("u")
        n = len(b.pushes(topic))
        await b.subscribe(topic, req_id="re")
        await eventually(lambda: len(b.pushes(topic)) > n + 3)
        again = b.pushes(topic)[n:]
        assert again[0]["type"] == "snapshot"
        assert again[0]["data"]["u"] > pb[-1]["data"]["u"]
        fresh = OrderBook(BTC, 50)
        assert all(r is ApplyResult.APPLIED for r in feed_book(fresh, b.raw(topic)[n:]))


async def test_a_depth_narrower_than_the_book_is_its_top_levels(sources: list[Path]) -> None:
    t50, t200 = "orderbook.50.BTCUSDT", "orderbook.200.BTCUSDT"
    async with ExchangeSimulator(SimulatorConfig(sources=sources, book_depth=200)) as s, WsClient(s.ws_url) as c:
        await c.subscribe(t50, t200)
        await eventually(lambda: len(c.pushes(t50)) >= 40)
        await c.send({"op": "ping", "req_id": "cut"})
        await c.reply("cut")
        # one book step queues its frames for every depth without yielding, so up to the pong
        # both streams describe the same steps
        cut = next(k for k, (_, _, o) in enumerate(c.frames) if isinstance(o, dict) and o.get("req_id") == "cut")
        before = c.frames[:cut]
        b50, b200 = OrderBook(BTC, 50), OrderBook(BTC, 200)
        for book, topic in ((b50, t50), (b200, t200)):
            raws = [r for _, r, o in before if isinstance(o, dict) and o.get("topic") == topic]
            assert all(r is ApplyResult.APPLIED for r in feed_book(book, raws))
        assert len(b50.view().bids) == len(b50.view().asks) == 50
        assert len(b200.view().bids) == len(b200.view().asks) == 200
        assert b200.view().bids[:50] == b50.view().bids
        assert b200.view().asks[:50] == b50.view().asks


async def test_kline_pushes_match_the_csv_and_rest(sim: ExchangeSimulator, btc_file: Path) -> None:
    rows = csv_rows(btc_file)
    agg5 = aggregate(load_1m_bars(btc_file), 5)
    async with WsClient(sim.ws_url) as c:
        await c.subscribe("kline.1.BTCUSDT", "kline.5.BTCUSDT", "kline.60.BTCUSDT")
        await eventually(lambda: len(c.confirmed("kline.5.BTCUSDT")) >= 2, within=8, what="two 5m closes")

        for raw in c.raw("kline.1.BTCUSDT") + c.raw("kline.5.BTCUSDT"):
            assert isinstance(parse_frame(raw), KlineUpdate)
        closed = c.confirmed("kline.1.BTCUSDT")
        assert len(closed) >= 5
        starts = [d["start"] for d in closed]
        assert all(b - a == MINUTE_MS for a, b in itertools.pairwise(starts))
        for d in closed:
            assert [d["open"], d["high"], d["low"], d["close"], d["volume"]] == rows[d["start"]][:5]
            assert d["end"] == d["start"] + MINUTE_MS - 1
            assert d["interval"] == "1"
            assert Decimal(d["turnover"]) == (Decimal(d["volume"]) * Decimal(d["close"])).quantize(Decimal("0.0001"))

        # per minute: 3 confirm=false updates then the close; the next bar opens right after it
        pushes = [o["data"][0] for o in c.pushes("kline.1.BTCUSDT")]
        ts = [o["ts"] for o in c.pushes("kline.1.BTCUSDT")]
        for k, d in enumerate(pushes[:-1]):
            if d["confirm"]:
                nxt = pushes[k + 1]
                assert not nxt["confirm"]
                assert nxt["start"] == d["start"] + MINUTE_MS
                assert ts[k] == ts[k + 1] == d["start"] + MINUTE_MS
                opening = {float(nxt[f]) for f in ("open", "high", "low", "close")}
                assert opening == {float(rows[nxt["start"]][0])}
                assert float(nxt["volume"]) == 0
                assert [p["confirm"] for p in pushes[k - 3 : k]] == [False] * 3 or k < 3
        for d in pushes:
            if not d["confirm"]:
                o, h, lo, _ = (float(x) for x in rows[d["start"]][:4])
                assert float(d["open"]) == o
                assert lo <= float(d["low"])
                assert float(d["high"]) <= h

        # the 5m closes are the aggregates, and REST serves the very same strings
        for d in c.confirmed("kline.5.BTCUSDT"):
            i5 = agg5.index_of(d["start"])
            assert i5 is not None
            assert [d["open"], d["high"], d["low"], d["close"], d["volume"], d["turnover"]] == list(agg5.values(i5))
        for push in c.pushes("kline.60.BTCUSDT"):
            h1 = push["data"][0]
            assert h1["start"] % (60 * MINUTE_MS) == 0
            assert h1["end"] == h1["start"] + 60 * MINUTE_MS - 1
            assert h1["open"] == rows[h1["start"]][0]

        for interval, topic in (("1", "kline.1.BTCUSDT"), ("5", "kline.5.BTCUSDT")):
            body = (await rest(sim, symbol=BTC, interval=interval, limit=50)).json()
            by_start = {int(r[0]): r[1:] for r in body["result"]["list"][1:]}
            for d in c.confirmed(topic):
                if d["start"] in by_start:
                    assert by_start[d["start"]] == [
                        d[k] for k in ("open", "high", "low", "close", "volume", "turnover")
                    ]


# --- faults ---------------------------------------------------------------------------------------


async def test_drop_connections_aborts_without_a_close_frame(sim: ExchangeSimulator) -> None:
    async with WsClient(sim.ws_url) as c:
        await c.subscribe("kline.1.BTCUSDT", req_id="s")
        await c.reply("s")
        sim.drop_connections()
        await eventually(lambda: c.ended, within=3)
        assert isinstance(c.closed, ConnectionClosedError)
        assert c.closed.rcvd is None
        assert c.ws.close_code == 1006
    async with WsClient(sim.ws_url) as c2:
        await c2.subscribe("kline.1.BTCUSDT", req_id="s")
        assert (await c2.reply("s"))["success"] is True
    assert sim.connection_count == 2


async def test_stall_sends_nothing_then_resumes(sim: ExchangeSimulator) -> None:
    async with WsClient(sim.ws_url) as c:
        await c.subscribe("kline.1.BTCUSDT")
        await eventually(lambda: len(c.pushes("kline.1.BTCUSDT")) >= 4)
        last_ts = c.pushes("kline.1.BTCUSDT")[-1]["ts"]
        t0 = time.monotonic()
        sim.stall(1.0)
        await c.send({"op": "ping", "req_id": "during"})
        pong = await c.reply("during", within_s=3)
        assert pong["ret_msg"] == "pong"
        pong_at = next(t for t, _, o in c.frames if isinstance(o, dict) and o.get("req_id") == "during")
        assert pong_at - t0 >= 0.95  # answered only when the stall ended
        silent = [t for t, _, _ in c.frames if t0 + 0.05 < t < t0 + 0.95]
        assert silent == []
        assert not c.ended
        await eventually(lambda: c.confirmed("kline.1.BTCUSDT")[-1]["start"] > last_ts + 400_000)
        # the market kept running: the bars that fell due during the stall are lost
        starts = [d["start"] for d in c.confirmed("kline.1.BTCUSDT")]
        assert any(b - a > MINUTE_MS for a, b in itertools.pairwise(starts))


async def test_skip_u_makes_a_gap(sim: ExchangeSimulator) -> None:
    topic = "orderbook.50.BTCUSDT"
    async with WsClient(sim.ws_url) as c:
        await c.subscribe(topic)
        await eventually(lambda: len(c.pushes(topic)) >= 5)
        sim.skip_u(BTC)
        n = len(c.pushes(topic))
        await eventually(lambda: len(c.pushes(topic)) >= n + 3)
        us = [p["data"]["u"] for p in c.pushes(topic)]
        jumps = [b - a for a, b in itertools.pairwise(us)]
        assert jumps.count(2) == 1
        assert set(jumps) == {1, 2}
        book = OrderBook(BTC, 50)
        assert ApplyResult.INVALIDATED in feed_book(book, c.raw(topic))
        assert book.state is BookState.INVALID
        assert "u gap" in book.reason
    with pytest.raises(ValueError, match="unknown symbol"):
        sim.skip_u("XRPUSDT")


async def test_send_malformed_reaches_every_connection(sim: ExchangeSimulator) -> None:
    payload = '{"topic":"orderbook.50.BTCUSDT","type":"delta","ts":1,"data":{}}'
    default = '{"topic":"kline.1.BTCUSDT","data":'
    async with WsClient(sim.ws_url) as a, WsClient(sim.ws_url) as b:
        await a.subscribe("kline.1.BTCUSDT", req_id="s")
        await a.reply("s")
        await b.send({"op": "ping", "req_id": "p"})
        await b.reply("p")
        sim.send_malformed()
        sim.send_malformed(payload)
        for c in (a, b):
            await eventually(functools.partial(c.has_raw, payload))
            raws = [r for _, r, _ in c.frames]
            assert raws.count(default) == 1
            assert raws.index(default) < raws.index(payload)
        for bad in (default, payload):
            with pytest.raises(FrameError):
                parse_frame(bad)
        n = len(a.pushes("kline.1.BTCUSDT"))
        await eventually(lambda: len(a.pushes("kline.1.BTCUSDT")) > n, what="the stream continues")
        assert not a.ended
        assert not b.ended


# --- pacing ---------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def short_replay(
    src: Path, tmp: Path, bars: int, speed: float, start_offset_bars: int
) -> AsyncIterator[tuple[ExchangeSimulator, WsClient, dict[int, list[str]]]]:
    """The first ``bars`` rows of ``src`` replayed at ``speed``, a client on BTC's 1m klines and book."""
    head = write_head(src, tmp / "bybit_linear_BTCUSDT_1m.csv.gz", bars)
    config = SimulatorConfig(sources=[head], speed=speed, start_offset_bars=start_offset_bars)
    async with ExchangeSimulator(config) as s, WsClient(s.ws_url) as c:
        await c.subscribe("kline.1.BTCUSDT", "orderbook.50.BTCUSDT", req_id="s")
        await c.reply("s")
        yield s, c, csv_rows(head)


async def test_end_of_data_sets_finished_and_keeps_connections(tmp_path: Path, bybit_btc_1m: Path) -> None:
    async with short_replay(bybit_btc_1m, tmp_path, 60, speed=3000.0, start_offset_bars=40) as (s, c, rows):
        await asyncio.wait_for(s.finished.wait(), timeout=5)
        await c.send({"op": "ping", "req_id": "flush"})
        await c.reply("flush")  # everything queued before it has arrived
        last = max(rows)
        assert c.confirmed("kline.1.BTCUSDT")[-1]["start"] == last
        assert c.confirmed("kline.1.BTCUSDT")[-1]["close"] == rows[last][3]
        n = len(c.frames)
        await c.send({"op": "ping", "req_id": "after"})
        await c.reply("after")
        assert len(c.frames) == n + 1
        assert not c.ended
        assert s.bars(BTC, "1")[-1][0] == last


async def test_extreme_speed_catches_up_without_starving_the_loop(tmp_path: Path, bybit_btc_1m: Path) -> None:
    async with short_replay(bybit_btc_1m, tmp_path, 6000, speed=1e6, start_offset_bars=100) as (s, c, rows):
        await c.send({"op": "ping", "req_id": "p"})
        await c.reply("p")
        pong_at = next(i for i, (_, _, o) in enumerate(c.frames) if isinstance(o, dict) and o.get("req_id") == "p")
        await asyncio.wait_for(s.finished.wait(), timeout=15)
        await eventually(
            lambda: bool(c.confirmed("kline.1.BTCUSDT")) and c.confirmed("kline.1.BTCUSDT")[-1]["start"] == max(rows)
        )
        # every bar still closes on the stream, contiguously, even when partial pushes are skipped
        starts = [d["start"] for d in c.confirmed("kline.1.BTCUSDT")]
        assert starts == list(range(starts[0], max(rows) + 1, MINUTE_MS))
        assert len(starts) > 5000
        us = [p["data"]["u"] for p in c.pushes("orderbook.50.BTCUSDT")]
        assert us == list(range(us[0], us[0] + len(us)))
        # The ping was answered mid catch-up, not after it: bars kept closing after the pong.
        closes_after_pong = [
            o for _, _, o in c.frames[pong_at:] if isinstance(o, dict) and o.get("topic") == "kline.1.BTCUSDT"
        ]
        assert len(closes_after_pong) > 100


async def test_a_client_that_stops_reading_is_closed_with_1008(tmp_path: Path, bybit_btc_1m: Path) -> None:
    src = write_head(bybit_btc_1m, tmp_path / "bybit_linear_BTCUSDT_1m.csv.gz", 6000)
    config = SimulatorConfig(sources=[src], speed=2e4, start_offset_bars=100, send_queue_frames=50)
    async with ExchangeSimulator(config) as s:
        ws = await connect(s.ws_url, max_queue=1, close_timeout=1)
        try:
            topics = [f"kline.{i}.BTCUSDT" for i in (1, 5, 15, 60)] + [f"orderbook.{d}.BTCUSDT" for d in (1, 50, 200)]
            await ws.send(orjson.dumps({"op": "subscribe", "args": topics}).decode())
            # never read: the kernel buffers fill, then the simulator's bounded queue
            await eventually(lambda: s.slow_disconnects == 1, within=10, what="slow client dropped")
        finally:
            await ws.close()
        async with WsClient(s.ws_url) as c:  # the market and the server carry on
            await c.subscribe("kline.1.BTCUSDT")
            await eventually(lambda: len(c.pushes("kline.1.BTCUSDT")) >= 2)


# --- record and replay ----------------------------------------------------------------------------


async def test_record_then_replay_round_trip(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "rec.jsonl"
    topics = ["kline.1.BTCUSDT", "kline.5.BTCUSDT", "orderbook.50.BTCUSDT"]
    config = SimulatorConfig(sources=[data_dir / "bybit_linear_BTCUSDT_1m.csv.gz"], speed=600.0)
    async with ExchangeSimulator(config) as live:
        rec = asyncio.create_task(
            record(live.ws_url, topics, out, duration_s=2.0, initial_backoff_s=0.05), name="test-record"
        )
        await eventually(lambda: len(live.subscribe_log) == 1)
        t_sub = live.clock.now_ms()
        await eventually(lambda: live.clock.now_ms() > t_sub + 6 * MINUTE_MS)  # some stream before the drop
        live.drop_connections()
        await eventually(lambda: live.connection_count == 2, within=3, what="recorder reconnected")
        written = await rec
        live_rest = (await rest(live, symbol=BTC, interval="1", limit=100)).json()["result"]["list"]

    lines = [orjson.loads(line) for line in out.read_bytes().splitlines()]
    assert written == len(lines) > 50
    assert all(set(x) == {"recv_ms", "frame"} and isinstance(x["frame"], str) for x in lines)
    frames = [orjson.loads(x["frame"]) for x in lines]
    acks = [f for f in frames if f.get("op") == "subscribe"]
    assert len(acks) == 2
    assert all(a["success"] for a in acks)
    assert len({a["req_id"] for a in acks}) == 2
    recorded_k1 = [x["frame"] for x, f in zip(lines, frames, strict=True) if f.get("topic") == "kline.1.BTCUSDT"]
    recorded_closes = [d for f in frames if f.get("topic") == "kline.1.BTCUSDT" for d in f["data"] if d["confirm"]]
    assert len(recorded_closes) >= 5

    book_topic = "orderbook.50.BTCUSDT"
    async with ExchangeSimulator(SimulatorConfig(recorded=out, speed=600.0)) as replay:
        assert replay.symbols == [BTC]
        async with WsClient(replay.ws_url) as c, WsClient(replay.ws_url) as late:
            await c.subscribe("kline.1.BTCUSDT", book_topic, req_id="s")
            assert (await c.reply("s"))["success"] is True
            # a second client joins mid-replay: it gets a snapshot built from the recording's book
            await eventually(lambda: len(c.pushes(book_topic)) >= 20)
            await late.subscribe(book_topic, req_id="late")
            assert (await late.reply("late"))["success"] is True
            await asyncio.wait_for(replay.finished.wait(), timeout=6)
            await c.send({"op": "ping", "req_id": "flush"})
            await late.send({"op": "ping", "req_id": "flush"})
            await c.reply("flush")
            await late.reply("flush")

            got = c.raw("kline.1.BTCUSDT")
            # the client joined a moment after the replay began: what it got is the recording's tail, verbatim
            assert len(got) >= len(recorded_k1) - 3
            assert got == recorded_k1[len(recorded_k1) - len(got) :]
            book, late_book = OrderBook(BTC, 50), OrderBook(BTC, 50)
            assert ApplyResult.INVALIDATED not in feed_book(book, c.raw(book_topic))
            assert late.pushes(book_topic)[0]["type"] == "snapshot"
            assert all(r is ApplyResult.APPLIED for r in feed_book(late_book, late.raw(book_topic)))
            assert book.ready
            assert late_book.view() == book.view()
            body = (await rest(replay, symbol=BTC, interval="1", limit=100)).json()
            assert body["retCode"] == 0
            replay_rows = {r[0]: r for r in body["result"]["list"]}
            live_rows = {r[0]: r for r in live_rest}
            for d in recorded_closes:
                assert replay_rows[str(d["start"])] == live_rows[str(d["start"])]
            assert [b[0] for b in replay.bars(BTC, "1")] == sorted({d["start"] for d in recorded_closes})


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="sources"):
        ExchangeSimulator(SimulatorConfig())
    with pytest.raises(ValueError, match="speed"):
        ExchangeSimulator(SimulatorConfig(sources=[Path("bybit_linear_BTCUSDT_1m.csv.gz")], speed=0))
