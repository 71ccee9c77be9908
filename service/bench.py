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
import logging
import multiprocessing as mp
import os
import platform
import time
from typing import Any

import httpx
import numpy as np
import orjson
from websockets.asyncio.client import connect

from inference.runtime import CPU
from inference.signal import BarRef, ComponentReport, Direction, Freshness, Signal, StageLatency
from streaming.supervisor import TaskSupervisor

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
        port_pipe.send(server.port)
        await asyncio.get_running_loop().run_in_executor(None, port_pipe.recv)
        await server.close()

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


async def _fanout(url: str, subscribers: int, publishes: int) -> dict[str, Any]:
    ws_url = url.replace("http", "ws") + "/ws"
    received: list[float] = []
    ready = 0
    all_ready = asyncio.Event()

    async def client() -> None:
        nonlocal ready
        async with connect(ws_url, max_queue=None, ping_interval=None, open_timeout=60) as ws:
            await ws.send('{"op":"subscribe","symbols":["BTCUSDT"]}')
            seen = 0
            first = True
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg.get("op") != "signal":
                    continue
                if first:  # the last value, sent on subscribe
                    first = False
                    ready += 1
                    if ready == subscribers:
                        all_ready.set()
                    continue
                received.append(time.time() * 1000 - msg["signal"]["produced_wall_ms"])
                seen += 1
                if seen == publishes:
                    return

    tasks = TaskSupervisor("bench-api")
    try:
        for i in range(subscribers):
            tasks.spawn(client(), f"bench-subscriber-{i}")
            if (i + 1) % 100 == 0:
                await asyncio.sleep(0.05)  # do not SYN-flood the listen backlog
        await asyncio.wait_for(all_ready.wait(), 120)
        async with httpx.AsyncClient(base_url=url) as http:
            for _ in range(publishes):
                await http.post("/_bench/publish")
                await asyncio.sleep(0.3)
        await asyncio.wait_for(tasks.wait(), 120)
    finally:
        await tasks.cancel_all(5.0)
    lat = np.array(received)
    return {
        "subscribers": subscribers,
        "publishes": publishes,
        "deliveries": len(lat),
        "p50_ms": round(float(np.percentile(lat, 50)), 2),
        "p99_ms": round(float(np.percentile(lat, 99)), 2),
        "max_ms": round(float(lat.max()), 2),
        "aim_p99_ms": 50,
    }


async def _run(url: str, connections: int, seconds: float, subscribers: int, publishes: int) -> dict[str, Any]:
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
        "websocket_fanout": await _fanout(url, subscribers, publishes),
    }


def bench_api(
    connections: int = 32, seconds: float = 5.0, subscribers: int = 1000, publishes: int = 10
) -> dict[str, Any]:
    logging.getLogger("httpx").setLevel(logging.WARNING)
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(child,), daemon=True)
    proc.start()
    try:
        port = parent.recv()
        result = asyncio.run(_run(f"http://127.0.0.1:{port}", connections, seconds, subscribers, publishes))
    finally:
        parent.send("stop")
        proc.join(timeout=10)
        if proc.is_alive():
            proc.kill()
    return {
        "benchmark": "api",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "server": "uvicorn, one process, same settings for both routes; load from a second process",
        **result,
    }
