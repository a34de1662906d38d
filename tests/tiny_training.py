"""Shared builders for the training, inference and recipe tests: a tiny synthetic dataset, tiny recipes and a tiny
checkpoint."""

from __future__ import annotations

from pathlib import Path

import yaml

from tfclip_cli.checkpoint import Checkpoint, save_checkpoint
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.synthetic import SyntheticOptions
from tfclip_cli.model import TFCLIP, ModelConfig
from tfclip_cli.tables import ManifestInfo, Tracklet, manifest_from_tracklets, write_manifest

# 8 identities x 2 cameras x 2 tracklets: 4 train ids (16 tracklets), 4 test ids + 1 distractor; 64x32 frames.
TINY_DATA = SyntheticOptions(
    identities=8, cameras=2, tracklets_per_camera=2, distractors=1, image_size=(64, 32), min_frames=5,
    max_frames=12, video_fraction=0.25, seed=3,
)
_CACHE: dict[str, Path] = {}
# The tiny model the inference, export, index and footage tests embed with (64x32 frames, 4 per clip).
TINY_CONFIG = ModelConfig(backbone="tfclip-tiny", image_size=(64, 32), seq_len=4, num_classes=4, num_cameras=2)


def save_tiny_checkpoint(model: TFCLIP, path: Path, *, normalization: str = "imagenet") -> Path:
    """Save ``model`` (built from :data:`TINY_CONFIG`) as a tfclip checkpoint that extract and query can load."""
    save_checkpoint(Checkpoint(model_config=TINY_CONFIG.to_dict(), model_state=model.state_dict(), pid_to_label={},
                               recipe={"data": {"normalization": normalization}}), path)
    return path


def tiny_manifest(folder: Path) -> Path:
    """Draw the tiny synthetic dataset once per test session and return its manifest."""
    if "manifest" not in _CACHE:
        manifest = prepare("synthetic", folder / "synthetic", synthetic=TINY_DATA)
        path = folder / "manifest.parquet"
        write_manifest(manifest, path)
        _CACHE["manifest"] = path
    return _CACHE["manifest"]


def fake_manifest(path: Path, *, train_pids: int, cameras: int = 2) -> Path:
    """A manifest of tracklets whose frames do not exist (enough for recipe validation)."""
    tracklets = [
        Tracklet(f"{split}-{pid}-{camid}", pid, camid, split, 4, frames=tuple(f"/nowhere/{pid}/{i}.jpg" for i in range(4)))
        for split, pids in (("train", range(train_pids)), ("query", range(100, 102)), ("gallery", range(100, 103)))
        for pid in pids
        for camid in range(cameras)
    ]
    write_manifest(manifest_from_tracklets(tracklets, ManifestInfo("fake", "gallery_only", "/nowhere")), path)
    return path


def tiny_recipe(path: Path, *, manifest: Path, output_dir: Path, **sections: dict) -> Path:
    """Write a recipe for the tiny model on 64x32 frames; ``sections`` update its sections key by key."""
    recipe = {
        "data": {"manifest": str(manifest), "seq_len": 4, "image_size": [64, 32], "num_ids": 2, "num_instances": 2,
                 "workers": 0},
        "model": {"backbone": "tfclip-tiny", "pretrained": "none", "ssp_layers": 1},
        "solver": {"base_lr": 1.0e-4, "warmup_epochs": 0, "milestones": [], "epochs": 2},
        "eval": {"every": 1, "batch_size": 16},
        "run": {"output_dir": str(output_dir), "seed": 7, "log_every": 1},
    }
    for name, values in sections.items():
        recipe.setdefault(name, {}).update(values)
    path.write_text(yaml.safe_dump(recipe))
    return path
