"""The order-book heatmap CNN (seed 000 §4.3): trained on recorded depth, exported, scored held out.

It answers the signal's question (is the log return over the next H minutes positive?) from the
depth window the ingestor keeps: the last :data:`ROWS` one-second rows of the top :data:`BOOK_DEPTH`
levels a side, binned ±2 % around the mid (:mod:`streaming.depth`), drawn by serving's own
:func:`inference.render.book_heatmap` after serving's own check (:func:`inference.checks.depth_window`).
The data are what the project has: about 25 minutes of Binance BTCUSDT diff-depth recordings
(``../shared/data/orderbook``) and whatever ``candlecast record`` files are given. Each recording is
split by time: its first 60 % trains, the next 20 % validates, the last 20 % is held out.

That is far too little to conclude anything, so the component ships **opt-in** (the manifest's
``opt_in`` states why; ``CANDLECAST_MODEL_OPT_IN`` enables it) and the stacker never sees it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.components import LoadedComponent
from inference.decision import vote_report
from inference.manifest import Component, sha256_file
from inference.render import BOOK_BINS_PER_SIDE, RENDERER_VERSION
from inference.scoring import SIGN
from models.datasets import SampleSet
from models.depth_data import DepthSamples, DepthSeries, depth_samples, load_depth_series
from models.metrics import Part, strategy_report

__all__ = ["BOOK_NAME", "PREPROCESSING", "book_parts", "book_series", "export_book", "train_book"]

log = logging.getLogger(__name__)

BOOK_NAME = "book_cnn_1m"
ROWS = 64  # the seed's 64 consecutive snapshots
SAMPLE_MS = 1_000  # the ingestor's depth_sample_ms
MAX_GAP_MS = 5_000  # a slot's row may be this old (a silent book); older is a hole
BOOK_DEPTH = 50  # the ingestor's default book (orderbook.50)
WARMUP_MS = 30_000  # Binance diff streams carry no snapshot: let the book fill first
TRAIN_STRIDE_MS = 1_000
SPANS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
PREPROCESSING = {
    "renderer": "book_heatmap",
    "renderer_version": RENDERER_VERSION,
    "rows": ROWS,
    "sample_ms": SAMPLE_MS,
    "max_gap_ms": MAX_GAP_MS,
    "book_depth": BOOK_DEPTH,
    "bins_per_side": BOOK_BINS_PER_SIDE,
    "band": 0.02,
}


def book_series(
    data_dir: Path, recordings: tuple[Path, ...] = (), trained: dict[str, Any] | None = None
) -> list[DepthSeries]:
    """The depth recordings as rows; with ``trained`` (a component's ``training.recordings``), only
    those it was trained on, cut to the rows it saw, so its 60/20/20 split is the same one."""
    series = load_depth_series(data_dir, BOOK_DEPTH, SAMPLE_MS, WARMUP_MS, recordings)
    if trained is None:
        return series
    out = []
    for s in series:
        seen = trained.get(s.name)
        if not isinstance(seen, dict):
            log.info("%s: not among the recordings %s was trained on; left out", s.name, BOOK_NAME)
            continue
        rows = [r for r in s.rows if seen["first_ms"] <= r.ts <= seen["last_ms"]]
        if len(rows) != seen["rows"]:
            raise ValueError(f"{s.name}: {len(rows)} rows where {BOOK_NAME} was trained on {seen['rows']}")
        out.append(DepthSeries(s.name, rows))
    missing = sorted(set(trained) - {s.name for s in out})
    if missing:
        raise ValueError(f"{BOOK_NAME} was trained on {', '.join(missing)}: not found")
    return out


def _samples(series: list[DepthSeries], part: str, horizon: int, stride_ms: int = TRAIN_STRIDE_MS) -> DepthSamples:
    return depth_samples(
        series,
        rows=ROWS,
        sample_ms=SAMPLE_MS,
        max_gap_ms=MAX_GAP_MS,
        horizon=horizon,
        stride_ms=stride_ms,
        span=SPANS[part],
    )


def _moved_set(d: DepthSamples) -> SampleSet:
    keep = d.log_r != 0  # unchanged mids are neither up nor down
    times = d.times[keep]
    span = (int(times.min()), int(times.max())) if len(times) else (0, 0)
    return SampleSet(d.x[keep], (d.log_r[keep] > 0).astype(np.float32), span, sorted(set(d.series)), times)


def train_book(
    data_dir: Path, work_dir: Path, horizon: int, recordings: tuple[Path, ...], fit_config: Any, epochs: int
) -> dict[str, Any]:
    """Fit the heatmap CNN (``models.train.fit``: AdamW, cosine, best validation loss kept); its
    checkpoint goes to ``work_dir/book_cnn_1m.pt``."""
    import torch  # training only: evaluate reads this module without torch

    from models.train import fit  # models.train imports this module for `train --models book_cnn`
    from models.zoo import BookCNN

    series = book_series(data_dir, recordings)
    if not series:
        raise ValueError(f"book_cnn: no depth recordings under {data_dir / 'orderbook'} or in --depth-recordings")
    train, val = (_moved_set(_samples(series, part, horizon)) for part in ("train", "val"))
    log.info("%s: %d train / %d val samples from %d recordings", BOOK_NAME, len(train), len(val), len(series))
    torch.manual_seed(fit_config.seed)
    model = BookCNN()
    result = fit(model, train, val, fit_config, epochs, BOOK_NAME)
    minutes = sum((s.rows[-1].ts - s.rows[0].ts) / 60_000 for s in series)
    result |= {
        "config": {"kind": "book_cnn", "rows": ROWS},
        "horizon_minutes": horizon,
        "recordings": {
            s.name: {"rows": len(s.rows), "first_ms": s.rows[0].ts, "last_ms": s.rows[-1].ts} for s in series
        },
        "recorded_minutes": round(minutes, 1),
        "recording_files": [str(p) for p in recordings],
    }
    torch.save({"state_dict": model.state_dict(), "result": result}, work_dir / f"{BOOK_NAME}.pt")
    return {k: v for k, v in result.items() if k != "history"}


def export_book(work_dir: Path, out_dir: Path, data_dir: Path, version: str) -> Component | None:
    """The heatmap CNN's artifact and opt-in component, after the parity check on validation heatmaps."""
    import torch

    from models.export import _parity, _val_metrics, export_onnx  # torch-side helpers shared by every export
    from models.zoo import BookCNN

    ckpt = work_dir / f"{BOOK_NAME}.pt"
    if not ckpt.exists():
        return None
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    result: dict[str, Any] = state["result"]
    h = int(result["horizon_minutes"])
    model = BookCNN()
    model.load_state_dict(state["state_dict"])
    model.eval()
    files = tuple(Path(p) for p in result.get("recording_files", []))
    series = book_series(data_dir, files, result["recordings"])
    val = _moved_set(_samples(series, "val", h))
    path = out_dir / f"{BOOK_NAME}.onnx"
    export_onnx(model, val.x[:1], path)
    logits, diff = _parity(model, path, val.x)
    log.info("%s exported: parity %.2e on %d validation heatmaps", BOOK_NAME, diff, len(val))

    def iso(ms: int) -> str:
        return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds") if ms else ""

    samples = int(result["train_samples"])
    return Component(
        name=BOOK_NAME,
        kind="book_cnn",
        family="cnn",
        variant="order-book heatmap 2d (price bins x 64 s)",
        timeframe="1",
        version=version,
        file=path.name,
        sha256=sha256_file(path),
        input={"name": "input", "shape": ["batch", 1, 2 * BOOK_BINS_PER_SIDE, ROWS], "dtype": "float32"},
        output={
            "name": "logits",
            "shape": ["batch", 1],
            "meaning": f"logit of P(log return over the next {h} min > 0), from the last {ROWS} s of depth",
        },
        preprocessing=dict(PREPROCESSING),
        horizon=f"log return over the next {h} min",
        horizon_minutes=h,
        training={
            "span": [iso(result["train_span"][0]), iso(result["train_span"][1])],
            "validation_span": [iso(result["val_span"][0]), iso(result["val_span"][1])],
            "split": "each recording by time: 60 % train, 20 % validation, 20 % held out",
            "samples": samples,
            "seconds": round(result["train_seconds"], 1),
            "sources": result["sources"],
            "recordings": result["recordings"],  # each one's rows: the split is reproduced from them
            "recording_files": result["recording_files"],
            "recorded_minutes": result["recorded_minutes"],
            "parity_max_abs_diff": diff,
        },
        validation=_val_metrics(logits, val.y),
        weight=0.0,
        opt_in=(
            f"trained on {samples} overlapping one-second samples from {result['recorded_minutes']} minutes of"
            f" recorded depth (about {int(result['recorded_minutes'] * 0.6 / h)} independent {h}-minute"
            " outcomes): too few to conclude anything"
        ),
    )


def book_parts(c: LoadedComponent, series: list[DepthSeries], horizon: int, threshold: float) -> list[Part]:
    """The component's calls on the held-out 20 % of each recording, asked at each minute close as
    serving asks (one call every ``horizon`` minutes), built and run by serving's code."""
    assert c.session is not None
    d = _samples(series, "test", horizon, stride_ms=horizon * 60_000)
    parts = []
    for name in sorted(set(d.series)):
        idx = np.flatnonzero(np.array(d.series) == name)
        rows = np.asarray(c.session.run(d.x[idx]), np.float64).reshape(len(idx), -1)
        p = np.full(len(idx), np.nan)
        for k in range(len(idx)):
            report = vote_report(c, rows[k], "", None)
            if report is not None and report.p_up is not None:
                p[k] = report.p_up
        call: npt.NDArray[np.int8] = np.where(p >= threshold, SIGN["long"], 0).astype(np.int8)
        call = np.where(p <= 1 - threshold, SIGN["short"], call).astype(np.int8)
        r = np.expm1(d.log_r[idx])
        nan = np.full(len(idx), np.nan)
        bar_start = d.times[idx] - 60_000  # asked at the close of this 1m bar
        parts.append(Part(name, bar_start, bar_start // 86_400_000, p, call, call, r, nan, nan, nan))
    return parts


def book_report(
    c: LoadedComponent, series: list[DepthSeries], horizon: int, threshold: float
) -> tuple[dict[str, Any], list[Part]]:
    """``strategy_report`` of :func:`book_parts` (just ``n = 0`` when the held-out span has no call),
    and the parts themselves, for ``predictions.csv.gz``."""
    started = time.perf_counter()
    parts = book_parts(c, series, horizon, threshold)
    ms = (time.perf_counter() - started) * 1e3 / max(1, sum(len(p.r) for p in parts))  # window + heatmap + run
    if not parts:
        return {"n": 0, "small_sample": True, "data": "no held-out minute close in the depth recordings"}, parts
    out = strategy_report(parts, horizon) | {
        "data": "held-out 20 % of the depth recordings, one call a minute",
        "inference_ms": ms,
    }
    # the same span asked every second (overlapping outcomes, far from independent): more figures, no more evidence
    dense = _moved_set(_samples(series, "test", horizon))
    if len(dense):
        logits = np.asarray(c.session.run(dense.x), np.float64).reshape(-1) if c.session is not None else np.zeros(0)
        p = 1.0 / (1.0 + np.exp(-logits))
        out |= {
            "every_second_n": len(dense),
            "every_second_accuracy": float(np.mean((p >= 0.5) == (dense.y > 0.5))),
            "every_second_up_rate": float(dense.y.mean()),
            "every_second_brier": float(np.mean((p - dense.y) ** 2)),
        }
    return out, parts
