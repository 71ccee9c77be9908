"""Shared by the API tests: a real uvicorn server on 127.0.0.1:0 serving ``create_app``, settings,
signals, and WebSocket helpers (the ``websockets`` client). Its own checks are in test_kit.py."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from inference.runtime import CPU
from inference.signal import ComponentReport, Signal
from inference.signal_store import RedisSignalStore
from service.app import create_app
from service.bench import sample_signal
from service.server import ApiServer, server_config
from service.settings import Settings, load_settings
from tests.helpers import eventually

MINUTE = 60_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % (60 * MINUTE)
SYMBOLS = ("BTCUSDT", "ETHUSDT", "SOLUSDT")


def api_settings(redis_url: str | None, prefix: str = "cc", **overrides: Any) -> Settings:
    """Settings for a test API: three symbols, 1m finest bars, no wall-clock readiness check
    (test bars are from 2025), quick reconnects."""
    fields: dict[str, Any] = {
        "redis_url": redis_url,
        "redis_prefix": prefix,
        "symbols": list(SYMBOLS),
        "intervals": ["1", "5"],
        "api_ready_max_lag_s": 0,
        "api_reconnect_max_s": 0.2,
    } | overrides
    return load_settings(**fields)


def make_signal(start: int, symbol: str = "BTCUSDT", *, direction: str = "long", components: int = 2) -> Signal:
    """A well-formed signal for the 1m bar at ``start`` (``components`` makes it bigger)."""
    reports = tuple(
        ComponentReport(f"tcn_{i}m", "1", "next 1m bar", 0.55, 1.0, "v1", CPU, 0.4, "voted") for i in range(components)
    )
    return sample_signal(start, symbol, direction="short" if direction == "short" else "long", components=reports)


@dataclass
class Api:
    app: FastAPI
    base_url: str
    ws_url: str
    registry: CollectorRegistry
    server: ApiServer

    def http(self, **kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.base_url, timeout=10.0, **kwargs)

    def sample(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@asynccontextmanager
async def serving(
    settings: Settings,
    *,
    registry: CollectorRegistry | None = None,
    app: FastAPI | None = None,
    feed_up: bool = True,
    ws: Any = None,
    **kwargs: Any,
) -> AsyncIterator[Api]:
    """``create_app(settings)`` served by a real uvicorn on a free loopback port.

    With ``feed_up`` (the default) it yields only once the signal feed is subscribed and primed,
    as readiness reports it: a signal published before that would reach the cache by the prime,
    not by pub/sub, and a test counting pub/sub updates would depend on who wins the start-up race.
    ``ws``: uvicorn's WebSocket implementation, when not the production one (:func:`server_config`'s)."""
    registry = registry if registry is not None else CollectorRegistry()
    app = app if app is not None else create_app(settings, registry=registry, **kwargs)
    overrides = {} if ws is None else {"ws": ws}
    server = ApiServer(server_config(app, settings, host="127.0.0.1", port=0, **overrides))
    await server.start()
    try:
        if feed_up:
            await eventually(lambda: _feed_subscribed(server.url), 10, what="readiness: signal feed subscribed")
        yield Api(app, server.url, f"ws://127.0.0.1:{server.port}/ws", registry, server)
    finally:
        await server.close()


async def _feed_subscribed(base_url: str) -> bool:
    async with httpx.AsyncClient(base_url=base_url, timeout=5.0) as http:
        body = (await http.get("/readyz")).json()
    checks = body["checks"] if "checks" in body else body["error"]["details"]["checks"]
    return bool(checks["signal_feed"] == "up")


@asynccontextmanager
async def redis_signals(redis_url: str, prefix: str) -> AsyncIterator[RedisSignalStore]:
    """The worker's side: a signal store writing under ``prefix``; its keys are deleted after."""
    client = aioredis.Redis.from_url(redis_url)
    try:
        yield RedisSignalStore(client, prefix=prefix)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


def unique_prefix() -> str:
    return f"api-{uuid.uuid4().hex[:10]}"


@asynccontextmanager
async def served_from_redis(
    redis_url: str, **overrides: Any
) -> AsyncIterator[tuple[RedisSignalStore, Api, httpx.AsyncClient]]:
    """Under a fresh prefix: the worker's signal store, an API serving from it (``api_settings``
    with ``overrides``) and an HTTP client of that API."""
    prefix = unique_prefix()
    settings = api_settings(redis_url, prefix, **overrides)
    async with redis_signals(redis_url, prefix) as store, serving(settings) as api, api.http() as http:
        yield store, api, http


# --- WebSocket helpers ----------------------------------------------------------------------------


def ws_connect(url: str, **kwargs: Any) -> Any:
    return connect(url, proxy=None, open_timeout=5, close_timeout=2, **kwargs)


async def recv_json(ws: ClientConnection, within: float = 5.0) -> dict[str, Any]:
    frame = await asyncio.wait_for(ws.recv(), within)
    body = orjson.loads(frame)
    assert isinstance(body, dict)
    return body


async def send_json(ws: ClientConnection, body: dict[str, Any]) -> None:
    await ws.send(orjson.dumps(body).decode())


async def subscribe(ws: ClientConnection, symbols: Iterable[str], within: float = 5.0) -> list[dict[str, Any]]:
    """Subscribe; the ack and the snapshot frames (one per symbol) that follow it."""
    symbols = list(symbols)
    await send_json(ws, {"op": "subscribe", "symbols": symbols})
    ack = await recv_json(ws, within)
    assert ack["op"] == "subscribe" and ack["ok"] is True, ack
    return [ack] + [await recv_json(ws, within) for _ in ack["symbols"]]


async def next_signal(ws: ClientConnection, within: float = 5.0) -> dict[str, Any]:
    """The next ``signal`` frame (skipping anything else)."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            raise AssertionError("no signal frame")
        body = await recv_json(ws, left)
        if body["op"] == "signal":
            return body


async def read_until_closed(ws: ClientConnection, within: float = 10.0) -> tuple[int | None, list[dict[str, Any]]]:
    """Every frame until the server closes, and the close code it sent (1006: no close frame)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while True:
            try:
                raw = await ws.recv()
            except ConnectionClosed:
                break
            frames.append(orjson.loads(raw))
    return ws.close_code, frames
