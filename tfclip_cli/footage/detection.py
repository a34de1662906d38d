"""What a detector finds and what a detector is: the values every detector and the replay detector share.

A detection is a value (a pixel box and a score); a detector is anything with a ``name`` and ``detect(frame,
frame_index=...)``. Boxes are clipped to the frame here, once, for every detector (:func:`clipped`), so no part
of the pipeline sees a box outside the picture.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

Box = tuple[float, float, float, float]  # x1, y1, x2, y2 pixels


@dataclass(frozen=True)
class Detection:
    """One detected person: a pixel box ``(x1, y1, x2, y2)`` and a confidence in [0, 1]."""

    box: Box
    score: float


class Detector(Protocol):
    """Finds people in one RGB frame ``[H, W, 3]`` uint8; ``frame_index`` serves detectors that replay known boxes."""

    name: str

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]: ...


def clip_box(box: Sequence[float], *, width: int, height: int) -> Box:
    """``box`` cut to the frame ``[0, width] × [0, height]`` (a box wholly outside becomes empty, not reversed)."""
    x1, x2 = (float(np.clip(v, 0, width)) for v in (box[0], box[2]))
    y1, y2 = (float(np.clip(v, 0, height)) for v in (box[1], box[3]))
    return x1, y1, max(x1, x2), max(y1, y2)


def is_big_enough(box: Sequence[float], min_side: float) -> bool:
    """Whether ``box`` is at least ``min_side`` pixels wide and tall."""
    return box[2] - box[0] >= min_side and box[3] - box[1] >= min_side


def clipped(detections: Sequence[Detection], *, width: int, height: int, min_side: float) -> list[Detection]:
    """``detections`` with their boxes clipped to the frame, leaving out those then smaller than ``min_side``."""
    boxes = [(clip_box(d.box, width=width, height=height), d.score) for d in detections]
    return [Detection(box, score) for box, score in boxes if is_big_enough(box, min_side)]
