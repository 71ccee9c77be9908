"""Prometheus metrics for ingestion, registered on a registry the owner passes in (no globals)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["IngestMetrics"]

# Label values known in advance are created at zero, so a dashboard or alert sees a flat 0 rather than
# no series at all until the first event (https://prometheus.io/docs/practices/instrumentation/).
MESSAGE_TYPES = (
    "kline",
    "book_snapshot",
    "book_delta",
    "ack",
    "pong",
    "malformed",
    "future",
    "unknown_topic",
    "handler_error",
)
RECONNECT_REASONS = (
    "connect_failed",
    "server_closed",
    "connection_lost",
    "silence",
    "pong_timeout",
    "ack_timeout",
    "resync_storm",
    "resync_failed",
)
RESYNC_REASONS = ("u_gap", "empty_side", "crossed")
GAP_TRIGGERS = ("stream", "overdue", "startup", "reconnect", "store_recovered", "revised", "corrupt")
REST_OUTCOMES = ("ok", "banned", "retryable", "rejected")


class _LastMessageAge(Collector):
    def __init__(self, source: Callable[[], Mapping[str, float]]) -> None:
        self._source = source

    def collect(self) -> Iterable[Metric]:
        age = GaugeMetricFamily(
            "candlecast_ingest_last_message_age_seconds",
            "Seconds since the last frame on each topic (since the ingestor started, across reconnects).",
            labels=["topic"],
        )
        now = time.monotonic()
        for topic, at in self._source().items():
            age.add_metric([topic], now - at)
        return [age]


class HotCounts(Collector):
    """The children of a labelled counter that every frame bumps, counted as plain integers and
    folded into the counter at each collection (a scrape, a test's ``get_sample_value``).

    A Prometheus child's ``inc`` takes a lock: on the receive path, once a frame, that cost as much
    as applying the frame to its order book. Here the event loop, the one writer, adds to ``counts``
    (``counts[key] += 1``) and a collection, under its own lock (scrapes may overlap), adds what is
    new since the last one to the child; an int read is atomic, so nothing is lost or counted twice.
    """

    def __init__(self, counter: Counter, labels: Mapping[str, str]) -> None:
        self.counter = counter
        self.counts = dict.fromkeys(labels, 0)  # hot-path key -> frames so far
        self._children = {key: counter.labels(value) for key, value in labels.items()}
        self._folded = dict.fromkeys(labels, 0)
        self._lock = threading.Lock()

    def fold(self) -> None:
        with self._lock:
            for key, child in self._children.items():
                seen = self.counts[key]
                if seen > self._folded[key]:
                    child.inc(seen - self._folded[key])
                    self._folded[key] = seen

    def describe(self) -> Iterable[Metric]:
        return self.counter.describe()

    def collect(self) -> Iterable[Metric]:
        self.fold()
        return self.counter.collect()


class IngestMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "candlecast_ingest_messages_total",
            "WebSocket frames received, by decoded type (kline, book_snapshot, book_delta, ack, pong, "
            "malformed, unknown_topic).",
            ["type"],
            registry=None,  # registered through ``frames``, which folds the hot counts in first
        )
        # Data frames by kind, bumped once a frame by the ingestor (keys: a book update's ``kind``, "kline").
        self.frames = HotCounts(self.messages, {"snapshot": "book_snapshot", "delta": "book_delta", "kline": "kline"})
        r.register(self.frames)
        self.reconnects = Counter(
            "candlecast_ingest_reconnects_total", "WebSocket reconnects, by reason.", ["reason"], registry=r
        )
        self.book_resyncs = Counter(
            "candlecast_ingest_book_resyncs_total", "Order-book resyncs, by reason.", ["reason"], registry=r
        )
        self.deltas_dropped = Counter(
            "candlecast_ingest_book_deltas_dropped_total",
            "Order-book deltas dropped because the book had no valid snapshot yet.",
            registry=r,
        )
        self.bars_backfilled = Counter(
            "candlecast_ingest_bars_backfilled_total", "Closed bars added to windows from REST.", registry=r
        )
        self.gaps_found = Counter(
            "candlecast_ingest_gaps_found_total",
            "Kline window holes detected, by trigger (stream, startup, reconnect, store_recovered).",
            ["trigger"],
            registry=r,
        )
        self.ack_failures = Counter(
            "candlecast_ingest_subscribe_failures_total",
            "Subscribe/unsubscribe requests answered success=false or not answered in time.",
            ["reason"],
            registry=r,
        )
        self.rest_requests = Counter(
            "candlecast_ingest_rest_requests_total",
            "Bybit REST kline requests, by outcome (ok, banned, retryable, rejected).",
            ["outcome"],
            registry=r,
        )
        self.store_errors = Counter(
            "candlecast_ingest_store_errors_total", "Failed flushes to the window store.", registry=r
        )
        self.store_up = Gauge(
            "candlecast_ingest_store_up", "1 when the last flush to the window store succeeded.", registry=r
        )
        self.bars_revised = Counter(
            "candlecast_ingest_bars_revised_total",
            "Closed bars whose values changed on a later write (REST and WS disagreed).",
            registry=r,
        )
        self.ingest_lag = Histogram(
            "candlecast_ingest_lag_seconds",
            "Local receive time minus the frame's exchange timestamp (meaningful only live, not in replay).",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=r,
        )
        # Read at scrape time, so the age keeps growing while a connection is down (a gauge set by the
        # connection's watchdog would freeze at its last value exactly then).
        self.last_frame_source: Callable[[], Mapping[str, float]] = dict
        r.register(_LastMessageAge(lambda: self.last_frame_source()))
        self.book_ready = Gauge(
            "candlecast_ingest_book_ready", "1 while a symbol's order book is READY.", ["symbol"], registry=r
        )
        self.connections = Gauge(
            "candlecast_ingest_connections", "WebSocket connections currently subscribed.", registry=r
        )
        self.windows_incomplete = Gauge(
            "candlecast_ingest_windows_incomplete",
            "Kline windows, by interval, whose newest bar is behind the last closed bar on the exchange clock "
            "or that wait for a REST backfill of a hole.",
            ["interval"],
            registry=r,
        )
        for counter, label, values in (
            (self.messages, "type", MESSAGE_TYPES),
            (self.reconnects, "reason", RECONNECT_REASONS),
            (self.book_resyncs, "reason", RESYNC_REASONS),
            (self.gaps_found, "trigger", GAP_TRIGGERS),
            (self.rest_requests, "outcome", REST_OUTCOMES),
        ):
            for value in values:
                counter.labels(**{label: value})
