"""The seeds' zoo (``models.zoo``) served: each kind is fed what it was trained on, computed once per
window, and an entry whose input serving cannot build is refused."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from prometheus_client import CollectorRegistry

from inference.components import ModelRegistry, load_model_set
from inference.config import WorkerConfig
from inference.engine import SignalEngine, bars_to_array
from inference.features import FEATURE_NAMES, FEATURE_SET_VERSION, WARMUP_BARS, tcn_input
from inference.linear_features import LINEAR_BARS, LINEAR_FEATURES, LINEAR_SET_VERSION, linear_input
from inference.manifest import Component, sha256_file
from inference.metrics import WorkerMetrics
from inference.render import RENDERER_VERSION, ohlc_input, ohlc_pair
from inference.signal import Signal
from models.export import export_onnx
from models.zoo import FAMILIES, ZOO, DenseNet, zoo_input, zoo_model
from streaming.memory_store import MemoryStore
from streaming.store import BarEvent
from tests.inference.kit import MINUTE, T0, history, window, write_manifest

LENGTH = 32  # the sequence models' window here (the shipped ones read 64)


def _shape(kind: str) -> list[int]:
    """One input's shape (no batch axis) for ``kind``."""
    images = {"ohlc": [1, 54, 72], "ohlc_btc": [2, 54, 72]}
    return {"linear": [len(LINEAR_FEATURES)], **images}.get(zoo_input(kind), [len(FEATURE_NAMES), LENGTH])


def _input(kind: str, bars: np.ndarray) -> np.ndarray:
    """What training builds for ``kind`` from the window ``bars``."""
    if zoo_input(kind) == "linear":
        return linear_input(bars)
    if zoo_input(kind) == "ohlc":
        return ohlc_input(bars, 54, 24)
    if zoo_input(kind) == "ohlc_btc":  # BTCUSDT's own signal: its image over itself
        return ohlc_pair(bars, bars, 54, 24)
    return tcn_input(bars, LENGTH)


def _component(root: Path, kind: str) -> Component:
    family, variant = FAMILIES[kind]
    pre: dict[str, object] = {
        "linear": {"features": LINEAR_SET_VERSION, "bars_needed": LINEAR_BARS},
        "ohlc": {"renderer": "ohlc", "renderer_version": RENDERER_VERSION, "height": 54, "bars": 24},
        "ohlc_btc": {
            "renderer": "ohlc_pair",
            "renderer_version": RENDERER_VERSION,
            "height": 54,
            "bars": 24,
            "leader": "BTCUSDT",
        },
        "tcn": {"features": FEATURE_SET_VERSION, "length": LENGTH, "warmup": WARMUP_BARS},
    }[zoo_input(kind)]
    return Component(
        name=f"{kind}_1m",
        kind=kind,
        family=family,
        variant=variant,
        timeframe="1",
        version="v1",
        file=f"{kind}_1m.onnx",
        sha256=sha256_file(root / f"{kind}_1m.onnx"),
        input={"name": "input", "shape": ["batch", *_shape(kind)], "dtype": "float32"},
        output={"name": "logits", "shape": ["batch", 1]},
        preprocessing=pre,
        horizon="log return over the next 1 min",
        horizon_minutes=1,
    )


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every zoo kind exported (untrained weights, a non-trivial standardisation for the dense one)."""
    root = tmp_path_factory.mktemp("zoo")
    for kind in ZOO:
        torch.manual_seed(0)
        model = zoo_model(kind, _shape(kind)[0])
        if isinstance(model, DenseNet):
            model.standardise(torch.randn(64, _shape(kind)[0]) * 3 + 1)
        for m in model.modules():  # a head initialised at zero (the CIPM's) would answer 0.5 to anything
            if isinstance(m, torch.nn.Linear) and not m.weight.any():
                torch.nn.init.normal_(m.weight, std=0.01)
        example = np.zeros((1, *_shape(kind)), np.float32)
        export_onnx(model, example, root / f"{kind}_1m.onnx")
    # a 1D CNN reading a shorter window: its own input
    torch.manual_seed(1)
    export_onnx(
        zoo_model("cnn1d", len(FEATURE_NAMES)),
        np.zeros((1, len(FEATURE_NAMES), LENGTH // 2), np.float32),
        root / "cnn1d_short.onnx",
    )
    short = _component(root, "cnn1d")
    short = dataclasses.replace(
        short,
        name="cnn1d_short",
        file="cnn1d_short.onnx",
        sha256=sha256_file(root / "cnn1d_short.onnx"),
        input=short.input | {"shape": ["batch", len(FEATURE_NAMES), LENGTH // 2]},
        preprocessing=short.preprocessing | {"length": LENGTH // 2},
    )
    write_manifest(root, [*(_component(root, kind) for kind in ZOO), short])
    return root


async def test_every_zoo_kind_votes_on_the_input_it_was_trained_on_built_once_per_window(zoo: Path) -> None:
    metrics = WorkerMetrics(CollectorRegistry())
    registry = ModelRegistry(zoo, prefer_gpu=False, metrics=metrics)
    models = await registry.load()
    assert [c.disabled for c in models.components] == [None] * (len(ZOO) + 1)
    renderers = {c.name: c.renderer for c in models.components}
    renderer_of = {"ohlc_btc": "ohlc_pair"}
    expected = {f"{k}_1m": renderer_of.get(zoo_input(k), f"{zoo_input(k)}_input") for k in ZOO}
    assert renderers == expected | {"cnn1d_short": "tcn_input"}
    close = T0 + 300 * MINUTE
    store = MemoryStore(window_bars=300)
    await store.write(history(close, {"1": 260}))
    engine = SignalEngine(WorkerConfig(intervals=("1",), latency_budget_ms=60_000), store, registry, metrics)
    signal = await engine.compute(BarEvent("BTCUSDT", "1", close - MINUTE))
    await engine.close()
    assert isinstance(signal, Signal) and signal.source == "ensemble"
    voted = {c.name: c.p_up for c in signal.components}
    assert set(voted) == {f"{k}_1m" for k in ZOO} | {"cnn1d_short"} and None not in voted.values()

    bars = bars_to_array(window("1", close, 260))
    for kind in ZOO:  # what serving voted is the model on the features training builds
        x = _input(kind, bars)
        session = ort.InferenceSession(str(zoo / f"{kind}_1m.onnx"), providers=["CPUExecutionProvider"])
        logit = float(session.run(None, {"input": x[None]})[0][0, 0])
        assert voted[f"{kind}_1m"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6), kind
    session = ort.InferenceSession(str(zoo / "cnn1d_short.onnx"), providers=["CPUExecutionProvider"])
    logit = float(session.run(None, {"input": tcn_input(bars, LENGTH // 2)[None]})[0][0, 0])
    assert voted["cnn1d_short"] == pytest.approx(1 / (1 + np.exp(-logit)), abs=1e-6)

    def built(renderer: str) -> float | None:
        return metrics.registry.get_sample_value("candlecast_render_seconds_count", {"renderer": renderer})

    assert built("tcn_input") == 2  # four sequence models on one window: one tcn_input; the shorter one its own
    assert built("linear_input") == 1 and built("ohlc_input") == 1 and built("ohlc_pair") == 1


async def test_no_zoo_vote_reads_a_bar_after_the_close_it_is_for(zoo: Path) -> None:
    """Causality as served: bars written after the event's close (a late event finds them in the
    window) change no component's vote on that close."""
    registry = ModelRegistry(zoo, prefer_gpu=False)
    await registry.load()
    close = T0 + 300 * MINUTE
    votes = []
    for extra in (0, 7):
        store = MemoryStore(window_bars=400)
        await store.write(history(close + extra * MINUTE, {"1": 260 + extra}))
        config = WorkerConfig(intervals=("1",), latency_budget_ms=60_000)
        engine = SignalEngine(config, store, registry, WorkerMetrics(CollectorRegistry()))
        signal = await engine.compute(BarEvent("BTCUSDT", "1", close - MINUTE))
        await engine.close()
        assert isinstance(signal, Signal)
        votes.append({c.name: c.p_up for c in signal.components})
    assert None not in votes[0].values() and votes[0] == votes[1]


def test_a_zoo_entry_serving_cannot_feed_is_refused(zoo: Path) -> None:
    dense = _component(zoo, "dense")
    bilstm = _component(zoo, "bilstm")
    write_manifest(
        zoo,
        [
            dense,
            bilstm,
            # the dense network claiming the sequences' shape, a sequence model an older feature set,
            # and a kind serving has no input for
            dataclasses.replace(dense, name="dense_as_sequence", input=bilstm.input),
            dataclasses.replace(bilstm, name="bilstm_v0", preprocessing=bilstm.preprocessing | {"features": "v0"}),
            dataclasses.replace(bilstm, name="gru_1m", kind="gru"),
        ],
    )
    try:
        status = {c.name: c.disabled for c in load_model_set(zoo, prefer_gpu=False).components}
    finally:
        write_manifest(zoo, [_component(zoo, kind) for kind in ZOO])  # (without the short one: unused here)
    assert status == {
        "dense_1m": None,
        "bilstm_1m": None,
        "dense_as_sequence": "preprocessing_mismatch",
        "bilstm_v0": "preprocessing_mismatch",
        "gru_1m": "bad_manifest_entry",
    }
