"""The temporal fusions TF-CLIP's temporal branch can use instead of TMD: a plain mean, or a temporal attention.

Each takes the backbone tokens of the frames of B sequences and returns frame features [B*T, D] (for the frame ID
loss) and one temporal feature per sequence [B, D], like TMD (``model.tmd``). They exist for the paper's ablations:
``mean`` is TF-CLIP without TMD, ``attention`` a classic learned alternative.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

ATTENTION_WIDTH = 256  # hidden width of the attention scorer (Gao & Nevatia use 256 on ResNet-50 maps)


class TemporalFeatures(NamedTuple):
    """``frames`` [B*T, D], one feature per frame; ``clips`` [B, D], one per sequence."""

    frames: torch.Tensor
    clips: torch.Tensor


def frame_means(tokens: torch.Tensor) -> torch.Tensor:
    """Tokens [B*T, L, D] -> the mean over each frame's L tokens [B*T, D] (as TMD aggregates its output tokens)."""
    return tokens.mean(dim=1)


def temporal_mean(tokens: torch.Tensor, seq_len: int) -> TemporalFeatures:
    """The parameter-free fusion: each frame is the mean of its tokens [B*T, L, D], each sequence the mean of its
    T frames."""
    frames = frame_means(tokens)
    return TemporalFeatures(frames, frames.view(-1, seq_len, frames.shape[-1]).mean(dim=1))


class TemporalAttention(nn.Module):
    """Temporal attention pooling: a score per frame from a temporal convolution, softmax over the T frames, and
    the score-weighted sum of the frame features.

    The scheme is the ``ta`` temporal attention of torchreid's video models (Gao & Nevatia, "Revisiting Temporal
    Modeling for Video-based Person ReID", 2018: a spatial convolution over each frame's feature map, ReLU, a
    temporal convolution of width 3 to one score, ReLU, softmax over time). Written here for tokens: the spatial
    convolution over the whole map becomes a linear map of the frame's mean token.

    Args:
        width: token width.
        hidden: width of the per-frame hidden scores.
    """

    def __init__(self, width: int, hidden: int = ATTENTION_WIDTH) -> None:
        super().__init__()
        self.frame_fc = nn.Linear(width, hidden)
        self.temporal_conv = nn.Conv1d(hidden, 1, kernel_size=3, padding=1)

    def weights(self, frames: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Frame features [B*T, D] -> attention weights [B, T], each row summing to 1."""
        hidden = F.relu(self.frame_fc(frames)).view(-1, seq_len, self.frame_fc.out_features)  # [B, T, hidden]
        scores = F.relu(self.temporal_conv(hidden.transpose(1, 2))).squeeze(1)  # [B, hidden, T] -> [B, T]
        return scores.softmax(dim=1)

    def forward(self, tokens: torch.Tensor, seq_len: int) -> TemporalFeatures:
        frames = frame_means(tokens)
        weights = self.weights(frames, seq_len)
        clips = (weights.unsqueeze(-1) * frames.view(-1, seq_len, frames.shape[-1])).sum(dim=1)
        return TemporalFeatures(frames, clips)
