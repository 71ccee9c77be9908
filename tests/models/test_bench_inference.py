"""``candlecast bench inference`` runs end to end on the shipped models (a smoke test, not a timing)."""

from __future__ import annotations

import pytest

from models.bench_inference import bench_inference
from tests.conftest import ARTIFACTS, DATA_1M

pytestmark = pytest.mark.timeout(180)


def test_bench_inference_reports_every_section() -> None:
    result = bench_inference(ARTIFACTS, DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz", symbols=2, repeats=5)
    assert set(result["ort_vs_torch"]) == {"tcn_1m.onnx", "efficientnet.onnx"}
    for row in result["ort_vs_torch"].values():
        assert row["provider"] == "CPUExecutionProvider"
        assert row["onnxruntime_ms"] > 0
        assert row["torch_eager_ms"] > 0
    assert result["per_signal_ms"]["n"] == 5
    assert result["sources"] == {"ensemble": 5}  # the shipped models all vote on complete windows
    assert result["components_voting_median"] == 8
    assert result["burst"]["signals"] == 2
