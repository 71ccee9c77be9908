"""REST kline client: envelope checks, newest-first handling, open-row drop, 403 ban, rate limit.

Bybit is the peer here, so an httpx MockTransport stands in for it (a real transport seam, not a
patched module); the simulator-backed end-to-end tests cover the same client over real sockets.
"""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from streaming.errors import RestBanned, RestRejected, RestRetryable
from streaming.ratelimit import RateLimiter
from streaming.rest import BybitRest

M = 60_000
T = 1_700_000_000_000 - 1_700_000_000_000 % M


def envelope(rows: list[list[str]], *, code: int = 0, time_ms: int = T + 3 * M + 5_000) -> bytes:
    return orjson.dumps(
        {
            "retCode": code,
            "retMsg": "OK" if code == 0 else "err",
            "result": {"list": rows} if code == 0 else {},
            "retExtInfo": {},
            "time": time_ms,
        }
    )


def row(start: int, close: str = "10.5") -> list[str]:
    return [str(start), "10", "11", "9.5", close, "3.25", "33.1"]


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def client(handler: httpx.MockTransport, clock: FakeClock | None = None) -> BybitRest:
    return BybitRest("http://bybit.test", rate_per_s=1000, transport=handler, monotonic=clock or FakeClock())


async def test_rows_are_reversed_and_the_open_row_dropped() -> None:
    seen: list[httpx.Request] = []

    def handle(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        # newest first; the bar starting at T+3M is still open at time T+3M+5s
        return httpx.Response(200, content=envelope([row(T + 3 * M), row(T + 2 * M), row(T + M), row(T)]))

    rest = client(httpx.MockTransport(handle))
    page = await rest.klines("BTCUSDT", "1", limit=4)
    assert [b.start for b in page.bars] == [T, T + M, T + 2 * M]
    assert page.server_time == T + 3 * M + 5_000
    assert page.oldest_start == T
    assert str(page.bars[0].close) == "10.5"
    q = seen[0].url.params
    assert (q["category"], q["symbol"], q["interval"], q["limit"]) == ("linear", "BTCUSDT", "1", "4")
    await rest.close()


@pytest.mark.parametrize(
    ("code", "error"), [(10001, RestRejected), (10029, RestRejected), (10006, RestRetryable), (10016, RestRetryable)]
)
async def test_error_envelopes_with_http_200(code: int, error: type[Exception]) -> None:
    rest = client(httpx.MockTransport(lambda req: httpx.Response(200, content=envelope([], code=code))))
    with pytest.raises(error, match=f"retCode {code}"):
        await rest.klines("BTCUSDT", "1")
    await rest.close()


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[]",
        b'{"retCode":0,"result":{"list":[]}}',
        orjson.dumps({"retCode": 0, "time": 1, "result": {"list": [["1", "x", "2", "1", "1", "1", "1"]]}}),
        orjson.dumps({"retCode": 0, "time": 1, "result": {"list": [["1", "5", "2", "1", "1", "1", "1"]]}}),
    ],
)
async def test_malformed_bodies_are_retryable_errors(body: bytes) -> None:
    rest = client(httpx.MockTransport(lambda req: httpx.Response(200, content=body)))
    with pytest.raises(RestRetryable):
        await rest.klines("BTCUSDT", "1")
    await rest.close()


async def test_403_stops_all_rest_for_ten_minutes() -> None:
    calls = 0

    def handle(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return httpx.Response(403, text="access too frequent")

    clock = FakeClock()
    rest = client(httpx.MockTransport(handle), clock)
    with pytest.raises(RestBanned):
        await rest.klines("BTCUSDT", "1")
    assert rest.banned_until == clock.t + 600
    clock.t += 599
    with pytest.raises(RestBanned):
        await rest.klines("ETHUSDT", "60")  # another symbol: still no request goes out
    assert calls == 1
    clock.t += 2
    with pytest.raises(RestBanned):
        await rest.klines("BTCUSDT", "1")  # the ban lifted, so this one was sent (and banned again)
    assert calls == 2
    await rest.close()


async def test_5xx_429_and_network_errors_are_retryable() -> None:
    for resp in (httpx.Response(500), httpx.Response(429), httpx.Response(502)):
        rest = client(httpx.MockTransport(lambda req, r=resp: r))
        with pytest.raises(RestRetryable):
            await rest.klines("BTCUSDT", "1")
        await rest.close()

    def refuse(req: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    rest = client(httpx.MockTransport(refuse))
    with pytest.raises(RestRetryable, match="ConnectError"):
        await rest.klines("BTCUSDT", "1")
    await rest.close()


async def test_rate_limiter_spaces_requests_beyond_the_burst() -> None:
    clock = FakeClock()
    limiter = RateLimiter(rate_per_s=10, burst=2, monotonic=clock)
    await limiter.acquire()
    await limiter.acquire()
    waiter = asyncio.ensure_future(limiter.acquire())
    await asyncio.sleep(0.01)
    assert not waiter.done()  # the bucket is empty and the (fake) clock has not moved
    clock.t += 0.1
    await asyncio.wait_for(waiter, 1.0)
