"""Detections → tracks: a ByteTrack-style multi-object tracker.

The association follows ByteTrack (Zhang et al., ECCV 2022; read in ifzhang/ByteTrack
``yolox/tracker/byte_tracker.py``): every track's box is predicted by a constant-velocity Kalman filter on
(centre x, centre y, aspect w/h, height); high-score detections are matched first to every track (tracked or lost)
by IoU with the Hungarian algorithm, then low-score detections to the tracked ones still unmatched, which keeps
people through partial occlusion without letting low-score clutter start tracks. An unmatched high-score detection
starts a tentative track, confirmed when matched on the next detected frame; a track unmatched for longer than the
lost buffer dies. While a track is lost its height stops changing (ByteTrack zeroes the height velocity of a track
that is not tracked), so a prediction cannot grow or shrink without bound. Unlike ByteTrack we keep the history of
each track (a box per frame, predicted boxes bridging the frames it was lost in once it is found again) because
tfclip cuts tracklets from it. Frames reach the tracker through :mod:`~tfclip_cli.footage.pipeline`.
"""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from tfclip_cli.footage.detection import Detection

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Track:
    """One person followed through one video: a box per frame index (0-based, increasing; without gaps as the
    tracker makes them, with gaps where :mod:`~tfclip_cli.footage.relink` joined two fragments).

    ``scores`` holds the matched detection's score, 0 where the box is predicted (carried between detected frames
    or bridging frames the detector missed). ``track_id`` is unique within one ``source`` (the video or stream the
    track was followed in), not across sources.
    """

    track_id: int
    camid: int
    frame_indices: tuple[int, ...]
    boxes: np.ndarray  # [N, 4] x1, y1, x2, y2 float32
    scores: np.ndarray  # [N] float32
    source: str = ""

    @property
    def num_frames(self) -> int:
        return len(self.frame_indices)


@dataclass(frozen=True)
class TrackerConfig:
    """Thresholds of the tracker (ByteTrack's defaults where it has one)."""

    high_score: float = 0.5  # detections at least this confident go to the first stage and may start tracks
    low_score: float = 0.1  # below this a detection is ignored; between the two it only extends tracked people
    birth_score: float = 0.6  # an unmatched detection starts a track only at this confidence
    first_iou: float = 0.2  # least IoU of a first-stage match (ByteTrack: match_thresh 0.8 as a distance)
    second_iou: float = 0.5  # least IoU of a second-stage (low-score) match
    tentative_iou: float = 0.3  # least IoU to confirm a tentative track
    lost_buffer: int = 30  # frames at 30 fps a lost track waits to be found again before it dies (ByteTrack's
    # track_buffer, scaled to the video's frame rate as ByteTrack does: 10 frames at 10 fps)


@dataclass(frozen=True)
class TrackedBox:
    """A confirmed track's box at the current frame, as :meth:`ByteTracker.update` reports it."""

    track_id: int
    box: tuple[float, float, float, float]
    score: float


class KalmanBox:
    """Constant-velocity Kalman filter on ``(cx, cy, a, h)`` with noise proportional to the height, as ByteTrack's
    ``kalman_filter.py`` (itself from DeepSORT)."""

    position_weight = 1.0 / 20
    velocity_weight = 1.0 / 160

    def __init__(self, box: np.ndarray) -> None:
        measurement = _to_xyah(box)
        self.mean = np.concatenate([measurement, np.zeros(4)])
        h = measurement[3]
        std = [2 * self.position_weight * h, 2 * self.position_weight * h, 1e-2, 2 * self.position_weight * h]
        std += [10 * self.velocity_weight * h, 10 * self.velocity_weight * h, 1e-5, 10 * self.velocity_weight * h]
        self.covariance = np.diag(np.square(std))
        self._motion = np.eye(8)
        self._motion[:4, 4:] = np.eye(4)

    def hold_height(self) -> None:
        """Stop the height changing (ByteTrack's ``STrack.predict`` for a track that is not tracked): a lost
        person's box keeps its last size instead of growing or shrinking on a stale velocity."""
        self.mean[7] = 0.0

    def predict(self) -> None:
        h = self.mean[3]
        std_pos = [self.position_weight * h, self.position_weight * h, 1e-2, self.position_weight * h]
        std_vel = [self.velocity_weight * h, self.velocity_weight * h, 1e-5, self.velocity_weight * h]
        self.mean = self._motion @ self.mean
        noise = np.diag(np.square(std_pos + std_vel))
        self.covariance = self._motion @ self.covariance @ self._motion.T + noise

    def update(self, box: np.ndarray) -> None:
        h = self.mean[3]
        std = [self.position_weight * h, self.position_weight * h, 1e-1, self.position_weight * h]
        projected_cov = self.covariance[:4, :4] + np.diag(np.square(std))
        gain = np.linalg.solve(projected_cov, self.covariance[:4, :]).T  # [8, 4]
        self.mean = self.mean + gain @ (_to_xyah(box) - self.mean[:4])
        self.covariance = self.covariance - gain @ projected_cov @ gain.T

    @property
    def box(self) -> np.ndarray:
        return _to_xyxy(self.mean[:4])


def _to_xyah(box: np.ndarray) -> np.ndarray:
    x1, y1, x2, y2 = box
    h = max(y2 - y1, 1e-6)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / h, h], dtype=np.float64)


def _to_xyxy(xyah: np.ndarray) -> np.ndarray:
    cx, cy, a, h = xyah
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dtype=np.float64)


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU ``[len(a), len(b)]`` of x1, y1, x2, y2 boxes."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass(frozen=True)
class Matching:
    """Pairs of (row, column) whose IoU reached the threshold, and the rows and columns left over."""

    pairs: list[tuple[int, int]]
    rows_left: list[int]
    columns_left: list[int]


def match_by_iou(iou: np.ndarray, min_iou: float) -> Matching:
    """The assignment maximising total IoU (Hungarian), keeping pairs with IoU ≥ ``min_iou``."""
    rows, columns = linear_sum_assignment(-iou) if iou.size else (np.array([], int), np.array([], int))
    pairs = [(int(r), int(c)) for r, c in zip(rows, columns) if iou[r, c] >= min_iou]
    matched_rows, matched_columns = {r for r, _ in pairs}, {c for _, c in pairs}
    return Matching(
        pairs=pairs,
        rows_left=[r for r in range(iou.shape[0]) if r not in matched_rows],
        columns_left=[c for c in range(iou.shape[1]) if c not in matched_columns],
    )


@dataclass(eq=False)  # compared by identity: two tracks are never "equal"
class _LiveTrack:
    """A track while the tracker runs: its filter, state and history (``pending`` = predicted while lost).

    ``serial`` names it from birth (``track_id`` is given only when it is confirmed)."""

    serial: int
    track_id: int
    kalman: KalmanBox
    state: str  # "tentative", "tracked" or "lost"
    last_seen: int
    frames: list[int] = field(default_factory=list)
    boxes: list[np.ndarray] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)
    pending: list[tuple[int, np.ndarray]] = field(default_factory=list)

    def predict(self) -> None:
        if self.state == "lost":
            self.kalman.hold_height()
        self.kalman.predict()

    def record(self, frame_index: int, score: float) -> None:
        for index, box in self.pending:  # found again: the predictions bridge the gap
            self._append(index, box, 0.0)
        self.pending.clear()
        self._append(frame_index, self.kalman.box, score)

    def _append(self, frame_index: int, box: np.ndarray, score: float) -> None:
        self.frames.append(frame_index)
        self.boxes.append(box.copy())
        self.scores.append(score)


class ByteTracker:
    """Online multi-person tracker: call :meth:`update` on each detected frame, :meth:`carry` on frames between,
    and :meth:`tracks` at the end.

    Args:
        camid: the camera, copied into every :class:`Track`.
        source: the video or stream, copied into every :class:`Track`.
        config: the thresholds.
        fps: the frame rate, which scales the lost buffer (ByteTrack's ``frame_rate / 30 * track_buffer``).
    """

    def __init__(self, *, camid: int, source: str = "", config: TrackerConfig = TrackerConfig(),
                 fps: float = 30.0) -> None:
        self.camid = camid
        self.source = source
        self.config = config
        self.lost_frames = max(1, int(fps / 30.0 * config.lost_buffer))
        self._live: list[_LiveTrack] = []
        self._dead: list[_LiveTrack] = []
        self._next_id = itertools.count(1)
        self._next_serial = itertools.count()
        self._started = False

    def carry(self, frame_index: int) -> list[TrackedBox]:
        """A frame without detections: every box moves by its predicted velocity (kept if the track is found again).

        Returns:
            the predicted boxes of the tracks currently tracked.
        """
        for track in self._live:
            track.predict()
            track.pending.append((frame_index, track.kalman.box))
        return [TrackedBox(t.track_id, tuple(map(float, t.kalman.box)), 0.0) for t in self._tracked()]

    def update(self, detections: Sequence[Detection], frame_index: int) -> list[TrackedBox]:
        """Associate one frame's detections with the tracks (ByteTrack's two stages), start and end tracks.

        Returns:
            the boxes of the tracks tracked at this frame, with their matched detection's score.
        """
        for track in self._live:
            track.predict()
        high = [d for d in detections if d.score >= self.config.high_score]
        low = [d for d in detections if self.config.low_score <= d.score < self.config.high_score]
        confirmed = [t for t in self._live if t.state != "tentative"]
        high_left, unmatched = self._associate(confirmed, high, min_iou=self.config.first_iou, frame_index=frame_index)
        still_tracked = [t for t in unmatched if t.state == "tracked"]
        _, missed = self._associate(still_tracked, low, min_iou=self.config.second_iou, frame_index=frame_index)
        for track in missed + [t for t in unmatched if t.state == "lost"]:
            track.state = "lost"
            track.pending.append((frame_index, track.kalman.box))
        tentative = [t for t in self._live if t.state == "tentative"]
        high_left, unconfirmed = self._associate(
            tentative, high_left, min_iou=self.config.tentative_iou, frame_index=frame_index
        )
        self._live = [t for t in self._live if t not in unconfirmed]
        self._start(high_left, frame_index)
        self._bury(frame_index)
        return [TrackedBox(t.track_id, tuple(map(float, t.kalman.box)), t.scores[-1]) for t in self._tracked()]

    def live_boxes(self) -> list[tuple[int, np.ndarray]]:
        """``(serial, box)`` of every live track (tentative, tracked or lost) at the frame last updated or carried:
        the box it has recorded, or will record if it is found again, for that frame."""
        return [(t.serial, t.kalman.box) for t in self._live]

    def keyed_tracks(self) -> list[tuple[int, Track]]:
        """:meth:`tracks`, each with the serial :meth:`live_boxes` named it by."""
        finished = sorted((t for t in self._dead + self._live if t.track_id > 0), key=lambda t: t.track_id)
        return [(t.serial, self._track(t)) for t in finished]

    def release(self, *, dead_before: int, max_frames: int) -> list[tuple[int, Track]]:
        """For live footage: hand over and forget the tracks that are done, keyed by serial as :meth:`keyed_tracks`:
        the dead ones last seen before frame ``dead_before``, and the history of every confirmed live track that
        holds ``max_frames`` frames or more (the track goes on under a new serial, its history starting afresh).
        :meth:`keyed_tracks` no longer returns what was released."""
        dead = [t for t in self._dead if t.last_seen < dead_before]
        self._dead = [t for t in self._dead if t not in dead]
        released = [(t.serial, self._track(t)) for t in dead if t.track_id > 0]
        for track in self._live:
            if track.track_id > 0 and len(track.frames) >= max_frames:
                released.append((track.serial, self._track(track)))
                track.serial = next(self._next_serial)
                track.frames, track.boxes, track.scores = [], [], []
        return sorted(released, key=lambda pair: pair[1].track_id)

    def serials(self) -> set[int]:
        """The serials of the tracks the tracker still holds (live or dead, not released)."""
        return {t.serial for t in self._live + self._dead}

    def _track(self, track: _LiveTrack) -> Track:
        return Track(
            track_id=track.track_id,
            camid=self.camid,
            frame_indices=tuple(track.frames),
            boxes=np.asarray(track.boxes, dtype=np.float32).reshape(-1, 4),
            scores=np.asarray(track.scores, dtype=np.float32),
            source=self.source,
        )

    def tracks(self) -> list[Track]:
        """Every track confirmed so far (dead or alive), by id; predictions after a track's last match are left out."""
        return [track for _, track in self.keyed_tracks()]

    def _tracked(self) -> list[_LiveTrack]:
        return [t for t in self._live if t.state == "tracked"]

    def _associate(
        self, tracks: list[_LiveTrack], detections: list[Detection], *, min_iou: float, frame_index: int
    ) -> tuple[list[Detection], list[_LiveTrack]]:
        """Match ``tracks`` to ``detections`` by IoU and update the matched; returns what is left of each."""
        predicted = np.array([t.kalman.box for t in tracks]).reshape(-1, 4)
        boxes = np.array([d.box for d in detections], dtype=np.float64).reshape(-1, 4)
        matching = match_by_iou(iou_matrix(predicted, boxes), min_iou)
        for row, column in matching.pairs:
            track, detection = tracks[row], detections[column]
            track.kalman.update(np.asarray(detection.box, dtype=np.float64))
            track.record(frame_index, detection.score)
            track.last_seen = frame_index
            if track.state == "tentative":
                track.track_id = next(self._next_id)
            track.state = "tracked"
        return [detections[c] for c in matching.columns_left], [tracks[r] for r in matching.rows_left]

    def _start(self, detections: list[Detection], frame_index: int) -> None:
        """New tracks from unmatched confident detections; on the first frame they are confirmed at once."""
        for detection in detections:
            if detection.score < self.config.birth_score:
                continue
            kalman = KalmanBox(np.asarray(detection.box, dtype=np.float64))
            track = _LiveTrack(next(self._next_serial), 0, kalman, "tentative", frame_index)
            track.record(frame_index, detection.score)
            if not self._started:
                track.track_id, track.state = next(self._next_id), "tracked"
            self._live.append(track)
        self._started = True

    def _bury(self, frame_index: int) -> None:
        """Lost tracks unmatched for more than the lost buffer die."""
        dead = [t for t in self._live if t.state == "lost" and frame_index - t.last_seen > self.lost_frames]
        self._dead.extend(dead)
        self._live = [t for t in self._live if t not in dead]
