"""The fan-out's wire path (:mod:`service.ws_wire`) on a real uvicorn over real loopback sockets: the
frame it writes is the one the library would have sent, and it writes only while the connection is
plainly open and its transport not paused — otherwise it declines and writes nothing."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import uvicorn
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import State
from websockets.server import ServerProtocol

from service.server import ApiServer
from service.ws_wire import WIRE, WireProtocol, WireWrite, text_frame, wire_write
from tests.helpers import eventually
from tests.service.kit import ws_connect

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65_535, 65_536, 200_000])
def test_a_text_frame_is_what_the_library_sends_for_that_text(size: int) -> None:
    text = ("é" * size)[: max(0, size // 2)] + "x" * (size - size // 2)
    protocol = ServerProtocol()
    protocol.state = State.OPEN
    protocol.send_text(text.encode())
    assert text_frame(text.encode()) == b"".join(protocol.data_to_send())


def test_only_a_well_formed_extension_is_taken_for_a_write() -> None:
    def write(frame: bytes) -> bool:
        return True

    assert wire_write({"type": "websocket", "extensions": {WIRE: {"write": write}}}) is write
    for scope in (
        {"type": "websocket"},
        {"type": "websocket", "extensions": None},
        {"type": "websocket", "extensions": {"websocket.http.response": {}}},
        {"type": "websocket", "extensions": {WIRE: None}},
        {"type": "websocket", "extensions": {WIRE: {"write": "not callable"}}},
        "not a scope",
    ):
        assert wire_write(scope) is None


class _App:
    """Accepts one WebSocket at a time and keeps its ``write``. On "close" it closes (1000) and tries a
    write at once after sending the close (``after_close``: whether it wrote). On "send" it sends "A"
    through ASGI while the transport is paused, lets the transport resume and, before that send has
    run on, tries to write "B" (``during_send``)."""

    def __init__(self) -> None:
        self.write: WireWrite | None = None
        self.after_close: bool | None = None
        self.during_send: bool | None = None
        self.accepted = asyncio.Event()
        self.closed = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert (await receive())["type"] == "websocket.connect"
        await send({"type": "websocket.accept"})
        self.write = wire_write(scope)
        self.accepted.set()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") == "send" and self.write is not None:
                protocol = self.write.__self__  # type: ignore[attr-defined]
                protocol.pause_writing()  # as the transport does past its high-water mark
                sending = asyncio.ensure_future(send({"type": "websocket.send", "text": "A"}))
                await asyncio.sleep(0)  # the send now waits for the transport to drain
                protocol.resume_writing()
                self.during_send = self.write(text_frame(b"B"))
                await sending
            if message.get("text") == "close":
                await send({"type": "websocket.close", "code": 1000})
                if self.write is not None:  # before the peer can answer the close
                    self.after_close = self.write(text_frame(b"after close"))
                self.closed.set()


@asynccontextmanager
async def wire_server(ws: Any = WireProtocol, *, deflate: bool = False) -> AsyncIterator[tuple[_App, str]]:
    app = _App()
    config = uvicorn.Config(app, host="127.0.0.1", port=0, ws=ws, log_config=None, ws_per_message_deflate=deflate)
    server = ApiServer(config)
    await server.start()
    try:
        yield app, f"ws://127.0.0.1:{server.port}/"
    finally:
        await server.close()


async def written(app: _App) -> WireWrite:
    await asyncio.wait_for(app.accepted.wait(), 5)
    assert app.write is not None
    return app.write


async def test_a_written_frame_arrives_as_a_message_in_order_with_the_asgi_ones() -> None:
    async with wire_server() as (app, url), ws_connect(url) as client:
        write = await written(app)
        assert write(text_frame(b'{"n":1}')) and write(text_frame("ünïcode".encode()))
        assert [await asyncio.wait_for(client.recv(), 5) for _ in range(2)] == ['{"n":1}', "ünïcode"]


async def test_no_write_while_an_asgi_send_is_under_way() -> None:
    """A send that waited for the transport to drain goes first; a write in between would overtake it."""
    async with wire_server() as (app, url), ws_connect(url) as client:
        write = await written(app)
        await client.send("send")
        assert await asyncio.wait_for(client.recv(), 5) == "A"
        assert app.during_send is False
        assert write(text_frame(b"C"))  # nothing under way any more
        assert await asyncio.wait_for(client.recv(), 5) == "C"


async def test_no_write_on_a_compressed_connection() -> None:
    async with wire_server(deflate=True) as (app, url), ws_connect(url, compression="deflate") as client:
        write = await written(app)
        assert not write(text_frame(b"plain"))  # the library would have compressed it
        await client.send("close")


async def test_no_write_once_the_connection_closes() -> None:
    async with wire_server() as (app, url), ws_connect(url) as client:
        write = await written(app)
        await client.send("close")
        await asyncio.wait_for(app.closed.wait(), 5)
        assert app.after_close is False  # the close is sent: nothing may follow it
        assert not write(text_frame(b"later"))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(client.recv(), 5)  # the close frame, no data frame before it
        assert client.close_code == 1000


async def test_no_write_after_the_peer_is_gone() -> None:
    async with wire_server() as (app, url):
        client: ClientConnection = await ws_connect(url)
        write = await written(app)
        client.transport.abort()
        await eventually(lambda: not write(text_frame(b"x")), 5, what="write declines on a lost connection")


async def test_writes_stop_when_the_peer_stops_reading() -> None:
    """A peer that reads nothing: the socket buffers fill, the transport pauses, and ``write`` declines
    from then on instead of buffering without bound (the hub then queues, bounded, and closes 1013)."""
    async with wire_server() as (app, url):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))))
        sock.setblocking(False)
        async with ws_connect(url, sock=sock, max_queue=1):
            write = await written(app)
            frame = text_frame(b"x" * 10_000)
            sent = 0
            while write(frame):
                sent += 1
                assert sent < 1_000, "10 MB written to a peer that reads nothing: flow control ignored"
                await asyncio.sleep(0)  # let the transport flush what the socket takes
            assert sent > 0
            assert not write(frame)  # still paused: the peer has not read


async def test_the_plain_server_offers_no_wire_path() -> None:
    async with wire_server(ws="websockets-sansio") as (app, url), ws_connect(url) as client:
        await asyncio.wait_for(app.accepted.wait(), 5)
        assert app.write is None
        await client.send("close")
