"""The worker on a real Redis with real ONNX sessions: one signal per (symbol, finest close), what it
carries, how it is published, and the timing rules (coarser bars awaited, a latency budget)."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path
from typing import Any

import onnxruntime as ort
import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from redis.asyncio.client import PubSub

import inference.features
from inference.components import ModelRegistry
from inference.config import WorkerConfig
from inference.engine import SignalEngine
from inference.metrics import WorkerMetrics
from inference.runtime import CPU
from inference.signal import (
    BarRef,
    ComponentReport,
    Freshness,
    NoSignal,
    Signal,
    SignalFormatError,
)
from inference.signal_store import MemorySignalStore, Published, RedisSignalStore, SignalStore
from service.bench import sample_signal
from streaming.memory_store import MemoryStore
from streaming.redis_keys import RedisKeys
from streaming.redis_store import RedisStore
from streaming.store import BarEvent, BookStatus
from tests.helpers import eventually
from tests.inference.kit import MINUTE, T0, VanishingGpu, artifacts, closing, history, model_cache, running_worker

pytestmark = pytest.mark.timeout(60)

SYMBOL = "BTCUSDT"


@pytest.fixture
def models(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> Path:
    return artifacts(model_cache(tmp_path_factory), tmp_path / "artifacts", tcn=("1", "5"), image=("1", "5"))


def a_signal(start: int, symbol: str = SYMBOL) -> Signal:
    """A signal with one voting and one dropped component, and a timeframe with no fresh bar."""
    reports = (
        ComponentReport("tcn_1m", "1", "next 1m bar", 0.55, 1.0, "v1", CPU, 0.4, "voted"),
        ComponentReport("tcn_5m", "5", "next 5m bar", None, 1.0, "v1", CPU, None, "dropped", "stale_window"),
    )
    s = sample_signal(start, symbol, components=reports)
    return dataclasses.replace(s, freshness=Freshness({"1": start, "5": None}, "READY", 12))


def test_signal_json_round_trips_and_garbage_is_refused() -> None:
    s = a_signal(T0)
    body = orjson.loads(s.to_json())
    assert body["bar"] == {"interval": "1", "start": T0, "close_time": T0 + MINUTE}
    assert body["components"][1] == {
        "name": "tcn_5m",
        "timeframe": "5",
        "horizon": "next 5m bar",
        "p_up": None,
        "weight": 1.0,
        "version": "v1",
        "provider": CPU,
        "latency_ms": None,
        "status": "dropped",
        "reason": "stale_window",
        "horizon_minutes": None,
        "expected_move_bp": None,
        "volatility_bp": None,
        "stands_in_for": None,
    }
    assert body["ladder"] is None  # no image model in this signal
    assert Signal.from_json(s.to_json()) == s
    for bad in (b"{}", b"not json", s.to_json().replace(b'"long"', b'"sideways"')):
        with pytest.raises(SignalFormatError):
            Signal.from_json(bad)


@pytest.fixture(params=["redis", "memory"])
async def signal_store(request: pytest.FixtureRequest, redis_store: RedisStore, redis_url: str) -> SignalStore:
    if request.param == "memory":
        return MemorySignalStore()
    return RedisSignalStore(aioredis.Redis.from_url(redis_url), prefix=redis_store.prefix)


async def test_each_bar_is_published_once_and_the_latest_only_moves_forward(signal_store: SignalStore) -> None:
    s1, s2, s3 = a_signal(T0), a_signal(T0 + MINUTE), a_signal(T0 + 2 * MINUTE)
    # Two workers finishing the same (symbol, bar) at once: exactly one publishes.
    outcomes = await asyncio.gather(signal_store.publish(s2), signal_store.publish(s2))
    assert sorted(o.value for o in outcomes) == ["duplicate", "latest"]
    assert await signal_store.publish(s1) is Published.AUDITED  # an older bar finished late
    assert await signal_store.latest(SYMBOL) == s2
    assert await signal_store.publish(s1) is Published.DUPLICATE
    assert [s.bar.start for s in await signal_store.history(SYMBOL)] == [T0, T0 + MINUTE]  # newest published first

    no = NoSignal(SYMBOL, BarRef("1", T0 + 3 * MINUTE, T0 + 4 * MINUTE), "fallback_input:holed_window", "d", 1, 2)
    assert await signal_store.record_no_signal(dataclass_with_start(no, T0 + MINUTE)) is False  # that bar has one
    assert await signal_store.record_no_signal(no) is True
    assert await signal_store.no_signal(SYMBOL) == no
    assert await signal_store.publish(s3) is Published.LATEST  # older than the no-signal record: kept
    assert await signal_store.no_signal(SYMBOL) == no
    assert await signal_store.publish(a_signal(T0 + 3 * MINUTE)) is Published.LATEST
    assert await signal_store.no_signal(SYMBOL) is None  # that bar has a signal now
    await signal_store.close()


async def next_message(pubsub: PubSub, within: float = 2.0) -> bytes:
    deadline = asyncio.get_running_loop().time() + within
    while asyncio.get_running_loop().time() < deadline:
        # None also when the message read was the subscribe confirmation
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.2)
        if message is not None:
            data: bytes = message["data"]
            return data
    raise AssertionError("nothing published")


def dataclass_with_start(no: NoSignal, start: int) -> NoSignal:
    return NoSignal(no.symbol, BarRef("1", start, start + MINUTE), no.reason, no.detail, 1, 2)


async def test_one_signal_per_finest_close_with_every_component_batched(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    close = T0 + 60 * MINUTE  # an hour boundary: 1m and 5m close together
    base = history(close - MINUTE, {"1": 60, "5": 60})
    base.books[(SYMBOL, 50)] = BookStatus("READY", "", 7, close - 500, "100.1", "2", "100.2", "3")
    await redis_store.write(base)
    listener = aioredis.Redis.from_url(redis_url)
    pubsub = listener.pubsub()
    await pubsub.subscribe(RedisKeys(redis_store.prefix).signals_channel)
    try:
        async with running_worker(redis_url, redis_store, models) as h:
            await redis_store.write(closing(close, ("1", "5")))  # two events: 1m and 5m
            s = await h.outcome(SYMBOL, close - MINUTE)
            assert isinstance(s, Signal)

            assert s.bar == BarRef("1", close - MINUTE, close)
            assert s.source == "ensemble" and s.fallback_reason is None
            assert s.direction in ("long", "short", "flat") and -1 <= s.score <= 1
            assert s.p_up is not None and s.score == pytest.approx(2 * s.p_up - 1)
            assert [(c.name, c.status, c.provider, c.version) for c in s.components] == [
                (name, "voted", CPU, "v1") for name in ("tcn_1m", "tcn_5m", "efficientnet_1m", "efficientnet_5m")
            ]
            assert all(c.latency_ms is not None and c.latency_ms > 0 for c in s.components)
            # no 1h bars were written: the window the fallback rule would read is reported empty
            assert s.freshness == Freshness({"1": close - MINUTE, "5": close - 5 * MINUTE, "60": None}, "READY", 500)
            assert s.produced_at == close  # exchange time: the bar close is the newest seen
            lat = s.latency_ms
            assert min(lat.read, lat.render, lat.infer, lat.ensemble) >= 0
            assert lat.total >= lat.read + lat.render + lat.infer
            assert (s.horizon, s.horizon_minutes) == ("log return over the next 1 min", 1)
            # priced: the EWMA volatility of the 1m closes (no component has heads), a round trip at
            # the taker fee, at the close of the signal's bar; uncalibrated (no fitted ensemble)
            last = closing(close, ("1",)).bars[(SYMBOL, "1")][-1]  # the bar the signal is at
            assert (
                last.start == s.bar.start
                and s.reference_price == float(last.close)
                and s.cost_bp == 11.0
                and not s.calibrated
            )
            assert s.volatility_bp is not None and s.expected_move_bp is not None and s.edge_bp is not None
            assert s.edge_bp == pytest.approx((2 * s.p_up - 1) * s.expected_move_bp, abs=1e-3)
            assert s.tradeable == (s.direction != "flat" and abs(s.edge_bp) > 11.0)

            assert await h.signals.latest(SYMBOL) == s
            pushed = await next_message(pubsub)
            assert Signal.from_json(pushed) == s
            # The two EfficientNet timeframes went through ONE session run (batch of 2).
            assert h.sample("candlecast_inference_seconds_count", model="efficientnet", provider=CPU) == 1
            assert h.sample("candlecast_inference_seconds_count", model="tcn_1m", provider=CPU) == 1
            assert h.sample("candlecast_render_seconds_count", renderer="composite") == 2
            assert h.sample("candlecast_signals_total", source="ensemble", direction=s.direction) == 1
            assert h.sample("candlecast_worker_events_total", outcome="skipped") == 1  # the 5m event
            assert h.sample("candlecast_inference_provider", component="efficientnet_5m", provider=CPU) == 1
            assert h.sample("candlecast_components_enabled", component="tcn_5m") == 1
            assert h.sample("candlecast_ensemble_agreement_count") == 1

            # The next minute: only a 1m close; the 5m bar closed at the hour is still the current one.
            await redis_store.write(closing(close + MINUTE, ("1", "5")))
            s2 = await h.outcome(SYMBOL, close)
            assert isinstance(s2, Signal) and all(c.status == "voted" for c in s2.components)
            assert [x.bar.start for x in await h.signals.history(SYMBOL)] == [close, close - MINUTE]
            await eventually(
                lambda: (
                    h.sample("candlecast_worker_pending_events") == 0
                    and h.sample("candlecast_worker_consumer_lag_events") == 0
                ),
                5,
                what="lag and pending exported",
            )
    finally:
        await pubsub.aclose()
        await listener.aclose()


async def test_a_coarser_bar_due_at_the_close_is_awaited_then_dropped_as_stale(
    redis_url: str, redis_store: RedisStore, models: Path
) -> None:
    close = T0 + 60 * MINUTE
    await redis_store.write(history(close - MINUTE, {"1": 60, "5": 60}))
    async with running_worker(redis_url, redis_store, models, coarse_wait_ms=1500) as h:
        # The 1m bar arrives first; the 5m bar of the same boundary only once the worker is on it.
        await redis_store.write(closing(close, ("1",)))
        await eventually(h.holding, 5, what="the worker holding the 1m event")
        await redis_store.write(closing(close, ("5",)))
        s = await h.outcome(SYMBOL, close - MINUTE)
        assert isinstance(s, Signal)
        assert all(c.status == "voted" for c in s.components)  # it waited for the 5m bar

        for k in range(1, 5):  # 12:01 .. 12:04: no 5m close due
            await redis_store.write(closing(close + k * MINUTE, ("1",)))
        await h.outcome(SYMBOL, close + 3 * MINUTE)
        # At 12:05 the 5m bar never comes: its components are dropped as stale after the wait.
        await redis_store.write(closing(close + 5 * MINUTE, ("1",)))
        s5 = await h.outcome(SYMBOL, close + 4 * MINUTE)
        assert isinstance(s5, Signal) and s5.source == "ensemble"
        status = {c.name: (c.status, c.reason) for c in s5.components}
        assert status == {
            "tcn_1m": ("voted", None),
            "tcn_5m": ("dropped", "stale_window"),
            "efficientnet_1m": ("voted", None),
            "efficientnet_5m": ("dropped", "stale_window"),
        }
        assert s5.latency_ms.read >= 1450  # it waited out coarse_wait_ms (and no longer: the outcome came)
        assert h.sample("candlecast_components_dropped_total", component="tcn_5m", reason="stale_window") == 1


async def test_components_that_miss_the_latency_budget_are_left_out_and_counted(models: Path) -> None:
    """Judged with the in-memory store (the single-process run): same engine, no Redis."""
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close, {"1": 60, "5": 60, "60": 20}))
    metrics = WorkerMetrics(CollectorRegistry())
    registry = ModelRegistry(models, prefer_gpu=False, metrics=metrics)
    await registry.load()
    event = BarEvent(SYMBOL, "1", close - MINUTE)

    tight = SignalEngine(WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=0.001), store, registry, metrics)
    s = await tight.compute(event)
    assert isinstance(s, Signal)
    assert {(c.status, c.reason) for c in s.components} == {("dropped", "late")}
    assert s.source == "fallback" and s.fallback_reason == "all_components_dropped: late"
    assert s.ladder == "rule"  # neither EfficientNet voted: the ladder's last rung
    assert s.p_up is None and s.confidence is None  # the rule gives no probability
    for name in ("tcn_1m", "tcn_5m", "efficientnet_1m", "efficientnet_5m"):
        assert metrics.registry.get_sample_value(
            "candlecast_components_dropped_total", {"component": name, "reason": "late"}
        )
    await tight.close()

    roomy = SignalEngine(WorkerConfig(intervals=("1", "5"), latency_budget_ms=5000), store, registry, metrics)
    s = await roomy.compute(event)
    assert isinstance(s, Signal) and s.source == "ensemble"
    assert all(c.status == "voted" for c in s.components)


class _SlowRuns:
    """A real session whose every run takes ``delay_s`` longer."""

    def __init__(self, real: ort.InferenceSession, delay_s: float) -> None:
        self._real, self._delay_s = real, delay_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def run(self, outputs: Any, feed: dict[str, Any]) -> Any:
        time.sleep(self._delay_s)
        return self._real.run(outputs, feed)


def _tcn_1m_slowest(path: str, options: ort.SessionOptions, /, *, providers: list[str]) -> Any:
    real = ort.InferenceSession(path, options, providers=providers)
    return _SlowRuns(real, 0.2) if Path(path).name == "tcn_1m.onnx" else real


async def test_a_renderer_that_breaks_costs_its_own_batch_not_the_others_nor_the_signal(
    models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The render thread builds one session's batch at a time, the slowest run first (here the 1m
    TCN's, slowed), and each batch runs once built. A renderer failing in a way it does not name (here
    NumPy, under the TCN's features) drops that batch's components as ``error``: the batch built after
    it still votes, a vote remembered from the last close (the unchanged 5m window's TCN) still
    counts, and the signal is served."""
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close, {"1": 80, "5": 70, "60": 20}))
    registry = ModelRegistry(models, prefer_gpu=False, session_factory=_tcn_1m_slowest)
    await registry.load()
    engine = SignalEngine(WorkerConfig(intervals=("1", "5", "60")), store, registry, WorkerMetrics(CollectorRegistry()))
    event = BarEvent(SYMBOL, "1", close - MINUTE)
    first = await engine.compute(event)  # every run timed once: the order of the next
    assert isinstance(first, Signal) and all(c.status == "voted" for c in first.components)

    def broken(*args: object, **kwargs: object) -> None:
        raise TypeError("a bug in a renderer")

    monkeypatch.setattr(inference.features, "sliding_window_view", broken)
    await store.write(history(close + MINUTE, {"1": 80}))  # the next minute: only the 1m windows move
    s = await engine.compute(BarEvent(SYMBOL, "1", close))
    assert isinstance(s, Signal) and s.source == "ensemble" and s.partial
    status = {c.name: (c.status, c.reason, c.latency_ms == 0.0) for c in s.components}
    assert status == {
        "efficientnet_1m": ("voted", None, False),
        "efficientnet_5m": ("voted", None, True),  # remembered
        "tcn_1m": ("dropped", "error", False),
        "tcn_5m": ("voted", None, True),  # remembered: its features are not computed again
    }
    await engine.close()


async def test_a_coarser_window_unchanged_since_the_last_close_is_not_run_again(models: Path) -> None:
    """Between two 5m closes the 5m components read the same window at every 1m close: the vote is
    remembered (same p_up, no run, latency 0), the 1m components run; at the next 5m close, and for
    another model set (a reload: other sessions), they run again."""
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE  # a 5m (and 1h) boundary
    metrics = WorkerMetrics(CollectorRegistry())
    registry = ModelRegistry(models, prefer_gpu=False, metrics=metrics)
    await registry.load()
    engine = SignalEngine(WorkerConfig(intervals=("1", "5", "60")), store, registry, metrics)

    def runs(model: str) -> float:
        return (
            metrics.registry.get_sample_value("candlecast_inference_seconds_count", {"model": model, "provider": CPU})
            or 0.0
        )

    async def at(minute: int) -> dict[str, ComponentReport]:
        now = close + minute * MINUTE
        await store.write(history(now, {"1": 80, "5": 70, "60": 20}))
        s = await engine.compute(BarEvent(SYMBOL, "1", now - MINUTE))
        assert isinstance(s, Signal) and all(c.status == "voted" for c in s.components)
        return {c.name: c for c in s.components}

    first = await at(0)
    assert all(c.latency_ms for c in first.values())  # every component ran
    tcn_5m_runs = runs("tcn_5m")
    later = await at(1)  # the 1m window moved on, the 5m one did not
    for name in ("tcn_5m", "efficientnet_5m"):
        assert later[name].p_up == first[name].p_up and later[name].latency_ms == 0.0
    assert runs("tcn_5m") == tcn_5m_runs
    assert later["tcn_1m"].latency_ms and later["efficientnet_1m"].latency_ms  # these windows moved
    assert later["efficientnet_1m"].p_up != first["efficientnet_1m"].p_up

    at_5m = await at(5)  # a 5m close: a new 5m window
    assert at_5m["tcn_5m"].latency_ms and runs("tcn_5m") == tcn_5m_runs + 1

    reloaded = ModelRegistry(models, prefer_gpu=False, metrics=metrics)  # the same files, new sessions
    await reloaded.load()
    engine.models = reloaded
    again = await at(6)
    assert again["tcn_5m"].latency_ms and again["tcn_5m"].p_up == at_5m["tcn_5m"].p_up
    await engine.close()


async def test_what_the_engine_carries_to_the_next_close_is_judged_by_the_bars_values(models: Path) -> None:
    """The engine carries each window's bar checks and floats from one close to the next (BarFacts):
    a signal of an engine that computed the close before is the one a fresh engine computes, and a
    bar whose values changed (the same start, now inconsistent) is judged again and refused."""
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    registry = ModelRegistry(models, prefer_gpu=False)
    await registry.load()
    config = WorkerConfig(intervals=("1", "5", "60"))
    carrying = SignalEngine(config, store, registry, WorkerMetrics(CollectorRegistry()))
    fresh = SignalEngine(config, store, registry, WorkerMetrics(CollectorRegistry()))
    await store.write(history(close, {"1": 80, "5": 70, "60": 20}))
    assert isinstance(await carrying.compute(BarEvent(SYMBOL, "1", close - MINUTE)), Signal)
    now = close + MINUTE
    await store.write(history(now, {"1": 80, "5": 70, "60": 20}))
    event = BarEvent(SYMBOL, "1", now - MINUTE)
    carried, computed = await carrying.compute(event), await fresh.compute(event)
    assert isinstance(carried, Signal) and isinstance(computed, Signal)
    assert [(c.name, c.status, c.p_up) for c in carried.components] == [
        (c.name, c.status, c.p_up) for c in computed.components
    ]
    assert carried.p_up == computed.p_up

    windows = await store.read_symbol(SYMBOL, ("1", "5", "60"), 50)
    *older, last = windows.bars["1"]
    broken = older[-1]._replace(close=older[-1].high * 2)  # the close above the high, the same start
    damaged = dataclasses.replace(windows, bars=windows.bars | {"1": [*older[:-1], broken, last]})
    again = await carrying.signal_at(event, damaged, registry.current)
    by_name = {c.name: c for c in again.components}
    assert {by_name[n].reason for n in ("tcn_1m", "efficientnet_1m")} == {"bad_values"}
    assert by_name["tcn_5m"].status == "voted"
    await carrying.close()
    await fresh.close()


async def test_a_signal_is_computed_while_the_event_loops_default_threads_are_all_busy(models: Path) -> None:
    """The engine renders and runs in threads of its own: blocking work elsewhere in the process on
    the loop's default executor (reloads, score decoding, ``asyncio.to_thread``) cannot hold a
    signal's runs back past its budget (they used to queue behind it there and come back ``late``)."""
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close, {"1": 80, "5": 70, "60": 20}))
    registry = ModelRegistry(models, prefer_gpu=False)
    await registry.load()
    config = WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=5_000.0)
    engine = SignalEngine(config, store, registry, WorkerMetrics(CollectorRegistry()))
    release = threading.Event()
    loop = asyncio.get_running_loop()
    # more blocked jobs than the default pool has threads: every one of them is taken
    blockers = [loop.run_in_executor(None, release.wait, 30.0) for _ in range(64)]
    try:
        s = await asyncio.wait_for(engine.compute(BarEvent(SYMBOL, "1", close - MINUTE)), 20.0)
        assert isinstance(s, Signal)
        assert [c.name for c in s.components if c.status != "voted"] == []
        assert not any(b.done() for b in blockers)  # the default pool was held throughout
    finally:
        release.set()
        await asyncio.gather(*blockers)
        await engine.close()


async def test_one_models_batches_waiting_for_a_run_slot_share_one_run_and_vote_as_they_would_alone(
    models: Path,
) -> None:
    """Four symbols at one close, the one run slot held (a stalled run) until every input is built:
    each model's waiting batches go into a single ``session.run``, and every vote and every signal is
    exactly what the symbol gets computed on its own (a row's output does not depend on its batch)."""
    symbols = ("BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT")
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close, {"1": 80, "5": 70, "60": 20}, symbols))
    config = WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=30_000.0, inference_concurrency=1)
    cpu = ModelRegistry(models, prefer_gpu=False)
    await cpu.load()
    alone_engine = SignalEngine(config, store, cpu, WorkerMetrics(CollectorRegistry()))
    alone = [await alone_engine.compute(BarEvent(s, "1", close - MINUTE)) for s in symbols]
    await alone_engine.close()

    gpu = VanishingGpu(stall_cpu=True)  # real CPU sessions; a run of tcn_1m.onnx blocks until released
    registry = ModelRegistry(models, prefer_gpu=False, session_factory=gpu.build)
    await registry.load()
    gpu.stalled = {"tcn_1m.onnx"}
    metrics = WorkerMetrics(CollectorRegistry())
    engine = SignalEngine(config, store, registry, metrics)

    def count(metric: str, **labels: str) -> float:
        return metrics.registry.get_sample_value(f"candlecast_{metric}_count", labels) or 0.0

    def runs(model: str) -> float:
        return count("inference_seconds", model=model, provider=CPU)

    # The first symbol's tcn_1m run takes the slot alone and stalls there; then the other three come,
    # and every batch of all four waits for the slot (a 1m TCN row and 2 images a symbol).
    first = asyncio.ensure_future(engine.compute(BarEvent(symbols[0], "1", close - MINUTE)))
    try:
        await eventually(gpu.stalling.is_set, 10.0, what="the first tcn_1m run to stall")
        rest = asyncio.gather(*(engine.compute(BarEvent(s, "1", close - MINUTE)) for s in symbols[1:]))
        everything = {"tcn_1m": 3, "tcn_5m": 4, "efficientnet": 8}
        await eventually(lambda: engine.runs.waiting_rows() == everything, 10.0, what="every batch to wait")
    finally:
        gpu.released.set()
    together = [await first, *await rest]
    await engine.close()

    assert runs("tcn_1m") == 2  # the stalled one, then the other three symbols' in one
    assert runs("tcn_5m") == 1 and runs("efficientnet") == 1  # 4 symbols' rows, 8 images, one run
    for a, t in zip(alone, together, strict=True):
        assert isinstance(a, Signal) and isinstance(t, Signal)
        assert {c.name: c.p_up for c in t.components} == {c.name: c.p_up for c in a.components}
        assert (t.p_up, t.direction, t.expected_move_bp) == (a.p_up, a.direction, a.expected_move_bp)
        assert all(c.status == "voted" for c in t.components)


async def test_a_signal_given_up_while_its_batches_wait_for_a_slot_leaves_none_for_the_next_run(
    models: Path,
) -> None:
    """Two symbols' signals behind one held run slot; the second is cancelled (a worker shutting down)
    while its batches wait: none of its rows go into the runs that follow, the first signal's do."""
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close, {"1": 80, "5": 70, "60": 20}, ("BTCUSDT", "ETHUSDT")))
    gpu = VanishingGpu(stall_cpu=True)
    registry = ModelRegistry(models, prefer_gpu=False, session_factory=gpu.build)
    await registry.load()
    gpu.stalled = {"tcn_1m.onnx"}
    gpu.ran.clear()  # the warm-up runs
    config = WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=30_000.0, inference_concurrency=1)
    metrics = WorkerMetrics(CollectorRegistry())
    engine = SignalEngine(config, store, registry, metrics)

    first = asyncio.create_task(engine.compute(BarEvent("BTCUSDT", "1", close - MINUTE)))
    await eventually(gpu.stalling.is_set, 10.0, what="the first signal's tcn_1m run to stall")
    second = asyncio.create_task(engine.compute(BarEvent("ETHUSDT", "1", close - MINUTE)))
    waiting = {"tcn_1m": 1, "tcn_5m": 2, "efficientnet": 4}  # the second's batches, and the first's not stalled
    await eventually(lambda: engine.runs.waiting_rows() == waiting, 10.0, what="both signals' batches to wait")
    second.cancel()
    with pytest.raises(asyncio.CancelledError):
        await second
    gpu.released.set()
    signal = await first
    await engine.close()
    assert isinstance(signal, Signal) and all(c.status == "voted" for c in signal.components)
    # the first signal's own rows only: 1 a TCN, 2 images (1m and 5m) in the EfficientNet's run
    assert sorted(gpu.ran) == [("efficientnet.onnx", 2), ("tcn_1m.onnx", 1), ("tcn_5m.onnx", 1)]


async def test_a_signal_cancelled_mid_run_leaves_no_run_behind_the_engines_close(models: Path) -> None:
    """A worker shutting down cancels a signal still computing: the session run already in its thread
    (it cannot be interrupted) is waited for by ``close()``, so nothing of the signal outlives it."""
    gpu = VanishingGpu()
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close, {"1": 80, "5": 70, "60": 20}))
    registry = ModelRegistry(models, prefer_gpu=True, session_factory=gpu.build, available_providers=gpu.providers)
    await registry.load()
    gpu.stalled = {"tcn_1m.onnx"}  # after the warm-up runs
    engine = SignalEngine(WorkerConfig(intervals=("1", "5", "60")), store, registry, WorkerMetrics(CollectorRegistry()))
    signal = asyncio.create_task(engine.compute(BarEvent(SYMBOL, "1", close - MINUTE)))
    await eventually(gpu.stalling.is_set, 10.0, what="the stalled run to begin")
    signal.cancel()
    with pytest.raises(asyncio.CancelledError):
        await signal
    asyncio.get_running_loop().call_later(0.3, gpu.released.set)  # the run returns a moment later
    await engine.close(timeout_s=10.0)
    left = [t.get_name() for t in asyncio.all_tasks() if t.get_name().startswith("infer-") and not t.done()]
    assert gpu.released.is_set() and left == []


async def test_an_old_event_is_judged_as_of_its_own_close(models: Path) -> None:
    """A claimed or replayed event is computed on the bars closed at ITS close, not on newer ones."""
    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close + 10 * MINUTE, {"1": 80, "5": 70}))  # the store is 10 minutes further on
    registry = ModelRegistry(models, prefer_gpu=False)
    await registry.load()
    engine = SignalEngine(WorkerConfig(intervals=("1", "5")), store, registry, WorkerMetrics(CollectorRegistry()))
    s = await engine.compute(BarEvent(SYMBOL, "1", close - MINUTE))
    assert isinstance(s, Signal) and all(c.status == "voted" for c in s.components)
    # reported as of its own close too (it used to say what the store held: a newer bar than it read)
    assert s.freshness.last_bar_start == {"1": close - MINUTE, "5": close - 5 * MINUTE}
    assert s.bar.close_time == close


async def test_memory_store_path_runs_a_worker_without_redis(models: Path) -> None:
    """The single-process run: MemoryStore + MemoryEventSource + MemorySignalStore."""
    from inference.events import MemoryEventSource
    from inference.worker import Worker

    store = MemoryStore(window_bars=128)
    close = T0 + 60 * MINUTE
    await store.write(history(close - MINUTE, {"1": 60, "5": 60}))
    signals = MemorySignalStore()
    metrics = WorkerMetrics(CollectorRegistry())
    registry = ModelRegistry(models, prefer_gpu=False, metrics=metrics)
    events = MemoryEventSource(store)
    await events.setup()  # positioned at the end of the events: only what follows is handled
    worker = Worker(WorkerConfig(intervals=("1", "5"), block_ms=50), store, events, signals, registry, metrics)
    await worker.start()
    try:
        await store.write(closing(close, ("1", "5")))

        async def published() -> bool:
            return await signals.latest(SYMBOL) is not None

        await eventually(published, 10, what="a signal")
        s = await signals.latest(SYMBOL)
        assert s is not None and s.bar.start == close - MINUTE and s.source == "ensemble"
        assert worker.handled == 1
    finally:
        await worker.close()


def test_the_worker_command_refuses_to_start_without_redis(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from service.cli import main

    monkeypatch.delenv("CANDLECAST_REDIS_URL", raising=False)
    assert main(["worker"]) == 2
    assert "CANDLECAST_REDIS_URL" in capsys.readouterr().err


def test_worker_settings_are_validated_and_reach_the_worker_config(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.compose import worker_config
    from service.settings import ConfigError, load_settings

    monkeypatch.setenv("CANDLECAST_COMPONENT_WEIGHTS", "tcn_1m=0.5, efficientnet_60m=0")
    monkeypatch.setenv("CANDLECAST_LATENCY_BUDGET_MS", "120")
    monkeypatch.setenv("CANDLECAST_SIGNAL_LONG_ABOVE", "0.1")
    settings = load_settings()
    assert settings.component_weights == {"tcn_1m": 0.5, "efficientnet_60m": 0.0}
    config = worker_config(settings)
    assert (config.latency_budget_ms, config.thresholds.long_above, config.finest) == (120, 0.1, "1")
    for name, value in (("COMPONENT_WEIGHTS", "tcn_1m=-1"), ("COMPONENT_WEIGHTS", "tcn_1m"), ("COARSE_WAIT_MS", "-5")):
        monkeypatch.setenv(f"CANDLECAST_{name}", value)
        with pytest.raises(ConfigError, match=f"CANDLECAST_{name}"):
            load_settings()
        monkeypatch.delenv(f"CANDLECAST_{name}")
