"""uvicorn's ``websockets-sansio`` WebSocket connection, plus one path: a frame serialised once, written as is.

A publish sends the same frame to every subscriber. Through ASGI each of those sends encodes the
text again, frames it again and passes through Starlette's and uvicorn's ``send`` on its way to the
socket; the fan-out profile put those layers at about half of the cost per subscriber. Here the
frame is serialised once per signal (:func:`text_frame`, by the ``websockets`` library's own
serialiser) and :class:`WireProtocol` offers, as the ASGI extension :data:`WIRE` in the connection's
scope, a ``write`` that hands those bytes to the socket's transport when — and only when — the
connection is plainly open: handshake done, no close sent or received, no compression extension
(the frame is plain text), the transport not paused by flow control, and no ASGI send of this
connection still under way (one waiting for the socket to drain would otherwise be overtaken).
Otherwise ``write`` answers False, writes nothing, and the caller sends through ASGI as before,
which waits for a full socket or raises for a closed one exactly as it always did. So a
connection's frames reach the socket in the order they were sent, by either path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State

if TYPE_CHECKING:
    from uvicorn._types import ASGISendEvent

__all__ = ["WIRE", "WireProtocol", "WireWrite", "text_frame", "wire_write"]

WIRE = "candlecast.wire"
"""The scope extension: ``{"write": WireWrite}``."""

WireWrite = Callable[[bytes], bool]


def text_frame(payload: bytes) -> bytes:
    """A server's (unmasked, final, uncompressed) text frame carrying ``payload``, UTF-8 text."""
    return Frame(Opcode.TEXT, payload).serialize(mask=False, extensions=[])


def wire_write(scope: object) -> WireWrite | None:
    """The connection's ``write`` when its server offers :data:`WIRE` (else None: send through ASGI)."""
    extensions = scope.get("extensions") if isinstance(scope, dict) else None
    offered = extensions.get(WIRE) if isinstance(extensions, dict) else None
    write = offered.get("write") if isinstance(offered, dict) else None
    return write if callable(write) else None


class WireProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol, offering :data:`WIRE` to the application."""

    _sends = 0  # ASGI sends under way (one may be waiting for the transport to drain)

    async def run_asgi(self) -> None:
        self.scope["extensions"][WIRE] = {"write": self.write_frame}
        await super().run_asgi()

    async def send(self, message: ASGISendEvent) -> None:
        self._sends += 1
        try:
            await super().send(message)
        finally:
            self._sends -= 1

    def write_frame(self, frame: bytes) -> bool:
        """Write ``frame`` (from :func:`text_frame`) now if the connection is plainly open; False
        (nothing written) when the caller must send through ASGI instead."""
        # OPEN: handshake done (not an HTTP answer instead), no close sent or received. A lost
        # connection's transport is closing. A paused one is full: ASGI's send waits for it.
        if (
            self._sends
            or self.conn.state is not State.OPEN
            or self.transport.is_closing()
            or not self.writable.is_set()
            or self.conn.extensions
        ):
            return False
        self.transport.write(frame)
        return True
