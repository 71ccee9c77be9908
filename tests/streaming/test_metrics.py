"""Ingestion metrics: the hot per-frame counts reach Prometheus exactly once each."""

from __future__ import annotations

import sys
import threading

from prometheus_client import generate_latest

from streaming.metrics import IngestMetrics

MESSAGES = "candlecast_ingest_messages_total"


def value(metrics: IngestMetrics, kind: str) -> float | None:
    return metrics.registry.get_sample_value(MESSAGES, {"type": kind})


def folded(metrics: IngestMetrics, kind: str) -> float:
    """What the counter itself holds: read without folding (a registry collection folds first)."""
    (family,) = metrics.messages.collect()
    return next(s.value for s in family.samples if s.name == MESSAGES and s.labels == {"type": kind})


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
        sys.setswitchinterval(interval)
        stop.set()
        for t in scrapers:
            if t.is_alive():
                t.join()
    assert value(metrics, "book_delta") == 200_000


class _BumpedOnRead(dict[str, int]):
    """A frame counted between any two reads of a count: what the event loop can do to a scrape."""

    def __getitem__(self, key: str) -> int:
        seen = super().__getitem__(key)
        super().__setitem__(key, seen + 1)
        return seen


def test_a_frame_counted_during_a_fold_is_folded_by_the_next_one() -> None:
    metrics = IngestMetrics()
    metrics.frames.counts = _BumpedOnRead(metrics.frames.counts)
    metrics.frames.counts["delta"] = 5  # __setitem__: no bump
    metrics.frames.fold()  # reads 5 (then 6 are counted)
    assert folded(metrics, "book_delta") == 5
    metrics.frames.fold()  # reads 6: the one counted during the last fold is added, once
    assert folded(metrics, "book_delta") == 6
