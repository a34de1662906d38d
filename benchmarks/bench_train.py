"""Training throughput: clips/s of the tiny config on this CPU and the share of step time spent waiting for data.

Runs the real training entry (``tfclip_cli.train.train``) on a synthetic dataset drawn into a temporary folder,
for a few epochs with 0 and with 2 DataLoader workers, and prints clips/s (the mean over the epochs after the first,
which includes worker start-up) and the data-wait share. Evaluation and checkpoint writing are not counted.

With a CUDA device it also trains ViT-B/16 (random init, so no download) with autocast at the paper's batch,
4 identities × 4 tracklets × 8 frames at 256×128, and reports clips/s and peak GPU memory.

Run: ``python benchmarks/bench_train.py [--manifest M.parquet] [--epochs 4]``
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
from pathlib import Path

import torch
import yaml

from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.synthetic import SyntheticOptions
from tfclip_cli.recipe import Recipe, load_recipe
from tfclip_cli.tables import write_manifest
from tfclip_cli.train import train

ROOT = Path(__file__).resolve().parents[1]


def draw_dataset(folder: Path, image_size: tuple[int, int]) -> Path:
    """32 identities × 2 cameras × 3 tracklets of 16-48 frames (half train), a quarter of them videos."""
    options = SyntheticOptions(identities=32, cameras=2, tracklets_per_camera=3, distractors=0,
                               image_size=image_size, min_frames=16, max_frames=48, video_fraction=0.25, seed=5)
    manifest = prepare("synthetic", folder / f"synthetic-{image_size[0]}", synthetic=options)
    path = folder / f"manifest-{image_size[0]}.parquet"
    write_manifest(manifest, path)
    return path


def measure(recipe: Recipe) -> tuple[float, float]:
    """(clips/s, data-wait share) over the epochs after the first."""
    result = train(recipe)
    later = result.history[1:] or result.history
    clips_per_s = sum(s.clips_per_s for s in later) / len(later)
    data_share = sum(s.data_share for s in later) / len(later)
    return clips_per_s, data_share


def tiny_cpu(folder: Path, manifest: Path, epochs: int) -> None:
    path = ROOT / "recipes" / "synthetic-tiny.yaml"
    for workers in (0, 2):
        overrides = [f"data.manifest={manifest}", f"run.output_dir={folder / f'tiny-w{workers}'}",
                     f"data.workers={workers}", f"solver.epochs={epochs}", "eval.every=0", "run.log_every=1000"]
        recipe = load_recipe(path, overrides)
        if workers == 0:
            data = recipe.data
            print(f"synthetic-tiny.yaml ({recipe.model.backbone}, {data.image_size[0]}x{data.image_size[1]}, "
                  f"T={data.seq_len}, batch {data.num_ids}x{data.num_instances}), CPU, "
                  f"{len(os.sched_getaffinity(0))} cores:")
        clips_per_s, data_share = measure(recipe)
        print(f"  workers={workers}: {clips_per_s:7.1f} clips/s, {100 * data_share:4.1f}% of step time waiting for data")


def vit_b16_gpu(folder: Path, epochs: int) -> None:
    manifest = draw_dataset(folder, (256, 128))
    recipe = folder / "vit.yaml"
    recipe.write_text(yaml.safe_dump({"data": {"manifest": str(manifest), "workers": 8},
                                      "model": {"pretrained": "none"},
                                      "solver": {"epochs": epochs}, "eval": {"every": 0},
                                      "run": {"output_dir": str(folder / "vit"), "log_every": 1000}}))
    torch.cuda.reset_peak_memory_stats()
    clips_per_s, data_share = measure(load_recipe(recipe))
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"ViT-B/16, 4x4x8 at 256x128, {torch.cuda.get_device_name()} with autocast: {clips_per_s:.1f} clips/s, "
          f"{100 * data_share:.1f}% waiting for data, peak GPU memory {peak:.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", type=Path, help="train on this manifest instead of a fresh synthetic one")
    parser.add_argument("--epochs", type=int, default=4)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp)
        manifest = args.manifest.resolve() if args.manifest else draw_dataset(folder, (128, 64))
        tiny_cpu(folder, manifest, args.epochs)
        if torch.cuda.is_available():
            vit_b16_gpu(folder, args.epochs)
        else:
            print("no CUDA device: ViT-B/16 GPU throughput not measured")


if __name__ == "__main__":
    main()
