"""``candlecast stack``: earn the components' weights, calibrate, and choose the threshold, on validation.

On the Bybit linear 1m series, over the validation span only (1m input windows from the training cut,
outcomes before the test cut; :class:`models.datasets.Cuts`), each component that answers the
signal's question (``horizon_minutes`` = H) is run exactly as serving runs it — the manifest loaded
by :func:`inference.components.load_model_set`, inputs from ``LoadedComponent.prepare``, the ONNX
session's ``run``. A 5m, 15m or 1h component reads, at each 1m close, the window of its timeframe
that serving holds then (:func:`models.data.view_ends`; the bars before the cut in it are history,
not outcomes); where serving would refuse that window the component does not vote, and an absent
vote adds nothing to the stacker's sum, as in serving. Then, with the span cut in two halves by time:

1. **stack** (first half): L2 logistic regression of ``up`` on the components' logits: the weights
   are earned; a component without skill ends near 0;
2. **calibrate** (second half): Platt scaling ``sigmoid(a·z + b)`` of the stacker's output ``z``;
3. **threshold** (second half): the calibrated probability a call must clear: the one whose calls
   have the best lower 95 % Wilson bound on accuracy (moved bars), among thresholds calling at least
   10 % of bars and 500 bars.

4. **magnitude** (:func:`fit_magnitude`): whichever forecasts the variance over H best on the
   second half (QLIKE): the mean of the components' volatility heads, the EWMA baseline, or the
   volatility stacker — ``ln V`` as a linear function of ``ln`` EWMA and each head's ``ln V``
   (:class:`inference.manifest.VolatilityStack`), fitted by QLIKE on the first half, with the
   expected absolute move a multiple of the volatility fitted there too.

The result is written as the manifest's ``ensemble`` (:class:`inference.manifest.EnsembleSpec`),
with each component's validation figures. The test span is never read.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from inference.components import LoadedComponent, example_input, load_model_set
from inference.config import WorkerConfig
from inference.decision import VAR_CAP, VAR_FLOOR
from inference.ensemble import stacked_p_up
from inference.errors import InferenceError
from inference.linear_features import LINEAR_BARS
from inference.manifest import EnsembleSpec, Manifest, VolatilityStack
from inference.scoring import brier_skill, qlike, wilson
from models.data import Series, aggregate, horizon_ends, horizon_targets, load_series, view_ends
from models.datasets import LEADER, Cuts, leader_rows
from models.drift_stats import write_drift_statistics
from models.linear import ewma_of_windows, fit_logistic, fit_qlike, iso_minute

__all__ = [
    "choose_threshold",
    "component_outputs",
    "drift_reference",
    "fit_ensemble",
    "fit_magnitude",
    "minute_bars_needed",
    "platt",
    "stacked_variance",
    "voters",
]

log = logging.getLogger(__name__)

MIN_COVERAGE = 0.10
MIN_CALLS = 500
BATCH = 256


def voters(components: tuple[LoadedComponent, ...], horizon: int) -> list[LoadedComponent]:
    """The enabled components that answer the H-minute question, whatever window they read."""
    return [c for c in components if c.disabled is None and c.spec.horizon_min == horizon]


def minute_bars_needed(components: list[LoadedComponent]) -> int:
    """The 1m bars a signal needs before its first call: the 1m components' windows and the EWMA's."""
    return max([c.bars_needed for c in components if c.timeframe == "1"] + [LINEAR_BARS])


def leader_series(path: Path, base: Series, leader: str) -> Series | None:
    """The leader's 1m bars on the venue of ``path`` (the sibling file naming ``leader`` instead of
    ``base``'s symbol); ``base`` itself when it is the leader; None when there is no such file (the
    service would not hold the leader: its components do not vote)."""
    if base.symbol == leader:
        return base
    sibling = path.with_name(path.name.replace(base.symbol, leader))
    if sibling != path and sibling.exists():
        return load_series(sibling)
    log.warning("%s: no %s file beside it: its components reading %s do not vote", path.name, leader, leader)
    return None


def component_outputs(
    c: LoadedComponent,
    base: Series,
    ends: npt.NDArray[np.int64],
    views: dict[int, Series] | None = None,
    leader: Series | None = None,
) -> npt.NDArray[np.float64]:
    """The component's output rows (its heads) at the close of each 1m bar ``ends`` of ``base``, built
    and run by serving's code (``LoadedComponent.prepare``, ``ModelSession.run``) on the window of the
    component's timeframe serving holds then; NaN rows where serving would not let it vote.

    ``views`` caches the coarser series aggregated from ``base`` (several components share one).
    ``leader``: the 1m bars of the symbol a component reads beside ``base`` (:attr:`LoadedComponent.leader`,
    see :func:`leader_series`); where it lacks the window for the same bars, the component does not vote."""
    assert c.session is not None
    tf = int(c.timeframe)
    if tf == base.interval_min:
        s, idx = base, ends
    else:
        views = {} if views is None else views
        if tf not in views:
            views[tf] = aggregate(base, tf)
        s = views[tf]
        idx = view_ends(base, s, ends, c.bars_needed)
    lead: Series | None = None
    lead_rows = np.full(len(idx), -1, np.int64)
    if c.leader is not None and leader is not None:
        lead = leader if tf == leader.interval_min else aggregate(leader, tf)
        ok = idx >= 0
        lead_rows[ok] = leader_rows(lead, s, idx[ok], c.bars_needed)
    out = []
    for i in range(0, len(idx), BATCH):
        inputs, bad = [], []
        for k, t in enumerate(idx[i : i + BATCH].tolist()):
            try:
                if t < c.bars_needed - 1:
                    raise ValueError("no usable window")  # serving: stale, holed or short window
                if c.leader is None:
                    inputs.append(c.prepare(s.ohlcv[t - c.bars_needed + 1 : t + 1]))
                    continue
                r = int(lead_rows[i + k])
                if lead is None or r < 0:
                    raise ValueError("no leader window")  # serving: leader_not_ingested, leader_stale_window, ...
                inputs.append(
                    c.prepare(s.ohlcv[t - c.bars_needed + 1 : t + 1], lead.ohlcv[r - c.bars_needed + 1 : r + 1])
                )
            except (InferenceError, ValueError, ArithmeticError):  # as serving: this component drops out
                inputs.append(example_input(c.spec, 1)[0])  # zeros of the input's shape
                bad.append(k)
        rows = np.asarray(c.session.run(np.stack(inputs)), np.float64).reshape(len(inputs), -1)
        rows[bad] = np.nan  # no vote (vote_report refuses a non-finite row)
        out.append(rows)
    return np.concatenate(out) if out else np.zeros((0, len(c.spec.heads)))


def stacked_variance(
    spec: VolatilityStack, var_ewma: npt.NDArray[np.float64], var_heads: npt.NDArray[np.float64], names: list[str]
) -> npt.NDArray[np.float64]:
    """What serving's volatility stacker forecasts (bp², ``inference.decision``) for each row:
    ``var_heads`` is ``(n, len(names))``, NaN where a head did not vote (read as the EWMA)."""
    ewma = np.clip(var_ewma, VAR_FLOOR, VAR_CAP)
    voted = np.isfinite(var_heads)
    ln_ewma = np.log(ewma)
    ln_heads = np.where(voted, np.log(np.maximum(np.where(voted, var_heads, 1.0), VAR_FLOOR)), ln_ewma[:, None])
    ln_v = spec.intercept + spec.ewma * ln_ewma
    for i, name in enumerate(names):
        ln_v = ln_v + spec.weights.get(name, 0.0) * ln_heads[:, i]
    for name in set(spec.weights) - set(names):  # a weighted head no row has reads as the EWMA
        ln_v = ln_v + spec.weights[name] * ln_ewma
    return np.asarray(np.clip(np.exp(np.minimum(ln_v, np.log(VAR_CAP))), VAR_FLOOR, VAR_CAP), np.float64)


def fit_magnitude(
    var_real: npt.NDArray[np.float64],
    abs_move_bp: npt.NDArray[np.float64],
    var_ewma: npt.NDArray[np.float64],
    var_heads: npt.NDArray[np.float64],
    names: list[str],
    first: npt.NDArray[np.bool_],
    second: npt.NDArray[np.bool_],
) -> tuple[str, VolatilityStack | None, dict[str, Any]]:
    """Where the signal's volatility comes from: ``heads``, ``ewma`` or ``stack``, the lowest QLIKE on
    the ``second`` bars (the EWMA on a tie, or when nothing can be scored), and the stacker fitted on
    the ``first`` ones (None unless chosen).

    ``var_heads`` is ``(n, len(names))``: each component's variance head over the horizon (bp²), NaN
    where it did not vote; the heads' mean is taken as serving takes it (of the volatilities).
    """
    ewma = np.clip(var_ewma, VAR_FLOOR, VAR_CAP)
    voted = np.isfinite(var_heads)
    heads = np.where(voted, np.maximum(var_heads, VAR_FLOOR), ewma[:, None])  # a missing head reads as the EWMA
    n_voted = voted.sum(axis=1)
    vol_mean = np.where(voted, np.sqrt(heads), 0.0).sum(axis=1) / np.maximum(1, n_voted)
    mean_heads = np.where(n_voted > 0, vol_mean**2, ewma)  # serving falls back to the EWMA where none voted
    w, b = fit_qlike(np.log(np.column_stack([ewma, heads])[first]), var_real[first])
    spec = VolatilityStack(dict(zip(names, w[1:].tolist(), strict=True)), float(w[0]), b, 1.0)
    stacked = stacked_variance(spec, var_ewma, var_heads, names)
    sigma = np.sqrt(stacked[first])
    move_per_vol = float(np.clip(np.sum(abs_move_bp[first] * sigma) / max(1e-12, float(np.sum(sigma**2))), 0.05, 2.0))
    spec = replace(spec, move_per_vol=move_per_vol)
    scored = second.any()
    scores = {  # in this order: a tie goes to the simpler forecast
        "ewma": qlike(ewma[second], var_real[second]) if scored else float("nan"),
        "stack": qlike(stacked[second], var_real[second]) if scored else float("nan"),
        "heads": qlike(mean_heads[second], var_real[second]) if scored and names else float("nan"),
    }
    finite = [k for k in scores if np.isfinite(scores[k])]
    chosen = min(finite, key=lambda k: scores[k]) if finite else "ewma"
    figures = {
        "qlike_heads": scores["heads"],
        "qlike_ewma": scores["ewma"],
        "qlike_stack": scores["stack"],
        "chosen": chosen,
        "heads_voted": float(np.mean(n_voted[second] > 0)) if scored else float("nan"),
    }
    return chosen, spec if chosen == "stack" else None, figures


def platt(z: npt.NDArray[np.float64], up: npt.NDArray[np.float64]) -> tuple[float, float]:
    """(a, b) of ``P(up) = sigmoid(a·z + b)``, by maximum likelihood (no penalty)."""
    w, b = fit_logistic(z.reshape(-1, 1), up, l2=0.0)
    return float(w[0]), b


def _wilson_low(hits: int, n: int) -> float:
    return wilson(hits, n)[0] if n else 0.0


def choose_threshold(p: npt.NDArray[np.float64], r: npt.NDArray[np.float64]) -> tuple[float, dict[str, float]]:
    """The threshold (and its figures) with the best Wilson lower bound on moved-bar accuracy among
    those calling >= 10 % of bars and >= 500 bars; 0.5 (call everything) when none qualifies. A NaN
    probability is a bar without a call (below the quorum): it counts against coverage."""
    best: tuple[float, float, dict[str, float]] | None = None
    moved = r != 0
    for tau in np.round(np.arange(0.5, 0.6001, 0.0005), 4):
        call = (p >= tau) | (p <= 1 - tau)
        n_call = int(call.sum())
        if n_call < max(MIN_CALLS, MIN_COVERAGE * len(p)):
            continue
        judged = call & moved
        hits = int(np.sum(judged & ((p >= tau) == (r > 0))))
        low = _wilson_low(hits, int(judged.sum()))
        if best is None or low > best[1]:
            figures = {"coverage": n_call / len(p), "accuracy_moved": hits / max(1, int(judged.sum())), "calls": n_call}
            best = (float(tau), low, figures)
    if best is None:
        return 0.5, {"coverage": 1.0, "accuracy_moved": float("nan"), "calls": len(p)}
    return best[0], best[2] | {"accuracy_wilson_low": best[1]}


def fit_ensemble(
    artifacts: Path,
    data_dir: Path,
    *,
    horizon: int = 1,
    per_series: int = 25_000,  # a cap: the two validation weeks hold about 20,000 windows a series
    l2: float = 1.0,
    seed: int = 0,
    quorum: float = WorkerConfig.quorum,
) -> EnsembleSpec:
    """Fit the stacker, calibration and threshold on validation and write them into the manifest."""
    cuts = Cuts()
    models = load_model_set(artifacts, prefer_gpu=False, threads=2)
    stacked = voters(models.components, horizon)
    if not stacked:
        raise ValueError(f"no enabled 1m component forecasts {horizon} min ahead: nothing to stack")
    need = minute_bars_needed(stacked)
    files = sorted((data_dir / "klines_1m").glob("bybit_linear_*_1m.csv.gz"))
    if not files:
        raise ValueError(f"no Bybit linear 1m files in {data_dir / 'klines_1m'}")
    rng = np.random.default_rng(seed)
    mid = (cuts.train_end + cuts.val_end) // 2
    span = horizon * 60_000
    logits: list[npt.NDArray[np.float64]] = []
    returns: list[npt.NDArray[np.float64]] = []
    times: list[npt.NDArray[np.int64]] = []
    var_real: list[npt.NDArray[np.float64]] = []
    var_head: list[npt.NDArray[np.float64]] = []  # each variance head (n, heads), NaN where it did not vote
    var_ewma: list[npt.NDArray[np.float64]] = []
    for path in files:
        s = load_series(path)
        ends = horizon_ends(s, need, horizon)
        ends = ends[
            (s.start_ms[ends - need + 1] >= cuts.train_end) & (s.start_ms[ends] + 60_000 + span <= cuts.val_end)
        ]
        if len(ends) > per_series:
            ends = np.sort(rng.choice(ends, per_series, replace=False))
        log.info("%s: %d validation windows", s.name, len(ends))
        views: dict[int, Series] = {}
        lead = leader_series(path, s, LEADER) if any(c.leader for c in stacked) else None
        outs = [component_outputs(c, s, ends, views, lead) for c in stacked]
        logits.append(np.column_stack([o[:, 0] for o in outs]))
        var_head.append(
            np.column_stack(
                [
                    o[:, c.spec.heads.index("var_bp2")]
                    for o, c in zip(outs, stacked, strict=True)
                    if "var_bp2" in c.spec.heads
                ]
                or [np.zeros((len(ends), 0))]
            )
        )
        r_h, v_h = horizon_targets(s, ends, horizon)
        returns.append(r_h)
        var_real.append(v_h)
        var_ewma.append(ewma_of_windows(s, ends, horizon))
        times.append(s.start_ms[ends])
    z_all, r_all, t_all = np.concatenate(logits), np.concatenate(returns), np.concatenate(times)
    voted = np.isfinite(z_all)
    z_all = np.where(voted, z_all, 0.0)  # an absent vote adds nothing to the stacker's sum, as in serving
    moved = r_all != 0
    first, second = moved & (t_all < mid), moved & (t_all >= mid)
    up = (r_all > 0).astype(np.float64)
    w, b = fit_logistic(z_all[first], up[first], l2=l2)
    names = [c.name for c in stacked]
    raw = {"horizon_minutes": horizon, "weights": dict(zip(names, w.tolist(), strict=True)), "intercept": b}
    z2 = z_all[second] @ w + b
    a, c0 = platt(z2, up[second])
    spec = EnsembleSpec.parse(raw | {"calibration": {"method": "platt", "a": a, "b": c0}, "threshold": 0.5})
    late = t_all >= mid  # the calibration half, unchanged closes included (they count against coverage)
    p_late = np.array(
        [
            stacked_p_up({n: z for n, z, v in zip(names, row.tolist(), has.tolist(), strict=True) if v}, spec)
            for row, has in zip(z_all[late], voted[late], strict=True)
        ]
    )
    p2 = p_late[moved[late]]  # the same, on the bars that moved
    # the threshold is chosen on the calls serving would make: none below the quorum (decide)
    allowed = voted[late].sum(axis=1) >= max(1e-9, quorum * len(stacked))
    tau, figures = choose_threshold(np.where(allowed, p_late, np.nan), r_all[late])
    # Magnitude: heads, EWMA or the volatility stacker, by QLIKE on the calibration half (every bar)
    magnitude, volatility, vol_figures = fit_magnitude(
        np.concatenate(var_real),
        np.abs(r_all) * 1e4,
        np.concatenate(var_ewma),
        np.concatenate(var_head),
        [c.name for c in stacked if "var_bp2" in c.spec.heads],
        t_all < mid,
        late,
    )
    per_component: dict[str, Any] = {}
    for i, name in enumerate(names):
        mine = second & voted[:, i]  # the calibration-half bars this component voted on
        p_c = 1.0 / (1.0 + np.exp(-z_all[mine, i]))
        per_component[name] = {
            "weight": float(w[i]),
            "votes": float(mine.sum() / max(1, second.sum())),
            "brier_skill": brier_skill(p_c, up[mine]) if mine.any() else float("nan"),
            "accuracy_moved": float(np.mean((p_c > 0.5) == (up[mine] > 0.5))) if mine.any() else float("nan"),
        }
    fitted = {
        "stack_span": [iso_minute(cuts.train_end), iso_minute(mid)],
        "calibration_span": [iso_minute(mid), iso_minute(cuts.val_end)],
        "series": [p.name.removesuffix(".csv.gz") for p in files],
        "samples": {"stack": int(first.sum()), "calibration": int(second.sum())},
        "l2": l2,
        "quorum": quorum,
        "components": per_component,
        "volatility": vol_figures,
        "calibration_half": {
            "brier_skill": brier_skill(p2, up[second]),
            "majority_moved": float(max(up[second].mean(), 1 - up[second].mean())),
            "threshold": tau,
            **figures,
        },
    }
    spec = replace(spec, threshold=tau, magnitude=magnitude, volatility=volatility, fitted=fitted)
    manifest_path = artifacts / "manifest.json"
    manifest = Manifest.load(manifest_path)
    notes = (
        f"Every component states the minutes ahead it forecasts (horizon_minutes); the worker uses those that"
        f" answer the signal's H. The ensemble section is the stacker fitted on validation for H = {horizon}."
    )
    replace(manifest, ensemble=spec, notes=notes).save(manifest_path)
    log.info("ensemble: weights %s, Platt a=%.3f b=%.4f, threshold %.4f: %s", raw["weights"], a, c0, tau, figures)
    drift_reference(artifacts, data_dir)
    return spec


def drift_reference(artifacts: Path, data_dir: Path) -> dict[str, Any]:
    """The manifest's drift section, from the bars the stacker is fitted and calibrated on (the Bybit
    linear 1m files over the validation span): :mod:`models.drift_stats`."""
    cuts = Cuts()
    files = sorted((data_dir / "klines_1m").glob("bybit_linear_*_1m.csv.gz"))
    if not files:
        raise ValueError(f"no Bybit linear 1m files in {data_dir / 'klines_1m'}")
    return write_drift_statistics(artifacts / "manifest.json", files, cuts.train_end, cuts.val_end)
