"""The calibration report (``tfclip calibrate --report``): the DET curve with the chosen operating point, and the
genuine / impostor score histograms with the threshold.

The rates here are per pair, as :mod:`tfclip_cli.index.calibrate` measures them today: every pair of labelled rows
is genuine (same pid) or impostor, FMR(t) is the share of impostor pairs scoring at least t and FNMR(t) the share
of genuine pairs below it. The figures take plain arrays, so identification rates (FPIR / FNIR per query) draw the
same way. Above ``MAX_ROWS`` labelled rows, a seeded sample of rows is scored (the pairs grow as rows squared).
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


def render_calibration_report(scores: PairScores, *, threshold: float, summary: list[tuple[str, str]],
                              source: str) -> str:
    """The page: the summary table, the DET curve and the score histograms."""
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


def write_calibration_report(embeddings: Embeddings, calibration: Any, out: Path, *, force: bool = False) -> Path:
    """Draw the report of an ``index.Calibration`` computed on ``embeddings`` into ``out``."""
    summary = [
        ("threshold", f"{calibration.threshold:.4f}"),
        ("false-match rate asked for", f"{calibration.fmr:g}"),
        ("false-match rate measured", f"{calibration.false_match_rate:.4f}"),
        ("genuine-accept rate", f"{100 * calibration.genuine_accept_rate:.1f}%"),
        ("pairs", f"{calibration.genuine_pairs:,} genuine, {calibration.impostor_pairs:,} impostor"),
    ]
    page = render_calibration_report(pair_scores(embeddings), threshold=calibration.threshold, summary=summary,
                                     source=calibration.embeddings or "")
    out = write_page(page, out, force=force)
    log.debug("wrote %s", out)
    return out
