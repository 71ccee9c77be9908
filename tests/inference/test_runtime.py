"""ONNX Runtime sessions: the provider chain, the provider actually bound, and failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from inference.runtime import CPU, ModelSession, RuntimeFailure, provider_chain


def tiny_model(path: Path) -> Path:
    """logits = sum over the feature axis: a real ONNX graph with a dynamic batch axis."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 1])
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    node = helper.make_node("ReduceSum", ["input", "axes"], ["logits"], keepdims=1)
    graph = helper.make_graph([node], "tiny", [x], [y], initializer=[axes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_chain_is_filtered_by_what_is_offered_and_ends_on_cpu() -> None:
    offered = ["CUDAExecutionProvider", "CPUExecutionProvider", "AzureExecutionProvider"]
    assert provider_chain(True, offered) == ["CUDAExecutionProvider", CPU]
    assert provider_chain(True, ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]) == [
        "TensorrtExecutionProvider",
        "CUDAExecutionProvider",
        CPU,
    ]
    assert provider_chain(False, offered) == [CPU]
    assert provider_chain(True, [CPU]) == [CPU]


def test_session_reports_the_provider_it_bound(tmp_path: Path) -> None:
    s = ModelSession("tiny", tiny_model(tmp_path / "tiny.onnx"))
    assert s.provider == CPU  # no GPU here, whatever the installed ORT lists
    out = s.run(np.ones((3, 4), np.float32))
    assert out.shape == (3, 1)
    assert out.ravel().tolist() == [4.0, 4.0, 4.0]
    assert s.warm_up(np.ones((1, 4), np.float32)) >= 0


def test_corrupt_model_is_a_runtime_failure(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(RuntimeFailure, match=r"cannot load bad\.onnx"):
        ModelSession("bad", bad)


def test_wrong_input_is_a_runtime_failure_not_a_crash(tmp_path: Path) -> None:
    s = ModelSession("tiny", tiny_model(tmp_path / "tiny.onnx"))
    with pytest.raises(RuntimeFailure, match="inference failed"):
        s.run(np.ones((2, 5), np.float32))
