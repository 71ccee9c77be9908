"""End to end with the shipped models: the Bybit simulator (real BTCUSDT bars, 600x) → Ingestor →
Redis → Worker → signals. Every 1m close after the windows fill gets exactly one signal in which
all eight components (TCN and EfficientNet on 1m, 5m, 15m, 1h) voted."""

from __future__ import annotations

import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from inference.components import ModelRegistry
from inference.config import WorkerConfig
from inference.events import RedisEventSource
from inference.metrics import WorkerMetrics
from inference.runtime import CPU
from inference.signal import Signal
from inference.signal_store import RedisSignalStore
from inference.worker import Worker
from streaming.ingestor import IngestConfig, Ingestor
from streaming.metrics import IngestMetrics
from streaming.redis_store import RedisStore
from streaming.sim.server import ExchangeSimulator
from tests.conftest import ARTIFACTS, SHIPPED_WINDOW
from tests.helpers import eventually

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]

INTERVALS = ("1", "5", "15", "60")
SYMBOL = "BTCUSDT"
WINDOW = SHIPPED_WINDOW


async def test_simulated_market_to_signals_with_the_shipped_models(
    shipped_sim: ExchangeSimulator, redis_url: str
) -> None:
    if not (ARTIFACTS / "manifest.json").exists():
        pytest.fail(f"no shipped models in {ARTIFACTS}")
    client = aioredis.Redis.from_url(redis_url)
    store = RedisStore(client, prefix=f"e2e-{uuid.uuid4().hex[:10]}", window_bars=WINDOW, depth_rows=50)
    metrics = WorkerMetrics(CollectorRegistry())
    registry = ModelRegistry(ARTIFACTS, prefer_gpu=False, metrics=metrics)
    await registry.load()
    assert len(registry.current.enabled) == 8
    events = RedisEventSource(client, store.keys.bar_events, group="e2e", consumer="w1")
    await events.setup()
    signals = RedisSignalStore(client, prefix=store.prefix)
    worker = Worker(WorkerConfig(intervals=INTERVALS, block_ms=100), store, events, signals, registry, metrics)
    ingestor = Ingestor(
        IngestConfig(
            ws_url=shipped_sim.ws_url,
            rest_url=shipped_sim.rest_url,
            symbols=(SYMBOL,),
            intervals=INTERVALS,
            rest_rate_per_s=200.0,
            backoff_base_s=0.05,
            backoff_cap_s=0.3,
        ),
        store,
        IngestMetrics(),
    )
    await worker.start()
    await ingestor.start()
    try:

        async def full_signals() -> list[Signal]:
            return [s for s in await signals.history(SYMBOL, 1000) if all(c.status == "voted" for c in s.components)]

        async def enough() -> bool:
            return len(await full_signals()) >= 15

        await eventually(enough, 60, 0.1, what="15 signals with every component voting")
    finally:
        await ingestor.close()
        await eventually(lambda: worker.handled > 0 and not worker._handlers, 10, what="worker drained")
        await worker.close()

    audit = await signals.history(SYMBOL, 1000)
    starts = [s.bar.start for s in audit]
    assert len(starts) == len(set(starts)), "one signal per bar"
    first_full = min(s.bar.start for s in await full_signals())
    later = sorted(x for x in starts if x >= first_full)
    assert later == list(range(later[0], later[-1] + 60_000, 60_000)), "no 1m close skipped once running"
    s = max(audit, key=lambda x: x.bar.start)
    assert s.source == "ensemble" and {c.provider for c in s.components} == {CPU}
    assert {c.timeframe for c in s.components} == set(INTERVALS)
    assert s.freshness.book_state in ("READY", "INVALID")  # INVALID once the ingestor stopped
    assert s.latency_ms.total < 1000
    labels = {"source": "ensemble", "direction": s.direction}
    assert metrics.registry.get_sample_value("candlecast_signals_total", labels)
    await store.delete_all()
    await client.aclose()
