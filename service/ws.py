"""The WebSocket subscription hub: ``/ws``.

Protocol (JSON text frames; every server frame has an ``op``)::

    -> {"op": "auth", "key": "..."}                 only as the FIRST message, when API keys are on
    <- {"op": "auth", "ok": true}
    -> {"op": "subscribe", "symbols": ["BTCUSDT", "ethusdt"]}
    <- {"op": "subscribe", "ok": true, "symbols": ["BTCUSDT", "ETHUSDT"], "subscribed": [...]}
    <- {"op": "signal", "symbol": "BTCUSDT", "signal": {...}}        the last signal, at once
    <- {"op": "unavailable", "symbol": "ETHUSDT", "reason": "warming_up", ...}   when there is none
    <- {"op": "signal", "symbol": "BTCUSDT", "signal": {...}}        then every new one, as published
    -> {"op": "unsubscribe", "symbols": ["ETHUSDT"]}
    <- {"op": "unsubscribe", "ok": true, "symbols": ["ETHUSDT"], "subscribed": ["BTCUSDT"]}
    -> {"op": "ping"}
    <- {"op": "pong", "time_ms": 1750000080000}
    <- {"op": "error", "error": {"code": "unknown_symbols", "message": "...", "details": {...}}}

A client message may carry an ``"id"`` (string or integer); the answer to it echoes it. A
``signal`` frame's ``signal`` is the signal JSON exactly as the worker published it (the same
bytes as the audit stream entry and ``GET /signal/{symbol}``).

Errors never drop the connection: not JSON or not an object (``bad_json``), a missing or unknown
``op`` (``unknown_op``), wrong fields (``bad_message``), unknown symbols (``unknown_symbols``,
listing them; the known ones of the same request are still subscribed), more than the per-connection
limit (``too_many_symbols``; nothing of that request is applied), a frame over the size limit
(``frame_too_large``; the server also refuses larger frames at the protocol level, close 1009).

Slow consumers: every client has a bounded send queue (``api_ws_queue`` frames, default 256). A
publish that finds it full does not wait and does not drop silently: the client is closed with
**1013 (try again later)**, its queued frames are discarded (counted as dropped), and it may
reconnect and resubscribe to get the last values again. Nobody else is slowed down.

Close codes: 1000 client's own; 1008 policy — missing, invalid or URL-borne API key, or no key
within ``api_ws_auth_timeout_s``; 1009 frame too large (protocol level); 1011 internal error; 1012
server restart (uvicorn's shutdown); 1001 going away (hub shutdown); 1013 slow consumer.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect

from service.metrics import ApiMetrics
from service.signal_cache import CachedSignal, SignalCache

__all__ = ["CLOSE_GOING_AWAY", "CLOSE_POLICY", "CLOSE_SLOW_CONSUMER", "WsHub", "WsLimits"]

log = logging.getLogger(__name__)

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_SLOW_CONSUMER = 1013


_OPS = ("auth", "subscribe", "unsubscribe", "ping")

MessageId = str | int | None


@dataclass(frozen=True)
class WsLimits:
    queue: int = 256  # frames waiting to be sent, per client
    max_symbols: int = 50  # subscribed at once, per connection
    max_frame_bytes: int = 16_384  # a client frame
    auth_timeout_s: float = 5.0  # for the first-message key
    close_timeout_s: float = 5.0  # for our close frame to get out


# -- client messages ---------------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str | int | None = Field(default=None)


class _Symbols(_Message):
    symbols: list[Any] = Field(min_length=1, max_length=1000)


class _Auth(_Message):
    key: str = Field(min_length=1, max_length=512)


# -- one connection ------------------------------------------------------------------------------------


@dataclass(eq=False)
class _Client:
    id: int
    queue: asyncio.Queue[tuple[bool, str]]  # (is a signal, frame)
    symbols: set[str] = field(default_factory=set)
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


def _msg_id(body: dict[str, Any] | None) -> MessageId:
    """The client's ``id`` to echo: a string or an integer, else none."""
    raw = None if body is None else body.get("id")
    return raw if isinstance(raw, str | int) and not isinstance(raw, bool) else None


def _frame(op: str, msg_id: MessageId = None, **fields: Any) -> str:
    body: dict[str, Any] = {"op": op}
    if msg_id is not None:
        body["id"] = msg_id
    body.update(fields)
    return orjson.dumps(body).decode()


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
    ) -> None:
        self._cache = cache
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

    @property
    def clients(self) -> int:
        return len(self._clients)

    # -- fan-out -----------------------------------------------------------------------------------
    def publish(self, cached: CachedSignal) -> None:
        """Queue ``cached`` to every subscriber of its symbol; a full queue closes its client (1013)."""
        subscribers = self._by_symbol.get(cached.signal.symbol)
        if not subscribers:
            return
        item = (True, cached.frame)
        for client in tuple(subscribers):
            try:
                client.queue.put_nowait(item)
            except asyncio.QueueFull:
                self._evict(client)

    def _push(self, client: _Client, frame: str) -> None:
        try:
            client.queue.put_nowait((False, frame))
        except asyncio.QueueFull:
            self._evict(client)

    def _evict(self, client: _Client) -> None:
        if client.done.is_set():
            return
        dropped = client.queue.qsize() + 1
        while not client.queue.empty():
            client.queue.get_nowait()
        self._unsubscribe_all(client)
        self._metrics.ws_messages_dropped.inc(dropped)
        self._metrics.ws_slow_consumer_closes.inc()
        log.warning("ws %d: send queue full (%d frames): closing as a slow consumer", client.id, self.limits.queue)
        client.end(CLOSE_SLOW_CONSUMER, "slow consumer: send queue full", "slow_consumer")

    def _unsubscribe_all(self, client: _Client) -> None:
        for symbol in client.symbols:
            subs = self._by_symbol.get(symbol)
            if subs is not None:
                subs.discard(client)
                if not subs:
                    del self._by_symbol[symbol]
        client.symbols.clear()

    # -- one connection ----------------------------------------------------------------------------
    async def serve(self, ws: WebSocket, authorization: str | None, *, key_in_url: bool = False) -> None:
        """Run one connection until it ends. ``authorization``: the bearer key of the handshake's
        ``Authorization`` header, if it had one; ``key_in_url``: the URL carries a key parameter
        (refused with 1008 even when the key is valid: URLs end up in logs)."""
        authenticated = not self._keys_enabled
        await ws.accept()
        client = _Client(next(self._ids), asyncio.Queue(self.limits.queue))
        self._clients.add(client)
        self._idle.clear()
        self._metrics.ws_clients.inc()
        if self._closing:
            client.end(CLOSE_GOING_AWAY, "server shutting down", "shutdown")
        elif key_in_url:
            client.end(CLOSE_POLICY, "API keys are not accepted in the URL", "unauthorized")
        elif self._keys_enabled and authorization is not None:
            if self._check_key(authorization):
                authenticated = True
            else:
                client.end(CLOSE_POLICY, "invalid API key", "unauthorized")
        sender = asyncio.create_task(self._send_loop(client, ws), name=f"ws-{client.id}-send")
        receiver = asyncio.create_task(self._receive_loop(client, ws, authenticated), name=f"ws-{client.id}-receive")
        try:
            await client.done.wait()
        finally:
            for task in (receiver, sender):
                task.cancel()
            await asyncio.wait((receiver, sender), timeout=self.limits.close_timeout_s)
            for task in (receiver, sender):
                if task.done() and not task.cancelled() and task.exception() is not None:
                    log.error("ws %d: %s failed", client.id, task.get_name(), exc_info=task.exception())
            self._unsubscribe_all(client)
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

    async def _send_loop(self, client: _Client, ws: WebSocket) -> None:
        try:
            while True:
                is_signal, frame = await client.queue.get()
                await ws.send_text(frame)
                (self._sent_signal if is_signal else self._sent_control).inc()
        except (WebSocketDisconnect, OSError, RuntimeError):
            client.disconnected = True
            client.end(None)
        except Exception:
            log.exception("ws %d: sending failed", client.id)
            client.end(CLOSE_INTERNAL, "internal error", "error")

    async def _receive_loop(self, client: _Client, ws: WebSocket, authenticated: bool) -> None:
        try:
            if not authenticated:
                authenticated = await self._authenticate(client, ws)
                if not authenticated:
                    return
            while True:
                data = await self._receive(client, ws)
                if data is None:
                    return
                self._handle(client, data)
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

    async def _authenticate(self, client: _Client, ws: WebSocket) -> bool:
        try:
            async with asyncio.timeout(self.limits.auth_timeout_s):
                data = await self._receive(client, ws)
        except TimeoutError:
            client.end(CLOSE_POLICY, "no API key within the time allowed", "unauthorized")
            return False
        if data is None:
            return False
        body = self._parse(client, data, quiet=True)
        key = None
        if body is not None and body.get("op") == "auth":
            try:
                key = _Auth.model_validate(body).key
            except ValidationError:
                key = None
        if key is None or not self._check_key(key):
            reason = "invalid API key" if key is not None else "API key required: send {op: auth, key} first"
            client.end(CLOSE_POLICY, reason, "unauthorized")
            return False
        self._push(client, _frame("auth", _msg_id(body), ok=True))
        return True

    # -- messages ----------------------------------------------------------------------------------
    def _parse(self, client: _Client, data: str | bytes, *, quiet: bool = False) -> dict[str, Any] | None:
        size = len(data.encode()) if isinstance(data, str) else len(data)
        if size > self.limits.max_frame_bytes:
            if not quiet:
                self._error(
                    client,
                    None,
                    "frame_too_large",
                    f"frames are limited to {self.limits.max_frame_bytes} bytes",
                    {"limit": self.limits.max_frame_bytes, "size": size},
                )
            return None
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            if not quiet:
                self._error(client, None, "bad_json", 'expected a JSON object such as {"op": "ping"}')
            return None
        return body

    def _handle(self, client: _Client, data: str | bytes) -> None:
        body = self._parse(client, data)
        if body is None:
            return
        op = body.get("op")
        msg_id = _msg_id(body)
        if op not in _OPS:
            self._error(client, msg_id, "unknown_op", f"unknown op {op!r}", {"ops": list(_OPS)})
            return
        try:
            if op == "ping":
                self._push(client, _frame("pong", _Message.model_validate(body).id, time_ms=int(time.time() * 1000)))
            elif op == "auth":
                auth = _Auth.model_validate(body)
                if self._keys_enabled and not self._check_key(auth.key):
                    self._error(client, auth.id, "invalid_key", "invalid API key (this connection stays authenticated)")
                else:
                    self._push(client, _frame("auth", auth.id, ok=True))
            elif op == "subscribe":
                self._subscribe(client, _Symbols.model_validate(body))
            else:
                self._unsubscribe(client, _Symbols.model_validate(body))
        except ValidationError as exc:
            problems = [
                {"loc": [str(p) for p in e["loc"]], "message": e["msg"]} for e in exc.errors(include_input=False)
            ]
            self._error(client, msg_id, "bad_message", f"invalid {op} message", {"errors": problems})

    def _symbols(self, raw: Sequence[Any]) -> tuple[list[str], list[str]]:
        known: list[str] = []
        unknown: list[str] = []
        for item in raw:
            name = self._cache.normalise(item) if isinstance(item, str) else None
            if name is None:
                unknown.append(str(item)[:64])
            elif name not in known:
                known.append(name)
        return known, unknown

    def _subscribe(self, client: _Client, msg: _Symbols) -> None:
        known, unknown = self._symbols(msg.symbols)
        total = len(client.symbols | set(known))
        if total > self.limits.max_symbols:
            self._error(
                client,
                msg.id,
                "too_many_symbols",
                f"at most {self.limits.max_symbols} symbols per connection",
                {"limit": self.limits.max_symbols, "subscribed": len(client.symbols), "requested": known},
            )
            return
        if unknown:
            self._error(
                client,
                msg.id,
                "unknown_symbols",
                f"not served here: {', '.join(unknown)}",
                {"symbols": unknown, "configured": list(self._cache.symbols)},
            )
            if not known:
                return
        for symbol in known:
            client.symbols.add(symbol)
            self._by_symbol.setdefault(symbol, set()).add(client)
        # Ack, then the current value of each: queued in order, with no await in between, so a
        # publish cannot slip between the snapshot and the subscription.
        self._push(client, _frame("subscribe", msg.id, ok=True, symbols=known, subscribed=sorted(client.symbols)))
        for symbol in known:
            answer = self._cache.status(symbol)
            if isinstance(answer, CachedSignal):
                try:
                    client.queue.put_nowait((True, answer.frame))
                except asyncio.QueueFull:
                    self._evict(client)
            else:
                d = answer.details()
                self._push(
                    client,
                    _frame(
                        "unavailable",
                        symbol=symbol,
                        reason=answer.reason,
                        message=answer.message,
                        retry_after_s=answer.retry_after_s,
                        no_signal=d["no_signal"],
                    ),
                )
            if client.done.is_set():
                return

    def _unsubscribe(self, client: _Client, msg: _Symbols) -> None:
        known, _unknown = self._symbols(msg.symbols)
        removed = [s for s in known if s in client.symbols]
        for symbol in removed:
            client.symbols.discard(symbol)
            subs = self._by_symbol.get(symbol)
            if subs is not None:
                subs.discard(client)
                if not subs:
                    del self._by_symbol[symbol]
        self._push(client, _frame("unsubscribe", msg.id, ok=True, symbols=removed, subscribed=sorted(client.symbols)))

    def _error(
        self,
        client: _Client,
        msg_id: MessageId,
        code: str,
        message: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        self._metrics.ws_error_frames.labels(code).inc()
        self._push(client, _frame("error", msg_id, error={"code": code, "message": message, "details": details or {}}))

    # -- shutdown ----------------------------------------------------------------------------------
    async def close(self, timeout_s: float = 5.0) -> None:
        """Close every connection with 1001 and wait (bounded) for them to end. Safe twice."""
        self._closing = True
        for client in tuple(self._clients):
            client.end(CLOSE_GOING_AWAY, "server shutting down", "shutdown")
        if self._clients:
            try:
                async with asyncio.timeout(timeout_s):
                    await self._idle.wait()
            except TimeoutError:
                log.warning("%d WebSocket clients still open after %.1f s", len(self._clients), timeout_s)
