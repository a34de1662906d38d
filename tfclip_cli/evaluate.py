"""Benchmark metrics of an embeddings table: mAP, CMC rank-1/5/10/20 and mINP, optionally after re-ranking.

The protocol is the standard video-ReID one, as the reference evaluates MARS (reference: utils/metrics.py
``eval_func``; docs/fidelity.md#evaluation-gallery-rule; torchreid ``eval_market1501``):

- similarity is the cosine of L2-normalised embeddings (the reference ranks by Euclidean distance between
  L2-normalised features, which gives the same order);
- what a query is ranked against follows a gallery rule: ``gallery_only`` ranks it against the gallery split
  (torchreid, CLIP-ReID), ``includes_query`` against every test tracklet, queries first, then the gallery split
  (the official MARS evaluation behind TF-CLIP's numbers);
- for each query, rows with its pid *and* its camera are removed (this removes the query itself under
  ``includes_query``); junk rows (pid -1) are removed for every query, as the official MARS evaluation does;
  distractors (pid 0) stay as negatives;
- a query left with no true match (same pid, other camera) is skipped and counted;
- CMC rank-k is the share of queries whose first true match is within the top k; AP is the mean over a query's
  true matches of the precision at each of them (torchreid ``eval_market1501``); mINP is the mean over queries of
  ``num_true_matches / rank_of_the_last_true_match`` (Ye et al., "Deep Learning for Person Re-identification:
  A Survey and Outlook", TPAMI 2021, the AGW baseline).

Tie order: equal similarities are ranked by their row in the ranked set, earlier rows first, i.e. a stable sort by
descending similarity. torchreid leaves ties to numpy's unstable argsort; we fix one order so results never depend
on the sort algorithm.

The similarities are computed in float32 and chunked over queries, so memory stays ``chunk_size x num_gallery``.
Instead of sorting every row (the slow part of a naive evaluation), each query's true matches are placed by
counting the negatives above them: one ``searchsorted`` of the row against the true matches' similarities and a
histogram. Rows where a negative ties a true match are recounted with exact (similarity, row) keys.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, NamedTuple, Union

import numpy as np
import torch

from tfclip_cli.errors import GalleryError
from tfclip_cli.tables import GALLERY_RULES, UNKNOWN_PID, Embeddings, GalleryRule, read_embeddings, require_known_identities

logger = logging.getLogger(__name__)

ArrayLike = Union[np.ndarray, torch.Tensor]
DEFAULT_CHUNK_SIZE = 256
JUNK_PID = -1
CMC_RANKS = (1, 5, 10, 20)


@dataclass(frozen=True)
class RerankParams:
    """k-reciprocal re-ranking settings (Zhong et al., CVPR 2017), defaulting to the official TF-CLIP code's
    (utils/metrics.py R1_mAP_eval: k1 50, k2 15, lambda 0.3; docs/fidelity.md#evaluation-gallery-rule), not Zhong's 20
    and 6."""

    k1: int = 50  # size of the neighbourhood whose reciprocal members form a tracklet's k-reciprocal set
    k2: int = 15  # neighbours averaged in the local query expansion (1 = none)
    lambda_value: float = 0.3  # weight of the original distance against the Jaccard distance

    def __post_init__(self) -> None:
        if self.k1 < 1 or self.k2 < 1 or not 0 <= self.lambda_value <= 1:
            raise ValueError(f"re-ranking needs k1 >= 1, k2 >= 1 and 0 <= lambda_value <= 1; got {self}")


@dataclass(frozen=True)
class EvalResult:
    """Retrieval metrics (fractions in 0..1) and what they were computed over.

    ``num_gallery`` counts the rows every query is ranked against (junk rows excluded); the metrics average over
    the ``num_query - num_skipped_queries`` queries that have a true match.
    """

    mAP: float
    rank1: float
    rank5: float
    rank10: float
    rank20: float
    mINP: float
    num_query: int
    num_gallery: int
    num_skipped_queries: int
    gallery_rule: str


class _Rows(NamedTuple):
    """Tracklets on one device: L2-normalised float32 vectors ``[N, D]``, pids ``[N]`` and camids ``[N]``."""

    vectors: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor

    def select(self, which: torch.Tensor | slice) -> "_Rows":
        """The rows picked by a boolean mask or a slice."""
        return _Rows(self.vectors[which], self.pids[which], self.camids[which])

    def followed_by(self, other: "_Rows") -> "_Rows":
        """These rows, then ``other``'s."""
        return _Rows(*(torch.cat([mine, theirs]) for mine, theirs in zip(self, other)))


class _QueryScores(NamedTuple):
    """Per query ``[Q]``: number of true matches, AP, rank of the first true match, INP (0 where none)."""

    num_positives: torch.Tensor
    average_precision: torch.Tensor
    first_rank: torch.Tensor
    inverse_negative_penalty: torch.Tensor


def evaluate_file(
    path: Path, *, gallery_rule: GalleryRule | None = None, rerank: RerankParams | None = None
) -> EvalResult:
    """Read an embeddings table and :func:`evaluate` it; errors name the file.

    Raises:
        GalleryError: when the file is unreadable, or has no query or no gallery rows, or no query can match.
    """
    embeddings = read_embeddings(path)
    try:
        return evaluate(embeddings, gallery_rule=gallery_rule, rerank=rerank)
    except GalleryError as error:
        raise GalleryError(f"{path}: {error.message}", hint=error.hint) from error


def evaluate(
    embeddings: Embeddings, *, gallery_rule: GalleryRule | None = None, rerank: RerankParams | None = None
) -> EvalResult:
    """Rank the ``query`` rows of an embeddings table and measure the retrieval.

    Args:
        embeddings: rows with ``split`` ``query`` or ``gallery`` (other rows are ignored).
        gallery_rule: what queries are ranked against; None takes ``embeddings.info["gallery_rule"]``, else
            ``gallery_only`` (a table written by another tool records no rule).
        rerank: apply k-reciprocal re-ranking with these settings.

    Raises:
        GalleryError: no query or no gallery rows, an unknown stored rule, non-finite embeddings, or no query
            with a true match.
    """
    rule = gallery_rule or embeddings.info.get("gallery_rule") or "gallery_only"
    if rule not in GALLERY_RULES:
        raise GalleryError(f"unknown gallery rule {rule!r}; expected one of {', '.join(GALLERY_RULES)}")
    split = embeddings.rows["split"].to_numpy()
    query, gallery = split == "query", split == "gallery"
    pids = embeddings.rows["pid"].to_numpy(dtype=np.int64)
    if (pids == UNKNOWN_PID).all():  # a table cut from footage; otherwise pid -1 gallery rows are MARS's junk
        require_known_identities(pids, source="the embeddings table", use="evaluation")
    require_known_identities(pids[query], source="the embeddings table's queries", use="evaluation")
    for name, mask in (("query", query), ("gallery", gallery)):
        if not mask.any():
            raise GalleryError(
                f"no {name} rows (split == {name!r}) among {len(split)} rows; expected query and gallery rows",
                hint="extract with --split query,gallery from a manifest that has both",
            )
    camids = embeddings.rows["camid"].to_numpy(dtype=np.int64)
    return compute_metrics(
        embeddings.vectors[query],
        embeddings.vectors[gallery],
        query_pids=pids[query],
        query_camids=camids[query],
        gallery_pids=pids[gallery],
        gallery_camids=camids[gallery],
        gallery_rule=rule,
        rerank=rerank,
    )


def compute_metrics(
    query_vectors: ArrayLike,
    gallery_vectors: ArrayLike,
    *,
    query_pids: ArrayLike,
    query_camids: ArrayLike,
    gallery_pids: ArrayLike,
    gallery_camids: ArrayLike,
    gallery_rule: GalleryRule = "gallery_only",
    rerank: RerankParams | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> EvalResult:
    """Metrics of query embeddings ``[Q, D]`` against gallery embeddings ``[G, D]`` (numpy arrays or tensors).

    Args:
        query_vectors, gallery_vectors: embeddings (any float dtype; L2-normalised here, compared in float32).
            The gallery is the gallery split alone: ``includes_query`` prepends the queries itself.
        query_pids, query_camids, gallery_pids, gallery_camids: integer labels ``[Q]`` and ``[G]``.
        gallery_rule: what queries are ranked against (see the module docstring).
        rerank: apply k-reciprocal re-ranking with these settings (memory ``O((Q + G)^2)``).
        chunk_size: queries ranked at a time; bounds memory to ``chunk_size x num_ranked`` similarities.

    Work runs on the device of ``query_vectors``.

    Raises:
        GalleryError: non-finite embeddings, no gallery row left after removing junk, or no query with a true match.
    """
    query = _rows(query_vectors, query_pids, query_camids)
    gallery = _rows(gallery_vectors, gallery_pids, gallery_camids, device=query.vectors.device)
    is_junk = gallery.pids == JUNK_PID
    if bool(is_junk.any()):
        gallery = gallery.select(~is_junk)
    if len(gallery.pids) == 0:
        raise GalleryError(f"no gallery rows left after removing junk rows (pid {JUNK_PID}); expected some")
    ranked = query.followed_by(gallery) if gallery_rule == "includes_query" else gallery
    logger.debug("ranking %d queries against %d tracklets (%s)", len(query.pids), len(ranked.pids), gallery_rule)
    if rerank is None:
        chunks = _similarity_chunks(query.vectors, ranked.vectors, chunk_size)
    else:
        chunks = _reranked_chunks(query, gallery, rerank, gallery_rule=gallery_rule, chunk_size=chunk_size)
    by_pid = torch.argsort(ranked.pids, stable=True)
    per_chunk = []
    for start, scores in zip(range(0, len(query.pids), chunk_size), chunks):
        per_chunk.append(_score_queries(scores, query.select(slice(start, start + chunk_size)), ranked, by_pid))
    per_query = _QueryScores(*(torch.cat(field) for field in zip(*per_chunk)))
    return _summarize(per_query, num_gallery=len(ranked.pids), gallery_rule=gallery_rule)


def _rows(vectors: ArrayLike, pids: ArrayLike, camids: ArrayLike, *, device: torch.device | None = None) -> _Rows:
    """Tensors on ``device`` (default: where ``vectors`` are), vectors L2-normalised in float32."""
    vectors = torch.as_tensor(vectors).to(device=device, dtype=torch.float32)
    norms = torch.linalg.vector_norm(vectors, dim=1, keepdim=True)  # non-finite wherever a value is
    if not bool(torch.isfinite(norms).all()):
        raise GalleryError("embeddings contain NaN or infinite values; expected finite vectors")
    vectors = vectors / norms.clamp(min=1e-12)
    pids = torch.as_tensor(pids).to(device=vectors.device, dtype=torch.int64)
    camids = torch.as_tensor(camids).to(device=vectors.device, dtype=torch.int64)
    return _Rows(vectors, pids, camids)


def _similarity_chunks(query: torch.Tensor, ranked: torch.Tensor, chunk_size: int) -> Iterator[torch.Tensor]:
    """Cosine similarities ``[C, G]`` of ``chunk_size`` queries at a time (fresh tensors, free to overwrite)."""
    for start in range(0, len(query), chunk_size):
        yield query[start : start + chunk_size] @ ranked.T


def _reranked_chunks(
    query: _Rows, gallery: _Rows, params: RerankParams, *, gallery_rule: GalleryRule, chunk_size: int
) -> Iterator[torch.Tensor]:
    """Negated re-ranked distances ``[C, G]`` of ``chunk_size`` queries at a time (fresh tensors)."""
    distances = rerank_distances(query.vectors, gallery.vectors, params)  # [Q, Q + G], queries first
    if gallery_rule == "gallery_only":
        distances = distances[:, len(query.pids) :]
    for start in range(0, len(distances), chunk_size):
        yield -distances[start : start + chunk_size]


def _score_queries(scores: torch.Tensor, query: _Rows, ranked: _Rows, by_pid: torch.Tensor) -> _QueryScores:
    """Per-query metrics of a chunk of queries from their similarities ``[C, G]`` (overwritten) to the ranked rows.

    ``by_pid`` orders the ranked rows by pid (a stable argsort).
    """
    columns, is_same_pid = _same_pid_columns(query.pids, ranked.pids[by_pid], by_pid)  # [C, R]
    is_positive = is_same_pid & (ranked.camids[columns] != query.camids[:, None])
    thresholds = scores.gather(1, columns).masked_fill(~is_positive, torch.inf)
    rows = torch.arange(len(columns), device=scores.device)[:, None].expand_as(columns)
    scores[rows[is_same_pid], columns[is_same_pid]] = -torch.inf  # what is left above a true match is a negative
    negatives_above = _negatives_above(scores, thresholds, columns, is_positive)
    return _scores_from_ranks(negatives_above, is_positive)


def _same_pid_columns(
    pids: torch.Tensor, sorted_pids: torch.Tensor, order: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """For each query, the ranked rows sharing its pid: column indices ``[C, R]`` (padded, R >= 1) and which are real.

    ``sorted_pids`` are the ranked rows' pids in ascending ``order`` (row indices).
    """
    first = torch.searchsorted(sorted_pids, pids)
    count = torch.searchsorted(sorted_pids, pids, right=True) - first
    offsets = torch.arange(max(int(count.max()), 1), device=pids.device)
    is_real = offsets < count[:, None]
    columns = order[(first[:, None] + offsets).clamp(max=len(order) - 1)]
    return columns, is_real


def _negatives_above(
    negatives: torch.Tensor, thresholds: torch.Tensor, columns: torch.Tensor, is_positive: torch.Tensor
) -> torch.Tensor:
    """How many negatives rank above each true match ``[C, R]``, ties going to the earlier row.

    ``negatives`` ``[C, G]`` holds -inf outside the negatives; ``thresholds`` ``[C, R]`` the true matches' scores
    at ranked rows ``columns``. Only rows where a negative equals a true match's score pay for exact keys.
    """
    below = torch.nextafter(thresholds, torch.full_like(thresholds, -torch.inf))
    counts = _count_above(negatives, torch.cat([thresholds, below], dim=1))
    strictly_above, at_or_above = counts.split(thresholds.shape[1], dim=1)
    is_tied = ((at_or_above != strictly_above) & is_positive).any(dim=1)
    if bool(is_tied.any()):
        every_column = torch.arange(negatives.shape[1], device=negatives.device)
        keys = _stable_order_keys(negatives[is_tied], every_column, num_columns=negatives.shape[1])
        threshold_keys = _stable_order_keys(thresholds[is_tied], columns[is_tied], num_columns=negatives.shape[1])
        strictly_above[is_tied] = _count_above(keys, threshold_keys)
    return strictly_above


def _count_above(values: torch.Tensor, boundaries: torch.Tensor) -> torch.Tensor:
    """For each row, how many ``values`` ``[C, N]`` exceed each of its ``boundaries`` ``[C, B]`` (any order)."""
    sorted_boundaries, order = boundaries.sort(dim=1)
    # bucket = how many boundaries lie strictly below the value, so value > sorted_boundaries[j] <=> bucket > j
    buckets = torch.searchsorted(sorted_boundaries, values.contiguous())
    histogram = torch.zeros(len(values), boundaries.shape[1] + 1, dtype=torch.int64, device=values.device)
    histogram.scatter_add_(1, buckets, torch.ones((), dtype=torch.int64, device=values.device).expand_as(buckets))
    above_sorted = histogram.flip(1).cumsum(dim=1).flip(1)[:, 1:]
    return torch.empty_like(above_sorted).scatter_(1, order, above_sorted)


def _stable_order_keys(scores: torch.Tensor, columns: torch.Tensor, *, num_columns: int) -> torch.Tensor:
    """int64 keys ordering by score, then by earlier column on equal scores: distinct for distinct (score, column).

    The float32 bits are mapped to integers of the same order (negative floats have their magnitude bits
    flipped); -0.0 is made +0.0 first so that equal scores get equal integers.
    """
    scores = torch.where(scores == 0, 0.0, scores).contiguous()
    bits = scores.view(torch.int32).to(torch.int64)
    ordered = torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)
    return ordered * num_columns + (num_columns - 1 - columns)


def _scores_from_ranks(negatives_above: torch.Tensor, is_positive: torch.Tensor) -> _QueryScores:
    """AP, first rank and INP per query from the negatives above each true match ``[C, R]``.

    The k-th best true match (1-based) has rank ``k + negatives above it``.
    """
    never = torch.iinfo(torch.int64).max
    ahead = negatives_above.masked_fill(~is_positive, never).sort(dim=1).values.to(torch.float64)
    order = torch.arange(1, ahead.shape[1] + 1, device=ahead.device, dtype=torch.float64)
    ranks = ahead + order
    num_positives = is_positive.sum(dim=1)
    precision = torch.where(order <= num_positives[:, None], order / ranks, 0.0)
    average_precision = precision.sum(dim=1) / num_positives.clamp(min=1)
    last_rank = ranks.gather(1, (num_positives - 1).clamp(min=0)[:, None]).squeeze(1)
    return _QueryScores(num_positives, average_precision, ranks[:, 0], num_positives / last_rank)


def _summarize(per_query: _QueryScores, *, num_gallery: int, gallery_rule: GalleryRule) -> EvalResult:
    """Average over the queries with a true match; the others are counted as skipped."""
    is_valid = per_query.num_positives > 0
    num_valid = int(is_valid.sum())
    num_query = len(is_valid)
    if num_valid == 0:
        raise GalleryError(
            f"none of the {num_query} queries has a true match (same pid, another camera) among the "
            f"{num_gallery} rows they are ranked against ({gallery_rule})",
            hint="check the pid and camid columns, or rank against every test tracklet (--gallery-includes-query)",
        )
    if num_valid < num_query:
        logger.info("%d of %d queries have no true match and are skipped", num_query - num_valid, num_query)
    first_rank = per_query.first_rank[is_valid]
    cmc = {f"rank{k}": float((first_rank <= k).double().mean()) for k in CMC_RANKS}
    return EvalResult(
        mAP=float(per_query.average_precision[is_valid].mean()),
        **cmc,
        mINP=float(per_query.inverse_negative_penalty[is_valid].mean()),
        num_query=num_query,
        num_gallery=num_gallery,
        num_skipped_queries=num_query - num_valid,
        gallery_rule=gallery_rule,
    )


def rerank_distances(
    query_vectors: torch.Tensor, gallery_vectors: torch.Tensor, params: RerankParams
) -> torch.Tensor:
    """k-reciprocal re-ranked distances ``[Q, Q + G]`` from each query to every tracklet, queries first.

    Zhong et al., "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017, with the steps of
    their public code (squared Euclidean distances scaled by each row's maximum, k-reciprocal sets expanded by the
    half-size sets of their members, Gaussian weights, local query expansion over ``k2`` neighbours, Jaccard
    distance mixed with the original by ``lambda_value``). It runs over the distinct tracklets: the reference
    stacks the queries on a gallery that already holds them, so each query also meets its own copy; we keep one.

    Args:
        query_vectors, gallery_vectors: L2-normalised ``[Q, D]`` and ``[G, D]``.

    Memory and time grow as ``(Q + G)^2``: a few float32 matrices of that size live at once (about 0.5 GB each
    for MARS's 11,310 test tracklets), and every row is sorted once.
    """
    num_query = len(query_vectors)
    features = torch.cat([query_vectors, gallery_vectors])
    distances = (2 - 2 * features @ features.T).clamp_(min=0)  # [N, N] squared Euclidean of unit vectors
    distances /= distances.max(dim=1, keepdim=True).values.clamp_(min=torch.finfo(torch.float32).tiny)
    neighbours = torch.argsort(distances, dim=1, stable=True)[:, : max(params.k1 + 1, params.k2)]
    members = _expanded_reciprocal_sets(neighbours, params.k1)
    weights = torch.where(members, torch.exp(-distances), 0.0)
    weights /= weights.sum(dim=1, keepdim=True).clamp_(min=torch.finfo(torch.float32).tiny)
    if params.k2 > 1:
        weights = _local_query_expansion(weights, neighbours[:, : params.k2])
    jaccard = _jaccard_distances(weights[:num_query], weights)
    return jaccard * (1 - params.lambda_value) + distances[:num_query] * params.lambda_value


def _reciprocal_sets(nearest: torch.Tensor) -> torch.Tensor:
    """Boolean ``[N, N]``: j is among i's ``nearest`` ``[N, K]`` and i among j's."""
    forward = torch.zeros(len(nearest), len(nearest), dtype=torch.bool, device=nearest.device)
    forward.scatter_(1, nearest, True)
    return forward & forward.T


def _expanded_reciprocal_sets(neighbours: torch.Tensor, k1: int) -> torch.Tensor:
    """Each row's k1-reciprocal set plus the round(k1/2)-reciprocal set of every member sharing over 2/3 of it.

    ``neighbours`` ``[N, >= k1 + 1]`` lists each row's nearest rows in order. Returns boolean ``[N, N]``.
    """
    candidates = neighbours[:, : k1 + 1]  # [N, K]
    reciprocal = _reciprocal_sets(candidates)
    half_nearest = neighbours[:, : round(k1 / 2) + 1]  # [N, H]; round() halves to even, like numpy's around
    is_half_member = _reciprocal_sets(half_nearest).gather(1, half_nearest)  # [N, H]
    is_candidate = reciprocal.gather(1, candidates)  # [N, K]
    members = half_nearest[candidates]  # [N, K, H]: the half-size set of each candidate
    is_member = is_half_member[candidates]
    shared = (reciprocal.gather(1, members.flatten(1)).view_as(members) & is_member).sum(dim=2)
    accepted = is_candidate & (shared > 2 / 3 * is_member.sum(dim=2))
    take = accepted[:, :, None] & is_member
    rows = torch.arange(len(neighbours), device=neighbours.device)[:, None, None].expand_as(members)
    expanded = reciprocal.clone()
    expanded[rows[take], members[take]] = True
    return expanded


def _local_query_expansion(weights: torch.Tensor, nearest: torch.Tensor) -> torch.Tensor:
    """Each row of ``weights`` ``[N, N]`` replaced by the mean of its ``nearest`` ``[N, k2]`` rows' weights."""
    # a loop over the k2 columns keeps one extra [N, N] matrix instead of a [N, k2, N] gather
    expanded = torch.zeros_like(weights)
    for column in range(nearest.shape[1]):
        expanded += weights[nearest[:, column]]
    return expanded / nearest.shape[1]


def _jaccard_distances(query_weights: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``1 - sum(min) / sum(max)`` of each query row ``[Q, N]`` against every row of ``weights`` ``[N, N]``.

    Rows sum to 1, so ``sum(max) = 2 - sum(min)``; ``sum(min)`` only needs the columns where the query row is
    non-zero, so each query gathers those columns of ``weights`` (a few hundred at the default k1 and k2).
    """
    by_column = weights.T.contiguous()  # [N, N]: row k holds column k
    width = max(int((query_weights > 0).sum(dim=1).max()), 1)
    values, columns = query_weights.topk(width, dim=1)  # [Q, W]: the non-zeros, padded with zeros
    chunk = max(1, 2**24 // (width * len(weights)))
    distances = torch.empty_like(query_weights)
    for start in range(0, len(query_weights), chunk):
        stop = start + chunk
        shared = torch.minimum(by_column[columns[start:stop]], values[start:stop, :, None]).sum(dim=1)
        distances[start:stop] = 1 - shared / (2 - shared)
    return distances
