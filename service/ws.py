"""The WebSocket hub: ``/ws`` connections, their send queues and the fan-out of new signals.

The protocol — what a client may send and what it gets back — is :mod:`service.ws_protocol`'s,
without I/O; this module only moves frames. A publish writes the frame (serialised once per signal)
straight to each subscriber's socket where the server offers that path (:mod:`service.ws_wire`) and
nothing waits before it; otherwise it sends through ASGI, at once when the socket takes it, with no
task per send (:func:`streaming.eager.start_eagerly`). A send that must wait for a slow peer goes
on as that client's one sending task, and what follows queues behind it, bounded (``api_ws_queue``
frames). A publish that finds the queue full closes that client with 1013 (slow consumer) instead
of waiting or dropping silently, so nobody else is slowed down. A connection's receiver is owned by a
:class:`~streaming.supervisor.TaskSupervisor` and cancelled, with its sending task, when it ends;
:meth:`WsHub.close` ends them all with 1001.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from starlette.websockets import WebSocket, WebSocketDisconnect

from service.metrics import ApiMetrics
from service.signal_cache import CachedSignal, SignalCache, Unavailable
from service.ws_protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_SLOW_CONSUMER,
    Action,
    Close,
    Reply,
    Subscribed,
    Unsubscribed,
    WsLimits,
    WsSession,
    unavailable_frame,
)
from service.ws_wire import WireWrite, wire_write
from streaming.eager import start_eagerly
from streaming.supervisor import TaskSupervisor

__all__ = ["WsHub"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class _Client:
    id: int
    ws: WebSocket
    session: WsSession
    pending: deque[tuple[bool, str]] = field(default_factory=deque)  # (is a signal, frame), behind `sending`
    sending: asyncio.Task[None] | None = None  # the send waiting for the peer, if one is
    write: WireWrite | None = None  # the connection's straight-to-the-socket path, if its server has one
    done: asyncio.Event = field(default_factory=asyncio.Event)
    close_code: int | None = None
    close_reason: str = ""
    outcome: str = "client"
    disconnected: bool = False

    def end(self, code: int | None, reason: str = "", outcome: str = "client") -> None:
        """Finish the connection: close with ``code`` (None: the peer is gone). First call wins."""
        if self.done.is_set():
            return
        self.close_code, self.close_reason, self.outcome = code, reason, outcome
        self.done.set()


class WsHub:
    """Subscriptions of all connections; fans every new latest signal out to its subscribers."""

    def __init__(
        self,
        cache: SignalCache,
        limits: WsLimits,
        metrics: ApiMetrics,
        *,
        keys_enabled: bool = False,
        check_key: Callable[[str], bool] = lambda _key: True,
        performance: Callable[[str], dict[str, Any] | None] = lambda _symbol: None,
    ) -> None:
        self._cache = cache
        self._performance = performance
        self.limits = limits
        self._metrics = metrics
        self._keys_enabled = keys_enabled
        self._check_key = check_key
        self._ids = itertools.count(1)
        self._clients: set[_Client] = set()
        self._by_symbol: dict[str, set[_Client]] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._closing = False
        self._sent_signal = metrics.ws_messages_sent.labels("signal")
        self._sent_control = metrics.ws_messages_sent.labels("control")
        self._sent_wire = metrics.ws_wire_frames
        self._servable: dict[str, bool] = {}  # per symbol, as last told to its subscribers
        self._tasks = TaskSupervisor("ws hub")

    def start(self, check_every_s: float = 1.0) -> None:
        """Watch servability: a subscribed symbol whose signal stops being servable (stale, a silent
        feed) gets an ``unavailable`` frame, as a new subscriber would."""
        self._tasks.spawn(self._watch(check_every_s), "ws-availability")

    async def _watch(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            self.check_availability()

    def check_availability(self) -> None:
        """Tell the subscribers of each symbol that just became unservable why (once per change)."""
        for symbol, subscribers in tuple(self._by_symbol.items()):
            answer = self._cache.status(symbol)
            servable = not isinstance(answer, Unavailable)
            if self._servable.get(symbol, True) and isinstance(answer, Unavailable):
                frame = unavailable_frame(answer)
                for client in tuple(subscribers):
                    self._push(client, frame)
            self._servable[symbol] = servable

    # -- fan-out -----------------------------------------------------------------------------------
    def publish(self, cached: CachedSignal) -> None:
        """Send ``cached`` to every subscriber of its symbol; a full queue closes its client (1013).

        Straight to the socket, the frame serialised once (:mod:`service.ws_wire`), for each client
        with nothing waiting before it whose connection takes it; through ASGI for the others."""
        self._servable[cached.signal.symbol] = True
        subscribers = self._by_symbol.get(cached.signal.symbol)
        if not subscribers:
            return
        written = 0
        for client in tuple(subscribers):
            written += self._push(client, cached.frame, signal=True, wire=cached.wire)
        if written:
            self._sent_signal.inc(written)
            self._sent_wire.inc(written)

    def _push(self, client: _Client, frame: str, *, signal: bool = False, wire: bytes | None = None) -> bool:
        """Send now if nothing waits before it (most often done at once); else queue, in order. With
        ``wire`` (``frame`` serialised), straight to the socket where the connection takes it: True
        then, and the caller counts the frame sent."""
        if client.done.is_set():
            return False
        if client.sending is None:
            if wire is not None and self._write(client, wire):
                return True
            self._send(client, frame, signal)
        elif len(client.pending) < self.limits.queue:
            client.pending.append((signal, frame))
        else:
            self._evict(client)
        return False

    def _write(self, client: _Client, wire: bytes) -> bool:
        """The wire path's write; a failure of it (a transport past what it expects) is logged and
        the frame goes through ASGI instead, which deals with the connection as it always has."""
        if client.write is None:
            return False
        try:
            return client.write(wire)
        except Exception:
            log.exception("ws %d: writing straight to the socket failed; sending through ASGI", client.id)
            client.write = None
            return False

    def _send(self, client: _Client, frame: str, signal: bool) -> None:
        task = start_eagerly(self._send_one(client, frame, signal), f"ws-{client.id}-send")
        if task is not None:  # the peer's socket is full: the rest of this client's frames wait
            client.sending = task
            task.add_done_callback(lambda _task: self._sent(client))

    def _sent(self, client: _Client) -> None:
        """The waiting send is done: send what queued behind it, until one has to wait again."""
        client.sending = None
        while client.pending and client.sending is None and not client.done.is_set():
            signal, frame = client.pending.popleft()
            self._send(client, frame, signal)

    async def _send_one(self, client: _Client, frame: str, signal: bool) -> None:
        try:
            await client.ws.send_text(frame)
        except (WebSocketDisconnect, OSError, RuntimeError):
            client.disconnected = True
            client.end(None)
            return
        except Exception:
            log.exception("ws %d: sending failed", client.id)
            client.end(CLOSE_INTERNAL, "internal error", "error")
            return
        (self._sent_signal if signal else self._sent_control).inc()

    def _evict(self, client: _Client) -> None:
        if client.done.is_set():
            return
        dropped = len(client.pending) + 1
        client.pending.clear()
        self._drop(client, tuple(client.session.symbols))
        self._metrics.ws_messages_dropped.inc(dropped)
        self._metrics.ws_slow_consumer_closes.inc()
        log.warning("ws %d: send queue full (%d frames): closing as a slow consumer", client.id, self.limits.queue)
        client.end(CLOSE_SLOW_CONSUMER, "slow consumer: send queue full", "slow_consumer")

    def _drop(self, client: _Client, symbols: Iterable[str]) -> None:
        """Stop sending ``symbols`` to ``client``."""
        for symbol in symbols:
            client.session.symbols.discard(symbol)
            subs = self._by_symbol.get(symbol)
            if subs is not None:
                subs.discard(client)
                if not subs:
                    del self._by_symbol[symbol]

    def _apply(self, client: _Client, actions: list[Action]) -> None:
        """Carry out what the protocol answered, in order and without an await (see ``_subscribe``)."""
        for action in actions:
            if client.done.is_set():
                return
            if isinstance(action, Reply):
                if action.error is not None:
                    self._metrics.ws_error_frames.labels(action.error).inc()
                self._push(client, action.frame, signal=action.signal)
            elif isinstance(action, Subscribed):
                for symbol in action.symbols:
                    self._by_symbol.setdefault(symbol, set()).add(client)
            elif isinstance(action, Unsubscribed):
                self._drop(client, action.symbols)
            elif isinstance(action, Close):
                client.end(action.code, action.reason, action.outcome)

    # -- one connection ----------------------------------------------------------------------------
    async def serve(self, ws: WebSocket, authorization: str | None, *, key_in_url: bool = False) -> None:
        """Run one connection until it ends. ``authorization``: the bearer key of the handshake's
        ``Authorization`` header, if it had one; ``key_in_url``: the URL carries a key parameter
        (refused with 1008 even when the key is valid: URLs end up in logs)."""
        await ws.accept()
        session = WsSession(
            self.limits,
            self._cache.symbols,
            self._cache.normalise,
            self._cache.status,
            keys_enabled=self._keys_enabled,
            check_key=self._check_key,
            performance=self._performance,
        )
        client = _Client(next(self._ids), ws, session, write=wire_write(ws.scope))
        self._clients.add(client)
        self._idle.clear()
        self._metrics.ws_clients.inc()
        if self._closing:
            client.end(CLOSE_GOING_AWAY, "server shutting down", "shutdown")
        else:
            self._apply(client, session.open(authorization, key_in_url=key_in_url))
        tasks = TaskSupervisor(f"ws {client.id}")
        tasks.spawn(self._receive_loop(client, ws), f"ws-{client.id}-receive")
        try:
            await client.done.wait()
        finally:
            await tasks.cancel_all(self.limits.close_timeout_s)
            client.pending.clear()
            if client.sending is not None:  # a send still waiting for a peer that stopped reading
                client.sending.cancel()
                await asyncio.wait([client.sending], timeout=self.limits.close_timeout_s)
            self._drop(client, tuple(session.symbols))
            self._metrics.ws_connections.labels(client.outcome).inc()
            try:
                if client.close_code is not None and not client.disconnected:
                    await self._close(client, ws)
            finally:
                self._clients.discard(client)
                self._metrics.ws_clients.dec()
                if not self._clients:
                    self._idle.set()

    async def _close(self, client: _Client, ws: WebSocket) -> None:
        assert client.close_code is not None
        try:
            # Waits while the peer's buffers are full (a slow consumer); bounded, then we let go and
            # the server closes the transport.
            async with asyncio.timeout(self.limits.close_timeout_s):
                await ws.close(client.close_code, client.close_reason)
        except (TimeoutError, WebSocketDisconnect, RuntimeError, OSError) as exc:
            log.debug("ws %d: close %d not delivered: %r", client.id, client.close_code, exc)

    async def _receive_loop(self, client: _Client, ws: WebSocket) -> None:
        session = client.session
        try:
            if not session.authenticated:
                try:
                    async with asyncio.timeout(self.limits.auth_timeout_s):
                        data = await self._receive(client, ws)
                except TimeoutError:
                    self._apply(client, session.auth_timed_out())
                    return
                if data is None:
                    return
                self._apply(client, session.authenticate(data))
                if not session.authenticated:
                    return
            while True:
                data = await self._receive(client, ws)
                if data is None:
                    return
                self._apply(client, session.receive(data))
        except Exception:
            log.exception("ws %d: handling a message failed", client.id)
            client.end(CLOSE_INTERNAL, "internal error", "error")

    async def _receive(self, client: _Client, ws: WebSocket) -> str | bytes | None:
        message = await ws.receive()
        if message["type"] == "websocket.disconnect":
            client.disconnected = True
            client.end(None)
            return None
        text: str | None = message.get("text")
        return text if text is not None else bytes(message.get("bytes") or b"")

    # -- shutdown ----------------------------------------------------------------------------------
    async def close(self, timeout_s: float = 5.0) -> None:
        """Close every connection with 1001 and wait (bounded) for them to end. Safe twice."""
        self._closing = True
        await self._tasks.cancel_all(timeout_s)
        for client in tuple(self._clients):
            client.end(CLOSE_GOING_AWAY, "server shutting down", "shutdown")
        if self._clients:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("%d WebSocket clients still open after %.1f s", len(self._clients), timeout_s)
