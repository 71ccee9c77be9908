"""``candlecast bench inference`` runs end to end on the shipped models with the PyTorch-eager baseline
(a smoke test, not a timing): the composition ``service/cli.py`` makes."""

from __future__ import annotations

import pytest

from inference.bench import bench_inference
from models.bench_inference import torch_eager
from tests.conftest import ARTIFACTS, DATA_1M

pytestmark = pytest.mark.timeout(180)


def test_bench_inference_reports_every_section(redis_url: str) -> None:
    result = bench_inference(
        ARTIFACTS,
        DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz",
        symbols=2,
        repeats=5,
        eager=torch_eager(),
        redis_url=redis_url,
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
    # one read from a real Redis beside the memory store's, with and without the heatmap's depth
    reads = result["store_read"]
    for label in ("without_depth", "with_depth"):
        assert reads[label]["redis_ms"]["p50"] > 0 and reads[label]["memory_ms"]["p50"] > 0
    assert reads["symbol_rows"] == {"bars_per_window": 400, "depth_rows": 300}


def test_the_store_read_section_says_why_when_no_redis_answers() -> None:
    import asyncio

    from inference.bench import _store_reads
    from streaming.sim.bars import load_1m_bars
    from tests.redis_server import free_port

    base = load_1m_bars(DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz")
    url = f"redis://127.0.0.1:{free_port()}/0"
    out = asyncio.run(_store_reads(base, int(base.start_ms[-1]) - 60_000, url, 3))
    assert out["skipped"].startswith(f"no Redis at {url}")
