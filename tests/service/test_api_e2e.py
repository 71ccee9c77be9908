"""End to end, no internet: the Bybit simulator (real BTCUSDT bars, 600x) → Ingestor → Redis → Worker
with the shipped models → Redis → the API. A WebSocket client subscribed before the first bar close
receives every signal as the worker published it (the audit stream's bytes), and HTTP serves the
latest; one registry carries the ingestor's, the worker's and the API's metrics."""

from __future__ import annotations

import uuid
import zlib

import orjson
import pytest
import redis.asyncio as aioredis
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from inference.signal import Signal
from streaming.sim.server import ExchangeSimulator
from tests.helpers import eventually
from tests.inference.kit import SHIPPED_INTERVALS as INTERVALS
from tests.inference.kit import SHIPPED_SYMBOL as SYMBOL
from tests.inference.kit import shipped_pipeline
from tests.service.kit import api_settings, next_signal, serving, subscribe, ws_connect

pytestmark = [pytest.mark.timeout(90), pytest.mark.slow]


async def test_simulated_market_to_a_websocket_subscriber_and_http(
    shipped_sim: ExchangeSimulator, redis_url: str
) -> None:
    prefix = f"api-e2e-{uuid.uuid4().hex[:10]}"
    registry = CollectorRegistry()
    client = aioredis.Redis.from_url(redis_url)
    pipeline = await shipped_pipeline(client, prefix, shipped_sim, group="api-e2e", registry=registry)
    store, ingestor, worker, signals = pipeline.store, pipeline.ingestor, pipeline.worker, pipeline.signals
    settings = api_settings(redis_url, prefix, symbols=[SYMBOL], intervals=list(INTERVALS))
    try:
        async with serving(settings, registry=registry) as api, ws_connect(api.ws_url) as ws:
            _ack, first = await subscribe(ws, [SYMBOL])
            assert first["op"] == "unavailable" and first["reason"] == "warming_up"
            await worker.start()
            await ingestor.start()

            pushed = [await next_signal(ws, within=60) for _ in range(3)]
            starts = [p["signal"]["bar"]["start"] for p in pushed]
            assert starts == sorted(starts) and len(set(starts)) == 3

            # Each push is the audit stream entry for its bar, byte for byte.
            audit = {
                int(fields[b"start"]): zlib.decompress(fields[b"signal"])  # stored compressed
                for _id, fields in await client.xrevrange(signals.keys.signal_audit(SYMBOL), count=1000)
            }
            for p in pushed:
                raw = audit[p["signal"]["bar"]["start"]]
                assert orjson.loads(raw) == p["signal"]
                s = Signal.from_json(raw)
                assert s.symbol == SYMBOL and s.source == "ensemble"
                assert {c.timeframe for c in s.components} == set(INTERVALS)

            await ingestor.close()  # the market stops; the worker finishes what it has

            async with api.http() as http:

                async def served_is_latest() -> bool:
                    r = await http.get(f"/signal/{SYMBOL.lower()}")
                    return r.status_code == 200 and Signal.from_json(r.content) == await signals.latest(SYMBOL)

                await eventually(served_is_latest, 10, what="GET /signal = the latest in Redis")
                history = (await http.get(f"/signal/{SYMBOL}/history", params={"limit": 3})).json()
                assert history["count"] == 3
                assert history["signals"][0] == orjson.loads((await http.get(f"/signal/{SYMBOL}")).content)
                text = (await http.get("/metrics")).text
            names = {f.name for f in text_string_to_metric_families(text)}
            assert {
                "candlecast_api_request_duration_seconds",
                "candlecast_signals",
                "candlecast_ingest_messages",
            } <= names
    finally:
        await ingestor.close()
        await worker.close()
        await store.delete_all()
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
