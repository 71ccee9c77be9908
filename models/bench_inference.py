"""The PyTorch-eager baseline of ``candlecast bench inference`` (the rest is :mod:`inference.bench`).

The benchmark compares ONNX Runtime with PyTorch eager on the same inputs, same architecture and
same thread count (eager uses freshly initialised weights, which do not change the arithmetic
done). The eager side needs torch, which serving never imports, so it lives here in ``models`` and
reaches the benchmark as an :class:`inference.bench.EagerBaseline`; ``service/cli.py`` composes the
two only when ``bench inference`` is asked for.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import numpy.typing as npt
import torch

from inference.bench import EagerBaseline, median_ms
from models.efficientnet import efficientnet
from models.tcn import TCN
from models.zoo import BookCNN, zoo_model

__all__ = ["torch_eager"]

# The architecture of each shipped artifact, as exported by ``candlecast train``.
ARCHITECTURES: dict[str, Callable[[], torch.nn.Module]] = {
    "tcn_1m.onnx": lambda: TCN(in_channels=8),
    "efficientnet.onnx": lambda: efficientnet("b0", in_channels=3, num_classes=1, stem_stride=2),
    "dense_1m.onnx": lambda: zoo_model("dense", 29),
    **{f"{kind}_1m.onnx": partial(zoo_model, kind, 8) for kind in ("cnn1d", "mscnn", "cnn_ta", "bilstm")},
    "cipm_1m.onnx": partial(zoo_model, "cipm", 1),
    "cipm_btc_1m.onnx": partial(zoo_model, "cipm_btc", 2),
    "efficientnet_b3.onnx": lambda: efficientnet("b3", in_channels=3, num_classes=1, stem_stride=2),
    "book_cnn_1m.onnx": BookCNN,
}


def _eager_ms(artifact: str, x: npt.NDArray[np.float32], threads: int, repeats: int) -> float:
    torch.set_num_threads(threads)
    model = ARCHITECTURES[artifact]()
    model.eval()

    def eager(v: torch.Tensor) -> None:
        with torch.no_grad():
            model(v)

    return median_ms(eager, torch.from_numpy(x), repeats)


def torch_eager() -> EagerBaseline:
    """PyTorch eager as the baseline ORT is compared with."""
    return EagerBaseline(torch.__version__, _eager_ms)
