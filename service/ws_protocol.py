"""The ``/ws`` protocol, sans I/O: client messages in, replies and actions out; no sockets, no tasks.

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
    -> {"op": "performance", "symbols": ["BTCUSDT"]}
    <- {"op": "performance", "symbol": "BTCUSDT", "performance": {...}}   the track record, per symbol
    <- {"op": "error", "error": {"code": "unknown_symbols", "message": "...", "details": {...}}}

A ``performance`` frame's ``performance`` is the symbol's track record as ``GET
/signal/{symbol}/performance`` has it (refreshed every ``api_performance_refresh_s``), or ``null``
before the API has read it. A client message may carry an ``"id"`` (string or integer); the answer to it echoes it. A
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

Floods: a client may send ``api_ws_max_msgs_per_s`` messages a second on average, in bursts of up
to ``api_ws_burst`` (a token bucket per connection); the message past that closes it with **1008**
(``rate_limited``), so one client's ping flood costs the others at most one burst of work.

Close codes: 1000 client's own; 1008 policy — missing, invalid or URL-borne API key, no key
within ``api_ws_auth_timeout_s``, or a message flood; 1009 frame too large (protocol level); 1011 internal error; 1012
server restart (uvicorn's shutdown); 1001 going away (hub shutdown); 1013 slow consumer.

:class:`WsSession` is one connection's protocol state (its subscriptions, whether it has
authenticated). The hub (:mod:`service.ws`) feeds it each frame it receives and carries out what
comes back, in order: :class:`Reply` (a frame to queue), :class:`Subscribed` / :class:`Unsubscribed`
(update the fan-out index) and :class:`Close`. Tests drive it with plain strings.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from service.signal_cache import CachedSignal, Unavailable

__all__ = [
    "CLOSE_GOING_AWAY",
    "CLOSE_INTERNAL",
    "CLOSE_POLICY",
    "CLOSE_SLOW_CONSUMER",
    "Action",
    "Close",
    "Reply",
    "Subscribed",
    "Unsubscribed",
    "WsLimits",
    "WsSession",
    "unavailable_frame",
]

CLOSE_GOING_AWAY = 1001
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_SLOW_CONSUMER = 1013

_OPS = ("auth", "subscribe", "unsubscribe", "ping", "performance")

MessageId = str | int | None


@dataclass(frozen=True)
class WsLimits:
    queue: int = 256  # frames waiting to be sent, per client
    max_symbols: int = 50  # subscribed at once, per connection
    max_frame_bytes: int = 16_384  # a client frame
    auth_timeout_s: float = 5.0  # for the first-message key
    close_timeout_s: float = 5.0  # for our close frame to get out
    max_msgs_per_s: float = 20.0  # client messages a second, on average
    burst: int = 100  # client messages at once before the average applies


@dataclass(eq=False, slots=True)
class _Bucket:
    """A token bucket: ``burst`` tokens, refilled at ``rate`` a second on the ``now`` clock."""

    rate: float
    burst: int
    now: Callable[[], float]
    tokens: float = -1.0
    at: float = 0.0

    def take(self) -> bool:
        t = self.now()
        if self.tokens < 0:  # the first message: a full bucket
            self.tokens, self.at = float(self.burst), t
        self.tokens = min(float(self.burst), self.tokens + (t - self.at) * self.rate)
        self.at = t
        if self.tokens < 1.0:
            return False
        self.tokens -= 1.0
        return True


# -- client messages ---------------------------------------------------------------------------------


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    id: str | int | None = Field(default=None)


class _Symbols(_Message):
    symbols: list[Any] = Field(min_length=1, max_length=1000)


class _Auth(_Message):
    key: str = Field(min_length=1, max_length=512)


# -- what the hub is asked to do -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply:
    """Queue ``frame`` to this client. ``signal``: a signal push (counted apart from control frames);
    ``error``: the code of an error frame (counted)."""

    frame: str
    signal: bool = False
    error: str | None = None


@dataclass(frozen=True, slots=True)
class Subscribed:
    symbols: tuple[str, ...]  # newly subscribed: add this client to their subscribers


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    symbols: tuple[str, ...]  # no longer subscribed: remove this client from their subscribers


@dataclass(frozen=True, slots=True)
class Close:
    code: int
    reason: str
    outcome: str  # the connections metric's label


Action = Reply | Subscribed | Unsubscribed | Close


def _msg_id(body: dict[str, Any] | None) -> MessageId:
    """The client's ``id`` to echo: a string or an integer, else none."""
    raw = None if body is None else body.get("id")
    return raw if isinstance(raw, str | int) and not isinstance(raw, bool) else None


def unavailable_frame(answer: Unavailable) -> str:
    """``{"op": "unavailable", ...}``: why a symbol has no servable signal (on subscribe, and when a
    subscribed symbol's signal stops being servable)."""
    fields = {
        "symbol": answer.symbol,
        "reason": answer.reason,
        "message": answer.message,
        "retry_after_s": answer.retry_after_s,
        "no_signal": answer.details()["no_signal"],
    }
    return _frame("unavailable", **fields)


def _frame(op: str, msg_id: MessageId = None, **fields: Any) -> str:
    body: dict[str, Any] = {"op": op}
    if msg_id is not None:
        body["id"] = msg_id
    body.update(fields)
    return orjson.dumps(body).decode()


def _error(msg_id: MessageId, code: str, message: str, details: dict[str, Any] | None = None) -> Reply:
    body = {"code": code, "message": message, "details": details or {}}
    return Reply(_frame("error", msg_id, error=body), error=code)


# -- one connection --------------------------------------------------------------------------------------


@dataclass(eq=False)
class WsSession:
    """One connection's protocol state. ``normalise`` maps a client's symbol to a configured one
    (or None); ``status`` answers what is servable for a configured symbol (the signal cache)."""

    limits: WsLimits
    configured: Sequence[str]
    normalise: Callable[[str], str | None]
    status: Callable[[str], CachedSignal | Unavailable]
    keys_enabled: bool = False
    check_key: Callable[[str], bool] = lambda _key: True
    performance: Callable[[str], dict[str, Any] | None] = lambda _symbol: None  # a symbol's track record
    wall_ms: Callable[[], int] = lambda: int(time.time() * 1000)
    monotonic: Callable[[], float] = time.monotonic
    symbols: set[str] = field(default_factory=set)
    authenticated: bool = False

    def __post_init__(self) -> None:
        self.authenticated = not self.keys_enabled
        self._bucket = _Bucket(self.limits.max_msgs_per_s, self.limits.burst, self.monotonic)

    def _flooding(self) -> list[Action] | None:
        if self._bucket.take():
            return None
        rate = f"{self.limits.max_msgs_per_s:g}"
        return [Close(CLOSE_POLICY, f"too many messages: at most {rate} a second", "rate_limited")]

    def open(self, bearer: str | None, *, key_in_url: bool = False) -> list[Action]:
        """The handshake: ``bearer`` is the ``Authorization: Bearer`` key, if the request had one;
        ``key_in_url``: the URL carries a key parameter (refused even when valid)."""
        if key_in_url:
            return [Close(CLOSE_POLICY, "API keys are not accepted in the URL", "unauthorized")]
        if self.keys_enabled and bearer is not None:
            if not self.check_key(bearer):
                return [Close(CLOSE_POLICY, "invalid API key", "unauthorized")]
            self.authenticated = True
        return []

    def auth_timed_out(self) -> list[Action]:
        return [Close(CLOSE_POLICY, "no API key within the time allowed", "unauthorized")]

    def authenticate(self, data: str | bytes) -> list[Action]:
        """The first message of a connection that must authenticate: an ``auth`` with a valid key."""
        if (flood := self._flooding()) is not None:
            return flood
        body, _ = self._parse(data)
        key = None
        if body is not None and body.get("op") == "auth":
            try:
                key = _Auth.model_validate(body).key
            except ValidationError:
                key = None
        if key is None or not self.check_key(key):
            reason = "invalid API key" if key is not None else "API key required: send {op: auth, key} first"
            return [Close(CLOSE_POLICY, reason, "unauthorized")]
        self.authenticated = True
        return [Reply(_frame("auth", _msg_id(body), ok=True))]

    def receive(self, data: str | bytes) -> list[Action]:
        """A client message of an authenticated connection; errors are frames, never a close (but a
        flood is closed: see the module's "Floods")."""
        if (flood := self._flooding()) is not None:
            return flood
        body, problem = self._parse(data)
        if body is None:
            return [problem] if problem is not None else []
        op = body.get("op")
        msg_id = _msg_id(body)
        if op not in _OPS:
            return [_error(msg_id, "unknown_op", f"unknown op {op!r}", {"ops": list(_OPS)})]
        try:
            if op == "ping":
                return [Reply(_frame("pong", _Message.model_validate(body).id, time_ms=self.wall_ms()))]
            if op == "auth":
                auth = _Auth.model_validate(body)
                if self.keys_enabled and not self.check_key(auth.key):
                    return [_error(auth.id, "invalid_key", "invalid API key (this connection stays authenticated)")]
                return [Reply(_frame("auth", auth.id, ok=True))]
            if op == "subscribe":
                return self._subscribe(_Symbols.model_validate(body))
            if op == "performance":
                return self._performance(_Symbols.model_validate(body))
            return self._unsubscribe(_Symbols.model_validate(body))
        except ValidationError as exc:
            problems = [
                {"loc": [str(p) for p in e["loc"]], "message": e["msg"]} for e in exc.errors(include_input=False)
            ]
            return [_error(msg_id, "bad_message", f"invalid {op} message", {"errors": problems})]

    def _parse(self, data: str | bytes) -> tuple[dict[str, Any] | None, Reply | None]:
        """The message as a JSON object, or None and the error frame saying why."""
        size = len(data.encode()) if isinstance(data, str) else len(data)
        limit = self.limits.max_frame_bytes
        if size > limit:
            message = f"frames are limited to {limit} bytes"
            return None, _error(None, "frame_too_large", message, {"limit": limit, "size": size})
        try:
            body = orjson.loads(data)
        except orjson.JSONDecodeError:
            body = None
        if not isinstance(body, dict):
            return None, _error(None, "bad_json", 'expected a JSON object such as {"op": "ping"}')
        return body, None

    def _known(self, raw: Sequence[Any]) -> tuple[list[str], list[str]]:
        known: list[str] = []
        unknown: list[str] = []
        for item in raw:
            name = self.normalise(item) if isinstance(item, str) else None
            if name is None:
                unknown.append(str(item)[:64])
            elif name not in known:
                known.append(name)
        return known, unknown

    def _subscribe(self, msg: _Symbols) -> list[Action]:
        known, unknown = self._known(msg.symbols)
        if len(self.symbols | set(known)) > self.limits.max_symbols:
            limit = self.limits.max_symbols
            details = {"limit": limit, "subscribed": len(self.symbols), "requested": known}
            return [_error(msg.id, "too_many_symbols", f"at most {limit} symbols per connection", details)]
        actions: list[Action] = []
        if unknown:
            details = {"symbols": unknown, "configured": list(self.configured)}
            actions.append(_error(msg.id, "unknown_symbols", f"not served here: {', '.join(unknown)}", details))
            if not known:
                return actions
        self.symbols.update(known)
        # Subscribe, ack, then the current value of each: the hub carries these out in order with
        # no await in between, so a publish cannot slip between the snapshot and the subscription.
        actions.append(Subscribed(tuple(known)))
        actions.append(Reply(_frame("subscribe", msg.id, ok=True, symbols=known, subscribed=sorted(self.symbols))))
        for symbol in known:
            answer = self.status(symbol)
            if isinstance(answer, CachedSignal):
                actions.append(Reply(answer.frame, signal=True))
            else:
                actions.append(Reply(unavailable_frame(answer)))
        return actions

    def _performance(self, msg: _Symbols) -> list[Action]:
        known, unknown = self._known(msg.symbols)
        actions: list[Action] = []
        if unknown:
            details = {"symbols": unknown, "configured": list(self.configured)}
            actions.append(_error(msg.id, "unknown_symbols", f"not served here: {', '.join(unknown)}", details))
        for symbol in known:
            actions.append(Reply(_frame("performance", msg.id, symbol=symbol, performance=self.performance(symbol))))
        return actions

    def _unsubscribe(self, msg: _Symbols) -> list[Action]:
        known, _unknown = self._known(msg.symbols)
        removed = [s for s in known if s in self.symbols]
        self.symbols.difference_update(removed)
        ack = _frame("unsubscribe", msg.id, ok=True, symbols=removed, subscribed=sorted(self.symbols))
        return [Unsubscribed(tuple(removed)), Reply(ack)]
