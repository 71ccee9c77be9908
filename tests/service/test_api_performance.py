"""The track record over the API, on a real uvicorn and a real Redis: ``GET /signal/{symbol}/performance``,
``GET /performance``, the Prometheus gauges the alerts read, the WebSocket's ``performance`` frames, and a
Redis outage answered with 503."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator

import orjson
import pytest
import redis.asyncio as aioredis

from inference.score_store import RedisScoreStore
from inference.track_record import ComponentScore, Score, performance
from service.app import create_app
from tests.helpers import eventually
from tests.redis_server import RedisServer
from tests.service.kit import MINUTE, T0, api_settings, serving, unique_prefix, ws_connect

pytestmark = pytest.mark.timeout(60)

MODELS = "0123456789ab"
VALIDATION = {"signal": {"accuracy_moved": 0.53, "brier_skill": 0.001, "coverage": 0.21, "calls": 4224}}
DRIFT = {
    "features": {"z_ret_1": {"edges": [-1.0, 0.0, 1.0], "expected": [0.16, 0.34, 0.34, 0.16]}},
    "span": ["2025-01-01", "2025-06-01"],
    "samples": 1000,
}


def scores(n: int, seed: int = 0, symbol: str = "BTCUSDT") -> list[Score]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        r = rng.gauss(0.0, 5e-4)
        p = 0.5 + rng.gauss(0.0, 0.03)
        direction = "long" if p > 0.52 else "short" if p < 0.48 else "flat"
        out.append(
            Score(
                symbol=symbol,
                start=T0 + i * MINUTE,
                horizon_minutes=1,
                models=MODELS,
                source="ensemble",
                direction=direction,
                p_up=p,
                tradeable=False,
                edge_bp=(2 * p - 1) * 4.0,
                volatility_bp=5.0,
                cost_bp=11.0,
                log_return=r,
                var_real_bp2=(r * 1e4) ** 2,
                reason=None,
                components=(ComponentScore("tcn_1m", "v1", p),),
                inputs=(rng.gauss(0.0, 1.0), 0.0, 0.0, 0.0, 0.0),
            )
        )
    return out


@pytest.fixture
async def client(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    c = aioredis.Redis.from_url(redis_url)
    try:
        yield c
    finally:
        await c.aclose()


async def test_the_track_record_is_served_summarised_and_exported(redis_url: str, client: aioredis.Redis) -> None:
    prefix = unique_prefix()
    store = RedisScoreStore(client, prefix=prefix)
    written = scores(250)
    for s in written:
        assert await store.record(s)
    await store.put_models(MODELS, {"models": MODELS, "validation": VALIDATION, "drift": DRIFT})
    settings = api_settings(redis_url, prefix, api_performance_refresh_s=0.2)
    async with serving(settings) as api, api.http() as http:
        got = await http.get("/signal/btcusdt/performance")
        assert got.status_code == 200 and got.headers["cache-control"] == "no-store"
        body = got.json()
        stored = [Score.from_json(s.to_json()) for s in written]  # as kept (component p_up to 6 decimals)
        expected = orjson.loads(orjson.dumps(performance("BTCUSDT", stored, drift=DRIFT)))
        assert body | {"validation": None} == expected  # the summary of exactly the stored scores
        assert body["validation"]["signal"] == {k: float(v) for k, v in VALIDATION["signal"].items()}
        last_1000 = body["windows"]["last_1000"]
        assert last_1000["signal"]["n"] == 250
        assert last_1000["drift_psi"]["z_ret_1"] is not None

        every = (await http.get("/performance")).json()
        assert set(every["symbols"]) == {"BTCUSDT", "ETHUSDT", "SOLUSDT"}
        assert every["symbols"]["BTCUSDT"] == body
        assert every["symbols"]["ETHUSDT"]["windows"]["last_100"]["signal"]["n"] == 0  # nothing scored yet

        span = (await http.get(f"/signal/BTCUSDT/performance?since={T0 + 10 * MINUTE}&until={T0 + 59 * MINUTE}")).json()
        assert span["windows"]["span"]["signal"]["n"] == 50
        assert (await http.get("/signal/BTCUSDT/performance?since=-1")).status_code == 422

        missing = await http.get("/signal/DOGEUSDT/performance")
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_symbol"

        # entries nobody should have written (a foreign or forged score, garbage) are skipped, not served
        key = store.keys.scores("BTCUSDT")
        await client.xadd(key, {"start": "1", "score": b"not json"})
        await client.xadd(key, {"start": "2", "score": scores(1, symbol="ETHUSDT")[0].to_json()})
        await client.xadd(key, {"nothing": "here"})
        kept = (await http.get("/signal/BTCUSDT/performance")).json()
        assert kept["windows"]["last_1000"]["signal"] == body["windows"]["last_1000"]["signal"]

        # a new score is served at once (the cache follows the stream)
        extra = scores(251)[-1]
        assert await store.record(extra)
        again = (await http.get("/signal/BTCUSDT/performance")).json()
        assert again["windows"]["last_1000"]["signal"]["n"] == 251 and again["as_of_bar"] == extra.start

        # the gauges the SignalSkillLost and InputDrift alerts read
        def gauge(name: str, **labels: str) -> float | None:
            return api.registry.get_sample_value(name, labels)

        await eventually(
            lambda: gauge("candlecast_track_scored", symbol="BTCUSDT", window="last_1000") == 251,
            5,
            what="the refreshed gauges",
        )
        figures = again["windows"]["last_1000"]["signal"]
        assert gauge("candlecast_track_hit_rate", symbol="BTCUSDT", window="last_1000") == figures["hit_rate"]
        upper = gauge("candlecast_track_hit_rate_upper", symbol="BTCUSDT", window="last_1000")
        assert upper == figures["hit_rate_ci"][1]
        assert gauge("candlecast_track_validation_hit_rate", symbol="BTCUSDT") == 0.53
        psi = gauge("candlecast_input_psi", symbol="BTCUSDT", feature="z_ret_1", window="last_1000")
        assert psi == again["windows"]["last_1000"]["drift_psi"]["z_ret_1"]

        # on the WebSocket, on request
        async with ws_connect(api.ws_url) as ws:
            await ws.send(orjson.dumps({"op": "performance", "symbols": ["btcusdt", "FOO"], "id": 7}).decode())
            frames = [orjson.loads(await ws.recv()) for _ in range(2)]
        error, frame = frames
        assert error["op"] == "error" and error["error"]["code"] == "unknown_symbols" and error["id"] == 7
        assert frame["op"] == "performance" and frame["symbol"] == "BTCUSDT" and frame["id"] == 7
        assert frame["performance"]["windows"]["last_1000"]["signal"]["n"] == 251


async def test_with_redis_down_the_track_record_answers_503(tmp_path_factory: pytest.TempPathFactory) -> None:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    try:
        settings = api_settings(server.url, unique_prefix())
        app = create_app(settings)
        async with serving(settings, app=app) as api, api.http() as http:
            assert (await http.get("/signal/BTCUSDT/performance")).status_code == 200
            server.stop()
            down = await http.get("/signal/BTCUSDT/performance")
            assert down.status_code == 503 and down.json()["error"]["code"] == "store_unavailable"
            assert (await http.get("/performance")).status_code == 503
    finally:
        server.stop()


@pytest.mark.parametrize(
    "record",
    [
        {"validation": [1], "drift": [1]},
        {"validation": {"signal": "x", "components": [1]}, "drift": {"features": {}, "symbols": [1]}},
        {"validation": {"signal": {"accuracy_moved": "abc", "brier_skill": True}}},
        {"drift": {"features": {"z_ret_1": {"edges": ["a"], "expected": [0.5, 0.5]}}}},
        {"drift": {"features": {"z_ret_1": {"edges": [None], "expected": [0.5, 0.5]}}}},
    ],
)
async def test_a_corrupt_model_record_is_ignored_not_a_500(
    redis_url: str, client: aioredis.Redis, record: dict[str, object]
) -> None:
    """The record comes from Redis: what is malformed in it is left out of the answer, the gauges and
    the scrape keep working."""
    prefix = unique_prefix()
    store = RedisScoreStore(client, prefix=prefix)
    for s in scores(150):
        assert await store.record(s)
    await store.put_models(MODELS, record)
    async with serving(api_settings(redis_url, prefix, api_performance_refresh_s=0.2)) as api, api.http() as http:
        got = await http.get("/signal/BTCUSDT/performance")
        assert got.status_code == 200, got.text
        body = got.json()
        assert body["windows"]["last_1000"]["signal"]["n"] == 150
        assert body["windows"]["last_1000"]["drift_psi"] is None  # no usable reference: unwatched
        held = (body["validation"] or {}).get("signal") or {}
        assert all(v is None or isinstance(v, float) for v in held.values())
        labels = {"symbol": "BTCUSDT", "window": "last_1000"}
        await eventually(
            lambda: api.registry.get_sample_value("candlecast_track_scored", labels) == 150,
            5,
            what="the gauges, refreshed",
        )
        assert (await http.get("/metrics")).status_code == 200
