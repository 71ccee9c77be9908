"""``candlecast train``: fit the TCNs (one per timeframe) and one shared EfficientNet on history.

Seeded, CUDA when present and the CPU otherwise (``--device`` chooses), AdamW with a cosine schedule, early stopping
on validation loss, progress bars. Writes checkpoints and their metrics to ``--work``; ``candlecast
export`` turns them into ONNX artifacts and the manifest.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from models.datasets import (
    IMAGE_BARS,
    IMAGE_HEIGHT,
    TCN_LENGTH,
    TIMEFRAMES,
    Cuts,
    SampleSet,
    build_image_samples,
    build_tcn_samples,
    series_for_timeframe,
)
from models.efficientnet import efficientnet
from models.tcn import TCN

__all__ = ["TrainConfig", "train_all"]

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
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    cfg.work_dir.mkdir(parents=True, exist_ok=True)
    cuts = Cuts()
    summary: dict[str, Any] = {"config": {k: str(v) for k, v in asdict(cfg).items()}, "cuts": asdict(cuts)}
    image_train: list[SampleSet] = []
    image_val: list[SampleSet] = []
    for tf in cfg.timeframes:
        series = series_for_timeframe(cfg.data_dir, tf)
        if "tcn" in cfg.models:
            train = build_tcn_samples(series, cuts, "train", cfg.tcn_train_cap, cfg.seed)
            val = build_tcn_samples(series, cuts, "val", cfg.tcn_val_cap, cfg.seed)
            log.info("tcn %dm: %d train / %d val samples from %d series", tf, len(train), len(val), len(series))
            torch.manual_seed(cfg.seed)
            model = TCN(in_channels=train.x.shape[1])
            result = fit(model, train, val, cfg, cfg.tcn_epochs, f"tcn_{tf}m")
            result["config"] = {"in_channels": int(train.x.shape[1]), "length": TCN_LENGTH}
            torch.save({"state_dict": model.state_dict(), "result": result}, cfg.work_dir / f"tcn_{tf}m.pt")
            summary[f"tcn_{tf}m"] = {k: v for k, v in result.items() if k != "history"}
        if "efficientnet" in cfg.models:
            image_train.append(build_image_samples(series, cuts, "train", cfg.image_train_cap, cfg.seed))
            image_val.append(build_image_samples(series, cuts, "val", cfg.image_val_cap, cfg.seed))
    if "efficientnet" in cfg.models:
        train = _concat(image_train)
        val = _concat(image_val)
        log.info("efficientnet: %d train / %d val images", len(train), len(val))
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
            "efficientnet",
            lr=cfg.image_lr,
            batch_size=cfg.image_batch_size,
        )
        result["config"] = {
            "variant": cfg.efficientnet_variant,
            "in_channels": 3,
            "stem_stride": 2,
            "height": IMAGE_HEIGHT,
            "bars": IMAGE_BARS,
        }
        torch.save({"state_dict": image_model.state_dict(), "result": result}, cfg.work_dir / "efficientnet.pt")
        summary["efficientnet"] = {k: v for k, v in result.items() if k != "history"}
    (cfg.work_dir / "train_summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


def _concat(sets: list[SampleSet]) -> SampleSet:
    return SampleSet(
        x=np.concatenate([s.x for s in sets]),
        y=np.concatenate([s.y for s in sets]),
        span=(min(s.span[0] for s in sets if len(s)), max(s.span[1] for s in sets if len(s))),
        sources=[n for s in sets for n in s.sources],
    )
