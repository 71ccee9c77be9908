"""``candlecast export``: trained checkpoints ⇒ ONNX artifacts + manifest + model card.

Each model is exported with a dynamic batch axis, checked with ``onnx.checker``, and run under ONNX
Runtime (CPU) beside PyTorch on REAL validation inputs built by the shared feature and rendering
code: any difference above 1e-4 fails the export. Validation metrics per timeframe are computed
with the ONNX session, i.e. with exactly what the worker will run.
"""

from __future__ import annotations

import datetime as dt
import logging
import warnings
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn
from torch.jit._trace import TracerWarning

from inference.features import FEATURE_NAMES, FEATURE_SET_VERSION, WARMUP_BARS
from inference.linear_features import LINEAR_BARS, LINEAR_FEATURES, LINEAR_SET_VERSION
from inference.manifest import Component, Manifest, sha256_file
from inference.render import RENDERER_VERSION
from models.book import export_book
from models.card import model_card
from models.datasets import (
    IMAGE_BARS,
    IMAGE_HEIGHT,
    LEADER,
    TIMEFRAMES,
    Cuts,
    SampleSet,
    build_image_samples,
    build_tcn_samples,
    build_view_samples,
    series_for_timeframe,
)
from models.efficientnet import efficientnet
from models.tcn import TCN
from models.train import image_checkpoint
from models.zoo import CIPM, FAMILIES, ZOO, zoo_input, zoo_model

__all__ = ["ExportError", "export_all", "export_onnx"]

log = logging.getLogger(__name__)
PARITY_TOLERANCE = 1e-4


class ExportError(Exception):
    """An export failed a check (ONNX checker, or ONNX Runtime vs PyTorch parity)."""


def export_onnx(model: nn.Module, example: np.ndarray, path: Path) -> None:
    """Export with a dynamic batch axis and run the full ``onnx.checker``."""
    model.eval()
    # The TorchScript exporter: deterministic, quick, and exact for these plain conv nets under the
    # pinned torch 2.13. It announces its deprecation on every call; that notice is expected here. So
    # is the tracer's warning on nn.LSTM's own input-size check (a constant here): a trace that would
    # not generalise is caught by the parity check, run at other batch sizes than the example's.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", TracerWarning)
        # said of every recurrent layer, whatever its states; the parity check runs other batch sizes
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        torch.onnx.export(
            model,
            (torch.from_numpy(example),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def _parity(model: nn.Module, path: Path, x: np.ndarray) -> tuple[np.ndarray, float]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    onnx_out = np.concatenate([session.run(None, {"input": x[i : i + 256]})[0] for i in range(0, len(x), 256)])
    with torch.no_grad():
        torch_out = np.concatenate([model(torch.from_numpy(x[i : i + 256])).numpy() for i in range(0, len(x), 256)])
    diff = float(np.max(np.abs(onnx_out - torch_out))) if len(x) else 0.0
    if not diff <= PARITY_TOLERANCE:
        raise ExportError(f"{path.name}: ONNX Runtime differs from PyTorch by {diff:.2e} > {PARITY_TOLERANCE}")
    return onnx_out.reshape(-1), diff


def _val_metrics(logits: np.ndarray, y: np.ndarray) -> dict[str, float]:
    p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
    return {
        "n": len(y),
        "accuracy": round(float(((p >= 0.5) == (y > 0.5)).mean()), 4),
        "brier": round(float(((p - y) ** 2).mean()), 5),
        "base_rate_up": round(float(y.mean()), 4),
    }


def export_all(
    work_dir: Path,
    out_dir: Path,
    data_dir: Path,
    version: str | None = None,
    *,
    tcn_check_samples: int = 10_000,
    image_check_samples: int = 2_000,
) -> Manifest:
    """Export every checkpoint in ``work_dir``; parity and validation metrics use real validation inputs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    version = version or dt.datetime.now(dt.UTC).strftime("%Y.%m.%d")
    cuts = Cuts()
    components: list[Component] = []
    bases = series_for_timeframe(data_dir, 1)

    def validation(kind: str, tf: int, horizon: int | None, n: int) -> SampleSet:
        """Real validation inputs labelled as the checkpoint was trained (its H, or its next bar)."""
        if horizon is not None:
            return build_view_samples(kind, bases, tf, cuts, "val", n, horizon, seed=1)
        series = series_for_timeframe(data_dir, tf)
        build = build_tcn_samples if kind == "tcn" else build_image_samples  # (the zoo needs --horizon)
        return build(series, cuts, "val", n, seed=1)

    for ckpt, kind, tf in _checkpoints(work_dir):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        result = state["result"]
        h = result.get("horizon_minutes")
        model = TCN(in_channels=result["config"]["in_channels"]) if kind == "tcn" else _zoo(kind, result)
        model.load_state_dict(state["state_dict"])
        model.eval()
        samples = zoo_input(kind)  # "tcn" for the TCN too
        val = validation(samples, tf, h, image_check_samples if samples in IMAGES else tcn_check_samples)
        path = out_dir / f"{ckpt.stem}.onnx"
        export_onnx(model, val.x[:1], path)
        logits, diff = _parity(model, path, val.x)
        log.info("%s exported: parity %.2e on %d real inputs", ckpt.stem, diff, len(val))
        family, variant = FAMILIES.get(kind, ("tcn", TCN_VARIANT))
        components.append(
            Component(
                name=ckpt.stem,
                kind=kind,
                family=family,
                variant=variant,
                timeframe=str(tf),
                version=version,
                file=path.name,
                sha256=sha256_file(path),
                input=_input(samples, result),
                output={"name": "logits", "shape": ["batch", 1], "meaning": _meaning(tf, h)},
                preprocessing=_preprocessing(samples, result),
                horizon=_horizon_text(tf, h),
                horizon_minutes=h or tf,
                training=_training(result, diff, cuts),
                validation=_val_metrics(logits, val.y),
            )
        )
    for variant in ("b0", "b3"):  # the ladder's rungs, each shared by all its timeframes
        if (work_dir / f"{image_checkpoint(variant)}.pt").exists():
            components += _export_image(work_dir, out_dir, variant, version, validation, cuts, image_check_samples)
    book = export_book(work_dir, out_dir, data_dir, version)  # the heatmap CNN, on recorded depth (opt-in)
    if book is not None:
        components.append(book)
    # Into an existing manifest: the re-exported components replace theirs, the others stay. Its
    # ensemble is dropped: the stacker was fitted on the old components (run `candlecast stack`);
    # unless only opt-in components came (they never vote in it): then it and its notes stay.
    kept: tuple[Component, ...] = ()
    old: Manifest | None = None
    if (out_dir / "manifest.json").exists():
        new = {c.name for c in components}
        old = Manifest.load(out_dir / "manifest.json")
        kept = tuple(c for c in old.components if c.name not in new)
        if kept:
            log.info("keeping %s from the existing manifest", ", ".join(c.name for c in kept))
    still_fitted = (
        old is not None
        and old.ensemble is not None
        and bool(components)
        and all(c.opt_in for c in components)
        and not {c.name for c in components} & set(old.ensemble.weights)  # none of them had a stacker weight
    )
    names = {c.name for c in (*components, *kept)}
    orphans = [c.name for c in components if c.stands_in_for and c.stands_in_for not in names]
    if orphans:  # a rung with nothing below it would be refused by every loader
        log.warning("not exported: %s (no component of theirs to stand in for)", ", ".join(orphans))
        components = [c for c in components if c.name not in orphans]
    manifest = Manifest(
        components=(*kept, *components) if still_fitted else (*components, *kept),
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        notes="Every component states the minutes ahead it forecasts (horizon_minutes); no ensemble is fitted"
        " yet: run `candlecast stack`.",
    )
    if still_fitted:
        assert old is not None
        log.info("only opt-in components exported: the fitted ensemble stays")
        manifest = replace(manifest, notes=old.notes, ensemble=old.ensemble, drift=old.drift)
    manifest.save(out_dir / "manifest.json")
    (out_dir / "MODEL_CARD.md").write_text(model_card(manifest))
    return manifest


IMAGES = ("ohlc", "ohlc_btc")  # the zoo's image sample kinds (the CIPM networks')
TCN_VARIANT = "4 dilated causal residual blocks (32, 32, 64, 64), k3, 64 bars"
_KINDS = ("tcn", *ZOO)


def _checkpoints(work_dir: Path) -> list[tuple[Path, str, int]]:
    """(checkpoint, kind, timeframe) of every ``<kind>_<tf>m.pt`` in ``work_dir``, by timeframe then kind."""
    found = []
    for path in work_dir.glob("*_*m.pt"):
        kind, _, tf = path.stem.rpartition("_")
        if kind in _KINDS and tf[:-1].isdigit():
            found.append((path, kind, int(tf[:-1])))
    return sorted(found, key=lambda f: (f[2], _KINDS.index(f[1])))


def _export_image(
    work_dir: Path,
    out_dir: Path,
    variant: str,
    version: str,
    validation: Callable[[str, int, int | None, int], SampleSet],
    cuts: Cuts,
    n: int,
) -> list[Component]:
    """One EfficientNet artifact and its component per timeframe; B3's stand in for B0's (the ladder)."""
    stem = image_checkpoint(variant)
    state = torch.load(work_dir / f"{stem}.pt", map_location="cpu", weights_only=False)
    result: dict[str, Any] = state["result"]
    cfg = result["config"]
    model = efficientnet(cfg["variant"], in_channels=3, num_classes=1, stem_stride=cfg["stem_stride"])
    model.load_state_dict(state["state_dict"])
    model.eval()
    path = out_dir / f"{stem}.onnx"
    export_onnx(model, np.zeros((1, 3, IMAGE_HEIGHT, 3 * IMAGE_BARS), np.float32), path)
    h = result.get("horizon_minutes")
    out = []
    for tf in cfg.get("timeframes", TIMEFRAMES):
        val = validation("image", tf, h, n)
        logits, diff = _parity(model, path, val.x)
        log.info("%s %dm: parity %.2e on %d real images", stem, tf, diff, len(val))
        below = f"{image_checkpoint('b0')}_{tf}m"
        out.append(
            Component(
                name=f"{stem}_{tf}m",
                kind="efficientnet",
                family="efficientnet",
                variant=str(cfg["variant"]),
                timeframe=str(tf),
                version=version,
                file=path.name,
                sha256=sha256_file(path),
                input={"name": "input", "shape": ["batch", 3, IMAGE_HEIGHT, 3 * IMAGE_BARS], "dtype": "float32"},
                output={"name": "logits", "shape": ["batch", 1], "meaning": _meaning(tf, h)},
                preprocessing={
                    "renderer": "composite",
                    "renderer_version": RENDERER_VERSION,
                    "height": IMAGE_HEIGHT,
                    "bars": IMAGE_BARS,
                    "channels": ["ohlc_chart/255", "volume_profile", "gasf(log close)"],
                },
                horizon=_horizon_text(tf, h),
                horizon_minutes=h or tf,
                training=_training(result, diff, cuts) | {"shared_by_timeframes": True},
                validation=_val_metrics(logits, val.y),
                stands_in_for="" if variant == "b0" else below,
            )
        )
    return out


def _zoo(kind: str, result: dict[str, Any]) -> nn.Module:
    cfg = result["config"]
    if kind in ("cipm", "cipm_btc"):  # the image size it was trained on
        return CIPM(int(cfg["in_channels"]), height=int(cfg["height"]), width=3 * int(cfg["bars"]))
    return zoo_model(kind, int(cfg["in_channels"]))


def _input(samples: str, result: dict[str, Any]) -> dict[str, Any]:
    if samples == "linear":
        return {"name": "input", "shape": ["batch", len(LINEAR_FEATURES)], "dtype": "float32"}
    if samples in IMAGES:
        cfg = result["config"]
        shape = ["batch", cfg["in_channels"], cfg["height"], 3 * cfg["bars"]]
        return {"name": "input", "shape": shape, "dtype": "float32"}
    return {"name": "input", "shape": ["batch", len(FEATURE_NAMES), result["config"]["length"]], "dtype": "float32"}


def _preprocessing(samples: str, result: dict[str, Any]) -> dict[str, Any]:
    """What serving computes for the model: the linear component's features, the OHLC image, or the
    TCN's sequences."""
    if samples == "linear":
        return {"features": LINEAR_SET_VERSION, "names": list(LINEAR_FEATURES), "bars_needed": LINEAR_BARS}
    if samples in IMAGES:
        cfg = result["config"]
        pre = {"renderer": "ohlc", "renderer_version": RENDERER_VERSION, "height": cfg["height"], "bars": cfg["bars"]}
        if samples == "ohlc":
            return pre | {"channels": ["ohlc_chart/255"]}
        # the leader's window: its bars for the same minutes, in the same store (serving reads it)
        return pre | {
            "renderer": "ohlc_pair",
            "leader": LEADER,
            "channels": ["ohlc_chart/255", f"{LEADER} ohlc_chart/255"],
        }
    length = int(result["config"]["length"])
    return {
        "features": FEATURE_SET_VERSION,
        "names": list(FEATURE_NAMES),
        "length": length,
        "warmup": WARMUP_BARS,
        "bars_needed": length + WARMUP_BARS,
    }


def _training(result: dict[str, Any], parity: float, cuts: Cuts) -> dict[str, Any]:
    def iso(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="minutes") if ms else ""

    return {
        "span": [iso(result["train_span"][0]), iso(result["train_span"][1])],
        "validation_span": [iso(result["val_span"][0]), iso(result["val_span"][1])],
        "train_cut": iso(cuts.train_end),
        "test_after": iso(cuts.val_end),
        "samples": result["train_samples"],
        "seconds": round(result["train_seconds"], 1),
        "sources": result["sources"],
        "parity_max_abs_diff": parity,
        **{k: result[k] for k in ("pretrained", "fine_tune", "hyperparameters") if k in result},
    }


def _horizon_text(tf: int, horizon: int | None) -> str:
    return f"next {tf}m bar" if horizon is None else f"log return over the next {horizon} min"


def _meaning(tf: int, horizon: int | None) -> str:
    if horizon is None:
        return "logit of P(next bar closes up)"
    return f"logit of P(log return over the next {horizon} min > 0), from the {tf}m window"
