"""Tracking quality on synthetic footage: motion only vs motion + appearance (MOTA, IDF1, identity switches).

Draws synthetic camera footage (``datasets.synthetic_footage``: walkers entering, crossing, occluding each other and
leaving), detects people with the ground-truth replay detector (``footage.replay``: misses, more of them behind
nearer people, clutter and box jitter, seeded), tracks them with the ByteTrack-style tracker, and scores against the
ground truth (``footage.metrics``, motmetrics) twice in the same run:

- motion only: the tracker's tracks, as ``tfclip track`` writes them without ``--checkpoint``;
- motion + appearance: the same tracks cut and re-linked by TF-CLIP embeddings of their crops (``footage.relink``),
  as ``tfclip track --checkpoint`` does.

Both keep tracks of at least ``--min-frames`` frames (tfclip track's default). The appearance model is a trained
checkpoint: pass one (e.g. ``tfclip demo``'s ``run/best.ckpt``), or the benchmark trains the tiny model (the demo's
recipe) on the ground-truth tracklets of ``--train-scenes`` other synthetic scenes (other seeds, so other walkers)
into ``--work`` first: about 10 minutes on 2 cores, reused on the next run.

    python benchmarks/bench_tracking.py
    python benchmarks/bench_tracking.py --checkpoint tfclip-demo/run/best.ckpt --walkers 10 --miss 0.2
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import dataclasses
import json

from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.footage import crop_name
from tfclip_cli.datasets.mot import read_gt
from tfclip_cli.datasets.synthetic_footage import FootageOptions, camera_video, generate_footage
from tfclip_cli.demo import RECIPE, TRAINING_OVERRIDES
from tfclip_cli.footage.metrics import MotScores, TrackedVideo, score_tracks
from tfclip_cli.footage.relink import RelinkConfig, model_window_embedder, relink
from tfclip_cli.footage.replay import ReplayDetector, ReplayNoise
from tfclip_cli.footage.track import Track, track_video
from tfclip_cli.footage.tracklets import write_crops
from tfclip_cli.recipe import load_recipe
from tfclip_cli.tables import manifest_from_tracklets, write_manifest
from tfclip_cli.train import train

TRAIN_SEEDS_FROM = 1000  # training scenes use seeds 1000, 1001, ...: never the benchmark's own scene
TRAIN_EPOCHS = 100


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, help="trained tfclip checkpoint for the appearance embeddings")
    parser.add_argument("--work", type=Path, default=Path("bench-tracking"), help="where the model trains, if needed")
    parser.add_argument("--train-scenes", type=int, default=12, help="synthetic scenes the model trains on")
    parser.add_argument("--walkers", type=int, default=8)
    parser.add_argument("--cameras", type=int, default=3)
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--miss", type=float, default=0.1, help="replay: chance to miss a fully visible person")
    parser.add_argument("--false-positives", type=float, default=0.1, help="replay: false detections per frame")
    parser.add_argument("--jitter", type=float, default=0.05, help="replay: box jitter, share of the box size")
    parser.add_argument("--min-frames", type=int, default=8)
    parser.add_argument("--cut-similarity", type=float, default=RelinkConfig.cut_similarity,
                        help="relink: consecutive windows less alike are cut apart (tfclip track's default)")
    parser.add_argument("--merge-similarity", type=float, default=RelinkConfig.merge_similarity,
                        help="relink: fragments at least this alike are merged (tfclip track's default)")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def _training_manifest(args: argparse.Namespace) -> Path:
    """The ground-truth tracklets of the training scenes (walkers numbered apart per scene), all in ``train``."""
    path = args.work / "train.parquet"
    if path.exists():
        return path
    tracklets = []
    for number in range(args.train_scenes):
        options = FootageOptions(walkers=8, cameras=3, frames=args.frames, seed=TRAIN_SEEDS_FROM + number)
        manifest = prepare("synthetic", args.work / f"scene{number}", synthetic_footage=options)
        tracklets += [dataclasses.replace(t, tracklet_id=f"{number}/{t.tracklet_id}", pid=8 * number + t.pid,
                                          split="train") for t in manifest.tracklets()]
    write_manifest(manifest_from_tracklets(tracklets, manifest.info), path)
    return path


def _checkpoint(args: argparse.Namespace) -> Path:
    """``--checkpoint``, or the tiny model trained (once) on other synthetic scenes' ground-truth tracklets."""
    if args.checkpoint is not None:
        return args.checkpoint
    run = args.work / "run"
    if not (run / "last.ckpt").exists():
        values = {**TRAINING_OVERRIDES, "solver.epochs": TRAIN_EPOCHS, "solver.milestones": [TRAIN_EPOCHS - 10],
                  "data.manifest": str(_training_manifest(args).resolve()), "run.output_dir": str(run.resolve())}
        train(load_recipe(RECIPE, [f"{key}={json.dumps(value)}" for key, value in values.items()]))
    return run / "last.ckpt"


def _track_camera(video: Path, crops: Path, args: argparse.Namespace, checkpoint: Path) -> tuple[list, list]:
    """One camera's tracks, motion only and relinked by appearance, each kept from ``min_frames`` frames."""
    noise = ReplayNoise(miss=args.miss, false_positives=args.false_positives, jitter=args.jitter, seed=args.seed)
    camid = int(video.parent.name.removeprefix("cam"))
    tracks = track_video(video, ReplayDetector(read_gt(video.parent / "gt.txt"), noise), camid=camid)
    write_crops(video, tracks, crops)

    def crop_paths(track: Track, window: tuple[int, int]) -> list[str]:
        return [str(crops / str(track.track_id) / crop_name(i)) for i in track.frame_indices[slice(*window)]]

    config = RelinkConfig(cut_similarity=args.cut_similarity, merge_similarity=args.merge_similarity)
    linked = [link.track for link in relink(tracks, model_window_embedder(checkpoint, crop_paths), config)]
    keep = [t for t in tracks if t.num_frames >= args.min_frames]
    return keep, [t for t in linked if t.num_frames >= args.min_frames]


def _row(name: str, scores: MotScores) -> str:
    return (f"{name:<22} {100 * scores.mota:6.1f} {100 * scores.idf1:6.1f} {scores.id_switches:5d} "
            f"{scores.false_positives:5d} {scores.misses:5d} {scores.ground_truth_boxes:6d}")


def main() -> None:
    args = _arguments()
    checkpoint = _checkpoint(args)
    options = FootageOptions(walkers=args.walkers, cameras=args.cameras, frames=args.frames, seed=args.seed)
    with tempfile.TemporaryDirectory() as work:
        started = time.perf_counter()
        generate_footage(Path(work) / "scene", options)
        motion, appearance = [], []
        for camid in range(args.cameras):
            video = camera_video(Path(work) / "scene", camid)
            truth = read_gt(video.parent / "gt.txt")
            kept, linked = _track_camera(video, Path(work) / "crops" / str(camid), args, checkpoint)
            motion.append(TrackedVideo(kept, truth))
            appearance.append(TrackedVideo(linked, truth))
        seconds = time.perf_counter() - started
    only, both = score_tracks(motion), score_tracks(appearance)
    print(f"{args.cameras} cameras x {args.frames} frames, {args.walkers} walkers; replay miss {args.miss}, "
          f"false positives {args.false_positives}/frame, jitter {args.jitter}; checkpoint {checkpoint}; relink cut "
          f"< {args.cut_similarity}, merge ≥ {args.merge_similarity}")
    print(f"{'':<22} {'MOTA%':>6} {'IDF1%':>6} {'IDsw':>5} {'FP':>5} {'FN':>5} {'GT':>6}")
    print(_row("motion only", only))
    print(_row("motion + appearance", both))
    print(f"IDF1 {100 * (both.idf1 - only.idf1):+.1f} points, ID switches {both.id_switches - only.id_switches:+d} "
          f"with appearance ({seconds:.0f} s)")


if __name__ == "__main__":
    main()
