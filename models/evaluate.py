"""``candlecast evaluate``: what the service would have served, on bars the models never saw.

The manifest is loaded by the worker's own loader (:func:`inference.components.load_model_set`),
each component's inputs are built by ``LoadedComponent.prepare`` and run by its ONNX session, and
every bar's call comes from :func:`inference.engine.decide` — the function the signal engine calls —
so a backtest is what would have been served (``tests/models/test_evaluate.py`` checks it against
the engine itself, bar for bar). Only bars whose whole 1m input window starts at or after the
manifest's ``test_after`` time are called (and, with ``--from``/``--until``, only those in that span:
the bars a live replay scored, say); a 5m, 15m or 1h component reads the window of its
timeframe serving holds at that 1m close (older bars in it are history, not outcomes), and does not
vote where serving would refuse that window.

The question is the signal's: will the log return over the next H minutes be positive (H =
``--horizon``, default the manifest's ensemble horizon)? Calls are made every H minutes, so held
positions never overlap. Strategies, on the same bars:

* ``ensemble``: the served call. Accuracy counts every long/short call; the position trades only
  ``tradeable`` calls (the edge clears the round-trip cost at the taker fee) and is flat otherwise;
* ``fallback``: the momentum rule on the 1h closes as serving reads them, trading its direction;
* ``buy_and_hold``: always long; ``majority``: always the commoner outcome of these bars (hindsight:
  the bar a model must beat, not a strategy one could run);
* each component that answers the question, alone: its P(up) through the same thresholds. A
  ladder's upper rung (EfficientNet-B3, served only where a GPU binds) is run here on the CPU for its
  own row; the ensemble is the one a CPU host serves, with the B0 in its slot.

See :mod:`models.metrics` for every figure. ``predictions.csv.gz`` (gzip: the plain CSV of five
series and twenty strategies is 60 MB) has one row per (strategy, bar):
``open_time_ms`` is the bar at whose close the call is made, ``direction`` the call, ``position`` what
was traded (the ensemble's tradeable calls), ``realized_return`` the simple return over the next H
minutes; an empty ``p_up`` means the strategy gives no probability. A depth component's rows are
its calls on the held-out part of the depth recordings (``series``: the recording), not these bars.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import io
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.components import DEPTH_KINDS, LoadedComponent, load_model_set
from inference.config import WorkerConfig
from inference.decision import decide, quorum_base, vote_report
from inference.fallback import FALLBACK_BARS, FALLBACK_INTERVAL, momentum_direction, momentum_score
from inference.linear_features import LINEAR_BARS
from inference.manifest import Manifest, ManifestError
from inference.runtime import ModelSession
from inference.scoring import SIGN
from models.book import book_report, book_series
from models.data import MINUTE_MS, Series, aggregate, horizon_ends, horizon_targets, load_series, view_ends
from models.datasets import LEADER
from models.linear import ewma_of_windows, iso_ms
from models.metrics import MAKER_FEE, TAKER_FEE, Part, equity_curve, strategy_report
from models.stack import component_outputs, leader_series, minute_bars_needed
from models.stack import voters as stack_voters

__all__ = ["EvaluateConfig", "evaluate"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvaluateConfig:
    files: tuple[Path, ...]
    out_dir: Path
    artifacts: Path
    horizon: int | None = None  # None: the manifest ensemble's, else 1
    fee_bp: float = TAKER_FEE * 1e4
    since_ms: int | None = None  # only calls at bars starting at or after this (ms), e.g. a live replay's span
    until_ms: int | None = None  # ... and at or before this
    data_dir: Path = Path("../shared/data")  # its orderbook/ recordings score the depth readers


def _hourly_momentum(base: Series, ends: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """The rule's score at the close of each 1m bar ``ends`` from the 1h window serving holds then
    (NaN where it would refuse it: the last 15 hours not consecutive, or the newest not the last due)."""
    if int(FALLBACK_INTERVAL) % base.interval_min:
        log.warning(
            "%s: %dm bars cannot make the 1h closes the fallback rule reads: it stays flat",
            base.name,
            base.interval_min,
        )
        return np.full(len(ends), np.nan)
    hourly = aggregate(base, int(FALLBACK_INTERVAL))
    j = view_ends(base, hourly, ends, FALLBACK_BARS)
    score = momentum_score(hourly.ohlcv[:, 3])
    return np.where(j >= 0, score[np.maximum(j, 0)] if len(score) else np.nan, np.nan)


def _outputs(
    c: LoadedComponent, s: Series, ends: npt.NDArray[np.int64], views: dict[int, Series], leader: Series | None
) -> tuple[npt.NDArray[np.float64], float]:
    """The component's output rows at each 1m close, and its mean ms per window (prepare + run)."""
    started = time.perf_counter()
    out = component_outputs(c, s, ends, views, leader)
    return out, (time.perf_counter() - started) * 1e3 / max(1, len(ends))


def gpu_rungs_on_cpu(
    components: tuple[LoadedComponent, ...], artifacts: Path, horizon: int
) -> dict[str, LoadedComponent]:
    """The ladder's upper rungs this CPU host does not serve (``gpu_not_bound``), each on a CPU session
    of its own (one per artifact), for their rows alone: what a GPU host's rung would answer."""
    sessions: dict[str, ModelSession] = {}
    out = {}
    for c in components:
        if c.disabled != "gpu_not_bound" or c.spec.horizon_min != horizon:
            continue
        if c.spec.file not in sessions:
            sessions[c.spec.file] = ModelSession(c.name, artifacts / c.spec.file, prefer_gpu=False, threads=2)
        out[c.name] = replace(c, session=sessions[c.spec.file], disabled=None, detail="")
    return out


def depth_readers(
    components: tuple[LoadedComponent, ...], manifest: Manifest, artifacts: Path, horizon: int
) -> dict[str, LoadedComponent]:
    """The components reading the depth window (the heatmap CNN), each on a CPU session of its own,
    opted in or not (its artifact verified as a loader would): bar files hold no depth, so they are
    scored on the recorded depth instead."""
    out = {}
    for c in components:
        if not c.reads_depth or c.spec.horizon_min != horizon or c.disabled not in (None, "opt_in_only"):
            continue
        path = manifest.verified_path(c.spec, artifacts)  # ManifestError: a backtest of other bytes
        out[c.name] = replace(c, session=ModelSession(c.name, path, prefer_gpu=False, threads=2), disabled=None)
    return out


def _why_not(c: LoadedComponent, horizon: int) -> str:
    if c.disabled is not None:
        return c.disabled
    return f"forecasts {c.spec.horizon_min} min ahead, not {horizon}"


def evaluate(cfg: EvaluateConfig) -> dict[str, Any]:
    manifest = Manifest.load(cfg.artifacts / "manifest.json")
    models = load_model_set(cfg.artifacts, prefer_gpu=False, threads=2)
    for c in models.components:
        # a backtest missing a component would report another service; a GPU rung is run below
        if c.disabled is not None and c.disabled not in ("gpu_not_bound", "opt_in_only"):
            raise ManifestError(c.detail or f"{c.name}: {c.disabled}")
    horizon = cfg.horizon or (manifest.ensemble.horizon_minutes if manifest.ensemble else 1)
    config = WorkerConfig(horizon_minutes=horizon, fee_bp=cfg.fee_bp)
    voters = stack_voters(models.components, horizon)
    rungs = gpu_rungs_on_cpu(models.components, cfg.artifacts, horizon)  # their own rows only
    books = depth_readers(models.components, manifest, cfg.artifacts, horizon)  # scored on recorded depth, below
    skipped = {
        c.name: _why_not(c, horizon)
        for c in models.components
        if c not in voters and c.name not in rungs and c.name not in books
    }
    test_after = max(iso_ms(c.training["test_after"]) for c in manifest.components if c.kind not in DEPTH_KINDS)
    need = minute_bars_needed(voters)
    quorum_of = quorum_base(voters, models.ensemble, horizon)
    parts: dict[str, list[Part]] = defaultdict(list)
    rows: list[tuple[str, str, int, float, int, int, float]] = []
    inference_ms: dict[str, list[float]] = defaultdict(list)
    for k, path in enumerate(cfg.files, 1):
        base = load_series(path)
        if base.interval_min != 1:
            raise ValueError(f"{path.name}: {base.interval_min}m bars; evaluate reads 1m bar files")
        ends = horizon_ends(base, need, horizon)
        ends = ends[base.start_ms[ends - need + 1] >= test_after]
        ends = ends[(base.start_ms[ends] // MINUTE_MS) % horizon == 0]  # one call every H minutes
        if cfg.since_ms is not None:
            ends = ends[base.start_ms[ends] >= cfg.since_ms]
        if cfg.until_ms is not None:
            ends = ends[base.start_ms[ends] <= cfg.until_ms]
        if not len(ends):
            log.warning("%s: no bars after the test cut to evaluate", path.name)
            continue
        print(f"[{k}/{len(cfg.files)}] {base.name}: {len(ends):,} bars", flush=True)
        log_r, var_real = horizon_targets(base, ends, horizon)
        r = np.expm1(log_r)  # the simple return a position earns over H
        day = (base.start_ms[ends] // 86_400_000).astype(np.int64)
        times = base.start_ms[ends]
        ewma = ewma_of_windows(base, ends, horizon)
        outs = {}
        views: dict[int, Series] = {}
        # the two-layer CIPM reads BTCUSDT's bars beside these
        lead = leader_series(path, base, LEADER) if any(c.leader for c in (*voters, *rungs.values())) else None
        for c in (*voters, *rungs.values()):
            outs[c.name], ms = _outputs(c, base, ends, views, lead)
            inference_ms[c.name].append(ms)
        closes = base.ohlcv[:, 3]
        p_ens = np.full(len(ends), np.nan)
        call = np.zeros(len(ends), np.int8)
        pos = np.zeros(len(ends), np.int8)
        vol_ens = np.full(len(ends), np.nan)
        alone_ = (*voters, *rungs.values())
        comp_p: dict[str, npt.NDArray[np.float64]] = {c.name: np.full(len(ends), np.nan) for c in alone_}
        comp_vol: dict[str, npt.NDArray[np.float64]] = {c.name: np.full(len(ends), np.nan) for c in alone_}
        for i, t in enumerate(ends.tolist()):
            for c in rungs.values():
                if (v := vote_report(c, outs[c.name][i], "", None)) is not None and v.p_up is not None:
                    comp_p[c.name][i] = v.p_up
            reports = [v for c in voters if (v := vote_report(c, outs[c.name][i], "", None)) is not None]
            for rep in reports:
                if rep.p_up is not None:
                    comp_p[rep.name][i] = rep.p_up
                if rep.volatility_bp is not None:
                    comp_vol[rep.name][i] = rep.volatility_bp
            result, money = decide(
                reports,
                models.ensemble,
                config,
                closes[t - LINEAR_BARS + 1 : t + 1].tolist(),
                quorum_of,  # the components answering H whose vote weighs, voting or not: the quorum's base
            )
            if money.volatility_bp is not None:
                vol_ens[i] = money.volatility_bp
            if result is None:
                continue
            p_ens[i] = result.p_up
            call[i] = SIGN[result.direction]
            pos[i] = call[i] if money.tradeable else 0
        parts["ensemble"].append(Part(base.name, times, day, p_ens, call, pos, r, var_real, vol_ens**2, ewma))
        d_fb = momentum_direction(_hourly_momentum(base, ends))
        nan = np.full(len(ends), np.nan)
        parts["fallback"].append(Part(base.name, times, day, nan, d_fb, d_fb, r, var_real, nan, ewma))
        ones = np.ones(len(ends), np.int8)
        parts["buy_and_hold"].append(Part(base.name, times, day, nan, ones, ones, r, var_real, nan, ewma))
        alone = models.ensemble.threshold if models.ensemble else 0.5 + config.thresholds.long_above / 2
        for c in alone_:
            p_c = comp_p[c.name]
            d_c = np.where(p_c >= alone, 1, 0)
            d_c = np.where(p_c <= 1 - alone, -1, d_c).astype(np.int8)
            parts[c.name].append(Part(base.name, times, day, p_c, d_c, d_c, r, var_real, comp_vol[c.name] ** 2, ewma))
    if not parts:
        raise ValueError("no bars after the test cut in the files given")
    up_share = float(np.mean(np.concatenate([p.r[p.r != 0] for p in parts["ensemble"]]) > 0))
    for p in parts["ensemble"]:
        side = np.full(len(p.r), 1 if up_share >= 0.5 else -1, np.int8)
        parts["majority"].append(
            Part(
                p.series,
                p.times,
                p.day,
                np.full(len(p.r), np.nan),
                side,
                side,
                p.r,
                p.var_real,
                np.full(len(p.r), np.nan),
                p.ewma,
            )
        )
    order = ["ensemble", "fallback", "buy_and_hold", "majority", *sorted(c.name for c in (*voters, *rungs.values()))]
    report = {name: strategy_report(parts[name], horizon) for name in order if name in parts}
    by_name = {c.name: c for c in manifest.components}
    for c in (*voters, *rungs.values()):
        report[c.name]["training_seconds"] = by_name[c.name].training.get("seconds")
        report[c.name]["inference_ms"] = float(np.mean(inference_ms[c.name]))
    if books:
        threshold = models.ensemble.threshold if models.ensemble else 0.5 + config.thresholds.long_above / 2
        for name, c in books.items():
            files = tuple(Path(p) for p in c.spec.training.get("recording_files", []))
            depth = book_series(cfg.data_dir, files, c.spec.training.get("recordings"))  # its own split
            report[name], parts[name] = book_report(c, depth, horizon, threshold)  # rows: its recordings'
            report[name]["training_seconds"] = c.spec.training.get("seconds")
    for name, ps in parts.items():
        for p in ps:
            rows += [
                (name, p.series, int(t), float(pv), int(dv), int(xv), float(rv))
                for t, pv, dv, xv, rv in zip(p.times, p.p_up, p.call, p.position, p.r, strict=True)
            ]
    all_times = np.concatenate([p.times for p in parts["ensemble"]])
    meta = {
        "files": [str(p) for p in cfg.files],
        "horizon_minutes": horizon,
        "test_after": dt.datetime.fromtimestamp(test_after / 1000, dt.UTC).isoformat(),
        "span": [_date(int(all_times.min())), _date(int(all_times.max()))],
        "fees": {"taker_per_side": TAKER_FEE, "maker_per_side": MAKER_FEE},
        "ensemble": None
        if models.ensemble is None
        else {"threshold": models.ensemble.threshold, "weights": models.ensemble.weights},
        "not_evaluated": skipped,
        "manifest_created": manifest.created,
    }
    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    (cfg.out_dir / "report.json").write_text(json.dumps(_json_safe(report), indent=2, allow_nan=False) + "\n")
    (cfg.out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (cfg.out_dir / "predictions.csv").unlink(missing_ok=True)  # the plain file an earlier version wrote
    # mtime 0: the same predictions give the same bytes
    with (
        gzip.GzipFile(cfg.out_dir / "predictions.csv.gz", "wb", mtime=0) as raw,
        io.TextIOWrapper(raw, newline="") as fh,
    ):
        w = csv.writer(fh)
        w.writerow(["strategy", "open_time_ms", "p_up", "direction", "position", "realized_return", "series"])
        for name, series_name, t, pv, dv, xv, ret in rows:
            w.writerow([name, t, "" if pv != pv else repr(pv), dv, xv, repr(ret), series_name])
    (cfg.out_dir / "report.md").write_text(_markdown(report, meta))
    _charts(parts, cfg.out_dir, horizon)
    print(f"wrote {cfg.out_dir}/: report.md, report.json, meta.json, predictions.csv.gz, equity.png, calibration.png")
    return {"meta": meta, "strategies": report}


def _date(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.UTC).date().isoformat()


def _json_safe(obj: Any) -> Any:
    """NaN (an undefined metric, e.g. precision with no up calls) becomes null: strict JSON."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_safe(v) for v in obj]
    return obj


COLUMNS = [
    ("n", "bars"),
    ("coverage", "coverage"),
    ("accuracy_moved", "accuracy (moved)"),
    ("accuracy_ci", "95 % CI"),
    ("majority_moved", "majority"),
    ("brier_skill", "Brier skill"),
    ("log_loss", "log loss"),
    ("qlike", "QLIKE"),
    ("qlike_ewma", "QLIKE EWMA"),
    ("return_gross", "return gross"),
    ("return_taker", "after taker"),
    ("return_maker", "after maker"),
    ("sharpe", "Sharpe"),
    ("sharpe_ci", "95 % CI"),
    ("max_drawdown", "max DD"),
    ("trades", "trades"),
]


def _markdown(report: dict[str, dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        "# Walk-forward evaluation",
        "",
        f"Files: {', '.join(Path(f).name for f in meta['files'])}; bars from {meta['span'][0]} to {meta['span'][1]}"
        f" (after the models' test cut, {meta['test_after'][:10]}). Question: is the log return over the next "
        f"{meta['horizon_minutes']} min positive? One call every {meta['horizon_minutes']} min.",
        "Returns are the mean per symbol (each traded alone) after the Bybit taker (0.055 %) or maker (0.02 %) fee a"
        " side; the ensemble trades only its `tradeable` calls. 95 % CIs: block bootstrap by day. `*`: fewer than"
        " 500 calls.",
        "",
        "| strategy | " + " | ".join(label for _, label in COLUMNS) + " |",
        "|" + "---|" * (len(COLUMNS) + 1),
    ]
    for name, m in report.items():
        flag = " *" if m.get("small_sample") else ""
        lines.append(f"| {name}{flag} | " + " | ".join(_fmt(m.get(k)) for k, _ in COLUMNS) + " |")
    lines += ["", f"Not evaluated: {json.dumps(meta['not_evaluated'])}", ""]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(_fmt(x) for x in v) + "]"
    if isinstance(v, float):
        return "nan" if v != v else f"{v:.4f}"
    return str(v)


def _charts(parts: dict[str, list[Part]], out: Path, horizon: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 5), dpi=100)
    for name in ("ensemble", "fallback", "buy_and_hold"):
        ps = parts.get(name)
        if ps:
            times, equity = equity_curve(ps, TAKER_FEE)
            ax.plot(times.astype("datetime64[ms]"), equity, label=name)
    ax.set_title(f"Equity after the taker fee, mean of the symbols (H = {horizon} min)")
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))  # type: ignore[no-untyped-call]
    ax.set_ylabel("equity")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.autofmt_xdate()
    fig.tight_layout()
    fig.savefig(out / "equity.png")
    plt.close(fig)

    ens = parts["ensemble"]
    p = np.concatenate([x.p_up for x in ens])
    r = np.concatenate([x.r for x in ens])
    ok = np.isfinite(p) & (r != 0)
    p, up = p[ok], r[ok] > 0
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    if len(p):
        order = np.argsort(-np.abs(p - 0.5))
        hits = np.cumsum((p[order] > 0.5) == up[order])
        n = np.arange(1, len(p) + 1)
        start = min(len(p) - 1, 100)
        a1.plot(n[start:] / len(p), hits[start:] / n[start:])
        bins = np.linspace(0, 1, 21)
        idx = np.clip(np.digitize(p, bins) - 1, 0, 19)
        centers, freq = [], []
        for b in range(20):
            sel = idx == b
            if sel.sum() >= 50:
                centers.append(float(p[sel].mean()))
                freq.append(float(up[sel].mean()))
        a2.plot(centers, freq, "o-", label="ensemble")
    a1.axhline(0.5, color="grey", lw=0.8)
    a1.set_title("Coverage vs accuracy (most confident first)")
    a1.set_xlabel("share of bars called")
    a1.set_ylabel("accuracy, moved bars")
    a2.plot([0, 1], [0, 1], color="grey", lw=0.8, label="perfect calibration")
    a2.set_title("Reliability (bins of ≥ 50 bars)")
    a2.set_xlabel("predicted P(up)")
    a2.set_ylabel("observed share up")
    a2.legend()
    fig.tight_layout()
    fig.savefig(out / "calibration.png")
    plt.close(fig)
