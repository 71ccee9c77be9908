"""One question per signal: components of another horizon are refused, the stacked ensemble applies
the manifest's earned weights, calibration and threshold, and every call is priced against its cost."""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from inference.components import ModelRegistry, load_model_set
from inference.config import WorkerConfig
from inference.decision import decide
from inference.engine import SignalEngine
from inference.ensemble import Vote, economics, stack
from inference.features import FeatureError
from inference.linear_features import LINEAR_BARS, LINEAR_FEATURES, ewma_variance, linear_input
from inference.manifest import EnsembleSpec, Manifest, ManifestError
from inference.metrics import WorkerMetrics
from inference.signal import ComponentReport, Signal
from streaming.memory_store import MemoryStore
from streaming.store import BarEvent
from tests.inference.kit import (
    MINUTE,
    T0,
    history,
    image_component,
    model_cache,
    tcn_component,
    write_manifest,
)

pytestmark = pytest.mark.timeout(60)

SYMBOL = "BTCUSDT"
CLOSE = T0 + 60 * MINUTE


def _artifacts(cache: Path, dest: Path, tcn5_horizon: int, ensemble: dict[str, Any] | None = None) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for f in ("tcn_1m.onnx", "tcn_5m.onnx", "efficientnet.onnx"):
        shutil.copy(cache / f, dest / f)
    components = [
        tcn_component(dest, "1", "tcn_1m.onnx"),
        tcn_component(dest, "5", "tcn_5m.onnx", horizon_minutes=tcn5_horizon),
        image_component(dest, "1"),
    ]
    write_manifest(dest, components)
    if ensemble is not None:
        m = Manifest.load(dest / "manifest.json")
        Manifest(m.components, m.created, ensemble=EnsembleSpec.parse(ensemble)).save(dest / "manifest.json")
    return dest


async def _signal(artifacts: Path, config: WorkerConfig) -> Signal:
    store = MemoryStore(window_bars=128)
    await store.write(history(CLOSE, {"1": 100, "5": 100, "60": 20}))
    registry = ModelRegistry(artifacts, prefer_gpu=False)
    await registry.load()
    engine = SignalEngine(config, store, registry, WorkerMetrics(CollectorRegistry()))
    s = await engine.compute(BarEvent(SYMBOL, "1", CLOSE - MINUTE))
    await engine.close()
    assert isinstance(s, Signal)
    return s


async def test_a_component_trained_for_another_horizon_is_refused(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    art = _artifacts(model_cache(tmp_path_factory), tmp_path / "a", tcn5_horizon=5)
    config = WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=5000)
    s = await _signal(art, config)
    status = {c.name: (c.status, c.reason, c.horizon_minutes) for c in s.components}
    assert status == {
        "tcn_1m": ("voted", None, 1),
        "tcn_5m": ("dropped", "horizon_mismatch", 5),
        "efficientnet_1m": ("voted", None, 1),
    }
    assert s.horizon_minutes == 1
    # asked for 5 minutes ahead, only the 5-minute component answers
    s5 = await _signal(art, WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=5000, horizon_minutes=5))
    assert {c.name for c in s5.components if c.status == "voted"} == {"tcn_5m"}
    assert s5.horizon_minutes == 5 and s5.horizon == "log return over the next 5 min"


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


async def test_the_stacked_ensemble_applies_the_manifests_weights_calibration_and_threshold(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    spec = {
        "horizon_minutes": 1,
        "weights": {"tcn_1m": 0.8, "efficientnet_1m": -0.3, "tcn_5m": 0.5},
        "intercept": 0.02,
        "calibration": {"method": "platt", "a": 0.7, "b": -0.01},
        "threshold": 0.5001,
        "magnitude": "ewma",
    }
    art = _artifacts(model_cache(tmp_path_factory), tmp_path / "a", tcn5_horizon=5, ensemble=spec)
    s = await _signal(art, WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=5000))
    p = {c.name: c.p_up for c in s.components}
    assert p["tcn_5m"] is None  # refused for its horizon: it adds nothing to the stack
    assert p["tcn_1m"] is not None and p["efficientnet_1m"] is not None
    z = 0.02 + 0.8 * _logit(p["tcn_1m"]) - 0.3 * _logit(p["efficientnet_1m"])
    expected = 1 / (1 + math.exp(-(0.7 * z - 0.01)))
    assert s.calibrated and s.p_up == pytest.approx(expected, rel=1e-9)
    assert s.direction == ("long" if expected >= 0.5001 else "short" if expected <= 0.4999 else "flat")
    assert {c.name: c.weight for c in s.components} == {"tcn_1m": 0.8, "tcn_5m": 0.5, "efficientnet_1m": -0.3}
    # magnitude from the EWMA of the 1m closes (the manifest says the heads did not beat it)
    closes = [float(b.close) for b in history(CLOSE, {"1": 100}).bars[(SYMBOL, "1")]]
    vol = math.sqrt(ewma_variance(closes[-LINEAR_BARS:]))
    assert s.volatility_bp == pytest.approx(vol, abs=1e-4)
    assert s.expected_move_bp == pytest.approx(math.sqrt(2 / math.pi) * vol, abs=1e-4)
    assert s.edge_bp == pytest.approx((2 * expected - 1) * math.sqrt(2 / math.pi) * vol, abs=1e-3)


VOL_STACK = {"weights": {"tcn_1m": 0.25}, "ewma": 0.7, "intercept": 0.3, "move_per_vol": 0.6}


async def test_the_volatility_stacker_prices_the_served_call(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """With ``magnitude: stack`` the engine's volatility is the manifest's QLIKE-fitted stacker (here
    with no head weighted: the EWMA recalibrated), and E|move| its fitted multiple of it."""
    spec = {
        "horizon_minutes": 1,
        "weights": {"tcn_1m": 0.8, "efficientnet_1m": -0.3},
        "intercept": 0.02,
        "calibration": {"method": "platt", "a": 0.7, "b": -0.01},
        "threshold": 0.5001,
        "magnitude": "stack",
        "volatility": VOL_STACK | {"weights": {}},
    }
    art = _artifacts(model_cache(tmp_path_factory), tmp_path / "a", tcn5_horizon=5, ensemble=spec)
    assert Manifest.load(art / "manifest.json").ensemble == EnsembleSpec.parse(spec)  # saved and read back
    s = await _signal(art, WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=5000))
    closes = [float(b.close) for b in history(CLOSE, {"1": 100}).bars[(SYMBOL, "1")]]
    ln_ewma = math.log(ewma_variance(closes[-LINEAR_BARS:]))
    vol = math.exp((0.3 + 0.7 * ln_ewma) / 2)
    assert s.volatility_bp == pytest.approx(vol, abs=1e-4)  # the signal carries 4 decimals
    assert s.expected_move_bp == pytest.approx(0.6 * vol, abs=1e-4)
    assert s.volatility_bp != pytest.approx(math.exp(ln_ewma / 2), rel=1e-3)  # not the plain EWMA


def _report(name: str, p_up: float, volatility_bp: float | None, stands_in_for: str | None = None) -> ComponentReport:
    return ComponentReport(
        name, "1", "log return over the next 1 min", p_up, 1.0, "v", "CPUExecutionProvider", 0.1, "voted",
        horizon_minutes=1, expected_move_bp=None if volatility_bp is None else 0.8 * volatility_bp,
        volatility_bp=volatility_bp, stands_in_for=stands_in_for,
    )  # fmt: skip


def test_the_volatility_stacker_reads_each_head_by_its_slot_and_the_ewma_for_a_missing_one() -> None:
    closes = [100.0 * math.exp(0.0004 * math.sin(i) + 0.0001 * i) for i in range(300)]
    ln_e = math.log(ewma_variance(closes[-LINEAR_BARS:]))
    weights = {"a": 0.5, "b": 0.2}
    spec = EnsembleSpec.parse(
        GOOD
        | {"weights": {"a": 1.0, "b": 1.0}, "magnitude": "stack"}
        | {"volatility": {"weights": weights, "ewma": 0.4, "intercept": -0.1, "move_per_vol": 0.7}}
    )
    config = WorkerConfig()

    def vol(voters: list[ComponentReport]) -> float | None:
        return decide(voters, spec, config, closes)[1].volatility_bp

    both = vol([_report("a", 0.6, 3.0), _report("b", 0.55, 5.0)])
    assert both == pytest.approx(math.exp((-0.1 + 0.4 * ln_e + 0.5 * math.log(9.0) + 0.2 * math.log(25.0)) / 2))
    only_a = vol([_report("a", 0.6, 3.0), _report("b", 0.55, None)])  # b voted without a variance head
    assert only_a == pytest.approx(math.exp((-0.1 + 0.4 * ln_e + 0.5 * math.log(9.0) + 0.2 * ln_e) / 2))
    # a B3 in the B0's slot is read with the B0's weight
    assert vol([_report("a3", 0.6, 3.0, stands_in_for="a"), _report("b", 0.55, 5.0)]) == pytest.approx(both)
    economics = decide([_report("a", 0.6, 3.0), _report("b", 0.55, 5.0)], spec, config, closes)[1]
    assert economics.expected_move_bp == pytest.approx(0.7 * both)
    # without the closes the EWMA needs there is no magnitude at all, never a made-up one
    assert decide([_report("a", 0.6, 3.0)], spec, config, closes[:5])[1].volatility_bp is None


def test_stacking_math_and_missing_components() -> None:
    spec = EnsembleSpec.parse(
        {
            "horizon_minutes": 1,
            "weights": {"a": 1.0, "b": 2.0},
            "intercept": 0.0,
            "calibration": {"method": "platt", "a": 1.0, "b": 0.0},
            "threshold": 0.55,
        }
    )
    both = stack([Vote("a", 0.6, 1.0), Vote("b", 0.6, 1.0)], spec)
    assert both.p_up == pytest.approx(1 / (1 + math.exp(-3 * _logit(0.6))))
    assert both.direction == "long" and both.calibrated
    alone = stack([Vote("a", 0.6, 1.0)], spec)  # b did not vote: it adds 0 (no opinion)
    assert alone.p_up == pytest.approx(0.6) and alone.direction == "long"
    assert stack([Vote("a", 0.52, 1.0)], spec).direction == "flat"  # below the threshold
    assert stack([Vote("a", 0.4, 1.0)], spec).direction == "short"
    with pytest.raises(ValueError, match="no usable votes"):
        stack([Vote("c", 0.9, 1.0)], spec)  # no stacker weight: nothing to combine
    contrarian = EnsembleSpec.parse(GOOD | {"weights": {"a": 1.0, "b": -1.0}, "threshold": 0.5})
    both_long = stack([Vote("a", 0.6, 1.0), Vote("b", 0.4, 1.0)], contrarian)
    assert both_long.direction == "long" and both_long.agreement == 1.0  # b leans short, so it pushes long


def test_a_call_is_tradeable_only_when_its_edge_clears_the_round_trip_cost() -> None:
    small = economics(0.6, "long", 20.0, 25.0, fee_bp=5.5)  # edge 4 bp < 11 bp
    assert (small.edge_bp, small.cost_bp, small.tradeable) == (pytest.approx(4.0), 11.0, False)
    big = economics(0.6, "long", 100.0, 120.0, fee_bp=5.5)
    assert big.tradeable and big.edge_bp == pytest.approx(20.0)
    short = economics(0.4, "short", 100.0, 120.0, fee_bp=5.5)
    assert short.tradeable and short.edge_bp == pytest.approx(-20.0)
    assert not economics(0.4, "long", 100.0, 120.0, fee_bp=5.5).tradeable  # edge against the call
    assert not economics(0.6, "flat", 100.0, 120.0, fee_bp=5.5).tradeable
    assert not economics(0.6, "long", 100.0, 120.0, fee_bp=20.0).tradeable  # 40 bp round trip
    rule = economics(None, "long", 100.0, 120.0, fee_bp=5.5)  # the fallback: no probability, no edge
    assert (rule.edge_bp, rule.tradeable) == (None, False)


GOOD = {
    "horizon_minutes": 1,
    "weights": {"a": 1.0},
    "intercept": 0.0,
    "calibration": {"method": "platt", "a": 1.0, "b": 0.0},
    "threshold": 0.55,
}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"threshold": 0.4}, "threshold must lie in"),
        ({"threshold": float("nan")}, "threshold must be a finite number"),
        ({"weights": {"a": "x"}}, "weight of a must be a finite number"),
        ({"weights": {}}, "weights must be a non-empty object"),
        ({"calibration": {"method": "isotonic"}}, "calibration must be"),
        ({"horizon_minutes": 0}, "horizon_minutes must be a whole number"),
        ({"horizon_minutes": True}, "horizon_minutes must be a whole number"),
        ({"magnitude": "oracle"}, "magnitude must be"),
        ({"magnitude": "stack"}, "volatility section goes with magnitude 'stack'"),
        ({"magnitude": "ewma", "volatility": VOL_STACK}, "volatility section goes with magnitude 'stack'"),
        ({"magnitude": "stack", "volatility": VOL_STACK | {"move_per_vol": 0.0}}, "move_per_vol must lie in"),
        ({"magnitude": "stack", "volatility": VOL_STACK | {"ewma": float("inf")}}, "volatility ewma must be a finite"),
        ({"magnitude": "stack", "volatility": VOL_STACK | {"weights": {"a": None}}}, "volatility weight of a"),
        ({"magnitude": "stack", "volatility": VOL_STACK | {"weights": {"a": 1e308}}}, "weight of a must lie in"),
        ({"magnitude": "stack", "volatility": VOL_STACK | {"ewma": -1e308}}, "volatility ewma must lie in"),
        ({"magnitude": "stack", "volatility": VOL_STACK | {"intercept": 1e6}}, "volatility intercept must lie in"),
        ({"magnitude": "stack", "volatility": {"weights": {}}}, "volatility: missing"),
        ({"magnitude": "stack", "volatility": [1]}, "volatility must be an object"),
        ({"intercept": None}, "intercept must be a finite number"),
        ({"fitted": [1, 2]}, "fitted must be an object"),
    ],
)
def test_a_bad_ensemble_section_is_refused_with_the_reason(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ManifestError, match=message):
        EnsembleSpec.parse(GOOD | change)


def test_volatility_weights_must_name_components_with_a_variance_head(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    spec = GOOD | {"magnitude": "stack", "volatility": VOL_STACK}  # tcn_1m has no variance head
    art = _artifacts(model_cache(tmp_path_factory), tmp_path / "a", tcn5_horizon=5, ensemble=spec)
    with pytest.raises(ManifestError, match=r"volatility weights name no component with a variance head: \['tcn_1m'\]"):
        Manifest.load(art / "manifest.json")


def test_a_manifest_with_a_bad_ensemble_keeps_the_previous_models(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    art = _artifacts(model_cache(tmp_path_factory), tmp_path / "a", tcn5_horizon=5)
    raw = (art / "manifest.json").read_text().rstrip().rstrip("}") + ', "ensemble": {"threshold": 2}}'
    (art / "manifest.json").write_text(raw)
    with pytest.raises(ManifestError, match="ensemble: missing"):
        Manifest.load(art / "manifest.json")
    with pytest.raises(ManifestError):
        load_model_set(art, prefer_gpu=False)  # the registry logs it and keeps what it serves


@pytest.mark.parametrize(
    ("output", "horizon"),
    [
        ({"name": "logits", "shape": ["batch", 2], "heads": ["abs_move_bp", "logit"]}, 1),  # logit not first
        ({"name": "logits", "shape": ["batch", 2], "heads": ["logit", "sharpe"]}, 1),  # unknown head
        ({"name": "logits", "shape": ["batch", 1]}, 0),  # no such horizon
    ],
)
def test_a_component_with_bad_heads_or_horizon_is_disabled_alone(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, output: dict[str, Any], horizon: int
) -> None:
    import dataclasses

    art = _artifacts(model_cache(tmp_path_factory), tmp_path / "a", tcn5_horizon=5)
    m = Manifest.load(art / "manifest.json")
    bad = dataclasses.replace(m.components[0], output=output, horizon_minutes=horizon)
    Manifest((bad, *m.components[1:]), m.created).save(art / "manifest.json")
    models = load_model_set(art, prefer_gpu=False)
    assert [(c.name, c.disabled) for c in models.components] == [
        ("tcn_1m", "bad_manifest_entry"),
        ("tcn_5m", None),
        ("efficientnet_1m", None),
    ]


def _bars(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 1e-3, n)))
    open_ = np.concatenate([[100.0], close[:-1]])
    return np.column_stack(
        [open_, np.maximum(open_, close) * 1.0005, np.minimum(open_, close) * 0.9995, close, rng.uniform(1, 5, n)]
    )


def test_linear_features_read_exactly_the_last_241_bars() -> None:
    bars = _bars(400)
    x = linear_input(bars)
    assert x.shape == (len(LINEAR_FEATURES),) and x.dtype == np.float32 and np.isfinite(x).all()
    assert np.array_equal(x, linear_input(bars[-LINEAR_BARS:]))  # what precedes the window is ignored
    assert not np.array_equal(x, linear_input(bars[:-1]))
    scaled = bars.copy()
    scaled[:, :4] *= 1000.0  # scale-free in price
    assert np.allclose(linear_input(scaled), x, atol=1e-4)
    with pytest.raises(FeatureError, match="needs 241 bars"):
        linear_input(bars[-240:])
    holed = bars[-LINEAR_BARS:].copy()
    holed[100, 3] = np.nan
    with pytest.raises(FeatureError):
        linear_input(holed)


def test_the_volatility_reads_only_the_newest_run_of_consecutive_bars() -> None:
    from inference.engine import _contiguous_closes

    bars = history(CLOSE, {"1": 30}).bars[(SYMBOL, "1")]
    holed = bars[:10] + bars[12:]  # two bars missing: the return across the hole is not one bar's
    assert _contiguous_closes(holed, "1") == [float(b.close) for b in bars[12:]]
    assert _contiguous_closes(bars, "1") == [float(b.close) for b in bars]
    assert _contiguous_closes([], "1") == []


async def test_a_signal_short_of_its_quorum_is_partial_and_flat(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    """Warm-up: a signal some component answering H could not vote on says ``partial``; with fewer
    than the quorum's share voting it makes no call (flat, its probability still shown)."""
    spec = {
        "horizon_minutes": 1,
        "weights": {"tcn_1m": 0.8, "efficientnet_1m": -0.3, "tcn_5m": 0.5},
        "intercept": 0.02,
        "calibration": {"method": "platt", "a": 0.7, "b": -0.01},
        "threshold": 0.5,  # every probability is a long or a short call, unless the quorum says flat
        "magnitude": "ewma",
    }
    art = _artifacts(model_cache(tmp_path_factory), tmp_path / "a", tcn5_horizon=1, ensemble=spec)
    registry = ModelRegistry(art, prefer_gpu=False)
    await registry.load()

    async def signal(quorum: float, counts: dict[str, int]) -> Signal:
        store = MemoryStore(window_bars=300)
        await store.write(history(CLOSE, counts))
        config = WorkerConfig(intervals=("1", "5", "60"), latency_budget_ms=5000, quorum=quorum)
        engine = SignalEngine(config, store, registry, WorkerMetrics(CollectorRegistry()))
        s = await engine.compute(BarEvent(SYMBOL, "1", CLOSE - MINUTE))
        await engine.close()
        assert isinstance(s, Signal) and s.source == "ensemble"
        return s

    full = await signal(0.5, {"1": 100, "5": 100, "60": 20})
    assert not full.partial and full.direction in ("long", "short")
    two_of_three = await signal(0.5, {"1": 100, "60": 20})  # no 5m window yet: tcn_5m cannot vote
    assert two_of_three.partial and two_of_three.direction in ("long", "short")
    assert {c.name: c.reason for c in two_of_three.components if c.status == "dropped"} == {"tcn_5m": "empty_window"}
    strict = await signal(0.9, {"1": 100, "60": 20})
    assert strict.partial and strict.direction == "flat" and not strict.tradeable
    assert strict.p_up == two_of_three.p_up  # the same votes: shown, not acted on
    assert Signal.from_json(strict.to_json()).partial  # on the wire
