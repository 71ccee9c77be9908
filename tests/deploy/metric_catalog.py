"""What the deployment files may refer to: every series name candlecast exports, read from the metric
classes themselves, and the metric names a PromQL expression uses. Dashboards and alert rules are
checked against this, so a renamed metric fails a test instead of silently emptying a panel."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from inference.metrics import WorkerMetrics
from inference.signal import BarRef, Freshness, Signal, StageLatency
from service.metrics import ApiMetrics
from service.metrics import Freshness as ApiFreshness
from streaming.metrics import IngestMetrics

__all__ = ["EXTERNAL_SERIES", "candlecast_series", "metric_names"]

# Series that come from elsewhere: Prometheus itself and the redis exporter in the compose stack.
EXTERNAL_SERIES = frozenset({"up", "redis_up", "ALERTS", "ALERTS_FOR_STATE"})

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "gauge": ("",),
    "info": ("_info",),
    "unknown": ("",),
}


def _any_signal() -> Signal:
    return Signal(
        symbol="BTCUSDT",
        bar=BarRef("1", 0, 60_000),
        produced_at=60_000,
        produced_wall_ms=60_000,
        direction="long",
        score=0.1,
        p_up=0.55,
        confidence=0.1,
        agreement=1.0,
        source="ensemble",
        fallback_reason=None,
        components=(),
        freshness=Freshness({"1": 0}, "READY", 0),
        latency_ms=StageLatency(0, 0, 0, 0, 0, 0),
        horizon="next 1m bar",
    )


def candlecast_series() -> frozenset[str]:
    """Every sample name the ingestor, the worker and the API can expose (all their families)."""
    registry = CollectorRegistry()
    IngestMetrics(registry)
    WorkerMetrics(registry)
    api = ApiMetrics(registry)
    # The scrape-time families appear only when the cache knows something: make it know everything.
    known = ApiFreshness(60_000, {"BTCUSDT": 60_000}, {"BTCUSDT": True}, {"BTCUSDT": _any_signal()})
    api.freshness_source = lambda: known
    names = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return frozenset(names)


# A metric name in PromQL: an identifier not followed by "(" (a function), not a label name inside
# {...} or by(...), and not a keyword. Label matchers and grouping lists are removed first.
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_BRACES = re.compile(r"\{[^}]*\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_RANGES = re.compile(r"\[[^\]]*\]")
_IDENT = re.compile(r"(?<![\w.$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_GROUPING_WORDS = ("by", "without", "on", "ignoring", "group_left", "group_right", "bool")
_KEYWORDS = frozenset((*_GROUPING_WORDS, "and", "or", "unless", "offset", "inf", "nan"))


def metric_names(expr: str) -> set[str]:
    """The metric names ``expr`` selects (``foo`` in ``rate(foo{a="b"}[5m])``)."""
    text = _STRINGS.sub('""', expr)
    text = _BRACES.sub("", text)
    text = _GROUPING.sub("", text)
    text = _RANGES.sub("", text)
    return {m for m in _IDENT.findall(text) if m.lower() not in _KEYWORDS}
