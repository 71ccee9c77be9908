"""Input drift: a few features' population stability index (PSI) against their training distribution.

The features are five of feature set r1 (:mod:`inference.linear_features`), computed from the 241 1m
bars that close at a signal's bar — the same numbers the linear component reads — so what is
watched is what the models were fed:

* ``z_ret_1``, ``z_ret_15``: the last 1 and 15 bars' return in units of the last hour's volatility;
* ``log_vol_ratio_15_60``: the volatility regime (the last 15 bars' over the last hour's);
* ``range_position_15``: where the close sits in the last 15 bars' high-low range;
* ``log_volume_ratio_60``: the last bar's volume over the hour's mean.

All five are scale-free and read at most the last hour, so a symbol's calm week is not "drift" and
1,000 calls hold many independent values; the level of volatility, and ratios over four hours, are
left out (they move with every regime, and 1,000 minutes hold only a few independent four-hour values:
their PSI would be mostly sampling noise). A symbol is compared with its own training
distribution where the manifest has one (``symbols``), else with the pooled one.

:func:`input_statistics` takes each feature's deciles on the training span (``models`` writes them
into the manifest's ``drift`` section at export); :func:`psi` compares the live values' shares of
those ten bins with the training shares: ``Σ (a - e)·ln(a / e)``, shares floored at 1e-4. By the usual
reading, under 0.1 is stable, 0.1 to 0.25 a moderate shift and over 0.25 a distribution the models were
not trained on (the ``InputDrift`` alert's line).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.errors import InferenceError
from inference.linear_features import LINEAR_BARS, LINEAR_FEATURES, linear_input

__all__ = [
    "DRIFT_BINS",
    "DRIFT_FEATURES",
    "DriftStats",
    "drift_inputs",
    "input_statistics",
    "psi",
    "reference_for",
    "valid_drift_stats",
]

DRIFT_FEATURES: tuple[str, ...] = (
    "z_ret_1",
    "z_ret_15",
    "log_vol_ratio_15_60",
    "range_position_15",
    "log_volume_ratio_60",
)
DRIFT_BINS = 10
MIN_SAMPLES = 100  # fewer live values give no PSI: ten bins of a handful each are noise
_FLOOR = 1e-4
_INDEX = tuple(LINEAR_FEATURES.index(f) for f in DRIFT_FEATURES)

# the manifest's ``drift`` section: {"features": {name: {edges, expected}}, "symbols": {SYM: {"features": ...}}, ...}
DriftStats = Mapping[str, Any]


def _finite_numbers(values: Any) -> bool:
    return isinstance(values, list) and all(
        isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in values
    )


def _valid_features(features: Any) -> bool:
    return isinstance(features, Mapping) and all(
        isinstance(f, Mapping)
        and _finite_numbers(f.get("edges"))
        and _finite_numbers(f.get("expected"))
        and len(f["expected"]) == len(f["edges"]) + 1
        for f in features.values()
    )


def valid_drift_stats(raw: Any) -> dict[str, Any] | None:
    """``raw`` as a drift section when it is well formed (pooled ``features``, and each of ``symbols``
    with its own), else None: whoever reads one from a file or from Redis checks it here first."""
    if not isinstance(raw, Mapping) or not _valid_features(raw.get("features")):
        return None
    symbols = raw.get("symbols", {})
    if not isinstance(symbols, Mapping) or not all(
        isinstance(v, Mapping) and _valid_features(v.get("features")) for v in symbols.values()
    ):
        return None
    return dict(raw)


def reference_for(stats: DriftStats | None, symbol: str) -> Mapping[str, Any] | None:
    """The features' training distribution to compare ``symbol`` with: its own, else the pooled one
    (``stats`` as :func:`valid_drift_stats` passed it)."""
    if not stats:
        return None
    own = stats.get("symbols", {}).get(symbol)
    features = own["features"] if own is not None else stats.get("features")
    return features if isinstance(features, Mapping) else None


def drift_inputs(ohlcv: npt.NDArray[Any]) -> tuple[float, ...]:
    """The drift features at the bar closing ``ohlcv`` (its last ``LINEAR_BARS`` rows are read); ``()``
    when they cannot be computed (a short or bad window): such a bar adds nothing to the PSI."""
    if len(ohlcv) < LINEAR_BARS:
        return ()
    try:
        x = linear_input(ohlcv)
    except (InferenceError, ValueError, ArithmeticError):
        return ()
    return tuple(round(float(x[i]), 5) for i in _INDEX)


def input_statistics(values: npt.NDArray[np.float64], *, span: Sequence[str], samples: int) -> dict[str, Any]:
    """The manifest's ``drift`` section from training rows ``values`` (``(n, len(DRIFT_FEATURES))``):
    each feature's nine inner decile edges and the training share of each of the ten bins."""
    if values.ndim != 2 or values.shape[1] != len(DRIFT_FEATURES) or len(values) < MIN_SAMPLES:
        raise ValueError(f"need {MIN_SAMPLES}+ rows of {len(DRIFT_FEATURES)} drift features, got {values.shape}")
    out: dict[str, Any] = {}
    for j, name in enumerate(DRIFT_FEATURES):
        col = values[:, j][np.isfinite(values[:, j])]
        edges = np.unique(np.quantile(col, np.linspace(0, 1, DRIFT_BINS + 1)[1:-1]))
        counts = np.bincount(np.searchsorted(edges, col, side="right"), minlength=len(edges) + 1)
        out[name] = {
            "edges": [round(float(e), 6) for e in edges],
            "expected": [round(float(c) / len(col), 6) for c in counts],
        }
    return {"set": "r1", "features": out, "span": list(span), "samples": int(samples), "bins": DRIFT_BINS}


def psi(values: Sequence[float], edges: Sequence[float], expected: Sequence[float]) -> float | None:
    """The population stability index of ``values`` over the bins ``edges`` bound, against the training
    shares ``expected``; ``None`` under :data:`MIN_SAMPLES` values."""
    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if len(v) < MIN_SAMPLES or len(expected) != len(edges) + 1:
        return None
    counts = np.bincount(np.searchsorted(np.asarray(edges, dtype=np.float64), v, side="right"), minlength=len(expected))
    a = np.maximum(counts / len(v), _FLOOR)
    e = np.maximum(np.asarray(expected, dtype=np.float64), _FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))
