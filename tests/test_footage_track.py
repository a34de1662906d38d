"""The ByteTrack-style tracker on hand-worked cases."""

import numpy as np
import pytest

from tfclip_cli.footage.detection import Detection
from tfclip_cli.footage.track import ByteTracker, KalmanBox, TrackerConfig, iou_matrix, match_by_iou


def person(x: float, y: float = 0.0, score: float = 0.9) -> Detection:
    """A 40×100 box with its top-left corner at (x, y)."""
    return Detection((x, y, x + 40.0, y + 100.0), score)


def run(frames: list[list[Detection]], config: TrackerConfig = TrackerConfig()) -> list:
    tracker = ByteTracker(camid=3, config=config)
    for frame_index, detections in enumerate(frames):
        tracker.update(detections, frame_index)
    return tracker.tracks()


def test_iou_and_matching_by_hand() -> None:
    a = np.array([[0, 0, 10, 10], [20, 0, 30, 10]], dtype=float)
    b = np.array([[5, 0, 15, 10], [100, 0, 110, 10]], dtype=float)
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 0], [0, 0]])
    matching = match_by_iou(iou_matrix(a, b), 0.2)
    assert matching.pairs == [(0, 0)] and matching.rows_left == [1] and matching.columns_left == [1]


def test_two_people_crossing_keep_their_identities() -> None:
    # A walks right from x=0, B walks left from x=300, 15 px a frame; they pass each other around frame 10
    frames = [[person(15.0 * f, 0.0), person(300.0 - 15.0 * f, 10.0)] for f in range(21)]
    tracks = run(frames)
    assert [t.track_id for t in tracks] == [1, 2]
    assert all(t.frame_indices == tuple(range(21)) and t.camid == 3 for t in tracks)
    left_edges = [t.boxes[:, 0] for t in tracks]
    assert np.all(np.diff(left_edges[0]) > 0) and np.all(np.diff(left_edges[1]) < 0)
    assert abs(left_edges[0][-1] - 300.0) < 3 and abs(left_edges[1][-1] - 0.0) < 3


def test_a_missed_frame_is_bridged_by_the_prediction() -> None:
    frames = [[person(10.0 * f)] for f in range(6)]
    frames[3] = []
    (track,) = run(frames)
    assert track.frame_indices == (0, 1, 2, 3, 4, 5)
    assert track.scores[3] == 0.0 and track.scores[4] == pytest.approx(0.9)
    assert 20.0 < track.boxes[3, 0] < 40.0  # predicted between frame 2 (x=20) and frame 4 (x=40)


def test_a_low_score_detection_extends_a_track_but_starts_none() -> None:
    frames = [[person(10.0 * f)] for f in range(6)]
    frames[3] = [person(30.0, score=0.3), person(400.0, score=0.3)]  # occluded walker; clutter far away
    (track,) = run(frames)
    assert track.frame_indices == tuple(range(6))
    assert track.scores[3] == pytest.approx(0.3)  # matched by the second stage, not predicted


def test_a_lost_track_dies_after_the_buffer() -> None:
    config = TrackerConfig(lost_buffer=3)
    seen, gone = [[person(50.0)]] * 3, [[]]
    back_in_time = run(seen + gone * 2 + [[person(50.0)]], config)  # found at frame 5: 3 frames after the last
    assert [t.frame_indices for t in back_in_time] == [tuple(range(6))]
    too_late = run(seen + gone * 4 + [[person(50.0)], [person(50.0)]], config)  # frame 7: dead since frame 6
    assert [t.frame_indices for t in too_late] == [(0, 1, 2), (7, 8)]


def test_a_one_frame_false_positive_never_becomes_a_track() -> None:
    frames = [[person(0.0)], [person(0.0), person(300.0)], [person(0.0)], [person(0.0)]]
    assert [t.frame_indices for t in run(frames)] == [(0, 1, 2, 3)]


def test_carried_frames_get_predicted_boxes() -> None:
    tracker = ByteTracker(camid=0)
    for frame_index in range(9):
        if frame_index % 2 == 0:
            tracker.update([person(10.0 * frame_index)], frame_index)
        else:
            tracker.carry(frame_index)
    (track,) = tracker.tracks()
    assert track.frame_indices == tuple(range(9))
    assert list(track.scores[1::2]) == [0.0] * 4
    assert abs(track.boxes[7, 0] - 70.0) < 5  # the velocity learned from frames 0-6 carries it


def test_a_lost_track_keeps_its_height_while_it_is_predicted() -> None:
    # a walker coming towards the camera grows 6 px a frame for 10 frames, then is hidden for 25 frames: as
    # ByteTrack does, the prediction stops growing once the track is lost (it grew 150 px with the stale velocity)
    frames = [[Detection((100.0, 50.0, 140.0, 150.0 + 6 * f), 0.9)] for f in range(10)] + [[]] * 25
    frames.append([Detection((100.0, 50.0, 140.0, 204.0), 0.9)])  # found again where it was hidden
    (track,) = run(frames, TrackerConfig(lost_buffer=30))
    heights = track.boxes[:, 3] - track.boxes[:, 1]
    assert track.frame_indices == tuple(range(36))
    assert heights[10:35].max() - heights[10:35].min() < 1.0  # held while lost
    assert abs(heights[10] - heights[9]) < 8.0


def test_hold_height_zeroes_only_the_height_velocity() -> None:
    kalman = KalmanBox(np.array([0.0, 0.0, 40.0, 100.0]))
    kalman.mean[4:] = [1.0, 2.0, 0.01, 3.0]
    kalman.hold_height()
    np.testing.assert_allclose(kalman.mean[4:], [1.0, 2.0, 0.01, 0.0])


def test_the_lost_buffer_scales_with_the_frame_rate_as_bytetrack_does() -> None:
    # 30 frames at 30 fps is 10 frames at 10 fps (ByteTrack: frame_rate / 30 * track_buffer)
    assert ByteTracker(camid=0, fps=10.0).lost_frames == 10 and ByteTracker(camid=0).lost_frames == 30
    seen, gone = [[person(50.0)]] * 3, [[]]
    # last match at frame 2: found again at frame 12 it goes on; at frame 14 it died (at frame 13, 11 frames lost)
    for hidden, tracks in ((10, 1), (12, 2)):
        tracker = ByteTracker(camid=0, fps=10.0)
        for frame_index, detections in enumerate(seen + gone * (hidden - 1) + [[person(50.0)], [person(50.0)]]):
            tracker.update(detections, frame_index)
        assert len(tracker.tracks()) == tracks, hidden
