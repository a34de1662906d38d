"""People detectors: the shared NMS, HOG, the SSDLite graph and user YOLO ONNX models, and the video reader."""

from pathlib import Path

import numpy as np
import pytest

from tfclip_cli.errors import UserError
from tfclip_cli.footage.detect import Detection, build_detector, non_max_suppression, read_video, video_info

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
    with pytest.raises(UserError, match="unknown detector 'yolo'.*hog, ssdlite"):
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
