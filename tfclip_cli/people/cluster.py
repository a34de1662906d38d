"""Group tracklets into people: constrained agglomerative clustering refined by a Hungarian pass per camera, and
incremental assignment onto known people.

Scores are cosine similarities of the L2-normalised embeddings (the gallery's score). A pair that is a plausible
move in the camera graph (``constraints.plausible_moves``) scores ``move_bonus`` more: a walker who leaves one view
and enters a linked one within the link's transit window is likely the same person.

:func:`cluster` is average-linkage agglomerative clustering under cannot-link constraints: start with one person per
tracklet, repeatedly merge the two people with the highest mean pair score, never two people holding a pair the
rules forbid (``constraints.cannot_link``), and stop when the best mean score is below ``threshold``. Average
linkage (the mean over every pair, updated by the Lance-Williams rule) is what the AI City Challenge MTMC
baselines use; single linkage chains look-alikes through one close pair, complete linkage splits a person whose
views differ (front and back). Merging is O(N²) per step, O(N³) in all: fine for the thousands of tracklets of a
site, not for millions.

:func:`assign` links tracklets that arrive later onto people already known without re-clustering: each new
tracklet, in time order, joins the person with the highest mean score to it that no rule forbids, if that score
reaches ``threshold``, else starts a new person.

:func:`refine` then re-assigns each camera's tracklets by one Hungarian assignment against the people seen by the
other cameras (the refinement of the AI City MTMC baselines): agglomerative merging is greedy, and a tracklet
whose first merges went wrong, or that a forbidden pair kept apart, is placed again against whole people. The
tracklets of one visit (less than ``timeline.VISIT_GAP_S`` apart: fragments of one walk) move as one group; two
visits of one person to one camera (a return) are split by the one-to-one assignment, which is the pass's prior:
one visit per camera per person. Measured with ``benchmarks/bench_link.py`` (camera graph, threshold 0.4): on the
tuning networks (seeds 500-503) the pass raised multi-camera IDF1 from 59.5 % to 61.0 %, so it is part of
linking; on held-out networks 0-3, 56.5 % → 59.6 %. It gains where clustering merged two walkers who passed one
camera at different times; its cost is the same split for a person who comes back to a camera, unless the other
cameras' people leave that visit nowhere better to go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from tfclip_cli.people.constraints import TrackletTimes
from tfclip_cli.people.timeline import VISIT_GAP_S

DEFAULT_THRESHOLD = 0.4
"""Mean cosine similarity two people need to be merged, without ``--threshold`` or labelled tracklets: the value
(of 0.3 ... 0.8) that gave the best multi-camera IDF1 with the camera graph on the tuning networks of
``benchmarks/bench_link.py`` (seeds 500-503, never used for its reported scores)."""
MOVE_BONUS = 0.1
"""Added to the score of a pair that is a plausible move in the camera graph."""
IMPOSSIBLE = 1e6
"""The cost of a forbidden assignment in the Hungarian pass (far above any score)."""


@dataclass(frozen=True)
class ClusterOptions:
    """How tracklets are grouped into people."""

    threshold: float = DEFAULT_THRESHOLD
    move_bonus: float = MOVE_BONUS


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """``vectors`` ``[N, D]`` as float64 rows of unit length (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), np.finfo(np.float64).tiny)


def pair_scores(vectors: np.ndarray, moves: np.ndarray | None, move_bonus: float) -> np.ndarray:
    """``[N, N]`` cosine similarities, plus ``move_bonus`` where ``moves`` is true."""
    unit = unit_rows(vectors)
    scores = unit @ unit.T
    if moves is not None:
        scores = scores + move_bonus * moves
    return scores


def cluster(scores: np.ndarray, cannot: np.ndarray, threshold: float) -> np.ndarray:
    """Person labels ``[N]`` (0, 1, ... by first tracklet) from pair ``scores`` ``[N, N]`` and the ``cannot``
    ``[N, N]`` constraints (module docstring)."""
    count = len(scores)
    linkage = np.array(scores, dtype=np.float64, copy=True)  # mean pair score between people
    blocked = np.array(cannot, dtype=bool, copy=True)
    sizes = np.ones(count)
    alive = np.ones(count, dtype=bool)
    owner = np.arange(count)
    while True:
        candidates = np.where(blocked | ~alive[:, None] | ~alive[None, :], -np.inf, linkage)
        np.fill_diagonal(candidates, -np.inf)
        best = int(np.argmax(candidates))
        i, j = divmod(best, count)
        if not candidates[i, j] >= threshold:
            break
        merged = (sizes[i] * linkage[i] + sizes[j] * linkage[j]) / (sizes[i] + sizes[j])  # Lance-Williams
        linkage[i, :], linkage[:, i] = merged, merged
        blocked[i, :] |= blocked[j, :]
        blocked[:, i] = blocked[i, :]
        sizes[i] += sizes[j]
        alive[j] = False
        owner[owner == j] = i
    return _relabel(owner)


def _visits(tracklets: np.ndarray, times: TrackletTimes) -> list[np.ndarray]:
    """``tracklets`` (one person in one camera) cut into visits: runs less than ``VISIT_GAP_S`` apart."""
    order = tracklets[np.argsort(np.nan_to_num(times.start_time[tracklets], nan=np.inf), kind="stable")]
    starts, ends = times.start_time[order], times.end_time[order]
    with np.errstate(invalid="ignore"):
        breaks = np.flatnonzero(~(starts[1:] - np.maximum.accumulate(ends)[:-1] < VISIT_GAP_S)) + 1
    return np.split(order, breaks)


def refine(scores: np.ndarray, cannot: np.ndarray, labels: np.ndarray, *, times: TrackletTimes, threshold: float
           ) -> np.ndarray:
    """One Hungarian pass over the cameras: in each camera, every visit of a person there (a tracklet and its
    fragments) is re-assigned, one visit to one person, to the people the other cameras see (cost: minus the mean
    pair score with the person's tracklets elsewhere; a forbidden pair makes it impossible) or to a person of its
    own (cost: minus ``threshold``). Returns labels 0, 1, ... as :func:`cluster`."""
    labels = np.array(labels, dtype=np.int64, copy=True)
    for camid in np.unique(times.camids):
        mine, others = np.flatnonzero(times.camids == camid), np.flatnonzero(times.camids != camid)
        groups = [visit for label in np.unique(labels[mine]) for visit in _visits(mine[labels[mine] == label], times)]
        people = [others[labels[others] == person] for person in np.unique(labels[others])]
        cost = np.full((len(groups), len(people) + len(groups)), IMPOSSIBLE)
        for row, group in enumerate(groups):
            for column, members in enumerate(people):
                if not cannot[np.ix_(group, members)].any():
                    cost[row, column] = -scores[np.ix_(group, members)].mean()
            cost[row, len(people) + row] = -threshold
        fresh = labels.max(initial=-1) + 1
        for row, column in zip(*linear_sum_assignment(cost)):
            labels[groups[row]] = labels[people[column][0]] if column < len(people) else fresh + row
    return _relabel(labels)


def cluster_people(scores: np.ndarray, cannot: np.ndarray, *, times: TrackletTimes, threshold: float) -> np.ndarray:
    """Person labels ``[N]``: :func:`cluster`, then :func:`refine` (module docstring)."""
    return refine(scores, cannot, cluster(scores, cannot, threshold), times=times, threshold=threshold)


def _relabel(owner: np.ndarray) -> np.ndarray:
    """Labels 0, 1, ... in order of each group's first member."""
    _, first, inverse = np.unique(owner, return_index=True, return_inverse=True)
    rank = np.empty(len(first), dtype=np.int64)
    rank[np.argsort(first)] = np.arange(len(first))
    return rank[inverse]


def assign(scores: np.ndarray, cannot: np.ndarray, known: np.ndarray, *, order: np.ndarray, threshold: float
           ) -> np.ndarray:
    """Labels ``[N]`` where ``known`` (``[N]``, -1 for a new tracklet) keeps its label and each new tracklet, taken
    in ``order`` (indices of the new ones, e.g. by start time), joins its best allowed person or starts one."""
    labels = np.array(known, dtype=np.int64, copy=True)
    next_label = int(labels.max(initial=-1)) + 1
    for new in order:
        people = np.unique(labels[labels >= 0])
        best, best_score = -1, threshold
        for person in people:
            members = labels == person
            if cannot[new, members].any():
                continue
            score = float(scores[new, members].mean())
            if score >= best_score:
                best, best_score = int(person), score
        if best < 0:
            best, next_label = next_label, next_label + 1
        labels[new] = best
    return labels
