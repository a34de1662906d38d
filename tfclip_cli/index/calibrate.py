"""Calibrated "no match": a score threshold measured on a labelled embeddings table, by one of two rules.

Scores are cosine similarities (the gallery's score). Rows with a negative pid (unknown identity) are left out;
the other rows are the *labelled* rows, and rows of the same pid are *mates*.

**Per search (1:N, ``tfclip calibrate --fpir``, the default).** A query is compared with every tracklet of a
gallery, so what a user needs bounded is the share of searches for a stranger that return anyone, not the share
of impostor pairs (NIST FRVT 1:N, ISO/IEC 19795-1). Leave-identity-out searches on the labelled rows:

- Every labelled row is the probe of one **non-mated search**; its gallery is every labelled row of another pid
  (the probe's whole identity left out, so the probe is a stranger to it). The search returns a candidate at
  threshold ``t`` when its best gallery score is ``>= t``. FPIR(t) = the share of non-mated searches that do.
- Every labelled row with at least one mate is the probe of one **mated search**; its gallery is every other
  labelled row (its mates of every camera included). The search finds its mate at rank ``<= R`` above ``t`` when
  its best-scoring mate scores ``>= t`` and ranks ``<= R``, its rank being 1 + the non-mates scoring strictly
  above it (a tie goes to the mate). FNIR(t) = the share of mated searches that do not.

The threshold for a target FPIR ``f`` is the smallest score at which at most ``floor(f · P)`` of the ``P``
non-mated searches return a candidate: just above the ``(floor(f · P) + 1)``-th best non-mated score. When
``f · P < 1`` no search may return anyone, so the threshold sits just above the best non-mated score and FPIR
``f`` is not resolved by the table (``DetPoint.is_resolved``). The DET table holds FNIR at FPIR 0.1, 0.01 and
0.001 with the threshold of each; :class:`DetCurve` is the whole curve. Probes are searched in blocks of
``BLOCK_ROWS`` rows against every labelled row (``[BLOCK_ROWS, N]`` scores at a time, 20 MB at 20k rows) and
keep three numbers each, so memory stays small at 20k rows.
The gallery header keeps the curve thinned to ``CURVE_POINTS`` points and the best scores binned
(:func:`calibration_figures`), so ``tfclip serve``'s page draws both without the table.

A stranger meets more look-alikes in a larger gallery, so a threshold holds for galleries about the size of the
one it was measured for: calibrating a gallery more than ``STALE_GROWTH`` times larger than the galleries the
table's searches met logs a warning, the gallery records its live count when calibrated (``gallery_rows``), and
:func:`stale_calibration` tells ``query``, ``serve`` and ``/stats`` to warn once it has grown more than
``STALE_GROWTH`` times since.

**Per pair (``tfclip calibrate --fmr``).** Every pair of labelled rows is scored: pairs of the same pid are
genuine, pairs of different pids impostors. The threshold is the smallest score at which at most ``fmr`` of the
impostor pairs score at or above it; its genuine-accept rate is the share of genuine pairs that do. With ``N``
impostor tracklets in a gallery, a stranger's search returns someone about ``1 - (1 - fmr)^N`` of the time.
Pairs are scored in blocks of ``BLOCK_ROWS`` rows and only the highest ``floor(fmr · impostors) + 1`` impostor
scores are kept.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np

from tfclip_cli.errors import GalleryError, UserError
from tfclip_cli.index.store import Gallery, load_index, normalized, update_header
from tfclip_cli.tables import Embeddings, read_embeddings

log = logging.getLogger(__name__)

BLOCK_ROWS = 256
DET_FPIRS = (0.1, 0.01, 0.001)
"""The FPIRs of the DET table."""
STALE_GROWTH = 2.0
"""A calibration is stale once the gallery holds more than this many times the live rows it was calibrated at."""
CURVE_POINTS = 200
"""The most DET points a gallery header keeps for the pictures of ``tfclip serve``'s page."""
HISTOGRAM_BINS = 50
"""Bins of the best-score histograms a gallery header keeps, shared by both search kinds."""
FIGURE_KEYS = ("curve", "histograms")
"""The keys of a stored calibration that only draw its pictures (:func:`calibration_figures`)."""


@dataclass(frozen=True)
class Calibration:
    """The per-pair rule: a threshold at a false-match rate over impostor pairs; stored in the gallery header."""

    threshold: float
    fmr: float
    """The false-match rate asked for."""
    false_match_rate: float
    """The impostor share at or above ``threshold`` on the table (≤ ``fmr``)."""
    genuine_accept_rate: float
    genuine_pairs: int
    impostor_pairs: int
    embeddings: str = ""
    """The labelled table it was computed from."""
    gallery_rows: int | None = None
    """The gallery's live rows when it was calibrated (None: not calibrated for a gallery)."""
    rule: Literal["per-pair"] = "per-pair"


@dataclass(frozen=True)
class SearchScores:
    """What the leave-identity-out searches found (module docstring): the scores a histogram of the 1:N rule draws.

    ``mate_score[i]``, ``mate_rank[i]``: the best mate's score and rank in mated search ``i`` (``[M]``);
    ``nonmated_score[j]``: the best candidate's score in non-mated search ``j`` (``[P]``).
    """

    mate_score: np.ndarray
    mate_rank: np.ndarray
    nonmated_score: np.ndarray

    def fpir(self, threshold: float) -> float:
        """The share of non-mated searches returning a candidate scoring ``>= threshold``."""
        return float((self.nonmated_score >= threshold).mean())

    def fnir(self, threshold: float, *, rank: int = 1) -> float:
        """The share of mated searches whose mate is not returned at rank ``<= rank`` scoring ``>= threshold``."""
        return float(1.0 - ((self.mate_score >= threshold) & (self.mate_rank <= rank)).mean())


@dataclass(frozen=True)
class DetPoint:
    """One row of the DET table: the threshold for a target FPIR, and the FPIR and FNIR measured at it."""

    target_fpir: float
    threshold: float
    fpir: float
    fnir: float
    is_resolved: bool
    """Whether the table has enough non-mated searches (at least ``1 / target_fpir``) to measure this FPIR."""


@dataclass(frozen=True)
class DetCurve:
    """The DET curve at one rank: FPIR and FNIR at every threshold where either changes, thresholds ascending."""

    threshold: np.ndarray
    fpir: np.ndarray
    fnir: np.ndarray


@dataclass(frozen=True)
class SearchCalibration:
    """The per-search (1:N) rule: the threshold at a target FPIR and the DET table; stored in the gallery header
    as :meth:`to_dict` with :func:`calibration_figures` (the curve thinned, the scores binned)."""

    threshold: float
    fpir: float
    """The FPIR asked for."""
    rank: int
    """A mated search succeeds when its mate ranks at most this."""
    measured_fpir: float
    fnir: float
    mated_searches: int
    nonmated_searches: int
    det: tuple[DetPoint, ...]
    scores: SearchScores = field(repr=False, compare=False)
    curve: DetCurve = field(repr=False, compare=False)
    embeddings: str = ""
    """The labelled table it was computed from."""
    gallery_rows: int | None = None
    """The gallery's live rows when it was calibrated (None: not calibrated for a gallery)."""
    rule: Literal["per-search"] = "per-search"

    def to_dict(self) -> dict:
        """JSON-ready: every field but the score arrays and the curve; the DET table as a list of dicts."""
        return {
            "rule": self.rule, "threshold": self.threshold, "fpir": self.fpir, "rank": self.rank,
            "measured_fpir": self.measured_fpir, "fnir": self.fnir, "mated_searches": self.mated_searches,
            "nonmated_searches": self.nonmated_searches, "det": [asdict(point) for point in self.det],
            "embeddings": self.embeddings, "gallery_rows": self.gallery_rows,
        }


def _check_rate(value: float, option: str, name: str) -> None:
    if not 0 < value < 1:  # NaN fails too
        raise UserError(f"{option} {value}: expected a {name} strictly between 0 and 1, e.g. 0.01")


def _labelled(embeddings: Embeddings) -> tuple[np.ndarray, np.ndarray]:
    """Unit vectors ``[N, D]`` and pids ``[N]`` of the rows with a known identity.

    Raises:
        GalleryError: when they hold NaN or inf.
    """
    pids = embeddings.rows["pid"].to_numpy()
    known = pids >= 0
    vectors = embeddings.vectors[known]
    if not np.isfinite(vectors).all():
        raise GalleryError("the calibration table holds NaN or inf embeddings: expected finite vectors")
    return normalized(vectors), pids[known]


def search_scores(embeddings: Embeddings) -> SearchScores:
    """The leave-identity-out searches of the module docstring on the labelled rows of ``embeddings``.

    Raises:
        GalleryError: when the labelled rows hold non-finite vectors, fewer than two identities or no mates.
    """
    vectors, pids = _labelled(embeddings)
    _, inverse, sizes = np.unique(pids, return_inverse=True, return_counts=True)
    mated = sizes[inverse] > 1
    if len(sizes) < 2 or not mated.any():
        raise GalleryError(
            f"the calibration table has {len(pids)} labelled rows of {len(sizes)} identities, "
            f"{int(mated.sum())} of them with a mate: expected two identities or more and some seen twice",
            hint="calibrate on labelled tracklets: several identities, each seen at least twice",
        )
    count = len(vectors)
    best_mate = np.empty(count, dtype=np.float32)
    ahead = np.empty(count, dtype=np.int64)
    nonmated = np.empty(count, dtype=np.float32)
    for start in range(0, count, BLOCK_ROWS):
        stop = min(start + BLOCK_ROWS, count)
        scores = vectors[start:stop] @ vectors.T  # [B, N]
        same = pids[start:stop, None] == pids[None, :]  # [B, N], the probe itself included
        mates = np.where(same, scores, np.float32(-np.inf))
        mates[np.arange(stop - start), np.arange(start, stop)] = -np.inf  # a probe is never in its own gallery
        best_mate[start:stop] = mates.max(axis=1)
        scores[same] = -np.inf  # the non-mated gallery: the probe's identity left out
        nonmated[start:stop] = scores.max(axis=1)
        ahead[start:stop] = (scores > best_mate[start:stop, None]).sum(axis=1)
    return SearchScores(mate_score=best_mate[mated], mate_rank=ahead[mated] + 1, nonmated_score=nonmated)


def det_point(scores: SearchScores, target_fpir: float, *, rank: int = 1) -> DetPoint:
    """The threshold at ``target_fpir`` (module docstring) and the FPIR and FNIR at rank ``rank`` measured at it."""
    searches = len(scores.nonmated_score)
    allowed = min(math.floor(target_fpir * searches + 1e-9), searches - 1)  # 0.001 · 3000 is 3, not 2.99…
    ranked = np.sort(scores.nonmated_score)[::-1]
    threshold = np.nextafter(ranked[allowed], np.float32(np.inf))  # strictly above the (allowed+1)-th best
    return DetPoint(
        target_fpir=target_fpir,
        threshold=float(threshold),
        fpir=scores.fpir(threshold),
        fnir=scores.fnir(threshold, rank=rank),
        is_resolved=allowed >= 1,
    )


def det_curve(scores: SearchScores, *, rank: int = 1) -> DetCurve:
    """FPIR and FNIR at rank ``rank`` at every score either search kind reached, and just above the highest."""
    found = np.sort(np.where(scores.mate_rank <= rank, scores.mate_score, -np.inf))
    nonmated = np.sort(scores.nonmated_score)
    reached = np.unique(np.concatenate([found[np.isfinite(found)], nonmated]))
    thresholds = np.append(reached, np.nextafter(reached[-1], np.float32(np.inf)))
    return DetCurve(
        threshold=thresholds,
        fpir=1.0 - np.searchsorted(nonmated, thresholds, side="left") / len(nonmated),
        fnir=np.searchsorted(found, thresholds, side="left") / len(found),
    )


def thinned_curve(curve: DetCurve, keep: float, *, points: int = CURVE_POINTS) -> DetCurve:
    """At most ``points`` points of ``curve`` spread evenly along it as a DET plot draws it (FPIR on a log axis,
    FNIR linear, both spans scaled to 1), its two ends and the operating point of threshold ``keep`` always among
    them: the first point at or above ``keep``, whose rates are those of ``keep`` (no score lies between them).
    FPIR 0 counts as half the smallest FPIR above 0 when measuring the spread."""
    count = len(curve.threshold)
    if count <= points:
        return curve
    positive = curve.fpir[curve.fpir > 0]
    log_fpir = np.log10(np.maximum(curve.fpir, positive.min() / 2 if len(positive) else 1e-12))
    x = (log_fpir - log_fpir.min()) / max(float(np.ptp(log_fpir)), 1e-12)
    along = np.concatenate([[0.0], np.cumsum(np.hypot(np.diff(x), np.diff(curve.fnir)))])
    spread = np.searchsorted(along, np.linspace(0.0, along[-1], points - 3)).clip(max=count - 1)
    operating = min(int(np.searchsorted(curve.threshold, keep, side="left")), count - 1)
    kept = np.unique(np.concatenate([spread, [0, count - 1, operating]]))
    return DetCurve(threshold=curve.threshold[kept], fpir=curve.fpir[kept], fnir=curve.fnir[kept])


def calibration_figures(calibration: SearchCalibration) -> dict:
    """What the gallery header keeps to draw a per-search calibration without its table: the DET curve thinned to
    ``CURVE_POINTS`` (``curve``: threshold, FPIR, FNIR lists, thresholds ascending) and the best scores of the
    mated and non-mated searches counted in ``HISTOGRAM_BINS`` equal bins over both (``histograms``: ``edges``,
    ``mated``, ``nonmated``)."""
    curve = thinned_curve(calibration.curve, calibration.threshold)
    scores = calibration.scores
    both = np.concatenate([scores.mate_score, scores.nonmated_score]).astype(np.float64)
    low, high = float(both.min()), float(both.max())
    edges = np.linspace(low, high if high > low else low + 1e-3, HISTOGRAM_BINS + 1)
    return {
        "curve": {"threshold": curve.threshold.astype(float).tolist(), "fpir": curve.fpir.astype(float).tolist(),
                  "fnir": curve.fnir.astype(float).tolist()},
        "histograms": {"edges": edges.tolist(),
                       "mated": np.histogram(scores.mate_score, edges)[0].tolist(),
                       "nonmated": np.histogram(scores.nonmated_score, edges)[0].tolist()},
    }


def calibrate_search_threshold(embeddings: Embeddings, fpir: float, *, rank: int = 1) -> SearchCalibration:
    """The per-search (1:N) threshold at FPIR ``fpir`` and the DET table at rank ``rank``, from ``embeddings``.

    Raises:
        UserError: when ``fpir`` is not strictly between 0 and 1, or ``rank`` is below 1.
        GalleryError: as :func:`search_scores`.
    """
    _check_rate(fpir, "--fpir", "false-positive identification rate")
    if rank < 1:
        raise UserError(f"--rank {rank}: expected a rank of 1 or more")
    scores = search_scores(embeddings)
    point = det_point(scores, fpir, rank=rank)
    if not point.is_resolved:
        log.warning("%d non-mated searches are too few to measure an FPIR of %g: the threshold sits just above the "
                    "best non-mated score", len(scores.nonmated_score), fpir)
    return SearchCalibration(
        threshold=point.threshold, fpir=fpir, rank=rank, measured_fpir=point.fpir, fnir=point.fnir,
        mated_searches=len(scores.mate_score), nonmated_searches=len(scores.nonmated_score),
        det=tuple(det_point(scores, target, rank=rank) for target in DET_FPIRS),
        scores=scores, curve=det_curve(scores, rank=rank),
    )


def _pair_counts(pids: np.ndarray) -> tuple[int, int]:
    """Genuine and impostor pair counts of rows labelled ``pids``."""
    _, sizes = np.unique(pids, return_counts=True)
    genuine = int((sizes * (sizes - 1) // 2).sum())
    return genuine, len(pids) * (len(pids) - 1) // 2 - genuine


def _scored_pairs(vectors: np.ndarray, pids: np.ndarray, keep: int) -> tuple[np.ndarray, np.ndarray]:
    """All genuine pair scores, and the ``keep`` highest impostor scores (descending), over pairs ``i < j``."""
    genuine, top = [], np.zeros(0, dtype=np.float32)
    for start in range(0, len(vectors), BLOCK_ROWS):
        scores = vectors[start:start + BLOCK_ROWS] @ vectors.T  # [B, N]
        rows = np.arange(start, start + len(scores))[:, None]
        upper = np.arange(len(vectors))[None, :] > rows
        same = pids[start:start + len(scores), None] == pids[None, :]
        genuine.append(scores[upper & same])
        impostors = np.concatenate([top, scores[upper & ~same]])
        top = impostors if len(impostors) <= keep else np.partition(impostors, len(impostors) - keep)[-keep:]
    return np.concatenate(genuine), np.sort(top)[::-1]


def calibrate_threshold(embeddings: Embeddings, fmr: float) -> Calibration:
    """The per-pair threshold at false-match rate ``fmr`` from the genuine and impostor pairs of ``embeddings``.

    Raises:
        UserError: when ``fmr`` is not strictly between 0 and 1.
        GalleryError: when the table holds non-finite vectors, or no genuine or no impostor pair.
    """
    _check_rate(fmr, "--fmr", "false-match rate")
    vectors, pids = _labelled(embeddings)
    genuine_count, impostor_count = _pair_counts(pids)
    if genuine_count == 0 or impostor_count == 0:
        raise GalleryError(
            f"the calibration table has {genuine_count} genuine and {impostor_count} impostor pairs: expected both",
            hint="calibrate on labelled tracklets: several identities, each seen at least twice",
        )
    allowed = math.floor(fmr * impostor_count)
    if allowed == 0:
        log.warning("%d impostor pairs are too few to measure a false-match rate of %g: the threshold sits just "
                    "above the highest impostor score", impostor_count, fmr)
    genuine, top = _scored_pairs(vectors, pids, keep=allowed + 1)
    threshold = np.nextafter(top[allowed], np.float32(np.inf))  # strictly above the (allowed+1)-th impostor
    return Calibration(
        threshold=float(threshold),
        fmr=fmr,
        false_match_rate=float((top >= threshold).sum() / impostor_count),
        genuine_accept_rate=float((genuine >= threshold).mean()),
        genuine_pairs=genuine_count,
        impostor_pairs=impostor_count,
    )


def _calibration_table(gallery: Gallery, embeddings_path: Path) -> Embeddings:
    """The labelled table at ``embeddings_path``, checked against the gallery it calibrates.

    Raises:
        GalleryError: when the table's checkpoint or dimension differs from the gallery's (scores not comparable).
    """
    table = read_embeddings(embeddings_path)
    theirs, ours = table.info.get("checkpoint_sha256"), gallery.info.checkpoint_sha256
    if theirs != ours:
        raise GalleryError(
            f"{embeddings_path} holds embeddings of checkpoint sha256 {theirs}; {gallery.path} of {ours}: "
            "scores of different models are not comparable",
            hint=f"extract the calibration tracklets with {gallery.info.checkpoint}",
        )
    if table.dim != gallery.info.dim:
        raise GalleryError(f"{embeddings_path} holds {table.dim}-d embeddings; {gallery.path} {gallery.info.dim}-d")
    return table


def calibrate_gallery(gallery_path: Path, embeddings_path: Path, *, fpir: float = 0.01,
                      rank: int = 1) -> SearchCalibration:
    """Calibrate the gallery at ``gallery_path`` per search (1:N) on a labelled table; store the result, with the
    gallery's live row count and what draws its DET curve and score histograms (:func:`calibration_figures`), in
    its header.

    Raises:
        GalleryError: as :func:`_calibration_table` or :func:`calibrate_search_threshold`.
        UserError: as :func:`calibrate_search_threshold`.
    """
    gallery = load_index(gallery_path)
    table = _calibration_table(gallery, embeddings_path)
    calibration = calibrate_search_threshold(table, fpir, rank=rank)
    searched = calibration.nonmated_searches - 1  # the largest gallery a search of the table met
    if gallery.info.live_count > STALE_GROWTH * searched:
        log.warning("%s holds %d tracklets; the table's searches met galleries of at most %d: a stranger meets more "
                    "look-alikes in the gallery, so its FPIR will be higher than measured; calibrate on a larger "
                    "labelled table", gallery_path, gallery.info.live_count, searched)
    calibration = replace(calibration, embeddings=str(embeddings_path), gallery_rows=gallery.info.live_count)
    update_header(gallery_path, calibration={**calibration.to_dict(), **calibration_figures(calibration)})
    return calibration


def calibrate_gallery_per_pair(gallery_path: Path, embeddings_path: Path, *, fmr: float = 0.01) -> Calibration:
    """Calibrate the gallery at ``gallery_path`` by the per-pair rule on a labelled table; store the result, with
    the gallery's live row count, in its header.

    Raises:
        GalleryError: as :func:`_calibration_table` or :func:`calibrate_threshold`.
        UserError: as :func:`calibrate_threshold`.
    """
    gallery = load_index(gallery_path)
    calibration = calibrate_threshold(_calibration_table(gallery, embeddings_path), fmr)
    calibration = replace(calibration, embeddings=str(embeddings_path), gallery_rows=gallery.info.live_count)
    update_header(gallery_path, calibration=asdict(calibration))
    return calibration


def stale_calibration(gallery: Gallery) -> str | None:
    """The warning for a gallery grown more than ``STALE_GROWTH`` times since it was calibrated, else None (also
    for an uncalibrated gallery, or one calibrated before galleries recorded their size)."""
    calibration = gallery.info.calibration
    if not calibration or not calibration.get("gallery_rows"):
        return None
    then, now = int(calibration["gallery_rows"]), gallery.info.live_count
    if now <= STALE_GROWTH * then:
        return None
    again = (f"--fpir {calibration['fpir']:g}" if calibration.get("rule") == "per-search"
             else f"--fmr {calibration.get('fmr', 0.01):g}")
    return (f"{gallery.path} holds {now:,} tracklets, more than {STALE_GROWTH:g}x the {then:,} it was calibrated at: "
            f"its threshold {float(calibration['threshold']):.4f} now lets more strangers through; calibrate again: "
            f"tfclip calibrate VAL.parquet --gallery {gallery.path} {again}")


def warn_if_stale(gallery: Gallery) -> None:
    """Log :func:`stale_calibration`'s warning when the gallery has outgrown its calibration."""
    message = stale_calibration(gallery)
    if message is not None:
        log.warning(message)
