"""One Bybit public WebSocket connection and its reconnect loop.

Per connection (bybit_protocol.md §2, §7):

* subscribe the shard's topics once per new connection, in batches of ``batch_size`` args with
  distinct ``req_id``s, and check every ack; a ``success:false`` ack is reported to the handler and
  counted — the topic is not retried on this connection (an alert, not a retry loop);
* an app-level ``{"op":"ping"}`` every 20 s from its own task; no pong within ``pong_timeout_s`` ⇒
  reconnect. Frames are handled in the connection's receive callback, at most
  ``_DELIVER_PER_CALLBACK`` a callback, so a burst of frames cannot starve the pinger (what goes
  through ``recv()`` yields every ``_YIELD_EVERY``);
* a per-topic silence watchdog (a busy socket can look alive while one topic stopped);
* reconnect with capped, jittered exponential backoff that resets after a healthy connection, and a
  shared connect-rate budget across all connections.

Decoding and book/kline logic live elsewhere: this module only moves frames to a :class:`FeedHandler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, Protocol

import orjson
import websockets
from websockets.asyncio.client import ClientConnection, connect
from websockets.protocol import State

from streaming.backoff import Backoff
from streaming.errors import ConnectionLost, FrameError, UnknownTopicError
from streaming.frames import BookUpdate, CommandResponse, KlineUpdate, Pong, parse_frame
from streaming.metrics import IngestMetrics
from streaming.ratelimit import RateLimiter
from streaming.supervisor import TaskSupervisor

__all__ = ["FeedConnection", "FeedHandler"]

log = logging.getLogger(__name__)

_YIELD_EVERY = 64  # frames taken from recv() between explicit yields to the event loop
# Whole messages handed on in one receive callback before the event loop runs anything else: about
# 2.5 ms of handling at the 9-10 µs a frame bench ingest measures. Every slice costs a pause and a
# resume of reading and gives the writer a turn (smaller flushes, more of them): client CPU a frame
# measured 10.1-10.8 µs at 64 a slice, 8.7-9.6 at 256, 8.0-9.2 unsliced.
_DELIVER_PER_CALLBACK = 256
_HELPER_CANCEL_TIMEOUT_S = 5.0
# A book that needs a fresh snapshot again and again (a broken feed) must not turn into a
# subscribe storm: space resyncs of a topic, and reconnect (with backoff) past a limit.
RESYNC_MIN_SPACING_S = 0.5
RESYNC_STORM_COUNT = 10
RESYNC_STORM_WINDOW_S = 60.0


class FeedHandler(Protocol):
    """What a connection reports to its owner. Every method is synchronous and must be quick."""

    def on_connected(self, conn: FeedConnection) -> None: ...

    def on_message(self, conn: FeedConnection, msg: BookUpdate | KlineUpdate, recv_wall: float) -> None:
        """A data frame (a book or kline update); acks and pongs stay with the connection."""
        ...

    def on_frame_error(self, conn: FeedConnection, raw: str | bytes, exc: FrameError) -> None: ...

    def on_subscribed(self, conn: FeedConnection, topics: Sequence[str]) -> None: ...

    def on_subscribe_failed(self, conn: FeedConnection, topics: Sequence[str], ret_msg: str) -> None: ...

    def on_disconnected(self, conn: FeedConnection, reason: str) -> None: ...


# First header byte of a frame: FIN, no RSV bit (no extension is negotiated), the opcode.
_WHOLE_TEXT, _WHOLE_BINARY = 0x81, 0x82  # a whole message in one frame
_CONTROL = frozenset({0x88, 0x89, 0x8A})  # close, ping, pong (never fragmented)


class _DeliveringConnection(ClientConnection):
    """websockets' client connection that splits the server's frames itself and hands each whole
    message to ``deliver`` from the receive callback: the ingest's hot path then costs neither the
    library's generator-based frame parser nor its queue, ``recv()`` coroutine and task wake-up per
    frame (measured in ``candlecast bench ingest``).

    The library keeps everything else. It parses the opening handshake (fed one line at a time, so
    it stops exactly at the end of the response and its parser is left at a frame boundary), and it
    gets every control frame (close, ping, pong) whole, in order, so closing handshakes and pongs are
    its own. Anything else (a fragmented message, an RSV bit, a reserved opcode, a masked frame, a
    message over ``max_size``, a data frame before ``deliver`` is set) hands the rest of the stream to
    the library from that frame on: it fails the connection as the protocol says, or queues the
    frames for ``recv()``, and every later frame of this connection takes that path too, so frames
    keep their order (logged: the connection is slower from then on).

    One socket read can hold over a thousand frames when the feed is behind. At most
    ``_DELIVER_PER_CALLBACK`` are handed on per loop callback: past that, reading pauses and the rest
    waits, in order, for a callback of its own, so the writer, the pinger and (in ``candlecast run``)
    the API keep their turns.

    A message that is not valid UTF-8 reaches the decoder, which refuses it as a malformed frame;
    through ``recv()`` the library closes the connection (1007).
    """

    deliver: Callable[[bytes], None] | None = None
    queued = False  # the library has the stream: ``deliver`` must not be set any more
    _own = False  # this class splits the frames (from the end of the handshake until it hands over)
    _buf = b""  # received bytes not handled yet start at ``_buf[_pos]``, at a frame boundary
    _pos = 0
    _parts: bytearray | None = None  # a frame much longer than what arrived: it and the reads since
    _need = 0  # the length ``_parts`` must reach before that frame is whole
    _paused = False  # reading is paused by this class: a slice's budget is spent

    def data_received(self, data: bytes) -> None:
        if not self._own:
            if self.protocol.state is State.CONNECTING:
                self._handshake(data)
            else:
                super().data_received(data)
            return
        if self._parts is not None:  # the rest of a long frame: one copy once it is whole
            self._parts += data
            if len(self._parts) < self._need:
                return
            self._buf, self._pos, self._parts = bytes(self._parts), 0, None
        else:
            rest = len(self._buf) - self._pos
            self._buf, self._pos = (self._buf[self._pos :] + data if rest else data), 0
        self._split()

    def eof_received(self) -> None:
        self._to_library("")  # a partial frame left: the library's error for it (1006)
        super().eof_received()

    def stop(self) -> None:
        """The receive loop is over: frames not handled yet, and later ones, go to ``recv()``'s
        queue (nobody reads it; the library pauses reading when it is full)."""
        self._to_library("")

    def _handshake(self, data: bytes) -> None:
        """Feed the HTTP response one line at a time; the bytes after it are frames and ours."""
        start = 0
        while self.protocol.state is State.CONNECTING:
            end = data.find(b"\n", start) + 1
            if not end:
                super().data_received(data[start:])
                return
            super().data_received(data[start:end])
            start = end
        if self.protocol.state is State.OPEN and not self.protocol.reader.buffer:
            self._own, self._buf, self._pos = True, data[start:], 0
            self._split()
        elif start < len(data):
            super().data_received(data[start:])

    def _split(self) -> None:
        """Handle whole frames from ``_pos`` on, at most a slice's worth."""
        buf, pos, size = self._buf, self._pos, len(self._buf)
        budget, limit = _DELIVER_PER_CALLBACK, self.protocol.max_message_size
        why = ""
        while size - pos >= 2:
            head, length = buf[pos], buf[pos + 1]
            if length & 0x80:
                why = "a masked frame"  # a server's frames are not masked: the library fails it (1002)
                break
            start = pos + 2
            if length >= 126:
                start = pos + (4 if length == 126 else 10)
                if size < start:
                    break
                length = int.from_bytes(buf[pos + 2 : start], "big")
            end = start + length
            if head in (_WHOLE_TEXT, _WHOLE_BINARY):
                deliver = self.deliver
                if deliver is None:
                    why = "a data frame before the feed was ready"
                    break
                if limit is not None and length > limit:
                    why = "a message over max_size"  # the library fails the connection (1009)
                    break
                if end > size:
                    self._buf, self._pos = buf, pos
                    self._wait_for(end - pos)
                    return
                if not budget:
                    self._buf, self._pos = buf, pos
                    self._pause()
                    return
                budget -= 1
                pos = end
                self._buf, self._pos = buf, pos
                deliver(buf[start:end])
                if not self._own:  # stopped from inside ``deliver``: the library has the rest
                    return
            elif head in _CONTROL and length <= 125:
                if end > size:
                    break
                self._buf, self._pos = buf, end
                ClientConnection.data_received(self, buf[pos:end])  # its own: pong, ping, close
                pos = end
                if self.protocol.state is not State.OPEN:  # closing: the library discards the rest
                    break
            else:
                opcode = head & 0x0F
                fragment = opcode == 0 or (opcode in (1, 2) and not head & 0xF0)
                why = "a fragmented message" if fragment else f"a frame with first byte {head:#04x}"
                break
        self._buf, self._pos = buf, pos
        if why or self.protocol.state is not State.OPEN:
            self._to_library(why)  # it fails the connection as the protocol says, or queues for recv()

    def _wait_for(self, need: int) -> None:
        """The frame at ``_pos`` needs ``need`` bytes from there. Far from it: collect the reads in
        one buffer (linear in what arrives, however it is cut) instead of re-joining per read."""
        if need - (len(self._buf) - self._pos) > 4096:
            self._parts, self._need = bytearray(self._buf[self._pos :]), need
            self._buf, self._pos = b"", 0

    def _to_library(self, why: str) -> None:
        """From here on the library parses this connection's frames (``recv()`` gets the data)."""
        if not self._own:
            self.deliver, self.queued = None, True
            return
        if why:
            log.warning("%s: this connection's frames go through recv() from now on", why)
        rest = self._release()
        if rest and not self.protocol.reader.eof:  # after EOF the library's error stands (1006)
            super().data_received(rest)
        if self._paused:
            self._paused = False
            self._resume()

    def _pause(self) -> None:
        self._paused = True
        self.transport.pause_reading()
        self.loop.call_soon(self._go_on)

    def _go_on(self) -> None:
        if not self._paused:  # handed to the library meanwhile (which resumed reading)
            return
        self._paused = False
        self._split()  # may pause again, or hand the stream to the library
        if not self._paused:
            self._resume()

    def connection_lost(self, exc: Exception | None) -> None:
        """Nothing waiting is handed on after this: the protocol is closed."""
        self._release()
        self._paused = False
        super().connection_lost(exc)

    def _release(self) -> bytes:
        """Stop splitting frames; the bytes not handled yet, from a frame boundary on."""
        rest = self._buf[self._pos :] + (self._parts or b"")
        self._own, self._buf, self._pos, self._parts = False, b"", 0, None
        self.deliver, self.queued = None, True
        return rest

    def _resume(self) -> None:
        if not self.recv_messages.paused:  # recv()'s own flow control may hold reading paused
            self.transport.resume_reading()


class FeedConnection:
    def __init__(
        self,
        name: str,
        url: str,
        topics: Sequence[str],
        handler: FeedHandler,
        metrics: IngestMetrics,
        *,
        silence_s: Callable[[str], float],
        ping_interval_s: float = 20.0,
        pong_timeout_s: float = 10.0,
        ack_timeout_s: float = 10.0,
        open_timeout_s: float = 10.0,
        batch_size: int = 10,
        backoff: Backoff | None = None,
        connect_limiter: RateLimiter | None = None,
    ) -> None:
        self.name = name
        self.url = url
        self.topics = list(topics)
        self._handler = handler
        self._metrics = metrics
        self._silence_s = silence_s
        self._ping_interval_s = ping_interval_s
        self._pong_timeout_s = pong_timeout_s
        self._ack_timeout_s = ack_timeout_s
        self._open_timeout_s = open_timeout_s
        self._batch_size = batch_size
        self._backoff = backoff or Backoff()
        self._connect_limiter = connect_limiter
        self.connection_number = 0  # increments on every successful connect
        self.conn_id = ""  # Bybit's conn_id from the first ack, for log lines
        self._ws: ClientConnection | None = None
        self._req_ids = itertools.count(1)
        self._acks: dict[str, asyncio.Future[CommandResponse]] = {}
        self._active: set[str] = set()  # topics acked on this connection
        self._failed: set[str] = set()
        self._last_rx: dict[str, float] = {}  # per connection, for the silence watchdog
        self._delivered: set[str] = set()  # acked topics that delivered data on this connection
        self._healthy = False  # every acked topic delivered data on this connection
        # Monotonic time of the last frame per topic, kept across reconnects: what operators see as
        # the topic's last-message age, which keeps growing while the feed is down.
        self.last_frame_at: dict[str, float] = {}
        self._ping_sent_at: float | None = None
        self._close_reason = ""
        # Deduplicated by _resync_wanted, so the queue never holds more than one entry per topic.
        self._resync_queue: asyncio.Queue[str] = asyncio.Queue()
        self._resync_wanted: set[str] = set()
        self._resync_history: dict[str, deque[float]] = {}

    # -- public ---------------------------------------------------------------------------------
    def resync(self, topic: str) -> None:
        """Ask for a fresh snapshot of ``topic`` (unsubscribe + subscribe) on this connection."""
        if self._ws is None or topic not in self._active or topic in self._resync_wanted:
            return
        self._resync_wanted.add(topic)
        self._resync_queue.put_nowait(topic)

    async def run(self) -> None:
        """Connect, serve, reconnect — until cancelled."""
        while True:
            started = time.monotonic()
            self._delivered.clear()
            self._healthy = False
            reason = await self._connect_and_serve()
            lived = time.monotonic() - started
            self._metrics.reconnects.labels(reason=reason).inc()
            self._backoff.connection_ended(lived, delivered=self._healthy)
            delay = self._backoff.next_delay()
            log.warning(
                "[%s] connection ended (%s) after %.1f s; reconnecting in %.2f s",
                self.name,
                reason,
                lived,
                delay,
            )
            await asyncio.sleep(delay)

    # -- one connection -------------------------------------------------------------------------
    async def _connect_and_serve(self) -> str:
        if self._connect_limiter is not None:
            await self._connect_limiter.acquire()
        try:
            ws = await connect(
                self.url,
                open_timeout=self._open_timeout_s,
                ping_interval=None,  # Bybit wants app-level {"op":"ping"}; see _pinger
                close_timeout=1.0,
                max_size=2**22,
                max_queue=1024,
                compression=None,
                create_connection=_DeliveringConnection,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake, websockets.InvalidURI) as exc:
            log.warning("[%s] connect to %s failed: %s", self.name, self.url, exc)
            return "connect_failed"
        self._ws = ws
        self.connection_number += 1
        self._reset_session_state()
        self._metrics.connections.inc()
        self._handler.on_connected(self)
        log.info("[%s] connected to %s (connection #%d)", self.name, self.url, self.connection_number)
        helpers = TaskSupervisor(f"connection {self.name}")
        helpers.spawn(self._guard(self._subscribe_all(ws)), f"{self.name}-subscribe")
        helpers.spawn(self._guard(self._pinger(ws)), f"{self.name}-ping")
        helpers.spawn(self._guard(self._watchdog(ws)), f"{self.name}-watchdog")
        helpers.spawn(self._guard(self._resyncer(ws)), f"{self.name}-resync")
        try:
            await self._receive(ws)
        finally:
            await helpers.cancel_all(_HELPER_CANCEL_TIMEOUT_S)
            for fut in self._acks.values():
                fut.cancel()
            self._acks.clear()
            self._ws = None
            self._metrics.connections.dec()
            with contextlib.suppress(Exception):
                await asyncio.shield(ws.close())
        reason = self._close_reason or "server_closed"
        self._handler.on_disconnected(self, reason)
        return reason

    def _reset_session_state(self) -> None:
        self._active.clear()
        self._failed.clear()
        self._last_rx.clear()
        self._close_reason = ""
        self._ping_sent_at = None
        self.conn_id = ""
        self._resync_wanted.clear()
        self._resync_history.clear()
        while not self._resync_queue.empty():
            self._resync_queue.get_nowait()

    async def _receive(self, ws: ClientConnection) -> None:
        if isinstance(ws, _DeliveringConnection) and not ws.queued:
            ws.deliver = self._deliver
        n = 0
        try:
            async for raw in ws:  # only what the connection did not deliver itself
                self._deliver(raw)
                n += 1
                if n % _YIELD_EVERY == 0:
                    # A socket with a backlog returns frames without suspending; yield so the
                    # pinger, watchdog and writer run even under a flood.
                    await asyncio.sleep(0)
        except websockets.ConnectionClosed as exc:
            if not self._close_reason:
                self._close_reason = "server_closed" if exc.rcvd is not None else "connection_lost"
        finally:
            if isinstance(ws, _DeliveringConnection):
                ws.stop()

    def _deliver(self, raw: str | bytes) -> None:
        """One received frame: decoded and handed on. Never raises: a bug or an unforeseen value
        costs one frame, not the connection (this runs inside the connection's receive callback)."""
        recv_wall = time.time()
        try:
            try:
                msg = parse_frame(raw)
            except FrameError as exc:
                kind = "unknown_topic" if isinstance(exc, UnknownTopicError) else "malformed"
                self._metrics.messages.labels(type=kind).inc()
                self._handler.on_frame_error(self, raw, exc)
                return
            if type(msg) is BookUpdate or type(msg) is KlineUpdate:  # data: all but a few frames
                topic = msg.topic
                self._last_rx[topic] = self.last_frame_at[topic] = time.monotonic()
                if topic not in self._delivered and topic in self._active:
                    self._delivered.add(topic)
                    self._healthy = self._active <= self._delivered
                self._handler.on_message(self, msg, recv_wall)
            elif isinstance(msg, Pong):
                self._metrics.messages.labels(type="pong").inc()
                self._ping_sent_at = None
            elif isinstance(msg, CommandResponse):
                self._on_response(msg)
        except Exception:
            self._metrics.messages.labels(type="handler_error").inc()
            log.exception("[%s] handling a frame failed; frame dropped: %r", self.name, raw[:200])

    def _on_response(self, msg: CommandResponse) -> None:
        self._metrics.messages.labels(type="ack").inc()
        if msg.conn_id and not self.conn_id:
            self.conn_id = msg.conn_id
        fut = self._acks.pop(msg.req_id, None)
        if fut is not None and not fut.done():
            fut.set_result(msg)
        elif fut is None:
            log.warning("[%s] response to unknown req_id %r: %s", self.name, msg.req_id, msg.ret_msg)

    async def _guard(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run a helper; an unexpected error in it closes the connection instead of vanishing."""
        try:
            await coro
        except ConnectionLost as exc:
            await self._abort(exc.reason, exc.detail)
        except websockets.ConnectionClosed:
            pass
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("[%s] helper task failed; dropping the connection", self.name)
            await self._abort("internal_error")

    async def _abort(self, reason: str, detail: str = "") -> None:
        if not self._close_reason:
            self._close_reason = reason
            log.warning("[%s] closing connection: %s %s", self.name, reason, detail)
        ws = self._ws
        if ws is not None:
            # A stalled peer will not answer a close handshake; abort the transport instead.
            ws.transport.abort()

    async def _request(self, ws: ClientConnection, op: str, args: list[str]) -> CommandResponse:
        req_id = f"{self.name}.{self.connection_number}.{next(self._req_ids)}"
        fut: asyncio.Future[CommandResponse] = asyncio.get_running_loop().create_future()
        self._acks[req_id] = fut
        await ws.send(orjson.dumps({"req_id": req_id, "op": op, "args": args}).decode())
        try:
            return await asyncio.wait_for(fut, self._ack_timeout_s)
        except TimeoutError:
            self._acks.pop(req_id, None)
            self._metrics.ack_failures.labels(reason="timeout").inc()
            raise ConnectionLost("ack_timeout", f"{op} {args[:3]} req_id={req_id}") from None

    async def _subscribe_all(self, ws: ClientConnection) -> None:
        batches = [self.topics[i : i + self._batch_size] for i in range(0, len(self.topics), self._batch_size)]
        replies = await asyncio.gather(*(self._request(ws, "subscribe", b) for b in batches))
        for batch, reply in zip(batches, replies, strict=True):
            if reply.success:
                self._activate(batch)
                continue
            self._metrics.ack_failures.labels(reason=_failure_kind(reply.ret_msg)).inc()
            log.error("[%s] subscribe %s answered %r (conn_id %s)", self.name, batch, reply.ret_msg, reply.conn_id)
            # Linear acks name at most one topic and say nothing of the rest of the batch (protocol
            # §2.2: "not documented — verify live"). Settle each other topic with its own request:
            # success or "already subscribed" means it is flowing; anything else means it failed.
            named = reply.ret_msg.rpartition("topic:")[2].strip()
            failed = [named] if named in batch and "already subscribed" not in reply.ret_msg else []
            for topic in batch:
                if topic in failed:
                    continue
                single = await self._request(ws, "subscribe", [topic])
                if single.success or "already subscribed" in single.ret_msg:
                    self._activate([topic])
                else:
                    failed.append(topic)
            if failed:
                self._failed.update(failed)
                log.error("[%s] not subscribed: %s", self.name, failed)
                self._handler.on_subscribe_failed(self, failed, reply.ret_msg)
        log.info("[%s] subscribed %d topics (%d failed)", self.name, len(self._active), len(self._failed))

    def _activate(self, topics: list[str]) -> None:
        now = time.monotonic()
        for topic in topics:
            self._active.add(topic)
            self._last_rx.setdefault(topic, now)
        self._handler.on_subscribed(self, topics)

    async def _pinger(self, ws: ClientConnection) -> None:
        while True:
            await asyncio.sleep(self._ping_interval_s)
            if self._ping_sent_at is None:
                self._ping_sent_at = time.monotonic()
            req_id = f"{self.name}.ping.{next(self._req_ids)}"
            await ws.send(orjson.dumps({"req_id": req_id, "op": "ping"}).decode())

    async def _watchdog(self, ws: ClientConnection) -> None:
        tick = 0.25
        while True:
            await asyncio.sleep(tick)
            now = time.monotonic()
            if self._ping_sent_at is not None and now - self._ping_sent_at > self._pong_timeout_s:
                raise ConnectionLost("pong_timeout", f"no pong for {now - self._ping_sent_at:.1f} s")
            for topic in self._active:
                age = now - self._last_rx.get(topic, now)
                if age > self._silence_s(topic):
                    raise ConnectionLost("silence", f"{topic} silent for {age:.1f} s")

    async def _resyncer(self, ws: ClientConnection) -> None:
        while True:
            topic = await self._resync_queue.get()
            # From here on a new gap asks again, even one found while this resync is in flight.
            self._resync_wanted.discard(topic)
            history = self._resync_history.setdefault(topic, deque(maxlen=RESYNC_STORM_COUNT))
            now = time.monotonic()
            if len(history) == RESYNC_STORM_COUNT and now - history[0] < RESYNC_STORM_WINDOW_S:
                raise ConnectionLost("resync_storm", f"{topic}: {RESYNC_STORM_COUNT} resyncs within a minute")
            if history and now - history[-1] < RESYNC_MIN_SPACING_S:
                await asyncio.sleep(RESYNC_MIN_SPACING_S - (now - history[-1]))
            history.append(time.monotonic())
            for op in ("unsubscribe", "subscribe"):
                reply = await self._request(ws, op, [topic])
                if not reply.success:
                    self._metrics.ack_failures.labels(reason=_failure_kind(reply.ret_msg)).inc()
                    raise ConnectionLost("resync_failed", f"{op} {topic}: {reply.ret_msg}")
            self._last_rx[topic] = time.monotonic()


def _failure_kind(ret_msg: str) -> str:
    if "handler not found" in ret_msg:
        return "handler_not_found"
    if "already subscribed" in ret_msg:
        return "already_subscribed"
    return "other"
