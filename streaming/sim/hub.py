"""Connection fan-out for the exchange simulator: accepted connections and topic subscriptions.

Each :class:`Conn` owns a bounded send queue; :class:`Hub` maps topics to subscribers, queues one
serialized frame to all of them, and holds the fault state (stall, ``u`` skips) that the market
sources in :mod:`streaming.sim.markets` consult while publishing. Used by :mod:`streaming.sim.server`.
"""

from __future__ import annotations

import asyncio
import uuid

from websockets.asyncio.server import ServerConnection

__all__ = ["Conn", "Hub"]


class Conn:
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


class Hub:
    """Topic subscriptions, and the fault state the market sources consult while publishing."""

    def __init__(self) -> None:
        self.subs: dict[str, set[Conn]] = {}
        self.skip_u: set[str] = set()  # symbols whose next book delta jumps u by 2
        self.not_stalled = asyncio.Event()
        self.not_stalled.set()

    def has(self, topic: str) -> bool:
        return topic in self.subs

    def send(self, conn: Conn, frame: bytes) -> None:
        # During a stall everything the server would send is lost, like a frozen exchange.
        if self.not_stalled.is_set():
            conn.push(frame)

    def publish(self, topic: str, frame: bytes) -> None:
        """Queue one serialized frame to every subscriber of ``topic`` (the same bytes to all)."""
        subs = self.subs.get(topic)
        if subs and self.not_stalled.is_set():
            for conn in subs:
                conn.push(frame)

    def subscribe(self, conn: Conn, topic: str) -> None:
        conn.topics.add(topic)
        self.subs.setdefault(topic, set()).add(conn)

    def unsubscribe(self, conn: Conn, topic: str) -> None:
        conn.topics.discard(topic)
        subs = self.subs.get(topic)
        if subs is not None:
            subs.discard(conn)
            if not subs:
                del self.subs[topic]
