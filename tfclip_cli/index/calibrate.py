"""Calibrated "no match": the score threshold at a chosen false-match rate, from a labelled embeddings table.

Every pair of rows of the table is scored by cosine similarity (the gallery's score): pairs of the same pid are
genuine, pairs of different pids impostors; rows with a negative pid (unknown identity) are left out. The
threshold is the smallest score at which at most ``fmr`` of the impostor pairs score at or above it; its
genuine-accept rate is the share of genuine pairs that do. Pairs are scored in blocks of ``BLOCK_ROWS`` rows and
only the highest ``floor(fmr · impostors) + 1`` impostor scores are kept, so memory stays small at 20k rows.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tfclip_cli.errors import GalleryError, UserError
from tfclip_cli.index.store import load_index, normalized, update_header
from tfclip_cli.tables import Embeddings, read_embeddings

log = logging.getLogger(__name__)

BLOCK_ROWS = 2048


@dataclass(frozen=True)
class Calibration:
    """A "no match" threshold and what it was measured on; stored in the gallery header."""

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
    """The threshold at false-match rate ``fmr`` from the genuine and impostor pairs of ``embeddings``.

    Raises:
        UserError: when ``fmr`` is not strictly between 0 and 1.
        GalleryError: when the table holds non-finite vectors, or no genuine or no impostor pair.
    """
    if not 0 < fmr < 1:
        raise UserError(f"--fmr {fmr}: expected a false-match rate strictly between 0 and 1, e.g. 0.01")
    known = embeddings.rows["pid"].to_numpy() >= 0
    vectors, pids = embeddings.vectors[known], embeddings.rows["pid"].to_numpy()[known]
    if not np.isfinite(vectors).all():
        raise GalleryError("the calibration table holds NaN or inf embeddings: expected finite vectors")
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
    genuine, top = _scored_pairs(normalized(vectors), pids, keep=allowed + 1)
    threshold = np.nextafter(top[allowed], np.float32(np.inf))  # strictly above the (allowed+1)-th impostor
    return Calibration(
        threshold=float(threshold),
        fmr=fmr,
        false_match_rate=float((top >= threshold).sum() / impostor_count),
        genuine_accept_rate=float((genuine >= threshold).mean()),
        genuine_pairs=genuine_count,
        impostor_pairs=impostor_count,
    )


def calibrate_gallery(gallery_path: Path, embeddings_path: Path, *, fmr: float = 0.01) -> Calibration:
    """Calibrate the gallery at ``gallery_path`` on a labelled table and store the result in its header.

    Raises:
        GalleryError: when the table's checkpoint differs from the gallery's (their scores are not comparable),
            or as :func:`calibrate_threshold`.
    """
    gallery = load_index(gallery_path)
    table = read_embeddings(embeddings_path)
    theirs, ours = table.info.get("checkpoint_sha256"), gallery.info.checkpoint_sha256
    if theirs != ours:
        raise GalleryError(
            f"{embeddings_path} holds embeddings of checkpoint sha256 {theirs}; {gallery_path} of {ours}: "
            "scores of different models are not comparable",
            hint=f"extract the calibration tracklets with {gallery.info.checkpoint}",
        )
    if table.dim != gallery.info.dim:
        raise GalleryError(f"{embeddings_path} holds {table.dim}-d embeddings; {gallery_path} {gallery.info.dim}-d")
    calibration = calibrate_threshold(table, fmr)
    calibration = Calibration(**{**asdict(calibration), "embeddings": str(embeddings_path)})
    update_header(gallery_path, calibration=asdict(calibration))
    return calibration
