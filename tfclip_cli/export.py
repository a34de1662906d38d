"""ONNX export: a checkpoint's embedding written, verified against PyTorch, quantised.

``tfclip export`` writes the test-time embedding of a checkpoint (:meth:`TFCLIP.embed`, the function ``extract``
runs) as one self-contained ``.onnx`` file: inputs ``clips`` float32 ``[B, T, 3, H, W]`` (normalised frames) and
``camids`` int64 ``[B]`` (-1 = camera unknown), output ``embedding`` float32 ``[B, D]``, batch size dynamic. The
file's ``metadata_props`` carry what a consumer needs to feed it (input size, frames per clip, mean/std, embedding
kind and width, cameras) and where it came from (checkpoint sha256, tfclip version). Every export is checked against
PyTorch with onnxruntime before the file is kept. :mod:`tfclip_cli.runtime` runs such a file without torch
(``OnnxEmbedder``); given a checkpoint instead of a file (``extract --backend onnx``), the export is made once and
cached beside it (:func:`cached_export`).

:func:`quantize_int8` writes an int8 copy of an export and :func:`compare_onnx` measures how far it moved; the
int8 export with its retrieval check (``tfclip export --int8``) is composed in ``quantize``.

Sessions, metadata and the embedder live in :mod:`tfclip_cli.runtime` (no torch there); this module is the torch
side: writing, verifying and quantising exports.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import logging
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxscript
import torch
from torch import nn

from tfclip_cli import __version__
from tfclip_cli.checkpoint import Checkpoint, file_sha256, load_checkpoint, model_from_checkpoint
from tfclip_cli.frames import NORMALIZATIONS
from tfclip_cli.model import TFCLIP, ModelConfig
from tfclip_cli.runtime import (
    UNKNOWN_CAMERA,
    OnnxEmbedder,
    OnnxMetadata,
    embedding_session,
    read_metadata,
)
from tfclip_cli.tables import check_writable, reporting_write_errors

logger = logging.getLogger(__name__)

Precision = Literal["fp32", "fp16"]
OPSET = 18  # the dynamo exporter's default in torch 2.14; onnxruntime >= 1.14 runs it
VERIFY_SEED = 0
VERIFY_BATCHES = ((3, True), (2, False))  # (clips, camera known?): two batch sizes exercise the dynamic axis


@dataclass(frozen=True)
class Tolerance:
    """How far an ONNX embedding may be from PyTorch's: largest absolute difference, smallest cosine per row."""

    max_abs_diff: float
    min_cosine: float


TOLERANCES: dict[Precision, Tolerance] = {
    "fp32": Tolerance(max_abs_diff=1e-4, min_cosine=0.9999),
    # fp16 keeps about 3 significant digits through 12+ blocks: the cosine is what retrieval sees.
    "fp16": Tolerance(max_abs_diff=5e-2, min_cosine=0.999),
}


@dataclass(frozen=True)
class Verification:
    """ONNX vs PyTorch on random clips: the worst absolute difference and cosine over every embedding row."""

    max_abs_diff: float
    min_cosine: float
    num_clips: int
    tolerance: Tolerance

    @property
    def passed(self) -> bool:
        return self.max_abs_diff <= self.tolerance.max_abs_diff and self.min_cosine >= self.tolerance.min_cosine


class VerificationError(Exception):
    """The exported model does not match PyTorch (a bug, not a user error: the CLI exits 1, no file kept)."""

    def __init__(self, verification: Verification) -> None:
        tolerance = verification.tolerance
        super().__init__(
            f"ONNX differs from PyTorch: max abs diff {verification.max_abs_diff:.3g} (allowed "
            f"{tolerance.max_abs_diff:g}), min cosine {verification.min_cosine:.6f} (allowed {tolerance.min_cosine})"
        )
        self.verification = verification


@dataclass(frozen=True)
class ExportResult:
    """What ``tfclip export`` wrote; ``verification`` is None under ``--no-verify``."""

    path: Path
    metadata: OnnxMetadata
    verification: Verification | None


# ------------------------------------------------------------------------------------------------------ export


def _attend(qkv: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention of projected queries, keys and values side by side ``[B, L, 3W]`` → ``[B, L, W]``
    (before the output projection): one permute into heads and one back."""
    batch, length, width = qkv.shape[0], qkv.shape[1], qkv.shape[2] // 3
    head = width // heads
    q, k, v = qkv.view(batch, length, 3, heads, head).permute(2, 0, 3, 1, 4)
    weights = torch.softmax((q * head ** -0.5) @ k.transpose(-2, -1), dim=-1)
    return (weights @ v).transpose(1, 2).reshape(batch, length, width)


@torch.library.custom_op("tfclip::self_attention", mutates_args=())
def _self_attention(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head self-attention up to the output projection, as onnxruntime's ``com.microsoft.Attention``
    computes it: ``x`` [B, L, W], ``weight`` [W, 3W] (the q, k, v projections side by side), ``bias`` [3W] →
    [B, L, W]. An export writes it as that one operator (:func:`_attention_onnx`)."""
    return _attend(x @ weight + bias, heads)


@_self_attention.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, heads: int) -> torch.Tensor:
    return torch.empty_like(x)


_ATTENTION = onnxscript.values.Op(
    onnxscript.values.Opset("com.microsoft", 1), "Attention",
    onnx.defs.OpSchema(  # the inputs and attribute the export uses; onnxruntime holds the full schema
        "Attention", "com.microsoft", 1,
        inputs=[onnx.defs.OpSchema.FormalParameter(name, "T") for name in ("input", "weights", "bias")],
        outputs=[onnx.defs.OpSchema.FormalParameter("output", "T")],
        type_constraints=[("T", ["tensor(float)"], "float32 only: onnxruntime's CPU kernel")],
        attributes=[onnx.defs.OpSchema.Attribute("num_heads", onnx.defs.OpSchema.AttrType.INT, "heads")],
    ),
)


def _attention_onnx(x, weight, bias, heads: int):
    """:func:`_self_attention` for the dynamo exporter: one ``com.microsoft.Attention`` node."""
    return _ATTENTION(x, weight, bias, num_heads=heads)


class _ExportedSelfAttention(nn.Module):
    """A backbone block's ``nn.MultiheadAttention`` (batch first, self-attention, no mask) written out for the
    exporter with the same weights. PyTorch's own forward exports as sequence-first with about nine transposes a
    block, which took 15% of ViT-B/16's int8 time on the CPU. Two forms:

    - standard ONNX (``fused=False``): one projection of q, k and v, one permute into heads and one back;
    - onnxruntime's ``com.microsoft.Attention`` operator (``fused=True``, :func:`_self_attention`), which
      ``--int8`` quantises to ``QAttention``: ViT-B/16 int8 2-5% faster on one thread (3.90 vs 3.81 clips/s in
      ``bench_export.py``), with the same embeddings, but the file then runs on onnxruntime only.
    """

    def __init__(self, attention: nn.MultiheadAttention, *, fused: bool) -> None:
        super().__init__()
        self.heads, self.fused = attention.num_heads, fused
        self.in_proj_weight, self.in_proj_bias, self.out_proj = (attention.in_proj_weight, attention.in_proj_bias,
                                                                 attention.out_proj)
        if fused:  # Attention's weights are [W, 3W]: a transposed copy, so the file holds them as they are used
            self.qkv_weight = nn.Parameter(attention.in_proj_weight.detach().t().contiguous(), requires_grad=False)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, None]:
        assert key is query and value is query and attn_mask is None and not need_weights, "self-attention only"
        if self.fused:
            return self.out_proj(_self_attention(query, self.qkv_weight, self.in_proj_bias, self.heads)), None
        qkv = nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias)
        return self.out_proj(_attend(qkv, self.heads)), None


def _exportable(model: TFCLIP, *, fused_attention: bool) -> TFCLIP:
    """``model`` with its image encoder's attention written for the exporter (:class:`_ExportedSelfAttention`)."""
    for block in model.backbone.vit.transformer.resblocks:
        if isinstance(block.attn, nn.MultiheadAttention) and block.attn.batch_first:
            block.attn = _ExportedSelfAttention(block.attn, fused=fused_attention)
    return model


class _EmbeddingGraph(nn.Module):
    """What is exported: :meth:`TFCLIP.embed_with_camera` with float32 in and out whatever the weights' precision.

    The camera-id range check of :meth:`TFCLIP.embed` depends on the data, so it stays out of the graph; the
    runtime (:class:`OnnxEmbedder`) makes it before feeding ``camids``.
    """

    def __init__(self, model: TFCLIP, dtype: torch.dtype) -> None:
        super().__init__()
        self.model = model
        self.dtype = dtype

    def forward(self, clips: torch.Tensor, camids: torch.Tensor) -> torch.Tensor:
        rows = self.model.camera_rows(camids)
        return self.model.embed_with_camera(clips.to(self.dtype), rows).float()


def _metadata(checkpoint: Checkpoint, model: TFCLIP, *, sha256: str, precision: Precision) -> OnnxMetadata:
    config = model.config
    mean, std = NORMALIZATIONS[checkpoint.normalization]
    return OnnxMetadata(
        image_size=tuple(config.image_size), seq_len=config.seq_len, normalization=checkpoint.normalization,
        mean=tuple(mean), std=tuple(std), embedding=config.embedding, embedding_dim=model.embedding_dim,
        num_cameras=config.num_cameras, precision=precision, checkpoint_sha256=sha256, tfclip_version=__version__,
        model_config=config.to_dict(),
    )


def _example_inputs(
    config: ModelConfig, batch: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random normalised clips [B, T, 3, H, W] and camera ids [B] (known ones when the model has SIE, else -1)."""
    clips = torch.randn(batch, config.seq_len, 3, *config.image_size, generator=generator)
    if config.num_cameras == 0:
        return clips, torch.full((batch,), UNKNOWN_CAMERA)
    return clips, torch.arange(batch) % config.num_cameras


def _write_onnx(model: TFCLIP, path: Path, *, metadata: OnnxMetadata, fused_attention: bool = False) -> None:
    """Export ``model``'s embedding to ``path`` with the dynamo exporter, batch size dynamic.

    One self-contained file unless the weights pass protobuf's 2 GB limit (then ``path.data`` beside it).
    """
    dtype = torch.float16 if metadata.precision == "fp16" else torch.float32
    graph = _EmbeddingGraph(_exportable(copy.deepcopy(model), fused_attention=fused_attention).to(dtype), dtype).eval()
    inputs = _example_inputs(model.config, 2, torch.Generator().manual_seed(VERIFY_SEED))
    batch = torch.export.Dim("batch", min=1)
    for name in ("onnxscript", "onnx_ir"):  # their graph optimiser logs every pass at INFO
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter warns about its own axis renaming
        program = torch.onnx.export(
            graph, inputs, dynamo=True, opset_version=OPSET, input_names=["clips", "camids"],
            output_names=["embedding"], dynamic_shapes={"clips": {0: batch}, "camids": {0: batch}}, verbose=False,
            custom_translation_table={torch.ops.tfclip.self_attention.default: _attention_onnx},
        )
    program.model.metadata_props.update(metadata.to_props())
    program.model.doc_string = "TF-CLIP video re-identification embedding exported by tfclip " + __version__
    program.save(path)


def _worst_rows(expected: np.ndarray, found: np.ndarray) -> tuple[float, float]:
    """(max abs difference, min cosine over rows) of two embedding matrices [N, D]."""
    return float(np.abs(expected - found).max()), float(_row_cosines(expected, found).min())


@torch.inference_mode()
def verify_onnx(model: TFCLIP, path: Path, *, precision: Precision = "fp32") -> Verification:
    """Run ``path`` with onnxruntime on random clips and compare with ``model.embed`` in PyTorch (CPU, float32).

    Two batches of different sizes (the batch axis is dynamic): 3 clips with known cameras, then 2 with camera
    unknown (-1), against ``embed(clips, None)``. fp16 files run on CUDA when onnxruntime has it (they are meant for
    GPU runtimes), else on the CPU.
    """
    session = embedding_session(path, precision, use_gpu=precision == "fp16")
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    model = model.eval()
    expected, found = [], []
    for batch, camera_known in VERIFY_BATCHES:
        clips, camids = _example_inputs(model.config, batch, generator)
        if not camera_known:
            camids = torch.full((batch,), UNKNOWN_CAMERA)
        known = camids if model.config.num_cameras and camera_known else None
        expected.append(model.embed(clips, known).numpy())
        found.append(session.run(None, {"clips": clips.numpy(), "camids": camids.numpy()})[0])
    worst_diff, worst_cosine = _worst_rows(np.concatenate(expected), np.concatenate(found))
    num_clips = sum(batch for batch, _ in VERIFY_BATCHES)
    return Verification(worst_diff, worst_cosine, num_clips=num_clips, tolerance=TOLERANCES[precision])


def export_checkpoint(
    checkpoint: Path, out: Path, *, precision: Precision = "fp32", verify: bool = True, force: bool = False,
    fused_attention: bool = False,
) -> ExportResult:
    """``tfclip export``: write a checkpoint's test-time embedding as an ONNX file, checked against PyTorch.

    The file is written in a temporary folder beside ``out`` and moved into place only once verified (a weights
    file over 2 GB keeps its ``.data`` companion, whose name the model records, hence a folder, not a temp name).

    Args:
        fused_attention: write the image encoder's self-attention as onnxruntime's ``com.microsoft.Attention``
            (fp32 only; what ``--int8`` quantises), not standard ONNX operators: faster on onnxruntime, which
            alone runs the file then.

    Raises:
        UserError: ``out`` exists without ``force``; OutputError: ``out`` cannot be written; CheckpointError:
            ``checkpoint`` is not a tfclip checkpoint.
        VerificationError: onnxruntime's embeddings differ from PyTorch's beyond the precision's tolerance.
    """
    out = Path(out)
    assert not (fused_attention and precision == "fp16"), "onnxruntime's Attention runs float32 on the CPU"
    check_writable(out, force=force)
    state = load_checkpoint(checkpoint)
    model = model_from_checkpoint(state, "cpu")
    metadata = _metadata(state, model, sha256=file_sha256(checkpoint), precision=precision)
    with reporting_write_errors(out):
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = tempfile.TemporaryDirectory(prefix=f".{out.name}.", dir=out.parent)
    with staging as folder:
        staged = Path(folder) / out.name
        with reporting_write_errors(out):
            _write_onnx(model, staged, metadata=metadata, fused_attention=fused_attention)
        verification = verify_onnx(model, staged, precision=precision) if verify else None
        if verification is not None and not verification.passed:
            raise VerificationError(verification)
        with reporting_write_errors(out):
            for path in Path(folder).iterdir():
                os.replace(path, out.parent / path.name)
    logger.info("exported %s to %s", checkpoint, out)
    return ExportResult(path=out, metadata=metadata, verification=verification)


# -------------------------------------------------------------------------------------------------------- int8


@dataclass(frozen=True)
class Agreement:
    """How close one exported file's embeddings are to another's on the verification clips (cosine per row)."""

    min_cosine: float
    mean_cosine: float
    num_clips: int


INT8_OP_TYPES = ("MatMul", "Gemm", "Attention")
"""The operators ``--int8`` quantises: the transformer's linear layers and its self-attention's projection
(onnxruntime's ``Attention``, which becomes ``QAttention``), nearly all of its multiply-adds."""


def quantize_int8(source: Path, target: Path) -> None:
    """Write ``source`` (an fp32 export) to ``target`` with int8 weights, its tfclip metadata kept.

    onnxruntime's dynamic quantisation: MatMul / Gemm / Attention weights (:data:`INT8_OP_TYPES`) become int8, one
    scale per output channel, and activations are quantised per batch at run time, so no calibration data is
    needed. ``source`` should hold its self-attention as onnxruntime's ``Attention`` (``export_checkpoint(...,
    fused_attention=True)``, as ``export_int8`` writes it): quantised to ``QAttention``, ViT-B/16 runs 2-5% faster
    on one thread than with the attention in standard operators (``bench_export.py``). The
    patch embedding's Conv stays fp32: as ``ConvInteger`` it took 7% of ViT-B/16's int8 time for about 5% of its
    multiply-adds, and leaving it out made the model 8% faster (411 vs 444 ms a clip on one thread) and closer to
    fp32 (cosine 0.99997 vs 0.99995). Static QDQ quantisation calibrated on real clips was measured on the tiny
    config and left out: its embeddings were further from fp32 (min cosine 0.998 vs 0.99996) and slower. The graph
    is first shape-inferred and optimised (``quant_pre_process``), which onnxruntime recommends and which makes the
    int8 graph faster.
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    target = Path(target)
    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))  # the quantiser logs every tensor it skips to the root logger
    try:
        with tempfile.TemporaryDirectory(prefix=".int8-", dir=target.parent) as folder:
            prepared = Path(folder) / "prepared.onnx"
            quant_pre_process(str(source), str(prepared))
            quantize_dynamic(str(prepared), str(target), weight_type=QuantType.QInt8,
                             op_types_to_quantize=list(INT8_OP_TYPES), per_channel=True)
    finally:
        root.setLevel(level)
    record_props(target, {"precision": json.dumps("int8")})


def record_props(path: Path, props: dict[str, str]) -> None:
    """Add or replace entries of an ONNX file's ``metadata_props`` in place (the weights are rewritten too)."""
    model = onnx.load(str(path))
    kept = {prop.key: prop.value for prop in model.metadata_props if prop.key not in props}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**kept, **props})
    onnx.save(model, str(path))


def compare_onnx(reference: Path, candidate: Path) -> Agreement:
    """Cosine between two exported files' embeddings of the clips :func:`verify_onnx` uses (same seed, batches)."""
    config = ModelConfig.from_dict(read_metadata(reference).model_config)
    sessions = [embedding_session(path, read_metadata(path).precision, use_gpu=False) for path in (reference, candidate)]
    generator = torch.Generator().manual_seed(VERIFY_SEED)
    expected, found = [], []
    for batch, camera_known in VERIFY_BATCHES:
        clips, camids = _example_inputs(config, batch, generator)
        if not camera_known:
            camids = torch.full((batch,), UNKNOWN_CAMERA)
        feeds = {"clips": clips.numpy(), "camids": camids.numpy()}
        expected.append(sessions[0].run(None, feeds)[0])
        found.append(sessions[1].run(None, feeds)[0])
    cosine = _row_cosines(np.concatenate(expected), np.concatenate(found))
    return Agreement(float(cosine.min()), float(cosine.mean()), num_clips=len(cosine))


def _row_cosines(expected: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Cosine of each row pair of two embedding matrices [N, D] -> [N]."""
    return (expected * found).sum(axis=1) / (np.linalg.norm(expected, axis=1) * np.linalg.norm(found, axis=1) + 1e-12)


# ----------------------------------------------------------------------------------------------------- runtime


CACHE_KEY_LENGTH = 16  # hex digits of the cache key in an exported file's name
CACHED_EXPORT = re.compile(rf"\.[0-9a-f]{{{CACHE_KEY_LENGTH}}}\.onnx(\.data)?$")


def export_key(sha256: str, precision: Precision) -> str:
    """What an on-the-fly export depends on, hashed: the checkpoint's sha256 and the export settings (precision,
    opset, and the torch and tfclip versions whose exporter wrote it)."""
    settings = {"checkpoint_sha256": sha256, "precision": precision, "opset": OPSET, "torch": torch.__version__,
                "tfclip": __version__}
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:CACHE_KEY_LENGTH]


def cached_export(checkpoint: Path, *, precision: Precision = "fp32") -> Path:
    """The ONNX export of ``checkpoint`` kept beside it as ``NAME.KEY.onnx`` (KEY: :func:`export_key`), exported
    and verified as ``tfclip export`` does when no file has that key; older exports of ``NAME`` are removed then.

    Raises:
        CheckpointError: not a tfclip checkpoint. VerificationError: the export does not match PyTorch.
    """
    checkpoint = Path(checkpoint)
    out = checkpoint.with_name(f"{checkpoint.name}.{export_key(file_sha256(checkpoint), precision)}.onnx")
    if out.is_file():
        logger.info("reusing %s, exported from %s as it is now", out.name, checkpoint)
        return out
    logger.info("exporting %s to %s (once; kept until the checkpoint changes)", checkpoint, out.name)
    export_checkpoint(checkpoint, out, precision=precision, force=True)
    _remove_older_exports(checkpoint, keep=out)
    return out


def _remove_older_exports(checkpoint: Path, *, keep: Path) -> None:
    """Delete the cached exports of ``checkpoint`` (``NAME.KEY.onnx`` and a ``.data`` companion) but ``keep``'s."""
    for path in checkpoint.parent.glob(f"{glob.escape(checkpoint.name)}.*.onnx*"):
        if CACHED_EXPORT.fullmatch(path.name[len(checkpoint.name):]) and not path.name.startswith(keep.name):
            logger.info("removing %s, exported from an earlier %s", path.name, checkpoint.name)
            path.unlink(missing_ok=True)


def _is_writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


def load_embedder(path: Path, *, use_gpu: bool = False) -> OnnxEmbedder:
    """The onnxruntime embedder of an exported ``.onnx`` file, or of a checkpoint's export cached beside it
    (:func:`cached_export`; in a temporary folder when the checkpoint's folder is read-only).

    Raises:
        UserError: an ONNX file without tfclip metadata or of another input size; CheckpointError: a file that
        is neither. VerificationError: the export does not match PyTorch.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxEmbedder(path, use_gpu=use_gpu)
    if _is_writable(path.parent):
        return OnnxEmbedder(cached_export(path), use_gpu=use_gpu)
    logger.warning("%s is read-only: exporting %s to ONNX for this run only", path.parent, path.name)
    with tempfile.TemporaryDirectory(prefix="tfclip-export-") as folder:
        exported = export_checkpoint(path, Path(folder) / "model.onnx")
        return OnnxEmbedder(exported.path, use_gpu=use_gpu)  # the session holds the graph: the file can go
