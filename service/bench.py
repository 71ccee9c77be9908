"""``candlecast bench api``: the signal route against the framework's ceiling, and WebSocket fan-out.

The API runs in its own process (an :class:`~service.server.ApiServer` serving
:func:`service.app.create_app` fed by an in-process signal store) with one extra route,
``/bare``, returning fixed bytes through the same server settings: the ceiling for any route. The
load comes from this process: ``connections`` keep-alive clients, each request timed; routes
alternate so drift hits both. Then ``subscribers`` WebSocket clients subscribe to BTCUSDT and the
server publishes signals stamped with its wall clock; each client times publish → receipt (same
machine, same clock).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import multiprocessing as mp
import os
import platform
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import orjson
from websockets.asyncio.client import connect

from inference.runtime import CPU
from inference.signal import BarRef, ComponentReport, Direction, Freshness, Signal, StageLatency
from streaming.heap import freeze_start_up_heap

__all__ = ["bench_api", "sample_signal"]

MINUTE = 60_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % MINUTE


def sample_signal(
    start: int,
    symbol: str = "BTCUSDT",
    *,
    direction: Direction = "long",
    components: tuple[ComponentReport, ...] | None = None,
    wall_ms: int | None = None,
) -> Signal:
    """A well-formed ensemble signal for the 1m bar at ``start`` (the benchmark publishes these; the
    tests build theirs here too). ``components``: four voting TCNs by default; ``wall_ms``: when the
    worker produced it (default 40 ms after the close)."""
    if components is None:
        components = tuple(
            ComponentReport(f"tcn_{tf}m", tf, f"next {tf}m bar", 0.55, 1.0, "v1", CPU, 0.4, "voted")
            for tf in ("1", "5", "15", "60")
        )
    return Signal(
        symbol=symbol,
        bar=BarRef("1", start, start + MINUTE),
        produced_at=start + MINUTE,
        produced_wall_ms=start + MINUTE + 40 if wall_ms is None else wall_ms,
        direction=direction,
        score={"long": 0.1, "short": -0.1}.get(direction, 0.0),
        p_up=0.55,
        confidence=0.1,
        agreement=1.0,
        source="ensemble",
        fallback_reason=None,
        components=components,
        freshness=Freshness({"1": start}, "READY", 12),
        latency_ms=StageLatency(1.0, 2.0, 3.0, 0.1, 6.1, 40.0),
        horizon="next 1m bar",
    )


def _serve(port_pipe: Any) -> None:
    from fastapi import Response

    from inference.signal_store import MemorySignalStore
    from service.app import create_app
    from service.server import ApiServer, server_config
    from service.settings import load_settings

    async def main() -> None:
        store = MemorySignalStore()
        settings = load_settings(symbols=["BTCUSDT"], api_port=0, redis_url=None, api_keys=[])
        app = create_app(settings, signal_store=store)
        body = sample_signal(T0, wall_ms=int(time.time() * 1000)).to_json()
        await store.publish(sample_signal(T0, wall_ms=int(time.time() * 1000)))
        state = {"bar": T0}

        @app.get("/bare", include_in_schema=False)
        async def bare() -> Response:
            return Response(content=body, media_type="application/json")

        @app.post("/_bench/publish", include_in_schema=False)
        async def publish() -> Response:
            state["bar"] += MINUTE
            await store.publish(sample_signal(state["bar"], wall_ms=int(time.time() * 1000)))
            return Response(status_code=204)

        # the production server settings (no per-message deflate, frame limit), quiet
        server = ApiServer(server_config(app, settings, host="127.0.0.1", port=0, log_level="error"))
        await server.start()
        freeze_start_up_heap()  # as `candlecast api` does once started
        port_pipe.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, port_pipe.recv)
        await server.close()

    asyncio.run(main())


def _serve_ceiling(port_pipe: Any) -> None:
    """The fan-out ceiling: a bare ``websockets`` server speaking just enough of the protocol (subscribe,
    the last value at once, then every publish), publishing with the library's ``broadcast``: the frame
    built once (:class:`~service.signal_cache.CachedSignal`, the same bytes the API pushes) and written
    to every connection without a task per send."""
    from websockets.asyncio.server import ServerConnection, broadcast, serve

    from service.signal_cache import CachedSignal

    def frame(bar: int) -> str:
        signal = sample_signal(bar, wall_ms=int(time.time() * 1000))
        return CachedSignal.build(signal, signal.to_json()).frame

    async def main() -> None:
        subscribers: set[ServerConnection] = set()
        state = {"bar": T0}

        async def handler(ws: ServerConnection) -> None:
            try:
                async for raw in ws:  # ends quietly when the client closes
                    op = orjson.loads(raw).get("op")
                    if op == "subscribe":
                        await ws.send(frame(state["bar"]))
                        subscribers.add(ws)
                    elif op == "_bench_publish":
                        state["bar"] += MINUTE
                        broadcast(subscribers, frame(state["bar"]))
            finally:
                subscribers.discard(ws)

        async with serve(handler, "127.0.0.1", 0, compression=None, ping_interval=None, max_queue=None) as server:
            freeze_start_up_heap()  # as the service does
            port_pipe.send(server.sockets[0].getsockname()[1])
            await asyncio.get_running_loop().run_in_executor(None, port_pipe.recv)

    asyncio.run(main())


async def _load(url: str, path: str, connections: int, seconds: float) -> dict[str, float]:
    """Keep-alive HTTP/1.1 GETs from ``connections`` raw sockets: a client far cheaper than the server."""
    host, port = url.removeprefix("http://").split(":")
    request = f"GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def one() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                t = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"{path}: {head[:40]!r}")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                latencies.append(time.perf_counter() - t)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(connections)))
    elapsed = time.perf_counter() - started
    lat = np.array(latencies) * 1000
    return {
        "requests_per_s": round(len(lat) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "requests": len(lat),
    }


class _Subscriber(asyncio.Protocol):
    """A WebSocket client far cheaper than any server: the upgrade by hand, frames parsed in place and
    only ``produced_wall_ms`` read from each signal (no JSON decode), so the fan-out measured is the
    server's, not 1,000 Python clients' in one process."""

    def __init__(self, host: str, path: str, on_ready: Callable[[], None], on_signal: Callable[[float], None]) -> None:
        self._host, self._path = host, path
        self._on_ready, self._on_signal = on_ready, on_signal
        self._buffer = b""
        self._upgraded = False
        self._ready = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(
            f"GET {self._path} HTTP/1.1\r\nHost: {self._host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
        )

    def send_text(self, text: str) -> None:
        """One masked text frame (a client must mask; payloads here are under 126 bytes)."""
        assert self._transport is not None
        payload, mask = text.encode(), os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self._transport.write(bytes([0x81, 0x80 | len(payload)]) + mask + masked)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if not self._upgraded:
            head, sep, rest = self._buffer.partition(b"\r\n\r\n")
            if not sep:
                return
            if not head.startswith(b"HTTP/1.1 101"):
                self._fail(f"upgrade refused: {head[:40]!r}")
                return
            self._upgraded, self._buffer = True, rest
            self.send_text('{"op":"subscribe","symbols":["BTCUSDT"]}')
        while len(self._buffer) >= 2:
            opcode, length = self._buffer[0] & 0x0F, self._buffer[1] & 0x7F
            at = 2
            if length == 126:
                if len(self._buffer) < 4:
                    return
                length, at = int.from_bytes(self._buffer[2:4], "big"), 4
            elif length == 127:
                if len(self._buffer) < 10:
                    return
                length, at = int.from_bytes(self._buffer[2:10], "big"), 10
            if len(self._buffer) < at + length:
                return
            payload, self._buffer = self._buffer[at : at + length], self._buffer[at + length :]
            if opcode == 0x1:
                self._frame(payload)
            elif opcode == 0x8:
                self._fail("closed by the server")
                return

    def _frame(self, payload: bytes) -> None:
        if not payload.startswith(b'{"op":"signal"'):
            return
        if not self._ready:  # the last value, sent on subscribe
            self._ready = True
            self._on_ready()
            return
        at = payload.index(_WALL) + len(_WALL)
        wall = int(payload[at : payload.index(b",", at)])
        self._on_signal(time.time() * 1000 - wall)

    def _fail(self, why: str) -> None:
        if not self.done.done():
            self.done.set_exception(RuntimeError(why))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)

    def close(self) -> None:
        """A masked close frame (1000), then the socket closed."""
        if self._transport is not None and not self._transport.is_closing():
            mask = os.urandom(4)
            code = (1000).to_bytes(2, "big")
            self._transport.write(bytes([0x88, 0x82]) + mask + bytes(b ^ mask[i] for i, b in enumerate(code)))
            self._transport.close()


_WALL = b'"produced_wall_ms":'


async def _fanout(
    ws_url: str, subscribers: int, publishes: int, publish: Callable[[], Awaitable[None]]
) -> dict[str, Any]:
    """``subscribers`` clients (:class:`_Subscriber`) subscribe to BTCUSDT at ``ws_url``; ``publish()``
    makes the server push a new signal, ``publishes`` times 0.3 s apart; each client times publish →
    receipt by the signal's ``produced_wall_ms`` (same machine, same clock)."""
    host_port, _, path = ws_url.removeprefix("ws://").partition("/")
    host, port = host_port.split(":")
    received: list[float] = []
    ready = 0
    all_ready = asyncio.Event()

    all_in = asyncio.Event()

    def on_signal(latency_ms: float) -> None:
        received.append(latency_ms)
        if len(received) == subscribers * publishes:
            all_in.set()

    def on_ready() -> None:
        nonlocal ready
        ready += 1
        if ready == subscribers:
            all_ready.set()

    loop = asyncio.get_running_loop()
    clients: list[_Subscriber] = []
    try:
        for i in range(subscribers):
            _, client = await loop.create_connection(
                lambda: _Subscriber(host_port, "/" + path, on_ready, on_signal), host, int(port)
            )
            clients.append(client)
            if (i + 1) % 100 == 0:
                await asyncio.sleep(0.05)  # do not SYN-flood the listen backlog
        await asyncio.wait_for(all_ready.wait(), 120)
        for _ in range(publishes):
            await publish()
            await asyncio.sleep(0.3)
        with contextlib.suppress(TimeoutError):  # the last deliveries; one never delivered is reported
            await asyncio.wait_for(all_in.wait(), 10.0)
    finally:
        for client in clients:
            client.close()
        await asyncio.gather(*(c.done for c in clients), return_exceptions=True)
    lat = np.array(received)
    return {
        "subscribers": subscribers,
        "publishes": publishes,
        "deliveries": len(lat),
        "complete": len(lat) == subscribers * publishes,  # else the p99 leaves the missing ones out
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
    }


async def _service_fanout(url: str, subscribers: int, publishes: int) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url) as http:

        async def publish() -> None:
            await http.post("/_bench/publish")

        return await _fanout(url.replace("http", "ws") + "/ws", subscribers, publishes, publish)


async def _ceiling_fanout(port: int, subscribers: int, publishes: int) -> dict[str, Any]:
    url = f"ws://127.0.0.1:{port}"
    async with connect(url, ping_interval=None) as control:

        async def publish() -> None:
            await control.send('{"op":"_bench_publish"}')

        return await _fanout(url, subscribers, publishes, publish)


async def _run(
    url: str, ceiling_port: int, connections: int, seconds: float, subscribers: int, publishes: int
) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, float]]] = {"/bare": [], "/signal/BTCUSDT": []}
    for _ in range(2):
        for path in rounds:
            rounds[path].append(await _load(url, path, connections, seconds))
    best = {p: max(r, key=lambda x: x["requests_per_s"]) for p, r in rounds.items()}
    ratio = best["/signal/BTCUSDT"]["requests_per_s"] / best["/bare"]["requests_per_s"]
    return {
        "http": {
            "signal": best["/signal/BTCUSDT"],
            "bare_route_ceiling": best["/bare"],
            "ratio": round(ratio, 3),
            "aim_ratio": 0.8,
            "connections": connections,
            "seconds_per_round": seconds,
            "rounds": 2,
        },
        "websocket_fanout": await _fanout_against_ceiling(url, ceiling_port, subscribers, publishes),
    }


async def _fanout_against_ceiling(url: str, ceiling_port: int, subscribers: int, publishes: int) -> dict[str, Any]:
    """The service's fan-out and the bare ``websockets`` broadcast's, alternating over two rounds (drift
    hits both); the better round of each is reported, as for HTTP."""
    service: list[dict[str, Any]] = []
    ceiling: list[dict[str, Any]] = []
    for _ in range(2):
        service.append(await _service_fanout(url, subscribers, publishes))
        ceiling.append(await _ceiling_fanout(ceiling_port, subscribers, publishes))
    best, bare = min(service, key=lambda r: r["p99_ms"]), min(ceiling, key=lambda r: r["p99_ms"])
    return {
        **best,
        "ceiling_p99_ms": bare["p99_ms"],
        "ceiling_p50_ms": bare["p50_ms"],
        "ratio": round(best["p99_ms"] / bare["p99_ms"], 3),
        "aim_p99_ms": 50,
        "aim_ratio": 1.5,
        "rounds": 2,
        "p99_ms_by_round": [r["p99_ms"] for r in service],
        "ceiling_p99_ms_by_round": [r["p99_ms"] for r in ceiling],
        "ceiling": "websockets broadcast(), the same frame built once, one process, no per-send task",
    }


def bench_api(
    connections: int = 32, seconds: float = 5.0, subscribers: int = 1000, publishes: int = 10
) -> dict[str, Any]:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ctx = mp.get_context("spawn")
    servers = []
    for target in (_serve, _serve_ceiling):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=target, args=(child,), daemon=True)
        proc.start()
        servers.append((proc, parent))
    try:
        port, ceiling_port = (parent.recv() for _, parent in servers)
        result = asyncio.run(
            _run(f"http://127.0.0.1:{port}", ceiling_port, connections, seconds, subscribers, publishes)
        )
    finally:
        for _, parent in servers:
            parent.send("stop")
        for proc, _ in servers:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    return {
        "benchmark": "api",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "server": "uvicorn, one process, same settings for both routes; load from a second process",
        **result,
    }
