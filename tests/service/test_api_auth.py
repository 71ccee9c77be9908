"""API keys, on and off: a header for HTTP and WebSocket, the first WS message for browsers, never the
URL; health, readiness, metrics and docs stay open."""

from __future__ import annotations

import asyncio

import pytest
from websockets.asyncio.client import ClientConnection

from tests.service.kit import (
    T0,
    api_settings,
    make_signal,
    read_until_closed,
    recv_json,
    send_json,
    served_from_redis,
    serving,
    subscribe,
    unique_prefix,
    ws_connect,
)

pytestmark = pytest.mark.timeout(60)

KEY = "test-key-0123456789abcdef"
OTHER = "another-key-0123456789"


async def closed_with(ws: ClientConnection) -> int | None:
    code, _frames = await read_until_closed(ws, 5.0)
    return code


async def test_with_keys_signal_routes_need_a_bearer_header_and_health_stays_open(redis_url: str) -> None:
    async with served_from_redis(redis_url, api_keys=f"{OTHER},{KEY}") as (store, _api, http):
        await store.publish(make_signal(T0))
        good = {"Authorization": f"Bearer {KEY}"}
        for path in ("/signal/BTCUSDT", "/signals", "/signal/BTCUSDT/history"):
            r = await http.get(path)
            assert r.status_code == 401, path
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["error"]["code"] == "unauthorized"
            r = await http.get(path, headers={"Authorization": "Bearer wrong-key-0123456789"})
            assert r.status_code == 401 and r.json()["error"]["message"] == "invalid API key"
            assert (await http.get(path, headers={"Authorization": f"Basic {KEY}"})).status_code == 401
            assert (await http.get(path, headers=good)).status_code in (200, 503), path
        # Either configured key works.
        assert (await http.get("/signals", headers={"Authorization": f"Bearer {OTHER}"})).status_code == 200
        # A key in the URL is refused, even a valid one, even with a valid header.
        for param in ("api_key", "key", "token", "KEY", "apiKey", "Access_Token"):  # any case
            r = await http.get("/signals", params={param: KEY}, headers=good)
            assert r.status_code == 401 and "not accepted in the URL" in r.json()["error"]["message"]
        for path in ("/healthz", "/openapi.json", "/docs"):
            assert (await http.get(path)).status_code == 200, path
        # the metrics beside the signals carry every symbol's direction and score: they need a key too
        assert (await http.get("/metrics")).status_code == 401
        assert (await http.get("/metrics", headers=good)).status_code == 200
        spec = (await http.get("/openapi.json")).json()
        assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
        for path in ("/signal/{symbol}", "/signals", "/signal/{symbol}/history"):
            assert spec["paths"][path]["get"]["security"] == [{"ApiKey": []}], path
            assert "401" in spec["paths"][path]["get"]["responses"], path
        assert "security" not in spec["paths"]["/healthz"]["get"]
        assert (await http.get("/readyz")).status_code in (200, 503)


async def test_without_keys_nothing_is_asked(redis_url: str) -> None:
    async with serving(api_settings(redis_url, unique_prefix())) as api, api.http() as http:
        assert (await http.get("/signals")).status_code == 200
        async with ws_connect(api.ws_url) as ws:
            frames = await subscribe(ws, ["BTCUSDT"])
            assert frames[0]["symbols"] == ["BTCUSDT"]
            await send_json(ws, {"op": "auth", "key": "anything"})  # harmless without keys
            assert await recv_json(ws) == {"op": "auth", "ok": True}


async def test_websocket_key_in_the_header_or_the_first_message(redis_url: str) -> None:
    settings = api_settings(redis_url, unique_prefix(), api_keys=KEY, api_ws_auth_timeout_s=0.5)
    async with serving(settings) as api:
        # Header: subscribe straight away.
        async with ws_connect(api.ws_url, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
            assert (await subscribe(ws, ["BTCUSDT"]))[0]["ok"] is True
        # First message (browsers cannot set headers on a WebSocket).
        async with ws_connect(api.ws_url) as ws:
            await send_json(ws, {"op": "auth", "key": KEY, "id": "a1"})
            assert await recv_json(ws) == {"op": "auth", "id": "a1", "ok": True}
            assert (await subscribe(ws, ["ETHUSDT"]))[0]["ok"] is True
            # Later auth messages do not change anything; a bad one is an error frame, not a close.
            await send_json(ws, {"op": "auth", "key": "wrong-key-0123456789"})
            assert (await recv_json(ws))["error"]["code"] == "invalid_key"
            await send_json(ws, {"op": "ping"})
            assert (await recv_json(ws))["op"] == "pong"

        # Refused with 1008: a bad header key, a bad first-message key, another first message,
        # silence past the auth timeout, and a key in the URL (even a valid one).
        async with ws_connect(api.ws_url, additional_headers={"Authorization": "Bearer wrong-key-0123456789"}) as ws:
            assert await closed_with(ws) == 1008
        async with ws_connect(api.ws_url) as ws:
            await send_json(ws, {"op": "auth", "key": "wrong-key-0123456789"})
            assert await closed_with(ws) == 1008
        async with ws_connect(api.ws_url) as ws:
            await send_json(ws, {"op": "subscribe", "symbols": ["BTCUSDT"]})
            assert await closed_with(ws) == 1008
        async with ws_connect(api.ws_url) as ws:
            assert await closed_with(ws) == 1008
            assert ws.close_reason == "no API key within the time allowed"  # the silence, not another refusal
        for query in (f"?api_key={KEY}", f"?ToKeN={KEY}"):
            async with ws_connect(api.ws_url + query, additional_headers={"Authorization": f"Bearer {KEY}"}) as ws:
                assert await closed_with(ws) == 1008
        await asyncio.sleep(0)
        assert api.sample("candlecast_api_ws_connections_total", reason="unauthorized") == 6
