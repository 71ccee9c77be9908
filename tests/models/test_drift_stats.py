"""The manifest's drift section: written from the bars the ensemble was fitted on, one reference per
symbol, read back by serving; a malformed section is dropped (drift unwatched), the models still load."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from inference.drift import DRIFT_FEATURES, drift_inputs, psi, reference_for
from inference.manifest import Manifest
from models.data import load_series
from models.drift_stats import drift_statistics, write_drift_statistics
from tests.conftest import ARTIFACTS, DATA_1M

DAY = 86_400_000


def test_the_shipped_manifest_has_a_reference_per_bybit_symbol() -> None:
    drift = Manifest.load(ARTIFACTS / "manifest.json").drift
    assert drift is not None
    assert set(drift["features"]) == set(DRIFT_FEATURES)
    assert set(drift["symbols"]) == {"BNBUSDT", "BTCUSDT", "DOGEUSDT", "ETHUSDT", "SOLUSDT"}
    assert drift["span"] == ["2025-06-01T00:00+00:00", "2025-06-15T00:00+00:00"]  # the stacker's validation span
    assert reference_for(drift, "BTCUSDT") == drift["symbols"]["BTCUSDT"]["features"]
    assert reference_for(drift, "XRPUSDT") == drift["features"]  # no reference of its own: the pooled one


def test_statistics_of_a_span_and_a_symbol_compared_with_itself(tmp_path: Path) -> None:
    path = DATA_1M / "bybit_linear_ETHUSDT_1m.csv.gz"
    s = load_series(path)
    start = int(s.start_ms[0]) + 2 * DAY
    stats = drift_statistics([path], start, start + DAY, every=1)
    assert stats["samples"] == stats["symbols"]["ETHUSDT"]["samples"] > 1000
    ref = reference_for(stats, "ETHUSDT")
    assert ref is not None
    # the same day's own values are, by construction, on the reference's deciles
    i = int(np.searchsorted(s.start_ms, start))
    own = np.array([drift_inputs(s.ohlcv[t - 240 : t + 1]) for t in range(i, i + 1000)])
    values = [psi(own[:, j].tolist(), ref[f]["edges"], ref[f]["expected"]) for j, f in enumerate(DRIFT_FEATURES)]
    assert all(v is not None and v < 0.1 for v in values), values

    manifest = tmp_path / "manifest.json"
    manifest.write_text((ARTIFACTS / "manifest.json").read_text())
    write_drift_statistics(manifest, [path], start, start + DAY)
    before = json.loads((ARTIFACTS / "manifest.json").read_text())
    after = json.loads(manifest.read_text())
    assert after.pop("drift")["symbols"].keys() == {"ETHUSDT"}
    before.pop("drift", None)
    assert after == before  # nothing else in the manifest changed


@pytest.mark.parametrize(
    "section",
    [
        {"features": {"z_ret_1": {"edges": [0.0], "expected": [1.0]}}},  # one share short
        {"features": {"z_ret_1": {"edges": [0.0], "expected": [0.5, "x"]}}},
        {"features": "none"},
        [1, 2],
        {"features": {"z_ret_1": {"edges": [0.0], "expected": [0.5, 0.5]}}, "symbols": [1]},
        {"features": {"z_ret_1": {"edges": [0.0], "expected": [0.5, 0.5]}}, "symbols": {"BTCUSDT": {"features": 1}}},
        {"features": {"z_ret_1": {"edges": [True], "expected": [0.5, 0.5]}}},
    ],
)
def test_a_malformed_drift_section_is_dropped_not_fatal(
    tmp_path: Path, section: object, caplog: pytest.LogCaptureFixture
) -> None:
    body = json.loads((ARTIFACTS / "manifest.json").read_text()) | {"drift": section}
    path = tmp_path / "manifest.json"
    path.write_text(json.dumps(body))
    with caplog.at_level(logging.WARNING, logger="inference.manifest"):
        manifest = Manifest.load(path)
    assert manifest.drift is None and len(manifest.components) == len(body["components"])
    assert "drift section is malformed" in caplog.text
