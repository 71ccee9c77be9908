"""Benchmarks of what ``inference`` does, as JSON: the renderers, and the models through the signal engine.

``candlecast bench render`` (:func:`bench_render`) — images/s of each renderer against mplfinance
and pyts in the same run. All renders draw the most recent bars of the real BTCUSDT 1-minute file: a
24-bar window for :func:`ohlc_chart` and :func:`composite` (the model input), a 64-bar window for
:func:`candlestick_chart`, :func:`gasf`, :func:`gadf` and :func:`recurrence_plot`. Baselines, measured
in the same process:

* **mplfinance**: ``mpf.plot(type="candle", volume=True)`` of the same 64-bar window, Agg backend, axes
  off, rendered at 50 dpi to an in-memory PNG of about the candlestick image's size (192x64 px);
* **pyts**: ``GramianAngularField`` (summation / difference) and ``RecurrencePlot`` on the same 64-bar
  close series, one sample per call like the live path (numba kernels compiled before timing).

Each of our renderers and each pyts call is timed ``rounds`` times over ``repeats`` renders after a
warm-up, keeping the best round (shared, noisy machines); mplfinance, about a thousand times slower, is
timed once over a few renders.

``candlecast bench inference`` (:func:`bench_inference`) — the shipped models on this machine:

* ONNX Runtime vs an eager baseline on the same inputs (same architecture, same thread count). The
  baseline is PyTorch eager, which needs torch: ``inference`` never imports torch, so it is handed in
  as an :class:`EagerBaseline` (``models.bench_inference.torch_eager``, composed by the CLI);
* per-signal compute latency p50/p99 through the worker's own ``SignalEngine`` (read from the store,
  render + features, batched inference, ensemble) for one symbol and all timeframes;
* throughput: all symbols of a minute close computed concurrently, wall time and signals/s;
* the signal's one store read (``read_symbol``: four windows, the book and, for the heatmap CNN, the
  depth rows of its span) from a real Redis against the in-process store holding the same data, with
  and without the depth: what the round trip adds to the in-memory figures above.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import itertools
import os
import platform
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import redis.asyncio as aioredis
from numpy.typing import NDArray

from inference import render
from inference.components import ModelRegistry
from inference.config import WorkerConfig
from inference.engine import SignalEngine
from inference.manifest import Manifest
from inference.metrics import WorkerMetrics
from inference.runtime import ModelSession
from inference.score_store import MemoryScoreStore
from inference.scorer import Scorer
from inference.signal import NoSignal, Signal
from inference.signal_store import MemorySignalStore
from streaming.depth import BINS_PER_SIDE, DepthRow
from streaming.errors import StoreError
from streaming.heap import freeze_start_up_heap
from streaming.klines import Bar
from streaming.memory_store import MemoryStore
from streaming.redis_client import bench_url
from streaming.redis_store import RedisStore
from streaming.sim.bars import MINUTE_MS, Bars, aggregate, load_1m_bars
from streaming.store import BarEvent, BookStatus, WindowStore, WriteBatch

__all__ = ["DEFAULT_KLINES", "EagerBaseline", "bench_inference", "bench_inputs", "bench_render", "median_ms"]

DEFAULT_KLINES = (
    Path(__file__).resolve().parents[2] / "shared" / "data" / "klines_1m" / "bybit_linear_BTCUSDT_1m.csv.gz"
)
SHORT_BARS = 24
LONG_BARS = 64
ROUNDS = 3


def _rate(fn: Callable[[], object], repeats: int, rounds: int = ROUNDS) -> float:
    """Best images/s over ``rounds`` timed loops of ``repeats`` calls, after a short warm-up."""
    for _ in range(min(repeats, 5)):
        fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, time.perf_counter() - start)
    return repeats / best


def _mplfinance_rate(times_ms: NDArray[np.int64], ohlcv: NDArray[np.float64], repeats: int) -> tuple[float, int]:
    """Renders/s of mplfinance drawing ``ohlcv`` as candles + volume into an in-memory PNG; also its byte size."""
    # Dev-only references, imported dynamically: serving never loads them, and they ship no type stubs.
    matplotlib: Any = importlib.import_module("matplotlib")
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    mpf: Any = importlib.import_module("mplfinance")
    pd: Any = importlib.import_module("pandas")

    frame = pd.DataFrame(
        ohlcv, columns=["Open", "High", "Low", "Close", "Volume"], index=pd.to_datetime(times_ms, unit="ms")
    )
    dpi = 50
    width_px, height_px = 3 * len(ohlcv), 64  # candlestick_chart's default size for this window
    png_size = 0

    def draw() -> None:
        nonlocal png_size
        buf = BytesIO()
        mpf.plot(
            frame,
            type="candle",
            volume=True,
            axisoff=True,
            figsize=(width_px / dpi, height_px / dpi),
            savefig={"fname": buf, "dpi": dpi},
            closefig=True,
        )
        png_size = buf.getbuffer().nbytes

    try:
        rate = _rate(draw, repeats, rounds=1)
    finally:
        plt.close("all")
    return rate, png_size


def _pyts_rates(series: NDArray[np.float64], repeats: int) -> dict[str, float]:
    image: Any = importlib.import_module("pyts.image")
    sample = series[None, :]
    summation = image.GramianAngularField(method="summation")
    difference = image.GramianAngularField(method="difference")
    recurrence = image.RecurrencePlot(dimension=1, threshold=None)
    return {
        "gasf": _rate(lambda: summation.transform(sample), repeats),
        "gadf": _rate(lambda: difference.transform(sample), repeats),
        "recurrence_plot": _rate(lambda: recurrence.transform(sample), repeats),
    }


def bench_render(repeats: int = 200, *, klines: Path | None = None) -> dict[str, Any]:
    """Measure every renderer and the mplfinance / pyts baselines on real bars; JSON-serialisable result."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    path = DEFAULT_KLINES if klines is None else klines
    series = load_1m_bars(path)
    times_ms = series.start_ms
    bars = np.column_stack([series.open, series.high, series.low, series.close, series.volume])
    if len(bars) < LONG_BARS:
        raise ValueError(f"{path}: need at least {LONG_BARS} bars, got {len(bars)}")
    short = bars[-SHORT_BARS:]
    long = bars[-LONG_BARS:]
    close = long[:, 3].copy()

    ours: dict[str, tuple[int, Callable[[], object]]] = {
        "ohlc_chart": (SHORT_BARS, lambda: render.ohlc_chart(short[:, :4])),
        "composite": (SHORT_BARS, lambda: render.composite(short)),
        "candlestick_chart": (LONG_BARS, lambda: render.candlestick_chart(long)),
        "gasf": (LONG_BARS, lambda: render.gasf(close)),
        "gadf": (LONG_BARS, lambda: render.gadf(close)),
        "recurrence_plot": (LONG_BARS, lambda: render.recurrence_plot(close)),
    }
    renderers: dict[str, dict[str, Any]] = {}
    for name, (n_bars, fn) in ours.items():
        out = np.asarray(fn())
        renderers[name] = {
            "bars": n_bars,
            "shape": list(out.shape),
            "dtype": str(out.dtype),
            "images_per_s": round(_rate(fn, repeats), 1),
        }

    mpl_repeats = max(1, min(20, repeats // 10))
    mpl_rate, png_bytes = _mplfinance_rate(times_ms[-LONG_BARS:], long, mpl_repeats)
    pyts_rates = _pyts_rates(close, repeats)

    candle_ratio = renderers["candlestick_chart"]["images_per_s"] / mpl_rate
    renderers["candlestick_chart"]["ratio_vs_mplfinance"] = round(candle_ratio, 1)
    for name, rate in pyts_rates.items():
        renderers[name]["ratio_vs_pyts"] = round(renderers[name]["images_per_s"] / rate, 2)

    versions = {mod: importlib.import_module(mod).__version__ for mod in ("numpy", "mplfinance", "pyts")}
    return {
        "renderer_version": render.RENDERER_VERSION,
        "data": path.name,
        "repeats": repeats,
        "rounds": ROUNDS,
        "renderers": renderers,
        "baselines": {
            "mplfinance_candle_volume_png": {
                "bars": LONG_BARS,
                "repeats": mpl_repeats,
                "png_bytes": png_bytes,
                "images_per_s": round(mpl_rate, 2),
            },
            "pyts": {name: {"bars": LONG_BARS, "images_per_s": round(rate, 1)} for name, rate in pyts_rates.items()},
        },
        "ratio_vs_mplfinance": renderers["candlestick_chart"]["ratio_vs_mplfinance"],
        "ratio_vs_pyts": renderers["gasf"]["ratio_vs_pyts"],
        "machine": {
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": platform.platform(),
            "versions": versions,
        },
        "note": (
            "images/s = renders per second, single thread, best of rounds. ratio_vs_mplfinance: "
            "candlestick_chart (64 bars + volume band, 64x192 uint8 array) vs mplfinance candle+volume of the "
            "same bars to an in-memory PNG at 50 dpi, ~192x64 px, axes off (mplfinance also encodes a PNG). "
            "ratio_vs_pyts: gasf vs pyts GramianAngularField(method='summation') on the same 64-close series, "
            "one sample per call; gadf and recurrence_plot likewise vs pyts."
        ),
    }


# --- inference ---------------------------------------------------------------------------------

INTERVALS = ("1", "5", "15", "60")
WINDOW = 400  # bars per window in the bench's stores
READ_SYMBOL = "BTCUSDT"  # the symbol whose store read is timed


@dataclass(frozen=True)
class EagerBaseline:
    """The framework ORT is compared with: its ``version`` and ``median_ms(artifact, x, threads, repeats)``."""

    version: str
    median_ms: Callable[[str, npt.NDArray[np.float32], int, int], float]


def median_ms(fn: Callable[[Any], object], x: Any, repeats: int) -> float:
    """Median milliseconds of ``fn(x)`` over ``repeats`` calls, after three warm-up calls."""
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def bench_inputs() -> dict[str, npt.NDArray[np.float32]]:
    """The input each shipped artifact is timed on (the same for ORT and the eager baseline)."""
    rng = np.random.default_rng(0)
    sequences = rng.standard_normal((1, 8, 64)).astype(np.float32)
    return {
        "tcn_1m.onnx": sequences,
        "efficientnet.onnx": rng.random((4, 3, 54, 72)).astype(np.float32),  # the four timeframes of one symbol
        # the seeds' zoo (models.zoo), where shipped: one window each
        "dense_1m.onnx": rng.standard_normal((1, 29)).astype(np.float32),
        **{f"{kind}_1m.onnx": sequences for kind in ("cnn1d", "mscnn", "cnn_ta", "bilstm")},
        "cipm_1m.onnx": rng.random((1, 1, 54, 72)).astype(np.float32),
        "cipm_btc_1m.onnx": rng.random((1, 2, 54, 72)).astype(np.float32),
        # the ladder's top rung, timed on whatever binds (the CPU here: serving runs it on a GPU only)
        "efficientnet_b3.onnx": rng.random((4, 3, 54, 72)).astype(np.float32),
        # the order-book heatmap CNN (opt-in): one heatmap of 64 one-second rows
        "book_cnn_1m.onnx": rng.random((1, 1, 200, 64)).astype(np.float32),
    }


def _ort_vs_eager(artifacts: Path, threads: int, repeats: int, eager: EagerBaseline) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, x in bench_inputs().items():
        if not (artifacts / name).is_file():  # a zoo model that is not shipped
            continue
        session = ModelSession(name, artifacts / name, prefer_gpu=True, threads=threads)
        ort_ms = median_ms(session.run, x, repeats)
        torch_ms = eager.median_ms(name, x, threads, repeats)
        out[name] = {
            "batch": int(x.shape[0]),
            "provider": session.provider,
            "onnxruntime_ms": round(ort_ms, 3),
            "torch_eager_ms": round(torch_ms, 3),
            "speedup_ort_vs_torch": round(torch_ms / ort_ms, 2),
        }
    return out


def _bars(series: Bars, keep: npt.NDArray[np.bool_], window: int) -> list[Bar]:
    """The newest ``window`` bars of ``series`` where ``keep``, as store bars (floats through ``repr``)."""

    def d(x: float) -> Decimal:
        return Decimal(repr(float(x)))

    s = series
    return [
        Bar(int(s.start_ms[i]), d(s.open[i]), d(s.high[i]), d(s.low[i]), d(s.close[i]), d(s.volume[i]), Decimal(0))
        for i in np.flatnonzero(keep)[-window:].tolist()
    ]


async def _signals(
    artifacts: Path, data: Path, symbols: int, repeats: int, threads: int, concurrency: int, redis_url: str
) -> dict[str, Any]:
    base = load_1m_bars(data)
    # BTCUSDT among them: the two-layer CIPM reads its window beside every other symbol's
    names = ["BTCUSDT", *(f"S{i:02d}USDT" for i in range(1, symbols))]
    last_start = int(base.start_ms[-1]) - int(base.start_ms[-1]) % (60 * MINUTE_MS) - MINUTE_MS  # a 1h boundary - 1m
    mid = float(base.close[-1])
    store = await _bar_store(base, names, last_start)
    config = WorkerConfig(
        intervals=INTERVALS, latency_budget_ms=5_000.0, coarse_wait_ms=0.0, inference_concurrency=concurrency
    )
    metrics = WorkerMetrics()
    # the whole zoo: the components the manifest ships off by default too
    opt_in = [c.name for c in Manifest.load(artifacts / "manifest.json").components if c.opt_in]
    registry = ModelRegistry(artifacts, prefer_gpu=True, threads=threads, metrics=metrics, opt_in=opt_in)
    await registry.load()
    freeze_start_up_heap()  # as `candlecast worker` does once its models are loaded
    engine = SignalEngine(config, store, registry, metrics)
    # one symbol, the latest closes one after another (each judged as of its own close)
    latencies = []
    sources: dict[str, int] = {}
    ladder: dict[str, int] = {}
    voting = []
    for k in range(repeats):  # an alt (the leader's window read too), unless BTCUSDT is all there is
        # the last 120 closes in order, and again; the depth window the heatmap CNN reads arrives
        # before each close as the ingestor writes it (a store holds 300 rows: a new one each round)
        start = last_start - (119 - k % 120) * MINUTE_MS
        if k % 120 == 0 and k:
            engine.store = store = await _bar_store(base, names, last_start)
        await store.write(_depth([names[-1]], start + MINUTE_MS, mid))
        event = BarEvent(names[-1], "1", start)
        t = time.perf_counter()
        result = await engine.compute(event)
        latencies.append((time.perf_counter() - t) * 1000)
        source = getattr(result, "source", "none")
        sources[source] = sources.get(source, 0) + 1
        rung = str(getattr(result, "ladder", None))
        ladder[rung] = ladder.get(rung, 0) + 1
        comps = getattr(result, "components", ())
        voting.append(sum(1 for c in comps if c.status == "voted"))
    # every symbol at one close, concurrently, as the worker would after a minute close: first a
    # minute inside the hour (the xx:59 close, each symbol's xx:58 signal computed before it, as live:
    # only the 1m windows moved since), then the top of the hour (every timeframe's window moved)
    await _burst(engine, store, names, last_start - 2 * MINUTE_MS, mid)
    runs_before = _session_runs(metrics)
    inside, inside_s = await _burst(engine, store, names, last_start - MINUTE_MS, mid)
    runs_between = _session_runs(metrics)
    results, burst_s = await _burst(engine, store, names, last_start, mid)
    runs_top = _session_runs(metrics) - runs_between
    session_of = {c.name: c.session.name for c in engine.models.current.components if c.session is not None}
    batches_top = sum(len(_ran(r, session_of)) for r in results)
    scoring = await _burst_with_scoring(engine, names, last_start)
    await engine.close()
    reads = await _store_reads(base, last_start, redis_url, repeats)
    lat = np.array(latencies)
    return {
        "per_signal_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "mean": round(float(lat.mean()), 2),
            "n": len(lat),
        },
        "components_voting_median": float(np.median(voting)) if voting else 0.0,
        "opted_in": opt_in,  # the components shipped off by default, enabled for this run
        "sources": sources,
        "ladder": ladder,  # which image-model rung ran: efficientnet-b3 where a GPU bound, else b0
        "burst": {  # the top of the hour: every window moved
            "symbols": symbols,
            "seconds": round(burst_s, 3),
            "signals_per_s": round(symbols / burst_s, 1),
            "signals": sum(1 for r in results if getattr(r, "source", None) is not None),
            # one per (symbol, model) run alone; batches waiting for a run slot share one run
            "session_runs": runs_top,
            "session_batches": batches_top,
        },
        "burst_inside_the_hour": {  # xx:59: only the 1m windows moved since each symbol's last signal
            "seconds": round(inside_s, 3),
            "signals": sum(1 for r in inside if getattr(r, "source", None) is not None),
            "votes_remembered_median": float(np.median([_remembered(r) for r in inside])),
            "session_runs": runs_between - runs_before,
        },
        "burst_with_scoring": scoring | {"ratio_vs_burst": round(scoring["seconds"] / burst_s, 3)},
        "store_read": reads,
        "aim": {"p99_ms": 25, "symbols_within_1s": 50, "artifacts_mb": 100},
    }


async def _burst(
    engine: SignalEngine, store: WindowStore, names: list[str], start: int, mid: float
) -> tuple[list[Signal | NoSignal], float]:
    """Every symbol's signal for the 1m bar starting at ``start``, at once (its depth rows written
    first, as the ingestor would have), and the seconds they took together."""
    await store.write(_depth(names, start + MINUTE_MS, mid))
    t = time.perf_counter()
    results = await asyncio.gather(*(engine.compute(BarEvent(n, "1", start)) for n in names))
    return list(results), time.perf_counter() - t


def _session_runs(metrics: WorkerMetrics) -> int:
    """``session.run`` calls so far, every model and provider together."""
    return int(
        sum(
            sample.value
            for family in metrics.inference_seconds.collect()
            for sample in family.samples
            if sample.name.endswith("_count")
        )
    )


def _ran(result: object, session_of: dict[str, str]) -> set[str]:
    """The sessions a signal's votes were run on (not remembered ones): a batch each."""
    return {session_of[c.name] for c in getattr(result, "components", ()) if c.status == "voted" and c.latency_ms}


def _remembered(result: object) -> int:
    """How many of a signal's votes repeated the component's last vote (latency 0: no run)."""
    return sum(1 for c in getattr(result, "components", ()) if c.status == "voted" and c.latency_ms == 0.0)


async def _bar_store(base: Bars, names: list[str], last_start: int) -> MemoryStore:
    """A store holding every symbol's windows up to the bar starting at ``last_start`` (the same
    bars for each), and as many depth rows as the ingestor keeps (300)."""
    store = MemoryStore(window_bars=WINDOW, depth_rows=300)
    await _fill(store, base, names, last_start)
    return store


async def _fill(store: WindowStore, base: Bars, names: list[str], last_start: int) -> None:
    for iv in INTERVALS:
        s = aggregate(base, int(iv))
        step = int(iv) * MINUTE_MS
        keep = s.start_ms <= (last_start - last_start % step if iv != "1" else last_start)
        bars = _bars(s, keep, WINDOW)
        await store.write(WriteBatch(bars={(n, iv): bars for n in names}))


async def _store_reads(base: Bars, last_start: int, redis_url: str, repeats: int) -> dict[str, Any]:
    """``read_symbol`` of one symbol holding full windows and 300 depth rows, with and without the 64 s
    of depth the heatmap CNN reads, each read after a new 1m bar was written, as at a live close: from
    a real Redis (a fresh key prefix, deleted after) decoding every record, as the worker's store
    reading it (the bars decoded at its last read reused: ``reuse_decoded``), and from the memory
    store. Median and p99 ms, and Redis over memory."""
    close = last_start + MINUTE_MS
    mid = float(base.close[-1])
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    redis = RedisStore(client, prefix=prefix, window_bars=WINDOW, depth_rows=300)
    reused = RedisStore(client, prefix=prefix, window_bars=WINDOW, depth_rows=300, reuse_decoded=True)
    memory = MemoryStore(window_bars=WINDOW, depth_rows=300)
    try:
        for store in (redis, memory):
            await _fill(store, base, [READ_SYMBOL], last_start)
            for k in range(5):  # 5 x 70 one-second rows: the 300 the ingestor keeps
                await store.write(_depth([READ_SYMBOL], close - (4 - k) * 70_000, mid))
        newest = (await memory.read_symbol(READ_SYMBOL, ("1",), 50, with_depth=False)).bars["1"][-1]
        later = (newest._replace(start=newest.start + k * MINUTE_MS) for k in itertools.count(1))
        out: dict[str, Any] = {"symbol_rows": {"bars_per_window": WINDOW, "depth_rows": 300}}
        for label, after in (("without_depth", None), ("with_depth", close - 65_000)):
            ms = {}
            for name, store in (("redis", redis), ("redis_reused", reused), ("memory", memory)):
                ms[name] = await _read_ms(store, after, repeats, later)
            out[label] = {
                "redis_ms": ms["redis"],
                "redis_reused_ms": ms["redis_reused"],
                "memory_ms": ms["memory"],
                "redis_minus_memory_p50_ms": round(ms["redis"]["p50"] - ms["memory"]["p50"], 3),
                "redis_reused_minus_memory_p50_ms": round(ms["redis_reused"]["p50"] - ms["memory"]["p50"], 3),
            }
        return out
    except StoreError as exc:  # the store's own error for a Redis that does not answer
        return {"skipped": f"no Redis at {redis_url}: {exc}"}
    finally:
        with contextlib.suppress(StoreError):
            await redis.delete_all()
        await redis.close()


async def _read_ms(
    store: WindowStore, depth_after_ms: int | None, repeats: int, later: Iterator[Bar]
) -> dict[str, float]:
    times = []
    for _ in range(repeats + 5):
        await store.write(WriteBatch(bars={(READ_SYMBOL, "1"): [next(later)]}))  # a close: one new 1m bar
        t = time.perf_counter()
        windows = await store.read_symbol(
            READ_SYMBOL, INTERVALS, 50, with_depth=depth_after_ms is not None, depth_after_ms=depth_after_ms
        )
        times.append((time.perf_counter() - t) * 1000)
        if len(windows.bars.get("1", [])) != WINDOW or (depth_after_ms is not None and len(windows.depth) < 64):
            raise RuntimeError(f"the store returned short windows: {len(windows.bars.get('1', []))} 1m bars")
    ms = np.array(times[5:])  # the first reads warm the connection and the scripts
    return {"p50": round(float(np.percentile(ms, 50)), 3), "p99": round(float(np.percentile(ms, 99)), 3)}


def _depth(names: list[str], close: int, mid: float) -> WriteBatch:
    """The 70 one-second depth rows before ``close`` of each of ``names`` (random sizes on the levels
    nearest the mid) and a READY book: what the ingestor has written by then."""
    rng = np.random.default_rng(close % 1_000_003)
    rows = []
    for ts in range(close - 70_000, close, 1000):
        bids, asks = np.zeros(BINS_PER_SIDE, np.float32), np.zeros(BINS_PER_SIDE, np.float32)
        bids[:3], asks[:3] = rng.exponential(5.0, 3), rng.exponential(5.0, 3)
        rows.append(DepthRow(ts, mid, bids, asks))
    book = BookStatus("READY", "", 1, close - 200, f"{mid:.2f}", "1", f"{mid * 1.0001:.2f}", "1")
    return WriteBatch(depth_rows={(n, 50): rows for n in names}, books={(n, 50): book for n in names})


async def _burst_with_scoring(engine: SignalEngine, names: list[str], close_start: int) -> dict[str, Any]:
    """The burst as the worker runs it: every symbol's signal computed, published and followed by its
    scoring step (the previous close's signals scored), all symbols at once; in-process stores."""
    signals, scores = MemorySignalStore(), MemoryScoreStore()
    scorer = Scorer(signals, scores, engine.metrics, horizon_minutes=engine.config.horizon_minutes)
    previous = await asyncio.gather(*(engine.compute(BarEvent(n, "1", close_start - MINUTE_MS)) for n in names))
    for r in previous:
        if isinstance(r, Signal):
            await signals.publish(r)
    steps: list[float] = []

    async def one(name: str) -> int:
        result, windows = await engine.compute_read(BarEvent(name, "1", close_start))
        if isinstance(result, Signal):
            await signals.publish(result)
        t = time.perf_counter()
        stored = await scorer.after(name, windows.bars.get("1", []), engine.models.current)
        steps.append((time.perf_counter() - t) * 1000)
        return stored

    t = time.perf_counter()
    stored = await asyncio.gather(*(one(n) for n in names))
    seconds = time.perf_counter() - t
    ms = np.array(steps)
    return {
        "seconds": round(seconds, 3),
        "scored": int(sum(stored)),
        "scoring_step_ms": {q: round(float(np.percentile(ms, v)), 2) for q, v in (("p50", 50), ("p99", 99))},
    }


def bench_inference(
    artifacts: Path,
    data: Path,
    symbols: int = 50,
    repeats: int = 200,
    threads: int = 1,
    *,
    eager: EagerBaseline,
    redis_url: str | None = None,
    concurrency: int = WorkerConfig.inference_concurrency,
) -> dict[str, Any]:
    """Every section of ``candlecast bench inference``; ``eager`` is the baseline ORT is compared with;
    the store reads go to ``redis_url`` (default: ``CANDLECAST_REDIS_URL``, else the local Redis);
    ``concurrency``: session runs in flight at once (the worker's default)."""
    return {
        "benchmark": "inference",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "torch": eager.version,
            "available_providers": ort.get_available_providers(),
            "ort_threads": threads,
            "inference_concurrency": concurrency,
        },
        "ort_vs_torch": _ort_vs_eager(artifacts, threads, max(20, repeats // 4), eager),
        "artifacts": _artifacts(artifacts),
        **asyncio.run(_signals(artifacts, data, symbols, repeats, threads, concurrency, bench_url(redis_url))),
    }


def _artifacts(artifacts: Path) -> dict[str, Any]:
    """How many ONNX files are shipped and their total size (the aim: under 100 MB)."""
    sizes = [p.stat().st_size for p in artifacts.glob("*.onnx")]
    return {"onnx_files": len(sizes), "megabytes": round(sum(sizes) / 1e6, 1)}
