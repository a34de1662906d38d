"""The calibration report (``tfclip calibrate --report``): the DET curve with the chosen operating point, and the
genuine / impostor score histograms with the threshold.

Under the per-search rule (the default) the curve is FNIR against FPIR of the leave-identity-out searches of
:mod:`tfclip_cli.index.calibrate`, and the histograms hold each mated search's best-mate score against each
non-mated search's best score. Under the per-pair rule (``--fmr``) every pair of labelled rows is genuine (same pid)
or impostor, FMR(t) is the share of impostor pairs scoring at least t and FNMR(t) the share of genuine pairs below
it; above ``MAX_ROWS`` labelled rows a seeded sample of rows is scored (the pairs grow as rows squared).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tfclip_cli import display
from tfclip_cli.report import plots
from tfclip_cli.report.render import inline_svg, render, write_page
from tfclip_cli.tables import Embeddings

log = logging.getLogger(__name__)

MAX_ROWS = 4000
THRESHOLD_STEPS = 400


@dataclass(frozen=True)
class PairScores:
    """Cosine scores of the genuine and impostor pairs ``i < j`` of a labelled table (or of its sample)."""

    genuine: np.ndarray
    impostor: np.ndarray
    rows: int  # rows scored
    sampled: bool


@dataclass(frozen=True)
class ErrorRates:
    """False-positive and false-negative rates at each threshold (increasing)."""

    thresholds: np.ndarray
    false_positive: np.ndarray  # share of impostors scoring >= threshold
    false_negative: np.ndarray  # share of genuines scoring < threshold


def pair_scores(embeddings: Embeddings) -> PairScores:
    """Every pair's score among the rows of known pid (at most ``MAX_ROWS`` of them, sampled with seed 0)."""
    pids = embeddings.rows["pid"].to_numpy(dtype=np.int64)
    rows = np.flatnonzero(pids >= 0)
    sampled = len(rows) > MAX_ROWS
    if sampled:
        rows = np.sort(np.random.default_rng(0).choice(rows, size=MAX_ROWS, replace=False))
        log.info("the calibration report scores a sample of %d of %d labelled rows", MAX_ROWS, int((pids >= 0).sum()))
    vectors = embeddings.vectors[rows].astype(np.float32)
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    upper = np.triu_indices(len(rows), k=1)
    scores = (vectors @ vectors.T)[upper]
    same = pids[rows][upper[0]] == pids[rows][upper[1]]
    return PairScores(genuine=scores[same], impostor=scores[~same], rows=len(rows), sampled=sampled)


def error_rates(genuine: np.ndarray, impostor: np.ndarray, *, extra: tuple[float, ...] = ()) -> ErrorRates:
    """The rates at ``THRESHOLD_STEPS`` quantiles of all scores, plus the thresholds in ``extra``."""
    genuine, impostor = np.sort(genuine), np.sort(impostor)
    every = np.concatenate([genuine, impostor])
    thresholds = np.unique(np.concatenate([np.quantile(every, np.linspace(0, 1, THRESHOLD_STEPS)), extra]))
    false_positive = 1 - np.searchsorted(impostor, thresholds, side="left") / max(1, len(impostor))
    false_negative = np.searchsorted(genuine, thresholds, side="left") / max(1, len(genuine))
    return ErrorRates(thresholds, false_positive, false_negative)


def render_pair_report(scores: PairScores, *, threshold: float, summary: list[tuple[str, str]], source: str) -> str:
    """The per-pair page: the summary table, the FMR / FNMR curve and the pair-score histograms."""
    rates = error_rates(scores.genuine, scores.impostor, extra=(threshold,))
    sample = f" (a sample of {scores.rows:,} rows)" if scores.sampled else ""
    return render(
        "calibration.html.j2", title="tfclip calibration", subtitle=display.plain(source), summary=summary,
        det=inline_svg(plots.svg(plots.det_curve(rates.false_positive, rates.false_negative, rates.thresholds,
                                                 chosen_threshold=threshold, names=("FMR", "FNMR")))),
        det_caption=f"Each point is a threshold: the share of impostor pairs it lets through against the share of "
        f"genuine pairs it turns away, over {len(scores.genuine):,} genuine and {len(scores.impostor):,} impostor "
        f"pairs{sample}. Lower left is better.",
        histograms=inline_svg(plots.svg(plots.genuine_impostor_histograms(scores.genuine, scores.impostor,
                                                                          threshold))),
        histograms_caption="Hits scoring left of the dashed line are reported as no match.",
    )


def render_search_report(calibration: Any) -> str:
    """The per-search page of an ``index.SearchCalibration``: its DET table, curve and best-score histograms."""
    curve, scores, threshold = calibration.curve, calibration.scores, calibration.threshold
    summary = [
        ("threshold", f"{threshold:.4f}"),
        ("FPIR asked for", f"{calibration.fpir:g}"),
        ("FPIR measured", f"{calibration.measured_fpir:.4f}"),
        (f"FNIR at rank {calibration.rank}", f"{100 * calibration.fnir:.1f}%"),
        ("searches", f"{calibration.mated_searches:,} mated, {calibration.nonmated_searches:,} non-mated"),
        *((f"FNIR at FPIR {point.target_fpir:g}", f"{100 * point.fnir:.1f}% (threshold {point.threshold:.4f})")
          for point in calibration.det),
    ]
    return render(
        "calibration.html.j2", title="tfclip calibration", subtitle=display.plain(calibration.embeddings or ""),
        summary=summary,
        det=inline_svg(plots.svg(plots.det_curve(curve.fpir, curve.fnir, curve.threshold,
                                                 chosen_threshold=threshold))),
        det_caption=f"Each point is a threshold: the share of searches for someone not in the gallery that return "
        f"anyone above it (FPIR) against the share of searches for someone in the gallery whose mate is not "
        f"returned at rank {calibration.rank} above it (FNIR), over {calibration.nonmated_searches:,} non-mated and "
        f"{calibration.mated_searches:,} mated searches. Lower left is better.",
        histograms=inline_svg(plots.svg(plots.score_distributions(
            scores.mate_score, scores.nonmated_score, threshold=threshold,
            labels=("mated search: best mate", "non-mated search: best candidate"),
            title="Best scores of the searches with the chosen threshold"))),
        histograms_caption="Hits scoring left of the dashed line are reported as no match.",
    )


def write_calibration_report(embeddings: Embeddings, calibration: Any, out: Path, *, force: bool = False) -> Path:
    """Draw the report of a calibration computed on ``embeddings`` into ``out``: an ``index.SearchCalibration``
    (per search) or an ``index.Calibration`` (per pair)."""
    page = render_search_report(calibration) if calibration.rule == "per-search" else _pair_page(embeddings, calibration)
    out = write_page(page, out, force=force)
    log.debug("wrote %s", out)
    return out


def _pair_page(embeddings: Embeddings, calibration: Any) -> str:
    summary = [
        ("threshold", f"{calibration.threshold:.4f}"),
        ("false-match rate asked for (per pair)", f"{calibration.fmr:g}"),
        ("false-match rate measured", f"{calibration.false_match_rate:.4f}"),
        ("genuine-accept rate", f"{100 * calibration.genuine_accept_rate:.1f}%"),
        ("pairs", f"{calibration.genuine_pairs:,} genuine, {calibration.impostor_pairs:,} impostor"),
    ]
    return render_pair_report(pair_scores(embeddings), threshold=calibration.threshold, summary=summary,
                              source=calibration.embeddings or "")
