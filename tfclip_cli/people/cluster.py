"""Group tracklets into people: constrained agglomerative clustering, and incremental assignment onto known people.

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
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_THRESHOLD = 0.5
"""Mean cosine similarity two people need to be merged, without ``--threshold`` or labelled tracklets: the value
that gave the best multi-camera IDF1 on the synthetic training networks of ``benchmarks/bench_link.py`` (seeds not
used for its reported scores)."""
MOVE_BONUS = 0.1
"""Added to the score of a pair that is a plausible move in the camera graph."""


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
