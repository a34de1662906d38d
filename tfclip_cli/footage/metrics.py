"""MOT scores of tracks against ground truth: MOTA, IDF1, identity switches (with ``motmetrics``) and HOTA.

A track box matches a ground-truth box when their IoU is at least ``min_iou`` (0.5, as MOTChallenge); motmetrics
then counts, frame by frame, misses (FN), false positives (FP) and identity switches (a person's match moving to
another track), and finds the one-to-one track ↔ person assignment that maximises the frames they agree on (IDF1).
MOTA = 1 − (FN + FP + IDSW) / ground-truth boxes; IDF1 = 2·IDTP / (ground-truth boxes + track boxes). Without
ground-truth boxes the denominators count 1, as in TrackEval: MOTA is then −FP, IDF1 0. HOTA, DetA and AssA come
from :mod:`~tfclip_cli.footage.hota`.

A camera network is scored per camera and as one sequence, every camera's frames one after another with ids global
to the network, as the AI City Challenge's multi-camera evaluation does: multi-camera IDF1 and HOTA then credit a
track only for following one person across cameras.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import motmetrics
import numpy as np

from tfclip_cli.datasets.mot import GroundTruth
from tfclip_cli.errors import DataError
from tfclip_cli.footage.hota import HotaFrame, HotaScores, score_hota
from tfclip_cli.footage.track import Track, iou_matrix
from tfclip_cli.footage.tracking_files import read_tracks, read_truth

logger = logging.getLogger(__name__)

METRICS = ("idtp", "num_switches", "num_false_positives", "num_misses", "num_objects", "num_predictions")


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


def _frames(video: TrackedVideo) -> Iterator[tuple[int, HotaFrame]]:
    """Every frame of ``video`` holding a box, in order: its index, its identities and their IoU matrix."""
    found: dict[int, list[tuple[int, np.ndarray]]] = {}
    for track in video.tracks:
        for frame_index, box in zip(track.frame_indices, track.boxes):
            found.setdefault(frame_index, []).append((track.track_id, box))
    truth = video.truth
    order = np.argsort(truth.frame_indices, kind="stable")
    frames, starts = np.unique(truth.frame_indices[order], return_index=True)
    truth_rows = dict(zip(frames.tolist(), np.split(order, starts[1:]))) if len(order) else {}
    for frame_index in sorted(set(truth_rows) | set(found)):
        rows = truth_rows.get(frame_index, np.zeros(0, dtype=np.int64))
        boxes = np.array([box for _, box in found.get(frame_index, [])], dtype=np.float64).reshape(-1, 4)
        yield frame_index, HotaFrame(truth_ids=truth.pids[rows],
                                     track_ids=np.array([i for i, _ in found.get(frame_index, [])], dtype=np.int64),
                                     iou=iou_matrix(truth.boxes[rows].astype(np.float64), boxes))


def _accumulate(video: TrackedVideo, min_iou: float) -> motmetrics.MOTAccumulator:
    """Frame-by-frame matches of one video's tracks to its ground truth."""
    accumulator = motmetrics.MOTAccumulator(auto_id=False)
    for frame_index, frame in _frames(video):
        # 1 − IoU, NaN (no match possible) below min_iou: what motmetrics.distances.iou_matrix returns, computed
        # here because motmetrics 1.4 calls np.asfarray, which NumPy 2 removed.
        distances = np.where(frame.iou >= min_iou, 1.0 - frame.iou, np.nan)
        accumulator.update(frame.truth_ids.tolist(), frame.track_ids.tolist(), distances, frameid=frame_index)
    return accumulator


def score_tracks(videos: Sequence[TrackedVideo], *, min_iou: float = 0.5) -> MotScores:
    """MOT scores over all ``videos`` together (counts summed, as MOTChallenge's overall row).

    Args:
        videos: each video's tracks with its ground truth; track ids need only be unique within a video.
        min_iou: least IoU for a track box to match a ground-truth box.
    """
    computer = motmetrics.metrics.create()
    # compute_many would do the same, but logs its timings on the root logger (stderr of every command)
    partials = [computer.compute(_accumulate(video, min_iou), metrics=list(METRICS), return_cached=True,
                                 return_dataframe=False) for video in videos]
    overall = computer.compute_overall(partials, metrics=list(METRICS), return_dataframe=False)
    errors = overall["num_misses"] + overall["num_false_positives"] + overall["num_switches"]
    return MotScores(
        mota=float((overall["num_objects"] - errors) / max(1, overall["num_objects"])),
        idf1=float(2 * overall["idtp"] / max(1, overall["num_objects"] + overall["num_predictions"])),
        id_switches=int(overall["num_switches"]),
        false_positives=int(overall["num_false_positives"]),
        misses=int(overall["num_misses"]),
        ground_truth_boxes=int(overall["num_objects"]),
        track_boxes=int(overall["num_predictions"]),
    )


@dataclass(frozen=True)
class CameraScores:
    """One camera's scores; scores are fractions (MOTA can fall below 0)."""

    mota: float
    idf1: float
    hota: float
    deta: float
    assa: float
    id_switches: int


@dataclass(frozen=True)
class NetworkScores:
    """Multi-camera scores: the network scored as one sequence with global ids."""

    idf1: float
    hota: float
    deta: float
    assa: float


@dataclass(frozen=True)
class NetworkEvaluation:
    """What ``tfclip evaluate-tracks`` reports: scores per camera (by camera number) and for the network."""

    cameras: dict[int, CameraScores]
    network: NetworkScores


def _hota(video: TrackedVideo) -> HotaScores:
    return score_hota([frame for _, frame in _frames(video)])


def score_camera(video: TrackedVideo, *, min_iou: float = 0.5) -> CameraScores:
    """MOTA, IDF1 and identity switches (boxes matching at ``min_iou``), and HOTA, DetA, AssA of one camera."""
    mot, hota = score_tracks([video], min_iou=min_iou), _hota(video)
    return CameraScores(mota=mot.mota, idf1=mot.idf1, hota=hota.hota, deta=hota.deta, assa=hota.assa,
                        id_switches=mot.id_switches)


def one_sequence(videos: dict[int, TrackedVideo]) -> TrackedVideo:
    """The cameras' videos one after another (by camera number) as one video; ids are left as they are."""
    tracks, truths, offset = [], [], 0
    for camid in sorted(videos):
        video = videos[camid]
        ends = [t.frame_indices[-1] for t in video.tracks if t.frame_indices] + video.truth.frame_indices.tolist()
        tracks += [dataclasses.replace(t, frame_indices=tuple(i + offset for i in t.frame_indices))
                   for t in video.tracks]
        truths.append(dataclasses.replace(video.truth, frame_indices=video.truth.frame_indices + offset))
        offset += max(ends, default=-1) + 1
    truth = GroundTruth(frame_indices=np.concatenate([np.zeros(0, np.int64)] + [t.frame_indices for t in truths]),
                        pids=np.concatenate([np.zeros(0, np.int64)] + [t.pids for t in truths]),
                        boxes=np.concatenate([np.zeros((0, 4), np.float32)] + [t.boxes for t in truths]))
    return TrackedVideo(tracks, truth)


def score_network(videos: dict[int, TrackedVideo], *, min_iou: float = 0.5) -> NetworkEvaluation:
    """Every camera's scores, and multi-camera IDF1 and HOTA of the cameras as one sequence (ids global).

    Args:
        videos: each camera's tracks and ground truth, by camera number; a person keeps one id in every camera,
            and so should a track that follows them.
        min_iou: least IoU for a box to match in MOTA and IDF1 (HOTA averages over thresholds).
    """
    joined = one_sequence(videos)
    hota = _hota(joined)
    return NetworkEvaluation(
        cameras={camid: score_camera(videos[camid], min_iou=min_iou) for camid in sorted(videos)},
        network=NetworkScores(idf1=score_tracks([joined], min_iou=min_iou).idf1, hota=hota.hota, deta=hota.deta,
                              assa=hota.assa),
    )


def evaluate_tracks(result: Path, truth: Path) -> NetworkEvaluation:
    """Score the tracks in ``result`` against the ground truth in ``truth`` (layouts: footage.tracking_files).

    A camera of the ground truth without tracks in ``result`` scores as a tracker that found no one there.

    Raises:
        DataError: a file is missing or malformed, or ``result`` holds a camera the ground truth lacks.
    """
    tracks, truths = read_tracks(result), read_truth(truth)
    unknown = sorted(set(tracks) - set(truths))
    if unknown:
        raise DataError(f"{result} has tracks of camera {', '.join(map(str, unknown))}, which {truth} lacks "
                        f"(its cameras: {', '.join(map(str, sorted(truths))) or 'none'})",
                        hint="name each camera by the same number in both, e.g. cam2.txt and camera_id 2")
    for camid in sorted(set(truths) - set(tracks)):
        logger.warning("%s has no tracks of camera %d: scored as finding no one there", result, camid)
    return score_network({camid: TrackedVideo(tracks.get(camid, []), truths[camid]) for camid in truths})


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
