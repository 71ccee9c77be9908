"""``candlecast bench inference`` runs end to end on the shipped models with the PyTorch-eager baseline
(a smoke test, not a timing): the composition ``service/cli.py`` makes."""

from __future__ import annotations

import pytest

from inference.bench import bench_inference
from models.bench_inference import torch_eager
from tests.conftest import ARTIFACTS, DATA_1M

pytestmark = pytest.mark.timeout(180)


def test_bench_inference_reports_every_section() -> None:
    result = bench_inference(
        ARTIFACTS, DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz", symbols=2, repeats=5, eager=torch_eager()
    )
    zoo = {
        f"{kind}_1m.onnx" for kind in ("dense", "cnn1d", "mscnn", "cnn_ta", "bilstm", "cipm", "cipm_btc", "book_cnn")
    }
    # the B3 too (timed on what binds: the CPU here), each against its own PyTorch eager twin
    assert set(result["ort_vs_torch"]) == {"tcn_1m.onnx", "efficientnet.onnx", "efficientnet_b3.onnx"} | zoo
    for row in result["ort_vs_torch"].values():
        assert row["provider"] == "CPUExecutionProvider"
        assert row["onnxruntime_ms"] > 0
        assert row["torch_eager_ms"] > 0
    assert result["per_signal_ms"]["n"] == 5
    assert result["sources"] == {"ensemble": 5}  # the shipped models vote on complete windows
    # every slot answers the default 1-minute question (B0s for B3s), the opted-in heatmap CNN too
    assert result["components_voting_median"] == 17
    assert result["artifacts"]["megabytes"] < 100
    assert result["burst"]["signals"] == 2
