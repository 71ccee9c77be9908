"""EfficientNet B0-B3 with compound scaling (Tan & Le 2019, arXiv:1905.11946), written from scratch.

Module names and parameter shapes follow torchvision's ``efficientnet_b*`` (``features.0`` stem,
``features.1``-``features.7`` stages of MBConv blocks, ``features.8`` head, ``classifier.1`` linear), so
a torchvision state_dict saved to a local file loads with :func:`load_pretrained` unchanged, and the
parameter counts equal torchvision's published ones (B0: 5,288,548).

BatchNorm uses PyTorch's defaults (eps 1e-5, momentum 0.1) as torchvision and timm's non-``tf_`` models
do; the paper's TensorFlow values (eps 1e-3, momentum 0.01 in PyTorch terms) change no parameter count
but would skew the outputs of weights ported from those libraries.
"""

from __future__ import annotations

import math
import pickle
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import torch
from torch import Tensor, nn

__all__ = [
    "VARIANTS",
    "EfficientNet",
    "EfficientNetParams",
    "MBConv",
    "PretrainedWeightsError",
    "StochasticDepth",
    "efficientnet",
    "load_pretrained",
    "round_filters",
    "round_repeats",
]


@dataclass(frozen=True)
class EfficientNetParams:
    """Compound-scaling coefficients of one variant; ``resolution`` is the paper's input size."""

    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS: Final[Mapping[str, EfficientNetParams]] = {
    "b0": EfficientNetParams(width=1.0, depth=1.0, resolution=224, dropout=0.2),
    "b1": EfficientNetParams(width=1.0, depth=1.1, resolution=240, dropout=0.2),
    "b2": EfficientNetParams(width=1.1, depth=1.2, resolution=260, dropout=0.3),
    "b3": EfficientNetParams(width=1.2, depth=1.4, resolution=300, dropout=0.3),
}


@dataclass(frozen=True)
class _Stage:
    expand: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


# Table 1 of the paper (B0); other variants scale channels by width and repeats by depth.
_B0_STAGES: Final = (
    _Stage(1, 3, 1, 32, 16, 1),
    _Stage(6, 3, 2, 16, 24, 2),
    _Stage(6, 5, 2, 24, 40, 2),
    _Stage(6, 3, 2, 40, 80, 3),
    _Stage(6, 5, 1, 80, 112, 3),
    _Stage(6, 5, 2, 112, 192, 4),
    _Stage(6, 3, 1, 192, 320, 1),
)
_STEM_CHANNELS: Final = 32
_HEAD_CHANNELS: Final = 1280
_SE_RATIO: Final = 0.25


def round_filters(channels: float, width: float, divisor: int = 8) -> int:
    """Scale ``channels`` by ``width`` to the nearest multiple of ``divisor``, never more than 10% down."""
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return rounded


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by ``depth``, rounding up."""
    return math.ceil(depth * repeats)


class ConvBNAct(nn.Sequential):
    """Bias-free convolution, BatchNorm and an optional SiLU (torchvision's ``Conv2dNormActivation``)."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, groups: int = 1, act: bool = True
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride=stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels),
        ]
        if act:
            layers.append(nn.SiLU(inplace=True))
        super().__init__(*layers)


class SqueezeExcitation(nn.Module):
    """Channel gate: global average, 1x1 conv down to ``squeeze_channels``, SiLU, 1x1 conv up, sigmoid."""

    def __init__(self, channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, kernel_size=1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, kernel_size=1)
        self.act = nn.SiLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        scale = x.mean(dim=(2, 3), keepdim=True)
        scale = self.fc2(self.act(self.fc1(scale)))
        return x * torch.sigmoid(scale)


class StochasticDepth(nn.Module):
    """Drop-connect: in training, zero a sample's residual branch with probability ``p`` and rescale the
    survivors by ``1 / (1 - p)``; the identity in eval mode."""

    def __init__(self, p: float) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop-connect probability must be in [0, 1), got {p}")
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expansion (skipped when ``expand == 1``), depthwise conv,
    squeeze-and-excitation, linear 1x1 projection; residual with drop-connect when shapes allow."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int,
        expand: int,
        drop_connect: float,
    ) -> None:
        super().__init__()
        expanded = round_filters(in_channels, expand)
        layers: list[nn.Module] = []
        if expanded != in_channels:
            layers.append(ConvBNAct(in_channels, expanded, kernel_size=1))
        layers.append(ConvBNAct(expanded, expanded, kernel_size, stride=stride, groups=expanded))
        # The squeeze width comes from the block's input channels, not the expanded ones (paper, torchvision).
        layers.append(SqueezeExcitation(expanded, max(1, int(in_channels * _SE_RATIO))))
        layers.append(ConvBNAct(expanded, out_channels, kernel_size=1, act=False))
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels
        self.stochastic_depth = StochasticDepth(drop_connect)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.block(x)
        if self.use_residual:
            out = self.stochastic_depth(out) + x
        return out


class EfficientNet(nn.Module):
    """EfficientNet-``variant`` classifier; accepts any input height and width (global average pool).

    ``stem_stride=1`` keeps the resolution of small inputs (e.g. 54x72 chart images), which the default
    stride-2 stem would quarter before the first block; the weights are the same either way.
    """

    def __init__(
        self,
        variant: str = "b0",
        in_channels: int = 3,
        num_classes: int = 1000,
        drop_connect_rate: float = 0.2,
        stem_stride: int = 2,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EfficientNet variant {variant!r}; expected one of {sorted(VARIANTS)}")
        params = VARIANTS[variant]
        self.variant = variant
        self.params = params

        features: list[nn.Module] = [
            ConvBNAct(in_channels, round_filters(_STEM_CHANNELS, params.width), kernel_size=3, stride=stem_stride)
        ]
        total_blocks = sum(round_repeats(stage.repeats, params.depth) for stage in _B0_STAGES)
        block_index = 0
        for stage in _B0_STAGES:
            stage_in = round_filters(stage.in_channels, params.width)
            stage_out = round_filters(stage.out_channels, params.width)
            blocks: list[nn.Module] = []
            for repeat in range(round_repeats(stage.repeats, params.depth)):
                blocks.append(
                    MBConv(
                        stage_in if repeat == 0 else stage_out,
                        stage_out,
                        stage.kernel,
                        stage.stride if repeat == 0 else 1,
                        stage.expand,
                        # Linear in depth: 0 for the first block, approaching the full rate at the last.
                        drop_connect=drop_connect_rate * block_index / total_blocks,
                    )
                )
                block_index += 1
            features.append(nn.Sequential(*blocks))
        head_in = round_filters(_B0_STAGES[-1].out_channels, params.width)
        head_out = round_filters(_HEAD_CHANNELS, params.width)
        features.append(ConvBNAct(head_in, head_out, kernel_size=1))

        self.features = nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(p=params.dropout), nn.Linear(head_out, num_classes))
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                bound = 1.0 / math.sqrt(module.out_features)
                nn.init.uniform_(module.weight, -bound, bound)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, in_channels, H, W) -> (batch, num_classes)`` logits."""
        pooled = torch.flatten(self.avgpool(self.features(x)), 1)
        logits: Tensor = self.classifier(pooled)
        return logits


def efficientnet(variant: str = "b0", **kw: Any) -> EfficientNet:
    """Build ``EfficientNet(variant, **kw)``."""
    return EfficientNet(variant, **kw)


class PretrainedWeightsError(ValueError):
    """A weights file is not a state_dict, or its keys or shapes do not match the model."""


def _preview(items: list[str], limit: int = 5) -> str:
    shown = ", ".join(items[:limit])
    return f"{shown}, ... ({len(items) - limit} more)" if len(items) > limit else shown


def load_pretrained(model: nn.Module, path: str | Path, *, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Load a local state_dict file into ``model`` with strict key and shape checking; no network access.

    ``ignore_prefixes`` names parameters that are neither required nor loaded (they keep their
    initialisation), e.g. ``("classifier.",)`` to fine-tune ImageNet weights with a new head.
    Raises :class:`PretrainedWeightsError` listing missing keys, unexpected keys and shape mismatches.
    """
    path = Path(path)
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as exc:
        raise PretrainedWeightsError(f"{path}: cannot read a state_dict: {exc}") from exc
    if not isinstance(loaded, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in loaded.items()
    ):
        raise PretrainedWeightsError(
            f"{path}: expected a state_dict (parameter name -> tensor), got {type(loaded).__name__}"
        )

    def kept(key: str) -> bool:
        return not key.startswith(ignore_prefixes)

    state = {k: v for k, v in loaded.items() if kept(k)}
    expected = {k: v for k, v in model.state_dict().items() if kept(k)}
    missing = sorted(expected.keys() - state.keys())
    unexpected = sorted(state.keys() - expected.keys())
    mismatched = sorted(
        f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in expected.keys() & state.keys()
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        problems = [
            f"{len(items)} {label} ({_preview(items)})"
            for label, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise PretrainedWeightsError(f"{path} does not match {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state, strict=not ignore_prefixes)
