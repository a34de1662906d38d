"""``tfclip export --int8``: an int8 ONNX embedding and what it costs, measured before the file is kept.

The checkpoint is exported in fp32 (verified against PyTorch as ``tfclip export`` does), quantised with
onnxruntime (:func:`export.quantize_int8`), and compared with the fp32 file: the cosine of their embeddings of the
verification clips, and, given a table of labelled tracklets, mAP and rank-1 of both side by side. The figures go
into the int8 file's metadata (``int8_accuracy``, JSON). A model that loses more than :data:`MAX_MAP_DROP` of mAP
is refused unless forced. The retrieval check embeds real clips, so it lives above ``inference`` and ``evaluate``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import dataclasses
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tfclip_cli.clips import ClipTransform
from tfclip_cli.errors import DataError, UserError
from tfclip_cli.evaluate import evaluate
from tfclip_cli.export import Agreement, Verification, compare_onnx, export_checkpoint, quantize_int8, record_props
from tfclip_cli.inference import extract_embeddings
from tfclip_cli.runtime import OnnxEmbedder, OnnxMetadata, read_metadata
from tfclip_cli.tables import Manifest, Tracklet, read_manifest

logger = logging.getLogger(__name__)

MAX_MAP_DROP = 0.01  # one point of mAP: the most an int8 file may lose on the check table without --force
CHECK_SAMPLING = "dense"  # as `tfclip extract` embeds by default, so the figures match an evaluated table's
METADATA_KEY = "int8_accuracy"


@dataclass(frozen=True)
class Retrieval:
    """mAP and rank-1 (fractions in 0..1) of one model on the check table."""

    mAP: float
    rank1: float


@dataclass(frozen=True)
class AccuracyCheck:
    """fp32 and int8 retrieval on the same labelled tracklets."""

    table: Path
    num_query: int
    num_gallery: int
    fp32: Retrieval
    int8: Retrieval

    @property
    def map_drop(self) -> float:
        """fp32 mAP minus int8 mAP (a fraction; 0.01 is one point)."""
        return self.fp32.mAP - self.int8.mAP


@dataclass(frozen=True)
class Int8Export:
    """What ``tfclip export --int8`` wrote and measured; ``check`` is None without ``--check-on``."""

    path: Path
    metadata: OnnxMetadata
    verification: Verification  # the fp32 export against PyTorch
    agreement: Agreement  # int8 against fp32 on the same clips
    check: AccuracyCheck | None


class AccuracyDropError(UserError):
    """The int8 model loses more mAP than allowed on the check table; nothing was written."""


def export_int8(checkpoint: Path, out: Path, *, check_on: Path | None = None, force: bool = False) -> Int8Export:
    """Export a checkpoint as an int8 ONNX file whose metadata records its measured accuracy cost.

    Args:
        check_on: a manifest or embeddings table whose query and gallery tracklets are embedded by both the fp32 and
            the int8 file to compare mAP and rank-1.
        force: overwrite ``out`` and keep a model that loses more than :data:`MAX_MAP_DROP` of mAP.

    Raises:
        UserError: ``out`` exists without ``force``; DataError: an unreadable check table; AccuracyDropError: the
        mAP drop is over the limit without ``force``. VerificationError: the fp32 export does not match PyTorch.
    """
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists", hint="pass --force to overwrite it, or choose another --out")
    manifest = read_manifest(check_on) if check_on is not None else None
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent) as folder:
        fp32 = export_checkpoint(checkpoint, Path(folder) / "fp32.onnx", fused_attention=True)
        staged = Path(folder) / out.name
        quantize_int8(fp32.path, staged)
        agreement = compare_onnx(fp32.path, staged)
        check = None if manifest is None else check_accuracy(fp32.path, staged, manifest, table=Path(check_on))
        record_props(staged, {METADATA_KEY: json.dumps(_figures(agreement, check))})
        if check is not None and check.map_drop > MAX_MAP_DROP and not force:
            raise AccuracyDropError(
                f"int8 loses {100 * check.map_drop:.2f} points of mAP on {check_on} (fp32 {100 * check.fp32.mAP:.2f}"
                f"%, int8 {100 * check.int8.mAP:.2f}%; at most {100 * MAX_MAP_DROP:g} allowed): {out} not written",
                hint="keep it anyway with --force, or ship the fp32 export",
            )
        os.replace(staged, out)
    logger.info("exported %s to %s (int8)", checkpoint, out)
    return Int8Export(out, read_metadata(out), fp32.verification, agreement, check)


def check_accuracy(fp32: Path, int8: Path, manifest: Manifest, *, table: Path) -> AccuracyCheck:
    """mAP and rank-1 of two exported files on a manifest's query and gallery tracklets (CPU, one pass each)."""
    tracklets = manifest.tracklets("query") + manifest.tracklets("gallery")
    figures = [_retrieval(OnnxEmbedder(path), tracklets, manifest.info.gallery_rule) for path in (fp32, int8)]
    num_query = len(manifest.tracklets("query"))
    return AccuracyCheck(table, num_query, len(tracklets) - num_query, fp32=figures[0], int8=figures[1])


def _retrieval(embedder: OnnxEmbedder, tracklets: list[Tracklet], gallery_rule: str) -> Retrieval:
    """Embed the tracklets with one file and evaluate them; an unreadable tracklet fails the check."""
    metadata = embedder.metadata
    transform = ClipTransform(metadata.image_size, normalization=metadata.normalization, is_train=False)
    extraction = extract_embeddings(embedder, tracklets, sampling=CHECK_SAMPLING, transform=transform,
                                    device=torch.device("cpu"), workers=0)
    if extraction.failures:
        raise DataError("the --check-on table has unreadable tracklets: " + "; ".join(extraction.failures[:5]))
    result = evaluate(dataclasses.replace(extraction.embeddings, info={"gallery_rule": gallery_rule}))
    return Retrieval(mAP=result.mAP, rank1=result.rank1)


def _figures(agreement: Agreement, check: AccuracyCheck | None) -> dict:
    """The metadata entry: int8 vs fp32 cosine, and the retrieval figures when measured."""
    figures = {"quantization": "onnxruntime dynamic (int8 MatMul/Gemm weights per output channel, activations per batch)", **asdict(agreement)}
    if check is not None:
        figures.update(check_on=str(check.table), num_query=check.num_query, num_gallery=check.num_gallery,
                       fp32=asdict(check.fp32), int8=asdict(check.int8))
    return figures
