"""``candlecast tune``: the cheap zoo models' hyper-parameters, found by Optuna (seed 002) inside the
training span.

Time-ordered cross-validation: the training samples (:func:`models.datasets.build_view_samples`,
``part="train"``: every label ends before the training cut) are ordered by their first label bar and cut
into ``folds + 1`` blocks of equal count; fold ``k`` trains on blocks ``0..k`` and is scored on block
``k + 1`` (an expanding window; a training sample whose label, H minutes long, reaches into the scored
block is purged from that fold, so no bar is in both a training label and a scored one). A trial's value is the
mean validation log loss over its folds; after each fold Optuna's median pruner may stop a trial that
is already worse than the median of the others there. The validation and test spans are never read.

The search is bounded: ``--trials`` trials (TPE, seeded) and ``--timeout`` seconds, whichever comes
first. The best parameters go to ``<out>/<kind>.json``; ``candlecast train --params <out>`` trains
with them (:func:`models.train.load_tuned`) and the manifest entry carries them
(``training.hyperparameters``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from models.data import MINUTE_MS
from models.datasets import Cuts, SampleSet, build_view_samples, series_for_timeframe
from models.train import TrainConfig, fit
from models.zoo import DenseNet, zoo_input, zoo_model

__all__ = ["TUNABLE", "TuneConfig", "time_folds", "tune"]

log = logging.getLogger(__name__)

TUNABLE = ("dense", "cnn1d")  # the cheap ones: a trial costs seconds on 2 cores


@dataclass(frozen=True)
class TuneConfig:
    kind: str
    data_dir: Path
    out_dir: Path
    horizon: int = 1
    trials: int = 20
    timeout_s: float = 1800.0
    folds: int = 3
    samples: int = 40_000  # training-span samples, over every 1m series
    epochs: int = 3
    seed: int = 0


def time_folds(times: np.ndarray, folds: int, purge_ms: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, validation indices) of each expanding-window fold, ordered by ``times``.

    Samples at one time never straddle a cut: a block ends where the time changes. ``purge_ms``: how
    far a label reaches past its sample's time (``(H - 1)`` minutes: ``times`` are the first label
    bar's start); training samples whose label reaches into the scored block are left out of that fold."""
    if folds < 1:
        raise ValueError(f"folds must be >= 1, got {folds}")
    if len(times) < folds + 1:
        raise ValueError(f"{len(times)} samples cannot make {folds} folds")
    order = np.argsort(times, kind="stable")
    sorted_times = times[order]
    bounds = [0]
    for k in range(1, folds + 1):
        i = int(np.searchsorted(sorted_times, sorted_times[len(order) * k // (folds + 1)], side="left"))
        bounds.append(max(i, bounds[-1]))
    bounds.append(len(order))
    out = []
    for k in range(folds):
        train, val = order[: bounds[k + 1]], order[bounds[k + 1] : bounds[k + 2]]
        train = train[times[train] + purge_ms < sorted_times[bounds[k + 1]]] if len(val) else train
        if not len(train) or not len(val):
            raise ValueError(f"fold {k + 1} of {folds} is empty: too few distinct sample times")
        out.append((train, val))
    return out


def _subset(s: SampleSet, idx: np.ndarray) -> SampleSet:
    assert s.times is not None
    times = s.times[idx]
    return SampleSet(s.x[idx], s.y[idx], (int(times.min()), int(times.max())), s.sources, times)


def _suggest(trial: optuna.Trial) -> dict[str, Any]:
    return {
        "lr": trial.suggest_float("lr", 3e-4, 1e-2, log=True),
        "weight_decay": trial.suggest_float("weight_decay", 1e-4, 1e-1, log=True),
        "dropout": trial.suggest_float("dropout", 0.1, 0.5),
        "batch_size": trial.suggest_categorical("batch_size", [128, 256, 512]),
    }


def tune(cfg: TuneConfig) -> dict[str, Any]:
    """Run the study; write and return the best parameters with the study's record."""
    if cfg.kind not in TUNABLE:
        raise ValueError(f"candlecast tune covers the cheap models ({', '.join(TUNABLE)}), not {cfg.kind!r}")
    cuts = Cuts()
    bases = series_for_timeframe(cfg.data_dir, 1)
    samples = build_view_samples(zoo_input(cfg.kind), bases, 1, cuts, "train", cfg.samples, cfg.horizon, cfg.seed)
    assert samples.times is not None
    if len(samples) and int(samples.times.max()) >= cuts.train_end:  # the builder's contract, checked
        raise AssertionError("a tuning sample lies after the training cut")
    folds = time_folds(samples.times, cfg.folds, purge_ms=(cfg.horizon - 1) * MINUTE_MS)
    base = TrainConfig(data_dir=cfg.data_dir, work_dir=cfg.out_dir, seed=cfg.seed, patience=cfg.epochs)
    records: list[dict[str, Any]] = []

    def objective(trial: optuna.Trial) -> float:
        params = _suggest(trial)
        losses = []
        for k, (tr, va) in enumerate(folds):
            train, val = _subset(samples, tr), _subset(samples, va)
            torch.manual_seed(cfg.seed)
            model = zoo_model(cfg.kind, int(samples.x.shape[1]), dropout=params["dropout"])
            if isinstance(model, DenseNet):
                model.standardise(torch.from_numpy(train.x))
            run = replace(base, weight_decay=params["weight_decay"])
            result = fit(
                model,
                train,
                val,
                run,
                cfg.epochs,
                f"{cfg.kind} trial {trial.number} fold {k + 1}",
                lr=params["lr"],
                batch_size=params["batch_size"],
            )
            losses.append(min(h["val_loss"] for h in result["history"]))
            trial.report(float(np.mean(losses)), k)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return float(np.mean(losses))

    def record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        records.append({"number": trial.number, "state": trial.state.name, "value": trial.value, **trial.params})

    started = time.perf_counter()
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=cfg.seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    )
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study.optimize(objective, n_trials=cfg.trials, timeout=cfg.timeout_s, callbacks=[record])
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials):
        raise RuntimeError(f"{cfg.kind}: no trial completed within {cfg.timeout_s:g} s; raise --timeout")
    best = study.best_trial
    out = {
        "kind": cfg.kind,
        "params": dict(best.params),
        "cv_log_loss": best.value,
        "trials": len(study.trials),
        "complete": sum(1 for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE),
        "pruned": sum(1 for t in study.trials if t.state == optuna.trial.TrialState.PRUNED),
        "seconds": round(time.perf_counter() - started, 1),
        "folds": [
            {
                "train": [int(samples.times[tr].min()), int(samples.times[tr].max())],
                "validate": [int(samples.times[va].min()), int(samples.times[va].max())],
                "train_samples": len(tr),
                "validation_samples": len(va),
            }
            for tr, va in folds
        ],
        "samples": len(samples),
        "epochs": cfg.epochs,
        "horizon_minutes": cfg.horizon,
        "train_cut": cuts.train_end,
        "history": records,
    }
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / f"{cfg.kind}.json").write_text(json.dumps(out, indent=2) + "\n")
    log.info("%s: best of %d trials, cv log loss %.5f: %s", cfg.kind, out["trials"], best.value, best.params)
    return out
