"""The seeds' other architectures, as PyTorch modules that export to ONNX (the "model zoo").

Each follows its seed; where the seed leaves a choice open, the choice is stated here:

* :class:`DenseNet` — seed 002: hidden layers [256, 128, 64, 32], each Linear → BatchNorm → GELU →
  Dropout 0.3 (the seed's PyTorch version), on a feature vector (``(batch, features)``), standardised
  first by the training span's mean and deviation (buffers set by :meth:`DenseNet.standardise`: they
  travel inside the exported graph, so serving feeds the raw features).
* :class:`CNN1D` — seed 000 §4.1, "1D CNN (k=5)": two k=5 convolutions (32 and 64 filters, "same"
  padding, ReLU, BatchNorm), global average pooling, a 64-unit dense layer, dropout 0.3.
* :class:`MultiScaleCNN` — seed 000's ``MultiScaleCNN``: parallel branches k = 3, 7, 15, 31, each two
  "same" convolutions of 32 filters with ReLU and BatchNorm, concatenated, global average pooling,
  dense 128 → dropout 0.3 → dense 64.
* :class:`CNNTA` — seed 000 §4.2: the indicators-by-time matrix as a one-channel image, three 3x3
  convolutions (16, 32, 64) with 2x2 max pooling after the first two (pooled along time only: the
  matrix has just 8 indicator rows), global average pooling, dense 64, dropout 0.3 (the seed's 2D CNN
  example).
* :class:`CIPM` — seed 001 §4.3.1, Table 1 (its best CNN on the 54x72 OHLC image): three (5, 3)
  "same" convolutions (32, 64, 128 filters), each BatchNorm → LeakyReLU 0.01 → MaxPool (3, 1), dropout
  0.5 after the first two; flatten (128 x 2 x 72) → dense 256 → dropout 0.5 → the logit (the seed's
  regression output becomes the direction's logit: the signal asks up or down). With
  ``in_channels=2`` it is the seed's two-layer variant, BTC's image stacked as a second channel.
* :class:`BookCNN` — seed 000 §4.3 (its Example 2): the order-book heatmap as a one-channel image,
  three unpadded 3x3 convolutions (16, 32, 64, ReLU) with 2x2 max pooling after the first two, global
  average pooling, dense 64 → ReLU → dropout 0.3 → the logit. It reads ``(batch, 1, 200, rows)``:
  :func:`inference.render.book_heatmap` of the depth window (price by time), trained by
  :mod:`models.book` on recorded depth, not on bars.
* :class:`BiLSTM` — seed 001 §4.3.4: two bidirectional LSTM layers of 32 units a direction (64 out),
  each followed by BatchNorm and Dropout, flattened over the last 24 steps into one dense output.

The sequence models read ``(batch, channels, length)``, the TCN's input; a model that needs fewer
steps (the BiLSTM's 24) reads the newest ones. Every model returns ``(batch, num_outputs)`` logits.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "CIPM",
    "CNN1D",
    "CNNTA",
    "FAMILIES",
    "ZOO",
    "BiLSTM",
    "BookCNN",
    "DenseNet",
    "MultiScaleCNN",
    "zoo_input",
    "zoo_model",
]


class DenseNet(nn.Module):
    shift: Tensor
    scale: Tensor

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int] = (256, 128, 64, 32),
        dropout: float = 0.3,
        num_outputs: int = 1,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_features
        for width in hidden:
            layers += [nn.Linear(previous, width), nn.BatchNorm1d(width), nn.GELU(), nn.Dropout(dropout)]
            previous = width
        layers.append(nn.Linear(previous, num_outputs))
        self.net = nn.Sequential(*layers)
        self.register_buffer("shift", torch.zeros(in_features))
        self.register_buffer("scale", torch.ones(in_features))

    def standardise(self, x: Tensor) -> None:
        """Feed features as ``(x - mean) / std`` of ``x`` (the training samples) from now on."""
        self.shift.copy_(x.mean(dim=0))
        self.scale.copy_(x.std(dim=0).clamp_min(1e-6))

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.net((x - self.shift) / self.scale)
        return out


def _head(width: int, dropout: float, num_outputs: int) -> nn.Sequential:
    """Dense ``width`` → ReLU → dropout → the logits (the 1D CNN's and CNN-TA's classifier)."""
    return nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, num_outputs))


def _conv_block(in_channels: int, out_channels: int, kernel_size: int) -> list[nn.Module]:
    return [
        nn.Conv1d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        nn.ReLU(),
        nn.BatchNorm1d(out_channels),
    ]


class CNN1D(nn.Module):
    def __init__(self, in_channels: int, kernel_size: int = 5, dropout: float = 0.3, num_outputs: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(*_conv_block(in_channels, 32, kernel_size), *_conv_block(32, 64, kernel_size))
        self.head = _head(64, dropout, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.features(x).mean(dim=2))
        return out


class MultiScaleCNN(nn.Module):
    def __init__(
        self,
        in_channels: int,
        kernels: Sequence[int] = (3, 7, 15, 31),
        filters: int = 32,
        dropout: float = 0.3,
        num_outputs: int = 1,
    ) -> None:
        super().__init__()
        if any(k % 2 == 0 for k in kernels):
            raise ValueError(f"odd kernel sizes keep the length under 'same' padding, got {tuple(kernels)}")
        self.branches = nn.ModuleList(
            nn.Sequential(*_conv_block(in_channels, filters, k), *_conv_block(filters, filters, k)) for k in kernels
        )
        width = filters * len(kernels)
        self.head = nn.Sequential(
            nn.Linear(width, 128),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(128, 64),
            nn.ReLU(),
            nn.Linear(64, num_outputs),
        )

    def forward(self, x: Tensor) -> Tensor:
        pooled = torch.cat([branch(x).mean(dim=2) for branch in self.branches], dim=1)
        out: Tensor = self.head(pooled)
        return out


class CNNTA(nn.Module):
    def __init__(self, dropout: float = 0.3, num_outputs: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d((1, 2)),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d((1, 2)),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
        )
        self.head = _head(64, dropout, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, indicators, length)``: each window is one image, indicators by time."""
        out: Tensor = self.head(self.features(x.unsqueeze(1)).mean(dim=(2, 3)))
        return out


class CIPM(nn.Module):
    def __init__(
        self, in_channels: int = 1, height: int = 54, width: int = 72, dropout: float = 0.5, num_outputs: int = 1
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        previous = in_channels
        for i, filters in enumerate((32, 64, 128)):
            layers += [
                nn.Conv2d(previous, filters, (5, 3), padding=(2, 1)),
                nn.BatchNorm2d(filters),
                nn.LeakyReLU(0.01),
                nn.MaxPool2d((3, 1)),
            ]
            if i < 2:
                layers.append(nn.Dropout(dropout))
            previous = filters
        self.features = nn.Sequential(*layers)
        rows = height // 3 // 3 // 3
        if rows < 1:
            raise ValueError(f"height {height}: three (3, 1) poolings need at least 27 rows")
        last = nn.Linear(256, num_outputs)
        self.head = nn.Sequential(
            nn.Flatten(), nn.Linear(128 * rows * width, 256), nn.LeakyReLU(0.01), nn.Dropout(dropout), last
        )
        # Start from "no opinion" (as the EfficientNet does): PyTorch's default init over the
        # 128·2·72 flattened features put the first logits at several units, and the loss at 25 on the
        # second step of the one-layer model's run.
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, channels, height, width)`` images in [0, 1]."""
        out: Tensor = self.head(self.features(x))
        return out


class BookCNN(nn.Module):
    def __init__(self, dropout: float = 0.3, num_outputs: int = 1) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3),
            nn.ReLU(),
        )
        self.head = _head(64, dropout, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, 1, price bins, time)`` heatmaps in [0, 1]."""
        out: Tensor = self.head(self.features(x).mean(dim=(2, 3)))
        return out


class BiLSTM(nn.Module):
    def __init__(
        self, in_channels: int, steps: int = 24, hidden: int = 32, dropout: float = 0.3, num_outputs: int = 1
    ) -> None:
        super().__init__()
        self.steps = steps
        self.lstm1 = nn.LSTM(in_channels, hidden, batch_first=True, bidirectional=True)
        self.norm1 = nn.BatchNorm1d(2 * hidden)
        self.lstm2 = nn.LSTM(2 * hidden, hidden, batch_first=True, bidirectional=True)
        self.norm2 = nn.BatchNorm1d(2 * hidden)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(steps * 2 * hidden, num_outputs)

    def forward(self, x: Tensor) -> Tensor:
        """``(batch, channels, length >= steps)``: the newest ``steps`` bars are read."""
        seq = x[:, :, -self.steps :]
        # explicit zero states, shaped from the input: the exported graph keeps a dynamic batch
        zeros = seq.new_zeros(2, seq.shape[0], self.lstm1.hidden_size)
        out, _ = self.lstm1(seq.transpose(1, 2), (zeros, zeros))
        out = self.dropout(self.norm1(out.transpose(1, 2)).transpose(1, 2))
        out, _ = self.lstm2(out, (zeros, zeros))
        out = self.dropout(self.norm2(out.transpose(1, 2)))  # (batch, 2*hidden, steps)
        logits: Tensor = self.head(out.flatten(1))
        return logits


ZOO = ("dense", "cnn1d", "mscnn", "cnn_ta", "bilstm", "cipm", "cipm_btc")
# What each kind reads: the dense network the linear component's feature vector (set r1), the CIPM
# network the OHLC image (inference.render.ohlc_input), its two-layer variant that image over
# BTCUSDT's (inference.render.ohlc_pair), the others the TCN's indicator sequences (set v1, channels
# by time).
INPUTS = {"dense": "linear", "cipm": "ohlc", "cipm_btc": "ohlc_btc"}


def zoo_input(kind: str) -> str:
    """The sample kind (models.datasets) a zoo model reads: ``linear``, ``ohlc``, ``ohlc_btc`` or ``tcn``."""
    return INPUTS.get(kind, "tcn")


# (family, variant) as the manifest names them: the seed's model family and which member this is.
FAMILIES = {
    "dense": ("mlp", "256-128-64-32 batchnorm gelu dropout"),
    "cnn1d": ("cnn", "1d k5"),
    "mscnn": ("cnn", "multiscale k3-7-15-31"),
    "cnn_ta": ("cnn", "ta 2d (indicators x time)"),
    "bilstm": ("lstm", "bidirectional 2x32, newest 24 bars"),
    "cipm": ("cipm", "table 1, 1 layer (the symbol's image)"),
    "cipm_btc": ("cipm", "table 1, 2 layers (the symbol's image, BTCUSDT's)"),
}


def zoo_model(kind: str, in_channels: int, num_outputs: int = 1, dropout: float | None = None) -> nn.Module:
    """The seed architecture ``kind`` for ``in_channels`` features (the dense network's input width,
    the CIPM's image layers); ``dropout`` replaces the seed's rate (``candlecast tune`` chooses it)."""
    rate = dropout if dropout is not None else (0.5 if kind in ("cipm", "cipm_btc") else 0.3)  # the seeds' rates
    if kind == "dense":
        return DenseNet(in_channels, num_outputs=num_outputs, dropout=rate)
    if kind == "cnn1d":
        return CNN1D(in_channels, num_outputs=num_outputs, dropout=rate)
    if kind == "mscnn":
        return MultiScaleCNN(in_channels, num_outputs=num_outputs, dropout=rate)
    if kind == "cnn_ta":
        return CNNTA(num_outputs=num_outputs, dropout=rate)
    if kind == "bilstm":
        return BiLSTM(in_channels, num_outputs=num_outputs, dropout=rate)
    if kind in ("cipm", "cipm_btc"):
        return CIPM(in_channels, num_outputs=num_outputs, dropout=rate)
    raise ValueError(f"unknown zoo model {kind!r}; known: {', '.join(ZOO)}")
