"""MOT scores on hand-worked cases: a swap of two people, a miss and a false positive, an IoU threshold."""

from __future__ import annotations

import numpy as np
import pytest

from tfclip_cli.datasets.mot import GroundTruth
from tfclip_cli.footage.metrics import IdentitySwitch, TrackedVideo, identity_switches, score_tracks
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
