"""The ``candlecast`` command: one entry point, a subcommand per part.

This is a composition root: it reads :class:`Settings`, configures logging, builds the parts and
owns their lifetime (SIGINT/SIGTERM stop them cleanly).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from inference.config import WorkerConfig
from inference.metrics import WorkerMetrics
from service import compose
from service.inspect import inspect_symbol
from service.model_commands import add_model_commands, print_json
from service.settings import ConfigError, load_settings
from streaming.errors import StoreUnavailable
from streaming.heap import freeze_start_up_heap
from streaming.ingestor import Ingestor
from streaming.metrics import IngestMetrics
from streaming.recorder import record
from streaming.sim.faults import parse_fault, periodic_faults
from streaming.sim.server import SimulatorConfig

log = logging.getLogger(__name__)

DEFAULT_REPLAY = [
    "../shared/data/klines_1m/bybit_linear_BTCUSDT_1m.csv.gz",
    "../shared/data/klines_1m/bybit_linear_ETHUSDT_1m.csv.gz",
]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        handler: Callable[[argparse.Namespace], Awaitable[int]] = args.handler
        return asyncio.run(_until_signal(handler(args)))
    except ConfigError as exc:
        print(f"candlecast: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _positive(text: str) -> float:
    """An argparse type: a finite number > 0 (argparse turns the ValueError into a one-line usage error)."""
    value = float(text)
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    """An argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, got {text}")
    return value


async def _until_signal(work: Awaitable[int]) -> int:
    """Run ``work``; SIGINT/SIGTERM cancel it so its ``finally`` blocks shut things down in order."""
    task = asyncio.ensure_future(work)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, task.cancel)
    try:
        return await task
    except asyncio.CancelledError:
        log.info("stopped")
        return 0
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="candlecast", description="Live trading signals for Bybit linear perpetuals.")
    p.add_argument("--log-level", default="INFO", help="DEBUG, INFO, WARNING, ERROR (default INFO)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser(
        "simulate",
        help="run the Bybit-compatible exchange simulator (WS public linear + REST kline) on loopback",
        description=(
            "Replays historical 1m bars (gzip CSV: open_time_ms,open,high,low,close,volume) as a Bybit v5 "
            "public linear stream, serving kline.{1,5,15,60} (5/15/60 aggregated from 1m) and orderbook "
            "topics, plus REST /v5/market/kline, at --speed times real time. The ORDER BOOK IS SYNTHETIC: "
            "a plausible ladder around the replayed price path, not real depth. With --recorded it replays "
            "a JSON-lines stream written by `candlecast record` instead."
        ),
    )
    s.add_argument("--data", nargs="+", type=Path, default=[Path(x) for x in DEFAULT_REPLAY])
    s.add_argument("--recorded", type=Path, default=None, help="JSON-lines stream from `candlecast record`")
    s.add_argument("--speed", type=_positive, default=60.0, help="market ms per wall ms (600 = 10 min/s)")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8765)
    s.add_argument("--start-offset-bars", type=int, default=1500, help="history (1m bars) before the clock")
    s.add_argument(
        "--fault",
        action="append",
        default=[],
        metavar="KIND:EVERY_S",
        help="inject a fault periodically: drop, stall, gap, malformed, rest403, resterror (e.g. drop:30)",
    )
    s.set_defaults(handler=_cmd_simulate)

    rn = sub.add_parser(
        "run",
        help="ingestion, worker and API in one process (Redis if CANDLECAST_REDIS_URL is set, else in memory)",
    )
    _replay_arguments(
        rn,
        "feed from an in-process simulator replaying these 1m CSVs (default files when none given): no internet",
        "replay speed: market ms per wall ms",
    )
    rn.add_argument(
        "--start-offset-bars",
        type=_non_negative_int,
        default=None,
        help="1m bars of history before the replay clock (default: up to 20,000, keeping a day to replay)",
    )
    rn.add_argument("--loop", action="store_true", help="at the end of the data, replay it again (fresh namespace)")
    rn.set_defaults(handler=_cmd_run)

    i = sub.add_parser("ingest", help="run ingestion: Bybit WS + REST backfill into the window store")
    _replay_arguments(
        i,
        "ingest from an in-process simulator replaying these 1m CSVs (no internet needed)",
        "replay speed with --replay",
    )
    i.set_defaults(handler=_cmd_ingest)

    r = sub.add_parser("record", help="record the live raw stream to JSON lines (replay with simulate --recorded)")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--duration", type=float, default=None, help="seconds to record (default: until stopped)")
    r.set_defaults(handler=_cmd_record)

    w = sub.add_parser(
        "worker",
        help="run an inference worker: bar-closed events from Redis => signals (start several to share the work)",
    )
    w.set_defaults(handler=_cmd_worker)

    a = sub.add_parser(
        "api",
        help="serve the signal API (HTTP + WebSocket, /metrics, /docs) from the signals workers write to Redis",
    )
    a.add_argument("--host", default=None, help="address to bind (default CANDLECAST_API_HOST, 127.0.0.1)")
    a.add_argument("--port", type=int, default=None, help="port to bind (default CANDLECAST_API_PORT, 8000)")
    a.set_defaults(handler=_cmd_api)

    n = sub.add_parser("inspect", help="print, as JSON, what the store holds for a symbol")
    n.add_argument("symbol")
    n.add_argument("--bars", type=int, default=5, help="bars to show per interval (newest; 0 = all)")
    n.set_defaults(handler=_cmd_inspect)

    add_model_commands(sub)

    b = sub.add_parser("bench", help="benchmarks that print JSON")
    bsub = b.add_subparsers(dest="bench", required=True)
    bi = bsub.add_parser("ingest", help="sustained ingest rate vs the raw receive+parse ceiling")
    bi.add_argument("--symbols", type=int, default=100)
    bi.add_argument("--frames", type=int, default=200_000)
    bi.set_defaults(handler=_cmd_bench_ingest)
    bn = bsub.add_parser("inference", help="ORT vs torch, per-signal latency p50/p99, symbols/s (shipped models)")
    bn.add_argument("--artifacts", type=Path, default=Path("models/artifacts"))
    bn.add_argument("--data", type=Path, default=Path(DEFAULT_REPLAY[0]))
    bn.add_argument("--symbols", type=int, default=50)
    bn.add_argument("--repeats", type=int, default=200)
    bn.add_argument("--threads", type=int, default=1, help="ONNX Runtime / torch intra-op threads")
    bn.add_argument(
        "--concurrency",
        type=int,
        default=WorkerConfig.inference_concurrency,
        help=f"session runs in flight at once (the worker's default: {WorkerConfig.inference_concurrency})",
    )
    bn.set_defaults(handler=_cmd_bench_inference)
    ba = bsub.add_parser("api", help="GET /signal vs a bare route, and WebSocket fan-out latency")
    ba.add_argument("--connections", type=int, default=32)
    ba.add_argument("--seconds", type=float, default=5.0)
    ba.add_argument("--subscribers", type=int, default=1000)
    ba.add_argument("--publishes", type=int, default=10)
    ba.set_defaults(handler=_cmd_bench_api)
    bc = bsub.add_parser("capacity", help="Redis memory and process RSS per symbol at steady state, extrapolated")
    bc.add_argument("--symbols", default="10,100", help="comma-separated symbol counts to measure")
    bc.add_argument("--data", type=Path, default=Path(DEFAULT_REPLAY[0]), help="real 1m bars for the prices")
    bc.set_defaults(handler=_cmd_bench_capacity)
    br = bsub.add_parser("render", help="renderer images/s vs mplfinance and pyts")
    br.add_argument("--repeats", type=int, default=200)
    br.set_defaults(handler=_cmd_bench_render)
    return p


def _replay_arguments(p: argparse.ArgumentParser, replay_help: str, speed_help: str) -> None:
    """``--replay [CSV ...]`` and ``--speed``: feed from an in-process simulator instead of Bybit."""
    p.add_argument("--replay", nargs="*", type=Path, default=None, help=replay_help)
    p.add_argument("--speed", type=_positive, default=60.0, help=speed_help)


async def _cmd_simulate(args: argparse.Namespace) -> int:
    try:
        faults = [parse_fault(f) for f in args.fault]
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    config = SimulatorConfig(
        sources=list(args.data) if args.recorded is None else [],
        recorded=args.recorded,
        speed=args.speed,
        start_offset_bars=args.start_offset_bars,
        host=args.host,
        port=args.port,
    )
    async with contextlib.AsyncExitStack() as stack:
        sim = await compose.open_simulator(stack, config)
        print(f"simulator: WS {sim.ws_url}  REST {sim.rest_url}  symbols {', '.join(sim.symbols)}", flush=True)
        print("  (the order book is synthetic; klines are the real bars replayed)", flush=True)
        async with periodic_faults(sim, faults):
            await sim.finished.wait()
        print("simulator: end of data reached", flush=True)
    return 0


async def _cmd_run(args: argparse.Namespace) -> int:
    from service.run import run_service

    settings = load_settings()
    replay = None if args.replay is None else (list(args.replay) or [Path(x) for x in DEFAULT_REPLAY])
    if replay is None and (args.loop or args.start_offset_bars is not None):
        raise ConfigError("--loop and --start-offset-bars apply to a replay: add --replay")
    listening: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    listening.add_done_callback(lambda _url: freeze_start_up_heap())  # start-up is done
    await run_service(
        settings,
        compose.ingest_config(settings),
        compose.worker_config(settings),
        replay=replay,
        speed=args.speed,
        replay_offset_bars=args.start_offset_bars,
        loop=args.loop,
        bound=listening,
    )
    return 0


async def _cmd_ingest(args: argparse.Namespace) -> int:
    settings = load_settings()
    store = compose.open_store(settings)
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        ws_url = rest_url = None
        if args.replay is not None:
            sources = list(args.replay) or [Path(x) for x in DEFAULT_REPLAY]
            symbols = compose.replayed_symbols(settings, sources)
            sim = await compose.replay_simulator(stack, sources, args.speed)
            ws_url, rest_url = sim.ws_url, sim.rest_url
            settings = settings.model_copy(update={"symbols": symbols})
            replaying = ", ".join(settings.symbols)
            print(f"replaying {replaying} at {args.speed:g}x from {sim.ws_url} (no internet)", flush=True)
        config = compose.ingest_config(settings, ws_url, rest_url)
        metrics = IngestMetrics()
        ingestor = Ingestor(config, store, metrics)
        compose.serve_metrics(stack, settings.metrics_host, settings.ingest_metrics_port, metrics.registry)
        banner = (
            f"ingesting {', '.join(config.symbols)} intervals {','.join(config.intervals)} "
            f"book depth {config.book_depth} from {config.ws_url} into "
            f"{settings.redis_url or 'the in-memory store'}"
        )
        return await _announce_and_run(banner, ingestor.run())


async def _cmd_worker(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_redis("the worker reads windows and events from Redis and shares them with other workers")
    metrics = WorkerMetrics()
    store = compose.open_store(settings, reuse_decoded=settings.worker_reuse_decoded)
    io = compose.open_worker_io(settings, store)
    worker = compose.worker(settings, store, io, metrics)
    models = worker.models
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(store.close)
        stack.push_async_callback(io.signals.close)
        compose.serve_metrics(stack, settings.metrics_host, settings.worker_metrics_port, metrics.registry)
        stack.push_async_callback(worker.close)
        await models.load()
        banner = (
            f"worker {io.consumer} in group {settings.worker_group}: {len(models.current.enabled)} of "
            f"{len(models.current.components)} components from {settings.artifacts_dir}, "
            f"signals every {min(settings.intervals, key=int)}m close, Redis {settings.redis_url}"
        )
        return await _announce_and_run(banner, worker.run())


async def _cmd_api(args: argparse.Namespace) -> int:
    from service.app import API_NEEDS_REDIS  # FastAPI and uvicorn: serving commands only

    settings = load_settings()
    settings.require_redis(API_NEEDS_REDIS, instead="use `candlecast run` for everything in one process")
    registry = CollectorRegistry()
    server = compose.api_server(settings, registry, host=args.host, port=args.port)
    async with contextlib.AsyncExitStack() as stack:
        # on SIGINT/SIGTERM too: WebSockets closed, requests drained, Redis closed
        stack.push_async_callback(server.close)
        compose.serve_metrics(stack, settings.metrics_host, settings.api_metrics_port, registry)
        await server.start()
        metrics_at = f":{settings.api_metrics_port}/metrics" if settings.api_metrics_port else "/metrics"
        banner = (
            f"api: {server.url}  (docs /docs, WebSocket /ws, metrics {metrics_at}) for {', '.join(settings.symbols)} "
            f"from {settings.redis_url}; API keys {'required' if settings.api_keys else 'off'}"
        )
        return await _announce_and_run(banner, server.wait())


async def _announce_and_run(banner: str, part: Coroutine[Any, Any, None]) -> int:
    """Say on the console what a long-running part serves, then — its start-up heap frozen — run it
    until it ends or is cancelled."""
    print(banner, flush=True)
    freeze_start_up_heap()
    await part
    return 0


async def _cmd_record(args: argparse.Namespace) -> int:
    settings = load_settings()
    topics = [f"kline.{iv}.{s}" for s in settings.symbols for iv in settings.intervals]
    topics += [f"orderbook.{settings.book_depth}.{s}" for s in settings.symbols]
    print(f"recording {len(topics)} topics from {settings.bybit_ws_url} to {args.out}", flush=True)
    n = await record(settings.bybit_ws_url, topics, args.out, args.duration)
    print(f"wrote {n} frames to {args.out}", flush=True)
    return 0


async def _cmd_inspect(args: argparse.Namespace) -> int:
    settings = load_settings()
    settings.require_redis("inspect reads the Redis store")
    store = compose.open_store(settings)
    try:
        report = await inspect_symbol(store, args.symbol, settings, bars=args.bars)
    except StoreUnavailable as exc:
        raise ConfigError(f"inspect: Redis at {settings.redis_url} does not answer ({exc}): is it running?") from exc
    finally:
        await store.close()
    print_json(report)
    if not report.get("known", False):
        print(
            f"candlecast: {args.symbol.upper()} is not configured (CANDLECAST_SYMBOLS={','.join(settings.symbols)})"
            " and the store holds nothing for it",
            file=sys.stderr,
        )
        return 1
    return 0


async def _cmd_bench_inference(args: argparse.Namespace) -> int:
    from inference.bench import bench_inference
    from models.bench_inference import torch_eager  # the eager baseline needs torch: imported only here

    result = await asyncio.to_thread(
        bench_inference,
        args.artifacts,
        args.data,
        args.symbols,
        args.repeats,
        args.threads,
        eager=torch_eager(),
        concurrency=args.concurrency,
    )
    print_json(result)
    return 0


async def _cmd_bench_capacity(args: argparse.Namespace) -> int:
    from service.capacity import bench_capacity
    from streaming.redis_client import bench_url

    try:
        counts = tuple(int(n) for n in args.symbols.split(","))
    except ValueError:
        raise ConfigError(f"--symbols: comma-separated counts, got {args.symbols!r}") from None
    if not counts or min(counts) < 1:
        raise ConfigError("--symbols: each count must be at least 1")
    result = await asyncio.to_thread(bench_capacity, bench_url(), args.data, counts)
    print_json(result)
    return 0


async def _cmd_bench_api(args: argparse.Namespace) -> int:
    from service.bench import bench_api

    result = await asyncio.to_thread(bench_api, args.connections, args.seconds, args.subscribers, args.publishes)
    print_json(result)
    return 0


async def _cmd_bench_render(args: argparse.Namespace) -> int:
    from inference.bench import bench_render

    print_json(await asyncio.to_thread(bench_render, args.repeats))
    return 0


async def _cmd_bench_ingest(args: argparse.Namespace) -> int:
    from streaming.bench import bench_ingest

    result = await bench_ingest(symbols=args.symbols, frames=args.frames)
    print_json(result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
