"""TF-CLIP's training loss, reported part by part: ID, frame ID, triplet, video-to-memory and their total.

reference: processor/processor_clipreid_stage2.py L125-145, loss/make_loss.py L37-67, loss/triplet_loss.py;
docs/fidelity.md#loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from tfclip_cli.model import ModelOutput

LABEL_SMOOTHING = 0.1  # reference: CrossEntropyLabelSmooth(epsilon=0.1)
TRIPLET_MARGIN = 0.3  # reference: SOLVER.MARGIN (defaults.py L104)


@dataclass(frozen=True)
class LossWeights:
    """Weights of the loss parts (reference yml L9-11). The frame ID loss has no weight: it is divided by T."""

    id: float = 0.25
    triplet: float = 1.0
    v2m: float = 1.0


def smoothed_cross_entropy(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy against (1 - eps) one-hot + eps / Y, eps = 0.1, averaged over the batch."""
    return F.cross_entropy(scores, labels, label_smoothing=LABEL_SMOOTHING)


def batch_hard_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float = TRIPLET_MARGIN) -> torch.Tensor:
    """Batch-hard triplet loss on unnormalised features [B, D]: mean of relu(d(a, p_hard) - d(a, n_hard) + margin).

    Distances are Euclidean, clamped at 1e-12 before the square root like the reference's ``euclidean_dist``;
    the hardest positive may be the anchor itself. Every anchor needs at least one negative in the batch.
    """
    squared = features.pow(2).sum(dim=1)
    distances = (squared[:, None] + squared[None, :] - 2 * features @ features.T).clamp(min=1e-12).sqrt()
    same = labels[:, None] == labels[None, :]
    hardest_positive = distances.masked_fill(~same, float("-inf")).amax(dim=1)
    hardest_negative = distances.masked_fill(same, float("inf")).amin(dim=1)
    return F.relu(hardest_positive - hardest_negative + margin).mean()


def compute_losses(
    output: ModelOutput, labels: torch.Tensor, weights: LossWeights, *, seq_len: int
) -> dict[str, torch.Tensor]:
    """The weighted loss parts of one batch and their sum.

    Args:
        output: the training forward of B clips.
        labels: [B] training labels (rows of the memory and classifiers).
        weights: the recipe's loss weights.
        seq_len: T, frames per clip: each frame score gets its clip's label, and the frame term is divided by T.

    Returns:
        ``id`` (weighted, CLS + projected + temporal classifiers), ``frame_id`` (frame classifier / T, not
        weighted: docs/fidelity.md#loss), ``triplet`` (weighted, CLS + projected + temporal features), ``v2m`` (weighted;
        absent when the model has no CLIP-Memory) and ``total``.
    """
    assert output.frame_scores.shape[0] == labels.shape[0] * seq_len, "frame scores are [B*T, Y]"
    scores = (output.cls_scores, output.proj_scores, output.temporal_scores)
    id_loss = sum(smoothed_cross_entropy(s, labels) for s in scores)
    triplet = sum(
        batch_hard_triplet(f, labels) for f in (output.cls_features, output.proj_features, output.temporal_features)
    )
    parts = {
        "id": weights.id * id_loss,
        "frame_id": smoothed_cross_entropy(output.frame_scores, labels.repeat_interleave(seq_len)) / seq_len,
        "triplet": weights.triplet * triplet,
    }
    if output.v2m_logits is not None:
        parts["v2m"] = weights.v2m * smoothed_cross_entropy(output.v2m_logits, labels)
    parts["total"] = sum(parts.values())
    return parts
