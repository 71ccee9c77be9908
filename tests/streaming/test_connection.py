"""FeedConnection's receive path against servers on 127.0.0.1:0 that ack the subscribes and then play
a script: a bare ``websockets`` server, and a raw one that writes the frames' bytes itself (cut
anywhere, or frames no library would send). Frames reach the handler whole and in the order sent,
whichever way the connection received them (split by the connection itself and delivered from its
receive callback, or parsed by the library and queued for ``recv()``); what the connection does not
split, the library handles as the protocol says; a handler's bug costs one frame, not the connection."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import orjson
import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.frames import Close, Frame, Opcode
from websockets.http11 import Request
from websockets.protocol import State
from websockets.server import ServerProtocol

from streaming.connection import _DELIVER_PER_CALLBACK, FeedConnection
from streaming.errors import FrameError
from streaming.frames import BookUpdate, KlineUpdate
from streaming.metrics import IngestMetrics
from streaming.supervisor import TaskSupervisor
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(30)

TOPIC = "orderbook.50.BTCUSDT"


def snapshot(u: int, levels: int = 1) -> str:
    bids = [[f"{100.5 - i / 100:.2f}", "1"] for i in range(levels)]
    asks = [[f"{101 + i / 100:.2f}", "2"] for i in range(levels)]
    data = {"s": "BTCUSDT", "b": bids, "a": asks, "u": u, "seq": u}
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


# -- the raw server: frames written byte for byte -------------------------------------------------


def wire(payload: bytes, head: int = 0x81, *, mask: bool = False, length: int | None = None) -> bytes:
    """One frame as a server would write it; ``head`` is its first byte (FIN, RSV bits, opcode),
    ``length`` what the header claims (default: the payload's)."""
    n = len(payload) if length is None else length
    masked = 0x80 if mask else 0
    if n < 126:
        header = bytes([head, masked | n])
    elif n < 1 << 16:
        header = bytes([head, masked | 126]) + n.to_bytes(2, "big")
    else:
        header = bytes([head, masked | 127]) + n.to_bytes(8, "big")
    if mask:
        key = b"\x01\x02\x03\x04"
        return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return header + payload


RawScript = Callable[[asyncio.StreamWriter], Any]


class RawExchange:
    """A server that does the handshake and reads the client's frames with the library's sans-I/O
    protocol, acks every subscribe, and on the first connection plays ``script`` with raw writes."""

    def __init__(self) -> None:
        self.script: RawScript | None = None
        self.after_handshake = b""  # written in the same segment as the handshake response
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.client_frames: list[Frame] = []
        self.url = ""

    def close_codes(self) -> list[int]:
        return [Close.parse(f.data).code for f in self.client_frames if f.opcode is Opcode.CLOSE]

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        first = self.connections == 1
        proto = ServerProtocol()

        def send(extra: bytes = b"") -> None:
            for chunk in proto.data_to_send():
                if chunk:
                    writer.write(chunk)
                else:
                    writer.close()  # the protocol's end of the TCP stream
            if extra:
                writer.write(extra)

        try:
            while data := await reader.read(65536):
                proto.receive_data(data)
                for event in proto.events_received():
                    if isinstance(event, Request):
                        proto.send_response(proto.accept(event))
                        send(self.after_handshake if first else b"")
                        continue
                    assert isinstance(event, Frame)
                    self.client_frames.append(event)
                    if event.opcode is not Opcode.TEXT:
                        continue
                    msg = orjson.loads(event.data)
                    ack = {"success": True, "ret_msg": "", "conn_id": "c1", "req_id": msg["req_id"], "op": msg["op"]}
                    proto.send_text(orjson.dumps(ack))
                    send()
                    if first and msg["op"] == "subscribe" and TOPIC in msg["args"] and self.script is not None:
                        await self.script(writer)
                send()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def raw_exchange() -> AsyncIterator[RawExchange]:
    exchange = RawExchange()
    server = await asyncio.start_server(exchange.handle, "127.0.0.1", 0)
    exchange.url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield exchange
    finally:
        server.close()
        for writer in exchange.writers:
            writer.close()
        await server.wait_closed()


async def trickle(writer: asyncio.StreamWriter, data: bytes, sizes: Sequence[int]) -> None:
    """Write ``data`` in chunks of the sizes given, over and over, each its own segment."""
    pos, i = 0, 0
    while pos < len(data):
        writer.write(data[pos : pos + sizes[i % len(sizes)]])
        await writer.drain()
        await asyncio.sleep(0.001)
        pos += sizes[i % len(sizes)]
        i += 1


async def test_frames_cut_anywhere_arrive_whole_and_in_order(
    raw_exchange: RawExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """Headers and payloads split across reads, every length encoding (7-bit, 16-bit, 64-bit), a
    binary message, and a ping the library answers (with the same payload) in between."""
    big = snapshot(3, levels=3000).encode()
    assert len(big) > 1 << 16
    stream = b"".join(
        [
            wire(b"{not json"),
            wire(snapshot(1).encode()),
            wire(snapshot(2).encode(), 0x82),
            wire(b"are you there", 0x89),
            wire(big),
            wire(snapshot(4).encode()),
        ]
    )

    async def script(writer: asyncio.StreamWriter) -> None:
        await trickle(writer, stream, (1, 2, 3, 5, 8, 13, 4096, 700))

    raw_exchange.script = script
    handler = Recorder()
    conn, _ = await run_feed(raw_exchange.url, handler, lambda: len(handler.received) == 4)
    assert handler.received == [("snapshot", u) for u in (1, 2, 3, 4)]
    assert len(handler.errors) == 1 and "not JSON" in str(handler.errors[0])
    pongs = [f.data for f in raw_exchange.client_frames if f.opcode is Opcode.PONG]
    assert pongs == [b"are you there"]
    assert conn.connection_number == 1
    assert not [r for r in caplog.records if FALLBACK in r.message]


@pytest.mark.parametrize(
    ("frame", "code", "why"),
    [
        pytest.param(wire(snapshot(9).encode(), mask=True), 1002, "a masked frame", id="masked"),
        pytest.param(wire(snapshot(9).encode(), 0xC1), 1002, "a frame with first byte 0xc1", id="rsv1"),
        pytest.param(wire(snapshot(9).encode(), 0x83), 1002, "a frame with first byte 0x83", id="reserved-opcode"),
        pytest.param(wire(b"", length=2**22 + 1), 1009, "a message over max_size", id="over-max-size"),
        pytest.param(wire(Close(4000, "bye").serialize(), 0x88), 4000, None, id="close"),
    ],
)
async def test_a_frame_the_connection_does_not_split_is_the_librarys(
    raw_exchange: RawExchange, caplog: pytest.LogCaptureFixture, frame: bytes, code: int, why: str | None
) -> None:
    """It fails the connection with the protocol's close code (or answers a close), nothing after it
    is delivered, and the feed reconnects."""

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(wire(snapshot(1).encode()) + frame + wire(snapshot(2).encode()))
        await writer.drain()

    raw_exchange.script = script
    handler = Recorder()
    _, metrics = await run_feed(raw_exchange.url, handler, lambda: raw_exchange.connections == 2)
    assert handler.received == [("snapshot", 1)]
    assert raw_exchange.close_codes()[:1] == [code]
    fallbacks = [r.message for r in caplog.records if FALLBACK in r.message]
    assert fallbacks == ([f"{why}: this connection's frames {FALLBACK}"] if why else [])
    reason = "server_closed" if why is None else "connection_lost"
    assert metrics.registry.get_sample_value("candlecast_ingest_reconnects_total", {"reason": reason}) == 1.0


async def test_frames_before_the_feed_is_ready_go_through_recv_in_order(
    raw_exchange: RawExchange, caplog: pytest.LogCaptureFixture
) -> None:
    """A frame in the same segment as the handshake response arrives before the connection has a
    ``deliver``: the library queues it for ``recv()``, and every later frame goes the same way."""
    raw_exchange.after_handshake = wire(snapshot(1).encode())

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(wire(snapshot(2).encode()) + wire(snapshot(3).encode()))
        await writer.drain()

    raw_exchange.script = script
    handler = Recorder()
    conn, _ = await run_feed(raw_exchange.url, handler, lambda: len(handler.received) == 3)
    assert handler.received == [("snapshot", u) for u in (1, 2, 3)]
    assert conn.connection_number == 1
    assert [r.message for r in caplog.records if FALLBACK in r.message] == [
        f"a data frame before the feed was ready: this connection's frames {FALLBACK}"
    ]


@pytest.mark.parametrize("end", ["fin", "reset"])
async def test_a_stream_that_ends_inside_a_frame_loses_only_that_frame(raw_exchange: RawExchange, end: str) -> None:
    async def script(writer: asyncio.StreamWriter) -> None:
        cut = wire(snapshot(2, levels=400).encode())  # long enough to be collected read by read
        writer.write(wire(snapshot(1).encode()) + cut[: len(cut) // 2])
        await writer.drain()
        await asyncio.sleep(0.05)
        if end == "reset":  # no FIN: the peer sees ECONNRESET
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    raw_exchange.script = script
    handler = Recorder()
    _, metrics = await run_feed(raw_exchange.url, handler, lambda: raw_exchange.connections == 2)
    assert handler.received == [("snapshot", 1)] and handler.errors == []
    assert metrics.registry.get_sample_value("candlecast_ingest_reconnects_total", {"reason": "connection_lost"}) == 1.0


@pytest.mark.parametrize("tail", ["fragment", "close"])
async def test_a_hand_over_after_a_full_slice_keeps_reading(raw_exchange: RawExchange, tail: str) -> None:
    """A slice's budget is spent (reading paused), and the frame the connection hands to the library
    comes in the slice after: reading resumes, so a later read still arrives (or the close completes)."""
    n = _DELIVER_PER_CALLBACK + 44
    frames = b"".join(wire(snapshot(u).encode()) for u in range(1, n + 1))
    last = snapshot(n + 1).encode()
    handed = (
        wire(last[:40], 0x01) + wire(last[40:], 0x80) if tail == "fragment" else wire(Close(4000, "").serialize(), 0x88)
    )

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(frames + handed)
        await writer.drain()
        await asyncio.sleep(0.2)
        writer.write(wire(snapshot(n + 2).encode()))  # a later read
        await writer.drain()

    raw_exchange.script = script
    handler = Recorder()
    if tail == "fragment":
        await run_feed(raw_exchange.url, handler, lambda: len(handler.received) == n + 2)
        assert handler.received == [("snapshot", u) for u in range(1, n + 3)]
    else:
        await run_feed(raw_exchange.url, handler, lambda: raw_exchange.connections == 2)
        assert handler.received == [("snapshot", u) for u in range(1, n + 1)]
        assert raw_exchange.close_codes()[:1] == [4000]


async def test_nothing_is_handed_on_after_the_connection_is_lost(raw_exchange: RawExchange) -> None:
    """The transport is aborted between two slices (as the watchdog does): the frames still waiting
    are not delivered on the closed connection, and a ping among them raises nothing in the loop."""
    total = 6 * _DELIVER_PER_CALLBACK
    frames = b"".join(
        wire(snapshot(u).encode()) + (wire(b"hi", 0x89) if u % 50 == 0 else b"") for u in range(1, total + 1)
    )
    late: list[int] = []
    loop_errors: list[object] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _, context: loop_errors.append(context.get("exception")))

    class Aborting(Recorder):
        def on_message(self, conn: FeedConnection, msg: BookUpdate | KlineUpdate, recv_wall: float) -> None:
            ws = conn._ws
            assert ws is not None and isinstance(msg, BookUpdate)
            if ws.protocol.state is State.CLOSED:
                late.append(msg.u)
            if msg.u == _DELIVER_PER_CALLBACK + 5:
                loop.call_soon(ws.transport.abort)
            super().on_message(conn, msg, recv_wall)

    async def script(writer: asyncio.StreamWriter) -> None:
        writer.write(frames)
        await writer.drain()

    raw_exchange.script = script
    handler = Aborting()
    try:
        await run_feed(raw_exchange.url, handler, lambda: raw_exchange.connections == 2)
        await asyncio.sleep(0.1)
    finally:
        loop.set_exception_handler(None)
    assert late == [] and loop_errors == []
    assert len(handler.received) < total
