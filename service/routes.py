"""The API's routes: signals (``/signal/{symbol}``, ``/signals``, history, performance, ``/ws``) and operations
(``/healthz``, ``/readyz``, ``/metrics``).

Handlers only translate: they read what the lifespan built through ``state: State``, ask the signal
cache or store, and answer in the documented shapes of :mod:`service.schemas`. Servability is the
cache's decision (:mod:`service.signal_cache`), readiness is :mod:`service.readiness`'s.
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, Path, Query, WebSocket
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import Response

from service.auth import key_in_url, require_key
from service.errors import SignalUnavailable, UnknownSymbol
from service.readiness import readiness
from service.schemas import (
    HISTORY_OK,
    INVALID,
    JSON,
    NOT_READY,
    PERFORMANCE_OK,
    PERFORMANCES_OK,
    SIGNAL_OK,
    SIGNAL_UNAVAILABLE,
    SIGNALS_OK,
    STORE_UNAVAILABLE,
    UNAUTHORIZED,
    UNKNOWN_SYMBOL,
    Ready,
    SignalHistory,
    SignalsOverview,
)
from service.signal_cache import CachedSignal, Unavailable
from service.state import ApiState, State

__all__ = ["HISTORY_MAX", "add_ops_routes", "add_signal_routes"]

HISTORY_MAX = 1000


def _symbol(state: ApiState, symbol: str) -> str:
    name = state.cache.normalise(symbol)
    if name is None:
        shown = symbol.strip().upper()[:64]
        raise UnknownSymbol(
            f"{shown} is not served here", details={"symbol": shown, "symbols": list(state.cache.symbols)}
        )
    return name


def _unavailable(answer: Unavailable) -> SignalUnavailable:
    return SignalUnavailable(answer.message, details=answer.details(), retry_after_s=answer.retry_after_s)


SymbolPath = Annotated[
    str, Path(description="A configured symbol, any case (`btcusdt` = `BTCUSDT`).", max_length=64, examples=["BTCUSDT"])
]


def add_signal_routes(app: FastAPI, keys_enabled: bool) -> None:
    # Without keys, no auth dependency at all: nothing to pay per request, nothing claimed in OpenAPI.
    keyed = [Depends(require_key)] if keys_enabled else []
    unauthorized: dict[int | str, dict[str, Any]] = {401: UNAUTHORIZED} if keys_enabled else {}

    @app.get(
        "/signal/{symbol}",
        tags=["signals"],
        summary="The latest signal of a symbol",
        dependencies=keyed,
        responses={
            200: SIGNAL_OK,
            **unauthorized,
            404: UNKNOWN_SYMBOL,
            503: SIGNAL_UNAVAILABLE,
        },
    )
    async def get_signal(symbol: SymbolPath, state: State) -> Response:
        """Served from memory (no Redis round trip). 503 when there is no signal yet, when the newest
        bars got none (the worker's reason is in `details.no_signal`), or when the latest is older
        than two finest bars plus a grace on the exchange clock."""
        answer = state.cache.status(_symbol(state, symbol))
        if isinstance(answer, Unavailable):
            raise _unavailable(answer)
        return Response(answer.raw, media_type=JSON, headers={"Cache-Control": "no-store"})

    @app.get(
        "/signals",
        tags=["signals"],
        summary="Every configured symbol: its signal, or why there is none",
        dependencies=keyed,
        response_model=SignalsOverview,
        responses={
            200: SIGNALS_OK,
            **unauthorized,
        },
    )
    async def get_signals(state: State) -> Response:
        cache = state.cache
        symbols: dict[str, Any] = {}
        for s in cache.symbols:
            answer = cache.status(s)
            if isinstance(answer, CachedSignal):
                symbols[s] = {"available": True, "signal": orjson.Fragment(answer.raw)}
            else:
                d = answer.details()
                symbols[s] = {
                    "available": False,
                    "reason": answer.reason,
                    "message": answer.message,
                    "retry_after_s": answer.retry_after_s,
                    "age_ms": d["age_ms"],
                    "last_signal_bar": d["last_signal_bar"],
                    "no_signal": d["no_signal"],
                }
        body = {"exchange_time_ms": cache.now_ms(), "max_age_ms": cache.max_age_ms, "symbols": symbols}
        return Response(orjson.dumps(body), media_type=JSON, headers={"Cache-Control": "no-store"})

    @app.get(
        "/signal/{symbol}/history",
        tags=["signals"],
        summary="Past signals of a symbol, newest first (the audit stream)",
        dependencies=keyed,
        response_model=SignalHistory,
        responses={
            200: HISTORY_OK,
            **unauthorized,
            404: UNKNOWN_SYMBOL,
            422: INVALID,
            503: STORE_UNAVAILABLE,
        },
    )
    async def get_history(
        symbol: SymbolPath,
        state: State,
        limit: Annotated[int, Query(ge=1, le=HISTORY_MAX, description="how many, newest first")] = 100,
    ) -> Response:
        name = _symbol(state, symbol)
        signals = await state.store.history(name, limit)
        body = {"symbol": name, "count": len(signals), "signals": signals}
        return Response(orjson.dumps(body), media_type=JSON)

    @app.get(
        "/signal/{symbol}/performance",
        tags=["signals"],
        summary="How right this symbol's signal has been: its live track record",
        dependencies=keyed,
        responses={
            200: PERFORMANCE_OK,
            **unauthorized,
            404: UNKNOWN_SYMBOL,
            503: STORE_UNAVAILABLE,
        },
    )
    async def get_performance(
        symbol: SymbolPath,
        state: State,
        since: Annotated[
            int | None, Query(ge=0, description="with `until`: a `span` window of the bars from this start (ms)")
        ] = None,
        until: Annotated[int | None, Query(ge=0, description="the last bar start (ms) of the `span` window")] = None,
    ) -> Response:
        """Every served signal is scored once its horizon has passed, against the realized return.
        Over the last 100 and 1,000 scored signals and the last 24 hours of the current models
        (`series`: a model release starts a new one): n, coverage, hit rate on moved bars with its 95 %
        interval, Brier and Brier skill, log loss, volatility QLIKE, the edge forecast and realized,
        the return after fees of the `tradeable` calls; the same per component, the inputs' drift
        (PSI against training), the manifest's validation figures to compare with, and how many
        signals were left unscored and why (a hole in the bars of their horizon). `since`/`until`
        add a `span` window of just those bars (of the scores kept: about the last 2,000)."""
        name = _symbol(state, symbol)
        span = (since, until) if since is not None or until is not None else None
        body = await state.performance.of(name, span)
        return Response(orjson.dumps(body), media_type=JSON, headers={"Cache-Control": "no-store"})

    @app.get(
        "/performance",
        tags=["signals"],
        summary="The live track record of every configured symbol",
        dependencies=keyed,
        responses={200: PERFORMANCES_OK, **unauthorized, 503: STORE_UNAVAILABLE},
    )
    async def get_performances(state: State) -> Response:
        body = {"symbols": await state.performance.all()}
        return Response(orjson.dumps(body), media_type=JSON, headers={"Cache-Control": "no-store"})

    @app.websocket("/ws")
    async def ws_endpoint(websocket: WebSocket, state: State) -> None:
        authorization = websocket.headers.get("authorization")
        bearer = None
        if authorization is not None:
            scheme, _, value = authorization.partition(" ")
            bearer = value.strip() if scheme.lower() == "bearer" else ""
        url_key = state.keys.enabled and key_in_url(websocket.query_params.keys())
        await state.hub.serve(websocket, bearer, key_in_url=url_key)


def add_ops_routes(app: FastAPI, *, metrics_route: bool, keys_enabled: bool = False) -> None:
    @app.get("/healthz", tags=["operations"], summary="The process is alive")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.head("/healthz", include_in_schema=False)  # load balancers probe with HEAD
    async def healthz_head() -> Response:
        return Response(status_code=200)

    @app.get(
        "/readyz",
        tags=["operations"],
        summary="Ready to serve: Redis reachable, data flowing, signals fresh",
        response_model=Ready,
        responses={503: NOT_READY},
    )
    async def readyz(state: State) -> dict[str, Any]:
        """Reasons: `redis_unreachable`, `signal_feed_down` (not subscribed and primed), `no_data`
        (no bar seen yet), `data_behind_wall_clock` (newest bar close older than
        CANDLECAST_API_READY_MAX_LAG_S by the wall clock), `data_stalled` (the exchange clock has not
        moved for CANDLECAST_API_READY_MAX_STALL_S), `no_fresh_signals` (no symbol servable). Symbols
        without a servable signal are listed in `checks.signals.unavailable` either way: one symbol
        warming up does not take the replica out of a load balancer."""
        return await readiness(state)

    if not metrics_route:
        return  # served on their own port (service.compose.serve_metrics), not beside the signals

    # Beside the signals, the metrics carry every symbol's latest direction and score: with API keys
    # set they need one too (Prometheus sends it with `authorization: {credentials: KEY}`).
    @app.get(
        "/metrics",
        tags=["operations"],
        summary="Prometheus metrics (an API key when keys are set; none on a separate metrics port)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
        dependencies=[Depends(require_key)] if keys_enabled else [],
    )
    async def prometheus_metrics(state: State) -> Response:
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)
