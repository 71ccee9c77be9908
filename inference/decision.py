"""The call from the components' output rows: pure functions shared by the signal engine and
``candlecast evaluate`` (research-to-live parity).

:func:`vote_report` turns a component's output row into its report; :func:`decide` stacks and
calibrates the votes (the manifest's stacker, or the weighted mean), applies the quorum and prices
the call; :func:`quorum_base` counts the voices a quorum is taken of: only votes that can move the
call (a stacker slot, or a weight > 0 without a stacker).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from inference.components import LoadedComponent
from inference.config import WorkerConfig
from inference.ensemble import Economics, EnsembleResult, Vote, combine, economics, sigmoid, stack
from inference.errors import InferenceError
from inference.linear_features import LINEAR_BARS, ewma_variance
from inference.manifest import EnsembleSpec, VolatilityStack
from inference.signal import ComponentReport

__all__ = ["VAR_CAP", "VAR_FLOOR", "decide", "quorum_base", "slot", "stacker_for", "vote_report", "weighs"]


def vote_report(
    c: LoadedComponent, row: npt.NDArray[np.float64], provider: str, latency_ms: float | None
) -> ComponentReport | None:
    """The report of a component whose output row is ``row`` (its heads, in the manifest's order), or
    ``None`` when the row is unusable (wrong width, not finite). Shared with ``candlecast evaluate``."""
    heads = _heads(c.spec.heads, row)
    if heads is None:
        return None
    return ComponentReport(
        c.name,
        c.timeframe,
        c.spec.horizon,
        sigmoid(heads["logit"]),
        c.weight,
        c.spec.version,
        provider,
        latency_ms,
        "voted",
        None,
        c.spec.horizon_min,
        heads.get("abs_move_bp"),
        heads.get("volatility_bp"),
        c.spec.stands_in_for or None,
    )


def _heads(spec_heads: tuple[str, ...], row: npt.NDArray[np.float64]) -> dict[str, float] | None:
    """The named output columns of one row (None when a value is not finite): the logit as is, the
    magnitude floored at 0.01 bp, the variance as a volatility (bp, floored at 0.01)."""
    if len(row) != len(spec_heads) or not np.isfinite(row).all():
        return None
    out = {}
    for name, value in zip(spec_heads, row.tolist(), strict=True):
        if name == "abs_move_bp":
            out[name] = max(value, 0.01)
        elif name == "var_bp2":
            out["volatility_bp"] = math.sqrt(max(value, 1e-4))
        else:
            out[name] = value
    return out


def quorum_base(components: Sequence[LoadedComponent], ensemble: EnsembleSpec | None, horizon_minutes: int) -> int:
    """How many slots of these components (answering H) can move the call: ``decide``'s ``answering``
    for ``candlecast evaluate``, counted as the engine counts its reports."""
    stacker = stacker_for(ensemble, horizon_minutes)
    return len({c.slot for c in components if weighs(c.slot, c.weight, stacker)})


def slot(r: ComponentReport) -> str:
    return r.stands_in_for or r.name


def stacker_for(ensemble: EnsembleSpec | None, horizon_minutes: int) -> EnsembleSpec | None:
    """The manifest's stacker when it answers the signal's horizon (else the weighted mean applies)."""
    return ensemble if ensemble is not None and ensemble.horizon_minutes == horizon_minutes else None


def weighs(slot: str, weight: float, stacker: EnsembleSpec | None) -> bool:
    """Whether a slot's vote can move the call: it has a stacker weight, or (no stacker) a weight > 0."""
    return slot in stacker.weights if stacker is not None else weight > 0


def decide(
    voters: Sequence[ComponentReport],
    ensemble: EnsembleSpec | None,
    config: WorkerConfig,
    finest_closes: Sequence[float],
    answering: int | None = None,
) -> tuple[EnsembleResult | None, Economics]:
    """The ensemble's call and its economics from the components' votes: pure, shared by the engine
    and ``candlecast evaluate``. The manifest's stacker when it answers ``config.horizon_minutes``,
    the weighted mean otherwise; ``None`` when no vote is usable (the caller falls back). With fewer
    than ``config.quorum`` of the ``answering`` components voting, the call is flat."""
    stacker = stacker_for(ensemble, config.horizon_minutes)
    votes = [Vote(slot(r), r.p_up, r.weight) for r in voters if r.p_up is not None]
    try:
        result: EnsembleResult | None = (
            stack(votes, stacker) if stacker is not None else combine(votes, config.thresholds)
        )
    except ValueError:
        result = None
    counted = [v for v in votes if weighs(v.component, v.weight, stacker)]  # a weightless vote is no voice
    if result is not None and answering and len(counted) < config.quorum * answering:
        result = replace(result, direction="flat")  # too few voices for a call: shown, not acted on
    if stacker is not None and stacker.volatility is not None:
        move_bp, vol_bp = _stacked_magnitude(voters, stacker.volatility, finest_closes, config.horizon_minutes)
    else:
        heads = voters if stacker is None or stacker.magnitude == "heads" else []
        move_bp, vol_bp = _magnitude(heads, finest_closes, config.horizon_minutes)
    if result is None:
        return None, economics(None, "flat", move_bp, vol_bp, config.fee_bp)
    return result, economics(result.p_up, result.direction, move_bp, vol_bp, config.fee_bp)


VAR_FLOOR, VAR_CAP = 1e-4, 1e8  # bp²: what QLIKE floors a forecast at; a 100 % move


def _ewma_over(finest_closes: Sequence[float], horizon_min: int) -> float | None:
    """The EWMA baseline's variance over the horizon (bp²), or None with too few closes."""
    if len(finest_closes) < 11:
        return None
    try:
        return ewma_variance(finest_closes[-LINEAR_BARS:]) * horizon_min
    except InferenceError:
        return None


def _stacked_magnitude(
    voters: Sequence[ComponentReport], spec: VolatilityStack, finest_closes: Sequence[float], horizon_min: int
) -> tuple[float | None, float | None]:
    """(expected |move|, volatility) in bp from the volatility stacker (see :class:`VolatilityStack`);
    (None, None) when the EWMA it is anchored on cannot be computed."""
    ewma = _ewma_over(finest_closes, horizon_min)
    if ewma is None:
        return None, None
    ln_ewma = math.log(min(max(ewma, VAR_FLOOR), VAR_CAP))
    ln_heads = {slot(r): 2.0 * math.log(r.volatility_bp) for r in voters if r.volatility_bp is not None}
    ln_v = spec.intercept + spec.ewma * ln_ewma
    ln_v += sum(w * ln_heads.get(name, ln_ewma) for name, w in spec.weights.items())
    vol = math.sqrt(min(max(math.exp(min(ln_v, math.log(VAR_CAP))), VAR_FLOOR), VAR_CAP))
    return spec.move_per_vol * vol, vol


def _magnitude(
    voters: Sequence[ComponentReport], finest_closes: Sequence[float], horizon_min: int
) -> tuple[float | None, float | None]:
    """(expected |move|, volatility) over the horizon, in bp: the mean of the voters' magnitude and
    volatility heads where they have them, else from the EWMA of the finest closes (the volatility
    baseline, :func:`inference.features.ewma_variance`; E|move| = √(2/π)·sd for a normal move)."""
    moves = [r.expected_move_bp for r in voters if r.expected_move_bp is not None]
    vols = [r.volatility_bp for r in voters if r.volatility_bp is not None]
    if moves and vols:
        return sum(moves) / len(moves), sum(vols) / len(vols)
    ewma = _ewma_over(finest_closes, horizon_min)  # none when even the baseline cannot be computed
    vol = math.sqrt(ewma) if ewma is not None else None
    if vols:
        vol = sum(vols) / len(vols)
    move = sum(moves) / len(moves) if moves else (math.sqrt(2.0 / math.pi) * vol if vol is not None else None)
    return move, vol
