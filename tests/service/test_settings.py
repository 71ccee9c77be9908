"""Settings: typed, read from CANDLECAST_* variables, errors name the variable."""

from __future__ import annotations

import pytest

from service.settings import ConfigError, load_settings


def test_defaults_point_at_bybit_mainnet_linear(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (
        "CANDLECAST_REDIS_URL",
        "CANDLECAST_SYMBOLS",
        "CANDLECAST_BYBIT_WS_URL",
        "CANDLECAST_BYBIT_REST_URL",
        "CANDLECAST_INTERVALS",
    ):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.bybit_ws_url == "wss://stream.bybit.com/v5/public/linear"
    assert s.bybit_rest_url == "https://api.bybit.com"
    assert s.intervals == ["1", "5", "15", "60"]
    assert s.redis_url is None


def test_environment_is_parsed_and_normalised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANDLECAST_SYMBOLS", " btcusdt,ETHUSDT , btcusdt")
    monkeypatch.setenv("CANDLECAST_INTERVALS", "60,1")
    monkeypatch.setenv("CANDLECAST_REDIS_URL", "redis://127.0.0.1:6379/3")
    monkeypatch.setenv("CANDLECAST_BYBIT_REST_URL", "http://127.0.0.1:9/")
    s = load_settings()
    assert s.symbols == ["BTCUSDT", "ETHUSDT"]
    assert s.intervals == ["1", "60"]
    assert s.redis_url == "redis://127.0.0.1:6379/3"
    assert s.bybit_rest_url == "http://127.0.0.1:9"


@pytest.mark.parametrize(
    ("var", "value", "needle"),
    [
        ("CANDLECAST_SYMBOLS", "BTC-USDT", "invalid symbol"),
        ("CANDLECAST_SYMBOLS", ",", "at least one symbol"),
        ("CANDLECAST_INTERVALS", "1,D", "invalid interval"),
        ("CANDLECAST_BOOK_DEPTH", "500", "not offered"),
        ("CANDLECAST_BOOK_DEPTH", "many", "integer"),
        ("CANDLECAST_BYBIT_WS_URL", "https://stream.bybit.com", "ws://"),
        ("CANDLECAST_BYBIT_REST_URL", "api.bybit.com", "http://"),
        ("CANDLECAST_REDIS_URL", "localhost:6379", "redis://"),
        ("CANDLECAST_WINDOW_BARS", "5", "greater than or equal"),
    ],
)
def test_errors_name_the_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str, needle: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(ConfigError) as info:
        load_settings()
    assert var in str(info.value)
    assert needle in str(info.value)


def test_require_redis_names_the_variable_and_why_it_is_needed() -> None:
    with pytest.raises(ConfigError, match=r"CANDLECAST_REDIS_URL: inspect reads the Redis store; set it \(e\.g\."):
        load_settings(redis_url=None).require_redis("inspect reads the Redis store")
    assert load_settings(redis_url="redis://127.0.0.1:6379/3").require_redis("x") == "redis://127.0.0.1:6379/3"
