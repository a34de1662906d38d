"""The evaluation report (``tfclip evaluate --report``): the CMC curve to rank 50, the scores of same-person and
different-person pairs, mAP per query camera and gallery camera, and a mosaic of the worst queries.

:func:`break_down` ranks every query in full (a plain sort per query, chunked), under the protocol of
:mod:`tfclip_cli.evaluate`: the same gallery rule, junk rows (pid -1) removed, and for each query the rows of its
pid and its camera removed; ties in row order. Its mAP and CMC equal :func:`tfclip_cli.evaluate.evaluate`'s (a test
checks), and it keeps what the summary numbers hide: each query's AP and top hits.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfclip_cli import display
from tfclip_cli.frames import read_key_frames
from tfclip_cli.errors import DataError, GalleryError
from tfclip_cli.evaluate import JUNK_PID, EvalResult, evaluate
from tfclip_cli.report import plots
from tfclip_cli.report.render import inline_svg, jpeg_data_uri, render, write_page
from tfclip_cli.tables import Embeddings, GalleryRule, row_to_tracklet

log = logging.getLogger(__name__)

CMC_MAX_RANK = 50
TOP_K = 10  # hits shown per worst query
WORST = 8  # worst queries shown
MAX_PAIR_SCORES = 200_000  # pair scores kept per kind (a uniform sample) for the histogram
CHUNK = 256  # queries ranked at a time


@dataclass(frozen=True)
class RankedQuery:
    """One query's ranking: its row in the table, its AP, where its first true match came, and its top hits."""

    row: int
    average_precision: float
    first_match: int  # 1-based rank
    top_rows: tuple[int, ...]  # rows of the table, best first
    top_scores: tuple[float, ...]
    top_matches: tuple[bool, ...]


@dataclass(frozen=True)
class EvalBreakdown:
    """What the evaluation report draws."""

    mean_ap: float
    cmc: np.ndarray  # [R] share of queries with a true match within the top r, r = 1 .. min(50, ranked rows)
    same_scores: np.ndarray  # same-person (query, ranked row) pair scores, at most MAX_PAIR_SCORES (sampled)
    different_scores: np.ndarray  # different-person pair scores, likewise
    camids: tuple[int, ...]  # the cameras, in order
    camera_map: np.ndarray  # [C, C] mAP of queries of camera i against ranked rows of camera j; NaN: no match
    worst: tuple[RankedQuery, ...]  # lowest AP first
    num_query: int
    num_skipped: int  # queries with no true match


def _ranked_rows(embeddings: Embeddings, rule: GalleryRule) -> tuple[np.ndarray, np.ndarray]:
    """Rows of the queries and of what they are ranked against (junk removed; under ``includes_query`` the
    queries first, then the gallery)."""
    split = embeddings.rows["split"].to_numpy()
    pids = embeddings.rows["pid"].to_numpy(dtype=np.int64)
    queries = np.flatnonzero(split == "query")
    gallery = np.flatnonzero((split == "gallery") & (pids != JUNK_PID))
    ranked = np.concatenate([queries, gallery]) if rule == "includes_query" else gallery
    return queries, ranked


@dataclass
class _Tally:
    """Running sums over the queries of :func:`break_down`."""

    cmc_hits: np.ndarray
    camera_ap: np.ndarray
    camera_count: np.ndarray
    same: list
    different: list
    queries: list


def _average_precision(matches: np.ndarray) -> float:
    """AP of one ranking's true-match flags (the mean of the precision at each true match)."""
    positions = np.flatnonzero(matches)
    return float(np.mean(np.arange(1, len(positions) + 1) / (positions + 1)))


def _rank_query(scores: np.ndarray, same_pid: np.ndarray, same_cam: np.ndarray, cams: np.ndarray, *, row: int,
                ranked: np.ndarray, camera_of: dict[int, int], query_camera: int, tally: _Tally) -> None:
    """Sort one query's valid rows by score (ties: earlier rows first) and add what it shows to ``tally``."""
    valid = ~(same_pid & same_cam)
    order = np.flatnonzero(valid)[np.argsort(-scores[valid], kind="stable")]
    matches = same_pid[order]
    tally.same.append(scores[valid & same_pid])
    tally.different.append(scores[valid & ~same_pid])
    if not matches.any():
        return
    first = int(np.argmax(matches)) + 1
    tally.cmc_hits[first - 1:] += 1
    for camid in np.unique(cams[order][matches]):
        in_camera = cams[order] == camid
        tally.camera_ap[query_camera, camera_of[int(camid)]] += _average_precision(matches[in_camera])
        tally.camera_count[query_camera, camera_of[int(camid)]] += 1
    top = order[:TOP_K]
    tally.queries.append(RankedQuery(
        row=row, average_precision=_average_precision(matches), first_match=first,
        top_rows=tuple(int(r) for r in ranked[top]), top_scores=tuple(float(s) for s in scores[top]),
        top_matches=tuple(bool(m) for m in matches[:TOP_K]),
    ))


def _sample(parts: list, limit: int) -> np.ndarray:
    values = np.concatenate(parts) if parts else np.zeros(0, np.float32)
    if len(values) <= limit:
        return values
    return np.random.default_rng(0).choice(values, size=limit, replace=False)


def break_down(embeddings: Embeddings, *, gallery_rule: GalleryRule) -> EvalBreakdown:
    """Rank every query of ``embeddings`` in full and gather what the evaluation report shows.

    Raises:
        GalleryError: when no query has a true match.
    """
    queries, ranked = _ranked_rows(embeddings, gallery_rule)
    vectors = embeddings.vectors.astype(np.float32)
    vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    pids = embeddings.rows["pid"].to_numpy(dtype=np.int64)
    cams = embeddings.rows["camid"].to_numpy(dtype=np.int64)
    camids = tuple(int(c) for c in np.unique(np.concatenate([cams[queries], cams[ranked]])))
    camera_of = {camid: number for number, camid in enumerate(camids)}
    size = len(camids)
    tally = _Tally(np.zeros(min(CMC_MAX_RANK, len(ranked))), np.zeros((size, size)), np.zeros((size, size)), [], [],
                   [])
    for start in range(0, len(queries), CHUNK):
        chunk = queries[start:start + CHUNK]
        scores = vectors[chunk] @ vectors[ranked].T  # [C, N]
        for offset, row in enumerate(chunk):
            _rank_query(scores[offset], pids[ranked] == pids[row], cams[ranked] == cams[row], cams[ranked], row=row,
                        ranked=ranked, camera_of=camera_of, query_camera=camera_of[int(cams[row])], tally=tally)
    if not tally.queries:
        raise GalleryError(f"none of the {len(queries)} queries has a true match: nothing to report")
    with np.errstate(invalid="ignore", divide="ignore"):
        camera_map = tally.camera_ap / tally.camera_count
    found = len(tally.queries)
    worst = sorted(tally.queries, key=lambda q: (q.average_precision, -q.first_match, q.row))[:WORST]
    return EvalBreakdown(
        mean_ap=float(np.mean([q.average_precision for q in tally.queries])), cmc=tally.cmc_hits / found,
        same_scores=_sample(tally.same, MAX_PAIR_SCORES), different_scores=_sample(tally.different, MAX_PAIR_SCORES),
        camids=camids, camera_map=camera_map, worst=tuple(worst), num_query=len(queries),
        num_skipped=len(queries) - found,
    )


def _key_frame(embeddings: Embeddings, row: int) -> str:
    """The middle key frame of a table row as a data URI; "" (logged) when its frames cannot be read."""
    record = embeddings.rows.iloc[row]
    tracklet = row_to_tracklet(record)
    if tracklet is None:
        return ""
    try:
        frames = read_key_frames(tracklet)
    except DataError as error:
        log.warning("no key frame for %s: %s", record["tracklet_id"], error.message)
        return ""
    return jpeg_data_uri(frames[len(frames) // 2])


def _worst_view(embeddings: Embeddings, query: RankedQuery) -> dict:
    record = embeddings.rows.iloc[query.row]
    hits = [{"tracklet_id": display.plain(embeddings.rows.iloc[row]["tracklet_id"]), "score": score,
             "is_match": is_match, "key_frame": _key_frame(embeddings, row)}
            for row, score, is_match in zip(query.top_rows, query.top_scores, query.top_matches)]
    return {"tracklet_id": display.plain(record["tracklet_id"]), "pid": int(record["pid"]),
            "camid": int(record["camid"]), "average_precision": query.average_precision,
            "first_match": query.first_match, "key_frame": _key_frame(embeddings, query.row), "hits": hits}


def _metrics(result: EvalResult) -> list[tuple[str, str]]:
    rows = [(name.replace("rank", "rank-"), f"{100 * getattr(result, name):.2f}%")
            for name in ("mAP", "rank1", "rank5", "rank10", "rank20", "mINP")]
    return rows + [("queries", f"{result.num_query:,} ({result.num_skipped_queries:,} without a true match)"),
                   ("ranked tracklets", f"{result.num_gallery:,}"),
                   ("gallery rule", result.gallery_rule.replace("_", " "))]


def render_evaluation_report(embeddings: Embeddings, result: EvalResult, breakdown: EvalBreakdown, *,
                             source: str) -> str:
    """The page: metrics table, CMC, score distributions, camera-pair map (with two cameras or more), worst
    queries."""
    has_cameras = len(breakdown.camids) > 1
    cameras = inline_svg(plots.svg(plots.camera_pair_map(breakdown.camera_map, breakdown.camids))) \
        if has_cameras else ""
    return render(
        "evaluation.html.j2", title="tfclip evaluation", subtitle=display.plain(source), metrics=_metrics(result),
        cmc=inline_svg(plots.svg(plots.cmc_curve(breakdown.cmc))),
        cmc_caption=f"Share of the {breakdown.num_query - breakdown.num_skipped:,} queries with a true match whose "
        f"first true match is within the top k of {result.num_gallery:,} ranked tracklets.",
        distributions=inline_svg(plots.svg(plots.score_distributions(breakdown.same_scores,
                                                                     breakdown.different_scores))),
        distributions_caption="Cosine scores of every query against the tracklets it is ranked against; the less "
        f"the two overlap, the easier a fixed threshold tells people apart (at most {MAX_PAIR_SCORES:,} pairs of "
        "each kind, sampled).",
        cameras=cameras,
        cameras_caption="Each cell: the mAP of the row camera's queries counting only true matches in the column "
        "camera; n/a where none exists (same-camera matches are excluded by the protocol).",
        worst=[_worst_view(embeddings, query) for query in breakdown.worst], top_k=TOP_K,
    )


def write_evaluation_report(embeddings: Embeddings, result: EvalResult, out: Path, *, source: str,
                            force: bool = False) -> Path:
    """Break down ``result``'s ranking of ``embeddings`` and write the report page to ``out``.

    Raises:
        UserError: ``out`` exists and ``force`` is False.
    """
    breakdown = break_down(embeddings, gallery_rule=result.gallery_rule)  # type: ignore[arg-type]
    return write_page(render_evaluation_report(embeddings, result, breakdown, source=source), out, force=force)


def evaluate_with_report(embeddings: Embeddings, out: Path, *, gallery_rule: GalleryRule | None, source: str,
                         force: bool = False) -> EvalResult:
    """:func:`tfclip_cli.evaluate.evaluate`, then the report of its ranking at ``out``."""
    result = evaluate(embeddings, gallery_rule=gallery_rule)
    write_evaluation_report(embeddings, result, out, source=source, force=force)
    log.debug("wrote %s", out)
    return result
