"""The API's in-process copy of the latest signal per symbol, and the policy of what is servable.

Requests never touch Redis: ``GET /signal/{symbol}`` and the WebSocket snapshot read
:class:`SignalCache`; a feed (:mod:`service.signal_feed`) fills it.

The cache only moves forward: a signal replaces the cached one only for a newer bar, whichever path
it came by, so a prime racing a pushed message can never turn the answer back.

Time is the EXCHANGE clock (DESIGN.md "Time"): the newest bar close the API has seen — from signals,
no-signal records, the ingestor's bar-closed events in Redis, and an in-process ingestor's clock
when there is one. A signal is servable while ``exchange now - its bar close <= max_age``
(2 finest bars + grace), never judged on the local wall clock — and while the exchange clock itself
keeps moving: when the feed dies the exchange clock stops with it, so a signal is also stale once
the clock has not advanced for ``max_silence_s`` wall seconds (``CANDLECAST_API_FEED_MAX_SILENCE_S``;
in a replay the feed advances as fast as it replays; one slower than a bar per 180 wall seconds
needs a larger bound or 0).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from inference.signal import NoSignal, Signal
from service.metrics import Freshness
from service.ws_wire import text_frame
from streaming.clock import MAX_AHEAD_MS, ExchangeClock, from_the_future
from streaming.klines import interval_ms

__all__ = ["CachedSignal", "SignalCache", "Unavailable"]

log = logging.getLogger(__name__)

Reason = Literal["warming_up", "no_signal", "stale"]
WARMING_UP_RETRY_S = 5


@dataclass(frozen=True, slots=True)
class CachedSignal:
    signal: Signal
    raw: bytes  # the JSON exactly as the worker wrote it: served as is, never re-serialised
    frame: str  # the WebSocket push, built once and shared by every subscriber
    wire: bytes  # ``frame`` as one serialised WebSocket text frame (:mod:`service.ws_wire`)

    @classmethod
    def build(cls, signal: Signal, raw: bytes) -> CachedSignal:
        # symbol is [A-Z0-9]+ (validated by Settings and matched against them): safe to splice in.
        payload = b'{"op":"signal","symbol":"' + signal.symbol.encode() + b'","signal":' + raw + b"}"
        return cls(signal, raw, payload.decode(), text_frame(payload))


@dataclass(frozen=True, slots=True)
class Unavailable:
    """Why a symbol has no servable signal right now."""

    symbol: str
    reason: Reason
    message: str
    retry_after_s: int
    max_age_ms: int
    exchange_time_ms: int | None
    last: Signal | None  # the latest signal, when there is one (too old to serve)
    no_signal: NoSignal | None  # the newest bar's "why no signal" record, when newer than ``last``

    def details(self) -> dict[str, Any]:
        last = self.last
        ns = self.no_signal
        return {
            "symbol": self.symbol,
            "reason": self.reason,
            "retry_after_s": self.retry_after_s,
            "exchange_time_ms": self.exchange_time_ms,
            "max_age_ms": self.max_age_ms,
            "last_signal_bar": None
            if last is None
            else {"interval": last.bar.interval, "start": last.bar.start, "close_time": last.bar.close_time},
            "age_ms": None
            if last is None or self.exchange_time_ms is None
            else self.exchange_time_ms - last.bar.close_time,
            "no_signal": None
            if ns is None
            else {
                "reason": ns.reason,
                "detail": ns.detail,
                "bar": {"interval": ns.bar.interval, "start": ns.bar.start, "close_time": ns.bar.close_time},
                "produced_at": ns.produced_at,
            },
        }


class SignalCache:
    """Latest signal and no-signal record per configured symbol, and the exchange clock."""

    def __init__(
        self,
        symbols: Sequence[str],
        finest_interval: str,
        grace_s: float,
        *,
        external_clock: ExchangeClock | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        max_silence_s: float = 0.0,
        wall_ms: Callable[[], int] = lambda: int(time.time() * 1000),
        max_future_ms: int = MAX_AHEAD_MS,
    ) -> None:
        self.symbols = tuple(symbols)
        self._known = frozenset(self.symbols)
        self.interval_ms = interval_ms(finest_interval)
        self.max_age_ms = 2 * self.interval_ms + int(grace_s * 1000)
        self.retry_after_s = max(1, min(30, math.ceil(self.interval_ms / 2000)))
        self.clock = ExchangeClock()
        self._external = external_clock
        self._monotonic = monotonic
        self.max_silence_s = max_silence_s  # 0: off
        self._wall_ms = wall_ms
        self.max_future_ms = max_future_ms
        self._advanced_at: float | None = None
        self._latest: dict[str, CachedSignal] = {}
        self._no_signal: dict[str, NoSignal] = {}
        self._listeners: list[Callable[[CachedSignal], None]] = []

    # -- input -----------------------------------------------------------------------------------
    def add_listener(self, listener: Callable[[CachedSignal], None]) -> None:
        """``listener`` is called (synchronously) with every new latest signal."""
        self._listeners.append(listener)

    def from_the_future(self, close_ms: int) -> bool:
        """A time further ahead of the local wall clock than any real or replayed bar can be."""
        return from_the_future(close_ms, self._wall_ms(), self.max_future_ms)

    def observe(self, close_ms: int) -> None:
        if self.from_the_future(close_ms):
            log.warning("ignoring an exchange time %d ahead of the local clock", close_ms)
            return
        if close_ms > self.clock.now_ms():
            self.clock.observe(close_ms)
            self._advanced_at = self._monotonic()

    def offer_json(self, raw: bytes) -> CachedSignal | None:
        """A signal as published; raises :class:`SignalFormatError` for anything else."""
        return self._offer(Signal.from_json(raw), raw)

    def offer(self, signal: Signal, raw: bytes | None = None) -> CachedSignal | None:
        """``raw``: the bytes ``signal`` was parsed from, when the caller has them (served as they are)."""
        return self._offer(signal, signal.to_json() if raw is None else raw)

    def _offer(self, signal: Signal, raw: bytes) -> CachedSignal | None:
        symbol = signal.symbol
        if symbol not in self._known or self.from_the_future(signal.bar.close_time):
            return None  # a bar from the future is no signal, and must not move the clock either
        self.observe(signal.bar.close_time)
        current = self._latest.get(symbol)
        if current is not None and current.signal.bar.start >= signal.bar.start:
            return None
        cached = CachedSignal.build(signal, raw)
        self._latest[symbol] = cached
        ns = self._no_signal.get(symbol)
        if ns is not None and ns.bar.start <= signal.bar.start:
            del self._no_signal[symbol]
        for listener in self._listeners:
            listener(cached)
        return cached

    def set_no_signal(self, symbol: str, record: NoSignal | None) -> None:
        """The store's current "why no signal" record for ``symbol`` (None: it has none)."""
        if symbol not in self._known or (record is not None and self.from_the_future(record.bar.close_time)):
            return
        current = self._latest.get(symbol)
        if record is None or (current is not None and current.signal.bar.start >= record.bar.start):
            self._no_signal.pop(symbol, None)
            return
        self.observe(record.bar.close_time)
        self._no_signal[symbol] = record

    # -- output ----------------------------------------------------------------------------------
    def normalise(self, symbol: str) -> str | None:
        """The configured symbol ``symbol`` names (ASCII letters and digits, any case), or None.

        Nothing else is folded: no surrounding whitespace, and no non-ASCII letter that ``upper()``
        would turn into an ASCII one (U+017F, the long s, → ``S``), so one symbol has one spelling per case."""
        if not (symbol.isascii() and symbol.isalnum()):
            return None
        s = symbol.upper()
        return s if s in self._known else None

    def now_ms(self) -> int | None:
        """The exchange clock: the newest bar close seen, or an in-process ingestor's clock if later."""
        if self._external is not None:
            self.observe(self._external.now_ms())
        return self.clock.now_ms() or None

    def seconds_since_advance(self) -> float | None:
        """Wall seconds since the exchange clock last moved (None before any data)."""
        self.now_ms()
        return None if self._advanced_at is None else self._monotonic() - self._advanced_at

    def latest(self, symbol: str) -> CachedSignal | None:
        return self._latest.get(symbol)

    def status(self, symbol: str) -> CachedSignal | Unavailable:
        """The signal to serve for a configured ``symbol``, or why there is none."""
        cached = self._latest.get(symbol)
        ns = self._no_signal.get(symbol)
        now = self.now_ms()
        if cached is None:
            if ns is not None:
                return self._unavailable(symbol, "no_signal", None, ns, now)
            return self._unavailable(symbol, "warming_up", None, None, now)
        if now is not None and now - cached.signal.bar.close_time > self.max_age_ms:
            if ns is not None and ns.bar.start > cached.signal.bar.start:
                return self._unavailable(symbol, "no_signal", cached.signal, ns, now)
            return self._unavailable(symbol, "stale", cached.signal, None, now)
        silence = self.seconds_since_advance()
        if self.max_silence_s > 0 and silence is not None and silence > self.max_silence_s:
            return self._unavailable(symbol, "stale", cached.signal, None, now, silence_s=silence)
        return cached

    def _unavailable(
        self,
        symbol: str,
        reason: Reason,
        last: Signal | None,
        ns: NoSignal | None,
        now: int | None,
        *,
        silence_s: float | None = None,
    ) -> Unavailable:
        if reason == "warming_up":
            message = f"no signal for {symbol} yet: the service is warming up"
            retry = WARMING_UP_RETRY_S
        elif reason == "no_signal":
            assert ns is not None
            message = f"no signal for {symbol} since the bar at {ns.bar.start}: {ns.reason}"
            retry = self.retry_after_s
        elif silence_s is not None:
            message = (
                f"the market data feed has not advanced for {silence_s:.0f} s (limit {self.max_silence_s:.0f} s):"
                f" the latest signal for {symbol} may no longer be current"
            )
            retry = self.retry_after_s
        else:
            message = f"the latest signal for {symbol} is older than {self.max_age_ms} ms on the exchange clock"
            retry = self.retry_after_s
        return Unavailable(symbol, reason, message, retry, self.max_age_ms, now, last, ns)

    def freshness(self) -> Freshness:
        return Freshness(
            exchange_time_ms=self.now_ms(),
            signal_close_ms={
                s: (c.signal.bar.close_time if (c := self._latest.get(s)) is not None else None) for s in self.symbols
            },
            available={s: isinstance(self.status(s), CachedSignal) for s in self.symbols},
            latest={s: c.signal for s in self.symbols if (c := self._latest.get(s)) is not None},
            max_age_ms=self.max_age_ms,
        )
