"""The HTTP API against a real uvicorn and a real Redis: what a bot gets for a signal, for an unknown
symbol and when no signal is servable; history bounds; one error shape for every failure; OpenAPI;
CORS; the API settings."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from inference.signal import BarRef, NoSignal, Signal
from service.app import create_app
from service.settings import ConfigError, load_settings
from tests.helpers import eventually
from tests.service.kit import (
    MINUTE,
    SYMBOLS,
    T0,
    Api,
    api_settings,
    make_signal,
    served_from_redis,
    serving,
    unique_prefix,
)

pytestmark = pytest.mark.timeout(60)


def updates(api: Api) -> float:
    """New latest signals the API took in, by pub/sub or by a re-read."""
    return api.sample("candlecast_api_signal_updates_total", via="pubsub") + api.sample(
        "candlecast_api_signal_updates_total", via="prime"
    )


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    """The one error shape: {"error": {"code", "message", "details"}} and nothing else."""
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == {"code", "message", "details"}, err
    assert isinstance(err["code"], str) and isinstance(err["message"], str) and isinstance(err["details"], dict)
    return err


async def test_a_published_signal_is_served_from_memory_exactly_as_written(redis_url: str) -> None:
    async with served_from_redis(redis_url) as (store, api, http):
        s = make_signal(T0)
        await store.publish(s)
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 1, 5)
        r = await http.get("/signal/btcusdt")  # lowercase is normalised
        assert r.status_code == 200
        assert r.headers["content-type"] == "application/json"
        assert r.content == s.to_json()  # the worker's bytes, not a re-serialisation
        assert Signal.from_json(r.content) == s

        # No Redis round trip per request: the key is gone from Redis, the answer is not.
        client = aioredis.Redis.from_url(redis_url)
        await client.delete(store.keys.signal_latest("BTCUSDT"))
        await client.aclose()
        assert (await http.get("/signal/BTCUSDT")).content == s.to_json()

        # A newer bar replaces it; an older one never does.
        newer = make_signal(T0 + MINUTE, direction="short")
        await store.publish(newer)
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 2, 5)
        assert Signal.from_json((await http.get("/signal/BTCUSDT")).content) == newer


async def test_a_forged_publish_is_dropped_and_counted_and_moves_no_clock(redis_url: str) -> None:
    """Anyone who reaches Redis can PUBLISH on the channel: a message is believed only when it is the
    stored latest signal of a configured symbol, byte for byte."""
    async with served_from_redis(redis_url) as (store, api, http):
        real = make_signal(T0)
        await store.publish(real)
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 1, 5)
        eth = make_signal(T0, symbol="ETHUSDT")
        await store.publish(eth)
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 2, 5)
        attacker = aioredis.Redis.from_url(redis_url)
        channel = store.keys.signals_channel
        forged = make_signal(T0 + 30 * 24 * 60 * MINUTE, direction="long")  # 30 days ahead
        unknown = make_signal(T0 + MINUTE, symbol="DOGEUSDT")
        for payload in (forged.to_json(), unknown.to_json(), b"not a signal"):
            await attacker.publish(channel, payload)
        await attacker.aclose()
        for kind in ("unverified", "unknown_symbol", "bad_message"):
            await eventually(lambda k=kind: api.sample("candlecast_api_signal_feed_errors_total", kind=k) == 1, 5)
        assert (await http.get("/signal/BTCUSDT")).content == real.to_json()  # not the forgery
        assert (await http.get("/signal/ETHUSDT")).content == eth.to_json()  # and not made stale by it
        assert api.sample("candlecast_api_signal_updates_total", via="pubsub") == 2
        # a genuine signal already overtaken by the next bar (a backlog) is no forgery: ignored, not flagged
        newer = make_signal(T0 + MINUTE)
        await store.publish(newer)
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 3, 5)
        late = aioredis.Redis.from_url(redis_url)
        await late.publish(channel, real.to_json())
        await late.aclose()
        await eventually(lambda: api.sample("candlecast_api_signal_feed_errors_total", kind="superseded") == 1, 5)
        assert api.sample("candlecast_api_signal_feed_errors_total", kind="unverified") == 1


async def test_unknown_symbol_is_a_404_listing_the_configured_ones(redis_url: str) -> None:
    async with serving(api_settings(redis_url, unique_prefix())) as api, api.http() as http:
        r = await http.get("/signal/dogeusdt")
        assert r.status_code == 404
        err = error_of(r.json())
        assert err["code"] == "unknown_symbol"
        assert err["details"] == {"symbol": "DOGEUSDT", "symbols": list(SYMBOLS)}
        assert (await http.get("/signal/DOGEUSDT/history")).status_code == 404
        # one spelling per symbol: ASCII letters and digits in any case, nothing folded into it
        for odd in ("BTCUS\u017fDT", "BTCUSDT%09", "%20BTCUSDT", "BTC-USDT"):
            r = await http.get(f"/signal/{odd}")
            assert r.status_code == 404 and error_of(r.json())["code"] == "unknown_symbol", odd
        assert (await http.head("/healthz")).status_code == 200


async def test_no_servable_signal_is_a_503_with_the_reason_and_retry_after(redis_url: str) -> None:
    # no-signal records are re-read, not pushed
    async with served_from_redis(redis_url, api_resync_s=0.2) as (store, api, http):
        # Nothing yet: warming up.
        r = await http.get("/signal/BTCUSDT")
        assert r.status_code == 503 and r.headers["retry-after"] == "5"
        err = error_of(r.json())
        assert err["code"] == "signal_unavailable"
        assert err["details"]["reason"] == "warming_up" and err["details"]["last_signal_bar"] is None

        # BTC at 12:00, then ETH moves the exchange clock to 12:05: BTC's signal is too old
        # (2 bars + 30 s grace), judged on bar closes, not on this machine's clock.
        await store.publish(make_signal(T0, "BTCUSDT"))
        await store.publish(make_signal(T0 + 4 * MINUTE, "ETHUSDT"))
        await eventually(lambda: updates(api) == 2, 5)
        r = await http.get("/signal/BTCUSDT")
        assert r.status_code == 503 and r.headers["retry-after"] == "30"
        d = error_of(r.json())["details"]
        assert d["reason"] == "stale"
        assert d["age_ms"] == 4 * MINUTE and d["max_age_ms"] == 2 * MINUTE + 30_000
        assert d["last_signal_bar"] == {"interval": "1", "start": T0, "close_time": T0 + MINUTE}
        assert (await http.get("/signal/ETHUSDT")).status_code == 200

        # The worker recorded why the newer bars have none: that reason, not a bare "stale".
        why = NoSignal(
            "BTCUSDT",
            BarRef("1", T0 + 3 * MINUTE, T0 + 4 * MINUTE),
            "fallback_input:holed_window",
            "tcn_1m: holed_window; fallback: holed_window",
            T0 + 4 * MINUTE,
            T0 + 4 * MINUTE + 50,
        )
        assert await store.record_no_signal(why)
        await store.publish(make_signal(T0 + 5 * MINUTE, "SOLUSDT"))
        await eventually(lambda: updates(api) == 3, 5)

        async def holed() -> bool:
            r = await http.get("/signal/BTCUSDT")
            return r.status_code == 503 and error_of(r.json())["details"]["reason"] == "no_signal"

        await eventually(holed, 10, what="the no-signal record picked up by the periodic re-read")
        r = await http.get("/signal/BTCUSDT")
        d = error_of(r.json())["details"]
        assert d["no_signal"]["reason"] == "fallback_input:holed_window"
        assert d["no_signal"]["bar"]["start"] == T0 + 3 * MINUTE
        assert r.headers["retry-after"] == "30"

        overview = (await http.get("/signals")).json()
        assert overview["exchange_time_ms"] == T0 + 6 * MINUTE
        assert overview["max_age_ms"] == 150_000
        by = overview["symbols"]
        assert by["BTCUSDT"]["available"] is False and by["BTCUSDT"]["reason"] == "no_signal"
        assert by["ETHUSDT"]["available"] is True
        assert by["ETHUSDT"]["signal"] == orjson.loads(make_signal(T0 + 4 * MINUTE, "ETHUSDT").to_json())
        assert by["SOLUSDT"]["available"] is True


async def test_history_comes_newest_first_from_the_audit_stream_and_limit_is_bounded(redis_url: str) -> None:
    async with served_from_redis(redis_url) as (store, _api, http):
        for k in range(5):
            await store.publish(make_signal(T0 + k * MINUTE))
        await store.publish(make_signal(T0 - MINUTE))  # an older bar finishing late: audited only
        r = await http.get("/signal/btcusdt/history", params={"limit": 3})
        assert r.status_code == 200
        body = r.json()
        assert body["symbol"] == "BTCUSDT" and body["count"] == 3
        assert [s["bar"]["start"] for s in body["signals"]] == [T0 - MINUTE, T0 + 4 * MINUTE, T0 + 3 * MINUTE]
        audit = await store.history("BTCUSDT", 3)
        assert [Signal.from_json(orjson.dumps(s)) for s in body["signals"]] == audit
        assert (await http.get("/signal/BTCUSDT/history")).json()["count"] == 6  # default 100
        assert (await http.get("/signal/ETHUSDT/history")).json() == {
            "symbol": "ETHUSDT",
            "count": 0,
            "signals": [],
        }
        for bad in (0, 1001, -1, "many"):
            r = await http.get("/signal/BTCUSDT/history", params={"limit": bad})
            assert r.status_code == 422, bad
            err = error_of(r.json())
            assert err["code"] == "validation_error"
            assert err["details"]["errors"][0]["loc"] == ["query", "limit"]
        assert (await http.get("/signal/BTCUSDT/history", params={"limit": 1000})).status_code == 200


async def test_every_error_has_one_shape_and_a_5xx_body_leaks_nothing(redis_url: str) -> None:
    settings = api_settings(redis_url, unique_prefix())
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("secret internal detail: password=hunter2 at /srv/candlecast/service/app.py")

    app.add_api_route("/boom", boom)
    async with serving(settings, app=app) as api, api.http() as http:
        r = await http.get("/no/such/route")
        assert r.status_code == 404 and error_of(r.json())["code"] == "not_found"
        r = await http.post("/signal/BTCUSDT")
        assert r.status_code == 405 and error_of(r.json())["code"] == "method_not_allowed"
        assert "GET" in r.headers["allow"]
        r = await http.get("/signal/" + "X" * 65)
        assert r.status_code == 422 and error_of(r.json())["code"] == "validation_error"
        r = await http.get("/boom")
        assert r.status_code == 500
        assert error_of(r.json()) == {"code": "internal_error", "message": "internal server error", "details": {}}
        for leak in ("secret", "hunter2", "Traceback", "RuntimeError", "app.py"):
            assert leak not in r.text


async def test_openapi_documents_every_route_with_models_and_examples(redis_url: str) -> None:
    async with serving(api_settings(redis_url, unique_prefix())) as api, api.http() as http:
        spec = (await http.get("/openapi.json")).json()
        assert (await http.get("/docs")).status_code == 200
    paths = spec["paths"]
    for path in ("/signal/{symbol}", "/signals", "/signal/{symbol}/history", "/healthz", "/readyz", "/metrics"):
        assert "get" in paths[path], path
    one = paths["/signal/{symbol}"]["get"]["responses"]
    ok = one["200"]["content"]["application/json"]
    assert ok["schema"]["$ref"].endswith("/Signal")
    assert ok["example"]["symbol"] == "BTCUSDT"
    assert set(one["503"]["content"]["application/json"]["examples"]) == {"warming_up", "no_signal", "stale"}
    assert "Retry-After" in one["503"]["headers"]
    assert one["404"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    history = paths["/signal/{symbol}/history"]["get"]
    limit = next(p for p in history["parameters"] if p["name"] == "limit")
    assert (limit["schema"]["minimum"], limit["schema"]["maximum"]) == (1, 1000)
    assert "example" in history["responses"]["200"]["content"]["application/json"]
    schemas = spec["components"]["schemas"]
    assert {"Signal", "ComponentReport", "BarRef", "ErrorBody", "SignalsOverview", "SignalHistory"} <= set(schemas)
    assert set(schemas["Signal"]["properties"]) >= {"symbol", "bar", "direction", "score", "components", "freshness"}
    assert "securitySchemes" not in spec["components"]  # keys are off here (see test_api_auth)
    assert "401" not in one
    # Every example validates as what it documents.
    Signal.from_json(orjson.dumps(ok["example"]))


async def test_cors_is_off_unless_origins_are_configured(redis_url: str) -> None:
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "GET"}
    async with serving(api_settings(redis_url, unique_prefix())) as api, api.http() as http:
        r = await http.get("/healthz", headers={"Origin": "https://app.example"})
        assert "access-control-allow-origin" not in r.headers
        assert (await http.options("/signal/BTCUSDT", headers=preflight)).status_code == 405
    settings = api_settings(redis_url, unique_prefix(), cors_origins="https://app.example")
    async with serving(settings) as api, api.http() as http:
        r = await http.options(
            "/signal/BTCUSDT", headers=preflight | {"Access-Control-Request-Headers": "authorization"}
        )
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://app.example"
        r = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("CANDLECAST_API_KEYS", "short", "at least 16 characters"),
        ("CANDLECAST_API_KEYS", "a-good-long-key-0001,has space in it!!", "at least 16 characters"),
        ("CANDLECAST_CORS_ORIGINS", "app.example", "invalid origin"),
        ("CANDLECAST_CORS_ORIGINS", "https://app.example/path", "invalid origin"),
        ("CANDLECAST_API_WS_QUEUE", "0", "greater than or equal"),
        ("CANDLECAST_API_WS_QUEUE", "64", "at least twice CANDLECAST_API_WS_MAX_SYMBOLS (50)"),
        ("CANDLECAST_API_WS_MAX_FRAME_BYTES", "10", "greater than or equal"),
        ("CANDLECAST_API_PORT", "70000", "less than or equal"),
    ],
)
def test_api_settings_errors_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str
) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in str(info.value) and needle in str(info.value)
    if var == "CANDLECAST_API_KEYS":
        assert value.split(",")[-1] not in str(info.value)  # a key is never echoed


def test_api_settings_parse_and_keep_keys_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDLECAST_API_KEYS", " key-one-0123456789 , key-two-0123456789 ")
    monkeypatch.setenv("CANDLECAST_CORS_ORIGINS", "https://app.example/,http://localhost:3000")
    s = load_settings()
    assert [k.get_secret_value() for k in s.api_keys] == ["key-one-0123456789", "key-two-0123456789"]
    assert "key-one" not in repr(s)
    assert s.cors_origins == ["https://app.example", "http://localhost:3000"]
    assert (s.api_ws_queue, s.api_ws_max_symbols, s.api_ws_max_frame_bytes) == (256, 50, 16_384)


def test_the_api_without_redis_or_a_store_refuses_to_build(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CANDLECAST_REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match="CANDLECAST_REDIS_URL"):
        create_app(load_settings())
