"""Exceptions raised by the streaming package.

Every error that crosses the package boundary derives from :class:`StreamingError`, so a caller can
catch one type. Third-party errors (redis, httpx, websockets) are translated here with ``from exc``.
"""

from __future__ import annotations


class StreamingError(Exception):
    """Base of every error raised by ``streaming``."""


class FrameError(StreamingError, ValueError):
    """A WebSocket frame is not a valid Bybit v5 public message.

    This is the parser's documented error: :func:`streaming.frames.parse_frame` returns a typed
    message or raises ``FrameError`` (never anything else) for any input bytes.
    """


class UnknownTopicError(FrameError):
    """A well-formed push for a topic this service does not consume."""


class StoreError(StreamingError):
    """The window store failed (Redis unreachable, script error, ...)."""


class StoreUnavailable(StoreError):
    """The store cannot be reached right now; the operation may be retried."""


class RestError(StreamingError):
    """A Bybit REST call failed."""


class RestBanned(RestError):
    """HTTP 403: Bybit's IP limit (or a forbidden region). All REST stops until ``until_monotonic``."""

    def __init__(self, message: str, until_monotonic: float) -> None:
        super().__init__(message)
        self.until_monotonic = until_monotonic


class RestRetryable(RestError):
    """A transient failure (network, 5xx, 429, retCode 10000/10006/10016): retry later."""


class RestRejected(RestError):
    """The request itself is wrong (retCode 10001, 10029, HTTP 400/404): retrying will not help."""


class ConnectionLost(StreamingError):
    """A WebSocket connection ended; ``reason`` is a short label used in logs and metrics."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
