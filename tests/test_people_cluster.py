"""people.cluster: constrained average-linkage clustering against hand-worked cases and a slow oracle, and the
incremental assignment."""

import itertools

import numpy as np
import pytest

from tfclip_cli.people.cluster import assign, cluster, cluster_people, pair_scores, refine
from tfclip_cli.people.constraints import TrackletTimes


def _oracle(scores: np.ndarray, cannot: np.ndarray, threshold: float) -> list[set[int]]:
    """Average linkage written plainly: recompute every mean over member pairs at every step."""
    groups = [{i} for i in range(len(scores))]
    while True:
        best, pair = -np.inf, None
        for a, b in itertools.combinations(range(len(groups)), 2):
            if any(cannot[i, j] for i in groups[a] for j in groups[b]):
                continue
            mean = np.mean([scores[i, j] for i in groups[a] for j in groups[b]])
            if mean > best:
                best, pair = mean, (a, b)
        if pair is None or best < threshold:
            return groups
        a, b = pair
        groups[a] |= groups.pop(b)


def _times(camids, starts=None) -> TrackletTimes:
    """Tracklets of 1 s at ``starts`` (default 0, 10, 20 ...) in cameras ``camids``."""
    starts = np.arange(len(camids)) * 10.0 if starts is None else np.asarray(starts, dtype=float)
    unknown = np.full(len(camids), np.nan)
    return TrackletTimes(np.asarray(camids), starts, starts + 1.0, np.full(len(camids), "", dtype=object), unknown,
                         unknown)


def _groups(labels: np.ndarray) -> list[set[int]]:
    return sorted(({int(i) for i in np.flatnonzero(labels == label)} for label in np.unique(labels)), key=min)


def test_three_people_of_two_cameras_are_found():
    vectors = np.array([[1, 0, 0], [0.9, 0.1, 0], [0, 1, 0], [0.1, 0.95, 0], [0, 0, 1]], dtype=np.float32)
    labels = cluster(pair_scores(vectors, None, 0.0), np.zeros((5, 5), bool), threshold=0.5)
    assert labels.tolist() == [0, 0, 1, 1, 2]


def test_a_forbidden_pair_keeps_look_alikes_apart_and_their_look_alike_joins_one():
    vectors = np.array([[1, 0], [1, 0.01], [1, 0.02]], dtype=np.float32)  # three look-alikes
    cannot = np.zeros((3, 3), bool)
    cannot[0, 1] = cannot[1, 0] = True  # 0 and 1 were in one camera at once: two people
    labels = cluster(pair_scores(vectors, None, 0.0), cannot, threshold=0.5)
    assert labels[0] != labels[1] and labels[2] in (labels[0], labels[1])


def test_a_plausible_move_adds_its_bonus_to_the_pair_score():
    vectors = np.array([[1, 0], [0.6, 0.8]], dtype=np.float32)  # cosine 0.6
    moves = np.array([[False, True], [True, False]])
    assert pair_scores(vectors, moves, 0.1)[0, 1] == pytest.approx(0.7)
    assert cluster(pair_scores(vectors, None, 0.0), np.zeros((2, 2), bool), 0.65).tolist() == [0, 1]
    assert cluster(pair_scores(vectors, moves, 0.1), np.zeros((2, 2), bool), 0.65).tolist() == [0, 0]


@pytest.mark.parametrize("seed", range(6))
def test_clustering_matches_the_plain_oracle(seed):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(4, 8))
    vectors = centres[rng.integers(4, size=14)] + 0.6 * rng.normal(size=(14, 8))
    cannot = np.triu(rng.random((14, 14)) < 0.15, 1)
    cannot |= cannot.T
    scores = pair_scores(vectors, None, 0.0)
    assert _groups(cluster(scores, cannot, 0.3)) == sorted(_oracle(scores, cannot, 0.3), key=min)


def test_new_tracklets_join_the_best_allowed_person_or_start_one():
    vectors = np.array([[1, 0, 0], [0, 1, 0], [0.95, 0.05, 0], [0.9, 0, 0.1], [0, 0, 1]], dtype=np.float32)
    scores = pair_scores(vectors, None, 0.0)
    cannot = np.zeros((5, 5), bool)
    cannot[3, 0] = cannot[0, 3] = True  # 3 looks like person 0 but was beside them
    labels = assign(scores, cannot, np.array([0, 1, -1, -1, -1]), order=np.array([2, 3, 4]), threshold=0.5)
    assert labels.tolist() == [0, 1, 0, 2, 3]  # 2 joins person 0; 3 may not; 4 is like no one


def test_the_hungarian_pass_moves_a_tracklet_to_the_person_it_matches_best():
    scores = np.array([[1, 0.2, 0.1], [0.2, 1, 0.9], [0.1, 0.9, 1]])  # r (camera 1) is like q, not p
    times = _times([0, 0, 1])
    labels = refine(scores, np.zeros((3, 3), bool), np.array([0, 1, 0]), times=times, threshold=0.5)
    assert labels.tolist() == [0, 1, 1]


def test_the_hungarian_pass_gives_each_person_one_tracklet_of_a_camera_and_respects_the_rules():
    scores = np.array([[1, 0.8, 0.7], [0.8, 1, 0.1], [0.7, 0.1, 1]])  # p (camera 0); q, r (camera 1) both like p
    times = _times([0, 1, 1], starts=[0, 10, 30])  # q and r: two visits to camera 1
    labels = refine(scores, np.zeros((3, 3), bool), np.array([0, 0, 0]), times=times, threshold=0.5)
    assert labels.tolist() == [0, 0, 1]  # q, the closer, stays with p; r starts its own person
    fragments = _times([0, 1, 1], starts=[0, 10, 11.5])  # q and r: one visit, cut in two
    assert refine(scores, np.zeros((3, 3), bool), np.array([0, 0, 0]), times=fragments, threshold=0.5).tolist() == [
        0, 0, 0]
    cannot = np.zeros((3, 3), bool)
    cannot[0, 1] = cannot[1, 0] = True
    labels = refine(scores, cannot, np.array([0, 1, 2]), times=times, threshold=0.5)
    assert labels[0] != labels[1] and labels[0] == labels[2]


def test_cluster_people_is_clustering_then_the_pass():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(12, 6))
    scores = pair_scores(vectors, None, 0.0)
    cannot = np.zeros((12, 12), bool)
    times = _times(np.arange(12) % 3, starts=np.arange(12) * 10.0)
    expected = refine(scores, cannot, cluster(scores, cannot, 0.2), times=times, threshold=0.2)
    assert cluster_people(scores, cannot, times=times, threshold=0.2).tolist() == expected.tolist()
