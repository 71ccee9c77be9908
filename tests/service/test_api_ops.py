"""Operations endpoints: /readyz says why it is not ready; /metrics is valid Prometheus text with
route templates, WebSocket counters, freshness, and any other metrics on the registry passed in."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from inference.metrics import WorkerMetrics
from streaming.metrics import IngestMetrics
from tests.helpers import eventually
from tests.service.kit import (
    MINUTE,
    T0,
    Api,
    api_settings,
    make_signal,
    recv_json,
    redis_signals,
    serving,
    subscribe,
    unique_prefix,
    ws_connect,
)

pytestmark = pytest.mark.timeout(60)


async def readiness(api: Api) -> tuple[int, list[str], dict[str, Any]]:
    async with api.http() as http:
        r = await http.get("/readyz")
    body = r.json()
    if r.status_code == 200:
        assert body["status"] == "ready"
        return 200, [], body["checks"]
    details = body["error"]["details"]
    assert body["error"]["code"] == "not_ready"
    return r.status_code, details["reasons"], details["checks"]


def last_closed_minute() -> int:
    now = int(time.time() * 1000)
    return now - now % MINUTE - MINUTE


async def test_readyz_reports_each_reason(redis_url: str) -> None:
    prefix = unique_prefix()
    settings = api_settings(redis_url, prefix, api_ready_max_lag_s=600, api_ready_max_stall_s=1.0)
    now = [1000.0]  # the monotonic clock readiness measures stalls with, moved by hand
    async with redis_signals(redis_url, prefix) as store, serving(settings, monotonic=lambda: now[0]) as api:
        await eventually(lambda: api.sample("candlecast_api_signal_feed_up") == 1, 5)
        status, reasons, checks = await readiness(api)
        assert (status, reasons) == (503, ["no_data", "no_fresh_signals"])
        assert checks["redis"] == "ok" and checks["signal_feed"] == "up"
        assert checks["signals"]["unavailable"] == {s: "warming_up" for s in settings.symbols}

        # Data from last year: servable on its own exchange clock, but nothing is flowing now.
        await store.publish(make_signal(T0, "SOLUSDT"))
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 1, 5)
        status, reasons, checks = await readiness(api)
        assert (status, reasons) == (503, ["data_behind_wall_clock"])
        assert checks["data_lag_s"] > 600 and checks["signals"]["fresh"] == 1

        # A bar that closed a minute ago: ready, the symbols still warming up listed.
        await store.publish(make_signal(last_closed_minute(), "BTCUSDT"))
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 2, 5)
        status, reasons, checks = await readiness(api)
        assert status == 200, reasons
        assert checks["signals"] == {
            "fresh": 1,
            "configured": 3,
            "unavailable": {"ETHUSDT": "warming_up", "SOLUSDT": "stale"},
        }
        assert 0 <= checks["data_lag_s"] < 200

        # The exchange clock stops moving for longer than allowed: stalled.
        now[0] += 1.2
        status, reasons, _ = await readiness(api)
        assert (status, reasons) == (503, ["data_stalled"])
        await store.publish(make_signal(last_closed_minute() + MINUTE, "ETHUSDT"))
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 3, 5)
        assert (await readiness(api))[0] == 200


async def test_a_signal_is_stale_once_the_feed_stops_advancing(redis_url: str) -> None:
    """When the ingestor dies the exchange clock stops with it: a wall-clock bound on the silence
    turns the last signal stale (HTTP 503 with the reason) instead of serving it as fresh."""
    prefix = unique_prefix()
    settings = api_settings(redis_url, prefix, api_feed_max_silence_s=180, api_ready_max_stall_s=0)
    now = [1000.0]
    async with redis_signals(redis_url, prefix) as store, serving(settings, monotonic=lambda: now[0]) as api:
        s = make_signal(last_closed_minute(), "BTCUSDT")
        await store.publish(s)
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 1, 5)
        async with api.http() as http, ws_connect(api.ws_url) as ws:
            _ack, snapshot = await subscribe(ws, ["BTCUSDT"])
            assert snapshot["op"] == "signal"
            assert (await http.get("/signal/BTCUSDT")).status_code == 200
            now[0] += 179.0
            assert (await http.get("/signal/BTCUSDT")).status_code == 200  # within the bound
            now[0] += 2.0  # 181 s without the exchange clock moving
            r = await http.get("/signal/BTCUSDT")
            assert r.status_code == 503
            err = r.json()["error"]
            assert err["details"]["reason"] == "stale" and "has not advanced for 181 s" in err["message"]
            assert "no_fresh_signals" in (await readiness(api))[1]
            # a subscriber is told too, once
            told = await recv_json(ws, 10)
            assert (told["op"], told["symbol"], told["reason"]) == ("unavailable", "BTCUSDT", "stale")
            # the feed moves again: the next bar's signal is served
            await store.publish(make_signal(last_closed_minute() + MINUTE, "BTCUSDT"))
            await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 2, 5)
            assert (await http.get("/signal/BTCUSDT")).status_code == 200


async def test_metrics_parse_with_route_templates_and_the_registry_passed_in(redis_url: str) -> None:
    prefix = unique_prefix()
    registry = CollectorRegistry()
    WorkerMetrics(registry).signals.labels("ensemble", "long").inc()  # as if the worker ran in-process
    IngestMetrics(registry).messages.labels("kline").inc(3)
    async with (
        redis_signals(redis_url, prefix) as store,
        serving(api_settings(redis_url, prefix), registry=registry) as api,
    ):
        await store.publish(make_signal(T0))
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 1, 5)
        async with api.http() as http, ws_connect(api.ws_url) as ws:
            await subscribe(ws, ["BTCUSDT"])
            for path in ("/signal/BTCUSDT", "/signal/ethusdt", "/signal/NOPE", "/nowhere", "/signal/BTCUSDT/history"):
                await http.get(path)
            r = await http.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            families = {f.name: f for f in text_string_to_metric_families(r.text)}

    requests = families["candlecast_api_request_duration_seconds"]
    assert requests.type == "histogram"
    counts = {
        (s.labels["route"], s.labels["status"]): s.value
        for s in requests.samples
        if s.name.endswith("_count") and s.labels["method"] == "GET"
    }
    assert counts[("/signal/{symbol}", "200")] == 1  # the template, not /signal/BTCUSDT
    assert counts[("/signal/{symbol}", "503")] == 1
    assert counts[("/signal/{symbol}", "404")] == 1
    assert counts[("/signal/{symbol}/history", "200")] == 1
    assert counts[("<unmatched>", "404")] == 1
    assert not any("BTCUSDT" in route for route, _ in counts)

    def value(name: str, **labels: str) -> float:
        """A sample by its exposed name (counter families are named without ``_total``)."""
        family = families[name.removesuffix("_total")]
        return next(
            s.value for s in family.samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
        )

    assert value("candlecast_api_ws_clients") == 1
    assert value("candlecast_api_ws_messages_sent_total", kind="signal") == 1
    assert "candlecast_api_ws_messages_dropped" in families
    assert "candlecast_api_ws_slow_consumer_closes" in families
    assert value("candlecast_api_signal_available", symbol="BTCUSDT") == 1
    assert value("candlecast_api_signal_available", symbol="ETHUSDT") == 0
    assert value("candlecast_api_signal_age_seconds", symbol="BTCUSDT") == 0
    assert value("candlecast_api_signal_max_age_seconds") == 150  # 2 one-minute bars + the 30 s grace
    assert value("candlecast_api_signal_feed_up") == 1
    # What else lives on the registry is exposed too (the single-process run's worker and ingestor).
    assert value("candlecast_signals_total", source="ensemble", direction="long") == 1
    assert value("candlecast_ingest_messages_total", type="kline") == 3


async def test_metrics_say_what_each_symbols_latest_signal_is(redis_url: str) -> None:
    """The Overview dashboard's per-symbol values: direction, score, confidence, agreement, fallback."""
    prefix = unique_prefix()
    fallback = dataclasses.replace(
        make_signal(T0, "ETHUSDT", direction="short"),
        source="fallback",
        fallback_reason="models_missing",
        confidence=None,
        agreement=None,
    )
    async with (
        redis_signals(redis_url, prefix) as store,
        serving(api_settings(redis_url, prefix)) as api,
    ):
        assert api.registry.get_sample_value("candlecast_api_signal_direction", {"symbol": "BTCUSDT"}) is None
        await store.publish(make_signal(T0))
        await store.publish(fallback)
        await eventually(lambda: api.sample("candlecast_api_signal_updates_total", via="pubsub") == 2, 5)

        def latest(name: str, symbol: str) -> float | None:
            return api.registry.get_sample_value(f"candlecast_api_signal_{name}", {"symbol": symbol})

        assert [latest(n, "BTCUSDT") for n in ("direction", "score", "confidence", "agreement", "fallback")] == [
            1,
            0.1,
            0.1,
            1.0,
            0,
        ]
        # a fallback signal has no confidence or agreement: those series are absent, not 0
        assert [latest(n, "ETHUSDT") for n in ("direction", "score", "confidence", "agreement", "fallback")] == [
            -1,
            -0.1,
            None,
            None,
            1,
        ]
