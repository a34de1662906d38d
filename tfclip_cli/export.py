"""ONNX: the one module that imports onnx and onnxruntime.

Other modules that run an ONNX model (a user's YOLO detector, an exported TF-CLIP embedder) open it here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import onnxruntime

from tfclip_cli.errors import UserError


def available_providers(*, use_gpu: bool) -> list[str]:
    """The onnxruntime execution providers to try, CUDA first when asked for and present, CPU always last."""
    present = onnxruntime.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if use_gpu else []
    return [p for p in wanted if p in present] + ["CPUExecutionProvider"]


def onnx_session(
    path: Path, *, providers: Sequence[str] = ("CPUExecutionProvider",), threads: int = 0
) -> onnxruntime.InferenceSession:
    """Open an ONNX model for inference.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers, in order of preference.
        threads: intra-op threads; 0 lets onnxruntime choose.

    Raises:
        UserError: when the file is missing or is not a loadable ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: expected an ONNX model file (.onnx)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own untyped errors: re-raise with the file named
        raise UserError(f"{path} is not a loadable ONNX model: {str(error).splitlines()[0]}") from error
