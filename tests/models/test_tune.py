"""``candlecast tune``: Optuna on the cheap zoo models with time-ordered folds inside the training span,
a bounded study, and the chosen parameters carried by training into the manifest."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from inference.manifest import Manifest
from models.datasets import Cuts
from models.export import export_all
from models.train import TrainConfig, load_tuned, train_all
from models.tune import TuneConfig, time_folds, tune
from tests.conftest import DATA_1M

pytestmark = pytest.mark.timeout(300)


def test_folds_are_expanding_windows_in_time_that_never_split_one_time() -> None:
    rng = np.random.default_rng(0)
    times = rng.integers(0, 50, size=400) * 60_000  # many samples share a minute (several series)
    folds = time_folds(times, 3)
    assert len(folds) == 3
    seen = 0
    for train, val in folds:
        assert times[train].max() < times[val].min()  # every training bar before every scored one
        assert len(np.intersect1d(train, val)) == 0
        assert len(train) > seen  # the window expands
        seen = len(train)
    assert sorted(np.concatenate([folds[-1][0], folds[-1][1]]).tolist()) == list(range(400))
    with pytest.raises(ValueError, match="too few distinct sample times"):
        time_folds(np.zeros(10, np.int64), 2)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tune") / "data"
    (root / "klines_1m").mkdir(parents=True)
    for name in ("bybit_linear_BTCUSDT_1m", "binance_usdm_perp_BTCUSDT_1m"):
        (root / "klines_1m" / f"{name}.csv.gz").symlink_to(DATA_1M / f"{name}.csv.gz")
    return root


def test_a_bounded_study_inside_the_training_span_whose_best_trial_trains_the_shipped_model(
    data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "tune"
    record = tune(TuneConfig("dense", data, out, trials=4, folds=2, samples=3000, epochs=1))
    assert json.loads((out / "dense.json").read_text()) == record
    assert record["trials"] == 4 and record["complete"] + record["pruned"] == 4
    complete = [h for h in record["history"] if h["state"] == "COMPLETE"]
    assert record["cv_log_loss"] == min(h["value"] for h in complete)
    best = next(h for h in complete if h["value"] == record["cv_log_loss"])
    assert record["params"] == {k: best[k] for k in ("lr", "weight_decay", "dropout", "batch_size")}
    for fold in record["folds"]:
        assert fold["train"][1] < fold["validate"][0]  # time-ordered
        assert fold["validate"][1] < Cuts().train_end  # never the validation or test span
    assert 3e-4 <= record["params"]["lr"] <= 1e-2 and 0.1 <= record["params"]["dropout"] <= 0.5

    work = tmp_path / "work"
    cfg = TrainConfig(
        data_dir=data,
        work_dir=work,
        models=("dense",),
        timeframes=(1,),
        horizon=1,
        tcn_train_cap=512,
        tcn_val_cap=256,
        zoo_epochs=1,
        params=out,
    )
    train_all(cfg)
    state = torch.load(work / "dense_1m.pt", weights_only=False)
    hp = state["result"]["hyperparameters"]
    assert {k: hp[k] for k in record["params"]} == pytest.approx(record["params"])
    assert hp["source"].startswith("optuna: 4 trials, time-ordered 2-fold")
    manifest = export_all(work, tmp_path / "artifacts", data, version="t", tcn_check_samples=64)
    (dense,) = manifest.components
    assert dense.training["hyperparameters"] == hp
    assert Manifest.load(tmp_path / "artifacts" / "manifest.json").components[0].training["hyperparameters"] == hp


def test_a_tuning_record_that_is_not_one_is_refused_by_name_before_anything_trains(data: Path, tmp_path: Path) -> None:
    good = {
        "kind": "dense",
        "params": {"lr": 1e-3, "weight_decay": 1e-2, "dropout": 0.3, "batch_size": 256},
        "cv_log_loss": 0.692,
        "trials": 5,
        "folds": [{}, {}],
        "horizon_minutes": 1,
    }
    assert load_tuned(tmp_path, "dense") is None  # none written: the defaults train
    with pytest.raises(ValueError, match="no such directory"):
        load_tuned(tmp_path / "typo", "dense")
    (tmp_path / "dense.json").write_text(json.dumps(good))
    assert load_tuned(tmp_path, "dense", horizon=1) == good
    for bad, message in [
        ("{broken", "unreadable tuning record"),
        ("[]", "not a tuning record of dense"),
        (good | {"kind": "cnn1d"}, "not a tuning record of dense"),
        (good | {"params": good["params"] | {"lr": float("nan")}}, "lr must be a finite number > 0"),
        (good | {"params": good["params"] | {"lr": 0}}, "lr must be a finite number > 0"),
        (good | {"params": good["params"] | {"dropout": 1.0}}, r"dropout must be a finite number in \[0, 1\)"),
        (good | {"params": good["params"] | {"batch_size": 100}}, "batch_size must be 128, 256 or 512"),
        ({k: v for k, v in good.items() if k != "trials"}, "trials, folds and cv_log_loss"),
        (good | {"horizon_minutes": 5}, "tuned for H = 5 min, not --horizon 1"),
    ]:
        (tmp_path / "dense.json").write_text(bad if isinstance(bad, str) else json.dumps(bad))
        with pytest.raises(ValueError, match=message):
            load_tuned(tmp_path, "dense", horizon=1)
        # refused before any model trains, naming the file
        with pytest.raises(ValueError, match=r"dense\.json"):
            train_all(
                TrainConfig(
                    data_dir=data,
                    work_dir=tmp_path / "work",
                    models=("tcn", "dense"),
                    timeframes=(1,),
                    horizon=1,
                    params=tmp_path,
                )
            )
        assert not (tmp_path / "work" / "tcn_1m.pt").exists()
    with pytest.raises(ValueError, match="covers the cheap models"):
        tune(TuneConfig("bilstm", tmp_path, tmp_path))


def test_a_label_longer_than_a_minute_is_purged_from_the_fold_it_would_reach_into() -> None:
    times = np.arange(600, dtype=np.int64) * 60_000  # one sample a minute
    horizon = 5
    for train, val in time_folds(times, 3, purge_ms=(horizon - 1) * 60_000):
        # a training label (first bar at t, last at t + 4 min) ends before the first scored one
        assert times[train].max() + (horizon - 1) * 60_000 < times[val].min()
        assert times[val].min() - times[train].max() == horizon * 60_000  # only those four purged
    with pytest.raises(ValueError, match="0 samples cannot make 3 folds"):
        time_folds(np.zeros(0, np.int64), 3)
