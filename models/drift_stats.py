"""The manifest's ``drift`` section: the drift features' distribution on the span the ensemble was fitted on.

Serving watches five of the linear features (:mod:`inference.drift`) at every scored signal and
compares their live distribution with this one by PSI. The reference is the bars the stacker and its
threshold were fitted and calibrated on — the Bybit linear 1m files over the validation span — since
that is the market the served probabilities were fitted to (the components' pre-training spans mix
Binance spot and perpetuals from 2023). Each symbol gets its own reference (``symbols``: a coin with a
coarse tick has many unchanged closes, which pooled statistics would call drift), and the pooled one
serves the symbols the files do not cover. ``candlecast stack`` writes it with the ensemble;
``candlecast stack --drift-only`` recomputes just this section.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.drift import DRIFT_FEATURES, drift_inputs, input_statistics
from inference.linear_features import LINEAR_BARS
from inference.manifest import Manifest
from models.data import horizon_ends, load_series
from models.linear import iso_minute

__all__ = ["drift_statistics", "write_drift_statistics"]

log = logging.getLogger(__name__)


def drift_statistics(files: Sequence[Path], start_ms: int, end_ms: int, *, every: int = 2) -> dict[str, Any]:
    """The drift section from every ``every``-th 1m bar of ``files`` in ``[start_ms, end_ms)`` (with
    its 241 bars of history inside a contiguous run)."""
    span = [iso_minute(start_ms), iso_minute(end_ms)]
    by_symbol: dict[str, npt.NDArray[np.float64]] = {}
    for path in files:
        s = load_series(path)
        ends = horizon_ends(s, LINEAR_BARS, 0)
        ends = ends[(s.start_ms[ends] >= start_ms) & (s.start_ms[ends] < end_ms)][::every]
        rows = [drift_inputs(s.ohlcv[t - LINEAR_BARS + 1 : t + 1]) for t in ends.tolist()]
        rows = [x for x in rows if len(x) == len(DRIFT_FEATURES)]
        by_symbol[s.symbol] = np.asarray(rows, dtype=np.float64).reshape(-1, len(DRIFT_FEATURES))
    pooled = np.concatenate(list(by_symbol.values())) if by_symbol else np.zeros((0, len(DRIFT_FEATURES)))
    out = input_statistics(pooled, span=span, samples=len(pooled))
    out["series"] = [p.name.removesuffix(".csv.gz") for p in files]
    out["symbols"] = {
        symbol: {"features": input_statistics(v, span=span, samples=len(v))["features"], "samples": len(v)}
        for symbol, v in sorted(by_symbol.items())
    }
    return out


def write_drift_statistics(manifest_path: Path, files: Sequence[Path], start_ms: int, end_ms: int) -> dict[str, Any]:
    """Compute the section and write it into the manifest (nothing else in it changes)."""
    section = drift_statistics(files, start_ms, end_ms)
    replace(Manifest.load(manifest_path), drift=section).save(manifest_path)
    log.info("drift statistics of %d bars written to %s", section["samples"], manifest_path)
    return section
