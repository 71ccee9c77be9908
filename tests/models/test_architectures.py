"""Tests for the offline model definitions (``models.tcn``, ``models.efficientnet``).

Pinned behaviour: the TCN is strictly causal and its receptive field is what the formula says;
EfficientNet B0-B3 reproduce torchvision's parameter counts and state_dict layout, drop-connect acts
only in training, both models export to ONNX with a dynamic batch and ONNX Runtime agrees with
PyTorch, and ``load_pretrained`` round-trips a state_dict and rejects a mismatched one by name.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from models.efficientnet import (
    VARIANTS,
    EfficientNet,
    MBConv,
    PretrainedWeightsError,
    efficientnet,
    load_pretrained,
)
from models.tcn import TCN


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --- TCN ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config",
    [{}, {"channels": (16, 24), "kernel_size": 5, "dilations": (1, 3), "num_outputs": 2}],
    ids=["default", "k5"],
)
@pytest.mark.parametrize("t", [0, 1, 17, 40, 63])
def test_tcn_future_inputs_never_change_past_logits(config: dict[str, object], t: int) -> None:
    model = TCN(in_channels=8, **config).eval()  # type: ignore[arg-type]
    x = torch.randn(2, 8, 64)
    future_changed = x.clone()
    future_changed[..., t:] = torch.randn(2, 8, 64 - t)
    only_t_changed = x.clone()
    only_t_changed[..., t] += 1.0

    with torch.no_grad():
        base = model.sequence_logits(x)
        with_new_future = model.sequence_logits(future_changed)
        with_new_t = model.sequence_logits(only_t_changed)

    assert torch.equal(with_new_future[..., :t], base[..., :t])
    assert torch.equal(with_new_t[..., :t], base[..., :t])
    # The step itself does see its own input, so the equalities above are not vacuous.
    assert not torch.equal(with_new_t[..., t], base[..., t])


def test_tcn_receptive_field_matches_formula_and_behaviour() -> None:
    model = TCN(in_channels=4, channels=(8, 8, 8), kernel_size=3, dilations=(1, 2, 4), dropout=0.0).eval()
    rf = model.receptive_field
    assert rf == 1 + 2 * (3 - 1) * (1 + 2 + 4)
    assert TCN(in_channels=4).receptive_field == 61

    length, t = 64, 63
    x = torch.randn(1, 4, length)
    oldest_seen = t - rf + 1
    before_window = x.clone()
    before_window[..., :oldest_seen] = torch.randn(1, 4, oldest_seen)
    at_window_edge = x.clone()
    at_window_edge[..., oldest_seen] += 1.0

    with torch.no_grad():
        base = model.sequence_logits(x)[..., t]
        assert torch.equal(model.sequence_logits(before_window)[..., t], base)
        assert not torch.equal(model.sequence_logits(at_window_edge)[..., t], base)


def test_tcn_shapes_and_last_step_forward() -> None:
    model = TCN(in_channels=8).eval()
    x = torch.randn(2, 8, 64)
    with torch.no_grad():
        sequence = model.sequence_logits(x)
        last = model(x)
    assert sequence.shape == (2, 1, 64)
    assert last.shape == (2, 1)
    assert torch.equal(last, sequence[..., -1])
    assert TCN(in_channels=8, num_outputs=3)(x).shape == (2, 3)


def test_tcn_rejects_mismatched_channels_and_dilations() -> None:
    with pytest.raises(ValueError, match="equal length"):
        TCN(in_channels=8, channels=(32, 32), dilations=(1, 2, 4))


# --- EfficientNet ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("variant", "expected"),
    # torchvision's published ``num_params`` for efficientnet_b0..b3 (ImageNet head, 1000 classes).
    [("b0", 5_288_548), ("b1", 7_794_184), ("b2", 9_109_994), ("b3", 12_233_232)],
)
def test_efficientnet_param_count_matches_torchvision(variant: str, expected: int) -> None:
    assert _num_params(efficientnet(variant, num_classes=1000)) == expected


def test_efficientnet_state_dict_follows_torchvision_layout() -> None:
    shapes = {k: tuple(v.shape) for k, v in efficientnet("b0").state_dict().items()}
    assert len(shapes) == 360
    assert shapes["features.0.0.weight"] == (32, 3, 3, 3)
    assert shapes["features.1.0.block.0.0.weight"] == (32, 1, 3, 3)  # first stage: no expansion conv
    assert shapes["features.1.0.block.1.fc1.weight"] == (8, 32, 1, 1)  # SE squeeze from block input
    assert shapes["features.2.0.block.2.fc1.weight"] == (4, 96, 1, 1)
    assert shapes["features.6.3.block.3.0.weight"] == (192, 1152, 1, 1)
    assert shapes["features.8.0.weight"] == (1280, 320, 1, 1)
    assert shapes["classifier.1.weight"] == (1000, 1280)


def test_efficientnet_small_chart_input_keeps_resolution_with_stride_one_stem() -> None:
    model = efficientnet("b0", num_classes=1, stem_stride=1).eval()
    x = torch.randn(2, 3, 54, 72)
    with torch.no_grad():
        assert model.features(x).shape == (2, 1280, 4, 5)
        assert model(x).shape == (2, 1)
    single_channel = efficientnet("b0", in_channels=1, num_classes=4).eval()
    with torch.no_grad():
        assert single_channel(torch.randn(1, 1, 40, 40)).shape == (1, 4)


def test_drop_connect_rate_grows_linearly_over_blocks() -> None:
    rates = [m.stochastic_depth.p for m in efficientnet("b0", drop_connect_rate=0.2).modules() if isinstance(m, MBConv)]
    assert rates == pytest.approx([0.2 * i / 16 for i in range(16)])


def test_drop_connect_only_in_training() -> None:
    x = torch.randn(4, 3, 32, 32)
    model = efficientnet("b0", num_classes=1, drop_connect_rate=0.5)
    # ``features`` excludes the classifier's dropout, so any train-mode difference comes from drop-connect.
    model.train()
    assert not torch.equal(model.features(x), model.features(x))
    without = efficientnet("b0", num_classes=1, drop_connect_rate=0.0).train()
    assert torch.equal(without.features(x), without.features(x))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_unknown_variant_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown EfficientNet variant 'b9'"):
        EfficientNet("b9")
    assert set(VARIANTS) == {"b0", "b1", "b2", "b3"}


# --- ONNX export -------------------------------------------------------------------------------


def _small_tcn() -> tuple[nn.Module, tuple[int, ...]]:
    return TCN(in_channels=8), (8, 64)


def _small_efficientnet() -> tuple[nn.Module, tuple[int, ...]]:
    return efficientnet("b0", num_classes=1, stem_stride=1), (3, 54, 72)


def _export_legacy(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # The TorchScript exporter (what ``models.export`` uses) is deprecated since torch 2.9 and says so twice.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model,
            (example,),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )


def _export_dynamo(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    # opset 18 is the lowest the torch.export-based exporter implements; asking for 17 makes it try a
    # down-conversion that fails and keeps 18 anyway.
    torch.onnx.export(
        model,
        (example,),
        path,
        dynamo=True,
        opset_version=18,
        input_names=["input"],
        output_names=["logits"],
        dynamic_shapes=({0: torch.export.Dim("batch")},),
        external_data=False,
    )


# torch's dynamo exporter trips its own pytree deprecation; nothing the models can change.
@pytest.mark.filterwarnings("ignore:`isinstance\\(treespec, LeafSpec\\)` is deprecated:FutureWarning")
@pytest.mark.parametrize("export", [_export_legacy, _export_dynamo], ids=["legacy-opset17", "dynamo-opset18"])
@pytest.mark.parametrize("build", [_small_tcn, _small_efficientnet], ids=["tcn", "efficientnet_b0"])
def test_onnx_export_matches_pytorch_for_any_batch(
    build: Callable[[], tuple[nn.Module, tuple[int, ...]]],
    export: Callable[[nn.Module, torch.Tensor, Path], None],
    tmp_path: Path,
) -> None:
    model, sample_shape = build()
    model.eval()
    path = tmp_path / "model.onnx"
    export(model, torch.randn(2, *sample_shape), path)
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, *sample_shape)
        with torch.no_grad():
            expected = model(x).numpy()
        (got,) = session.run(["logits"], {"input": x.numpy()})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4)


# --- load_pretrained ---------------------------------------------------------------------------


def test_load_pretrained_round_trips_a_saved_state_dict(tmp_path: Path) -> None:
    source = efficientnet("b0", num_classes=10)
    path = tmp_path / "b0.pt"
    torch.save(source.state_dict(), path)
    target = efficientnet("b0", num_classes=10)
    load_pretrained(target, path)
    for key, value in source.state_dict().items():
        assert torch.equal(target.state_dict()[key], value), key


def test_load_pretrained_rejects_mismatched_state_dict_by_name(tmp_path: Path) -> None:
    path = tmp_path / "b0.pt"
    torch.save(efficientnet("b0", num_classes=1000).state_dict(), path)
    target = efficientnet("b0", num_classes=1)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(
        PretrainedWeightsError,
        match=r"2 shape mismatches \(classifier\.1\.bias: file \(1000,\) vs model \(1,\), classifier\.1\.weight",
    ):
        load_pretrained(target, path)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in before.items()), "a failed load changed weights"

    with pytest.raises(PretrainedWeightsError, match=r"360 unexpected keys \(.*features\.0\.0\.weight") as excinfo:
        load_pretrained(TCN(in_channels=8), path)
    assert "missing keys (blocks.0.net.0.bias" in str(excinfo.value)


def test_load_pretrained_can_skip_the_head_for_fine_tuning(tmp_path: Path) -> None:
    source = efficientnet("b0", num_classes=1000)
    path = tmp_path / "b0.pt"
    torch.save(source.state_dict(), path)
    target = efficientnet("b0", num_classes=1)
    load_pretrained(target, path, ignore_prefixes=("classifier.",))
    assert torch.equal(target.state_dict()["features.0.0.weight"], source.state_dict()["features.0.0.weight"])
    assert target.classifier[1].weight.shape == (1, 1280)


def test_load_pretrained_rejects_a_file_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([torch.zeros(1)], path)
    with pytest.raises(PretrainedWeightsError, match="expected a state_dict"):
        load_pretrained(TCN(in_channels=8), path)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(PretrainedWeightsError, match="cannot read a state_dict"):
        load_pretrained(TCN(in_channels=8), garbage)
