"""MODEL_CARD.md, generated from the manifest (and, when given, the walk-forward report): no torch.

It opens with the comparison table on the held-out bars (``candlecast evaluate``'s report.json),
then says how the ensemble was fitted and what each component earned, then lists the components.
Numbers are copied as measured; nothing here is tuned or rounded up.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from inference.manifest import Component, EnsembleSpec, Manifest

__all__ = ["comparison_table", "model_card"]

TABLE = [
    ("n", "bars"),
    ("coverage", "coverage"),
    ("accuracy_moved", "accuracy, moved bars"),
    ("accuracy_ci", "95 % CI"),
    ("majority_moved", "majority"),
    ("brier_skill", "Brier skill"),
    ("return_taker", "return after taker, per symbol"),
    ("return_maker", "after maker"),
    ("sharpe", "Sharpe"),
    ("max_drawdown", "max DD"),
    ("trades", "trades"),
    ("inference_ms", "inference ms"),
]
# From the manifest entry of a component row (the other strategies have none).
TRAINING = [("seconds", "train s"), ("parity_max_abs_diff", "ONNX parity")]


def _fmt(key: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if isinstance(v, list):
        return "[" + ", ".join(_fmt(key, x) for x in v) + "]"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if key.startswith("return") or key == "max_drawdown":
        return f"{v * 100:+.2f} %" if key.startswith("return") else f"{v * 100:.1f} %"
    if key in ("coverage",):
        return f"{v:.3f}"
    if key == "sharpe":
        return f"{v:.1f}"
    if key == "inference_ms":
        return f"{v:.2f}"
    if key == "seconds":
        return f"{v:,.0f}"
    if key == "parity_max_abs_diff":
        return f"{v:.1e}"
    return f"{v:.4f}" if key != "accuracy_ci" else f"{v:.3f}"


def comparison_table(report: dict[str, dict[str, Any]], manifest: Manifest | None = None) -> list[str]:
    """The markdown rows of the strategy comparison (the README shows the same table); with the
    manifest, each component's training seconds and ONNX parity too."""
    columns = TABLE + (TRAINING if manifest is not None else [])
    training = {c.name: c.training for c in manifest.components} if manifest is not None else {}
    lines = [
        "| strategy | " + " | ".join(label for _, label in columns) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for name, m in report.items():
        row = m | {k: v for k, v in training.get(name, {}).items() if k in dict(TRAINING)}
        lines.append(f"| {name} | " + " | ".join(_fmt(k, row.get(k)) for k, _ in columns) + " |")
    return lines


def model_card(manifest: Manifest, evaluation: Path | None = None) -> str:
    lines = ["# candlecast models", ""]
    spec = manifest.ensemble
    if evaluation is not None and (evaluation / "report.json").exists():
        report = json.loads((evaluation / "report.json").read_text())
        meta = json.loads((evaluation / "meta.json").read_text())
        lines += [
            f"## Held-out comparison ({meta['span'][0]} → {meta['span'][1]}, {len(meta['files'])} Bybit linear 1m"
            f" series, H = {meta['horizon_minutes']} min)",
            "",
            "Measured by `candlecast evaluate` on bars after the test cut, never used to fit or choose anything."
            " The ensemble trades only its `tradeable` calls (edge above the round-trip cost); accuracy counts"
            " every long/short call. `majority` always guesses the commoner outcome of these bars (hindsight).",
            "",
            *comparison_table(report, manifest),
            "",
            *_depth_rows_note(report, manifest),
        ]
    if spec is not None:
        f = spec.fitted
        half = f.get("calibration_half", {})
        lines += [
            "## The ensemble",
            "",
            f"Question: is the log return over the next {spec.horizon_minutes} min positive? Stacked by an L2"
            f" logistic regression on the components' logits over {f.get('stack_span', ['?', '?'])[0][:10]} →"
            f" {f.get('stack_span', ['?', '?'])[1][:10]} ({f.get('samples', {}).get('stack')} Bybit bars that moved),"
            f" Platt-calibrated (a = {spec.calibration['a']:.4f}, b = {spec.calibration['b']:.4f}) and thresholded on"
            f" {f.get('calibration_span', ['?', '?'])[0][:10]} → {f.get('calibration_span', ['?', '?'])[1][:10]}:"
            f" long at P(up) ≥ {spec.threshold}, short at ≤ {1 - spec.threshold:.4f}. On that half: coverage"
            f" {half.get('coverage', float('nan')):.3f}, accuracy {half.get('accuracy_moved', float('nan')):.4f}"
            f" (majority {half.get('majority_moved', float('nan')):.4f}), Brier skill"
            f" {half.get('brier_skill', float('nan')):.5f} (in-sample for the threshold: read the held-out table).",
            _magnitude_line(spec),
            "",
            "| component | stacker weight | validation accuracy (moved) | validation Brier skill |",
            "|---|---|---|---|",
        ]
        for name, c in f.get("components", {}).items():
            lines.append(f"| {name} | {c['weight']:+.4f} | {c['accuracy_moved']:.4f} | {c['brier_skill']:+.5f} |")
        comps = f.get("components", {})
        unskilled = [n for n, c in comps.items() if not c["brier_skill"] > 0]
        lines += [
            "",
            (f"Without Brier skill on their own on the calibration half: {', '.join(unskilled)}. " if unskilled else "")
            + "The stacker's weights are what each component earned together with the others on the stacking"
            " half; a negative weight means a component was reliably wrong there and is used contrarian.",
            "",
        ]
    lines += [
        "## Components",
        "",
        f"Manifest {manifest.created}. {manifest.notes}",
        "",
        "| component | family | variant | input | horizon (min) | train samples | train span | train s | fine-tune"
        " | validation |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in manifest.components:
        t, v = c.training, c.validation
        acc = v.get("accuracy_moved", v.get("accuracy"))
        lines.append(
            f"| {c.name} | {c.family or c.kind} | {_variant(c)} | {_input(c)} | {c.horizon_min} |"
            f" {t.get('samples')} |"
            f" {t['span'][0][:10]} → {t['span'][1][:10]} | {t.get('seconds')} | {_fine_tune(t)} | accuracy {acc} |"
        )
    lines += [
        "",
        "TCNs read 64 bars of indicator set v1, the EfficientNet-B0 (from scratch, shared by all timeframes)"
        " 24-bar chart composites, the linear component 241 bars of feature set r1 (inference/linear_features.py)."
        " The seeds' zoo (models/zoo.py): the 1D, multi-scale and CNN-TA convolutional networks and the"
        " bidirectional LSTM read the TCN's sequences, the dense network the linear component's features,"
        " the CIPM network the 24-bar 54x72 OHLC image (inference/render.py ohlc_input), its two-layer variant"
        " that image over BTCUSDT's for the same minutes (ohlc_pair; BTCUSDT's own signal reads its image"
        " twice, another symbol's without BTCUSDT ingested drops it as `leader_not_ingested`); the dense network's"
        " and the 1D CNN's hyper-parameters were chosen by `candlecast tune` (training.hyperparameters)."
        " Training data: the real bars in ../shared/data, split by time (train before 2025-06-01, validation"
        " 06-01 → 06-15, test after). Components forecasting another horizon than the signal's are refused"
        " by the worker (`horizon_mismatch`). Artifacts are verified by sha256 at load. The failover ladder"
        " (seed 000): an EfficientNet-B3 runs only where its session binds a GPU provider, in the place and"
        " stacker slot of the B0 of its timeframe; on a CPU host, or when it fails on its GPU, the B0 serves,"
        " and with neither the rule; each signal says which (`ladder`). The stacker is fitted where `candlecast"
        " stack` runs, on the CPU: with the B0 in that slot. The B3 rows of the comparison ran on the CPU.",
        "",
    ]
    return "\n".join(lines)


def _input(c: Component) -> str:
    if c.kind == "book_cnn":
        return f"depth, {c.preprocessing.get('rows')} s"
    return f"{c.timeframe}m"


def _depth_rows_note(report: dict[str, dict[str, Any]], manifest: Manifest) -> list[str]:
    """What the depth components' rows are (bar files hold no depth), and why they are off by default."""
    lines = []
    for c in manifest.components:
        row = report.get(c.name)
        if c.kind != "book_cnn" or row is None:
            continue
        t = c.training
        every = (
            f" Asked every second of that span instead ({row['every_second_n']} overlapping asks on bars that"
            f" moved, up {row['every_second_up_rate']:.3f} of the time): accuracy {row['every_second_accuracy']:.4f},"
            f" Brier {row['every_second_brier']:.4f}."
            if "every_second_n" in row
            else ""
        )
        lines += [
            f"`{c.name}` (seed 000 §4.3, the order-book heatmap CNN) is scored on recorded depth, not on these"
            f" bars: {len(t.get('recordings', {}))} depth recordings ({', '.join(t.get('recordings', {}))}),"
            f" {t.get('recorded_minutes')} minutes in all, each split by time (60 % train, 20 % validation,"
            f" 20 % held out); its row is the held-out 20 % asked at each minute close, as serving asks"
            f" ({row.get('n')} calls).{every} **Off by default** (`opt_in`): {c.opt_in}; an operator who wants"
            f" to watch it sets `CANDLECAST_MODEL_OPT_IN={c.name}` (it then reports a vote, with no stacker weight).",
            "",
        ]
    return lines


def _variant(c: Component) -> str:
    base = c.variant or "-"
    return f"{base}, stands in for {c.stands_in_for} where a GPU binds" if c.stands_in_for else base


def _fine_tune(training: dict[str, Any]) -> str:
    """The fine-tune pass of a component (``candlecast train --fine-tune``), in a few words."""
    ft = training.get("fine_tune")
    if not isinstance(ft, dict):
        return "-"
    if "skipped" in ft:
        return f"none ({ft['skipped']})"
    verdict = "kept" if ft.get("kept") else "discarded"
    return (
        f"{ft.get('samples')} Bybit samples, val loss {ft.get('val_loss_before', float('nan')):.5f}"
        f" → {ft.get('val_loss_after', float('nan')):.5f}: {verdict}"
    )


def _magnitude_line(spec: EnsembleSpec) -> str:
    """Where the expected move and volatility come from, and the validation QLIKE that chose it."""
    vol = spec.fitted.get("volatility", {})
    scores = ", ".join(
        f"{label} {vol[key]:.4f}"
        for key, label in (
            ("qlike_heads", "the heads' mean"),
            ("qlike_ewma", "the EWMA"),
            ("qlike_stack", "the stacker"),
        )
        if isinstance(vol.get(key), float) and math.isfinite(vol[key])
    )
    line = f"Expected move and volatility: `{spec.magnitude}` (QLIKE on the calibration half, lower wins: {scores})."
    if spec.volatility is not None:
        v = spec.volatility
        terms = "".join(f" {w:+.3f}·ln V_{name}" for name, w in v.weights.items())
        line += (
            f" The volatility stacker: ln V = {v.intercept:+.3f} {v.ewma:+.3f}·ln V_ewma{terms}"
            f" (a head that did not vote reads as the EWMA); E|move| = {v.move_per_vol:.3f}·√V."
        )
    return line
