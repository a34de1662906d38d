"""MOT scores on hand-worked cases: a swap of two people, a miss and a false positive, an IoU threshold; a camera
network scored per camera and as one sequence with global ids."""

from __future__ import annotations

import numpy as np
import pytest

from tfclip_cli.datasets.mot import GroundTruth
from tfclip_cli.footage.metrics import (
    IdentitySwitch, TrackedVideo, identity_switches, one_sequence, score_network, score_tracks,
)
from tfclip_cli.footage.track import Track

A_BOX = (0.0, 0.0, 10.0, 20.0)
B_BOX = (50.0, 0.0, 60.0, 20.0)


def _truth(rows: list[tuple[int, int, tuple]]) -> GroundTruth:
    return GroundTruth(frame_indices=np.array([r[0] for r in rows]), pids=np.array([r[1] for r in rows]),
                       boxes=np.array([r[2] for r in rows], dtype=np.float32))


def _track(track_id: int, boxes_by_frame: dict[int, tuple]) -> Track:
    frames = tuple(sorted(boxes_by_frame))
    return Track(track_id=track_id, camid=0, frame_indices=frames,
                 boxes=np.array([boxes_by_frame[f] for f in frames], dtype=np.float32),
                 scores=np.ones(len(frames), dtype=np.float32))


def test_two_tracks_swapping_two_people_cost_two_switches_and_half_the_idf1():
    # A (id 1) and B (id 2) in frames 0-3; track 10 follows A then B, track 20 B then A: every box matched.
    truth = _truth([(f, 1, A_BOX) for f in range(4)] + [(f, 2, B_BOX) for f in range(4)])
    tracks = [_track(10, {0: A_BOX, 1: A_BOX, 2: B_BOX, 3: B_BOX}),
              _track(20, {0: B_BOX, 1: B_BOX, 2: A_BOX, 3: A_BOX})]
    scores = score_tracks([TrackedVideo(tracks, truth)])
    assert (scores.id_switches, scores.misses, scores.false_positives) == (2, 0, 0)
    assert scores.mota == pytest.approx(1 - 2 / 8)  # 8 ground-truth boxes, 2 switches
    assert scores.idf1 == pytest.approx(2 * 4 / (8 + 8))  # best one-to-one: 10↔A and 20↔B agree on 2 frames each


def test_identity_switches_name_the_frame_the_person_and_the_track_that_took_over():
    truth = _truth([(f, 1, A_BOX) for f in range(4)] + [(f, 2, B_BOX) for f in range(4)])
    tracks = [_track(10, {0: A_BOX, 1: A_BOX, 2: B_BOX, 3: B_BOX}),
              _track(20, {0: B_BOX, 1: B_BOX, 2: A_BOX, 3: A_BOX})]
    assert identity_switches(TrackedVideo(tracks, truth)) == [IdentitySwitch(2, 1, 20), IdentitySwitch(2, 2, 10)]


def test_a_miss_and_a_false_positive_count_once_each():
    # A in frames 0-4; track 10 follows A in 0-3 and loses it; track 30 fires far from anyone in frame 4.
    truth = _truth([(f, 1, A_BOX) for f in range(5)])
    tracks = [_track(10, {f: A_BOX for f in range(4)}), _track(30, {4: (200.0, 0.0, 210.0, 20.0)})]
    scores = score_tracks([TrackedVideo(tracks, truth)])
    assert (scores.id_switches, scores.misses, scores.false_positives) == (0, 1, 1)
    assert (scores.ground_truth_boxes, scores.track_boxes) == (5, 5)
    assert scores.mota == pytest.approx(1 - 2 / 5)
    assert scores.idf1 == pytest.approx(2 * 4 / (5 + 5))


def test_a_box_below_the_iou_threshold_is_a_miss_and_a_false_positive():
    truth = _truth([(0, 1, A_BOX)])
    shifted = (5.0, 0.0, 15.0, 20.0)  # IoU with A: 50 / 150 = 1/3
    assert score_tracks([TrackedVideo([_track(1, {0: shifted})], truth)]).mota == pytest.approx(-1.0)
    assert score_tracks([TrackedVideo([_track(1, {0: shifted})], truth)], min_iou=0.3).mota == pytest.approx(1.0)


def test_videos_are_scored_together_with_track_ids_local_to_each():
    truth = _truth([(f, 1, A_BOX) for f in range(4)])
    perfect = TrackedVideo([_track(1, {f: A_BOX for f in range(4)})], truth)
    half = TrackedVideo([_track(1, {0: A_BOX, 1: A_BOX})], truth)
    scores = score_tracks([perfect, half])
    assert (scores.ground_truth_boxes, scores.misses, scores.id_switches) == (8, 2, 0)
    assert scores.mota == pytest.approx(1 - 2 / 8)


def _camera_video(track_id: int, frames: range) -> TrackedVideo:
    """Person 1 seen in ``frames`` of a camera, followed exactly by track ``track_id``."""
    truth = _truth([(f, 1, A_BOX) for f in frames])
    return TrackedVideo([_track(track_id, {f: A_BOX for f in frames})], truth)


def test_one_id_across_cameras_scores_perfectly_on_the_network():
    evaluation = score_network({0: _camera_video(7, range(4)), 3: _camera_video(7, range(2, 6))})
    assert sorted(evaluation.cameras) == [0, 3]
    assert all((s.mota, s.idf1, s.hota, s.id_switches) == (1.0, 1.0, 1.0, 0) for s in evaluation.cameras.values())
    assert (evaluation.network.idf1, evaluation.network.hota) == (1.0, 1.0)


def test_a_new_id_in_the_next_camera_halves_the_network_association_only():
    # Each camera alone is perfect; over the network person 1 (8 boxes) is split between tracks 7 and 8 (4 each).
    evaluation = score_network({0: _camera_video(7, range(4)), 1: _camera_video(8, range(2, 6))})
    assert all(s.hota == 1.0 and s.idf1 == 1.0 for s in evaluation.cameras.values())
    network = evaluation.network
    assert network.idf1 == pytest.approx(2 * 4 / (8 + 8))  # the best one-to-one pair agrees on 4 of 8 boxes
    assert network.deta == pytest.approx(1.0)
    assert network.assa == pytest.approx(4 / (8 + 4 - 4))  # each TP's pair: 4 TPs of 8 + 4 boxes
    assert network.hota == pytest.approx(np.sqrt(0.5))


def test_cameras_follow_each_other_in_one_sequence_by_camera_number():
    videos = {2: _camera_video(5, range(3, 6)), 0: _camera_video(5, range(0, 4))}
    joined = one_sequence(videos)
    assert joined.truth.frame_indices.tolist() == [0, 1, 2, 3, 4 + 3, 4 + 4, 4 + 5]
    assert [t.frame_indices for t in joined.tracks] == [(0, 1, 2, 3), (7, 8, 9)]


def test_a_camera_nobody_was_found_in_scores_zero():
    scores = score_network({0: TrackedVideo([], _truth([(0, 1, A_BOX)]))}).cameras[0]
    assert (scores.mota, scores.idf1, scores.hota, scores.deta, scores.assa) == (0.0, 0.0, 0.0, 0.0, 0.0)


def test_no_ground_truth_boxes_give_finite_scores():
    nobody = GroundTruth(frame_indices=np.zeros(0, np.int64), pids=np.zeros(0, np.int64),
                         boxes=np.zeros((0, 4), np.float32))
    scores = score_tracks([TrackedVideo([_track(1, {0: A_BOX})], nobody)])  # (0 boxes − FP 1) / max(1, 0)
    assert (scores.mota, scores.idf1, scores.false_positives) == (-1.0, 0.0, 1)
