"""The API test kit (tests/service/kit.py) does what its helpers say."""

from __future__ import annotations

import httpx
import pytest

from inference.signal import Signal
from tests.service.kit import T0, api_settings, make_signal, serving, subscribe, unique_prefix, ws_connect


async def test_kit_serves_on_a_free_port_and_stops(redis_url: str) -> None:
    async with serving(api_settings(redis_url, unique_prefix())) as api, api.http() as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
    async with httpx.AsyncClient(base_url=api.base_url) as http:
        with pytest.raises(httpx.ConnectError):
            await http.get("/healthz")
    await api.server.close()  # safe twice


def test_kit_signals_round_trip() -> None:
    s = make_signal(T0, "ETHUSDT", direction="short", components=5)
    assert Signal.from_json(s.to_json()) == s
    assert len(s.components) == 5


@pytest.mark.parametrize("symbols", [["btcusdt"], ["BTCUSDT", "ETHUSDT"]])
async def test_kit_subscribe_collects_ack_and_snapshot(redis_url: str, symbols: list[str]) -> None:
    async with serving(api_settings(redis_url, unique_prefix())) as api, ws_connect(api.ws_url) as ws:
        frames = await subscribe(ws, symbols)
        assert [f["op"] for f in frames] == ["subscribe"] + ["unavailable"] * len(symbols)
