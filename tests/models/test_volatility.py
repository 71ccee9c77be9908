"""The volatility forecast: the linear head fitted by QLIKE, and the volatility stacker's choice."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from inference.config import WorkerConfig
from inference.decision import decide
from inference.linear_features import LINEAR_BARS, ewma_variance
from inference.manifest import EnsembleSpec
from inference.scoring import qlike
from inference.signal import ComponentReport
from models.linear import fit_log_linear, fit_qlike
from models.stack import fit_magnitude, stacked_variance


def _heteroscedastic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Squared returns of known variance: ``ln V = 0.5 + 0.8·x0 - 0.3·x1``, a few wild stretches."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    x[: n // 50, 0] += 4.0  # the wildest bars: where a variance-weighted fit looks
    ln_v = 0.5 + 0.8 * x[:, 0] - 0.3 * x[:, 1]
    y = np.exp(ln_v) * rng.normal(size=n) ** 2
    return x, y, ln_v


def test_fit_qlike_recovers_a_log_linear_variance() -> None:
    x, y, _ = _heteroscedastic(40_000, 0)
    w, b = fit_qlike(x, y)
    assert w == pytest.approx([0.8, -0.3], abs=0.03) and b == pytest.approx(0.5, abs=0.04)


def test_fit_qlike_beats_the_poisson_fit_on_qlike_out_of_sample() -> None:
    """What moved the shipped head: the Poisson fit weighs bars by their variance, QLIKE does not."""
    x, y, _ = _heteroscedastic(20_000, 1)
    x_new, y_new, _ = _heteroscedastic(20_000, 2)
    # a misspecified model (the truth has curvature it cannot follow) is where the two losses differ
    feats, feats_new = np.column_stack([x[:, 0] ** 2, x[:, 1]]), np.column_stack([x_new[:, 0] ** 2, x_new[:, 1]])
    scores = {}
    for name, fit in (("qlike", fit_qlike), ("poisson", fit_log_linear)):
        w, b = fit(feats, y)
        scores[name] = qlike(np.exp(feats_new @ w + b), y_new)
    assert scores["qlike"] < scores["poisson"]


def _halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    first = np.arange(n) < n // 2
    return first, ~first


def test_the_stacker_is_chosen_when_a_head_knows_the_variance_and_weighs_it() -> None:
    rng = np.random.default_rng(3)
    n = 30_000
    ln_v = np.cumsum(rng.normal(0, 0.05, n)) * 0.3 + rng.normal(0, 0.6, n)  # slow level + fast changes
    real = np.exp(ln_v) * rng.normal(size=n) ** 2
    ewma = np.exp(ln_v + rng.normal(0, 0.8, n))  # knows the level only roughly
    heads = np.column_stack([np.exp(ln_v + rng.normal(0, 0.2, n)), np.exp(rng.normal(0, 1, n))])  # skill, noise
    heads[rng.random(n) < 0.1, 0] = np.nan  # the skilled one did not always vote
    first, second = _halves(n)
    chosen, spec, figures = fit_magnitude(real, np.sqrt(real), ewma, heads, ["good", "noise"], first, second)
    assert chosen == "stack" and spec is not None
    assert figures["qlike_stack"] < min(figures["qlike_ewma"], figures["qlike_heads"])
    assert spec.weights["good"] > 0.5 and abs(spec.weights["noise"]) < 0.1
    assert 0.5 < spec.move_per_vol < 1.0  # E|z| = 0.80 for a normal move


def test_without_skill_anywhere_the_stacker_stays_near_the_ewma() -> None:
    rng = np.random.default_rng(4)
    n = 30_000
    ln_v = rng.normal(0, 0.5, n)
    real = np.exp(ln_v) * rng.normal(size=n) ** 2
    ewma = np.exp(ln_v + rng.normal(0, 0.3, n))
    heads = np.exp(rng.normal(0, 1, (n, 1)))  # pure noise
    first, second = _halves(n)
    chosen, spec, figures = fit_magnitude(real, np.sqrt(real), ewma, heads, ["noise"], first, second)
    assert figures["qlike_heads"] > figures["qlike_ewma"]  # the plain mean of the heads is worse
    assert chosen in ("ewma", "stack")
    if spec is not None:
        assert abs(spec.weights["noise"]) < 0.05
    # with no head at all the choice is still made, between the EWMA and its recalibration
    chosen, _, figures = fit_magnitude(real, np.sqrt(real), ewma, np.zeros((n, 0)), [], first, second)
    assert chosen in ("ewma", "stack") and np.isnan(figures["qlike_heads"])


def test_the_fitted_stacker_forecasts_what_serving_computes() -> None:
    """Research-to-live parity: ``stacked_variance`` (what the fit scores) equals ``decide``'s
    volatility² for the same closes and votes, with a head missing and a B3 in its B0's slot."""
    rng = np.random.default_rng(5)
    names = ["a", "b"]
    n = 4_000
    closes = [100.0 * np.exp(np.cumsum(rng.normal(0, 4e-4 * (1 + k % 3), LINEAR_BARS))) for k in range(6)]
    ewma = np.array([ewma_variance(c) for c in closes])
    big_ewma = np.exp(rng.normal(2, 0.5, n))
    big_heads = np.exp(np.log(big_ewma)[:, None] + rng.normal(0, 0.3, (n, 2)))
    real = big_heads[:, 0] * rng.normal(size=n) ** 2
    _, spec, _ = fit_magnitude(real, np.sqrt(real), big_ewma, big_heads, names, *_halves(n))
    assert spec is not None
    heads = np.exp(np.log(ewma)[:, None] + rng.normal(0, 0.5, (6, 2)))
    heads[1, 0] = heads[4, 1] = np.nan  # these did not vote
    expected = stacked_variance(spec, ewma, heads, names)
    ensemble = EnsembleSpec(1, {"a": 1.0, "b": 1.0}, 0.0, {"method": "platt", "a": 1.0, "b": 0.0}, 0.55, "stack")
    ensemble = replace(ensemble, volatility=spec)
    for k in range(6):
        voters = [
            ComponentReport(
                "a3" if (k, name) == (2, "a") else name,
                "1",
                "h",
                0.55,
                1.0,
                "v",
                "cpu",
                0.1,
                "voted",
                horizon_minutes=1,
                volatility_bp=float(np.sqrt(heads[k, i])),
                stands_in_for="a" if (k, name) == (2, "a") else None,
            )
            for i, name in enumerate(names)
            if np.isfinite(heads[k, i])
        ]
        vol = decide(voters, ensemble, WorkerConfig(), list(closes[k]))[1].volatility_bp
        assert vol is not None and vol**2 == pytest.approx(expected[k], rel=1e-9)
