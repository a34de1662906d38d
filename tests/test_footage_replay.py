"""The ground-truth replay detector: exact without noise, seeded faults at the asked rates, built from a spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfclip_cli.datasets.mot import GroundTruth, read_gt, write_gt
from tfclip_cli.datasets.synthetic_footage import FootageOptions, camera_video, generate_footage
from tfclip_cli.errors import UserError
from tfclip_cli.footage.detect import build_detector
from tfclip_cli.footage.metrics import TrackedVideo, score_tracks
from tfclip_cli.footage.replay import ReplayDetector, ReplayNoise, visible_share
from tfclip_cli.footage.pipeline import PipelineOptions, run_video

FRAME = np.zeros((100, 200, 3), dtype=np.uint8)
EXACT = ReplayNoise(miss=0.0, false_positives=0.0, jitter=0.0)


def _truth(frames: int, boxes: list[tuple[float, float, float, float]]) -> GroundTruth:
    return GroundTruth(
        frame_indices=np.repeat(np.arange(frames), len(boxes)),
        pids=np.tile(np.arange(1, len(boxes) + 1), frames),
        boxes=np.tile(np.array(boxes, dtype=np.float32), (frames, 1)),
    )


def test_without_noise_it_returns_the_ground_truth_boxes():
    truth = _truth(3, [(10, 10, 30, 60), (100, 20, 120, 70)])
    found = ReplayDetector(truth, EXACT).detect(FRAME, frame_index=2)
    assert sorted(d.box for d in found) == [(10, 10, 30, 60), (100, 20, 120, 70)]
    assert all(0.75 < d.score <= 0.99 for d in found)  # fully visible: high scores


def test_visible_share_counts_only_nearer_people():
    # B (bottom edge 60) has its left half behind A (bottom edge 80); A, nearer, is fully visible.
    boxes = np.array([[0, 0, 20, 80], [10, 20, 30, 60]], dtype=np.float64)
    np.testing.assert_allclose(visible_share(boxes), [1.0, 0.5])


def test_hidden_people_are_found_less_often_and_with_lower_scores():
    truth = _truth(400, [(0, 0, 40, 90), (5, 10, 35, 60)])  # person 2 is wholly behind person 1
    detector = ReplayDetector(truth, EXACT)
    found = [detector.detect(FRAME, frame_index=f) for f in range(400)]
    hidden = [d for frame in found for d in frame if d.box[3] == 60]
    assert 0.3 < len(hidden) / 400 < 0.5  # found with chance 1 − 0.6
    assert all(d.score < 0.5 for d in hidden)


def test_misses_false_positives_and_jitter_follow_the_noise_settings():
    truth = _truth(1000, [(50, 10, 70, 60)])
    detector = ReplayDetector(truth, ReplayNoise(miss=0.2, false_positives=0.5, jitter=0.05, seed=3))
    found = [detector.detect(FRAME, frame_index=f) for f in range(1000)]
    near = [d for frame in found for d in frame if abs(d.box[0] - 50) < 5 and abs(d.box[3] - 60) < 10]
    assert 0.76 < len(near) / 1000 < 0.84
    assert 0.45 < (sum(map(len, found)) - len(near)) / 1000 < 0.55  # false positives per frame
    widths = np.array([d.box[2] - d.box[0] for d in near])
    assert 0.03 < np.std(np.log(widths / 20)) < 0.07


def test_each_frame_is_seeded_by_itself():
    truth = _truth(10, [(50, 10, 70, 60)])
    noise = ReplayNoise(miss=0.3, false_positives=1.0, jitter=0.1, seed=1)
    forward = [ReplayDetector(truth, noise).detect(FRAME, frame_index=f) for f in range(10)]
    backward = [ReplayDetector(truth, noise).detect(FRAME, frame_index=f) for f in reversed(range(10))]
    assert forward == backward[::-1]
    other_seed = ReplayNoise(miss=0.3, false_positives=1.0, jitter=0.1, seed=2)
    assert forward != [ReplayDetector(truth, other_seed).detect(FRAME, frame_index=f) for f in range(10)]


def test_build_detector_takes_gt_with_a_path_or_beside_the_video(tmp_path):
    write_gt(_truth(2, [(1, 2, 11, 22)]), tmp_path / "gt.txt")
    named = build_detector(f"gt:{tmp_path / 'gt.txt'}")
    beside = build_detector("gt", video=tmp_path / "cam0.mp4")
    for detector in (named, beside):
        assert detector.name == "gt" and len(detector.truth.pids) == 2
    with pytest.raises(UserError, match="no video was given"):
        build_detector("gt")


@pytest.fixture(scope="module")
def footage(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("replay") / "root"
    generate_footage(root, FootageOptions(walkers=4, cameras=1, image_size=(96, 128), frames=48, seed=3))
    return camera_video(root, 0)


def test_tracking_the_replayed_truth_of_synthetic_footage_finds_the_walkers(footage):
    truth = read_gt(footage.parent / "gt.txt")
    every_track = PipelineOptions(min_frames=1, keep_static=True)

    def tracks(detector) -> list:
        done = run_video(footage, detector, camid=0, options=every_track, progress=lambda frames: frames)
        return [tracklet.track for tracklet in done.tracklets]

    default = tracks(build_detector("gt", video=footage))  # the default noise
    noisier = tracks(ReplayDetector(truth, ReplayNoise(miss=0.3, false_positives=0.5)))
    default_scores, noisier_scores = (score_tracks([TrackedVideo(t, truth)]) for t in (default, noisier))
    assert default_scores.mota > 0.7 and default_scores.idf1 > 0.7
    assert noisier_scores.mota < default_scores.mota
