"""Bybit REST ``GET /v5/market/kline`` client: rate-limited, envelope-checked, ban-aware.

Rules (bybit_protocol.md §5): errors come back with HTTP 200 and ``retCode != 0``; rows are newest
first and the first may be the still-open candle (no confirm flag) — dropped by comparing
``start + interval`` with the server ``time`` of the envelope; HTTP 403 means the IP limit
(600 req / 5 s) was hit: stop *all* REST for at least 10 minutes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson

from streaming.errors import RestBanned, RestRejected, RestRetryable
from streaming.klines import Bar, interval_ms
from streaming.ratelimit import RateLimiter

__all__ = ["BybitRest", "KlinePage"]

log = logging.getLogger(__name__)

BAN_SECONDS = 600.0
FINAL_AFTER_MS = 2_000
_RETRYABLE_CODES = {10000, 10006, 10016}


@dataclass(frozen=True)
class KlinePage:
    bars: list[Bar]  # closed bars only, ascending by start
    server_time: int  # envelope ``time`` (exchange ms)
    oldest_start: int | None  # oldest row returned (open or closed), for paging backwards


class BybitRest:
    def __init__(
        self,
        base_url: str,
        *,
        rate_per_s: float = 20.0,
        timeout_s: float = 10.0,
        ban_seconds: float = BAN_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._client = httpx.AsyncClient(base_url=base_url, timeout=timeout_s, transport=transport)
        self._limiter = RateLimiter(rate_per_s, monotonic=monotonic)
        self._ban_seconds = ban_seconds
        self._clock = monotonic
        self.banned_until = 0.0

    @property
    def banned(self) -> bool:
        return self._clock() < self.banned_until

    async def klines(self, symbol: str, interval: str, *, end: int | None = None, limit: int = 1000) -> KlinePage:
        """One page of closed bars ending at ``end`` (inclusive; newest if None)."""
        if self.banned:
            raise RestBanned(
                f"REST paused after HTTP 403 for another {self.banned_until - self._clock():.0f} s",
                self.banned_until,
            )
        params: dict[str, str | int] = {
            "category": "linear",
            "symbol": symbol,
            "interval": interval,
            "limit": max(1, min(limit, 1000)),
        }
        if end is not None:
            params["end"] = end
        await self._limiter.acquire()
        try:
            resp = await self._client.get("/v5/market/kline", params=params)
        except httpx.HTTPError as exc:
            raise RestRetryable(f"kline {symbol} {interval}: {type(exc).__name__}: {exc}") from exc
        if resp.status_code == 403:
            self.banned_until = self._clock() + self._ban_seconds
            log.error(
                "Bybit REST answered 403 (%s); pausing all REST for %.0f s",
                resp.text[:100],
                self._ban_seconds,
            )
            raise RestBanned("HTTP 403 from Bybit REST (IP rate limit or forbidden region)", self.banned_until)
        if resp.status_code == 429 or resp.status_code >= 500:
            raise RestRetryable(f"kline {symbol} {interval}: HTTP {resp.status_code}")
        if resp.status_code != 200:
            raise RestRejected(f"kline {symbol} {interval}: HTTP {resp.status_code}")
        return _parse_page(resp.content, symbol, interval)

    async def close(self) -> None:
        await self._client.aclose()


def _parse_page(body: bytes, symbol: str, interval: str) -> KlinePage:
    where = f"kline {symbol} {interval}"
    try:
        env = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise RestRetryable(f"{where}: body is not JSON") from exc
    if not isinstance(env, dict):
        raise RestRetryable(f"{where}: envelope is not an object")
    code = env.get("retCode")
    if code != 0:
        msg = f"{where}: retCode {code} {env.get('retMsg')!r}"
        if code in _RETRYABLE_CODES:
            raise RestRetryable(msg)
        raise RestRejected(msg)
    server_time = env.get("time")
    result = env.get("result")
    rows = result.get("list") if isinstance(result, dict) else None
    if type(server_time) is not int or not isinstance(rows, list):
        raise RestRetryable(f"{where}: envelope without 'time' or 'result.list'")
    step = interval_ms(interval)
    bars: list[Bar] = []
    oldest: int | None = None
    for row in rows:
        bar = _parse_row(row, where)
        if bar.start % step:
            raise RestRetryable(f"{where}: row start {bar.start} is not aligned to the interval")
        oldest = bar.start if oldest is None else min(oldest, bar.start)
        # The newest row may still be open (no confirm flag, P2); a row that closed a moment ago may
        # not be final yet, and the WS confirm=true bar is the one that should win (P17).
        if bar.start + step <= server_time - FINAL_AFTER_MS:
            bars.append(bar)
    bars.sort(key=lambda b: b.start)
    return KlinePage(bars=bars, server_time=server_time, oldest_start=oldest)


def _parse_row(row: Any, where: str) -> Bar:
    if not isinstance(row, list) or len(row) < 6 or not all(isinstance(v, str) for v in row):
        raise RestRetryable(f"{where}: malformed row {str(row)[:80]}")
    try:
        values = [Decimal(v) for v in row[1:7]] + ([Decimal(0)] if len(row) < 7 else [])
        bar = Bar(int(row[0]), *values[:6])
        if not 0 <= bar.start < 2**53:
            raise ValueError("start out of range")
    except (InvalidOperation, ValueError) as exc:
        raise RestRetryable(f"{where}: malformed row {str(row)[:80]}") from exc
    if not all(v.is_finite() for v in values) or bar.low <= 0 or bar.volume < 0:
        raise RestRetryable(f"{where}: out-of-range row {str(row)[:80]}")
    if not bar.low <= min(bar.open, bar.close) or not max(bar.open, bar.close) <= bar.high:
        raise RestRetryable(f"{where}: inconsistent OHLC {str(row)[:80]}")
    return bar
