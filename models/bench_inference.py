"""``candlecast bench inference``: the shipped models on this machine, as JSON.

* ONNX Runtime vs PyTorch eager on the same inputs (same architecture, same thread count; eager
  uses freshly initialised weights, which do not change the arithmetic done);
* per-signal compute latency p50/p99 through the worker's own ``SignalEngine`` (read from the store,
  render + features, batched inference, ensemble) for one symbol and all timeframes;
* throughput: all symbols of a minute close computed concurrently, wall time and signals/s.

Lives in ``models`` because the eager baseline needs torch, which serving never imports.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort
import torch

from inference.components import ModelRegistry
from inference.config import WorkerConfig
from inference.engine import SignalEngine
from inference.metrics import WorkerMetrics
from inference.runtime import ModelSession
from models.data import MINUTE_MS, aggregate, load_series
from models.efficientnet import efficientnet
from models.tcn import TCN
from streaming.klines import Bar
from streaming.memory_store import MemoryStore
from streaming.store import BarEvent, WriteBatch

__all__ = ["bench_inference"]

INTERVALS = ("1", "5", "15", "60")


def _median_ms(fn: Any, x: Any, repeats: int) -> float:
    for _ in range(3):
        fn(x)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return float(np.median(times) * 1000)


def _ort_vs_torch(artifacts: Path, threads: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    out: dict[str, Any] = {}
    rng = np.random.default_rng(0)
    cases = {
        "tcn_1m.onnx": (TCN(in_channels=8), rng.standard_normal((1, 8, 64)).astype(np.float32)),
        "efficientnet.onnx": (
            efficientnet("b0", in_channels=3, num_classes=1, stem_stride=2),
            rng.random((4, 3, 54, 72)).astype(np.float32),  # the four timeframes of one symbol
        ),
    }
    for name, (model, x) in cases.items():
        session = ModelSession(name, artifacts / name, prefer_gpu=True, threads=threads)
        model.eval()
        xt = torch.from_numpy(x)

        def eager(v: torch.Tensor, m: torch.nn.Module = model) -> None:
            with torch.no_grad():
                m(v)

        ort_ms = _median_ms(session.run, x, repeats)
        torch_ms = _median_ms(eager, xt, repeats)
        out[name] = {
            "batch": int(x.shape[0]),
            "provider": session.provider,
            "onnxruntime_ms": round(ort_ms, 3),
            "torch_eager_ms": round(torch_ms, 3),
            "speedup_ort_vs_torch": round(torch_ms / ort_ms, 2),
        }
    return out


def _bars(values: npt.NDArray[np.float64], starts: npt.NDArray[np.int64]) -> list[Bar]:
    def d(x: float) -> Decimal:
        return Decimal(repr(float(x)))

    return [
        Bar(int(t), d(o), d(h), d(lo), d(c), d(v), Decimal(0))
        for t, (o, h, lo, c, v) in zip(starts, values, strict=True)
    ]


async def _signals(artifacts: Path, data: Path, symbols: int, repeats: int, threads: int) -> dict[str, Any]:
    base = load_series(data)
    window = 400
    store = MemoryStore(window_bars=window, depth_rows=10)
    names = [f"S{i:02d}USDT" for i in range(symbols)]
    last_start = int(base.start_ms[-1]) - int(base.start_ms[-1]) % (60 * MINUTE_MS) - MINUTE_MS  # a 1h boundary - 1m
    for iv in INTERVALS:
        s = aggregate(base, int(iv))
        keep = (
            s.start_ms <= last_start - (last_start % (int(iv) * MINUTE_MS)) if iv != "1" else s.start_ms <= last_start
        )
        starts, values = s.start_ms[keep][-window:], s.ohlcv[keep][-window:]
        bars = _bars(values, starts)
        await store.write(WriteBatch(bars={(n, iv): bars for n in names}))
    config = WorkerConfig(
        intervals=INTERVALS, latency_budget_ms=5_000.0, coarse_wait_ms=0.0, inference_concurrency=max(1, threads)
    )
    metrics = WorkerMetrics()
    registry = ModelRegistry(artifacts, prefer_gpu=True, threads=threads, metrics=metrics)
    await registry.load()
    engine = SignalEngine(config, store, registry, metrics)
    # one symbol, the latest closes one after another (each judged as of its own close)
    latencies = []
    sources: dict[str, int] = {}
    voting = []
    for k in range(repeats):
        event = BarEvent(names[0], "1", last_start - (k % 120) * MINUTE_MS)
        t = time.perf_counter()
        result = await engine.compute(event)
        latencies.append((time.perf_counter() - t) * 1000)
        source = getattr(result, "source", "none")
        sources[source] = sources.get(source, 0) + 1
        comps = getattr(result, "components", ())
        voting.append(sum(1 for c in comps if c.status == "voted"))
    # every symbol at one close, concurrently, as the worker would after a minute close
    event_start = last_start
    t = time.perf_counter()
    results = await asyncio.gather(*(engine.compute(BarEvent(n, "1", event_start)) for n in names))
    burst_s = time.perf_counter() - t
    await engine.close()
    lat = np.array(latencies)
    return {
        "per_signal_ms": {
            "p50": round(float(np.percentile(lat, 50)), 2),
            "p99": round(float(np.percentile(lat, 99)), 2),
            "mean": round(float(lat.mean()), 2),
            "n": len(lat),
        },
        "components_voting_median": float(np.median(voting)) if voting else 0.0,
        "sources": sources,
        "burst": {
            "symbols": symbols,
            "seconds": round(burst_s, 3),
            "signals_per_s": round(symbols / burst_s, 1),
            "signals": sum(1 for r in results if getattr(r, "source", None) is not None),
        },
        "aim": {"p99_ms": 25, "symbols_within_1s": 50},
    }


def bench_inference(
    artifacts: Path, data: Path, symbols: int = 50, repeats: int = 200, threads: int = 1
) -> dict[str, Any]:
    return {
        "benchmark": "inference",
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "onnxruntime": ort.__version__,
            "torch": torch.__version__,
            "available_providers": ort.get_available_providers(),
            "ort_threads": threads,
        },
        "ort_vs_torch": _ort_vs_torch(artifacts, threads, repeats=max(20, repeats // 4)),
        **asyncio.run(_signals(artifacts, data, symbols, repeats, threads)),
    }
