"""The model a run starts from and its CLIP-Memory file (``memory.pt`` in the run directory).

The memory is built once from the initial encoder, before any training, and refused later when its fingerprint
(train rows + initial weights + the settings that change it) no longer matches the recipe
(docs/fidelity.md#clip-memory).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from tfclip_cli.checkpoint import file_sha256, load_clip_weights
from tfclip_cli.clips import ClipTransform
from tfclip_cli.errors import CheckpointError, UserError
from tfclip_cli.inference import (
    DistContext,
    build_memory,
    load_memory,
    memory_fingerprint,
    process_device,
    save_memory,
)
from tfclip_cli.model import TFCLIP, ClipMemory, ModelConfig, build_model
from tfclip_cli.recipe import Recipe
from tfclip_cli.tables import Manifest, Tracklet, check_writable, read_manifest
from tfclip_cli.train.launch import barrier
from tfclip_cli.train.protocol import check_protocol

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemoryResult:
    """The CLIP-Memory file of a run and what it holds."""

    path: Path
    num_identities: int
    dim: int
    fingerprint: str


def model_config(recipe: Recipe, manifest: Manifest) -> ModelConfig:
    """The architecture from the recipe; classes from the train split, cameras from the whole manifest (so test
    cameras have an SIE row too; the reference counts train cameras, which are the same on its datasets)."""
    train = manifest.table[manifest.table["split"] == "train"]
    model = recipe.model
    return ModelConfig(
        backbone=model.backbone,
        image_size=recipe.data.image_size,
        seq_len=recipe.data.seq_len,
        num_classes=int(train["pid"].nunique()),
        num_cameras=int(manifest.table["camid"].max()) + 1 if model.sie else 0,
        sie_coe=model.sie_coe,
        camera_dataset=manifest.info.dataset if model.sie else "",
        temporal=model.temporal,
        tmd_layers=model.tmd_layers if model.temporal == "tmd" else 0,
        has_memory=recipe.loss.v2m > 0,
        ssp_layers=model.ssp_layers,
        embedding=model.embedding,
    )


def initial_model(recipe: Recipe, config: ModelConfig, device: torch.device) -> TFCLIP:
    """The model before training: seeded random init, then the recipe's CLIP weights."""
    torch.manual_seed(recipe.run.seed)
    model = build_model(config)
    load_clip_weights(model, recipe.model.pretrained)
    return model.to(device)


def _weights_identity(recipe: Recipe, config: ModelConfig) -> str:
    """What the initial encoder is: the weight file's sha256, ``openai`` + backbone, or the seeded random init."""
    pretrained = recipe.model.pretrained
    if pretrained == "openai":
        return f"openai:{config.backbone}"
    if pretrained == "none":
        return f"none:seed={recipe.run.seed}:{sorted(config.to_dict().items())}"
    return f"file:{file_sha256(Path(pretrained))}"


def _memory_fingerprint(recipe: Recipe, config: ModelConfig, train: Sequence[Tracklet]) -> str:
    settings = {
        "backbone": config.backbone,
        "image_size": list(config.image_size),
        "seq_len": config.seq_len,
        "normalization": recipe.data.normalization,
    }
    return memory_fingerprint(train, weights=_weights_identity(recipe, config), settings=settings)


def eval_transform(recipe: Recipe) -> ClipTransform:
    return ClipTransform(recipe.data.image_size, normalization=recipe.data.normalization, is_train=False)


def ensure_memory(recipe: Recipe, model: TFCLIP, train: Sequence[Tracklet], *, context: DistContext) -> ClipMemory:
    """Load ``memory.pt`` from the run directory, or build it (rank 0) from ``model`` as it is now; under torchrun
    the other ranks wait and read the file.

    Raises:
        CheckpointError: when an existing memory.pt was built from other data or weights.
    """
    path = recipe.run.output_dir / "memory.pt"
    fingerprint = _memory_fingerprint(recipe, model.config, train)
    if context.is_main and not path.exists():
        logger.info("building the CLIP-Memory from %d train tracklets", len(train))
        memory = build_memory(
            model, train, transform=eval_transform(recipe), device=context.device, fingerprint=fingerprint,
            workers=recipe.data.workers, precision=recipe.solver.precision,
        )
        save_memory(memory, path)
    barrier(context)
    memory = load_memory(path)
    if memory.fingerprint != fingerprint:
        raise CheckpointError(
            f"{path} was built from other train data or initial weights (fingerprint {memory.fingerprint[:12]}…, "
            f"this recipe gives {fingerprint[:12]}…)",
            hint="delete it, or run `tfclip build-memory RECIPE --force`, or choose another run.output_dir",
        )
    return memory


def build_memory_file(recipe: Recipe, *, force: bool = False) -> MemoryResult:
    """``tfclip build-memory``: compute the CLIP-Memory of a recipe into ``run.output_dir/memory.pt``.

    Raises:
        UserError: when memory.pt exists and ``force`` is false; OutputError: when it cannot be written.
    """
    path = recipe.run.output_dir / "memory.pt"
    if recipe.loss.v2m == 0:
        raise UserError("loss.v2m is 0: this recipe trains without a CLIP-Memory, so there is none to build",
                        hint="set loss.v2m above 0 to train against a CLIP-Memory")
    if path.exists() and not force:
        raise UserError(f"{path} already exists", hint="pass --force to rebuild it")
    check_writable(path, force=True)
    context = DistContext(rank=0, world_size=1, device=process_device())
    manifest = read_manifest(recipe.data.manifest)
    check_protocol(recipe, manifest)
    train = manifest.tracklets("train")
    model = initial_model(recipe, model_config(recipe, manifest), context.device)
    path.unlink(missing_ok=True)
    memory = ensure_memory(recipe, model, train, context=context)
    return MemoryResult(path=path, num_identities=len(memory.pid_to_label), dim=int(memory.features.shape[1]),
                        fingerprint=memory.fingerprint)
