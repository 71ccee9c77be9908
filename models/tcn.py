"""Temporal convolutional network (Bai, Kolter & Koltun 2018, arXiv:1803.01271) for bar sequences.

Each residual block holds two dilated causal convolutions: in effect the input is padded on the left only,
by ``(kernel_size - 1) * dilation``, so the output at step ``t`` sees inputs ``<= t`` and nothing later.
The paper's weight normalisation is left out, which keeps the state_dict and the exported ONNX graph free
of parametrisations.

Shapes: ``(batch, in_channels, length)`` in; ``forward`` returns ``(batch, num_outputs)`` logits for
the last step, ``sequence_logits`` returns ``(batch, num_outputs, length)``.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["TCN", "CausalConv1d", "TemporalBlock"]


class CausalConv1d(nn.Conv1d):
    """A 1-d convolution whose output step ``t`` depends on inputs ``<= t`` only.

    The convolution pads ``(kernel_size - 1) * dilation`` zeros on both sides and the steps that saw the
    right padding are cut off (the paper's "chomp"). This equals left-only padding; ``F.pad`` would do it
    directly, but the TorchScript ONNX exporter lowers it to a reversed Slice it cannot constant-fold.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int = 1) -> None:
        padding = (kernel_size - 1) * dilation
        super().__init__(in_channels, out_channels, kernel_size, dilation=dilation, padding=padding)
        self.causal_padding = padding

    def forward(self, x: Tensor) -> Tensor:
        out = super().forward(x)
        return out[..., : -self.causal_padding] if self.causal_padding else out


class TemporalBlock(nn.Module):
    """Two causal convolutions with ReLU and dropout, plus a (1x1-projected when needed) skip."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            CausalConv1d(in_channels, out_channels, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
            CausalConv1d(out_channels, out_channels, kernel_size, dilation),
            nn.ReLU(),
            nn.Dropout(dropout),
        )
        self.skip: nn.Module = (
            nn.Conv1d(in_channels, out_channels, kernel_size=1) if in_channels != out_channels else nn.Identity()
        )
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.relu(self.net(x) + self.skip(x))
        return out


class TCN(nn.Module):
    """Stack of :class:`TemporalBlock` s (one per entry of ``channels``/``dilations``) and a 1x1 head."""

    def __init__(
        self,
        in_channels: int,
        channels: Sequence[int] = (32, 32, 64, 64),
        kernel_size: int = 3,
        dilations: Sequence[int] = (1, 2, 4, 8),
        dropout: float = 0.1,
        num_outputs: int = 1,
    ) -> None:
        super().__init__()
        if not channels or len(channels) != len(dilations):
            raise ValueError(
                "channels and dilations must be non-empty and of equal length, "
                f"got {len(channels)} and {len(dilations)}"
            )
        if kernel_size < 1 or any(d < 1 for d in dilations):
            raise ValueError(f"kernel_size and dilations must be >= 1, got {kernel_size} and {tuple(dilations)}")
        self.kernel_size = kernel_size
        self.dilations = tuple(dilations)
        blocks: list[nn.Module] = []
        previous = in_channels
        for width, dilation in zip(channels, dilations, strict=True):
            blocks.append(TemporalBlock(previous, width, kernel_size, dilation, dropout))
            previous = width
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Conv1d(previous, num_outputs, kernel_size=1)

    @property
    def receptive_field(self) -> int:
        """Number of input steps that can influence one output step (two convolutions per block)."""
        return 1 + 2 * (self.kernel_size - 1) * sum(self.dilations)

    def sequence_logits(self, x: Tensor) -> Tensor:
        """Logits at every step: ``(batch, in_channels, length) -> (batch, num_outputs, length)``."""
        out: Tensor = self.head(self.blocks(x))
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Logits at the last step: ``(batch, in_channels, length) -> (batch, num_outputs)``."""
        return self.sequence_logits(x).select(2, -1)
