"""People across cameras on synthetic camera networks: multi-camera IDF1 and HOTA with and without linking, and the
drift of incremental linking from a full re-link.

For each network (``datasets.synthetic_footage``: walkers routed through linked cameras, some views overlapping,
some walkers returning), every camera is tracked by ``tfclip track --detector gt`` (the ground-truth replay
detector with a detector's faults, motion only), the tracklets are embedded by a tiny appearance model trained on
the ground-truth tracklets of *other* networks (seeds from ``TRAIN_SEEDS_FROM``), and scored four ways:

- (a) single-camera tracks, no linking: every tracklet its own identity;
- (b) appearance-only clustering (``people.cluster`` with no rules);
- (c) ``tfclip link`` (the same-camera and one-place-at-a-time rules);
- (d) ``tfclip link --cameras cameras.yaml`` (plus travel times and the plausible-move bonus), and (e) that
  without the Hungarian refinement pass.

(b), (c) and (d) use the same clustering (agglomerative, then the Hungarian pass), with fewer or more rules.

Each way's boxes are written as the AI City file ``tfclip link --export`` writes and scored by ``tfclip
evaluate-tracks`` (``footage.metrics.evaluate_tracks``) against the network's ``mtmc_gt.txt``: the network as one
sequence, every camera's frames one after another, ids global; multi-camera IDF1 (the AI City Challenge metric until
2023; boxes match at IoU ≥ 0.5) and multi-camera HOTA with DetA and AssA (since 2024; averaged over IoU 0.05-0.95).
``--tune-seeds`` networks choose the threshold (by IDF1 of (d), reported); ``--seeds`` networks are scored at the
default threshold and at the tuned one.
Incremental drift: the tracklets that start in the first half of the time span are linked, the rest assigned onto
those people (``--onto``); the adjusted Rand index and pairwise F1 against a full re-link of all of them.

    python benchmarks/bench_link.py --work bench-link   # about 30 minutes on 2 cores, the model reused after
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import dataclasses
import numpy as np

from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.synthetic_footage import FootageOptions, camera_video
from tfclip_cli.demo import RECIPE, TRAINING_OVERRIDES
from tfclip_cli.footage.metrics import NetworkScores, evaluate_tracks
from tfclip_cli.footage.tracklets import TrackOptions, track_videos
from tfclip_cli.inference import extract_to_file
from tfclip_cli.people.cluster import (
    DEFAULT_THRESHOLD,
    MOVE_BONUS,
    ClusterOptions,
    cluster,
    cluster_people,
    pair_scores,
)
from tfclip_cli.people.constraints import TrackletTimes, cannot_link, plausible_moves, read_camera_graph
from tfclip_cli.people.export import box_rows, write_aicity
from tfclip_cli.people.link import link_onto
from tfclip_cli.recipe import load_recipe
from tfclip_cli.tables import Embeddings, manifest_from_tracklets, read_embeddings, write_manifest
from tfclip_cli.train import train

TRAIN_SEEDS_FROM = 1000  # training networks: never a tuned or reported one
THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path("bench-link"))
    parser.add_argument("--checkpoint", type=Path, help="a trained checkpoint; default: train the tiny model")
    parser.add_argument("--train-networks", type=int, default=10)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3], help="reported networks")
    parser.add_argument("--tune-seeds", type=int, nargs="+", default=[500, 501, 502, 503],
                        help="threshold-tuning networks")
    parser.add_argument("--walkers", type=int, default=8)
    parser.add_argument("--cameras", type=int, default=4)
    parser.add_argument("--frames", type=int, default=160)
    parser.add_argument("--size", type=int, nargs=2, default=[192, 256], metavar=("HEIGHT", "WIDTH"))
    return parser.parse_args()


def _options(args: argparse.Namespace, seed: int) -> FootageOptions:
    return FootageOptions(walkers=args.walkers, cameras=args.cameras, frames=args.frames,
                          image_size=tuple(args.size), seed=seed)


def _checkpoint(args: argparse.Namespace) -> Path:
    """``--checkpoint``, or the tiny model trained once on the ground-truth tracklets of other networks."""
    if args.checkpoint is not None:
        return args.checkpoint
    run = args.work / "run"
    if (run / "last.ckpt").exists():
        return run / "last.ckpt"
    tracklets = []
    for number in range(args.train_networks):
        seed = TRAIN_SEEDS_FROM + number
        manifest = prepare("synthetic", args.work / f"train{seed}", synthetic_footage=_options(args, seed))
        tracklets += [dataclasses.replace(t, tracklet_id=f"{seed}/{t.tracklet_id}", pid=100 * number + t.pid,
                                          split="train", origin=None) for t in manifest.tracklets()]
    write_manifest(manifest_from_tracklets(tracklets, manifest.info), args.work / "train.parquet", force=True)
    values = {**TRAINING_OVERRIDES, "solver.epochs": args.epochs, "solver.milestones": [max(1, args.epochs - 10)],
              "data.manifest": str((args.work / "train.parquet").resolve()), "run.output_dir": str(run.resolve())}
    train(load_recipe(RECIPE, [f"{key}={json.dumps(value)}" for key, value in values.items()]))
    return run / "last.ckpt"


def _network(args: argparse.Namespace, seed: int, checkpoint: Path) -> Path:
    """Draw, track (replayed ground truth, motion only), prepare and extract one network; its folder."""
    folder = args.work / f"net{seed}"
    if (folder / "e.parquet").exists():
        return folder
    if not (folder / "tracked.parquet").exists():  # tracks do not depend on the model: reused by a new one
        prepare("synthetic", folder / "scene", synthetic_footage=_options(args, seed))
        videos = [camera_video(folder / "scene", camid) for camid in range(args.cameras)]
        track_videos(videos, folder / "tracked", options=TrackOptions(detector="gt"), force=True)
        write_manifest(prepare("footage", folder / "tracked"), folder / "tracked.parquet", force=True)
    extract_to_file(checkpoint, folder / "e.parquet", manifest=folder / "tracked.parquet", workers=0, force=True)
    return folder


def unique_boxes(boxes: np.ndarray) -> np.ndarray:
    """``boxes`` (``people.export.box_rows``) with one box per camera, id and frame: the first in row order. Only
    appearance-only clustering (b) can put two tracklets of one camera at one time into one person, which no
    tracker output may hold; the boxes dropped count as missed."""
    _, first = np.unique(boxes[:, :3], axis=0, return_index=True)
    return boxes[np.sort(first)]


def network_scores(folder: Path, boxes: np.ndarray, name: str) -> NetworkScores:
    """Multi-camera IDF1, HOTA, DetA and AssA of ``boxes`` against the network's ground truth, scored by ``tfclip
    evaluate-tracks`` (``footage.metrics.evaluate_tracks``) on the AI City file ``tfclip link --export`` writes."""
    result = folder / "scored" / f"{name}.txt"
    result.parent.mkdir(exist_ok=True)
    write_aicity(unique_boxes(boxes), result, force=True)
    return evaluate_tracks(result, folder / "scene" / "footage" / "mtmc_gt.txt").network


def _labels(embeddings: Embeddings, folder: Path, threshold: float) -> dict[str, np.ndarray]:
    """Person labels of the four ways (module docstring)."""
    times = TrackletTimes.from_rows(embeddings.rows)
    graph = read_camera_graph(folder / "scene" / "footage" / "cameras.yaml")
    plain = pair_scores(embeddings.vectors, None, 0.0)
    count = len(embeddings.rows)
    with_moves = pair_scores(embeddings.vectors, plausible_moves(times, graph), MOVE_BONUS)
    return {
        "(a) single-camera tracks": np.arange(count),
        "(b) appearance only": cluster_people(plain, np.zeros((count, count), bool), times=times,
                                              threshold=threshold),
        "(c) tfclip link": cluster_people(plain, cannot_link(times), times=times, threshold=threshold),
        "(d) link + camera graph": cluster_people(with_moves, cannot_link(times, graph), times=times,
                                                  threshold=threshold),
        "(e) (d) without the Hungarian pass": cluster(with_moves, cannot_link(times, graph), threshold),
    }


def _scores(folder: Path, threshold: float) -> dict[str, NetworkScores]:
    embeddings = read_embeddings(folder / "e.parquet")
    return {name: network_scores(folder, box_rows(embeddings.rows, labels), name[:3])
            for name, labels in _labels(embeddings, folder, threshold).items()}


def adjusted_rand(a: np.ndarray, b: np.ndarray) -> float:
    """The adjusted Rand index of two labelings (1: identical partitions, about 0: chance)."""
    _, a = np.unique(a, return_inverse=True)
    _, b = np.unique(b, return_inverse=True)
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1)
    pairs = lambda n: n * (n - 1) / 2  # noqa: E731
    both, rows, columns = pairs(table).sum(), pairs(table.sum(1)).sum(), pairs(table.sum(0)).sum()
    expected = rows * columns / pairs(len(a))
    top = (rows + columns) / 2
    return float((both - expected) / (top - expected)) if top != expected else 1.0


def pairwise_f1(found: np.ndarray, reference: np.ndarray) -> float:
    """F1 of the same-person pairs of ``found`` against those of ``reference``."""
    same_found = found[:, None] == found[None, :]
    same_reference = reference[:, None] == reference[None, :]
    upper = np.triu(np.ones_like(same_found), 1)
    hits = (same_found & same_reference & upper).sum()
    total = (same_found & upper).sum() + (same_reference & upper).sum()
    return float(2 * hits / total) if total else 1.0


def _drift(folder: Path, threshold: float) -> tuple[float, float]:
    """(ARI, pairwise F1) of incremental linking (first half clustered, the rest assigned) against a full link,
    both with the camera graph."""
    embeddings = read_embeddings(folder / "e.parquet")
    graph = read_camera_graph(folder / "scene" / "footage" / "cameras.yaml")
    times = TrackletTimes.from_rows(embeddings.rows)
    scores = pair_scores(embeddings.vectors, plausible_moves(times, graph), MOVE_BONUS)
    cannot = cannot_link(times, graph)
    full = cluster_people(scores, cannot, times=times, threshold=threshold)
    middle = np.nanmedian(times.start_time)
    early = np.flatnonzero(times.start_time <= middle)
    known = np.full(len(full), -1)
    part = dataclasses.replace(times, **{name: getattr(times, name)[early] for name in (
        "camids", "start_time", "end_time", "source_video", "start_s", "end_s")})
    known[early] = cluster_people(scores[np.ix_(early, early)], cannot[np.ix_(early, early)], times=part,
                                  threshold=threshold)
    incremental = link_onto(embeddings, known, graph=graph, options=ClusterOptions(threshold=threshold))
    return adjusted_rand(incremental, full), pairwise_f1(incremental, full)


def _print_table(table: list[dict[str, NetworkScores]], seeds: list[int], threshold: float) -> None:
    print(f"\nmulti-camera IDF1 / HOTA % on held-out networks {seeds}, threshold {threshold}")
    print(f"{'':<36}" + "".join(f"{f'seed {s}':>13}" for s in seeds) + "".join(
        f"{name:>7}" for name in ("IDF1", "HOTA", "DetA", "AssA")))
    for key in table[0]:
        means = [100 * np.mean([getattr(row[key], name) for row in table]) for name in ("idf1", "hota", "deta", "assa")]
        print(f"{key:<36}" + "".join(f"{100 * row[key].idf1:6.1f} /{100 * row[key].hota:5.1f}" for row in table)
              + "".join(f"{m:7.1f}" for m in means))


def main() -> None:
    args = _arguments()
    args.work.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    checkpoint = _checkpoint(args)
    print(f"checkpoint {checkpoint} ({time.perf_counter() - started:.0f} s)", flush=True)
    tuning = {t: [] for t in THRESHOLDS}
    for seed in args.tune_seeds:
        folder = _network(args, seed, checkpoint)
        for threshold in THRESHOLDS:
            tuning[threshold].append(_scores(folder, threshold))
    name = "(d) link + camera graph"
    for threshold, found in tuning.items():
        means = {key: [100 * np.mean([getattr(s[key], name) for s in found]) for name in ("idf1", "hota")]
                 for key in found[0]}
        print(f"tune seeds {args.tune_seeds} threshold {threshold}, IDF1 / HOTA: " + ", ".join(
            f"{key} {idf1:.1f} / {hota:.1f}" for key, (idf1, hota) in means.items()), flush=True)
    tuned = max(THRESHOLDS, key=lambda t: np.mean([s[name].idf1 for s in tuning[t]]))
    print(f"tuned threshold {tuned} (by IDF1 of {name}; default {DEFAULT_THRESHOLD})")
    for threshold in sorted({DEFAULT_THRESHOLD, tuned}):
        _print_table([_scores(_network(args, seed, checkpoint), threshold) for seed in args.seeds], args.seeds,
                     threshold)
    drifts = [_drift(_network(args, seed, checkpoint), tuned) for seed in args.seeds]
    print(f"\nincremental vs full link (threshold {tuned}, graph): ARI " + ", ".join(f"{d[0]:.3f}" for d in drifts)
          + "; pairwise F1 " + ", ".join(f"{d[1]:.3f}" for d in drifts))
    print(f"({time.perf_counter() - started:.0f} s)")


if __name__ == "__main__":
    main()
