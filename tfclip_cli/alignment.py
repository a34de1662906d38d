"""``tfclip inspect-memory``: what a checkpoint's CLIP-Memory is, and whether it stands where CLIP's text would.

TF-CLIP replaces CLIP's text features with CLIP-Memory, the mean projected image feature of each identity, on the
premise that image and text features of CLIP share one space. This measures the memory itself (per-identity norms,
the cosine between identities) and, given the full CLIP weights, the cosine between each identity's memory and
CLIP's text embedding of generic person prompts, against the cosine with random directions: in D dimensions a
random direction has cosine about 0 ± 1/sqrt(D) with anything, so a memory no closer to the prompts than that does
not stand where the text would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from tfclip_cli.checkpoint import Checkpoint, load_checkpoint, load_text_encoder
from tfclip_cli.errors import CheckpointError, UserError
from tfclip_cli.model import backbone_spec
from tfclip_cli.model.text import encode_prompts

PROMPTS = ("A photo of a person.", "A photo of a pedestrian.", "A photo of a man.", "A photo of a woman.")
RANDOM_DIRECTIONS = 1000  # random unit vectors of the baseline


@dataclass(frozen=True)
class Distribution:
    """Summary of a set of values."""

    mean: float
    std: float
    min: float
    p05: float
    median: float
    p95: float
    max: float
    count: int

    @classmethod
    def of(cls, values: torch.Tensor) -> Distribution:
        values = values.double().flatten()
        quantiles = torch.quantile(values, torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)).tolist()
        return cls(mean=values.mean().item(), std=values.std().item() if values.numel() > 1 else 0.0,
                   min=values.min().item(), p05=quantiles[0], median=quantiles[1], p95=quantiles[2],
                   max=values.max().item(), count=values.numel())


@dataclass(frozen=True)
class PromptAlignment:
    """Cosines between every identity's memory and one prompt's text embedding."""

    prompt: str
    cosine: Distribution  # over the identities
    per_identity: dict[int, float]  # pid -> cosine


@dataclass(frozen=True)
class MemoryInspection:
    """What ``inspect-memory`` reports."""

    checkpoint: Path
    num_identities: int
    dim: int
    norms: Distribution  # L2 norm of each identity's memory row
    per_identity_norm: dict[int, float]  # pid -> norm
    inter_identity_cosine: Distribution | None  # over the Y(Y-1)/2 pairs of distinct identities (None for one)
    prompts: tuple[PromptAlignment, ...]  # empty without CLIP weights
    random_cosine: Distribution | None  # memory rows against random unit directions (the baseline)
    random_expected_std: float  # 1/sqrt(D): the spread of a random direction's cosine with any vector


def _memory(checkpoint: Path) -> Checkpoint:
    """A checkpoint that holds a CLIP-Memory."""
    state = load_checkpoint(checkpoint)
    if state.memory is None:
        raise UserError(f"{checkpoint} holds no CLIP-Memory (trained with loss.v2m 0, or imported)",
                        hint="inspect a checkpoint written by `tfclip train` with loss.v2m > 0")
    return state


def _pairwise_cosines(features: torch.Tensor) -> torch.Tensor:
    """Cosines of all pairs of distinct rows [Y(Y-1)/2]."""
    unit = F.normalize(features, dim=1)
    rows, columns = torch.triu_indices(len(unit), len(unit), offset=1)
    return (unit @ unit.T)[rows, columns]


def inspect_memory(checkpoint: Path, *, clip_weights: Path | None = None, prompts: Sequence[str] = PROMPTS,
                   seed: int = 0) -> MemoryInspection:
    """Measure a checkpoint's CLIP-Memory, and with ``clip_weights`` its cosine to CLIP's text of ``prompts``.

    Args:
        checkpoint: a tfclip checkpoint with a memory.
        clip_weights: full CLIP weights with the text tower (OpenAI's ``ViT-B-16.pt``, an open_clip state dict).
        prompts: the texts to compare with.
        seed: seeds the random directions of the baseline.

    Raises:
        UserError: no memory in the checkpoint, or the text embedding's width is not the memory's.
    """
    state = _memory(checkpoint)
    features = state.memory.float()
    by_row = {label: pid for pid, label in state.pid_to_label.items()} or {row: row for row in range(len(features))}
    quick_gelu = backbone_spec(state.model_config.get("backbone", "ViT-B-16")).quick_gelu
    norms = features.norm(dim=1)
    dim = features.shape[1]
    alignments: tuple[PromptAlignment, ...] = ()
    random_cosine = None
    if clip_weights is not None:
        text = encode_prompts(load_text_encoder(clip_weights, quick_gelu=quick_gelu), list(prompts))  # [P, D]
        if text.shape[1] != dim:
            raise CheckpointError(f"{clip_weights}: text embeddings are {text.shape[1]}-d, the memory {dim}-d",
                                  hint="pass the CLIP weights of the checkpoint's backbone")
        cosines = F.normalize(features, dim=1) @ text.T  # [Y, P]
        alignments = tuple(
            PromptAlignment(prompt=prompt, cosine=Distribution.of(cosines[:, index]),
                            per_identity={by_row[row]: float(cosines[row, index]) for row in range(len(features))})
            for index, prompt in enumerate(prompts)
        )
        generator = torch.Generator().manual_seed(seed)
        directions = F.normalize(torch.randn(RANDOM_DIRECTIONS, dim, generator=generator), dim=1)
        random_cosine = Distribution.of(F.normalize(features, dim=1) @ directions.T)
    return MemoryInspection(
        checkpoint=Path(checkpoint), num_identities=len(features), dim=dim, norms=Distribution.of(norms),
        per_identity_norm={by_row[row]: float(norms[row]) for row in range(len(features))},
        inter_identity_cosine=Distribution.of(_pairwise_cosines(features)) if len(features) > 1 else None,
        prompts=alignments, random_cosine=random_cosine, random_expected_std=1 / math.sqrt(dim),
    )
