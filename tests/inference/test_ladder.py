"""The seed's failover ladder: EfficientNet-B3 where a GPU provider binds, B0 on the CPU or when the
B3 fails on its GPU, the rule last; every signal says which ran (``ladder``)."""

from __future__ import annotations

import asyncio
import gc
import math
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inference.components import ModelRegistry, load_model_set
from inference.config import WorkerConfig
from inference.engine import SignalEngine
from inference.ensemble import stacked_p_up
from inference.manifest import Component, EnsembleSpec, Manifest
from inference.metrics import WorkerMetrics
from inference.runtime import CPU, GpuNotBound, ModelSession, RuntimeFailure
from inference.signal import NoSignal, Signal
from streaming.memory_store import MemoryStore
from streaming.redis_store import RedisStore
from streaming.store import BarEvent
from tests.inference.kit import (
    MINUTE,
    T0,
    Harness,
    VanishingGpu,
    b3_component,
    history,
    image_component,
    model_cache,
    running_worker,
    tcn_component,
)

pytestmark = pytest.mark.timeout(60)

SYMBOL = "BTCUSDT"
CLOSE = T0 + 60 * MINUTE
CUDA = "CUDAExecutionProvider"
STACKER = EnsembleSpec(1, {"tcn_1m": 0.7, "efficientnet_1m": 1.9}, 0.05, {"method": "platt", "a": 1.2, "b": -0.1}, 0.55)


@pytest.fixture
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return model_cache(tmp_path_factory)


def ladder(cache: Path, dest: Path, *, rung: Component | None = None, ensemble: EnsembleSpec | None = None) -> Path:
    """tcn_1m, efficientnet_1m (B0) and, above it, efficientnet_b3_1m (or ``rung``)."""
    dest.mkdir(parents=True)
    for name in ("tcn_1m.onnx", "efficientnet.onnx", "efficientnet_b3.onnx"):
        shutil.copy(cache / name, dest / name)
    top = rung if rung is not None else b3_component(dest, "1")
    components = (tcn_component(dest, "1", "tcn_1m.onnx"), image_component(dest, "1"), top)
    Manifest(components=components, created="2026-12-03T00:00:00+00:00", ensemble=ensemble).save(dest / "manifest.json")
    return dest


def status(s: Signal) -> dict[str, tuple[str, str | None]]:
    return {c.name: (c.status, c.reason) for c in s.components}


async def signal_at(h: Harness, store: RedisStore, k: int) -> Signal | NoSignal:
    await store.write(history(CLOSE + k * MINUTE, {"1": 60, "5": 60}))
    return await h.outcome(SYMBOL, CLOSE + (k - 1) * MINUTE)


def logit(p: float) -> float:
    return math.log(p / (1.0 - p))


async def test_on_a_cpu_host_the_b0_serves_and_the_b3_is_never_loaded(
    redis_url: str, redis_store: RedisStore, cache: Path, tmp_path: Path
) -> None:
    models = ladder(cache, tmp_path / "artifacts")
    async with running_worker(redis_url, redis_store, models) as h:  # prefer_gpu=False: the CPU alone
        result = await signal_at(h, redis_store, 0)
        assert isinstance(result, Signal) and result.source == "ensemble"
        assert status(result) == {
            "tcn_1m": ("voted", None),
            "efficientnet_1m": ("voted", None),
        }  # the idle rung is not one of the signal's voices: `ladder` says which ran
        assert result.ladder == "efficientnet-b0"
        assert not result.partial  # an idle rung is not a missing voice
        dropped = "candlecast_components_dropped_total"
        assert h.sample(dropped, component="efficientnet_b3_1m", reason="gpu_not_bound") == 0
        assert h.sample("candlecast_components_enabled", component="efficientnet_b3_1m") == 0
    loaded = load_model_set(models, prefer_gpu=False)
    assert set(loaded.sessions) == {"tcn_1m.onnx", "efficientnet.onnx"}  # none (no memory) for an idle rung


def test_a_gpu_provider_that_binds_the_cpu_instead_leaves_the_b3_idle(cache: Path, tmp_path: Path) -> None:
    # The real ONNX Runtime here has no CUDA: asked for it, it binds the CPU (or refuses), as a GPU
    # wheel does on a host whose driver is missing. The rung must notice, not run on the CPU.
    models = ladder(cache, tmp_path / "artifacts")
    loaded = load_model_set(models, prefer_gpu=True, available_providers=(CUDA, CPU))
    by_name = {c.name: c for c in loaded.components}
    assert by_name["efficientnet_b3_1m"].disabled == "gpu_not_bound"
    assert "efficientnet_1m serves" in by_name["efficientnet_b3_1m"].detail
    assert by_name["efficientnet_1m"].disabled is None and by_name["efficientnet_1m"].session is not None
    assert loaded.stand_ins == {}
    with pytest.raises(GpuNotBound):
        ModelSession("b3", models / "efficientnet_b3.onnx", prefer_gpu=False, gpu_only=True)


async def test_b3_on_the_gpu_fills_b0s_slot_then_b0_takes_over_when_the_gpu_fails(
    redis_url: str, redis_store: RedisStore, cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gc.collect()  # what earlier tests left is collected now, not counted against this one
    caplog.clear()
    gpu = VanishingGpu()
    models = ladder(cache, tmp_path / "artifacts", ensemble=STACKER)
    async with running_worker(redis_url, redis_store, models, gpu=gpu) as h:
        first = await signal_at(h, redis_store, 0)
        assert isinstance(first, Signal) and first.source == "ensemble" and first.calibrated
        assert status(first) == {
            "tcn_1m": ("voted", None),
            "efficientnet_b3_1m": ("voted", None),
        }  # the B0 stands by, out of the signal
        assert first.ladder == "efficientnet-b3" and not first.partial
        b3 = next(c for c in first.components if c.name == "efficientnet_b3_1m")
        tcn = next(c for c in first.components if c.name == "tcn_1m")
        assert b3.provider == CUDA and b3.stands_in_for == "efficientnet_1m"
        assert b3.weight == STACKER.weights["efficientnet_1m"]  # the B0's stacker slot
        assert b3.p_up is not None and tcn.p_up is not None
        slot = {"tcn_1m": logit(tcn.p_up), "efficientnet_1m": logit(b3.p_up)}
        assert first.p_up == pytest.approx(stacked_p_up(slot, STACKER), abs=1e-4)
        assert h.sample("candlecast_components_dropped_total", component="efficientnet_1m", reason="standby") == 0

        gpu.lost = True  # the device falls off the bus: B3 fails, B0 runs in the same signal
        second = await signal_at(h, redis_store, 1)
        assert isinstance(second, Signal) and second.source == "ensemble"
        assert status(second) == {
            "tcn_1m": ("voted", None),
            "efficientnet_1m": ("voted", None),
            "efficientnet_b3_1m": ("dropped", "gpu_failed"),
        }
        assert second.ladder == "efficientnet-b0" and not second.partial
        b0 = next(c for c in second.components if c.name == "efficientnet_1m")
        assert b0.provider == CPU and b0.weight == STACKER.weights["efficientnet_1m"]
        assert h.sample("candlecast_components_dropped_total", component="efficientnet_b3_1m", reason="gpu_failed") == 1

        third = await signal_at(h, redis_store, 2)  # the broken rung is not tried again
        assert isinstance(third, Signal) and status(third)["efficientnet_b3_1m"] == ("dropped", "gpu_failed")
        assert status(third)["efficientnet_1m"] == ("voted", None)
        assert gpu.built_on_cpu == 2  # the TCN and the B0 moved to the CPU; the B3 never does
    gc.collect()  # the failed run's error was taken by the signal: no future is left holding it unread
    messages = [r.getMessage() for r in caplog.records]
    unread = [m for m in messages if "never retrieved" in m and "CUDA" in m]
    assert not unread, unread


async def test_a_b3_past_its_share_of_the_budget_hands_the_same_signal_to_the_b0(
    redis_url: str, redis_store: RedisStore, cache: Path, tmp_path: Path
) -> None:
    """The B3 stops answering (the TCN and the B0 on the same GPU do not): by its share of the latency
    budget (``rung_share``) it is dropped as ``late`` and taken down, and the B0 answers in the rest,
    in the same signal. One inference slot: the stalled B3 holds a rung's slot, not the CPU's."""
    gpu = VanishingGpu()
    models = ladder(cache, tmp_path / "artifacts", ensemble=STACKER)
    async with running_worker(
        redis_url,
        redis_store,
        models,
        gpu=gpu,
        latency_budget_ms=8000,
        rung_share=0.25,
        inference_concurrency=1,
    ) as h:
        try:
            first = await signal_at(h, redis_store, 0)
            assert isinstance(first, Signal) and first.ladder == "efficientnet-b3"
            gpu.stalled.add("efficientnet_b3.onnx")
            second = await signal_at(h, redis_store, 1)
            assert isinstance(second, Signal) and second.source == "ensemble"
            assert status(second)["efficientnet_b3_1m"] == ("dropped", "late")
            assert status(second)["efficientnet_1m"] == ("voted", None)  # the rung below
            assert status(second)["tcn_1m"] == ("voted", None)
            assert second.ladder == "efficientnet-b0" and not second.partial
            b0 = next(c for c in second.components if c.name == "efficientnet_1m")
            assert b0.provider == CUDA and b0.weight == STACKER.weights["efficientnet_1m"]
            assert h.sample("candlecast_components_dropped_total", component="efficientnet_b3_1m", reason="late") == 1
            third = await signal_at(h, redis_store, 2)  # the late rung is down: the B0 serves at once
            assert isinstance(third, Signal) and status(third)["efficientnet_b3_1m"] == ("dropped", "gpu_failed")
            assert status(third)["efficientnet_1m"] == ("voted", None)
        finally:
            gpu.released.set()


async def test_a_b3_late_only_for_queueing_behind_another_symbols_run_is_dropped_not_taken_down(
    cache: Path, tmp_path: Path
) -> None:
    """Two symbols at one close, one rung slot, every B3 run 3.5 s of the rung's 5 s: the first symbol's
    B3 votes; the second's starts only when that run ends, so it is late and the B0 answers for it,
    but its run had barely begun: the GPU is not taken down, and the next signal's B3 votes."""
    gpu = VanishingGpu()
    models = ladder(cache, tmp_path / "artifacts", ensemble=STACKER)
    symbols = ("BTCUSDT", "ETHUSDT")
    store = MemoryStore(window_bars=128)
    await store.write(history(CLOSE, {"1": 60, "5": 60, "60": 20}, symbols))
    registry = ModelRegistry(models, prefer_gpu=True, session_factory=gpu.build, available_providers=gpu.providers)
    await registry.load()
    config = WorkerConfig(
        intervals=("1", "5", "60"), latency_budget_ms=20_000.0, rung_share=0.25, inference_concurrency=1
    )
    engine = SignalEngine(config, store, registry, WorkerMetrics(CollectorRegistry()))
    b3 = next(c for c in registry.current.enabled if c.name == "efficientnet_b3_1m").session
    assert b3 is not None
    gpu.slow["efficientnet_b3.onnx"] = 3.5
    try:
        burst = await asyncio.gather(*(engine.compute(BarEvent(s, "1", CLOSE - MINUTE)) for s in symbols))
        assert all(isinstance(s, Signal) for s in burst)
        ran, queued = sorted(burst, key=lambda s: status(s)["efficientnet_b3_1m"] != ("voted", None))
        assert isinstance(ran, Signal) and isinstance(queued, Signal)
        assert ran.ladder == "efficientnet-b3" and status(ran)["efficientnet_b3_1m"] == ("voted", None)
        assert status(queued)["efficientnet_b3_1m"] == ("dropped", "late")
        assert status(queued)["efficientnet_1m"] == ("voted", None) and queued.ladder == "efficientnet-b0"
        assert b3.broken is None  # queueing is no GPU failure

        gpu.slow.clear()
        await store.write(history(CLOSE + MINUTE, {"1": 60, "5": 60, "60": 20}, symbols))
        after = await engine.compute(BarEvent(queued.symbol, "1", CLOSE))
        assert isinstance(after, Signal) and status(after)["efficientnet_b3_1m"] == ("voted", None)
    finally:
        gpu.slow.clear()
        await engine.close()


async def test_a_b3_with_no_b0_standing_by_keeps_the_whole_budget(
    redis_url: str, redis_store: RedisStore, cache: Path, tmp_path: Path
) -> None:
    """The B0's artifact is corrupt, so nothing stands below the B3: cutting it at its share would
    leave the slot empty, so it has the whole budget, and a slow run still votes."""
    gpu = VanishingGpu()
    models = ladder(cache, tmp_path / "artifacts", ensemble=STACKER)
    with (models / "efficientnet.onnx").open("ab") as fh:
        fh.write(b"\0")  # its sha256 no longer matches: the B0 is refused
    async with running_worker(
        redis_url,
        redis_store,
        models,
        gpu=gpu,
        latency_budget_ms=30_000,
        rung_share=0.05,  # 1.5 s
    ) as h:
        gpu.stalled.add("efficientnet_b3.onnx")
        release = threading.Timer(4.0, gpu.released.set)  # well past its share, well inside the budget
        release.start()
        try:
            result = await signal_at(h, redis_store, 0)
        finally:
            release.cancel()
            gpu.released.set()
        assert isinstance(result, Signal) and result.ladder == "efficientnet-b3"
        assert status(result)["efficientnet_b3_1m"] == ("voted", None)
        assert status(result)["efficientnet_1m"] == ("dropped", "artifact_checksum")


def test_a_gpu_only_session_that_fails_stays_down_for_a_while_then_is_tried_again(cache: Path) -> None:
    gpu = VanishingGpu()
    now = [0.0]
    path = cache / "efficientnet_b3.onnx"
    session = ModelSession(
        "b3", path, gpu_only=True, session_factory=gpu.build, available_providers=gpu.providers, clock=lambda: now[0]
    )
    assert session.provider == CUDA and session.broken is None
    gpu.lost = True
    x = np.zeros((1, *[int(d) for d in image_component(cache, "1").input["shape"][1:]]), np.float32)
    with pytest.raises(RuntimeFailure, match="CUDA failure"):
        session.run(x)
    gpu.lost = False  # the device is back (a transient fault) ...
    now[0] = 299.0
    with pytest.raises(RuntimeFailure, match="not run since its GPU failed"):  # ... not tried yet
        session.run(x)
    now[0] = 300.0  # retry_after_s (300 s by default) later, the next signal tries it again
    assert session.broken is None and session.run(x).shape == (1, 1)
    assert gpu.built_on_cpu == 0  # never moved to the CPU


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"stands_in_for": "efficientnet_5m"}, "no such component"),
        ({"stands_in_for": "efficientnet_b3_1m"}, "no such component"),  # itself
        ({"timeframe": "5", "name": "efficientnet_b3_5m"}, "another timeframe or horizon"),
        ({"horizon_minutes": 5}, "another timeframe or horizon"),
    ],
)
def test_a_rung_that_stands_in_for_nothing_it_can_replace_is_refused(
    cache: Path, tmp_path: Path, change: dict[str, object], why: str
) -> None:
    rung = replace(b3_component(cache, "1"), **change)  # type: ignore[arg-type]
    models = ladder(cache, tmp_path / "artifacts", rung=rung)
    loaded = load_model_set(models, prefer_gpu=False)
    bad = next(c for c in loaded.components if c.name == rung.name)
    assert bad.disabled == "bad_manifest_entry" and why in bad.detail
    assert all(c.disabled is None for c in loaded.components if c is not bad)


def test_a_rung_counts_for_its_slots_weight_without_a_stacker(cache: Path, tmp_path: Path) -> None:
    models = ladder(cache, tmp_path / "artifacts")
    loaded = load_model_set(models, prefer_gpu=False, weights={"efficientnet_1m": 0.25})
    assert {c.name: c.weight for c in loaded.components} == {
        "tcn_1m": 1.0,
        "efficientnet_1m": 0.25,
        "efficientnet_b3_1m": 0.25,  # an operator's weight for the slot holds whichever rung runs
    }
