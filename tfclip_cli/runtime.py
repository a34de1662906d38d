"""Running an exported model without torch: onnxruntime sessions, an export's metadata, and the numpy passes that
embed query clips and footage crops.

``tfclip export`` (:mod:`tfclip_cli.export`, which needs torch) writes a ``.onnx`` file whose ``metadata_props``
say how to feed it (:class:`OnnxMetadata`); :class:`OnnxEmbedder` runs it on numpy clips. With the frames of
:mod:`tfclip_cli.frames` this is the whole query side of an exported model: nothing here imports torch or
open_clip, so ``tfclip query -c M.onnx`` starts in about a second. The embedder also keeps the model's tensor
interface (``config``, ``embed``) for the passes of :mod:`tfclip_cli.inference`, which import torch anyway.
"""

from __future__ import annotations

import functools
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Iterable, Iterator, Literal, Sequence

import numpy as np
import onnxruntime

from tfclip_cli.errors import DataError, UserError
from tfclip_cli.frames import EmbedSampling, FrameTransform, crop_clips, tracklet_clips
from tfclip_cli.tables import Tracklet

if TYPE_CHECKING:
    import torch

    from tfclip_cli.model import ModelConfig

logger = logging.getLogger(__name__)

Weights = Literal["fp32", "fp16", "int8"]  # what an exported file holds; int8 files are quantised fp32 exports
UNKNOWN_CAMERA = -1  # a ``camids`` entry meaning "no SIE": embeds exactly like ``camids=None`` in PyTorch
FORMAT = "tfclip-embedding"
BATCH_SIZE = 32  # clips per onnxruntime call in the passes below

Backend = Literal["torch", "onnx"]
"""What runs a model: PyTorch on a checkpoint, or onnxruntime on an exported file (a checkpoint is exported first)."""
ClipBatchEmbedder = Callable[[np.ndarray], np.ndarray]
"""A model on a batch of normalised clips float32 ``[B, T, 3, H, W]`` without camera → float32 ``[B, D]``."""


def backend_for(path: Path, backend: Backend | None = None) -> Backend:
    """``backend`` when given, else what the file is: onnx for an ``.onnx`` export, torch for a checkpoint."""
    if backend is not None:
        return backend
    return "onnx" if Path(path).suffix.lower() == ".onnx" else "torch"


@dataclass(frozen=True)
class OnnxMetadata:
    """What an exported file says about itself (its ``metadata_props``, values JSON-encoded)."""

    image_size: tuple[int, int]  # (height, width) of every frame
    seq_len: int  # T, frames per clip
    normalization: str  # name in frames.NORMALIZATIONS
    mean: tuple[float, ...]  # per RGB channel, applied to pixels / 255
    std: tuple[float, ...]
    embedding: str  # before_bn or after_bn
    embedding_dim: int
    num_cameras: int  # camids 0..num_cameras-1 use SIE; -1 = unknown camera
    precision: Weights  # of the weights inside; inputs and output are float32 either way
    checkpoint_sha256: str
    tfclip_version: str
    model_config: dict[str, Any]  # ModelConfig.to_dict() of the checkpoint

    def to_props(self) -> dict[str, str]:
        """``metadata_props`` entries; ``format`` marks the file as a tfclip embedding."""
        values = {name: json.dumps(value) for name, value in vars(self).items()}
        return {"format": FORMAT, **values}

    @classmethod
    def from_props(cls, props: dict[str, str], path: Path) -> OnnxMetadata:
        """Inverse of :meth:`to_props`.

        Raises:
            UserError: the file has no tfclip metadata (not written by ``tfclip export``).
        """
        missing = [name for name in cls.__dataclass_fields__ if name not in props]
        if props.get("format") != FORMAT or missing:
            raise UserError(
                f"{path} has no tfclip metadata (missing {', '.join(missing) or 'format'}): expected a model "
                "written by `tfclip export`",
                hint=f"export one: tfclip export -c CHECKPOINT --out {path.name}",
            )
        values = {name: json.loads(props[name]) for name in cls.__dataclass_fields__}
        values["image_size"] = tuple(values["image_size"])
        values["mean"], values["std"] = tuple(values["mean"]), tuple(values["std"])
        return cls(**values)


def describe(metadata: OnnxMetadata) -> dict[str, str]:
    """The metadata as short display strings, in the order ``tfclip export`` prints them."""
    height, width = metadata.image_size
    return {
        "input": f"clips float32 [B, {metadata.seq_len}, 3, {height}, {width}] + camids int64 [B] (-1 = unknown)",
        "normalization": f"{metadata.normalization}: mean {list(metadata.mean)}, std {list(metadata.std)}",
        "embedding": f"{metadata.embedding}, {metadata.embedding_dim} dimensions, float32",
        "cameras": str(metadata.num_cameras),
        "weights": metadata.precision,
        "checkpoint sha256": metadata.checkpoint_sha256,
        "tfclip version": metadata.tfclip_version,
    }


def has_cuda() -> bool:
    """Whether this onnxruntime has its CUDA provider (the gpu extra)."""
    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def available_providers(*, use_gpu: bool) -> list[str]:
    """The onnxruntime execution providers to try, CUDA first when asked for and present, CPU always last."""
    present = onnxruntime.get_available_providers()
    wanted = ["CUDAExecutionProvider"] if use_gpu else []
    return [p for p in wanted if p in present] + ["CPUExecutionProvider"]


def onnx_session(
    path: Path,
    *,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int = 0,
    optimization: Literal["all", "extended"] = "all",
) -> onnxruntime.InferenceSession:
    """Open an ONNX model for inference.

    Args:
        path: the ``.onnx`` file.
        providers: onnxruntime execution providers, in order of preference.
        threads: intra-op threads; 0 lets onnxruntime choose.
        optimization: onnxruntime's graph optimisation level; "extended" leaves out the layout passes (which crash
            onnxruntime 1.32's CPU provider on fp16 transformer graphs).

    Raises:
        UserError: when the file is missing or is not a loadable ONNX model.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: expected an ONNX model file (.onnx)")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    if optimization == "extended":
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    try:
        return onnxruntime.InferenceSession(str(path), sess_options=options, providers=list(providers))
    except Exception as error:  # onnxruntime raises its own untyped errors: re-raise with the file named
        raise UserError(f"{path} is not a loadable ONNX model: {str(error).splitlines()[0]}") from error


def embedding_session(
    path: Path, precision: Weights, *, use_gpu: bool, threads: int = 0
) -> onnxruntime.InferenceSession:
    """A session for an exported embedding; fp16 graphs skip the layout passes (see :func:`onnx_session`)."""
    return onnx_session(path, providers=available_providers(use_gpu=use_gpu), threads=threads,
                        optimization="extended" if precision == "fp16" else "all")


MODEL_PROPS_FIELD = 14  # ModelProto.metadata_props in onnx/onnx.proto: repeated StringStringEntryProto {1: key, 2: value}


def _varint(file: BinaryIO, first: bytes) -> int:
    """A protobuf base-128 varint whose first byte is ``first``, the rest read from ``file``."""
    value = shift = 0
    byte = first
    while True:
        if not byte:
            raise ValueError("truncated protobuf data")
        value |= (byte[0] & 0x7F) << shift
        if not byte[0] & 0x80:
            return value
        byte, shift = file.read(1), shift + 7


def _fields(file: BinaryIO, wanted: set[int]) -> Iterator[tuple[int, bytes]]:
    """The (field number, bytes) of a protobuf message's length-delimited fields numbered in ``wanted``, read in the
    wire format up to the end of ``file``; every other field is skipped by seeking (a gigabyte graph costs nothing).

    Raises:
        ValueError: bytes that are not a protobuf message.
    """
    while first := file.read(1):
        key = _varint(file, first)
        number, wire = key >> 3, key & 7
        if number == 0 or wire not in (0, 1, 2, 5):
            raise ValueError(f"wire type {wire} of field {number} is not protobuf's")
        if wire == 0:
            _varint(file, file.read(1))
            continue
        size = _varint(file, file.read(1)) if wire == 2 else (8 if wire == 1 else 4)
        if wire == 2 and number in wanted:
            value = file.read(size)
            if len(value) < size:
                raise ValueError("truncated protobuf data")
            yield number, value
        else:
            file.seek(size, io.SEEK_CUR)


def _metadata_props(file: BinaryIO) -> dict[str, str]:
    """``ModelProto.metadata_props`` of an ONNX file.

    Read in the wire format, not with the onnx package: importing onnx loads ml_dtypes (1.4 s here), most of a
    torch-free query's start, for two strings per entry.
    """
    props = {}
    for _, entry in _fields(file, {MODEL_PROPS_FIELD}):
        texts = {number: text.decode() for number, text in _fields(io.BytesIO(entry), {1, 2})}
        props[texts.get(1, "")] = texts.get(2, "")
    return props


def read_metadata(path: Path) -> OnnxMetadata:
    """The tfclip metadata of an exported file, read without building a session (the weights are skipped, an
    external ``.data`` weights file never opened).

    Raises:
        UserError: the file is missing, not ONNX, or has no tfclip metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} not found: expected an ONNX model written by `tfclip export`")
    try:
        with path.open("rb") as file:
            props = _metadata_props(file)
            if file.tell() > path.stat().st_size:  # a skipped field claimed more bytes than the file holds
                raise ValueError("truncated protobuf data")
    except (ValueError, UnicodeDecodeError) as error:
        raise UserError(f"{path} is not a loadable ONNX model: {error}") from error
    return OnnxMetadata.from_props(props, path)


class OnnxEmbedder:
    """An exported embedding run by onnxruntime: numpy in and out (:meth:`embed_array`), and the model's tensor
    interface (``config``, ``embedding_dim``, ``eval``, ``embed``) so the passes of ``inference`` run it unchanged.

    Args:
        path: a file written by ``tfclip export``.
        use_gpu: run on onnxruntime's CUDA provider when it has one.
        threads: onnxruntime intra-op threads; 0 lets it choose.

    Raises:
        UserError: no tfclip metadata, or a graph input that does not match the metadata's input size.
    """

    def __init__(self, path: Path, *, use_gpu: bool = False, threads: int = 0) -> None:
        self.path = Path(path)
        self.metadata = read_metadata(self.path)
        self.session = embedding_session(self.path, self.metadata.precision, use_gpu=use_gpu, threads=threads)
        if use_gpu and "CUDAExecutionProvider" not in self.session.get_providers():
            logger.warning("onnxruntime has no CUDA provider here (install the gpu extra): %s runs on the CPU", path)
        self._check_inputs()

    @property
    def embedding_dim(self) -> int:
        return self.metadata.embedding_dim

    @property
    def seq_len(self) -> int:
        return self.metadata.seq_len

    @functools.cached_property
    def config(self) -> ModelConfig:
        """The checkpoint's ModelConfig (imports the model code, hence torch: for the tensor passes only)."""
        from tfclip_cli.model import ModelConfig

        return ModelConfig.from_dict(self.metadata.model_config)

    @property
    def transform(self) -> FrameTransform:
        """The test transform the file expects: its input size and normalisation."""
        return FrameTransform(self.metadata.image_size, normalization=self.metadata.normalization)

    def eval(self) -> OnnxEmbedder:
        """Nothing to switch (an exported graph is always in eval mode); here for the model's interface."""
        return self

    def _check_inputs(self) -> None:
        inputs = {node.name: node.shape for node in self.session.get_inputs()}
        expected = [self.metadata.seq_len, 3, *self.metadata.image_size]
        found = list(inputs.get("clips", [None])[1:])
        if set(inputs) != {"clips", "camids"} or found != expected:
            raise UserError(
                f"{self.path}: its graph takes {inputs}, but its tfclip metadata says clips "
                f"[B, {', '.join(map(str, expected))}] and camids [B]: the input size does not match",
                hint="re-export the checkpoint with `tfclip export`",
            )

    def embed_array(self, clips: np.ndarray, camids: np.ndarray | None = None) -> np.ndarray:
        """Clips float32 ``[B, T, 3, H, W]`` (normalised) → ``[B, embedding_dim]`` float32; ``camids`` None (or a
        model without SIE): camera unknown.

        Raises:
            ValueError: clips of another shape, or camera ids outside the model's cameras.
        """
        metadata = self.metadata
        if tuple(clips.shape[1:]) != (metadata.seq_len, 3, *metadata.image_size):
            raise ValueError(f"clips are {tuple(clips.shape)}, {self.path} takes [B, {metadata.seq_len}, 3, "
                             f"{metadata.image_size[0]}, {metadata.image_size[1]}]")
        if camids is None or metadata.num_cameras == 0:
            camids = np.full((clips.shape[0],), UNKNOWN_CAMERA)
        elif camids.min() < 0 or camids.max() >= metadata.num_cameras:
            raise ValueError(f"camera ids {camids.tolist()} outside 0..{metadata.num_cameras - 1}: pass None "
                             "for a camera the model was not trained on")
        feeds = {"clips": np.ascontiguousarray(clips, dtype=np.float32), "camids": camids.astype(np.int64)}
        return self.session.run(None, feeds)[0]

    def embed(self, clips: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """As :meth:`TFCLIP.embed`: clips [B, T, 3, H, W] -> [B, embedding_dim] float32 on the clips' device."""
        import torch

        found = self.embed_array(clips.detach().float().cpu().numpy(), None if camids is None else camids.cpu().numpy())
        return torch.from_numpy(found).to(clips.device)


def _packed(clip_sets: Iterable[np.ndarray], batch_size: int) -> Iterator[list[np.ndarray]]:
    """Consecutive tracklets' clip sets grouped to about ``batch_size`` clips a group (a long one may exceed it)."""
    group: list[np.ndarray] = []
    count = 0
    for clips in clip_sets:
        group.append(clips)
        count += len(clips)
        if count >= batch_size:
            yield group
            group, count = [], 0
    if group:
        yield group


def embed_clip_sets(embed: ClipBatchEmbedder, clip_sets: Iterable[np.ndarray], *, dim: int,
                    batch_size: int = BATCH_SIZE) -> np.ndarray:
    """``[N, D]`` float32: for each tracklet's clips ``[C, T, 3, H, W]`` the mean of its clip embeddings (before any
    normalisation, as inference averages dense clips), the clips of several tracklets run in one batch."""
    vectors = []
    for group in _packed(clip_sets, batch_size):
        features = embed(np.concatenate(group))  # [sum C, D]
        edges = np.cumsum([len(clips) for clips in group])[:-1]
        vectors.extend(part.mean(axis=0) for part in np.split(features, edges))
    return np.stack(vectors).astype(np.float32) if vectors else np.zeros((0, dim), dtype=np.float32)


def embed_tracklet_files(embed: ClipBatchEmbedder, tracklets: Sequence[Tracklet], *, sampling: EmbedSampling,
                         seq_len: int, transform: FrameTransform, dim: int, batch_size: int = BATCH_SIZE
                         ) -> np.ndarray:
    """Embeddings ``[N, D]`` of a few tracklets on disk (e.g. query clips), without camera embedding: every dense
    clip averaged, or the one ``rrs_test`` clip, as ``tfclip extract`` embeds.

    Raises:
        DataError: naming every tracklet that cannot be read.
    """
    clip_sets, failures = [], []
    for tracklet in tracklets:
        try:
            clip_sets.append(tracklet_clips(tracklet, sampling, seq_len=seq_len, transform=transform))
        except DataError as exc:
            failures.append(f"{tracklet.source}: {exc.message}")
    if failures:
        raise DataError("cannot read " + "; ".join(failures))
    return embed_clip_sets(embed, clip_sets, dim=dim, batch_size=batch_size)


def embed_crop_tracklets(embed: ClipBatchEmbedder, tracklets: Sequence[Sequence[np.ndarray]], *,
                         sampling: EmbedSampling, seq_len: int, transform: FrameTransform, dim: int,
                         batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Embeddings ``[N, D]`` of tracklets held in memory as RGB crops ``[h, w, 3]`` uint8 (cut from footage),
    without camera embedding, the clips of many tracklets in each batch; only the crops the sampling takes are
    resized and run (``rrs``: ``seq_len`` per tracklet)."""
    clip_sets = (crop_clips(crops, sampling, seq_len=seq_len, transform=transform) for crops in tracklets)
    return embed_clip_sets(embed, clip_sets, dim=dim, batch_size=batch_size)
