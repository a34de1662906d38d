"""A detector that replays a video's ground truth with a detector's faults: misses, false positives, jitter.

Real detectors are trained on photographs and may not fire on drawn people; replaying the ground truth lets the
tracker, the appearance relinking and the MOT scores be measured on the synthetic footage all the same. The faults
follow what real detectors do: a person hidden behind a nearer one is found less often and with a lower score (so
ByteTrack's low-score stage matters), boxes wobble around the truth, and clutter fires now and then. Every frame's
draw is seeded by ``(seed, frame_index)``, so replays do not depend on which frames are asked for, or in what order.

Spec for :func:`tfclip_cli.footage.detect.build_detector`: ``gt:PATH`` replays the MOTChallenge file PATH; ``gt``
replays the ``gt.txt`` beside the video being tracked (pass ``video=``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfclip_cli.datasets.mot import GroundTruth, gt_path, read_gt
from tfclip_cli.errors import UserError
from tfclip_cli.footage.detection import Detection


@dataclass(frozen=True)
class ReplayNoise:
    """How far the replay strays from the truth."""

    miss: float = 0.1  # chance to miss a fully visible person; a hidden share h adds 0.6·h² to it
    false_positives: float = 0.1  # mean false detections per frame (Poisson)
    jitter: float = 0.05  # standard deviation of box shifts and log-scale changes, as a share of the box size
    seed: int = 0


def visible_share(boxes: np.ndarray) -> np.ndarray:
    """Per box ``[N, 4]``, the share of its area not covered by the union of nearer boxes (lower bottom edge).

    Computed on a coarse grid of 16×16 cells per box: exact enough to grade occlusion.
    """
    shares = np.ones(len(boxes))
    for i, (x1, y1, x2, y2) in enumerate(boxes):
        nearer = boxes[boxes[:, 3] > y2]
        if len(nearer) == 0:
            continue
        xs = np.linspace(x1, x2, 16, endpoint=False) + (x2 - x1) / 32
        ys = np.linspace(y1, y2, 16, endpoint=False) + (y2 - y1) / 32
        gx, gy = np.meshgrid(xs, ys)
        covered = np.zeros(gx.shape, dtype=bool)
        for n in nearer:
            covered |= (gx >= n[0]) & (gx < n[2]) & (gy >= n[1]) & (gy < n[3])
        shares[i] = 1.0 - covered.mean()
    return shares


class ReplayDetector:
    """Replays ``truth`` frame by frame with the faults of ``noise``."""

    name = "gt"

    def __init__(self, truth: GroundTruth, noise: ReplayNoise = ReplayNoise()) -> None:
        self.truth = truth
        self.noise = noise

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]:
        rng = np.random.default_rng([self.noise.seed, frame_index])
        boxes = self.truth.boxes[self.truth.at(frame_index)].astype(np.float64)
        visible = visible_share(boxes)
        found = rng.random(len(boxes)) >= self.noise.miss + 0.6 * (1.0 - visible) ** 2
        detections = [self._jittered(box, share, rng) for box, share, hit in zip(boxes, visible, found) if hit]
        return detections + self._clutter(frame.shape[:2], rng)

    def _jittered(self, box: np.ndarray, visible: float, rng: np.random.Generator) -> Detection:
        """``box`` shifted and rescaled by the jitter; the score falls with the hidden share."""
        w, h = box[2] - box[0], box[3] - box[1]
        dx, dy, dw, dh = rng.normal(0.0, self.noise.jitter, size=4)
        cx, cy = (box[0] + box[2]) / 2 + dx * w, (box[1] + box[3]) / 2 + dy * h
        w, h = w * np.exp(dw), h * np.exp(dh)
        score = float(np.clip(0.3 + 0.65 * visible + rng.normal(0.0, 0.05), 0.05, 0.99))
        return Detection((float(cx - w / 2), float(cy - h / 2), float(cx + w / 2), float(cy + h / 2)), score)

    def _clutter(self, size: tuple[int, int], rng: np.random.Generator) -> list[Detection]:
        """False detections of a person's shape at random places, mostly with low scores."""
        height, width = size
        found = []
        for _ in range(rng.poisson(self.noise.false_positives)):
            h = rng.uniform(0.2, 0.5) * height
            w = 0.4 * h
            x, y = rng.uniform(0, width - w), rng.uniform(0, height - h)
            found.append(Detection((float(x), float(y), float(x + w), float(y + h)), float(rng.uniform(0.1, 0.7))))
        return found


def replay_detector(spec: str, *, video: Path | None = None, noise: ReplayNoise = ReplayNoise()) -> ReplayDetector:
    """The replay detector of ``spec``: ``gt:PATH`` (that gt.txt) or ``gt`` (the gt.txt beside ``video``).

    Raises:
        UserError: ``gt`` without a video.
        DataError: the gt.txt is missing or malformed.
    """
    path = spec[len("gt:"):] if spec.startswith("gt:") else None
    if path is None and video is None:
        raise UserError("detector 'gt' replays the gt.txt beside the video it tracks, but no video was given",
                        hint="name the file: --detector gt:PATH/gt.txt")
    return ReplayDetector(read_gt(Path(path) if path else gt_path(video)), noise)
