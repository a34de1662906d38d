"""Inference throughput of TF-CLIP's test-time embedding: tracklets/s of one 8-frame clip each.

Random weights (speed does not depend on them), eval mode, ``torch.inference_mode``. On the CPU in fp32; on CUDA
also under autocast (bf16 where supported, else fp16). Each backbone runs at its own
input size (ViT-B-16: 8 x 256 x 128; tfclip-tiny: 8 x 128 x 64).

    python benchmarks/bench_inference.py                       # tiny and ViT-B-16, CPU (and CUDA if present)
    python benchmarks/bench_inference.py --backbones ViT-B-16 --batch 32 --iterations 20
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from tfclip_cli.model import ModelConfig, backbone_spec, build_model

SEQ_LEN = 8


def _throughput(model, clips: torch.Tensor, *, iterations: int, autocast_dtype: torch.dtype | None) -> float:
    """Tracklets per second of ``model.embed`` over ``iterations`` batches, after one warm-up batch."""
    device = clips.device
    autocast = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        model.embed(clips)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iterations):
            model.embed(clips)
        if device.type == "cuda":
            torch.cuda.synchronize()
    return iterations * clips.shape[0] / (time.perf_counter() - start)


def _settings(device: torch.device) -> list[tuple[str, torch.dtype | None]]:
    if device.type != "cuda":
        return [("fp32", None)]
    low = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return [("fp32", None), (f"autocast {str(low).removeprefix('torch.')}", low)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["tfclip-tiny", "ViT-B-16"])
    parser.add_argument("--batch", type=int, default=4, help="tracklets per forward pass")
    parser.add_argument("--iterations", type=int, default=3, help="timed batches per setting")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, {threads} CPU threads, batch {args.batch} tracklets x {SEQ_LEN} frames")
    for name in args.backbones:
        size = backbone_spec(name).image_size
        config = ModelConfig(backbone=name, image_size=size, seq_len=SEQ_LEN, num_classes=625, num_cameras=6)
        for device in devices:
            model = build_model(config).to(device).eval()
            clips = torch.randn(args.batch, SEQ_LEN, 3, *size, device=device)
            for label, dtype in _settings(device):
                rate = _throughput(model, clips, iterations=args.iterations, autocast_dtype=dtype)
                print(f"{name:12s} {size[0]}x{size[1]}  {device.type:4s} {label:16s} {rate:9.2f} tracklets/s")


if __name__ == "__main__":
    main()
