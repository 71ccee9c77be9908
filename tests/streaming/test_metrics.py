"""Ingestion metrics: the hot per-frame counts reach Prometheus exactly once each."""

from __future__ import annotations

import sys
import threading

from prometheus_client import generate_latest

from streaming.metrics import IngestMetrics

MESSAGES = "candlecast_ingest_messages_total"


def value(metrics: IngestMetrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value(MESSAGES, {"type": kind})


def test_hot_counts_are_folded_into_the_counter_once_per_collection() -> None:
    metrics = IngestMetrics()
    counts = metrics.frames.counts
    assert value(metrics, "book_delta") == 0 and value(metrics, "kline") == 0  # series exist at zero
    counts["delta"] += 3
    counts["kline"] += 1
    assert value(metrics, "book_delta") == 3
    assert value(metrics, "book_delta") == 3  # a second collection adds nothing new
    counts["delta"] += 2
    metrics.messages.labels(type="book_delta").inc(10)  # a direct increment adds up with the folded ones
    assert value(metrics, "book_delta") == 15
    assert value(metrics, "kline") == 1 and value(metrics, "book_snapshot") == 0
    assert f'{MESSAGES}{{type="book_delta"}} 15.0' in generate_latest(metrics.registry).decode()


def test_overlapping_scrapes_neither_lose_nor_double_a_count() -> None:
    metrics = IngestMetrics()
    counts = metrics.frames.counts
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            metrics.registry.collect()
            list(metrics.registry.collect())

    scrapers = [threading.Thread(target=scrape) for _ in range(3)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can: races show up
    try:
        for t in scrapers:
            t.start()
        for _ in range(200_000):
            counts["delta"] += 1
    finally:
        stop.set()
        for t in scrapers:
            t.join()
        sys.setswitchinterval(interval)
    assert value(metrics, "book_delta") == 200_000
