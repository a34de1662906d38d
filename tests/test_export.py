"""ONNX models open through one function that names the file when it cannot."""

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from tfclip_cli.errors import UserError
from tfclip_cli.export import available_providers, onnx_session


def _doubling_model(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_session_runs_a_model(tmp_path: Path) -> None:
    _doubling_model(tmp_path / "double.onnx")
    session = onnx_session(tmp_path / "double.onnx")
    (out,) = session.run(None, {"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(out, np.full((2, 3), 2.0, np.float32))


def test_onnx_session_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.onnx not found"):
        onnx_session(tmp_path / "missing.onnx")


def test_onnx_session_names_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="bad.onnx is not a loadable ONNX model"):
        onnx_session(tmp_path / "bad.onnx")


def test_cpu_provider_is_always_last() -> None:
    assert available_providers(use_gpu=True)[-1] == "CPUExecutionProvider"
    assert available_providers(use_gpu=False) == ["CPUExecutionProvider"]
