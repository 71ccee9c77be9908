"""The seeds' other architectures (``models.zoo``): the shapes they read and return, what they read
of a window, the seeds' layer sizes, and that each exports to ONNX with a dynamic batch and ONNX
Runtime agreeing with PyTorch (``models.export``'s own export and parity check)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from models.export import _parity, export_onnx
from models.zoo import CIPM, ZOO, BiLSTM, DenseNet, MultiScaleCNN, zoo_model

CHANNELS, LENGTH, FEATURES = 8, 64, 29


def _example(kind: str, batch: int = 5) -> np.ndarray:
    rng = np.random.default_rng(0)
    images = {"cipm": (batch, 1, 54, 72), "cipm_btc": (batch, 2, 54, 72)}
    shape = {"dense": (batch, FEATURES), **images}.get(kind, (batch, CHANNELS, LENGTH))
    return rng.standard_normal(shape).astype(np.float32)


def _trained_looking(kind: str) -> torch.nn.Module:
    """A model whose BatchNorm statistics are not the identity (as after training), in eval mode."""
    torch.manual_seed(0)
    model = zoo_model(kind, {"dense": FEATURES, "cipm": 1, "cipm_btc": 2}.get(kind, CHANNELS))
    for m in model.modules():  # a head initialised at zero (the CIPM's) would make every output 0
        if isinstance(m, torch.nn.Linear) and not m.weight.any():
            torch.nn.init.normal_(m.weight, std=0.01)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.from_numpy(_example(kind, 64)) * 2 + 1)
    return model.eval()


@pytest.mark.parametrize("kind", ZOO)
def test_each_model_returns_one_logit_per_window_and_exports_with_parity(kind: str, tmp_path: Path) -> None:
    model = _trained_looking(kind)
    x = _example(kind)
    with torch.no_grad():
        assert model(torch.from_numpy(x)).shape == (5, 1)
    path = tmp_path / f"{kind}.onnx"
    export_onnx(model, x[:1], path)
    onnx_out, diff = _parity(model, path, _example(kind, 300))  # another batch size than exported
    assert onnx_out.shape == (300,) and np.isfinite(onnx_out).all() and diff <= 1e-4


def test_the_bilstm_reads_the_newest_24_bars_only() -> None:
    model = _trained_looking("bilstm")
    assert isinstance(model, BiLSTM) and model.steps == 24
    x = torch.from_numpy(_example("bilstm"))
    older = x.clone()
    older[:, :, : LENGTH - 24] = 100.0  # anything before the newest 24 bars
    newest = x.clone()
    newest[:, :, -1] += 1.0
    with torch.no_grad():
        assert torch.equal(model(x), model(older))
        assert not torch.allclose(model(x), model(newest))


def test_the_seeds_layer_sizes() -> None:
    dense = DenseNet(FEATURES)
    widths = [m.out_features for m in dense.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [256, 128, 64, 32, 1]
    assert [m.p for m in dense.modules() if isinstance(m, torch.nn.Dropout)] == [0.3] * 4
    ms = MultiScaleCNN(CHANNELS)
    kernels = sorted({m.kernel_size[0] for m in ms.modules() if isinstance(m, torch.nn.Conv1d)})
    assert kernels == [3, 7, 15, 31]
    with pytest.raises(ValueError, match="odd kernel"):
        MultiScaleCNN(CHANNELS, kernels=(3, 4))
    cipm = CIPM(in_channels=2)  # the two-layer variant: BTC's image as a second channel
    assert [m.kernel_size for m in cipm.modules() if isinstance(m, torch.nn.Conv2d)] == [(5, 3)] * 3
    assert [m.kernel_size for m in cipm.modules() if isinstance(m, torch.nn.MaxPool2d)] == [(3, 1)] * 3
    assert [m.p for m in cipm.modules() if isinstance(m, torch.nn.Dropout)] == [0.5] * 3
    # Table 1 of seed 001, parameter by parameter (with one input layer)
    one = CIPM(in_channels=1)
    convs = [sum(p.numel() for p in m.parameters()) for m in one.modules() if isinstance(m, torch.nn.Conv2d)]
    dense = [sum(p.numel() for p in m.parameters()) for m in one.modules() if isinstance(m, torch.nn.Linear)]
    assert convs == [512, 30_784, 123_008] and dense == [4_718_848, 257]
    with pytest.raises(ValueError, match="at least 27 rows"):
        CIPM(height=20)
    with pytest.raises(ValueError, match="unknown zoo model"):
        zoo_model("transformer", CHANNELS)


def test_the_dense_networks_standardisation_travels_inside_the_exported_graph(tmp_path: Path) -> None:
    model = _trained_looking("dense")
    assert isinstance(model, DenseNet)
    x = _example("dense", 300) * 3 + 1
    with torch.no_grad():
        raw = model(torch.from_numpy(x))
        model.standardise(torch.from_numpy(x))
        standardised = model(torch.from_numpy(x))
        # the same as feeding standardised features to the unstandardised network
        model.shift.zero_()
        model.scale.fill_(1.0)
        z = (x - x.mean(axis=0)) / x.std(axis=0, ddof=1)
        assert torch.allclose(model(torch.from_numpy(z.astype(np.float32))), standardised, atol=1e-4)
        model.standardise(torch.from_numpy(x))
    assert not torch.allclose(raw, standardised)
    export_onnx(model, x[:1], tmp_path / "dense.onnx")
    onnx_out, diff = _parity(model, tmp_path / "dense.onnx", x)
    assert diff <= 1e-4 and np.allclose(onnx_out, standardised.numpy().reshape(-1), atol=1e-4)
