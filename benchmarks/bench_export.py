"""Throughput of the torch and onnxruntime backends on the CPU: tracklets/s of one 8-frame clip each, same clips.

For each backbone (random weights: speed does not depend on them; ViT-B-16 at 8 x 256 x 128, tfclip-tiny at
8 x 128 x 64), the script saves a checkpoint, exports it with ``tfclip export``'s function (which verifies it on
random clips), exports it to int8 with ``tfclip export --int8``'s function (its own fp32 export, with the
self-attention as onnxruntime's ``Attention``, quantised) and, as the baseline of that choice, quantises the
plain export the same way (its attention in standard operators), then times ``TFCLIP.embed`` in
``inference_mode`` and :class:`OnnxEmbedder.embed` of the fp32 and the int8 file on the same clips, in one process,
with the same thread count, and prints each backend's tracklets/s, onnxruntime/torch as a ratio, and the largest
absolute difference and smallest cosine of each file's embeddings of those clips against torch's.

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
from tfclip_cli.export import export_checkpoint, quantize_int8
from tfclip_cli.model import ModelConfig, backbone_spec, build_model
from tfclip_cli.quantize import export_int8
from tfclip_cli.runtime import OnnxEmbedder

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
    start = time.perf_counter()
    int8 = export_int8(checkpoint, folder / f"{name}-int8.onnx").path
    print(f"{name}: exported to int8 in {time.perf_counter() - start:.0f} s ({int8.stat().st_size / 2**20:.0f} MiB)")
    standard = folder / f"{name}-int8-standard-attention.onnx"
    quantize_int8(result.path, standard)
    clips = torch.randn(args.batch, SEQ_LEN, 3, *size)
    torch_rate = _throughput(model.embed, clips, args.iterations)
    with torch.inference_mode():
        expected = model.embed(clips).numpy()
    print(f"{name:12s} {size[0]}x{size[1]}  torch fp32       {torch_rate:8.2f} tracklets/s")
    runs = (("onnxruntime fp32", result.path), ("onnxruntime int8, attention in standard ops", standard),
            ("onnxruntime int8 (export --int8)", int8))
    for label, path in runs:
        embedder = OnnxEmbedder(path, threads=torch.get_num_threads())
        rate = _throughput(embedder.embed, clips, args.iterations)
        with torch.inference_mode():
            found = embedder.embed(clips).numpy()
        cosine = (expected * found).sum(1) / np.linalg.norm(expected, axis=1) / np.linalg.norm(found, axis=1)
        print(f"{name:12s} {size[0]}x{size[1]}  {label} {rate:8.2f} tracklets/s  ratio to torch "
              f"{rate / torch_rate:.2f}x  max abs diff {np.abs(expected - found).max():.2e}  "
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
