"""MOT scores of tracks against MOTChallenge ground truth: MOTA, IDF1, identity switches (with ``motmetrics``).

A track box matches a ground-truth box when their IoU is at least ``min_iou`` (0.5, as MOTChallenge); motmetrics
then counts, frame by frame, misses (FN), false positives (FP) and identity switches (a person's match moving to
another track), and finds the one-to-one track ↔ person assignment that maximises the frames they agree on (IDF1).
MOTA = 1 − (FN + FP + IDSW) / ground-truth boxes; IDF1 = 2·IDTP / (ground-truth boxes + track boxes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import motmetrics
import numpy as np

from tfclip_cli.datasets.mot import GroundTruth
from tfclip_cli.footage.track import Track, iou_matrix

METRICS = ("mota", "idf1", "num_switches", "num_false_positives", "num_misses", "num_objects", "num_predictions")


@dataclass(frozen=True)
class MotScores:
    """Scores of one or more videos' tracks."""

    mota: float
    idf1: float
    id_switches: int
    false_positives: int
    misses: int
    ground_truth_boxes: int
    track_boxes: int


@dataclass(frozen=True)
class TrackedVideo:
    """One video's tracks and its ground truth."""

    tracks: Sequence[Track]
    truth: GroundTruth


def _distances(truth_boxes: np.ndarray, track_boxes: np.ndarray, min_iou: float) -> np.ndarray:
    """1 − IoU, NaN (no match possible) below ``min_iou``: what ``motmetrics.distances.iou_matrix`` returns, computed
    here because motmetrics 1.4 calls ``np.asfarray``, which NumPy 2 removed."""
    iou = iou_matrix(truth_boxes.astype(np.float64), track_boxes)
    return np.where(iou >= min_iou, 1.0 - iou, np.nan)


def _accumulate(video: TrackedVideo, min_iou: float) -> motmetrics.MOTAccumulator:
    """Frame-by-frame matches of one video's tracks to its ground truth."""
    accumulator = motmetrics.MOTAccumulator(auto_id=False)
    hypotheses: dict[int, list[tuple[int, np.ndarray]]] = {}
    for track in video.tracks:
        for frame_index, box in zip(track.frame_indices, track.boxes):
            hypotheses.setdefault(frame_index, []).append((track.track_id, box))
    truth = video.truth
    for frame_index in sorted(set(truth.frame_indices.tolist()) | set(hypotheses)):
        rows = truth.at(frame_index)
        found = hypotheses.get(frame_index, [])
        track_boxes = np.array([box for _, box in found], dtype=np.float64).reshape(-1, 4)
        distances = _distances(truth.boxes[rows], track_boxes, min_iou)
        accumulator.update(truth.pids[rows].tolist(), [track_id for track_id, _ in found], distances,
                           frameid=frame_index)
    return accumulator


def score_tracks(videos: Sequence[TrackedVideo], *, min_iou: float = 0.5) -> MotScores:
    """MOT scores over all ``videos`` together (counts summed, as MOTChallenge's overall row).

    Args:
        videos: each video's tracks with its ground truth; track ids need only be unique within a video.
        min_iou: least IoU for a track box to match a ground-truth box.
    """
    accumulators = [_accumulate(video, min_iou) for video in videos]
    names = [str(i) for i in range(len(videos))]
    summary = motmetrics.metrics.create().compute_many(accumulators, metrics=list(METRICS), names=names,
                                                       generate_overall=True)
    overall = summary.loc["OVERALL"]
    return MotScores(
        mota=float(overall["mota"]),
        idf1=float(overall["idf1"]),
        id_switches=int(overall["num_switches"]),
        false_positives=int(overall["num_false_positives"]),
        misses=int(overall["num_misses"]),
        ground_truth_boxes=int(overall["num_objects"]),
        track_boxes=int(overall["num_predictions"]),
    )


@dataclass(frozen=True)
class IdentitySwitch:
    """A ground-truth person whose matched track changed: at ``frame_index``, ``track_id`` took ``pid`` over."""

    frame_index: int
    pid: int
    track_id: int


def identity_switches(video: TrackedVideo, *, min_iou: float = 0.5) -> list[IdentitySwitch]:
    """Every identity switch of one video, in frame order (the events :func:`score_tracks` counts)."""
    events = _accumulate(video, min_iou).mot_events
    switches = events[events["Type"] == "SWITCH"]
    return [IdentitySwitch(int(frame_index), int(row.OId), int(row.HId))
            for (frame_index, _), row in zip(switches.index, switches.itertuples())]
