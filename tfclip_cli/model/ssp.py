"""Sequence-Specific Prompt (SSP): the CLIP-Memory, refined per sequence by attending to the sequence's tokens.

reference: model/make_model_clipreid.py L356-428 (``MulitHeadAttention``, ``PromptGeneratorLayer``,
``ImageSpecificPrompt``); docs/fidelity.md#ssp. The reference also declares a LayerNorm ``norm`` and a parameter
``alpha`` that its forward never uses; they are left out here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU
from torch import nn

DROPOUT = 0.1  # reference: PromptGeneratorLayer(dropout=0.1)


class PromptAttention(nn.Module):
    """Multi-head attention with separate bias-free q/k/v projections and a dropout after the output projection.

    Args:
        dim: token width.
        heads: attention heads.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.out_proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(DROPOUT)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, dim = x.shape
        return x.view(batch, length, self.heads, dim // self.heads).transpose(1, 2)  # [B, heads, L, dim/heads]

    def forward(self, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Query [B, Q, D] attends to context [B, K, D] -> [B, Q, D]."""
        q, k, v = self._split(self.q_proj(query)), self._split(self.k_proj(context)), self._split(self.v_proj(context))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.dropout(self.out_proj(out))


class PromptLayer(nn.Module):
    """Pre-LN self-attention over the memory, cross-attention to the video tokens, then an MLP; all residual."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = PromptAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross_attn = PromptAttention(dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("fc", nn.Linear(dim, dim * 4)),
                    ("gelu", QuickGELU()),
                    ("drop", nn.Dropout(DROPOUT)),
                    ("proj", nn.Linear(dim * 4, dim)),
                ]
            )
        )
        self.dropout = nn.Dropout(DROPOUT)

    def forward(self, memory: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Memory [B, Y, D], video tokens [B, L, D] -> memory [B, Y, D]."""
        normed = self.norm1(memory)
        memory = memory + self.self_attn(normed, normed)
        memory = memory + self.cross_attn(self.norm2(memory), video)
        return memory + self.dropout(self.mlp(self.norm3(memory)))


class SequenceSpecificPrompt(nn.Module):
    """SSP(M, V): the update added to the memory, ``M' = M + SSP(M, V)`` per sequence.

    Args:
        dim: width of the projected tokens and of the memory.
        heads: attention heads.
        layers: prompt layers (2 in the reference).
    """

    def __init__(self, dim: int, heads: int, layers: int) -> None:
        super().__init__()
        self.video_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.memory_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.layers = nn.ModuleList([PromptLayer(dim, heads) for _ in range(layers)])
        self.out_proj = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim))
        self.apply(_init_weights)

    def forward(self, memory: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
        """Memory [Y, D] and each sequence's video tokens [B, L, D] -> the memory update [B, Y, D]."""
        video = self.video_proj(video)
        # The memory projection is row-wise, so it runs once before the memory is copied per sequence.
        prompts = self.memory_proj(memory).expand(video.shape[0], -1, -1)
        for layer in self.layers:
            prompts = layer(prompts, video)
        return self.out_proj(prompts)


def _init_weights(module: nn.Module) -> None:
    """reference: ImageSpecificPrompt._init_weights (trunc-normal 0.02 linears, zero biases, unit LayerNorms)."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
