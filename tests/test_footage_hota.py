"""HOTA, DetA and AssA on hand-worked cases and against the reference implementation's numbers (TrackEval).

The reference numbers below were printed by TrackEval itself (JonathonLuiten/TrackEval @12c8791, its HOTA, CLEAR and
Identity metrics) on the three camera networks in ``tests/data/hota/`` (AI City layout, two cameras each; boxes
with noise, misses, false positives, identity swaps and breaks, ids carried or lost between cameras), with::

    python3 -m venv /tmp/trackeval-venv && /tmp/trackeval-venv/bin/pip install "numpy<2" scipy  # 1.26.4, 1.17.1
    # /tmp/trackeval-src: the TrackEval source tree at commit 12c8791
    /tmp/trackeval-venv/bin/python tests/data/hota/reference.py /tmp/trackeval-src

(``reference.py`` draws the networks and scores every camera and the network as one sequence; TrackEval is never a
dependency of tfclip.) MOTA and switches come from motmetrics, which keeps a person's last match across a frame
where the match lapsed where TrackEval's CLEAR carries it over from the frame before only: the two agree on five of
the six cameras, and on camera 2 of ``crowded`` (the same matches, misses and false positives otherwise) TrackEval
counts two more switches: person 3, unmatched in frame 11, moves from track 107 to 114 in frame 12, where
motmetrics keeps 107, and back in frame 13.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tfclip_cli.footage.hota import HotaFrame, score_hota
from tfclip_cli.footage.metrics import evaluate_tracks

DATA = Path(__file__).parent / "data" / "hota"


def _frame(truth_ids: list[int], track_ids: list[int], iou: list[list[float]] | None = None) -> HotaFrame:
    iou_matrix = np.array(iou if iou is not None else np.zeros((len(truth_ids), len(track_ids))), dtype=np.float64)
    return HotaFrame(truth_ids=np.array(truth_ids, dtype=np.int64), track_ids=np.array(track_ids, dtype=np.int64),
                     iou=iou_matrix.reshape(len(truth_ids), len(track_ids)))


def test_perfect_tracking_scores_one():
    frames = [_frame([1, 2], [7, 8], [[1.0, 0.0], [0.0, 1.0]]) for _ in range(5)]
    scores = score_hota(frames)
    assert (scores.hota, scores.deta, scores.assa) == (1.0, 1.0, 1.0)


def test_an_identity_switch_halfway_with_misses_and_a_false_positive():
    # Person 1 in frames 0-9, every found box exact (IoU 1, so every threshold agrees): track 1 in frames 0-4,
    # track 2 in 5-7, nothing in 8-9 (2 misses), and track 3 fires far from anyone in frame 0 (1 false positive).
    frames = [_frame([1], [1, 3], [[1.0, 0.0]])]
    frames += [_frame([1], [1], [[1.0]]) for _ in range(1, 5)]
    frames += [_frame([1], [2], [[1.0]]) for _ in range(5, 8)]
    frames += [_frame([1], []) for _ in range(8, 10)]
    scores = score_hota(frames)
    deta = 8 / (8 + 2 + 1)  # TP / (TP + FN + FP)
    # (1, 1): 5 TPs, 10 + 5 − 5 boxes → 0.5; (1, 2): 3 TPs, 10 + 3 − 3 → 0.3; averaged over the 8 TPs
    assa = (5 * 0.5 + 3 * 0.3) / 8
    assert scores.deta == pytest.approx(deta)
    assert scores.assa == pytest.approx(assa)
    assert scores.hota == pytest.approx(np.sqrt(deta * assa))


def test_a_box_at_iou_one_half_counts_for_ten_of_the_nineteen_thresholds():
    # thresholds 0.05 ... 0.50 see a perfect match (HOTA 1), 0.55 ... 0.95 a miss and a false positive (HOTA 0)
    scores = score_hota([_frame([1], [1], [[0.5]])])
    assert (scores.hota, scores.deta, scores.assa) == pytest.approx((10 / 19, 10 / 19, 10 / 19))


def test_hota_is_the_mean_over_thresholds_not_the_root_of_the_mean_factors():
    # frame 0: IoU 1 for every threshold; frame 1: IoU 0.5, a match for half the thresholds only
    scores = score_hota([_frame([1], [1], [[1.0]]), _frame([1], [1], [[0.5]])])
    high, low = 9, 10  # thresholds above 0.5 (one TP, one FN, one FP of 2 boxes each), then up to 0.5 (2 TPs)
    deta_high, assa_high = 1 / 3, 1 / (2 + 2 - 1)
    assert scores.deta == pytest.approx((low * 1 + high * deta_high) / 19)
    assert scores.assa == pytest.approx((low * 1 + high * assa_high) / 19)
    assert scores.hota == pytest.approx((low * 1 + high * np.sqrt(deta_high * assa_high)) / 19)


def test_the_match_follows_identities_not_only_overlap():
    # Person 1 and track 1 overlap at IoU 0.9 in frames 0-3; in frame 4 track 2 overlaps person 1 a little more
    # (0.85) than track 1 does (0.8). The alignment score pairs 1 with 1, their long shared history (A = 0.81
    # against 0.09), where IoU alone would pick track 2.
    frames = [_frame([1], [1], [[0.9]]) for _ in range(4)] + [_frame([1], [1, 2], [[0.8, 0.85]])]
    scores = score_hota(frames)
    # thresholds 0.05-0.80 (16): 5 TPs of (1, 1), track 2 a false positive: DetA 5/6, AssA 1;
    # 0.85 and 0.90 (2): frame 4's pair falls short: 4 TPs, 1 FN, 2 FPs: DetA 4/7, AssA 4/(5 + 5 − 4); 0.95: none
    deta = (16 * 5 / 6 + 2 * 4 / 7) / 19
    assa = (16 * 1 + 2 * 4 / 6) / 19
    hota = (16 * np.sqrt(5 / 6) + 2 * np.sqrt(4 / 7 * 4 / 6)) / 19
    assert (scores.hota, scores.deta, scores.assa) == pytest.approx((hota, deta, assa))


@pytest.mark.parametrize("frames", [
    [_frame([1], []), _frame([1, 2], [])],  # a tracker that found no one
    [_frame([], [4]), _frame([], [4, 5])],  # tracks but no ground truth
    [],  # nothing at all
], ids=["empty result", "no ground truth", "nothing"])
def test_nothing_to_match_scores_zero(frames):
    scores = score_hota(frames)
    assert (scores.hota, scores.deta, scores.assa) == (0.0, 0.0, 0.0)


TRACKEVAL = {  # case: camera (or the network as one sequence): what TrackEval printed (see the module docstring)
    "steady": {
        1: {"hota": 0.842712517791155, "deta": 0.820656746193204, "assa": 0.8658283225421821, "idf1": 0.944,
            "mota": 0.8888888888888888, "id_switches": 0},
        2: {"hota": 0.775411767674253, "deta": 0.7804809867784809, "assa": 0.7707469178759186,
            "idf1": 0.8909090909090909, "mota": 0.8363636363636363, "id_switches": 1},
        "network": {"hota": 0.7184460011623574, "deta": 0.8014707357665887, "assa": 0.6442039444293595,
                    "idf1": 0.7829787234042553},
    },
    "crowded": {
        1: {"hota": 0.5141575820992313, "deta": 0.484219293066787, "assa": 0.5496111408895034,
            "idf1": 0.7111111111111111, "mota": 0.6122448979591837, "id_switches": 1},
        2: {"hota": 0.5043290512275371, "deta": 0.5284640597741551, "assa": 0.48218774942148906,
            "idf1": 0.7397260273972602, "mota": 0.6410256410256411, "id_switches": 4},
        "network": {"hota": 0.39206181930059736, "deta": 0.5111191556777479, "assa": 0.3017455481883804,
                    "idf1": 0.5338983050847458},
    },
    "fragmented": {
        1: {"hota": 0.30561391224189566, "deta": 0.3994802052628464, "assa": 0.2373664679195911,
            "idf1": 0.3939393939393939, "mota": 0.1044776119402985, "id_switches": 6},
        2: {"hota": 0.3179412120303751, "deta": 0.3693432688356409, "assa": 0.27604440992862433,
            "idf1": 0.3924050632911392, "mota": 0.1728395061728395, "id_switches": 5},
        "network": {"hota": 0.240109012849835, "deta": 0.38275426322252465, "assa": 0.15313659390285023,
                    "idf1": 0.2689655172413793},
    },
}
# see the module docstring: the same 17 misses and 7 false positives of 78 boxes, 2 switches instead of 4
MOTMETRICS_DIFFERS = {("crowded", 2): {"mota": 1 - (17 + 7 + 2) / 78, "id_switches": 2}}


@pytest.mark.parametrize("case", sorted(TRACKEVAL))
def test_scores_equal_trackevals_on_small_camera_networks(case):
    evaluation = evaluate_tracks(DATA / f"{case}.result.txt", DATA / f"{case}.gt.txt")
    expected = TRACKEVAL[case]
    assert sorted(evaluation.cameras) == [1, 2]
    for camid, scores in evaluation.cameras.items():
        wanted = {**expected[camid], **MOTMETRICS_DIFFERS.get((case, camid), {})}
        for name in ("hota", "deta", "assa", "idf1", "mota"):
            assert getattr(scores, name) == pytest.approx(wanted[name], abs=1e-12), (camid, name)
        assert scores.id_switches == wanted["id_switches"]
    for name in ("hota", "deta", "assa", "idf1"):
        assert getattr(evaluation.network, name) == pytest.approx(expected["network"][name], abs=1e-12), name
