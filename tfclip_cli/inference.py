"""No-grad passes of a TF-CLIP model over tracklets: test embeddings, the CLIP-Memory, and query clips.

Tracklets are decoded in DataLoader workers, one tracklet per item; the main process packs the clips of several
tracklets into one batch of at most ``batch_size`` clips, runs the model in ``inference_mode`` at the precision
asked (fp32 unless told otherwise, as the reference evaluates) and splits the result back per tracklet. Under
``torchrun`` :func:`extract_to_file` gives each rank a shard and rank 0 merges them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch.utils.data import Dataset

from tfclip_cli import __version__, display
from tfclip_cli.checkpoint import Checkpoint, file_sha256, load_checkpoint, model_from_checkpoint, write_torch_file
from tfclip_cli.clips import ClipDataset, ClipTransform, DenseClipDataset, TrackletClips, build_loader
from tfclip_cli.errors import CheckpointError, DataError, UserError
from tfclip_cli.export import load_embedder
from tfclip_cli.frames import EmbedSampling, FrameTransform, tracklet_from_path
from tfclip_cli.runtime import (
    Backend,
    ClipBatchEmbedder,
    OnnxEmbedder,
    backend_for,
    embed_tracklet_files,
)
from tfclip_cli.model import TFCLIP, ClipMemory, shares_cameras
from tfclip_cli.recipe import Precision
from tfclip_cli.tables import (
    SPLITS,
    Embeddings,
    Tracklet,
    NON_UTF8_REASON,
    check_writable,
    non_utf8_name,
    read_manifest,
    tracklet_table,
    write_embeddings,
)

logger = logging.getLogger(__name__)

Sampling = EmbedSampling
Embedder = TFCLIP | OnnxEmbedder  # anything with config, embedding_dim, eval() and embed(clips, camids)


@dataclass(frozen=True)
class Extraction:
    """Embeddings of the readable tracklets, and one ``"source: reason"`` line per unreadable one (skipped)."""

    embeddings: Embeddings
    failures: tuple[str, ...]


def resolve_precision(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision setting on ``device`` (None = fp32).

    ``fp16`` is the reference's (fp16 autocast; training adds a grad scaler) and runs fp32 on a device without CUDA
    (CPU fp16 autocast is slower than fp32; ``tfclip train`` says so in its protocol summary); ``bf16`` is bf16
    anywhere; ``auto`` (tfclip's choice) is bf16 on CUDA when supported, else fp16, and fp32 on CPU.
    """
    if precision == "fp32" or (precision in ("auto", "fp16") and device.type != "cuda"):
        return None
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Autocast at ``precision`` on ``device`` (see :func:`resolve_precision`); nothing for fp32."""
    dtype = resolve_precision(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


class _RrsClips(Dataset):
    """One ``rrs_test`` clip per tracklet as :class:`TrackletClips` ``[1, T, 3, H, W]``; errors are returned."""

    def __init__(self, tracklets: Sequence[Tracklet], *, seq_len: int, transform: ClipTransform) -> None:
        self.tracklets = list(tracklets)
        self.clips = ClipDataset(self.tracklets, seq_len=seq_len, sampling="rrs_test", transform=transform)

    def __len__(self) -> int:
        return len(self.tracklets)

    def __getitem__(self, index: int) -> TrackletClips:
        tracklet = self.tracklets[index]
        try:
            frames = self.clips[index].frames[None]
            error = None
        except DataError as exc:
            frames, error = torch.empty(0), exc.message
        return TrackletClips(
            clips=frames, pid=tracklet.pid, camid=tracklet.camid, tracklet_id=tracklet.tracklet_id, error=error
        )


def _clip_dataset(
    tracklets: Sequence[Tracklet], sampling: Sampling, *, seq_len: int, transform: ClipTransform
) -> Dataset:
    if sampling == "dense":
        return DenseClipDataset(tracklets, seq_len=seq_len, transform=transform)
    return _RrsClips(tracklets, seq_len=seq_len, transform=transform)


def _packed(items: Iterable[TrackletClips], batch_size: int) -> Iterator[list[TrackletClips]]:
    """Group readable tracklets so each group holds about ``batch_size`` clips (a long tracklet may exceed it)."""
    group: list[TrackletClips] = []
    count = 0
    for item in items:
        group.append(item)
        count += len(item.clips)
        if count >= batch_size:
            yield group
            group, count = [], 0
    if group:
        yield group


def _forward_group(
    model: TFCLIP, group: list[TrackletClips], *, device: torch.device, use_camids: bool, precision: Precision
) -> list[torch.Tensor]:
    """Embed all clips of a group in one pass; returns one ``[D]`` float32 per tracklet, the mean of its clips.

    Clips are averaged before any normalisation (reference: processor_clipreid_stage2.py do_inference_dense;
    docs/fidelity.md#test-time-features).
    """
    clips = torch.cat([item.clips for item in group]).to(device, non_blocking=True)  # [sum C, T, 3, H, W]
    camids = None
    if use_camids:
        counts = torch.tensor([len(item.clips) for item in group])
        camids = torch.repeat_interleave(torch.tensor([item.camid for item in group]), counts).to(device)
    with autocast(device, precision):
        features = model.embed(clips, camids=camids).float()  # [sum C, D]
    parts = features.split([len(item.clips) for item in group])
    return [part.mean(dim=0).cpu() for part in parts]


@torch.inference_mode()
def extract_embeddings(
    model: Embedder,
    tracklets: Sequence[Tracklet],
    *,
    sampling: Sampling,
    transform: ClipTransform,
    device: torch.device,
    batch_size: int = 32,
    workers: int = 2,
    use_camids: bool = True,
    precision: Precision = "fp32",
) -> Extraction:
    """Embed every tracklet: ``dense`` averages all consecutive clips, ``rrs`` uses one ``rrs_test`` clip.

    Args:
        use_camids: feed each tracklet's camera to the SIE embedding (when the model has one); false for clips
            from unknown cameras.
        precision: fp32 as the reference evaluates (processor L209-222, L272-282), or autocast (fp16, bf16, auto).

    Returns:
        An :class:`Extraction`; unreadable tracklets are listed in ``failures`` and left out of the embeddings.
    """
    model.eval()
    seq_len = model.config.seq_len
    loader = build_loader(
        _clip_dataset(tracklets, sampling, seq_len=seq_len, transform=transform), workers=workers, device=device
    )
    use_camids = use_camids and _has_camera_rows(model, tracklets)
    by_id = {t.tracklet_id: t for t in tracklets}
    vectors: dict[str, torch.Tensor] = {}
    failures: list[str] = []
    for group in _packed(_readable(loader, by_id, failures, total=len(tracklets)), batch_size):
        vectors_of_group = _forward_group(model, group, device=device, use_camids=use_camids, precision=precision)
        for item, vector in zip(group, vectors_of_group):
            vectors[item.tracklet_id] = vector
    kept = [t for t in tracklets if t.tracklet_id in vectors]
    return Extraction(embeddings=_embeddings(kept, vectors, model), failures=tuple(failures))


def _has_camera_rows(model: TFCLIP, tracklets: Sequence[Tracklet]) -> bool:
    """Whether the model has an SIE row for every tracklet's camera; if not, SIE is left out (with a warning)."""
    cameras = model.config.num_cameras
    if cameras == 0:
        return False
    outside = sorted({t.camid for t in tracklets if not 0 <= t.camid < cameras})
    if outside:
        logger.warning("camera ids %s have no SIE row (model has %d cameras): embedding without SIE", outside, cameras)
    return not outside


def _readable(
    loader: Iterable[TrackletClips], by_id: dict[str, Tracklet], failures: list[str], *, total: int
) -> Iterator[TrackletClips]:
    """The loader's items with a progress bar; unreadable ones are logged and recorded in ``failures``."""
    for item in display.progress(loader, "embedding", total=total, unit="tracklets"):
        if item.error is None and len(item.clips):
            yield item
            continue
        source = by_id[item.tracklet_id].source
        failures.append(f"{source}: {item.error or 'no frames'}")
        logger.warning("skipped unreadable tracklet %s: %s", source, item.error)


def _embeddings(tracklets: Sequence[Tracklet], vectors: dict[str, torch.Tensor], model: TFCLIP) -> Embeddings:
    rows = tracklet_table(tracklets)
    matrix = np.zeros((0, model.embedding_dim), dtype=np.float32)
    if tracklets:
        matrix = np.stack([vectors[t.tracklet_id].numpy() for t in tracklets]).astype(np.float32)
    return Embeddings(rows=rows, vectors=matrix, info={})


def embed_tracklets(
    model: Embedder,
    tracklets: Sequence[Tracklet],
    *,
    sampling: Sampling,
    transform: ClipTransform | FrameTransform,
    device: torch.device,
) -> np.ndarray:
    """Embeddings ``[N, D]`` of a few tracklets (e.g. query clips) in one batch, without camera embedding, through
    the numpy clips of :func:`tfclip_cli.runtime.embed_tracklet_files` (the query path with or without torch).

    Raises:
        DataError: naming every tracklet that cannot be read.
    """
    test = FrameTransform(transform.image_size, normalization=transform.normalization)
    return embed_tracklet_files(batch_embedder(model, device), tracklets, sampling=sampling,
                                seq_len=model.config.seq_len, transform=test, dim=model.embedding_dim,
                                batch_size=max(1, len(tracklets)))


def batch_embedder(model: Embedder, device: torch.device) -> ClipBatchEmbedder:
    """``model`` on numpy clips ``[B, T, 3, H, W]`` → ``[B, D]`` float32, fp32 without camera embedding (an
    OnnxEmbedder runs its own numpy interface, never through tensors)."""
    if isinstance(model, OnnxEmbedder):
        return model.embed_array
    model.eval()

    @torch.inference_mode()
    def embed(clips: np.ndarray) -> np.ndarray:
        return model.embed(torch.from_numpy(clips).to(device)).float().cpu().numpy()

    return embed


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to embed clips (PyTorch, or an exported file run by onnxruntime), the test transform it
    expects, and the sha256 of the checkpoint its weights come from (what embeddings tables and indexes record)."""

    model: Embedder
    transform: ClipTransform
    checkpoint_sha256: str


def load_model(checkpoint: Path, backend: Backend | None, device: torch.device) -> LoadedModel:
    """The model of a checkpoint or exported ``.onnx`` file for ``backend`` (None: the file's,
    :func:`~tfclip_cli.runtime.backend_for`; onnx on a checkpoint exports it first).

    Raises:
        UserError: an ``.onnx`` file with the torch backend; CheckpointError / UserError from the loaders.
    """
    checkpoint = Path(checkpoint)
    if backend_for(checkpoint, backend) == "onnx":
        embedder = load_embedder(checkpoint, use_gpu=device.type == "cuda")
        metadata = embedder.metadata
        transform = ClipTransform(metadata.image_size, normalization=metadata.normalization, is_train=False)
        return LoadedModel(embedder, transform, metadata.checkpoint_sha256)
    if checkpoint.suffix.lower() == ".onnx":
        raise UserError(f"{checkpoint} is an ONNX model: the torch backend needs a tfclip checkpoint (.ckpt)",
                        hint="run it with onnxruntime: --backend onnx")
    state = load_checkpoint(checkpoint)
    return LoadedModel(model_from_checkpoint(state, device), transform_for(state), file_sha256(checkpoint))


def transform_for(checkpoint: Checkpoint) -> ClipTransform:
    """The test transform a checkpoint was trained with (size from its model config, its normalisation)."""
    height, width = checkpoint.model_config["image_size"]
    return ClipTransform(image_size=(height, width), normalization=checkpoint.normalization, is_train=False)


def label_map(tracklets: Iterable[Tracklet]) -> dict[int, int]:
    """Train pid → classifier label, 0..Y-1 in increasing pid order (reference: datasets/set/mars.py L153-170)."""
    return {pid: label for label, pid in enumerate(sorted({t.pid for t in tracklets}))}


def memory_fingerprint(tracklets: Sequence[Tracklet], *, weights: str, settings: dict) -> str:
    """sha256 over the train rows (id, pid, camera, frames, source), the initial weights' identity and the settings
    that change the memory (backbone, image size, seq_len, normalisation)."""
    rows = sorted((t.tracklet_id, t.pid, t.camid, t.num_frames, t.source) for t in tracklets)
    payload = json.dumps({"rows": rows, "weights": weights, "settings": settings}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()


@torch.inference_mode()
def build_memory(
    model: TFCLIP,
    tracklets: Sequence[Tracklet],
    *,
    transform: ClipTransform,
    device: torch.device,
    fingerprint: str,
    workers: int = 2,
    batch_size: int = 32,
    precision: Precision = "fp16",
) -> ClipMemory:
    """The CLIP-Memory: per identity, the mean over its tracklets of the mean over all dense clips of the projected
    CLS averaged over T, from ``model`` as given (the pretrained encoder, before training), without SIE.

    Features are keyed by tracklet id, never by batch position (docs/fidelity.md#clip-memory, the X-TFCLIP cache trap).
    ``precision`` defaults to the reference's fp16 autocast (processor L83).
    Reference: processor_clipreid_stage2.py L70-100; model/make_model_clipreid.py L201-216.

    Raises:
        DataError: when a train tracklet cannot be read.
    """
    model.eval()
    dataset = DenseClipDataset(tracklets, seq_len=model.config.seq_len, transform=transform)
    by_id = {t.tracklet_id: t for t in tracklets}
    failures: list[str] = []
    per_tracklet: dict[str, torch.Tensor] = {}
    loader = build_loader(dataset, workers=workers, device=device)
    for group in _packed(_readable(loader, by_id, failures, total=len(tracklets)), batch_size):
        clips = torch.cat([item.clips for item in group]).to(device, non_blocking=True)
        with autocast(device, precision):
            features = model.memory_features(clips).float()  # [sum C, D]
        for item, part in zip(group, features.split([len(item.clips) for item in group])):
            per_tracklet[item.tracklet_id] = part.mean(dim=0).cpu()
    if failures:
        raise DataError(f"cannot build the CLIP-Memory: {len(failures)} unreadable train tracklet(s): {failures[0]}")
    return _identity_means(per_tracklet, by_id, fingerprint)


def _identity_means(per_tracklet: dict[str, torch.Tensor], by_id: dict[str, Tracklet], fingerprint: str) -> ClipMemory:
    """Rows in label order (pids sorted): the mean of each identity's tracklet vectors ``[Y, D]``, not normalised."""
    pid_to_label = label_map(by_id.values())
    grouped: dict[int, list[torch.Tensor]] = {pid: [] for pid in pid_to_label}
    for tracklet_id, vector in per_tracklet.items():
        grouped[by_id[tracklet_id].pid].append(vector)
    features = torch.stack([torch.stack(grouped[pid]).mean(dim=0) for pid in pid_to_label])
    return ClipMemory(features=features, pid_to_label=pid_to_label, fingerprint=fingerprint)


def save_memory(memory: ClipMemory, path: Path) -> None:
    """Write a CLIP-Memory (features, pid → label, fingerprint) atomically, loadable with ``weights_only=True``."""
    payload = {"features": memory.features.cpu(), "pid_to_label": dict(memory.pid_to_label),
               "fingerprint": memory.fingerprint}
    write_torch_file(payload, path, force=True)


def load_memory(path: Path) -> ClipMemory:
    """Read a file written by :func:`save_memory`.

    Raises:
        CheckpointError: when it is missing or not a CLIP-Memory file.
    """
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return ClipMemory(features=payload["features"], pid_to_label=dict(payload["pid_to_label"]),
                          fingerprint=str(payload["fingerprint"]))
    except Exception as exc:  # torch raises many types for missing, truncated or foreign files
        raise CheckpointError(f"{path} is not a readable CLIP-Memory file ({exc})".splitlines()[0],
                              hint="rebuild it with `tfclip build-memory RECIPE --force`") from exc


# ------------------------------------------------------------------------------------------ processes and files


@dataclass(frozen=True)
class DistContext:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def process_device() -> torch.device:
    """This process's device: its torchrun-local CUDA device, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def start_distributed() -> DistContext:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    device = process_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = dist.get_rank() if dist.is_initialized() else 0
    return DistContext(rank=rank, world_size=world_size, device=device)


def _gathered(extraction: Extraction, order: Sequence[Tracklet], context: DistContext) -> Extraction:
    """Every rank's shard merged back into ``order`` (on every rank, so all ranks see the same failures)."""
    if context.world_size == 1:
        return extraction
    shards: list[Extraction | None] = [None] * context.world_size
    dist.all_gather_object(shards, extraction)
    position = {t.tracklet_id: i for i, t in enumerate(order)}
    rows = pd.concat([shard.embeddings.rows for shard in shards], ignore_index=True)
    vectors = np.concatenate([shard.embeddings.vectors for shard in shards])
    ranking = np.argsort(rows["tracklet_id"].map(position).to_numpy(), kind="stable")
    merged = Embeddings(rows=rows.iloc[ranking].reset_index(drop=True), vectors=vectors[ranking], info={})
    return Extraction(embeddings=merged, failures=tuple(f for shard in shards for f in shard.failures))


@dataclass(frozen=True)
class _Inputs:
    """Tracklets to embed, sources that could not even be opened, and the table metadata they bring."""

    tracklets: list[Tracklet]
    failures: list[str]
    info: dict


def _manifest_inputs(path: Path, splits: Sequence[str]) -> _Inputs:
    unknown = [split for split in splits if split not in SPLITS]
    if unknown:
        raise UserError(f"--split {','.join(splits)}: unknown split {unknown[0]!r}; allowed: {', '.join(SPLITS)}")
    manifest = read_manifest(path)
    tracklets = [t for split in splits for t in manifest.tracklets(split)]
    if not tracklets:
        raise DataError(f"{path} has no {'/'.join(splits)} tracklets; it holds {manifest.split_counts()}")
    info = {"manifest": str(Path(path).resolve()), "dataset": manifest.info.dataset,
            "gallery_rule": manifest.info.gallery_rule}
    return _Inputs(tracklets, [], info)


def _path_inputs(paths: Sequence[Path], camid: int | None) -> _Inputs:
    """Tracklets of unknown identity from videos and frame folders; unopenable ones become failures."""
    tracklets, failures = [], []
    for path in paths:
        try:
            tracklet = tracklet_from_path(path, camid=-1 if camid is None else camid, split="gallery")
            if non_utf8_name(tracklet) is not None:
                raise DataError(NON_UTF8_REASON)
            tracklets.append(tracklet)
        except DataError as exc:
            failures.append(f"{path}: {exc.message}")
    return _Inputs(tracklets, failures, {"sources": [str(Path(p).resolve()) for p in paths]})


def extract_to_file(
    checkpoint: Path,
    out: Path,
    *,
    manifest: Path | None = None,
    splits: Sequence[str] = ("query", "gallery"),
    paths: Sequence[Path] = (),
    camid: int | None = None,
    sampling: Sampling = "dense",
    batch_size: int = 32,
    workers: int = 4,
    skip_bad: bool = False,
    force: bool = False,
    precision: Precision = "fp32",
    backend: Backend | None = None,
) -> Extraction:
    """``tfclip extract``: embed a manifest's splits (or videos / frame folders) and write an embeddings table.

    Under torchrun each rank embeds a shard and rank 0 writes the merged table. The table's metadata holds the
    checkpoint path and sha256, the sampling, the precision it ran at, the embedding type, the backend and the
    manifest's gallery rule; ``checkpoint`` may be an exported ``.onnx`` file (``backend`` None follows the file;
    its sha256 is then the checkpoint's it was exported from, so the table stays comparable with torch-backend
    tables).

    Raises:
        UserError: ``out`` exists without ``force``; OutputError: ``out`` cannot be written (checked first);
        DataError: unreadable tracklets without ``skip_bad`` (nothing is written), or nothing readable at all.
    """
    check_writable(out, force=force)
    inputs = _manifest_inputs(manifest, splits) if manifest is not None else _path_inputs(paths, camid)
    context = start_distributed()
    try:
        loaded = load_model(checkpoint, backend, context.device)
        shard = extract_embeddings(
            loaded.model, inputs.tracklets[context.rank :: context.world_size], sampling=sampling,
            transform=loaded.transform, device=context.device, batch_size=batch_size, workers=workers,
            use_camids=_uses_cameras(loaded.model, inputs.info, camid), precision=precision,
        )
        extraction = _gathered(shard, inputs.tracklets, context)
        failures = tuple(inputs.failures) + extraction.failures
        _check_failures(failures, len(extraction.embeddings.rows), out=out, skip_bad=skip_bad)
        ran = precision if resolve_precision(precision, context.device) is not None else "fp32"
        info = {**inputs.info, **_provenance(Path(checkpoint), loaded, sampling), "precision": ran}
        embeddings = dataclasses.replace(extraction.embeddings, info=info)
        if context.is_main:
            write_embeddings(embeddings, out, force=force)
        return Extraction(embeddings=embeddings, failures=failures)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _uses_cameras(model: Embedder, info: dict, camid: int | None) -> bool:
    """Camera embedding for a manifest of the dataset the model was trained on, or for videos given a --camid; a
    manifest of another dataset (cross-dataset evaluation) has cameras the model never saw, so none."""
    if "dataset" not in info:
        return camid is not None
    if not shares_cameras(model.config, info["dataset"]) and model.config.num_cameras:
        logger.info("%s is not %s, whose cameras the model was trained on: embedding without camera embedding",
                    info["dataset"], model.config.camera_dataset)
        return False
    return True


def _provenance(checkpoint: Path, loaded: LoadedModel, sampling: Sampling) -> dict:
    """What an embeddings table records about how it was made."""
    config = loaded.model.config
    return {"checkpoint": str(checkpoint.resolve()), "checkpoint_sha256": loaded.checkpoint_sha256,
            "sampling": sampling, "embedding": config.embedding, "seq_len": config.seq_len,
            "backend": "onnx" if isinstance(loaded.model, OnnxEmbedder) else "torch", "tfclip_version": __version__}


def _check_failures(failures: Sequence[str], num_embedded: int, *, out: Path, skip_bad: bool) -> None:
    if num_embedded == 0:
        raise DataError(f"no readable tracklet: nothing written to {out}; " + "; ".join(failures[:5]))
    if failures and not skip_bad:
        listed = "\n  ".join(failures)
        raise DataError(f"{len(failures)} unreadable tracklet(s), nothing written to {out}:\n  {listed}",
                        hint="pass --skip-bad to write the embeddings of the others")
