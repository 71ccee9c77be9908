"""Train → export → evaluate on a tiny slice of real bars: the whole offline pipeline, for real.

Training here only proves the machinery (tiny sample caps, one epoch); the shipped models are
trained by ``candlecast train`` and described in models/artifacts/MODEL_CARD.md.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from inference.features import tcn_input
from inference.manifest import Manifest, ManifestError
from models.datasets import Cuts
from models.evaluate import EvaluateConfig, evaluate
from models.export import export_all
from models.train import TrainConfig, train_all
from tests.conftest import DATA_1M

pytestmark = pytest.mark.timeout(300)

STRATEGY_KEYS = {
    "n_predictions",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "brier",
    "total_return",
    "sharpe",
    "sortino",
    "max_drawdown",
    "win_rate",
    "profit_factor",
    "trades",
}


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("pipeline")
    data = root / "data" / "klines_1m"
    data.mkdir(parents=True)
    (data / "bybit_linear_BTCUSDT_1m.csv.gz").symlink_to(DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz")
    work, artifacts = root / "work", root / "artifacts"
    cfg = TrainConfig(
        data_dir=root / "data",
        work_dir=work,
        timeframes=(1, 5),
        tcn_train_cap=256,
        tcn_val_cap=128,
        tcn_epochs=1,
        image_train_cap=48,
        image_val_cap=24,
        image_epochs=1,
        batch_size=32,
    )
    summary = train_all(cfg)
    export_all(work, artifacts, root / "data", version="test", tcn_check_samples=64, image_check_samples=32)
    # a slice of bars after the test cut, as a file the evaluate command reads
    sliced = root / "bybit_linear_BTCUSDT_1m_slice.csv.gz"
    with gzip.open(DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz", "rt") as src, gzip.open(sliced, "wt") as dst:
        rows = csv.reader(src)
        w = csv.writer(dst)
        w.writerow(next(rows))
        kept = [r for r in rows if int(r[0]) >= Cuts().val_end]
        w.writerows(kept[:1200])  # 20 hours: the fallback rule needs 15 closed 1h bars
    (root / "summary.json").write_text(json.dumps(summary, default=str))
    return {"root": root, "work": work, "artifacts": artifacts, "slice": sliced}


def test_training_records_spans_and_validation(pipeline: dict[str, Path]) -> None:
    summary = json.loads((pipeline["root"] / "summary.json").read_text())
    for name in ("tcn_1m", "tcn_5m", "efficientnet"):
        assert summary[name]["train_samples"] > 0
        assert summary[name]["val_samples"] > 0
        assert summary[name]["train_span"][1] < Cuts().train_end  # nothing after the cut was trained on
        assert 0.0 <= summary[name]["validation"]["accuracy"] <= 1.0


def test_export_writes_checked_artifacts_and_a_complete_manifest(pipeline: dict[str, Path]) -> None:
    manifest = Manifest.load(pipeline["artifacts"] / "manifest.json")
    names = {c.name for c in manifest.components}
    assert names == {"tcn_1m", "tcn_5m", "efficientnet_1m", "efficientnet_5m"}
    for c in manifest.components:
        path = manifest.verified_path(c, pipeline["artifacts"])
        assert c.training["parity_max_abs_diff"] <= 1e-4
        assert c.horizon == f"next {c.timeframe}m bar"
        assert c.validation["n"] > 0
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        shape = session.get_inputs()[0].shape
        assert isinstance(shape[0], str)  # dynamic batch axis
    tcn = next(c for c in manifest.components if c.name == "tcn_1m")
    assert tcn.preprocessing["bars_needed"] == tcn.preprocessing["length"] + tcn.preprocessing["warmup"]
    # the ONNX model runs on a window built by the shared feature code, any batch size
    session = ort.InferenceSession(str(pipeline["artifacts"] / tcn.file), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, 200)))
    ohlcv = np.column_stack([close, close * 1.001, close * 0.999, close, rng.uniform(1, 2, 200)])
    x = np.stack([tcn_input(ohlcv[i : i + 97], 64) for i in range(3)])
    assert session.run(None, {"input": x})[0].shape == (3, 1)


def test_tampered_artifact_is_refused_by_evaluate(pipeline: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "artifacts"
    shutil.copytree(pipeline["artifacts"], copy)
    with (copy / "tcn_1m.onnx").open("ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ManifestError, match=r"tcn_1m: artifact .* refusing to load it"):
        evaluate(EvaluateConfig(files=(pipeline["slice"],), out_dir=tmp_path / "out", artifacts=copy))


def test_evaluate_writes_report_predictions_and_equity(pipeline: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = evaluate(EvaluateConfig(files=(pipeline["slice"],), out_dir=out, artifacts=pipeline["artifacts"]))
    strategies = json.loads((out / "report.json").read_text())
    assert json.loads((out / "meta.json").read_text())["fee_per_side"] == 0.00055
    assert {"ensemble", "fallback", "buy_and_hold", "tcn_1m", "efficientnet_1m", "efficientnet_5m"} <= set(strategies)
    for name, m in strategies.items():
        assert set(m) >= STRATEGY_KEYS, name
    assert strategies["buy_and_hold"]["trades"] == 1
    assert (out / "report.md").read_text().startswith("# Walk-forward evaluation")
    assert (out / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # every metric can be recomputed from predictions.csv
    from models.metrics import strategy_metrics

    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    for name in ("ensemble", "fallback", "tcn_1m"):
        mine = [r for r in rows if r["strategy"] == name]
        p = np.array([float(r["p_up"]) for r in mine])
        d = np.array([int(r["direction"]) for r in mine], np.int8)
        ret = np.array([float(r["realized_return"]) for r in mine])
        again = strategy_metrics([(p, d, ret)], interval_min=1)
        for key in ("n_predictions", "trades", "accuracy", "total_return"):
            expected = strategies[name][key]
            assert again[key] == pytest.approx(expected, rel=1e-4, abs=1e-9), (name, key)
    # the fallback reads 1h closes as serving does: one call per hour, held for its minutes
    by_hour: dict[int, set[int]] = {}
    for r in rows:
        if r["strategy"] == "fallback":
            by_hour.setdefault((int(r["open_time_ms"]) + 60_000) // 3_600_000, set()).add(int(r["direction"]))
    assert all(len(calls) == 1 for calls in by_hour.values()), by_hour
    assert any(calls != {0} for calls in by_hour.values())  # 20 hours of bars: it makes calls
    assert result["strategies"]["ensemble"]["n_predictions"] == strategies["ensemble"]["n_predictions"]
    # nothing before the test cut was evaluated
    assert min(int(r["open_time_ms"]) for r in rows) >= Cuts().val_end
