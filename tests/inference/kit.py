"""Shared by the worker tests: tiny REAL models exported to ONNX, a manifest, and synthetic bars.

The models are untrained (their votes mean nothing); they are real TCN / EfficientNet graphs run
by real ONNX Runtime sessions, exported the way ``models/export.py`` does. ``test_kit.py`` checks the
kit itself: its bars pass the data checks and its manifest loads.
"""

from __future__ import annotations

import hashlib
import math
import random
import shutil
import threading
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import redis.asyncio as aioredis
import redis.exceptions as rex
from onnx import TensorProto, helper
from prometheus_client import CollectorRegistry

from inference.components import ModelRegistry
from inference.config import WorkerConfig
from inference.events import RedisEventSource
from inference.features import FEATURE_NAMES, FEATURE_SET_VERSION, WARMUP_BARS
from inference.manifest import Component, Manifest, sha256_file
from inference.metrics import WorkerMetrics
from inference.render import RENDERER_VERSION
from inference.runtime import CPU, SessionFactory
from inference.score_store import RedisScoreStore
from inference.signal import NoSignal, Signal
from inference.signal_store import RedisSignalStore
from inference.worker import Worker
from streaming.errors import StoreError
from streaming.ingestor import IngestConfig, Ingestor
from streaming.klines import Bar, interval_ms
from streaming.metrics import IngestMetrics
from streaming.redis_store import RedisStore
from streaming.sim.server import ExchangeSimulator
from streaming.store import WriteBatch
from tests.conftest import ARTIFACTS, SHIPPED_WINDOW
from tests.helpers import eventually

MINUTE = 60_000
T0 = 1_750_000_000_000 - 1_750_000_000_000 % (60 * MINUTE)  # an hour boundary
TCN_LENGTH = 16
TCN_NEED = TCN_LENGTH + WARMUP_BARS  # 49 bars
IMAGE_BARS, IMAGE_HEIGHT = 24, 54

_CACHE: dict[str, Path] = {}


# --- bars ---------------------------------------------------------------------------------------


def _d(x: float) -> Decimal:
    return Decimal(f"{x:.2f}")


def bar(start: int, interval: str = "1", symbol: str = "BTCUSDT", **override: str) -> Bar:
    """A plausible bar, a pure function of (symbol, interval, start), so rewrites are idempotent."""
    rng = random.Random(f"{symbol}:{interval}:{start}")
    base = 100.0 + 10.0 * math.sin(start / 3_600_000.0) + (len(symbol) % 7)
    o, c = base + rng.uniform(-0.5, 0.5), base + rng.uniform(-0.5, 0.5)
    h, lo = max(o, c) + rng.uniform(0.01, 0.3), min(o, c) - rng.uniform(0.01, 0.3)
    values = {"open": _d(o), "high": _d(h), "low": _d(lo), "close": _d(c), "volume": _d(rng.uniform(1, 10))}
    values |= {k: Decimal(v) for k, v in override.items()}
    return Bar(start, values["open"], values["high"], values["low"], values["close"], values["volume"], Decimal(0))


def window(interval: str, close: int, n: int, symbol: str = "BTCUSDT") -> list[Bar]:
    """The ``n`` bars of ``interval`` closed at exchange time ``close`` (oldest first)."""
    step = interval_ms(interval)
    last = (close // step) * step - step
    return [bar(last - (n - 1 - i) * step, interval, symbol) for i in range(n)]


def history(close: int, counts: dict[str, int], symbols: Iterable[str] = ("BTCUSDT",)) -> WriteBatch:
    return WriteBatch(bars={(s, iv): window(iv, close, n, s) for s in symbols for iv, n in counts.items()})


def closing(close: int, intervals: Iterable[str], symbols: Iterable[str] = ("BTCUSDT",)) -> WriteBatch:
    """The bars of every interval that closes exactly at ``close``."""
    out: dict[tuple[str, str], list[Bar]] = {}
    for s in symbols:
        for iv in intervals:
            step = interval_ms(iv)
            if close % step == 0:
                out[(s, iv)] = [bar(close - step, iv, s)]
    return WriteBatch(bars=out)


# --- models -------------------------------------------------------------------------------------


def tcn_component(
    root: Path, tf: str, file: str, version: str = "v1", weight: float = 1.0, horizon_minutes: int = 1
) -> Component:
    """A TCN reading ``tf`` bars that forecasts ``horizon_minutes`` ahead (multi-timeframe inputs, one target)."""
    return Component(
        name=f"tcn_{tf}m",
        kind="tcn",
        timeframe=tf,
        version=version,
        file=file,
        sha256=sha256_file(root / file),
        input={"name": "input", "shape": ["batch", len(FEATURE_NAMES), TCN_LENGTH], "dtype": "float32"},
        output={"name": "logits", "shape": ["batch", 1]},
        preprocessing={
            "features": FEATURE_SET_VERSION,
            "length": TCN_LENGTH,
            "warmup": WARMUP_BARS,
            "bars_needed": TCN_NEED,
        },
        horizon=f"log return over the next {horizon_minutes} min",
        horizon_minutes=horizon_minutes,
        weight=weight,
    )


def image_component(
    root: Path, tf: str, file: str = "efficientnet.onnx", version: str = "v1", horizon_minutes: int = 1
) -> Component:
    return Component(
        name=f"efficientnet_{tf}m",
        kind="efficientnet",
        timeframe=tf,
        version=version,
        file=file,
        sha256=sha256_file(root / file),
        input={"name": "input", "shape": ["batch", 3, IMAGE_HEIGHT, 3 * IMAGE_BARS], "dtype": "float32"},
        output={"name": "logits", "shape": ["batch", 1]},
        preprocessing={
            "renderer": "composite",
            "renderer_version": RENDERER_VERSION,
            "height": IMAGE_HEIGHT,
            "bars": IMAGE_BARS,
        },
        horizon=f"log return over the next {horizon_minutes} min",
        horizon_minutes=horizon_minutes,
    )


def b3_component(root: Path, tf: str, file: str = "efficientnet_b3.onnx") -> Component:
    """The ladder's upper rung for ``tf``: served where a GPU binds, in place of ``efficientnet_{tf}m``."""
    below = image_component(root, tf, file)
    return replace(below, name=f"efficientnet_b3_{tf}m", variant="b3", stands_in_for=f"efficientnet_{tf}m")


def export_tcn(path: Path, seed: int = 0, in_channels: int = len(FEATURE_NAMES)) -> Path:
    import torch

    from models.export import export_onnx
    from models.tcn import TCN

    torch.manual_seed(seed)
    model = TCN(in_channels=in_channels, channels=(8, 8), dilations=(1, 2))
    export_onnx(model, np.zeros((1, in_channels, TCN_LENGTH), np.float32), path)
    return path


def export_efficientnet(path: Path, seed: int = 0) -> Path:
    import torch

    from models.efficientnet import efficientnet
    from models.export import export_onnx

    torch.manual_seed(seed)
    model = efficientnet("b0", num_classes=1, stem_stride=2)
    export_onnx(model, np.zeros((1, 3, IMAGE_HEIGHT, 3 * IMAGE_BARS), np.float32), path)
    return path


def exploding_tcn(path: Path) -> Path:
    """A model with the TCN's input that loads and warms up (zeros) but raises on real inputs:
    ``Gather`` with an index computed from the input, out of range unless the input is all zeros."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", len(FEATURE_NAMES), TCN_LENGTH])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    nodes = [
        helper.make_node("ReduceSumSquare", ["input"], ["ss"], axes=[1, 2], keepdims=0),  # (batch,)
        helper.make_node("Mul", ["ss", "scale"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["idx"], to=TensorProto.INT64),
        helper.make_node("Gather", ["table", "idx"], ["picked"], axis=0),
        helper.make_node("Unsqueeze", ["picked", "axes"], ["logits"]),
    ]
    inits = [
        helper.make_tensor("scale", TensorProto.FLOAT, [], [1000.0]),
        helper.make_tensor("table", TensorProto.FLOAT, [1], [0.0]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "exploding", [x], [y], initializer=inits),
        opset_imports=[helper.make_opsetid("", 17)],
        ir_version=9,
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Artifacts exported once per test session: tcn_{1,5,15,60}m.onnx, tcn_1m_b.onnx, efficientnet.onnx,
    efficientnet_b3.onnx (a B0 with other weights: the ladder cares which rung a file is, not its size)."""
    if "dir" not in _CACHE:
        root = tmp_path_factory.mktemp("model-cache")
        for tf in ("1", "5", "15", "60"):
            export_tcn(root / f"tcn_{tf}m.onnx", seed=int(tf))
        export_tcn(root / "tcn_1m_b.onnx", seed=99)
        export_efficientnet(root / "efficientnet.onnx")
        export_efficientnet(root / "efficientnet_b3.onnx", seed=3)  # the ladder's upper rung (other weights)
        _CACHE["dir"] = root
    return _CACHE["dir"]


def artifacts(
    cache: Path,
    dest: Path,
    tcn: Iterable[str] = ("1", "5"),
    image: Iterable[str] = ("1", "5"),
    version: str = "v1",
) -> Path:
    """A fresh artifacts directory (copies, so a test may tamper with it) with its manifest."""
    dest.mkdir(parents=True, exist_ok=True)
    components = []
    for tf in tcn:
        shutil.copy(cache / f"tcn_{tf}m.onnx", dest / f"tcn_{tf}m.onnx")
        components.append(tcn_component(dest, tf, f"tcn_{tf}m.onnx", version))
    image = list(image)
    if image:
        shutil.copy(cache / "efficientnet.onnx", dest / "efficientnet.onnx")
        components += [image_component(dest, tf, version=version) for tf in image]
    write_manifest(dest, components)
    return dest


def write_manifest(dest: Path, components: Iterable[Component], created: str = "2026-01-01T00:00:00+00:00") -> None:
    Manifest(components=tuple(components), created=created).save(dest / "manifest.json")


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- a GPU this machine does not have ---


class VanishingGpu:
    """Stands in for ONNX Runtime's CUDA provider, which this machine cannot bind (it has no GPU).

    Passed to the worker's sessions as their session factory (with :attr:`providers` as what the
    runtime offers): sessions asked for with a GPU provider first compute with a real CPU session but
    report ``CUDAExecutionProvider`` as bound, until :attr:`lost` is set: then every run raises what
    ORT raises when the device is gone. A run of a model named in :attr:`slow` (its file name) takes
    that much longer; one named in :attr:`stalled`
    blocks (:attr:`stalling` set) until :attr:`released` is set: one far slower than usual (a TensorRT
    engine built on its first run, a device shared with another job). Sessions asked for on the CPU
    alone are real and untouched.
    """

    providers = ("CUDAExecutionProvider", CPU)

    def __init__(self, *, stall_cpu: bool = False) -> None:
        """``stall_cpu``: sessions asked for on the CPU alone are wrapped too (they report the CPU
        bound, and :attr:`stalled` and :attr:`ran` apply to them)."""
        self.stall_cpu = stall_cpu
        self.lost = False
        self.stalled: set[str] = set()
        self.released = threading.Event()
        self.stalling = threading.Event()  # set once a stalled run has begun
        self.slow: dict[str, float] = {}  # by file: every run of it takes that many seconds longer
        self.built_on_cpu = 0
        self.ran: list[tuple[str, int]] = []  # (file, rows) of every run, in order

    def build(self, path: str, options: ort.SessionOptions, /, *, providers: list[str]) -> Any:
        if providers == [CPU] and not self.stall_cpu:
            self.built_on_cpu += 1
            return ort.InferenceSession(path, options, providers=providers)
        return _GpuSession(self, ort.InferenceSession(path, options, providers=[CPU]), providers, Path(path).name)


class _GpuSession:
    """A session that says it is bound to the GPU (see :class:`VanishingGpu`)."""

    def __init__(self, gpu: VanishingGpu, real: ort.InferenceSession, providers: list[str], file: str) -> None:
        self._gpu = gpu
        self._file = file
        self._real = real
        self._providers = [p for p in providers if p != "TensorrtExecutionProvider"]

    def get_providers(self) -> list[str]:
        return self._providers

    def get_inputs(self) -> Any:
        return self._real.get_inputs()

    def run(self, outputs: Any, feed: dict[str, Any]) -> Any:
        if self._gpu.lost:
            raise RuntimeError("[ONNXRuntimeError] : 1 : FAIL : CUDA failure 999: unknown error ; GPU=0")
        if self._file in self._gpu.stalled:
            self._gpu.stalling.set()
            self._gpu.released.wait(timeout=60.0)
        time.sleep(self._gpu.slow.get(self._file, 0.0))
        self._gpu.ran.append((self._file, len(next(iter(feed.values())))))
        return self._real.run(outputs, feed)


# --- a worker on a real Redis ---------------------------------------------------------------------


@dataclass
class Harness:
    worker: Worker
    store: RedisStore
    signals: RedisSignalStore
    events: RedisEventSource
    metrics: WorkerMetrics
    client: aioredis.Redis
    scores: RedisScoreStore

    def sample(self, name: str, **labels: str) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

    async def outcome(self, symbol: str, start: int, within: float = 10.0) -> Signal | NoSignal:
        """The signal, or the recorded reason for none, for (symbol, bar start), once the event is acked."""
        found: list[Signal | NoSignal] = []

        async def done() -> bool:
            try:
                if await self.pending():
                    return False
                signals = [s for s in await self.signals.history(symbol, 50) if s.bar.start == start]
                no = await self.signals.no_signal(symbol)
            except (StoreError, rex.ConnectionError):  # a pooled connection that died with a restarted Redis
                return False
            if signals:
                found.append(signals[0])
                return True
            if no is not None and no.bar.start == start:
                found.append(no)
                return True
            return False

        await eventually(done, within, what=f"an outcome for {symbol} bar {start}")
        return found[0]

    async def pending(self) -> int:
        return int((await self.client.xpending(self.events.stream, self.events.group))["pending"])

    async def holding(self) -> bool:
        """Whether some event is delivered and not yet acknowledged (a signal in progress)."""
        return await self.pending() > 0


@asynccontextmanager
async def running_worker(
    redis_url: str,
    store: RedisStore,
    models: Path,
    *,
    consumer: str = "w1",
    group: str = "workers",
    prefer_gpu: bool = False,
    session_factory: SessionFactory = ort.InferenceSession,
    available_providers: Sequence[str] | None = None,
    opt_in: Sequence[str] = (),
    gpu: VanishingGpu | None = None,
    **config: Any,
) -> AsyncIterator[Harness]:
    """A started :class:`Worker` (consumer group created first, so no event written after is missed);
    with ``gpu``, its sessions prefer that stand-in GPU."""
    if gpu is not None:
        prefer_gpu, session_factory, available_providers = True, gpu.build, gpu.providers
    client = aioredis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=1.0)
    metrics = WorkerMetrics(CollectorRegistry())
    registry = ModelRegistry(
        models,
        prefer_gpu=prefer_gpu,
        poll_s=3600,
        metrics=metrics,
        session_factory=session_factory,
        available_providers=available_providers,
        opt_in=opt_in,
    )
    await registry.load()
    events = RedisEventSource(client, store.keys.bar_events, group=group, consumer=consumer)
    await events.setup()
    signals = RedisSignalStore(client, prefix=store.prefix)
    fields: dict[str, Any] = {
        "intervals": ("1", "5", "60"),  # 60: the fallback rule reads 1h closes
        "coarse_wait_ms": 200,
        "latency_budget_ms": 5000,
        "block_ms": 100,
        "backoff_base_s": 0.02,
        "backoff_cap_s": 0.2,
        "lag_every_s": 0.1,
    } | config
    scores = RedisScoreStore(client, prefix=store.prefix)
    worker = Worker(WorkerConfig(**fields), store, events, signals, registry, metrics, scores=scores)
    await worker.start()
    try:
        yield Harness(worker, store, signals, events, metrics, client, scores)
    finally:
        await worker.close()
        await client.aclose()


# --- the shipped models behind a simulated market (end to end) ----------------------------------


@dataclass
class ShippedPipeline:
    """Simulator → :class:`Ingestor` → Redis → :class:`Worker` with the shipped models; not started."""

    store: RedisStore
    ingestor: Ingestor
    worker: Worker
    models: ModelRegistry
    signals: RedisSignalStore
    metrics: WorkerMetrics


SHIPPED_INTERVALS = ("1", "5", "15", "60")  # the timeframes the shipped models cover
SHIPPED_SYMBOL = "BTCUSDT"  # what the ``shipped_sim`` fixture replays


async def shipped_pipeline(
    client: aioredis.Redis,
    prefix: str,
    sim: ExchangeSimulator,
    *,
    group: str,
    registry: CollectorRegistry,
    worker_client: aioredis.Redis | None = None,
) -> ShippedPipeline:
    """A Redis window store under ``prefix``, an ingestor of :data:`SHIPPED_SYMBOL` from ``sim`` into
    it and a worker (consumer ``w1`` of ``group``, its models loaded) writing signals under the same
    prefix; metrics in ``registry``. ``worker_client``: the worker's own connection (another Redis
    user), else ``client``."""
    symbol, intervals = SHIPPED_SYMBOL, SHIPPED_INTERVALS
    store = RedisStore(client, prefix=prefix, window_bars=SHIPPED_WINDOW, depth_rows=50)
    wclient = client if worker_client is None else worker_client
    wstore = store if worker_client is None else RedisStore(wclient, prefix=prefix, window_bars=SHIPPED_WINDOW)
    metrics = WorkerMetrics(registry)
    models = ModelRegistry(ARTIFACTS, prefer_gpu=False, metrics=metrics)
    await models.load()
    events = RedisEventSource(wclient, store.keys.bar_events, group=group, consumer="w1")
    await events.setup()
    signals = RedisSignalStore(wclient, prefix=store.prefix)
    scores = RedisScoreStore(wclient, prefix=store.prefix)
    worker = Worker(
        WorkerConfig(intervals=intervals, block_ms=100), wstore, events, signals, models, metrics, scores=scores
    )
    config = IngestConfig(
        ws_url=sim.ws_url,
        rest_url=sim.rest_url,
        symbols=(symbol,),
        intervals=intervals,
        rest_rate_per_s=200.0,
        backoff_base_s=0.05,
        backoff_cap_s=0.3,
    )
    return ShippedPipeline(store, Ingestor(config, store, IngestMetrics(registry)), worker, models, signals, metrics)
