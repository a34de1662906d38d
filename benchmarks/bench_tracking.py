"""Tracking quality on synthetic footage: motion only vs motion + appearance (MOTA, IDF1, identity switches).

Draws synthetic camera footage (``datasets.synthetic_footage``: walkers entering, crossing, occluding each other and
leaving), detects people with the ground-truth replay detector (``footage.replay``: misses, more of them behind
nearer people, clutter and box jitter, seeded), tracks them with the ByteTrack-style tracker, and scores against the
ground truth (``footage.metrics``, motmetrics) twice in the same run:

- motion only: the tracker's tracks, as ``tfclip track`` writes them without ``--checkpoint``;
- motion + appearance: the same tracks cut and re-linked by TF-CLIP embeddings of their crops (``footage.relink``),
  as ``tfclip track --checkpoint`` does.

Both run the footage pipeline ``tfclip track`` runs (``footage.pipeline``, its defaults: tracklets of at least
``--min-frames`` frames, static ones left out). The appearance model is a trained
checkpoint: pass one (e.g. ``tfclip demo``'s ``run/best.ckpt``), or the benchmark trains the tiny model (the demo's
recipe) on the ground-truth tracklets of ``--train-scenes`` other synthetic scenes (other seeds, so other walkers)
into ``--work`` first: about 10 minutes on 2 cores, reused on the next run.

    python benchmarks/bench_tracking.py
    python benchmarks/bench_tracking.py --seeds 0-3          # the README's table: a row per scene, then the totals
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
from tfclip_cli.datasets.mot import read_gt
from tfclip_cli.datasets.synthetic_footage import FootageOptions, camera_video, generate_footage
from tfclip_cli.demo import RECIPE, TRAINING_OVERRIDES
from tfclip_cli.footage.metrics import MotScores, TrackedVideo, score_tracks
from tfclip_cli.footage.pipeline import PipelineOptions, run_video
from tfclip_cli.footage.relink import RelinkConfig, model_crop_embedder
from tfclip_cli.footage.replay import ReplayDetector, ReplayNoise
from tfclip_cli.footage.track import Track
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
    parser.add_argument("--min-frames", type=int, default=PipelineOptions.min_frames)
    parser.add_argument("--cut-similarity", type=float, default=RelinkConfig.cut_similarity,
                        help="relink: consecutive windows less alike are cut apart (tfclip track's default)")
    parser.add_argument("--merge-similarity", type=float, default=RelinkConfig.merge_similarity,
                        help="relink: fragments at least this alike are merged (tfclip track's default)")
    parser.add_argument("--seeds", type=_seeds, default=[0], help="scenes to score: N, N-M or N,M,... (default 0)")
    return parser.parse_args()


def _seeds(text: str) -> list[int]:
    """``3``, ``0-7`` or ``0,2,5`` as a list of seeds."""
    if "-" in text:
        first, last = (int(part) for part in text.split("-"))
        return list(range(first, last + 1))
    return [int(part) for part in text.split(",")]


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


def _track_camera(video: Path, args: argparse.Namespace, checkpoint: Path, *,
                  seed: int) -> tuple[list[Track], list[Track]]:
    """One camera's tracklets from the footage pipeline, motion only and relinked by appearance."""
    noise = ReplayNoise(miss=args.miss, false_positives=args.false_positives, jitter=args.jitter, seed=seed)
    camid = int(video.parent.name.removeprefix("cam"))
    relinking = RelinkConfig(cut_similarity=args.cut_similarity, merge_similarity=args.merge_similarity)
    options = PipelineOptions(min_frames=args.min_frames, relink=relinking)
    runs = [run_video(video, ReplayDetector(read_gt(video.parent / "gt.txt"), noise), camid=camid, options=options,
                      embed=embed) for embed in (None, model_crop_embedder(checkpoint))]
    motion, appearance = ([t.track for t in done.tracklets] for done in runs)
    return motion, appearance


def _row(name: str, scores: MotScores) -> str:
    return (f"{name:<22} {100 * scores.mota:6.1f} {100 * scores.idf1:6.1f} {scores.id_switches:5d} "
            f"{scores.false_positives:5d} {scores.misses:5d} {scores.ground_truth_boxes:6d}")


def _score_scene(args: argparse.Namespace, seed: int, checkpoint: Path) -> tuple[MotScores, MotScores]:
    """Motion-only and motion + appearance scores of the scene drawn with ``seed``, summed over its cameras."""
    options = FootageOptions(walkers=args.walkers, cameras=args.cameras, frames=args.frames, seed=seed)
    with tempfile.TemporaryDirectory() as work:
        generate_footage(Path(work) / "scene", options)
        motion, appearance = [], []
        for camid in range(args.cameras):
            video = camera_video(Path(work) / "scene", camid)
            truth = read_gt(video.parent / "gt.txt")
            kept, linked = _track_camera(video, args, checkpoint, seed=seed)
            motion.append(TrackedVideo(kept, truth))
            appearance.append(TrackedVideo(linked, truth))
    return score_tracks(motion), score_tracks(appearance)


def main() -> None:
    args = _arguments()
    checkpoint = _checkpoint(args)
    print(f"{args.cameras} cameras x {args.frames} frames, {args.walkers} walkers; replay miss {args.miss}, "
          f"false positives {args.false_positives}/frame, jitter {args.jitter}; checkpoint {checkpoint}; relink cut "
          f"< {args.cut_similarity}, merge ≥ {args.merge_similarity}")
    print(f"{'':<22} {'MOTA%':>6} {'IDF1%':>6} {'IDsw':>5} {'FP':>5} {'FN':>5} {'GT':>6}")
    scenes = []
    for seed in args.seeds:
        started = time.perf_counter()
        only, both = _score_scene(args, seed, checkpoint)
        scenes.append((only, both))
        print(f"seed {seed} ({time.perf_counter() - started:.0f} s)")
        print(_row("  motion only", only))
        print(_row("  motion + appearance", both))
    idf1_changes = [100 * (both.idf1 - only.idf1) for only, both in scenes]
    switches = [sum(scores.id_switches for scores in side) for side in zip(*scenes)]
    print(f"{len(scenes)} scene(s): ID switches {switches[0]} motion only, {switches[1]} with appearance; IDF1 "
          f"{sum(idf1_changes) / len(scenes):+.2f} points on average with appearance (better in "
          f"{sum(c > 0.05 for c in idf1_changes)}, lower in {sum(c < -0.05 for c in idf1_changes)})")


if __name__ == "__main__":
    main()
