"""The API's OpenAPI surface: the response schemas and the documented examples, written once.

Routes (:mod:`service.routes`) declare their responses from here; :func:`keep_example_nulls` puts
back the ``null`` values FastAPI strips from examples, so the documented signal stays valid.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel, ConfigDict

from inference.signal import BarRef, Signal
from service.errors import ErrorBody

__all__ = [
    "DESCRIPTION",
    "EXAMPLE_SIGNAL",
    "HISTORY_OK",
    "INVALID",
    "JSON",
    "NOT_READY",
    "PERFORMANCES_OK",
    "PERFORMANCE_OK",
    "SIGNALS_OK",
    "SIGNAL_OK",
    "SIGNAL_UNAVAILABLE",
    "STORE_UNAVAILABLE",
    "UNAUTHORIZED",
    "UNAVAILABLE_EXAMPLES",
    "UNKNOWN_SYMBOL",
    "NoSignalInfo",
    "Ready",
    "SignalHistory",
    "SignalsOverview",
    "SymbolSignal",
    "error_example",
    "error_response",
    "keep_example_nulls",
    "one_error",
]

JSON = "application/json"

EXAMPLE_SIGNAL: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "bar": {"interval": "1", "start": 1750000020000, "close_time": 1750000080000},
    "produced_at": 1750000080000,
    "produced_wall_ms": 1750000080420,
    "direction": "long",
    "score": 0.0212,
    "p_up": 0.5106,
    "confidence": 0.0212,
    "agreement": 0.66,
    "source": "ensemble",
    "fallback_reason": None,
    "components": [
        {
            "name": "linear_1m",
            "timeframe": "1",
            "horizon": "log return over the next 1 min",
            "p_up": 0.512,
            "weight": 0.3462,
            "version": "2026.12.02",
            "provider": "CPUExecutionProvider",
            "latency_ms": 0.05,
            "status": "voted",
            "reason": None,
            "horizon_minutes": 1,
            "expected_move_bp": 4.1,
            "volatility_bp": 5.6,
            "stands_in_for": None,
        },
        {
            "name": "tcn_60m",
            "timeframe": "60",
            "horizon": "next 60m bar",
            "p_up": None,
            "weight": 0.0,
            "version": "2026.11.20",
            "provider": "CPUExecutionProvider",
            "latency_ms": None,
            "status": "dropped",
            "reason": "horizon_mismatch",
            "horizon_minutes": 60,
            "expected_move_bp": None,
            "volatility_bp": None,
            "stands_in_for": None,
        },
    ],
    "freshness": {
        "last_bar_start": {"1": 1750000020000, "60": 1749996000000},
        "book_state": "READY",
        "book_age_ms": 112,
    },
    "latency_ms": {
        "read": 0.9,
        "render": 2.1,
        "infer": 4.8,
        "ensemble": 0.05,
        "total": 8.2,
        "bar_close_to_publish": 420.0,
    },
    "horizon": "log return over the next 1 min",
    "horizon_minutes": 1,
    "reference_price": 104250.5,
    "expected_move_bp": 4.47,
    "volatility_bp": 5.6,
    "edge_bp": 0.09,
    "cost_bp": 11.0,
    "tradeable": False,
    "calibrated": True,
    "partial": False,
    "models": "3f2a9c1d0b7e",
    "track_record": {"n": 100, "calls": 23, "hit_rate": 0.5652, "as_of_bar": 1749999960000},
    "ladder": None,
}


def error_example(code: str, message: str, **details: Any) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "details": details}}


UNAVAILABLE_EXAMPLES = {
    "warming_up": {
        "summary": "no signal yet",
        "value": error_example(
            "signal_unavailable",
            "no signal for BTCUSDT yet: the service is warming up",
            symbol="BTCUSDT",
            reason="warming_up",
            retry_after_s=5,
            exchange_time_ms=None,
            max_age_ms=150000,
            last_signal_bar=None,
            age_ms=None,
            no_signal=None,
        ),
    },
    "no_signal": {
        "summary": "the newest bars could not be signalled honestly",
        "value": error_example(
            "signal_unavailable",
            "no signal for BTCUSDT since the bar at 1750000140000: fallback_input:holed_window",
            symbol="BTCUSDT",
            reason="no_signal",
            retry_after_s=30,
            exchange_time_ms=1750000260000,
            max_age_ms=150000,
            last_signal_bar={"interval": "1", "start": 1750000020000, "close_time": 1750000080000},
            age_ms=180000,
            no_signal={
                "reason": "fallback_input:holed_window",
                "detail": "tcn_1m: holed_window; fallback: holed_window",
                "bar": {"interval": "1", "start": 1750000140000, "close_time": 1750000200000},
                "produced_at": 1750000200000,
            },
        ),
    },
    "stale": {
        "summary": "the latest signal is too old on the exchange clock",
        "value": error_example(
            "signal_unavailable",
            "the latest signal for BTCUSDT is older than 150000 ms on the exchange clock",
            symbol="BTCUSDT",
            reason="stale",
            retry_after_s=30,
            exchange_time_ms=1750000260000,
            max_age_ms=150000,
            last_signal_bar={"interval": "1", "start": 1750000020000, "close_time": 1750000080000},
            age_ms=180000,
            no_signal=None,
        ),
    },
}


def error_response(description: str, examples: dict[str, Any]) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description, "content": {JSON: {"examples": examples}}}


def one_error(description: str, code: str, message: str, **details: Any) -> dict[str, Any]:
    """An error response documented by a single example, named after its code."""
    return error_response(description, {code: {"value": error_example(code, message, **details)}})


UNKNOWN_SYMBOL = one_error(
    "The symbol is not configured; `details.symbols` lists those that are.",
    "unknown_symbol",
    "FOOUSDT is not served here",
    symbol="FOOUSDT",
    symbols=["BTCUSDT", "ETHUSDT"],
)
UNAUTHORIZED = one_error(
    "API keys are on and the request has no valid `Authorization: Bearer <key>`.", "unauthorized", "invalid API key"
)
INVALID = one_error(
    "A parameter is out of range.",
    "validation_error",
    "the request is not valid",
    errors=[
        {"loc": ["query", "limit"], "message": "Input should be less than or equal to 1000", "type": "less_than_equal"}
    ],
)


class NoSignalInfo(BaseModel):
    model_config = ConfigDict(frozen=True)

    reason: str
    detail: str
    bar: BarRef
    produced_at: int


class SymbolSignal(BaseModel):
    """A symbol in ``GET /signals``: its servable signal, or why there is none."""

    model_config = ConfigDict(frozen=True)

    available: bool
    signal: Signal | None = None
    reason: Literal["warming_up", "no_signal", "stale"] | None = None
    message: str | None = None
    retry_after_s: int | None = None
    age_ms: int | None = None
    last_signal_bar: BarRef | None = None
    no_signal: NoSignalInfo | None = None


class SignalsOverview(BaseModel):
    model_config = ConfigDict(frozen=True)

    exchange_time_ms: int | None
    max_age_ms: int
    symbols: dict[str, SymbolSignal]


class SignalHistory(BaseModel):
    model_config = ConfigDict(frozen=True)

    symbol: str
    count: int
    signals: list[Signal]


class Ready(BaseModel):
    model_config = ConfigDict(frozen=True)

    status: Literal["ready"]
    checks: dict[str, Any]


DESCRIPTION = """
Live trading signals for Bybit linear perpetuals. One signal per symbol per close of the finest bar,
from an ensemble of ONNX models (or a transparent momentum fallback, which the signal says).

**Freshness** is judged on the exchange clock: a signal is served while it is at most two finest bars
plus a grace old; otherwise `503` with the reason (`warming_up`, `no_signal`, `stale`) and a
`Retry-After`. A signal is never invented.

**WebSocket** `/ws`: send `{"op":"subscribe","symbols":["BTCUSDT"]}`; get an ack, the last signal of
each symbol, then every new one. `{"op":"unsubscribe",...}`, `{"op":"ping"}` → `pong`,
`{"op":"performance","symbols":["BTCUSDT"]}` → a `performance` frame per symbol (its track record). Errors come
as `{"op":"error","error":{...}}` frames and keep the connection. A client whose send queue fills up is
closed with 1013; a missing or bad key closes with 1008.

**Keys** (when configured): `Authorization: Bearer <key>`, or for WebSockets the first message
`{"op":"auth","key":"..."}`. Never in the URL.
"""


# --- per-route responses ------------------------------------------------------------------------

SIGNAL_OK: dict[str, Any] = {
    "model": Signal,
    "description": "The latest signal, exactly as the worker published it.",
    "content": {JSON: {"example": EXAMPLE_SIGNAL}},
}
SIGNAL_UNAVAILABLE: dict[str, Any] = {
    **error_response("No servable signal; see `details.reason`. Sent with `Retry-After`.", UNAVAILABLE_EXAMPLES),
    "headers": {"Retry-After": {"description": "seconds", "schema": {"type": "integer"}}},
}
SIGNALS_OK: dict[str, Any] = {
    "content": {
        JSON: {
            "example": {
                "exchange_time_ms": 1750000080000,
                "max_age_ms": 150000,
                "symbols": {
                    "BTCUSDT": {"available": True, "signal": EXAMPLE_SIGNAL},
                    "ETHUSDT": {
                        "available": False,
                        "reason": "warming_up",
                        "message": "no signal for ETHUSDT yet: the service is warming up",
                        "retry_after_s": 5,
                        "age_ms": None,
                        "last_signal_bar": None,
                        "no_signal": None,
                    },
                },
            }
        }
    }
}
HISTORY_OK: dict[str, Any] = {
    "content": {JSON: {"example": {"symbol": "BTCUSDT", "count": 1, "signals": [EXAMPLE_SIGNAL]}}}
}
_EXAMPLE_FIGURES: dict[str, Any] = {
    "n": 1000,
    "calls": 231,
    "coverage": 0.231,
    "moved": 941,
    "hits": 114,
    "judged": 217,
    "hit_rate": 0.525346,
    "hit_rate_ci": [0.458996, 0.590793],
    "up_rate_moved": 0.49203,
    "brier": 0.249802,
    "brier_skill": 0.000713,
    "log_loss": 0.692748,
    "qlike": 4.61,
    "forecast_edge_bp": 0.212,
    "realized_edge_bp": 0.35,
    "tradeable": 0,
    "return_after_fees": 0.0,
    "fee_per_side": 0.00055,
    "fallback": 0,
    "first_start": 1749940080000,
    "last_start": 1750000020000,
}
EXAMPLE_PERFORMANCE: dict[str, Any] = {
    "symbol": "BTCUSDT",
    "series": "3f2a9c1d0b7e",
    "horizon_minutes": 1,
    "as_of_bar": 1750000020000,
    "windows": {
        "last_1000": {
            "signal": _EXAMPLE_FIGURES,
            "components": [
                {
                    "name": "tcn_1m",
                    "version": "2026.12.02b",
                    "votes": 1000,
                    "judged": 941,
                    "hit_rate": 0.5186,
                    "hit_rate_ci": [0.4866, 0.5504],
                    "brier": 0.24991,
                    "brier_skill": -0.0002,
                    "log_loss": 0.69297,
                }
            ],
            "drift_psi": {
                "z_ret_1": 0.0121,
                "z_ret_15": 0.0094,
                "log_vol_ratio_15_60": 0.0211,
                "range_position_15": 0.0843,
                "log_volume_ratio_60": 0.0312,
            },
        }
    },
    "unscored": {"missing_closing_bar": 1},
    "earlier_series": {},
    "validation": {
        "span": ["2025-06-08T00:00+00:00", "2025-06-15T00:00+00:00"],
        "signal": {"accuracy_moved": 0.5327, "brier_skill": 0.00099, "coverage": 0.2096, "calls": 4224},
        "components": {"tcn_1m": {"accuracy_moved": 0.5114, "brier_skill": 0.00009}},
    },
}
PERFORMANCE_OK: dict[str, Any] = {
    "description": "The symbol's track record (windows abridged here to `last_1000`; `last_100` and `last_24h`"
    " have the same shape). Figures are null where undefined (no call judged yet).",
    "content": {JSON: {"example": EXAMPLE_PERFORMANCE}},
}
PERFORMANCES_OK: dict[str, Any] = {
    "description": "Every configured symbol's track record, as `GET /signal/{symbol}/performance`.",
    "content": {JSON: {"example": {"symbols": {"BTCUSDT": EXAMPLE_PERFORMANCE}}}},
}
STORE_UNAVAILABLE = one_error(
    "The signal store cannot be reached.", "store_unavailable", "the signal store is unavailable"
)
NOT_READY = one_error(
    "Not ready; `details.reasons` says why.",
    "not_ready",
    "not ready: redis_unreachable, signal_feed_down",
    reasons=["redis_unreachable", "signal_feed_down"],
    checks={"redis": "unreachable", "signal_feed": "down"},
)


def keep_example_nulls(app: FastAPI) -> None:
    """FastAPI drops every ``null`` from the OpenAPI document, examples included, which would make
    the documented signal invalid (``fallback_reason`` is required, and null when no fallback):
    put the examples back as written."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        first = app.openapi_schema is None
        schema = generate()
        if first:
            for route in app.routes:
                if not isinstance(route, APIRoute):
                    continue
                for method in route.methods or ():
                    operation = schema["paths"].get(route.path_format, {}).get(method.lower())
                    if operation is None:
                        continue
                    for status, spec in route.responses.items():
                        for media, content in spec.get("content", {}).items():
                            target = operation["responses"].get(str(status), {}).get("content", {}).get(media)
                            if target is None:
                                continue
                            for field in ("example", "examples"):
                                if field in content:
                                    target[field] = content[field]
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
