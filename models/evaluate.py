"""``candlecast evaluate``: the shipped models, walk-forward, on bars they never saw.

Every component runs through ONNX Runtime on inputs built by the same ``inference`` feature and
rendering code as serving. Only samples whose whole input window starts at or after the manifest's
``test_after`` time are used (nothing of them was seen in training or validation).

Strategies (one object each in report.json):

* each component, on its own timeframe: it predicts the next bar of that timeframe;
* ``ensemble``, on the finest timeframe present (1m for 1m files): at each bar close the weighted
  mean of every component's latest P(up) — a 1h component contributes its forecast made at the
  last closed hour — mapped to long / short / flat by the thresholds;
* ``fallback``: the momentum rule of ``inference.fallback`` on the same bars, read as serving reads
  it: at each close, the score of the last 15 closed 1h bars (p_up 1/0/0.5 by its direction);
* ``buy_and_hold``: always long (p_up = 1).
"""

from __future__ import annotations

import csv
import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import onnxruntime as ort

from inference.ensemble import Thresholds
from inference.fallback import FALLBACK_BARS, FALLBACK_INTERVAL, momentum_direction, momentum_score
from inference.features import WARMUP_BARS, tcn_input
from inference.manifest import Component, Manifest
from inference.render import composite
from models.data import MINUTE_MS, Series, aggregate, load_series, next_returns, sample_ends
from models.metrics import strategy_metrics

__all__ = ["EvaluateConfig", "evaluate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    files: tuple[Path, ...]
    out_dir: Path
    artifacts: Path
    thresholds: Thresholds = field(default_factory=Thresholds)  # serving thresholds, on score = 2·P(up) - 1


Parts = list[tuple[npt.NDArray[np.float64], npt.NDArray[np.int8], npt.NDArray[np.float64]]]


def _hourly_momentum(base: Series, close_time: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The rule's score at each ``close_time`` from the 1h bars closed by then (NaN where the last
    15 of them are not 15 consecutive hours), as the serving engine computes it from its 1h window."""
    if int(FALLBACK_INTERVAL) % base.interval_min:
        log.warning(
            "%s: %dm bars cannot make the 1h closes the fallback rule reads: it stays flat",
            base.name,
            base.interval_min,
        )
        return np.full(len(close_time), np.nan)
    hourly = aggregate(base, int(FALLBACK_INTERVAL))
    if len(hourly) < FALLBACK_BARS:
        return np.full(len(close_time), np.nan)
    step = int(FALLBACK_INTERVAL) * MINUTE_MS
    score = momentum_score(hourly.ohlcv[:, 3])
    span = np.full(len(hourly), -1, np.int64)  # start of bar t minus start of bar t-14
    span[FALLBACK_BARS - 1 :] = (
        hourly.start_ms[FALLBACK_BARS - 1 :] - hourly.start_ms[: len(hourly) - FALLBACK_BARS + 1]
    )
    score[span != (FALLBACK_BARS - 1) * step] = np.nan
    j = np.searchsorted(hourly.start_ms + step, close_time, side="right") - 1  # newest 1h bar closed by then
    out = np.where(j >= 0, score[np.maximum(j, 0)], np.nan)
    # serving refuses a 1h window whose newest bar is not the last one due (check_window: stale)
    current = (j >= 0) & (close_time < hourly.start_ms[np.maximum(j, 0)] + 2 * step)
    return np.where(current, out, np.nan)


def _directions(p: npt.NDArray[np.float64], cfg: EvaluateConfig) -> npt.NDArray[np.int8]:
    """Vectorised ``Thresholds.direction`` (the rule serving applies), on score = 2p - 1."""
    score = 2.0 * p - 1.0
    d = np.zeros(len(p), np.int8)
    d[score >= cfg.thresholds.long_above] = 1
    d[score <= -cfg.thresholds.short_below] = -1
    return d


def _inputs(component: Component, s: Series, ends: npt.NDArray[np.int64]) -> npt.NDArray[np.float32]:
    pre = component.preprocessing
    if component.kind == "tcn":
        length = int(pre["length"])
        need = int(pre.get("bars_needed", length + WARMUP_BARS))
        return np.stack([tcn_input(s.ohlcv[t - need + 1 : t + 1], length) for t in ends])
    bars, height = int(pre["bars"]), int(pre["height"])
    return np.stack([composite(s.ohlcv[t - bars + 1 : t + 1], height, bars) for t in ends])


def _need(component: Component) -> int:
    pre = component.preprocessing
    if component.kind == "tcn":
        return int(pre.get("bars_needed", int(pre["length"]) + WARMUP_BARS))
    return int(pre["bars"])


def _iso_ms(text: str) -> int:
    import datetime as dt

    return int(dt.datetime.fromisoformat(text).timestamp() * 1000)


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    manifest = Manifest.load(cfg.artifacts / "manifest.json")
    sessions: dict[str, ort.InferenceSession] = {}
    for c in manifest.components:
        path = manifest.verified_path(c, cfg.artifacts)  # every entry, even for a shared file
        if c.file not in sessions:
            sessions[c.file] = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    test_after = max(_iso_ms(c.training["test_after"]) for c in manifest.components)
    per_strategy: dict[str, Parts] = defaultdict(list)
    rows: list[tuple[str, str, int, float, int, float]] = []
    base_minutes = 0
    for path in cfg.files:
        base = load_series(path)
        if base_minutes and base.interval_min != base_minutes:
            raise ValueError(f"{path.name}: {base.interval_min}m bars; evaluate files of one interval at a time")
        base_minutes = base.interval_min
        latest: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]] = {}  # close time -> p_up
        for c in manifest.components:
            tf = int(c.timeframe)
            if tf % base.interval_min:
                continue
            s = aggregate(base, tf)
            need = _need(c)
            ends = sample_ends(s, need)
            ends = ends[s.start_ms[ends - need + 1] >= test_after]
            if not len(ends):
                continue
            x = _inputs(c, s, ends)
            session = sessions[c.file]
            logits = np.concatenate([session.run(None, {"input": x[i : i + 512]})[0] for i in range(0, len(x), 512)])
            p = 1.0 / (1.0 + np.exp(-logits.reshape(-1).astype(np.float64)))
            d = _directions(p, cfg)
            r = next_returns(s, ends)
            per_strategy[c.name].append((p, d, r))
            rows += [
                (c.name, s.name, int(s.start_ms[t]), float(pi), int(di), float(ri))
                for t, pi, di, ri in zip(ends, p, d, r, strict=True)
            ]
            latest[c.name] = (s.start_ms[ends] + tf * MINUTE_MS, p)
        ends = sample_ends(base, 15)
        ends = ends[base.start_ms[ends - 14] >= test_after]
        if not len(ends):
            log.warning("%s: no bars after %d to evaluate", path.name, test_after)
            continue
        close_time = base.start_ms[ends] + base.interval_min * MINUTE_MS
        r = next_returns(base, ends)
        weights = {c.name: c.weight for c in manifest.components}
        num = np.zeros(len(ends))
        den = np.zeros(len(ends))
        for name, (closes, p) in latest.items():
            j = np.searchsorted(closes, close_time, side="right") - 1  # latest forecast made by then
            ok = j >= 0
            # a forecast is only usable while its horizon has not passed
            tf = int(next(c.timeframe for c in manifest.components if c.name == name))
            ok &= close_time < closes[np.maximum(j, 0)] + tf * MINUTE_MS
            num[ok] += weights[name] * p[j[ok]]
            den[ok] += weights[name]
        have = den > 0
        p_ens = np.where(have, num / np.maximum(den, 1e-12), 0.5)
        d_ens = np.where(have, _directions(p_ens, cfg), 0).astype(np.int8)
        per_strategy["ensemble"].append((p_ens, d_ens, r))
        d_fb = momentum_direction(_hourly_momentum(base, close_time))
        p_fb = np.where(d_fb > 0, 1.0, np.where(d_fb < 0, 0.0, 0.5))
        per_strategy["fallback"].append((p_fb, d_fb, r))
        per_strategy["buy_and_hold"].append((np.ones(len(ends)), np.ones(len(ends), np.int8), r))
        for name, (pp, dd) in {
            "ensemble": (p_ens, d_ens),
            "fallback": (p_fb, d_fb),
            "buy_and_hold": (np.ones(len(ends)), np.ones(len(ends), np.int8)),
        }.items():
            rows += [
                (name, base.name, int(base.start_ms[t]), float(pi), int(di), float(ri))
                for t, pi, di, ri in zip(ends, pp, dd, r, strict=True)
            ]
    intervals = {c.name: int(c.timeframe) for c in manifest.components}
    report = {
        name: strategy_metrics(parts, intervals.get(name, base_minutes))
        for name, parts in sorted(
            per_strategy.items(), key=lambda kv: (kv[0] not in ("ensemble", "fallback", "buy_and_hold"), kv[0])
        )
    }
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    meta = {
        "files": [str(p) for p in cfg.files],
        "test_after_ms": test_after,
        "thresholds_on_score": [-cfg.thresholds.short_below, cfg.thresholds.long_above],
        "fee_per_side": 0.00055,
        "manifest_created": manifest.created,
    }
    # report.json: one object per strategy (undefined metrics are null); run parameters in meta.json
    (cfg.out_dir / "report.json").write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    (cfg.out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    with (cfg.out_dir / "predictions.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["strategy", "open_time_ms", "p_up", "direction", "realized_return", "series"])
        for name, series_name, t, pv, dv, ret in rows:
            w.writerow([name, t, repr(pv), dv, repr(ret), series_name])
    (cfg.out_dir / "report.md").write_text(_markdown(report, meta))
    _equity_png(per_strategy, cfg.out_dir / "equity.png")
    return {"meta": meta, "strategies": report}


def _json_safe(obj: Any) -> Any:
    """NaN (an undefined metric, e.g. precision with no up calls) becomes null: strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_json_safe(v) for v in obj]
    return obj


def _markdown(report: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    cols = [
        "n_predictions",
        "up_rate",
        "majority_accuracy",
        "accuracy",
        "accuracy_moved",
        "brier",
        "total_return",
        "sharpe",
        "max_drawdown",
        "win_rate",
        "profit_factor",
        "trades",
    ]
    lines = [
        "# Walk-forward evaluation",
        "",
        f"Files: {', '.join(Path(f).name for f in meta['files'])}. Only bars whose input windows start after the "
        f"models' test cut ({meta['test_after_ms']} ms). Taker fee 0.055 % a side. Thresholds on P(up): "
        f"short at or below score {meta['thresholds_on_score'][0]}, long at or above {meta['thresholds_on_score'][1]} "
        "(score = 2·P(up) - 1, as in serving).",
        "",
        "| strategy | " + " | ".join(cols) + " |",
        "|" + "---|" * (len(cols) + 1),
    ]
    for name, m in report.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(m[c]) for c in cols) + " |")
    lines += [
        "",
        "With several files (symbols), `total_return` is the mean of each series traded alone and",
        "`max_drawdown` the worst series; the equity curve chains the series in file order. Accuracy counts",
        'only bars with a call (P(up) not exactly 0.5); "up" means the next close is strictly higher;',
        "`majority_accuracy` (always guessing the commoner outcome) is the bar to beat, and",
        "`accuracy_moved` leaves out bars that closed unchanged. Sharpe and Sortino are annualised for the",
        "strategy's bar interval. In `predictions.csv`, `open_time_ms` is the bar at whose close the call",
        "is made and `realized_return` the return of the NEXT bar. Every number can be recomputed from it.",
        "",
    ]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return str(v)


def _equity_png(per_strategy: dict[str, Parts], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from models.metrics import net_returns

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    for name in ("ensemble", "fallback", "buy_and_hold"):
        parts = per_strategy.get(name)
        if parts:
            net = np.concatenate([net_returns(d, r) for _, d, r in parts])
            ax.plot(np.cumprod(1 + net), label=name)
    ax.set_xlabel("bar (finest timeframe, files concatenated)")
    ax.set_ylabel("equity (after fees)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
