"""What the deployment files may refer to: every series name candlecast exports, read from the metric
classes themselves, and the metric names a PromQL expression uses. Dashboards and alert rules are
checked against this, so a renamed metric fails a test instead of silently emptying a panel."""

from __future__ import annotations

import re

from prometheus_client import CollectorRegistry

from inference.metrics import WorkerMetrics
from service.metrics import ApiMetrics
from service.metrics import Freshness as ApiFreshness
from streaming.metrics import IngestMetrics
from tests.service.kit import make_signal

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


def candlecast_series() -> frozenset[str]:
    """Every sample name the ingestor, the worker and the API can expose (all their families)."""
    registry = CollectorRegistry()
    IngestMetrics(registry)
    WorkerMetrics(registry)
    api = ApiMetrics(registry)
    # The scrape-time families appear only when the cache knows something: make it know everything.
    known = ApiFreshness(60_000, {"BTCUSDT": 60_000}, {"BTCUSDT": True}, {"BTCUSDT": make_signal(0)}, 120_000)
    api.freshness_source = lambda: known
    names: set[str] = set()
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
