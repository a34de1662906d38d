"""Fakes for footage tests: small videos and a tiny ONNX "YOLO" whose output is fixed in advance."""

from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def write_video(path: Path, num_frames: int, size: tuple[int, int] = (160, 120)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for index in range(num_frames):
        writer.write(np.full((size[1], size[0], 3), index * 10 % 255, dtype=np.uint8))
    writer.release()


def yolo_model(path: Path, output: np.ndarray, size: int = 64) -> Path:
    """A tiny ONNX "detector" whose output is ``output`` whatever the image (plus 0 × the image's sum)."""
    constant = helper.make_node("Constant", [], ["raw"], value=numpy_helper.from_array(output.astype(np.float32)))
    total = helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0)
    zero = helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32)))
    nothing = helper.make_node("Mul", ["total", "zero"], ["nothing"])
    result = helper.make_node("Add", ["raw", "nothing"], ["output0"])
    graph = helper.make_graph(
        [constant, total, zero, nothing, result],
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path
