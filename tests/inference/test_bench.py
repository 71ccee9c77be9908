"""The ``inference`` benchmarks run end to end without torch (smoke tests, not timings).

``bench inference`` takes its eager baseline from outside (``inference`` never imports torch): here a
stand-in that reports a fixed time, so what is pinned is the ORT and signal-engine side and the
JSON shape; ``bench render`` measures every renderer against the mplfinance and pyts baselines.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest

from inference.bench import EagerBaseline, bench_inference, bench_inputs, bench_render
from tests.conftest import ARTIFACTS, DATA_1M

pytestmark = pytest.mark.timeout(180)


def _fixed_ms(artifact: str, x: npt.NDArray[np.float32], threads: int, repeats: int) -> float:
    assert artifact in bench_inputs() and repeats >= 20
    return 2.0


def test_bench_inference_runs_the_engine_and_compares_ort_with_the_given_baseline(redis_url: str) -> None:
    result = bench_inference(
        ARTIFACTS,
        DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz",
        symbols=2,
        repeats=5,
        eager=EagerBaseline("stand-in", _fixed_ms),
        redis_url=redis_url,
    )
    assert list(result) == [
        "benchmark",
        "machine",
        "ort_vs_torch",
        "artifacts",
        "per_signal_ms",
        "components_voting_median",
        "opted_in",
        "sources",
        "ladder",
        "burst",
        "burst_inside_the_hour",
        "burst_with_scoring",
        "store_read",
        "aim",
    ]
    assert result["machine"]["torch"] == "stand-in"
    assert result["opted_in"] == ["book_cnn_1m"]  # the whole zoo: the heatmap CNN, off by default, too
    shipped = sorted(ARTIFACTS.glob("*.onnx"))
    assert result["artifacts"] == {
        "onnx_files": len(shipped),
        "megabytes": round(sum(p.stat().st_size for p in shipped) / 1e6, 1),
    }
    assert set(result["ort_vs_torch"]) == {p.name for p in shipped if p.name in bench_inputs()}
    for name, row in result["ort_vs_torch"].items():
        assert row["batch"] == bench_inputs()[name].shape[0]
        assert row["torch_eager_ms"] == 2.0
        # the ratio of the unrounded times; the printed ms are rounded to 3 decimals, which for the
        # zoo's smallest models (0.01 ms) is itself a relative error of up to 0.0005 / ms
        ms = row["onnxruntime_ms"]
        assert row["speedup_ort_vs_torch"] == pytest.approx(2.0 / ms, rel=0.02 + 0.0005 / ms, abs=0.01)
    assert result["sources"] == {"ensemble": 5}
    assert result["ladder"] == {"efficientnet-b0": 5}  # no GPU here: the B0 rung, every signal
    assert result["burst"]["signals"] == 2
    # 14 sessions (the four EfficientNet views share one) a symbol; runs merge batches, never add any
    assert result["burst"]["session_batches"] == 28
    assert 14 <= result["burst"]["session_runs"] <= 28
    inside = result["burst_inside_the_hour"]
    # at xx:59 the TCN and the B0 of 5m, 15m and 1h read the windows of their last vote: remembered
    assert inside["signals"] == 2 and inside["votes_remembered_median"] == 6
    assert result["burst_with_scoring"]["scored"] == 2  # each symbol's previous signal, once its bar closed


def test_bench_render_measures_every_renderer_against_its_baseline() -> None:
    result = bench_render(repeats=2)
    assert set(result["renderers"]) == {
        "ohlc_chart",
        "composite",
        "candlestick_chart",
        "gasf",
        "gadf",
        "recurrence_plot",
    }
    assert result["renderers"]["composite"]["shape"] == [3, 54, 72]
    assert result["ratio_vs_mplfinance"] > 0
    assert result["ratio_vs_pyts"] > 0
    assert result["data"] == "bybit_linear_BTCUSDT_1m.csv.gz"


def test_the_benchmarks_and_the_cli_start_without_torch_or_models() -> None:
    probe = (
        "import sys, inference.bench, service.cli; "
        "bad = sorted(m for m in sys.modules if m == 'torch' or m == 'models' or m.startswith('models.')); "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
