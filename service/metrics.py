"""Prometheus metrics of the API, registered on a registry the owner passes in (no globals).

``/metrics`` exposes the whole registry: pass the one the ingestor's and the worker's metrics live
on (single-process run) and they appear beside these. Routes are labelled by their TEMPLATE
(``/signal/{symbol}``), never the raw path, and symbols only where the set is configured (the
freshness gauges), so cardinality stays bounded whatever clients request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from inference.signal import Signal

__all__ = ["ApiMetrics", "Freshness", "RequestMetricsMiddleware"]

log = logging.getLogger(__name__)

_LATENCY = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
UNMATCHED = "<unmatched>"


@dataclass(frozen=True, slots=True)
class Freshness:
    """What the signal cache knows, read at scrape time."""

    exchange_time_ms: int | None
    signal_close_ms: Mapping[str, int | None]  # configured symbol -> close time of its latest signal
    available: Mapping[str, bool]  # configured symbol -> servable right now
    latest: Mapping[str, Signal]  # configured symbol -> its latest signal (symbols without one are absent)
    max_age_ms: int  # the oldest a signal may be and still be served (exchange clock)


_DIRECTION_VALUE = {"long": 1.0, "flat": 0.0, "short": -1.0}


class _FreshnessCollector(Collector):
    def __init__(self, source: Callable[[], Freshness | None]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        f = self._source()
        if f is None:
            return []
        lag = GaugeMetricFamily(
            "candlecast_api_exchange_clock_lag_seconds",
            "Wall clock minus the newest bar close the API has seen (exchange clock); large in replays.",
        )
        age = GaugeMetricFamily(
            "candlecast_api_signal_age_seconds",
            "Exchange-clock age of each symbol's latest signal: newest bar close seen minus its bar close.",
            labels=["symbol"],
        )
        available = GaugeMetricFamily(
            "candlecast_api_signal_available",
            "1 when GET /signal/{symbol} would answer 200 (a signal within its allowed age).",
            labels=["symbol"],
        )
        if f.exchange_time_ms is not None:
            lag.add_metric([], time.time() - f.exchange_time_ms / 1000.0)
            for symbol, close in f.signal_close_ms.items():
                if close is not None:
                    age.add_metric([symbol], (f.exchange_time_ms - close) / 1000.0)
        for symbol, ok in f.available.items():
            available.add_metric([symbol], 1.0 if ok else 0.0)
        max_age = GaugeMetricFamily(
            "candlecast_api_signal_max_age_seconds",
            "The oldest a signal may be (exchange clock) and still be served: 2 finest bars + grace.",
        )
        max_age.add_metric([], f.max_age_ms / 1000.0)
        return [lag, age, available, max_age, *self._latest_values(f.latest)]

    @staticmethod
    def _latest_values(latest: Mapping[str, Signal]) -> list[Metric]:
        """What each symbol's latest signal says, for dashboards: one series per configured symbol."""
        direction = GaugeMetricFamily(
            "candlecast_api_signal_direction", "Latest signal's direction: 1 long, 0 flat, -1 short.", labels=["symbol"]
        )
        score = GaugeMetricFamily("candlecast_api_signal_score", "Latest signal's score in [-1, 1].", labels=["symbol"])
        confidence = GaugeMetricFamily(
            "candlecast_api_signal_confidence", "Latest signal's confidence (absent if none).", labels=["symbol"]
        )
        agreement = GaugeMetricFamily(
            "candlecast_api_signal_agreement",
            "Latest signal's agreement between components (absent when it has none).",
            labels=["symbol"],
        )
        fallback = GaugeMetricFamily(
            "candlecast_api_signal_fallback", "1 when the latest signal came from the fallback rule.", labels=["symbol"]
        )
        for symbol, signal in latest.items():
            direction.add_metric([symbol], _DIRECTION_VALUE[signal.direction])
            score.add_metric([symbol], signal.score)
            if signal.confidence is not None:
                confidence.add_metric([symbol], signal.confidence)
            if signal.agreement is not None:
                agreement.add_metric([symbol], signal.agreement)
            fallback.add_metric([symbol], 1.0 if signal.source == "fallback" else 0.0)
        return [direction, score, confidence, agreement, fallback]


_TRACK_GAUGES = (
    ("scored", "n", "Served signals scored in the window (each once its horizon passed)."),
    ("judged", "judged", "Long/short calls on bars that moved, in the window: what the hit rate is over."),
    ("hit_rate", "hit_rate", "Share of the judged calls that were right."),
    ("brier_skill", "brier_skill", "Brier skill of p_up against the base rate of the same bars (> 0: skill)."),
    ("return_after_fees", "return_after_fees", "Compounded return trading the window's tradeable calls, after fees."),
)


class _TrackCollector(Collector):
    """The track record per configured symbol (``service.performance``), read at scrape time from the
    summaries the API last computed: the live figures, the validation figures they are judged
    against, and the inputs' drift."""

    def __init__(self, source: Callable[[], Mapping[str, dict[str, Any]]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        try:
            return self._collect(self._source())
        except (TypeError, ValueError, AttributeError, KeyError):  # never the whole scrape for one bad figure
            log.exception("the track-record gauges could not be collected")
            return []

    def _collect(self, books: Mapping[str, dict[str, Any]]) -> list[Metric]:
        families = {
            key: GaugeMetricFamily(f"candlecast_track_{name}", doc, labels=["symbol", "window"])
            for name, key, doc in _TRACK_GAUGES
        }
        upper = GaugeMetricFamily(
            "candlecast_track_hit_rate_upper",
            "Upper end of the hit rate's 95 % Wilson interval (below the validation hit rate: skill lost).",
            labels=["symbol", "window"],
        )
        v_hit = GaugeMetricFamily(
            "candlecast_track_validation_hit_rate",
            "The manifest's validation hit rate for the models that made the symbol's scored signals.",
            labels=["symbol"],
        )
        v_skill = GaugeMetricFamily(
            "candlecast_track_validation_brier_skill",
            "The manifest's validation Brier skill for the models that made the symbol's scored signals.",
            labels=["symbol"],
        )
        drift = GaugeMetricFamily(
            "candlecast_input_psi",
            "Population stability index of an input feature in the window against its training distribution"
            " (> 0.25: inputs unlike training).",
            labels=["symbol", "feature", "window"],
        )
        for symbol, book in books.items():
            for window, part in book.get("windows", {}).items():
                figures = part.get("signal", {})
                for key, family in families.items():
                    if figures.get(key) is not None:
                        family.add_metric([symbol, window], float(figures[key]))
                ci = figures.get("hit_rate_ci")
                if ci and ci[1] is not None:
                    upper.add_metric([symbol, window], float(ci[1]))
                for feature, value in (part.get("drift_psi") or {}).items():
                    if value is not None:
                        drift.add_metric([symbol, feature, window], float(value))
            held = ((book.get("validation") or {}).get("signal")) or {}
            if held.get("accuracy_moved") is not None:
                v_hit.add_metric([symbol], float(held["accuracy_moved"]))
            if held.get("brier_skill") is not None:
                v_skill.add_metric([symbol], float(held["brier_skill"]))
        return [*families.values(), upper, v_hit, v_skill, drift]


class ApiMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.request_seconds = Histogram(
            "candlecast_api_request_duration_seconds",
            "HTTP request handling time, by method, route template and status code.",
            ["method", "route", "status"],
            buckets=_LATENCY,
            registry=r,
        )
        self.ws_clients = Gauge("candlecast_api_ws_clients", "WebSocket clients connected now.", registry=r)
        self.ws_connections = Counter(
            "candlecast_api_ws_connections_total",
            "WebSocket connections ended, by close reason (client, slow_consumer, unauthorized, rate_limited, shutdown,"
            " error).",
            ["reason"],
            registry=r,
        )
        self.ws_messages_sent = Counter(
            "candlecast_api_ws_messages_sent_total",
            "Frames sent to WebSocket clients, by kind (signal, control).",
            ["kind"],
            registry=r,
        )
        self.ws_wire_frames = Counter(
            "candlecast_api_ws_wire_frames_total",
            "Signal frames written straight to the client's socket, serialised once per publish (the other signal"
            " frames in candlecast_api_ws_messages_sent_total went through ASGI: a client whose socket was full, or a"
            " server without the wire path).",
            registry=r,
        )
        self.ws_messages_dropped = Counter(
            "candlecast_api_ws_messages_dropped_total",
            "Frames never delivered because their client's queue was full (the client is then closed).",
            registry=r,
        )
        self.ws_slow_consumer_closes = Counter(
            "candlecast_api_ws_slow_consumer_closes_total",
            "WebSocket clients closed with 1013 because their send queue filled up.",
            registry=r,
        )
        self.ws_error_frames = Counter(
            "candlecast_api_ws_error_frames_total",
            "Error frames sent in answer to client messages, by code.",
            ["code"],
            registry=r,
        )
        self.signal_updates = Counter(
            "candlecast_api_signal_updates_total",
            "New latest signals taken into the in-process cache, by path (pubsub, prime: a re-read of Redis).",
            ["via"],
            registry=r,
        )
        self.feed_reconnects = Counter(
            "candlecast_api_signal_feed_reconnects_total",
            "Times the signal feed (Redis pub/sub) was lost and re-established.",
            registry=r,
        )
        self.feed_up = Gauge(
            "candlecast_api_signal_feed_up", "1 while subscribed to the signal channel and primed.", registry=r
        )
        self.feed_errors = Counter(
            "candlecast_api_signal_feed_errors_total",
            "Signal feed failures, by kind (redis, bad_message, unknown_symbol, unverified: a message that is not"
            " the stored latest signal, e.g. forged with PUBLISH; superseded: a genuine one already overtaken).",
            ["kind"],
            registry=r,
        )
        for reason in ("client", "slow_consumer", "unauthorized", "rate_limited", "shutdown", "error"):
            self.ws_connections.labels(reason)
        for kind in ("signal", "control"):
            self.ws_messages_sent.labels(kind)
        for via in ("pubsub", "prime"):
            self.signal_updates.labels(via)
        for kind in ("redis", "bad_message", "unknown_symbol", "unverified", "superseded", "internal"):
            self.feed_errors.labels(kind)
        self.freshness_source: Callable[[], Freshness | None] = lambda: None
        r.register(_FreshnessCollector(lambda: self.freshness_source()))
        self.performance_source: Callable[[], Mapping[str, dict[str, Any]]] = dict
        r.register(_TrackCollector(lambda: self.performance_source()))


class RequestMetricsMiddleware:
    """Times each HTTP request into ``candlecast_api_request_duration_seconds`` (pure ASGI: no
    per-request task or body buffering, unlike ``BaseHTTPMiddleware``)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app = app
        self.histogram = metrics.request_seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # an exception before the response started is a 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED
            self.histogram.labels(scope["method"], template, str(status)).observe(time.perf_counter() - started)
