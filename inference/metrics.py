"""Prometheus metrics for inference and the worker, registered on a registry the owner passes in.

Labels stay low-cardinality: component and model names come from the manifest (a handful), reasons
are short codes, and no metric is labelled by symbol.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["WorkerMetrics"]

_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
_E2E = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_UNIT = tuple(i / 10 for i in range(1, 11))

# Label values known in advance are created at zero, so dashboards and alerts see 0, not "no data".
SOURCES = ("ensemble", "fallback")
DIRECTIONS = ("long", "short", "flat")
FALLBACK_REASONS = ("models_missing", "all_components_dropped")
EVENT_OUTCOMES = ("published", "audited", "duplicate", "no_signal", "skipped", "retry", "error")
RELOAD_OUTCOMES = ("loaded", "failed")
SCORE_OUTCOMES = ("hit", "miss", "flat", "unmoved", "fallback", "unscored")
DROP_REASONS_SEEDED = ("late", "error")  # per component, once it is loaded (see ``seed_component``)


class WorkerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.inference_seconds = Histogram(
            "candlecast_inference_seconds",
            "ONNX Runtime run time of one session.run (a signal's batch, or several signals' merged), "
            "by model artifact and the provider it ran on.",
            ["model", "provider"],
            buckets=_FAST,
            registry=r,
        )
        self.render_seconds = Histogram(
            "candlecast_render_seconds",
            "Time to build one model input from a window, by renderer (tcn_input, composite).",
            ["renderer"],
            buckets=_FAST,
            registry=r,
        )
        self.signal_compute_seconds = Histogram(
            "candlecast_signal_compute_seconds",
            "Worker time for one signal: read, render, infer, ensemble and publish.",
            buckets=_E2E,
            registry=r,
        )
        self.bar_close_to_publish_seconds = Histogram(
            "candlecast_signal_bar_close_to_publish_seconds",
            "End-to-end latency: wall-clock publish time minus the bar's exchange close time (live only).",
            buckets=_E2E,
            registry=r,
        )
        self.signals = Counter(
            "candlecast_signals_total",
            "Signals published (first time for their symbol and bar), by source and direction.",
            ["source", "direction"],
            registry=r,
        )
        self.fallbacks = Counter(
            "candlecast_fallbacks_total",
            "Signals made by the momentum rule, by reason (models_missing, all_components_dropped).",
            ["reason"],
            registry=r,
        )
        self.no_signals = Counter(
            "candlecast_no_signals_total",
            "Bars that got no signal because even the fallback input was not servable, by reason.",
            ["reason"],
            registry=r,
        )
        self.components_dropped = Counter(
            "candlecast_components_dropped_total",
            "Component votes left out of a signal, by component and reason (data check code, late, error, ...).",
            ["component", "reason"],
            registry=r,
        )
        self.agreement = Histogram(
            "candlecast_ensemble_agreement",
            "Weighted share of voting components that lean the way the ensemble does.",
            buckets=_UNIT,
            registry=r,
        )
        self.confidence = Histogram(
            "candlecast_ensemble_confidence", "|score| of ensemble signals.", buckets=_UNIT, registry=r
        )
        self.provider_in_use = Gauge(
            "candlecast_inference_provider",
            "1 for the ONNX Runtime provider each loaded component's session is bound to.",
            ["component", "provider"],
            registry=r,
        )
        self.components_enabled = Gauge(
            "candlecast_components_enabled",
            "1 when a manifest component loaded and warmed up, 0 when it is disabled.",
            ["component"],
            registry=r,
        )
        self.model_reloads = Counter(
            "candlecast_model_reloads_total",
            "Manifest loads, by outcome (loaded, failed: the previous models stay in service).",
            ["outcome"],
            registry=r,
        )
        self.events = Counter(
            "candlecast_worker_events_total",
            "Bar-closed events handled, by outcome (published, audited, duplicate, no_signal, skipped, retry, error).",
            ["outcome"],
            registry=r,
        )
        self.events_claimed = Counter(
            "candlecast_worker_events_claimed_total",
            "Events taken over from a consumer idle longer than the claim timeout.",
            registry=r,
        )
        self.bars_swept = Counter(
            "candlecast_worker_bars_swept_total",
            "Bars found without a signal behind a newer one (an event or a signal lost, e.g. with a failed-over"
            " Redis master) and handled again.",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "candlecast_worker_consumer_lag_events",
            "Events in the stream not yet delivered to the consumer group (XINFO GROUPS lag).",
            registry=r,
        )
        self.pending = Gauge(
            "candlecast_worker_pending_events",
            "Events delivered to the consumer group but not acknowledged yet (all consumers).",
            registry=r,
        )
        self.store_errors = Counter(
            "candlecast_worker_store_errors_total",
            "Redis operations of the worker that failed (the event stays pending and is retried).",
            registry=r,
        )
        self.scored = Counter(
            "candlecast_signals_scored_total",
            "Served signals scored once their horizon passed, by outcome (hit, miss, flat: no call, unmoved,"
            " fallback: the rule's signal, unscored: a bar of its horizon missing).",
            ["outcome"],
            registry=r,
        )
        self.scoring_errors = Counter(
            "candlecast_scoring_errors_total",
            "Scoring steps that failed on a Redis error (the signals stay audited; the next close retries).",
            registry=r,
        )
        for outcome in SCORE_OUTCOMES:
            self.scored.labels(outcome)
        for source in SOURCES:
            for direction in DIRECTIONS:
                self.signals.labels(source, direction)
        for reason in FALLBACK_REASONS:
            self.fallbacks.labels(reason)
        for outcome in EVENT_OUTCOMES:
            self.events.labels(outcome)
        for outcome in RELOAD_OUTCOMES:
            self.model_reloads.labels(outcome)

    def seed_component(self, component: str) -> None:
        """Create a component's main drop counters at zero (component names come from the manifest)."""
        for reason in DROP_REASONS_SEEDED:
            self.components_dropped.labels(component, reason)
