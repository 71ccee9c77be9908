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
from models.linear import fit_linear
from models.stack import fit_ensemble
from models.train import TrainConfig, train_all
from tests.conftest import DATA_1M

pytestmark = pytest.mark.timeout(300)

STRATEGY_KEYS = {
    "n",
    "coverage",
    "accuracy_moved",
    "accuracy_ci",
    "majority_moved",
    "precision",
    "recall",
    "f1",
    "brier",
    "brier_skill",
    "log_loss",
    "qlike",
    "qlike_ewma",
    "return_gross",
    "return_taker",
    "return_maker",
    "sharpe",
    "sharpe_ci",
    "sortino",
    "max_drawdown",
    "calmar",
    "win_rate",
    "profit_factor",
    "trades",
    "small_sample",
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
    fit_linear(root / "data", artifacts, cap=4000, val_cap=800, workers=1)
    fit_ensemble(artifacts, root / "data", per_series=800)
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
    assert names == {"tcn_1m", "tcn_5m", "efficientnet_1m", "efficientnet_5m", "linear_1m"}
    for c in manifest.components:
        path = manifest.verified_path(c, pipeline["artifacts"])
        if c.kind == "linear":
            continue
        assert c.training["parity_max_abs_diff"] <= 1e-4
        assert c.horizon == f"next {c.timeframe}m bar" and c.horizon_minutes == int(c.timeframe)
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


def test_the_linear_component_is_fitted_before_the_cut_and_its_onnx_is_the_fitted_model(
    pipeline: dict[str, Path],
) -> None:
    from inference.linear_features import LINEAR_BARS, linear_input
    from models.data import load_series
    from models.linear import _fit, heads_of

    manifest = Manifest.load(pipeline["artifacts"] / "manifest.json")
    c = next(c for c in manifest.components if c.name == "linear_1m")
    assert (c.kind, c.horizon_minutes, c.heads) == ("linear", 1, ("logit", "abs_move_bp", "var_bp2"))
    assert c.training["span"][1] < "2025-06-01"  # trained before the cut
    assert c.validation["samples"] > 0 and 0 <= c.validation["accuracy_moved"] <= 1
    s = load_series(DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz")
    x = np.stack([linear_input(s.ohlcv[t - LINEAR_BARS + 1 : t + 1]) for t in range(300, 340)])
    session = ort.InferenceSession(str(pipeline["artifacts"] / c.file), providers=["CPUExecutionProvider"])
    out = session.run(None, {"input": x})[0]
    assert out.shape == (40, 3) and (out[:, 1:] > 0).all()  # magnitudes are positive by construction
    # the graph computes what the fit describes: refit the same data and compare
    rng = np.random.default_rng(0)
    xs = rng.normal(size=(500, x.shape[1]))
    r = rng.normal(0, 1e-3, 500)
    w, b = _fit(xs, r, r**2 * 1e8, l2=1.0)
    assert np.isfinite(heads_of(xs, w, b)).all()


def test_stack_is_fitted_on_validation_and_written_to_the_manifest(pipeline: dict[str, Path]) -> None:
    spec = Manifest.load(pipeline["artifacts"] / "manifest.json").ensemble
    assert spec is not None and spec.horizon_minutes == 1
    assert set(spec.weights) == {"tcn_1m", "efficientnet_1m", "linear_1m"}  # the 5m ones forecast 5 min
    assert 0.5 <= spec.threshold <= 0.6 and spec.magnitude in ("heads", "ewma", "stack")
    vol = spec.fitted["volatility"]  # the choice is the lowest QLIKE on the calibration half
    chosen = min(("heads", "ewma", "stack"), key=lambda k: vol[f"qlike_{k}"])
    assert vol["chosen"] == spec.magnitude == chosen and (spec.volatility is not None) == (chosen == "stack")
    cuts = Cuts()
    assert spec.fitted["stack_span"][0] == "2025-06-01T00:00+00:00"
    assert spec.fitted["calibration_span"][1] == "2025-06-15T00:00+00:00"  # never the test span
    assert spec.fitted["samples"]["stack"] > 0 and spec.fitted["samples"]["calibration"] > 0
    assert cuts.train_end < cuts.val_end


def test_evaluate_writes_report_predictions_and_charts(pipeline: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "eval"
    result = evaluate(EvaluateConfig(files=(pipeline["slice"],), out_dir=out, artifacts=pipeline["artifacts"]))
    strategies = json.loads((out / "report.json").read_text())
    meta = json.loads((out / "meta.json").read_text())
    assert meta["fees"] == {"taker_per_side": 0.00055, "maker_per_side": 0.0002}
    assert meta["horizon_minutes"] == 1 and meta["span"][0] == "2025-06-15"  # ISO dates
    assert meta["not_evaluated"]["tcn_5m"] == "forecasts 5 min ahead, not 1"
    expected = {"ensemble", "fallback", "buy_and_hold", "majority", "tcn_1m", "efficientnet_1m", "linear_1m"}
    assert set(strategies) == expected
    for name, m in strategies.items():
        assert set(m) >= STRATEGY_KEYS, name
    assert strategies["buy_and_hold"]["trades"] == 1
    assert strategies["linear_1m"]["inference_ms"] > 0
    assert (out / "report.md").read_text().startswith("# Walk-forward evaluation")
    for chart in ("equity.png", "calibration.png"):
        assert (out / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the trading figures can be recomputed from predictions.csv.gz
    from models.metrics import net_returns

    with gzip.open(out / "predictions.csv.gz", "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    for name in ("ensemble", "fallback", "tcn_1m"):
        mine = [r for r in rows if r["strategy"] == name]
        pos = np.array([int(r["position"]) for r in mine], np.int8)
        call = np.array([int(r["direction"]) for r in mine], np.int8)
        ret = np.array([float(r["realized_return"]) for r in mine])
        assert len(mine) == strategies[name]["n"]
        assert float(np.prod(1 + net_returns(pos, ret)) - 1) == pytest.approx(
            strategies[name]["return_taker"], abs=1e-12
        )
        judged = (call != 0) & (ret != 0)
        if judged.any():
            acc = float(np.mean((call[judged] > 0) == (ret[judged] > 0)))
            assert acc == pytest.approx(strategies[name]["accuracy_moved"])
    # the ensemble trades only what it marked tradeable: a position is always its call
    ens = [r for r in rows if r["strategy"] == "ensemble"]
    assert all(r["position"] in ("0", r["direction"]) for r in ens)
    # the fallback reads 1h closes as serving does: one call per hour, held for its minutes
    by_hour: dict[int, set[int]] = {}
    for r in rows:
        if r["strategy"] == "fallback":
            by_hour.setdefault((int(r["open_time_ms"]) + 60_000) // 3_600_000, set()).add(int(r["direction"]))
    assert all(len(calls) == 1 for calls in by_hour.values()), by_hour
    assert any(calls != {0} for calls in by_hour.values())  # 20 hours of bars: it makes calls
    assert result["strategies"]["ensemble"]["n"] == strategies["ensemble"]["n"]
    # nothing before the test cut was evaluated
    assert min(int(r["open_time_ms"]) for r in rows) >= Cuts().val_end


async def test_evaluate_is_what_the_engine_serves(pipeline: dict[str, Path], tmp_path: Path) -> None:
    """Research-to-live parity: for bars of the slice, the worker's engine on the same windows gives
    the ensemble row of predictions.csv.gz (probability, call and what is traded)."""
    from decimal import Decimal

    from prometheus_client import CollectorRegistry

    from inference.components import ModelRegistry
    from inference.config import WorkerConfig
    from inference.engine import SignalEngine
    from inference.metrics import WorkerMetrics
    from inference.signal import Signal
    from streaming.klines import Bar
    from streaming.memory_store import MemoryStore
    from streaming.store import BarEvent, WriteBatch

    out = tmp_path / "eval"
    evaluate(EvaluateConfig(files=(pipeline["slice"],), out_dir=out, artifacts=pipeline["artifacts"]))
    with gzip.open(out / "predictions.csv.gz", "rt", newline="") as fh:
        rows = {int(r["open_time_ms"]): r for r in csv.DictReader(fh) if r["strategy"] == "ensemble"}
    with gzip.open(pipeline["slice"], "rt") as fh:
        reader = csv.reader(fh)
        next(reader)
        bars = [Bar(int(r[0]), *(Decimal(v) for v in r[1:6]), Decimal(0)) for r in reader]
    registry = ModelRegistry(pipeline["artifacts"], prefer_gpu=False)
    await registry.load()
    engine = SignalEngine(
        WorkerConfig(intervals=("1",), latency_budget_ms=60_000),
        MemoryStore(window_bars=300),
        registry,
        WorkerMetrics(CollectorRegistry()),
    )
    checked = 0
    for k in range(300, len(bars), 97):
        start = bars[k].start
        if start not in rows:
            continue
        store = MemoryStore(window_bars=300)
        await store.write(WriteBatch(bars={("BTCUSDT", "1"): bars[k - 299 : k + 1]}))
        engine.store = store
        s = await engine.compute(BarEvent("BTCUSDT", "1", start))
        assert isinstance(s, Signal) and s.source == "ensemble" and s.calibrated
        row = rows[start]
        assert s.p_up == pytest.approx(float(row["p_up"]), abs=1e-9)
        assert {"long": 1, "short": -1, "flat": 0}[s.direction] == int(row["direction"])
        assert (int(row["position"]) != 0) == s.tradeable
        checked += 1
    assert checked >= 5
    await engine.close()


def test_a_window_serving_would_refuse_gets_no_vote_in_evaluation_either(pipeline: dict[str, Path]) -> None:
    """A bad bar drops the component for the windows that hold it (as serving does), not the run."""
    from inference.components import load_model_set
    from models.data import load_series
    from models.stack import component_outputs

    s = load_series(DATA_1M / "bybit_linear_BTCUSDT_1m.csv.gz")
    s.ohlcv[400, 3] = np.nan  # one unreadable close
    models = load_model_set(pipeline["artifacts"], prefer_gpu=False)
    c = next(c for c in models.components if c.name == "linear_1m")
    ends = np.array([399, 400, 500, 700], np.int64)  # the 241-bar window ending at 500 holds bar 400
    rows = component_outputs(c, s, ends)
    assert np.isfinite(rows[[0, 3]]).all()
    assert np.isnan(rows[[1, 2]]).all()
