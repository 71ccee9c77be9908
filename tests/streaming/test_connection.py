"""FeedConnection's receive path against a bare ``websockets`` server on 127.0.0.1:0 that acks the
subscribes and then plays a script: frames reach the handler in the order sent, whichever way the
connection received them (delivered from its receive callback, or queued for ``recv()``), and a
handler's bug costs one frame, not the connection."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve

from streaming.connection import _DELIVER_PER_CALLBACK, FeedConnection
from streaming.errors import FrameError
from streaming.frames import BookUpdate, KlineUpdate
from streaming.metrics import IngestMetrics
from streaming.supervisor import TaskSupervisor
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(30)

TOPIC = "orderbook.50.BTCUSDT"


def snapshot(u: int) -> str:
    data = {"s": "BTCUSDT", "b": [["100.5", "1"]], "a": [["101", "2"]], "u": u, "seq": u}
    return orjson.dumps({"topic": TOPIC, "type": "snapshot", "ts": 1_700_000_000_000 + u, "data": data}).decode()


Script = Callable[[ServerConnection], Any]  # what the server sends once every topic is acked


@pytest.fixture
async def exchange() -> AsyncIterator[Callable[[Script], str]]:
    """``exchange(script)``: the URL of a server that acks every subscribe, then runs ``script``."""
    scripts: list[Script] = []

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = orjson.loads(raw)
            ack = {"success": True, "ret_msg": "", "conn_id": "c1", "req_id": msg["req_id"], "op": msg["op"]}
            await ws.send(orjson.dumps(ack).decode())
            if msg["op"] == "subscribe" and TOPIC in msg["args"]:
                await scripts[0](ws)

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]

        def start(script: Script) -> str:
            scripts.append(script)
            return f"ws://127.0.0.1:{port}"

        yield start


FALLBACK = "go through recv() from now on"


class Recorder:
    """A FeedHandler that keeps what it is given; ``fail_on`` makes it raise for that book ``u``,
    ``stall_on`` makes it hold the loop a moment there (so the socket fills behind it)."""

    def __init__(self, fail_on: int | None = None, stall_on: int | None = None) -> None:
        self.fail_on = fail_on
        self.stall_on = stall_on
        self.received: list[tuple[str, int]] = []
        self.connected = 0
        self.errors: list[FrameError] = []

    def on_connected(self, conn: FeedConnection) -> None:
        self.connected += 1

    def on_message(self, conn: FeedConnection, msg: BookUpdate | KlineUpdate, recv_wall: float) -> None:
        assert isinstance(msg, BookUpdate)
        if msg.u == self.fail_on:
            raise RuntimeError("a bug in the handler")
        if msg.u == self.stall_on:
            time.sleep(0.3)
        self.received.append((msg.kind, msg.u))

    def on_frame_error(self, conn: FeedConnection, raw: str | bytes, exc: FrameError) -> None:
        self.errors.append(exc)

    def on_subscribed(self, conn: FeedConnection, topics: Sequence[str]) -> None:
        pass

    def on_subscribe_failed(self, conn: FeedConnection, topics: Sequence[str], ret_msg: str) -> None:
        pass

    def on_disconnected(self, conn: FeedConnection, reason: str) -> None:
        pass


async def run_feed(url: str, handler: Recorder, until: Callable[[], bool]) -> tuple[FeedConnection, IngestMetrics]:
    metrics = IngestMetrics()
    conn = FeedConnection("ws0", url, [TOPIC], handler, metrics, silence_s=lambda topic: 60.0)
    tasks = TaskSupervisor("test-connection")
    tasks.spawn(conn.run(), "test-feed")
    try:
        await eventually(until, 10.0, what="the script's frames to be handled")
    finally:
        await tasks.cancel_all(5.0)
    return conn, metrics


async def test_frames_keep_their_order_when_a_fragmented_message_is_among_them(
    exchange: Callable[[Script], str], caplog: pytest.LogCaptureFixture
) -> None:
    """Whole messages are handled in the connection's receive callback; a fragmented one goes through
    ``recv()``, and every frame after it too, or the one after it would overtake it."""

    async def script(ws: ServerConnection) -> None:
        await ws.send(snapshot(1))
        frame = snapshot(2)
        await ws.send([frame[:40], frame[40:]])  # one message in two frames
        await ws.send(snapshot(3))
        await ws.send(snapshot(4).encode())  # binary: a whole message too
        await ws.send("{not json")
        await ws.send(snapshot(5))

    handler = Recorder()
    conn, _ = await run_feed(exchange(script), handler, lambda: len(handler.received) == 5)
    assert handler.received == [("snapshot", u) for u in (1, 2, 3, 4, 5)]
    assert len(handler.errors) == 1 and "not JSON" in str(handler.errors[0])
    assert conn.connection_number == 1
    assert [r.message for r in caplog.records if FALLBACK in r.message] == [
        f"a fragmented message: this connection's frames {FALLBACK}"
    ]


async def test_a_handler_that_raises_costs_one_frame_not_the_connection(
    exchange: Callable[[Script], str], caplog: pytest.LogCaptureFixture
) -> None:
    async def script(ws: ServerConnection) -> None:
        for u in (1, 2, 3):
            await ws.send(snapshot(u))

    handler = Recorder(fail_on=2)
    conn, metrics = await run_feed(exchange(script), handler, lambda: len(handler.received) == 2)
    assert handler.received == [("snapshot", 1), ("snapshot", 3)]
    assert conn.connection_number == 1 and handler.connected == 1  # never reconnected
    errors = metrics.registry.get_sample_value("candlecast_ingest_messages_total", {"type": "handler_error"})
    assert errors == 1.0
    assert not [r for r in caplog.records if FALLBACK in r.message]  # every frame delivered by the callback


async def test_a_backlog_is_handled_a_slice_per_loop_turn(exchange: Callable[[Script], str]) -> None:
    """One socket read can hold a thousand frames when the feed is behind: the connection hands on at
    most ``_DELIVER_PER_CALLBACK`` of them before the event loop runs anything else, and keeps their order."""
    total = 3000

    async def script(ws: ServerConnection) -> None:
        for u in range(1, total + 1):
            await ws.send(snapshot(u))

    handler = Recorder(stall_on=1)  # the rest of the burst piles up in the socket meanwhile
    per_turn: list[int] = []

    async def probe() -> None:
        seen = 0
        while True:
            await asyncio.sleep(0)
            per_turn.append(len(handler.received) - seen)
            seen = len(handler.received)

    prober = asyncio.create_task(probe())
    try:
        await run_feed(exchange(script), handler, lambda: len(handler.received) == total)
    finally:
        prober.cancel()
    assert handler.received == [("snapshot", u) for u in range(1, total + 1)]
    assert max(per_turn) <= _DELIVER_PER_CALLBACK
    assert sum(n == _DELIVER_PER_CALLBACK for n in per_turn) >= 2  # a backlog did build up, and was sliced
