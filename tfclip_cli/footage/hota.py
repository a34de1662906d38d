"""HOTA (Luiten et al., IJCV 2021): detection and association accuracy of tracks, averaged over IoU thresholds.

What is computed is what the HOTA paper's reference implementation computes (JonathonLuiten/TrackEval,
trackeval/metrics/hota.py; written anew here, checked against its numbers in ``tests/test_footage_hota.py``):

1. Every ground-truth identity ``g`` and track identity ``t`` get a global alignment score
   ``A(g, t) = P / (n_g + n_t − P)``: ``n_g``, ``n_t`` count their boxes, and ``P`` sums, over the frames where both
   appear, how exclusively their boxes overlap: ``IoU / (row sum + column sum − IoU)`` of that frame's IoU matrix.
2. In each frame the Hungarian algorithm pairs boxes maximising ``A(g, t) · IoU``.
3. For each threshold α in 0.05, 0.10, …, 0.95, a pair whose IoU reaches α is a true positive (TP); every other
   ground-truth box is a miss (FN), every other track box a false positive (FP). Then
   ``DetA_α = TP / (TP + FN + FP)``, and ``AssA_α`` averages over the TPs the association IoU of their identity pair,
   ``c / (n_g + n_t − c)`` with ``c`` the pair's TPs; ``HOTA_α = √(DetA_α · AssA_α)``.
4. HOTA, DetA and AssA are the means over α (so HOTA is not √(DetA · AssA) of the means).

With no track box or no ground-truth box there is no TP and every score is 0, as in TrackEval.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

ALPHAS = np.arange(0.05, 0.99, 0.05)  # the 19 IoU thresholds 0.05 ... 0.95, as the reference implementation
EPS = np.finfo(np.float64).eps  # the reference's tolerance: an IoU within EPS below α still reaches it


@dataclass(frozen=True)
class HotaFrame:
    """One frame's boxes as identities and their overlaps; ids are unique within the frame."""

    truth_ids: np.ndarray  # [G] int, the ground-truth identities in the frame
    track_ids: np.ndarray  # [T] int, the track identities in the frame
    iou: np.ndarray  # [G, T] float64, IoU of every ground-truth box with every track box


@dataclass(frozen=True)
class HotaScores:
    """HOTA and its two factors, each the mean over the IoU thresholds ALPHAS, as fractions in [0, 1]."""

    hota: float
    deta: float
    assa: float


@dataclass(frozen=True)
class _Dense:
    """Every frame's identities as indices 0..n−1 into the sorted distinct ids, and each identity's box count."""

    truth: list[np.ndarray]
    tracks: list[np.ndarray]
    truth_counts: np.ndarray  # [n_truth]
    track_counts: np.ndarray  # [n_tracks]


def _dense(frames: Sequence[HotaFrame]) -> _Dense:
    empty = np.zeros(0, dtype=np.int64)
    truth_ids = np.unique(np.concatenate([empty] + [f.truth_ids for f in frames]))
    track_ids = np.unique(np.concatenate([empty] + [f.track_ids for f in frames]))
    truth = [np.searchsorted(truth_ids, f.truth_ids) for f in frames]
    tracks = [np.searchsorted(track_ids, f.track_ids) for f in frames]
    return _Dense(truth=truth, tracks=tracks,
                  truth_counts=np.bincount(np.concatenate([empty] + truth), minlength=len(truth_ids)),
                  track_counts=np.bincount(np.concatenate([empty] + tracks), minlength=len(track_ids)))


def _alignment(frames: Sequence[HotaFrame], dense: _Dense) -> np.ndarray:
    """The global alignment score ``A(g, t)`` of every identity pair, ``[n_truth, n_tracks]`` (step 1)."""
    overlap = np.zeros((len(dense.truth_counts), len(dense.track_counts)))
    for frame, truth, tracks in zip(frames, dense.truth, dense.tracks):
        iou = frame.iou
        denominator = iou.sum(axis=0)[None, :] + iou.sum(axis=1)[:, None] - iou
        share = np.divide(iou, denominator, out=np.zeros_like(iou), where=denominator > EPS)
        overlap[truth[:, None], tracks[None, :]] += share  # ids are unique in a frame: no index repeats
    return overlap / (dense.truth_counts[:, None] + dense.track_counts[None, :] - overlap)


def _matches(frames: Sequence[HotaFrame], dense: _Dense, alignment: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every frame's Hungarian pairs (step 2): their ``[M, 2]`` (truth, track) indices and their IoUs ``[M]``."""
    pairs, ious = [np.zeros((0, 2), dtype=np.int64)], [np.zeros(0)]
    for frame, truth, tracks in zip(frames, dense.truth, dense.tracks):
        if len(truth) == 0 or len(tracks) == 0:
            continue
        rows, columns = linear_sum_assignment(-(alignment[truth[:, None], tracks[None, :]] * frame.iou))
        pairs.append(np.stack([truth[rows], tracks[columns]], axis=1))
        ious.append(frame.iou[rows, columns])
    return np.concatenate(pairs), np.concatenate(ious)


def score_hota(frames: Sequence[HotaFrame]) -> HotaScores:
    """HOTA, DetA and AssA of the tracks in ``frames`` against their ground truth (see the module docstring).

    Args:
        frames: every frame of one sequence that holds a box; track ids are global to the sequence, so one id in
            two frames is one identity.
    """
    dense = _dense(frames)
    pairs, ious = _matches(frames, dense, _alignment(frames, dense))
    num_truth, num_tracks = int(dense.truth_counts.sum()), int(dense.track_counts.sum())
    hota, deta, assa = (np.zeros(len(ALPHAS)) for _ in range(3))
    for a, alpha in enumerate(ALPHAS):
        kept = pairs[ious >= alpha - EPS]
        true_positives = len(kept)
        identity_pairs, counts = np.unique(kept, axis=0, return_counts=True)
        union = dense.truth_counts[identity_pairs[:, 0]] + dense.track_counts[identity_pairs[:, 1]] - counts
        assa[a] = np.sum(counts * counts / union) / max(1, true_positives)
        deta[a] = true_positives / max(1, num_truth + num_tracks - true_positives)
        hota[a] = np.sqrt(deta[a] * assa[a])
    return HotaScores(hota=float(hota.mean()), deta=float(deta.mean()), assa=float(assa.mean()))
