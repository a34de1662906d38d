"""Fakes for footage tests: small videos, a tiny ONNX "YOLO" whose output is fixed in advance, a tiny checkpoint."""

from pathlib import Path

import cv2
import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from tiny_training import TINY_CONFIG, save_tiny_checkpoint

from tfclip_cli.model import build_model

# a "YOLOv8" output holding one person standing still: (cx, cy, w, h, person score) in the 64×64 model input, plus
# empty rows; a 160×120 frame is letterboxed at ratio 0.4 with 8 px on top, so the box (24, 12, 40, 52) in the input
# is (60, 10, 100, 110) in the frame
STANDING = np.array([[32, 32, 16, 40, 0.9]] + [[0, 0, 1, 1, 0.0]] * 8, dtype=np.float32).T[None]


def write_video(path: Path, num_frames: int, size: tuple[int, int] = (160, 120)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    for index in range(num_frames):
        writer.write(np.full((size[1], size[0], 3), index * 10 % 255, dtype=np.uint8))
    writer.release()


def yolo_model(path: Path, output: np.ndarray, size: int | tuple[int, int] = 64) -> Path:
    """A tiny ONNX "detector" whose output is ``output`` whatever the image (plus 0 × the image's sum); its input is
    ``[1, 3, size, size]``, or ``[1, 3, height, width]`` for a ``(height, width)`` size."""
    height, width = (size, size) if isinstance(size, int) else size
    constant = helper.make_node("Constant", [], ["raw"], value=numpy_helper.from_array(output.astype(np.float32)))
    total = helper.make_node("ReduceSum", ["images"], ["total"], keepdims=0)
    zero = helper.make_node("Constant", [], ["zero"], value=numpy_helper.from_array(np.array(0.0, np.float32)))
    nothing = helper.make_node("Mul", ["total", "zero"], ["nothing"])
    result = helper.make_node("Add", ["raw", "nothing"], ["output0"])
    graph = helper.make_graph(
        [constant, total, zero, nothing, result],
        "tiny_yolo",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, height, width])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(output.shape))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def tiny_checkpoint(path: Path) -> Path:
    """A randomly initialised tiny TF-CLIP checkpoint (64×32 frames), enough to run the embedding path."""
    torch.manual_seed(0)
    return save_tiny_checkpoint(build_model(TINY_CONFIG), path)
