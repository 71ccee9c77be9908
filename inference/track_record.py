"""The live track record: each served signal scored once its horizon has passed, and its summaries.

Pure: :func:`score_signal` turns a served :class:`~inference.signal.Signal` and the 1m bars after it
into a :class:`Score` (or says why it cannot be scored); :func:`performance` summarises a symbol's
scores over the last 100 and 1,000 calls and the last 24 hours. A *call* is a served signal — flat is
an answer too — and the figures are :mod:`inference.scoring`'s, the definitions ``candlecast
evaluate`` reports, so a replay's live scores equal the backtest of the same bars:

* ``hit_rate``: long/short calls on bars that moved, right when the move had the call's sign (95 %
  Wilson interval); ``coverage``: the share of calls that were long or short. A fallback signal is
  the ensemble's "no vote", as in the evaluation: no call, no probability (counted in ``fallback``);
* ``brier``, ``brier_skill`` (against the base rate of the same bars), ``log_loss``: ``p_up`` on the
  bars that moved (a fallback signal has none);
* ``qlike``: the signal's ``volatility_bp`` against the realized variance over H;
* ``forecast_edge_bp`` / ``realized_edge_bp``: the mean edge the calls promised in their direction,
  and the mean log return they got, in bp;
* ``return_after_fees``: trading only the ``tradeable`` calls, compounded, at the signal's own fee
  (``cost_bp`` / 2 a side), the position held across consecutive calls in one direction.

Two differences from ``evaluate``, both stated where they show: a component's own hit rate is the sign
of its P(up) - 0.5 (the evaluation's "alone" rows pass it through the ensemble's threshold), and with
H > 1 every minute's signal is scored, so the horizons overlap (the evaluation calls once every H
minutes): the two agree exactly at H = 1, the default, as tests/service/test_track_record_replay.py
checks.

A score belongs to the manifest that made the signal (``models``, the manifest's sha256 prefix): a
model release starts a new series, and each component is scored per version. A signal whose reference
or closing bar is missing from the window (a hole) is recorded unscored with the reason, never guessed.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from inference.checks import bars_to_array
from inference.drift import DRIFT_FEATURES, DriftStats, drift_inputs, psi, reference_for
from inference.errors import InferenceError
from inference.linear_features import LINEAR_BARS
from inference.scoring import SIGN, accuracy, net_returns, probability_scores, qlike, wilson
from inference.signal import Signal, TrackRecord
from streaming.klines import Bar, interval_ms

__all__ = [
    "ComponentScore",
    "Score",
    "ScoreFormatError",
    "closing_start",
    "outcome",
    "outcome_code",
    "performance",
    "score_signal",
    "track_from_codes",
    "track_record",
]

MINUTE_MS = 60_000
DAY_MS = 86_400_000
WINDOWS: tuple[tuple[str, int | None], ...] = (("last_100", 100), ("last_1000", 1000), ("last_24h", None))
TRACK_CALLS = 100  # what each signal's ``track_record`` summarises
_OUTCOMES = frozenset({"hit", "miss", "flat", "unmoved", "fallback", "unscored"})


class ScoreFormatError(InferenceError, ValueError):
    """Bytes that are not a score."""


@dataclass(frozen=True, slots=True)
class ComponentScore:
    name: str
    version: str
    p_up: float | None  # None: it did not vote


@dataclass(frozen=True, slots=True)
class Score:
    """One served signal against what happened over its horizon."""

    symbol: str
    start: int  # the signal's bar start (ms)
    horizon_minutes: int
    models: str  # the manifest that made the signal ("" when unknown)
    source: str
    direction: str
    p_up: float | None
    tradeable: bool
    edge_bp: float | None
    volatility_bp: float | None
    cost_bp: float | None
    log_return: float | None  # over the horizon; None when unscored
    var_real_bp2: float | None  # realized variance over the horizon, Σ (1m log return in bp)²
    reason: str | None  # why it is unscored; None when scored
    components: tuple[ComponentScore, ...] = ()
    inputs: tuple[float, ...] = ()  # the drift features at the signal's bar (() when not computable)

    @property
    def scored(self) -> bool:
        return self.reason is None

    def to_json(self) -> bytes:
        """Compact JSON (about 300 bytes with nine components): components as ``[name, version, p_up]``
        with ``p_up`` to 6 decimals; the signal's own figures exact."""
        body = {f: getattr(self, f) for f in self.__slots__ if f != "components"}
        body["components"] = [
            [c.name, c.version, None if c.p_up is None else round(c.p_up, 6)] for c in self.components
        ]
        return orjson.dumps(body)

    @classmethod
    def from_json(cls, raw: bytes | str) -> Score:
        try:
            d = orjson.loads(raw)
            comps = tuple(ComponentScore(str(name), str(version), _opt(p)) for name, version, p in d["components"])
            score = cls(
                symbol=str(d["symbol"]),
                start=int(d["start"]),
                horizon_minutes=int(d["horizon_minutes"]),
                models=str(d["models"]),
                source=str(d["source"]),
                direction=str(d["direction"]),
                p_up=_opt(d["p_up"]),
                tradeable=bool(d["tradeable"]),
                edge_bp=_opt(d["edge_bp"]),
                volatility_bp=_opt(d["volatility_bp"]),
                cost_bp=_opt(d["cost_bp"]),
                log_return=_opt(d["log_return"]),
                var_real_bp2=_opt(d["var_real_bp2"]),
                reason=None if d["reason"] is None else str(d["reason"]),
                components=comps,
                inputs=tuple(float(x) for x in d.get("inputs", ())),
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ScoreFormatError(f"not a score: {exc}") from exc
        if not 0 <= score.start < 2**53 or score.start % MINUTE_MS:
            raise ScoreFormatError(f"not a score: start {score.start} is not a minute bar")
        if score.reason is None and not (
            score.log_return is not None
            and math.isfinite(score.log_return)
            and score.var_real_bp2 is not None
            and math.isfinite(score.var_real_bp2)
        ):
            raise ScoreFormatError("not a score: scored without a finite return")
        return score


def _opt(v: Any) -> float | None:
    return None if v is None else float(v)


def closing_start(signal: Signal) -> int:
    """The start of the bar whose close ends the signal's horizon (its own bar + H minutes)."""
    return signal.bar.start + _horizon(signal) * MINUTE_MS


def _horizon(signal: Signal) -> int:
    """The signal's H in minutes (1 for a signal written before signals stated it)."""
    return 1 if signal.horizon_minutes is None else signal.horizon_minutes


def score_signal(signal: Signal, bars: Sequence[Bar]) -> Score | None:
    """``signal`` scored against the closed 1m ``bars`` (ascending; the window at a later close):
    ``None`` while its closing bar is not yet due (newer than the newest bar given); unscored with a
    reason when its reference bar or a bar of its horizon is missing."""
    step = interval_ms(signal.bar.interval)  # ValueError: not a minute interval
    if _horizon(signal) < 1 or (_horizon(signal) * MINUTE_MS) % step:
        raise ValueError(f"a {signal.horizon_minutes} min horizon is not a whole number of {step} ms bars")
    end = closing_start(signal)
    if not bars or bars[-1].start < end:
        return None
    h = _horizon(signal)
    index = {b.start: i for i, b in enumerate(bars)}
    at = index.get(signal.bar.start)
    path = [index.get(t) for t in range(signal.bar.start + step, end + 1, step)]
    reason: str | None = None
    if at is None:
        reason = "out_of_window" if bars[0].start > signal.bar.start else "missing_reference_bar"
    elif path[-1] is None:
        reason = "missing_closing_bar"
    elif any(i is None for i in path):
        reason = "hole_in_horizon"
    log_return = var = None
    inputs: tuple[float, ...] = ()
    if reason is None and at is not None:
        closes = [float(bars[at].close)] + [float(bars[i].close) for i in path if i is not None]
        steps = np.diff(np.log(np.asarray(closes, dtype=np.float64)))
        log_return = float(np.sum(steps))
        var = float(np.sum((steps * 1e4) ** 2))
        history = bars[max(0, at - LINEAR_BARS + 1) : at + 1]
        if len(history) == LINEAR_BARS and history[-1].start - history[0].start == (LINEAR_BARS - 1) * step:
            inputs = drift_inputs(bars_to_array(history))
    return Score(
        symbol=signal.symbol,
        start=signal.bar.start,
        horizon_minutes=h,
        models=signal.models,
        source=signal.source,
        direction=signal.direction,
        p_up=signal.p_up,
        tradeable=signal.tradeable,
        edge_bp=signal.edge_bp,
        volatility_bp=signal.volatility_bp,
        cost_bp=signal.cost_bp,
        log_return=log_return,
        var_real_bp2=var,
        reason=reason,
        components=tuple(
            ComponentScore(c.name, c.version, c.p_up if c.status == "voted" else None)
            for c in signal.components
            if c.horizon_minutes == h
        ),
        inputs=inputs,
    )


# -- summaries ------------------------------------------------------------------------------------


def _num(x: float, digits: int = 6) -> float | None:
    """A JSON number (a plain float, rounded), or None where the figure is undefined."""
    x = float(x)
    return round(x, digits) if math.isfinite(x) else None


def _figures(scores: Sequence[Score]) -> dict[str, Any]:
    """The served signal's figures over ``scores`` (all scored, oldest first)."""
    n = len(scores)
    r_log = np.array([s.log_return for s in scores], dtype=np.float64)
    r = np.expm1(r_log)  # the simple return a position earns
    # a fallback signal is the ensemble's "no vote": no call and no probability, as evaluate counts it
    call = np.array([0 if s.source == "fallback" else SIGN.get(s.direction, 0) for s in scores], dtype=np.int8)
    p = np.array([np.nan if s.p_up is None else s.p_up for s in scores], dtype=np.float64)
    hits, judged = accuracy(call, r)
    low, high = wilson(hits, judged)
    moved = r != 0
    prob = probability_scores(p, r)
    vol = np.array([np.nan if s.volatility_bp is None else s.volatility_bp for s in scores], dtype=np.float64)
    var_real = np.array([s.var_real_bp2 for s in scores], dtype=np.float64)
    has_vol = np.isfinite(vol)
    calls = call != 0
    edge = np.array([np.nan if s.edge_bp is None else s.edge_bp for s in scores], dtype=np.float64)
    with_edge = calls & np.isfinite(edge)
    position = np.array([c if s.tradeable else 0 for c, s in zip(call.tolist(), scores, strict=True)], np.int8)
    fees = [s.cost_bp / 2e4 for s in scores if s.cost_bp is not None]
    fee = fees[-1] if fees else 0.0
    return {
        "n": n,
        "calls": int(calls.sum()),
        "coverage": _num(calls.sum() / n) if n else None,
        "moved": int(moved.sum()),
        "hits": hits,
        "judged": judged,
        "hit_rate": _num(hits / judged) if judged else None,
        "hit_rate_ci": [_num(low), _num(high)] if judged else None,
        "up_rate_moved": _num(float(np.mean(r[moved] > 0))) if moved.any() else None,
        "brier": _num(prob.brier),
        "brier_skill": _num(prob.brier_skill),
        "log_loss": _num(prob.log_loss),
        "qlike": _num(qlike(vol[has_vol] ** 2, var_real[has_vol])) if has_vol.any() else None,
        "forecast_edge_bp": _num(float(np.mean(call[with_edge] * edge[with_edge])), 3) if with_edge.any() else None,
        "realized_edge_bp": _num(float(np.mean(call[calls] * r_log[calls])) * 1e4, 3) if calls.any() else None,
        "tradeable": int((position != 0).sum()),
        "return_after_fees": _num(float(np.prod(1.0 + net_returns(position, r, fee)) - 1.0)) if n else None,
        "fee_per_side": fee,
        "fallback": sum(1 for s in scores if s.source == "fallback"),
        "first_start": scores[0].start if scores else None,
        "last_start": scores[-1].start if scores else None,
    }


def _component_figures(scores: Sequence[Score]) -> list[dict[str, Any]]:
    """Each component version's own call (the sign of its P(up) - 0.5) and probability scores."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for s in scores:
        for c in s.components:
            rows = groups.setdefault((c.name, c.version), [])
            if c.p_up is not None and s.log_return is not None:
                rows.append((c.p_up, s.log_return))
    out = []
    for (name, version), rows in sorted(groups.items()):
        p = np.array([x for x, _ in rows], dtype=np.float64)
        r = np.array([y for _, y in rows], dtype=np.float64)
        call = np.sign(p - 0.5).astype(np.int8)
        hits, judged = accuracy(call, r)
        prob = probability_scores(p, r)
        out.append(
            {
                "name": name,
                "version": version,
                "votes": len(rows),
                "judged": judged,
                "hit_rate": _num(hits / judged) if judged else None,
                "hit_rate_ci": [_num(x) for x in wilson(hits, judged)] if judged else None,
                "brier": _num(prob.brier),
                "brier_skill": _num(prob.brier_skill),
                "log_loss": _num(prob.log_loss),
            }
        )
    return out


def _drift(symbol: str, scores: Sequence[Score], stats: DriftStats | None) -> dict[str, float | None] | None:
    features = reference_for(stats, symbol)
    if features is None:
        return None
    rows = [s.inputs for s in scores if len(s.inputs) == len(DRIFT_FEATURES)]
    out: dict[str, float | None] = {}
    for j, name in enumerate(DRIFT_FEATURES):
        spec = features.get(name)
        if not isinstance(spec, Mapping):
            continue
        value = psi([row[j] for row in rows], spec.get("edges", []), spec.get("expected", []))
        out[name] = None if value is None else round(value, 5)
    return out


def performance(
    symbol: str,
    scores: Sequence[Score],
    *,
    validation: Mapping[str, Any] | None = None,
    drift: DriftStats | None = None,
    span: tuple[int | None, int | None] | None = None,
) -> dict[str, Any]:
    """A symbol's track record from its stored scores (any order): the current series (the newest
    score's manifest) over each window, its components, its input drift, and what was left unscored.
    With ``span`` (first and last bar start, ms, either open) a ``span`` window covers just those bars."""
    ordered = sorted(scores, key=lambda s: s.start)
    series = ordered[-1].models if ordered else ""
    current = [s for s in ordered if s.models == series]
    scored = [s for s in current if s.scored]
    newest = scored[-1].start if scored else None
    parts: dict[str, list[Score]] = {}
    for name, count in WINDOWS:
        if count is not None:
            parts[name] = scored[-count:]
        else:
            parts[name] = [s for s in scored if newest is not None and s.start > newest - DAY_MS]
    if span is not None:
        first, last = span
        parts["span"] = [s for s in scored if (first is None or s.start >= first) and (last is None or s.start <= last)]
    windows: dict[str, Any] = {}
    for name, part in parts.items():
        windows[name] = {
            "signal": _figures(part),
            "components": _component_figures(part),
            "drift_psi": _drift(symbol, part, drift),
        }
    return {
        "symbol": symbol,
        "series": series,
        "horizon_minutes": current[-1].horizon_minutes if current else None,
        "as_of_bar": newest,
        "windows": windows,
        "unscored": dict(Counter(s.reason for s in current if s.reason is not None)),
        "earlier_series": dict(Counter(s.models for s in ordered if s.models != series)),
        "validation": dict(validation) if validation is not None else None,
    }


def outcome(score: Score) -> str:
    """``hit``, ``miss``, ``flat`` (no call), ``unmoved`` (the price did not move), ``fallback`` (the
    rule's signal: no call of the ensemble's) or ``unscored``."""
    if not score.scored or score.log_return is None:
        return "unscored"
    if score.source == "fallback":
        return "fallback"
    if score.direction == "flat":
        return "flat"
    if score.log_return == 0:
        return "unmoved"
    return "hit" if (score.log_return > 0) == (score.direction == "long") else "miss"


def outcome_code(score: Score) -> str:
    """What the short track record keeps of a score: ``start|models|outcome``."""
    return f"{score.start}|{score.models}|{outcome(score)}"


def track_from_codes(codes: Sequence[str], models: str | None = None) -> TrackRecord:
    """Each signal's ``track_record`` from the newest outcome codes (any order, malformed ones
    skipped): the scored ones of the ``models`` series (None: the newest among them), up to 100."""
    rows: list[tuple[int, str, str]] = []
    for code in codes:
        start, _, rest = code.partition("|")
        of, _, result = rest.rpartition("|")
        if start.isdigit() and result in _OUTCOMES:
            rows.append((int(start), of, result))
    rows.sort()
    series = models if models is not None else rows[-1][1] if rows else ""
    last = [r for r in rows if r[1] == series and r[2] != "unscored"][-TRACK_CALLS:]
    if not last:
        return TrackRecord(n=0, calls=0, hit_rate=None, as_of_bar=None)
    hits = sum(1 for r in last if r[2] == "hit")
    judged = hits + sum(1 for r in last if r[2] == "miss")
    calls = sum(1 for r in last if r[2] in ("hit", "miss", "unmoved"))
    return TrackRecord(
        n=len(last),
        calls=calls,
        hit_rate=round(hits / judged, 4) if judged else None,
        as_of_bar=last[-1][0],
    )


def track_record(scores: Sequence[Score]) -> TrackRecord:
    """What each signal carries: the last 100 scored calls of the newest series, n and hit rate."""
    return track_from_codes([outcome_code(s) for s in scores])
