"""``candlecast train``: fit the TCNs (one per timeframe), one shared EfficientNet and the seeds' other
models (:mod:`models.zoo`, one per timeframe) on history.

Seeded, CUDA when present and the CPU otherwise (``--device`` chooses), AdamW with a cosine schedule, early stopping
on validation loss, progress bars. Writes checkpoints and their metrics to ``--work``; ``candlecast
export`` turns them into ONNX artifacts and the manifest.

``--horizon H`` trains every timeframe for the signal's one question (the log return over the next H
minutes, asked at each 1m close; a 5m, 15m or 1h component reads the view of its timeframe that
serving holds then: :func:`models.datasets.build_view_samples`). Without it, each model forecasts the
next bar of its own timeframe, as the first artifacts did.

Pre-train, then fine-tune: every 1m series (Binance spot and USDT-M, Bybit) trains the model; with
``--fine-tune bybit_linear`` it then continues on those series alone at a tenth of the learning rate,
and the fine-tuned weights are kept only if their validation loss on those series is lower than the
pre-trained ones'. The zoo models (``--models dense,cnn1d,mscnn,cnn_ta,bilstm``) need ``--horizon``:
they answer the signal's question only; each trains like the TCN (same sample caps, ``--zoo-epochs``),
the dense network on the linear component's feature vector, the CIPM network on the OHLC image (its
cap: ``--image-samples``), the others on the TCN's sequences.
``--init-from models/artifacts`` starts a TCN from a shipped artifact's weights
(read from its ONNX graph) instead of from scratch; with ``--tcn-epochs 0`` only the fine-tune runs.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn
from tqdm import tqdm

from inference.manifest import Manifest
from models.book import BOOK_NAME, train_book
from models.data import Series
from models.datasets import (
    IMAGE_BARS,
    IMAGE_HEIGHT,
    TCN_LENGTH,
    TIMEFRAMES,
    Cuts,
    SampleSet,
    build_image_samples,
    build_tcn_samples,
    build_view_samples,
    series_for_timeframe,
)
from models.efficientnet import efficientnet
from models.linear import iso_ms
from models.tcn import TCN
from models.zoo import ZOO, DenseNet, zoo_input, zoo_model

__all__ = ["TrainConfig", "image_checkpoint", "load_onnx_weights", "train_all"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    data_dir: Path
    work_dir: Path
    models: tuple[str, ...] = ("tcn", "efficientnet")
    timeframes: tuple[int, ...] = TIMEFRAMES
    seed: int = 0
    device: str = "auto"
    tcn_train_cap: int = 60_000
    tcn_val_cap: int = 10_000
    tcn_epochs: int = 12
    image_train_cap: int = 3_000  # per timeframe; EfficientNet on 2 CPU cores is the slow part
    image_val_cap: int = 800
    image_epochs: int = 4
    image_batch_size: int = 64
    image_lr: float = 3e-4
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 1e-2
    patience: int = 3
    efficientnet_variant: str = "b0"
    horizon: int | None = None  # None: the next bar of each timeframe; else the H-minute question
    fine_tune: str | None = None  # series-name prefix to fine-tune on after pre-training
    fine_tune_epochs: int = 2
    init_from: Path | None = None  # artifacts directory: start TCNs from its ONNX weights
    zoo_epochs: int = 6
    params: Path | None = None  # candlecast tune's output: <kind>.json hyper-parameters for zoo models
    depth_recordings: tuple[Path, ...] = ()  # book_cnn: `candlecast record` files beside data_dir/orderbook


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda: no CUDA device is available")
    return torch.device(name)


def _metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = 1.0 / (1.0 + np.exp(-np.clip(logits.astype(np.float64), -60.0, 60.0)))
    pred = p >= 0.5
    return {
        "n": float(len(y)),
        "accuracy": float((pred == (y > 0.5)).mean()) if len(y) else float("nan"),
        "brier": float(((p - y) ** 2).mean()) if len(y) else float("nan"),
        "base_rate_up": float(y.mean()) if len(y) else float("nan"),
        "mean_p_up": float(p.mean()) if len(y) else float("nan"),
    }


def _predict(model: nn.Module, x: np.ndarray, device: torch.device, batch: int) -> np.ndarray:
    model.eval()
    out = []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            out.append(model(torch.from_numpy(x[i : i + batch]).to(device)).float().cpu().numpy().reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def fit(
    model: nn.Module,
    train: SampleSet,
    val: SampleSet,
    cfg: TrainConfig,
    epochs: int,
    label: str,
    *,
    lr: float | None = None,
    batch_size: int | None = None,
) -> dict[str, Any]:
    """Train with AdamW + cosine schedule; keep the weights of the best validation loss."""
    lr = lr or cfg.lr
    batch_size = batch_size or cfg.batch_size
    if not len(train) or not len(val):
        raise ValueError(f"{label}: {len(train)} training and {len(val)} validation samples; need both")
    device = _device(cfg.device)
    model.to(device)
    gen = torch.Generator().manual_seed(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=cfg.weight_decay)
    steps = max(1, epochs * math.ceil(len(train) / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = nn.BCEWithLogitsLoss()
    y_val = torch.from_numpy(val.y)
    best: tuple[float, dict[str, torch.Tensor]] | None = None
    history = []
    bad_epochs = 0
    started = time.perf_counter()
    for epoch in range(epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)  # shuffles within the training span only
        total = 0.0
        bar = tqdm(range(0, len(train), batch_size), desc=f"{label} epoch {epoch + 1}/{epochs}", leave=False)
        for i in bar:
            idx = order[i : i + batch_size]
            xb = torch.from_numpy(train.x[idx.numpy()]).to(device)
            yb = torch.from_numpy(train.y[idx.numpy()]).to(device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb).reshape(-1), yb)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        logits = _predict(model, val.x, device, batch_size * 2)
        val_loss = float(loss_fn(torch.from_numpy(logits), y_val[: len(logits)]))
        entry = {
            "epoch": epoch + 1,
            "train_loss": total / max(1, len(train)),
            "val_loss": val_loss,
            **{f"val_{k}": v for k, v in _metrics(logits, val.y).items()},
        }
        history.append(entry)
        log.info(
            "%s epoch %d: train loss %.4f, val loss %.4f, val acc %.4f",
            label,
            epoch + 1,
            entry["train_loss"],
            val_loss,
            entry["val_accuracy"],
        )
        if best is None or not math.isfinite(best[0]) or val_loss < best[0] - 1e-5:
            best = (val_loss, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            bad_epochs = 0
        else:
            bad_epochs += 1
            if bad_epochs >= cfg.patience:
                log.info("%s: early stop after epoch %d", label, epoch + 1)
                break
    assert best is not None
    model.load_state_dict(best[1])
    model.to("cpu")
    final = _metrics(_predict(model, val.x, torch.device("cpu"), batch_size * 2), val.y)
    return {
        "history": history,
        "validation": final,
        "train_seconds": time.perf_counter() - started,
        "train_samples": len(train),
        "val_samples": len(val),
        "train_span": list(train.span),
        "val_span": list(val.span),
        "sources": sorted(set(train.sources)),
    }


def train_all(cfg: TrainConfig) -> dict[str, Any]:
    try:
        return _train_all(cfg)
    finally:
        _BUILT.clear()


def _train_all(cfg: TrainConfig) -> dict[str, Any]:
    unknown = [m for m in cfg.models if m not in ("tcn", "efficientnet", "book_cnn", *ZOO)]
    if unknown:
        known = ", ".join(("tcn", "efficientnet", *ZOO, "book_cnn"))
        raise ValueError(f"--models: unknown {', '.join(unknown)}; known: {known}")
    zoo = [m for m in cfg.models if m in ZOO]
    one_question = [*zoo, *(["book_cnn"] if "book_cnn" in cfg.models else [])]
    if one_question and cfg.horizon is None:  # refused before anything trains
        raise ValueError(f"{one_question[0]}: the zoo models answer the signal's question only; give --horizon")
    # every tuning record read and checked before the first fit
    tuned = {kind: load_tuned(cfg.params, kind, cfg.horizon) for kind in zoo} if cfg.params is not None else {}
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    cuts = Cuts()
    summary: dict[str, Any] = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "cuts": asdict(cuts)}
    image_train: list[SampleSet] = []
    image_val: list[SampleSet] = []
    bases = series_for_timeframe(cfg.data_dir, 1) if cfg.horizon is not None else []
    for tf in cfg.timeframes:
        series = series_for_timeframe(cfg.data_dir, tf) if cfg.horizon is None else bases
        if "tcn" in cfg.models:
            label = f"tcn_{tf}m"
            torch.manual_seed(cfg.seed)
            model = TCN(in_channels=8)
            pretrained = _init_tcn(model, cfg, label)
            if cfg.tcn_epochs > 0:
                train = _samples(cfg, "tcn", series, tf, cuts, "train", cfg.tcn_train_cap)
                val = _samples(cfg, "tcn", series, tf, cuts, "val", cfg.tcn_val_cap)
                log.info("%s: %d train / %d val samples from %d series", label, len(train), len(val), len(series))
                result = fit(model, train, val, cfg, cfg.tcn_epochs, label)
            elif pretrained is not None:
                result = pretrained
            else:
                raise ValueError(f"{label}: --tcn-epochs 0 needs --init-from (nothing to start from)")
            if cfg.fine_tune:
                result = _fine_tune(model, result, cfg, "tcn", series, tf, cuts, label)
            result["config"] = {"in_channels": 8, "length": TCN_LENGTH}
            result["horizon_minutes"] = cfg.horizon
            torch.save({"state_dict": model.state_dict(), "result": result}, cfg.work_dir / f"{label}.pt")
            summary[label] = {k: v for k, v in result.items() if k != "history"}
        for kind in (k for k in ZOO if k in cfg.models):
            label = f"{kind}_{tf}m"
            summary[label] = _train_zoo(kind, label, cfg, series, tf, cuts, tuned.get(kind))
        if "efficientnet" in cfg.models:
            image_train.append(_samples(cfg, "image", series, tf, cuts, "train", cfg.image_train_cap))
            image_val.append(_samples(cfg, "image", series, tf, cuts, "val", cfg.image_val_cap))
        for key in [k for k in _BUILT if k[2] == tf]:  # this timeframe's sets are not needed again
            del _BUILT[key]
    if "efficientnet" in cfg.models:
        train = _concat(image_train)
        val = _concat(image_val)
        label = image_checkpoint(cfg.efficientnet_variant)
        log.info("%s: %d train / %d val images", label, len(train), len(val))
        torch.manual_seed(cfg.seed)
        image_model = efficientnet(cfg.efficientnet_variant, in_channels=3, num_classes=1, stem_stride=2)
        # torchvision's head init (uniform ±1/sqrt(out_features)) is ±1 for a single logit: over 1280
        # features that starts training at logits of several units. Start from "no opinion" instead.
        head = image_model.classifier[-1]
        assert isinstance(head, nn.Linear)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        result = fit(
            image_model,
            train,
            val,
            cfg,
            cfg.image_epochs,
            label,
            lr=cfg.image_lr,
            batch_size=cfg.image_batch_size,
        )
        result["horizon_minutes"] = cfg.horizon
        result["config"] = {
            "variant": cfg.efficientnet_variant,
            "timeframes": list(cfg.timeframes),
            "in_channels": 3,
            "stem_stride": 2,
            "height": IMAGE_HEIGHT,
            "bars": IMAGE_BARS,
        }
        torch.save({"state_dict": image_model.state_dict(), "result": result}, cfg.work_dir / f"{label}.pt")
        summary[label] = {k: v for k, v in result.items() if k != "history"}
    if "book_cnn" in cfg.models:  # on recorded depth, not bars (models.book)
        assert cfg.horizon is not None
        summary[BOOK_NAME] = train_book(
            cfg.data_dir, cfg.work_dir, cfg.horizon, cfg.depth_recordings, cfg, cfg.zoo_epochs
        )
    (cfg.work_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def image_checkpoint(variant: str) -> str:
    """The EfficientNet checkpoint's (and artifact's) stem: ``efficientnet`` for B0, the file the
    shipped manifest has always named, ``efficientnet_b3`` for the B3 rung of the ladder."""
    return "efficientnet" if variant == "b0" else f"efficientnet_{variant}"


def _train_zoo(
    kind: str,
    label: str,
    cfg: TrainConfig,
    series: list[Series],
    tf: int,
    cuts: Cuts,
    tuned: dict[str, Any] | None,
) -> dict[str, Any]:
    """Fit (and fine-tune) one zoo model, with its ``tuned`` record's parameters when it has one; its
    checkpoint goes to ``work_dir/label.pt``."""
    assert cfg.horizon is not None  # _train_all refused the zoo without one
    samples = zoo_input(kind)
    train_cap, val_cap = _caps(cfg, samples)
    train = _samples(cfg, samples, series, tf, cuts, "train", train_cap)
    val = _samples(cfg, samples, series, tf, cuts, "val", val_cap)
    log.info("%s: %d train / %d val samples from %d series", label, len(train), len(val), len(series))
    hp: dict[str, Any] = (
        dict(tuned["params"])
        if tuned is not None
        else {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "dropout": None, "batch_size": cfg.batch_size}
    )
    run = replace(cfg, lr=hp["lr"], weight_decay=hp["weight_decay"], batch_size=hp["batch_size"])
    torch.manual_seed(cfg.seed)
    in_channels = int(train.x.shape[1])  # features, indicator channels or image layers
    model = zoo_model(kind, in_channels, dropout=hp["dropout"])
    if isinstance(model, DenseNet):
        model.standardise(torch.from_numpy(train.x))
    result = fit(model, train, val, run, cfg.zoo_epochs, label)
    if cfg.fine_tune:
        result = _fine_tune(model, result, run, samples, series, tf, cuts, label)
    rates = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    result["hyperparameters"] = hp | {
        "dropout": rates[0] if rates else None,
        "epochs": cfg.zoo_epochs,
        "source": (
            f"optuna: {tuned['trials']} trials, time-ordered {len(tuned['folds'])}-fold cv log loss"
            f" {tuned['cv_log_loss']:.5f} (candlecast tune)"
            if tuned is not None
            else "defaults"
        ),
    }
    result["config"] = {"kind": kind, "in_channels": in_channels, "samples": samples}
    if samples == "tcn":
        result["config"]["length"] = TCN_LENGTH
    if samples in ("ohlc", "ohlc_btc"):
        result["config"] |= {"height": IMAGE_HEIGHT, "bars": IMAGE_BARS}
    result["horizon_minutes"] = cfg.horizon
    torch.save({"state_dict": model.state_dict(), "result": result}, cfg.work_dir / f"{label}.pt")
    return {k: v for k, v in result.items() if k != "history"}


def load_tuned(directory: Path, kind: str, horizon: int | None = None) -> dict[str, Any] | None:
    """The tuned record of ``kind`` in ``directory`` (``candlecast tune``'s output), or None when it
    has none. Everything training reads from it is checked here, before any fit: a record that is not
    one, or was tuned for another horizon, raises :class:`ValueError` naming the file."""
    if not directory.is_dir():
        raise ValueError(f"--params {directory}: no such directory (candlecast tune --out writes it)")
    path = directory / f"{kind}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: unreadable tuning record ({exc})") from exc
    if not isinstance(record, dict) or record.get("kind") != kind or not isinstance(record.get("params"), dict):
        raise ValueError(f"{path}: not a tuning record of {kind}")
    params = record["params"]

    def number(value: Any) -> bool:
        return not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)

    for key, ok, rule in (
        ("lr", number(params.get("lr")) and params["lr"] > 0, "> 0"),
        ("weight_decay", number(params.get("weight_decay")) and params["weight_decay"] >= 0, ">= 0"),
        ("dropout", number(params.get("dropout")) and 0 <= params["dropout"] < 1, "in [0, 1)"),
    ):
        if not ok:
            raise ValueError(f"{path}: {key} must be a finite number {rule}, got {params.get(key)!r}")
    if params.get("batch_size") not in (128, 256, 512):
        raise ValueError(f"{path}: batch_size must be 128, 256 or 512, got {params.get('batch_size')!r}")
    trials, folds, loss = record.get("trials"), record.get("folds"), record.get("cv_log_loss")
    if isinstance(trials, bool) or not isinstance(trials, int) or not isinstance(folds, list) or not number(loss):
        raise ValueError(f"{path}: trials, folds and cv_log_loss must say how the parameters were chosen")
    if horizon is not None and record.get("horizon_minutes") != horizon:
        raise ValueError(f"{path}: tuned for H = {record.get('horizon_minutes')!r} min, not --horizon {horizon}")
    return record


def _caps(cfg: TrainConfig, samples: str) -> tuple[int, int]:
    """(training, validation) sample caps of a sample kind: the image caps for images."""
    if samples in ("image", "ohlc", "ohlc_btc"):
        return cfg.image_train_cap, cfg.image_val_cap
    return cfg.tcn_train_cap, cfg.tcn_val_cap


def _concat(sets: list[SampleSet]) -> SampleSet:
    return SampleSet(
        x=np.concatenate([s.x for s in sets]),
        y=np.concatenate([s.y for s in sets]),
        span=(min(s.span[0] for s in sets if len(s)), max(s.span[1] for s in sets if len(s))),
        sources=[n for s in sets for n in s.sources],
    )


# The sample sets of one train_all run, so models reading the same inputs (the TCN and four zoo
# models read one sequence set) build them once; cleared when the run ends.
_BUILT: dict[tuple[Any, ...], SampleSet] = {}


def _samples(cfg: TrainConfig, kind: str, series: list[Series], tf: int, cuts: Cuts, part: str, cap: int) -> SampleSet:
    key = (kind, tuple(s.name for s in series), tf, cuts, part, cap, cfg.horizon, cfg.seed)
    if key not in _BUILT:
        _BUILT[key] = _build(cfg, kind, series, tf, cuts, part, cap)
    return _BUILT[key]


def _build(cfg: TrainConfig, kind: str, series: list[Series], tf: int, cuts: Cuts, part: str, cap: int) -> SampleSet:
    if cfg.horizon is not None:
        return build_view_samples(kind, series, tf, cuts, part, cap, cfg.horizon, cfg.seed)
    if kind == "tcn":
        return build_tcn_samples(series, cuts, part, cap, cfg.seed)
    return build_image_samples(series, cuts, part, cap, cfg.seed)


def load_onnx_weights(model: nn.Module, path: Path) -> None:
    """Load an exported model's weights back: its ONNX initializers, by parameter name, into ``model``.

    Exact for the TCN (its graph keeps every parameter under its state_dict name); a graph whose
    export folded or renamed parameters (BatchNorm into convolutions) is refused, not half-loaded.
    """
    weights = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}
    state = model.state_dict()
    missing = [k for k in state if k not in weights]
    if missing:
        raise ValueError(f"{path.name}: the graph has no weights named {', '.join(missing[:3])}; cannot start from it")
    shapes = [k for k in state if tuple(state[k].shape) != weights[k].shape]
    if shapes:
        raise ValueError(
            f"{path.name}: {shapes[0]} is {weights[shapes[0]].shape}, the model wants {state[shapes[0]].shape}"
        )
    model.load_state_dict({k: torch.from_numpy(weights[k].copy()) for k in state})


def _init_tcn(model: nn.Module, cfg: TrainConfig, label: str) -> dict[str, Any] | None:
    """Start ``model`` from the shipped ``label`` artifact (``--init-from``); its training record, as
    a :func:`fit` result, or None without ``--init-from``."""
    if cfg.init_from is None:
        return None
    manifest = Manifest.load(cfg.init_from / "manifest.json")
    entry = next((c for c in manifest.components if c.name == label), None)
    if entry is None:
        raise ValueError(f"--init-from {cfg.init_from}: the manifest has no {label}")
    if cfg.horizon is not None and entry.horizon_min != cfg.horizon:
        raise ValueError(f"--init-from: {label} forecasts {entry.horizon_min} min ahead, not --horizon {cfg.horizon}")
    load_onnx_weights(model, cfg.init_from / entry.file)
    tr = entry.training
    log.info("%s: starting from %s %s (%s samples)", label, entry.file, entry.version, tr.get("samples"))
    return {
        "history": [],
        "validation": dict(entry.validation),
        "train_seconds": float(tr.get("seconds") or 0.0),
        "train_samples": int(tr.get("samples") or 0),
        "val_samples": int(entry.validation.get("n") or 0),
        "train_span": [iso_ms(tr["span"][0]), iso_ms(tr["span"][1])],
        "val_span": [iso_ms(tr["validation_span"][0]), iso_ms(tr["validation_span"][1])],
        "sources": list(tr.get("sources", [])),
        "pretrained": {"from": f"{entry.file} {entry.version}"},
    }


def _loss(model: nn.Module, val: SampleSet, cfg: TrainConfig) -> float:
    logits = _predict(model, val.x, _device(cfg.device), cfg.batch_size * 2)
    return float(nn.BCEWithLogitsLoss()(torch.from_numpy(logits), torch.from_numpy(val.y)))


def _fine_tune(
    model: nn.Module,
    result: dict[str, Any],
    cfg: TrainConfig,
    kind: str,
    series: list[Series],
    tf: int,
    cuts: Cuts,
    label: str,
) -> dict[str, Any]:
    """Continue on the ``--fine-tune`` series at a tenth of the learning rate; keep the fine-tuned
    weights only if they lower the validation loss on those series."""
    assert cfg.fine_tune is not None
    chosen = [s for s in series if s.name.startswith(cfg.fine_tune)]
    if not chosen:
        raise ValueError(f"--fine-tune {cfg.fine_tune}: no series of that name in {cfg.data_dir}")
    train_cap, val_cap = _caps(cfg, kind)
    train = _samples(cfg, kind, chosen, tf, cuts, "train", train_cap)
    val = _samples(cfg, kind, chosen, tf, cuts, "val", val_cap)
    if not len(train) or not len(val):  # e.g. a 1h window is longer than those series' training span
        why = f"{len(train)} training and {len(val)} validation samples on {cfg.fine_tune}"
        log.warning("%s: no fine-tune (%s); the pre-trained weights stay", label, why)
        return result | {"fine_tune": {"series": [s.name for s in chosen], "kept": False, "skipped": why}}
    model.to(_device(cfg.device))
    before_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    before = _loss(model, val, cfg)
    tuned = fit(model, train, val, cfg, cfg.fine_tune_epochs, f"{label} fine-tune", lr=cfg.lr / 10)
    after = min(h["val_loss"] for h in tuned["history"])
    kept = after < before
    if not kept:
        model.load_state_dict(before_state)
    log.info(
        "%s fine-tune on %s: val loss %.5f -> %.5f (%s)",
        label,
        cfg.fine_tune,
        before,
        after,
        "kept" if kept else "discarded",
    )
    out = dict(result)
    out["fine_tune"] = {
        "series": [s.name for s in chosen],
        "samples": len(train),
        "val_samples": len(val),
        "epochs": len(tuned["history"]),
        "seconds": round(tuned["train_seconds"], 1),
        "val_loss_before": before,
        "val_loss_after": after,
        "kept": kept,
    }
    out["train_samples"] = int(result["train_samples"]) + len(train)
    out["train_seconds"] = float(result["train_seconds"]) + tuned["train_seconds"]
    out["train_span"] = [
        min(result["train_span"][0], tuned["train_span"][0]),
        max(result["train_span"][1], tuned["train_span"][1]),
    ]
    out["sources"] = sorted(set(result["sources"]) | set(tuned["sources"]))
    if kept:
        out["validation"] = tuned["validation"]
    model.to("cpu")
    return out
