"""Throughput of the torch and onnxruntime backends on the CPU: tracklets/s of one 8-frame clip each, same clips.

For each backbone (random weights: speed does not depend on them; ViT-B-16 at 8 x 256 x 128, tfclip-tiny at
8 x 128 x 64), the script saves a checkpoint, exports it with ``tfclip export``'s function (which verifies it on
random clips), then times ``TFCLIP.embed`` in ``inference_mode`` and :class:`OnnxEmbedder.embed` on the same
clips, in one process, with the same thread count, and prints onnxruntime/torch as a ratio and the largest
absolute difference and smallest cosine between the two backends' embeddings of those clips.

    python benchmarks/bench_export.py                          # tfclip-tiny and ViT-B-16
    python benchmarks/bench_export.py --backbones ViT-B-16 --batch 8 --iterations 5 --threads 4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from tfclip_cli.checkpoint import Checkpoint, save_checkpoint
from tfclip_cli.export import OnnxEmbedder, export_checkpoint
from tfclip_cli.model import ModelConfig, backbone_spec, build_model

SEQ_LEN = 8


def _throughput(embed: Callable[[torch.Tensor], torch.Tensor], clips: torch.Tensor, iterations: int) -> float:
    """Tracklets per second of ``embed`` over ``iterations`` batches, after one warm-up batch."""
    with torch.inference_mode():
        embed(clips)
        start = time.perf_counter()
        for _ in range(iterations):
            embed(clips)
    return iterations * clips.shape[0] / (time.perf_counter() - start)


def _compare(name: str, folder: Path, args: argparse.Namespace) -> None:
    size = backbone_spec(name).image_size
    config = ModelConfig(backbone=name, image_size=size, seq_len=SEQ_LEN, num_classes=625, num_cameras=6)
    torch.manual_seed(0)
    model = build_model(config).eval()
    checkpoint = folder / f"{name}.ckpt"
    save_checkpoint(Checkpoint(model_config=config.to_dict(), model_state=model.state_dict(), pid_to_label={}),
                    checkpoint)
    start = time.perf_counter()
    result = export_checkpoint(checkpoint, folder / f"{name}.onnx")
    seconds = time.perf_counter() - start
    check = result.verification
    print(f"{name}: exported and verified in {seconds:.0f} s ({result.path.stat().st_size / 2**20:.0f} MiB); "
          f"verification max abs diff {check.max_abs_diff:.2e}, min cosine {check.min_cosine:.7f}")
    embedder = OnnxEmbedder(result.path, threads=torch.get_num_threads())
    clips = torch.randn(args.batch, SEQ_LEN, 3, *size)
    torch_rate = _throughput(model.embed, clips, args.iterations)
    onnx_rate = _throughput(embedder.embed, clips, args.iterations)
    with torch.inference_mode():
        expected, found = model.embed(clips).numpy(), embedder.embed(clips).numpy()
    cosine = (expected * found).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(found, axis=1)
    print(f"{name:12s} {size[0]}x{size[1]}  torch {torch_rate:8.2f} tracklets/s  onnxruntime {onnx_rate:8.2f} "
          f"tracklets/s  ratio {onnx_rate / torch_rate:.2f}x  max abs diff {np.abs(expected - found).max():.2e}  "
          f"min cosine {cosine.min():.7f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["tfclip-tiny", "ViT-B-16"])
    parser.add_argument("--batch", type=int, default=4, help="tracklets per forward pass")
    parser.add_argument("--iterations", type=int, default=3, help="timed batches per backend")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads of both backends (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads for both backends, "
          f"batch {args.batch} tracklets x {SEQ_LEN} frames")
    with tempfile.TemporaryDirectory() as folder:
        for name in args.backbones:
            _compare(name, Path(folder), args)


if __name__ == "__main__":
    main()
