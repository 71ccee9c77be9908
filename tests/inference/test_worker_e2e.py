"""End to end with the shipped models: the Bybit simulator (real BTCUSDT bars, 600x) → Ingestor →
Redis → Worker → signals. Every 1m close after the windows fill gets exactly one signal in which
all eight components (TCN and EfficientNet on 1m, 5m, 15m, 1h) voted."""

from __future__ import annotations

import math
import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry

from inference.runtime import CPU
from inference.signal import Signal
from streaming.sim.server import ExchangeSimulator
from tests.conftest import ARTIFACTS
from tests.helpers import eventually
from tests.inference.kit import SHIPPED_INTERVALS as INTERVALS
from tests.inference.kit import SHIPPED_SYMBOL as SYMBOL
from tests.inference.kit import shipped_pipeline

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


async def test_simulated_market_to_signals_with_the_shipped_models(
    shipped_sim: ExchangeSimulator, redis_url: str
) -> None:
    if not (ARTIFACTS / "manifest.json").exists():
        pytest.fail(f"no shipped models in {ARTIFACTS}")
    client = aioredis.Redis.from_url(redis_url)
    pipeline = await shipped_pipeline(
        client, f"e2e-{uuid.uuid4().hex[:10]}", shipped_sim, group="e2e", registry=CollectorRegistry()
    )
    store = pipeline.store
    assert len(pipeline.models.current.enabled) == 16  # the four B3 rungs wait for a GPU (none here)
    answering = {c.name for c in pipeline.models.current.enabled if c.spec.horizon_min == 1}
    # the signal's question, 1 min ahead, is what every shipped component answers, whatever window it reads
    zoo = {f"{kind}_1m" for kind in ("dense", "cnn1d", "mscnn", "cnn_ta", "bilstm", "cipm", "cipm_btc")}
    views = {f"{kind}_{tf}m" for kind in ("tcn", "efficientnet") for tf in (1, 5, 15, 60)}
    assert answering == views | {"linear_1m"} | zoo
    ingestor, worker, signals, metrics = pipeline.ingestor, pipeline.worker, pipeline.signals, pipeline.metrics
    await worker.start()
    await ingestor.start()
    try:

        async def full_signals() -> list[Signal]:
            return [
                s
                for s in await signals.history(SYMBOL, 1000)
                if all((c.status == "voted") == (c.name in answering) for c in s.components)
            ]

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
    assert s.source == "ensemble" and s.calibrated and {c.provider for c in s.components} == {CPU}
    assert {c.name for c in s.components} == answering
    assert s.cost_bp == 11.0 and s.volatility_bp is not None and s.reference_price is not None
    assert {c.timeframe for c in s.components} == set(INTERVALS)
    assert s.freshness.book_state in ("READY", "INVALID")  # INVALID once the ingestor stopped
    lat = s.latency_ms
    stages = (lat.read, lat.render, lat.infer, lat.ensemble)
    assert all(math.isfinite(v) and v >= 0 for v in stages), lat
    assert math.isfinite(lat.total) and all(lat.total >= v for v in stages), lat
    labels = {"source": "ensemble", "direction": s.direction}
    assert metrics.registry.get_sample_value("candlecast_signals_total", labels)
    await store.delete_all()
    await client.aclose()
