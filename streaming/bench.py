"""``candlecast bench ingest``: sustained ingest rate against the raw receive+parse ceiling.

A loopback server process (the simulator's flat-out mode: pre-rendered Bybit frames, sent as fast
as the socket takes them) feeds two kinds of client in the same run, one after the other:

* **raw** — the same connections only receive each frame and ``orjson.loads`` it: the ceiling;
* **ingest** — the real :class:`Ingestor`: frame decoding into typed messages, Decimal order books
  with ``u`` checks, depth sampling, kline windows and book states flushed to Redis.

Each is run ``rounds`` times and the best rate kept (shared, noisy machines). Prints JSON.
Lives beside what it measures; ``service/cli.py`` imports it only for ``bench ingest``.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import platform
import random
import time
import uuid
from typing import Any

import orjson
import redis.asyncio as aioredis
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from streaming.ingestor import IngestConfig, Ingestor
from streaming.metrics import IngestMetrics
from streaming.redis_client import bench_url
from streaming.redis_store import RedisStore
from streaming.supervisor import TaskSupervisor

__all__ = ["bench_ingest", "make_corpus"]

PER_CONNECTION = 10
INTERVALS = ("1", "5", "15", "60")


def make_corpus(symbols: list[str], frames: int, seed: int = 7) -> dict[str, list[bytes]]:
    """Per symbol, a realistic orderbook.50 + kline frame sequence (contiguous ``u``, ts every 20 ms)."""
    rng = random.Random(seed)
    per_symbol = max(60, frames // len(symbols))
    out: dict[str, list[bytes]] = {}
    t0 = 1_750_000_000_000
    for si, sym in enumerate(symbols):
        price = 100.0 * (1 + si)
        tick = 0.01 * (1 + si)
        frames_s: list[bytes] = []
        u = 1000
        mid_ticks = round(price / tick)
        bids = {mid_ticks - 1 - k: rng.uniform(0.1, 5) for k in range(50)}
        asks = {mid_ticks + 1 + k: rng.uniform(0.1, 5) for k in range(50)}

        def lv(side: dict[int, float], keys: list[int], tick: float = tick) -> list[list[str]]:
            return [[f"{k * tick:.2f}", f"{side[k]:.3f}" if k in side else "0"] for k in keys]

        ts = t0
        frames_s.append(
            orjson.dumps(
                {
                    "topic": f"orderbook.50.{sym}",
                    "type": "snapshot",
                    "ts": ts,
                    "data": {
                        "s": sym,
                        "b": lv(bids, sorted(bids, reverse=True)),
                        "a": lv(asks, sorted(asks)),
                        "u": u,
                        "seq": u,
                    },
                }
            )
        )
        minute_start = ts - ts % 60_000
        while len(frames_s) < per_symbol:
            ts += 20
            u += 1
            changed_b = rng.sample(sorted(bids), 2)
            changed_a = rng.sample(sorted(asks), 2)
            for k in changed_b:
                bids[k] = rng.uniform(0.1, 5)
            for k in changed_a:
                asks[k] = rng.uniform(0.1, 5)
            frames_s.append(
                orjson.dumps(
                    {
                        "topic": f"orderbook.50.{sym}",
                        "type": "delta",
                        "ts": ts,
                        "data": {"s": sym, "b": lv(bids, changed_b), "a": lv(asks, changed_a), "u": u, "seq": u},
                    }
                )
            )
            if ts - minute_start >= 60_000:  # a 1m close, as the exchange pushes it
                frames_s.append(_kline(sym, "1", minute_start, ts, price, True))
                minute_start += 60_000
            elif u % 25 == 0:
                for iv in INTERVALS:
                    frames_s.append(_kline(sym, iv, minute_start - minute_start % (int(iv) * 60_000), ts, price, False))
        out[sym] = frames_s
    return out


def _kline(sym: str, iv: str, start: int, ts: int, price: float, confirm: bool) -> bytes:
    p = f"{price:.2f}"
    return orjson.dumps(
        {
            "topic": f"kline.{iv}.{sym}",
            "type": "snapshot",
            "ts": ts,
            "data": [
                {
                    "start": start,
                    "end": start + int(iv) * 60_000 - 1,
                    "interval": iv,
                    "open": p,
                    "close": p,
                    "high": f"{price * 1.001:.2f}",
                    "low": f"{price * 0.999:.2f}",
                    "volume": "12.5",
                    "turnover": "1250.0",
                    "confirm": confirm,
                    "timestamp": ts,
                }
            ],
        }
    )


def _server_main(symbols: list[str], frames: int, conn: Any) -> None:
    asyncio.run(_serve(symbols, frames, conn))


async def _serve(symbols: list[str], frames: int, pipe: Any) -> None:
    corpus = make_corpus(symbols, frames)

    def rest(connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/v5/market/kline"):
            body = orjson.dumps(
                {"retCode": 0, "retMsg": "OK", "result": {"list": []}, "retExtInfo": {}, "time": 1_750_000_000_000}
            )
            return Response(200, "OK", Headers({"Content-Type": "application/json"}), body)
        return None

    async def handler(ws: ServerConnection) -> None:
        topics: list[str] = []
        with contextlib.suppress(Exception):
            async for raw in ws:
                msg = orjson.loads(raw)
                if msg.get("op") == "ping":
                    await ws.send(
                        orjson.dumps(
                            {
                                "success": True,
                                "ret_msg": "pong",
                                "conn_id": "b",
                                "req_id": msg.get("req_id", ""),
                                "op": "ping",
                            }
                        ).decode()
                    )
                    continue
                await ws.send(
                    orjson.dumps(
                        {
                            "success": True,
                            "ret_msg": "",
                            "conn_id": "b",
                            "req_id": msg.get("req_id", ""),
                            "op": msg.get("op"),
                        }
                    ).decode()
                )
                topics += msg.get("args", [])
                wanted = _shard_of(topics, symbols)
                if (
                    wanted is not None
                    and all(f"orderbook.50.{s}" in topics for s in wanted)
                    and _all_subscribed(topics, wanted)
                ):
                    streams = [corpus[s] for s in wanted]
                    longest = max(len(s) for s in streams)
                    for i in range(longest):  # interleave symbols like a real multiplexed feed
                        for s in streams:
                            if i < len(s):
                                await ws.send(s[i])
                    topics = []

    async with serve(handler, "127.0.0.1", 0, process_request=rest, compression=None, max_queue=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        pipe.send((port, {s: len(f) for s, f in corpus.items()}))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # until the parent says stop


def _shard_of(topics: list[str], symbols: list[str]) -> list[str] | None:
    """The connection shard (same split as the ingestor's) that these topics belong to."""
    if not topics:
        return None
    first = topics[0].rsplit(".", 1)[1]
    i = symbols.index(first) // PER_CONNECTION * PER_CONNECTION
    return symbols[i : i + PER_CONNECTION]


def _all_subscribed(topics: list[str], syms: list[str]) -> bool:
    return all(f"kline.{iv}.{s}" in topics for s in syms for iv in INTERVALS)


async def _raw(port: int, symbols: list[str], expected: int) -> float:
    received = 0
    done = asyncio.Event()

    async def one(syms: list[str]) -> None:
        nonlocal received
        async with connect(f"ws://127.0.0.1:{port}", compression=None, max_queue=1024, ping_interval=None) as ws:
            args = [f"kline.{iv}.{s}" for s in syms for iv in INTERVALS] + [f"orderbook.50.{s}" for s in syms]
            for i in range(0, len(args), 10):
                await ws.send(orjson.dumps({"op": "subscribe", "req_id": str(i), "args": args[i : i + 10]}).decode())
            async for raw in ws:
                msg = orjson.loads(raw)
                if "topic" in msg:
                    received += 1
                    if received >= expected:
                        done.set()

    shards = [symbols[i : i + PER_CONNECTION] for i in range(0, len(symbols), PER_CONNECTION)]
    t0 = time.perf_counter()
    tasks = TaskSupervisor("bench-raw")
    for i, shard in enumerate(shards):
        tasks.spawn(one(shard), f"bench-raw-{i}")
    try:
        await asyncio.wait_for(done.wait(), 300)
        return time.perf_counter() - t0
    finally:
        await tasks.cancel_all(5.0)


async def _ingest(port: int, symbols: list[str], expected: int, redis_url: str) -> tuple[float, dict[str, float]]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    store = RedisStore(aioredis.Redis.from_url(redis_url), prefix=prefix)
    metrics = IngestMetrics()
    config = IngestConfig(
        ws_url=f"ws://127.0.0.1:{port}",
        rest_url=f"http://127.0.0.1:{port}",
        symbols=tuple(symbols),
        symbols_per_connection=PER_CONNECTION,
        book_silence_s=60,
    )
    ingestor = Ingestor(config, store, metrics)

    t0 = time.perf_counter()
    await ingestor.start()
    while ingestor.frames_handled < expected:  # noqa: ASYNC110 - polling a counter keeps the hot path untouched
        await asyncio.sleep(0.005)
    await ingestor.writer.flush()
    elapsed = time.perf_counter() - t0
    flushes = ingestor.writer.flushes
    keys = 0
    async for _ in store._r.scan_iter(match=store.keys.all_keys, count=1000):
        keys += 1
    await ingestor.close()
    await store.delete_all()
    await store.close()
    return elapsed, {
        "redis_flushes": flushes,
        "redis_keys_written": keys,
        "book_deltas": _sample(metrics, "book_delta"),
        "klines": _sample(metrics, "kline"),
    }


def _sample(metrics: IngestMetrics, kind: str) -> float:
    return metrics.registry.get_sample_value("candlecast_ingest_messages_total", {"type": kind}) or 0.0


async def bench_ingest(
    symbols: int = 100, frames: int = 200_000, rounds: int = 3, redis_url: str | None = None
) -> dict[str, Any]:
    redis_url = bench_url(redis_url)
    names = [f"SYM{i:03d}USDT" for i in range(symbols)]
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_server_main, args=(names, frames, child), daemon=True)
    proc.start()
    try:
        port, counts = await asyncio.get_running_loop().run_in_executor(None, parent.recv)
        total = sum(counts.values())
        raw_s, ingest_s = [], []
        details: dict[str, float] = {}
        for _ in range(rounds):
            raw_s.append(await _raw(port, names, total))
            elapsed, details = await _ingest(port, names, total, redis_url)
            ingest_s.append(elapsed)
    finally:
        parent.send("stop")
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
    raw_rate = total / min(raw_s)
    ingest_rate = total / min(ingest_s)
    return {
        "benchmark": "ingest",
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "symbols": symbols,
        "connections": (symbols + PER_CONNECTION - 1) // PER_CONNECTION,
        "frames": total,
        "rounds": rounds,
        "raw_ceiling_frames_per_s": round(raw_rate),
        "ingest_frames_per_s": round(ingest_rate),
        "ratio_vs_raw": round(ingest_rate / raw_rate, 3),
        "target_frames_per_s": 25_000,
        "ingest_detail_last_round": details,
        "raw_seconds": [round(x, 3) for x in raw_s],
        "ingest_seconds": [round(x, 3) for x in ingest_s],
    }
