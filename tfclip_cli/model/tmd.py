"""Temporal Memory Diffusion (TMD): frames of a sequence exchange one memory token each, then diffuse it back.

reference: model/make_model_clipreid.py L55-120 (``CrossFramelAttentionBlock``, ``Temporal_Memory_Difusion``);
docs/fidelity.md#tmd. drop_path is 0 in the reference, so there is none here.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from open_clip.transformer import QuickGELU
from torch import nn


class TemporalMemoryBlock(nn.Module):
    """One TMD block: Temporal Memory Construction, then Memory Diffusion.

    Args:
        width: token width.
        heads: attention heads (width // 64 in the reference).
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.memory_fc = nn.Linear(width, width)
        self.memory_norm = nn.LayerNorm(width)
        self.memory_attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [("c_fc", nn.Linear(width, width * 4)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(width * 4, width))]
            )
        )

    def forward(self, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Tokens [B*T, L, D] (frames of a sequence adjacent) -> [B*T, L+1, D], the memory token appended."""
        frames, _, width = tokens.shape
        # Temporal Memory Construction: one memory token per frame, pre-LN self-attention across the T frames.
        memory = self.memory_fc(tokens.mean(dim=1)).view(frames // seq_len, seq_len, width)  # [B, T, D]
        normed = self.memory_norm(memory)
        memory = memory + self.memory_attn(normed, normed, normed, need_weights=False)[0]
        # Memory Diffusion: the frame's memory token joins its tokens for one pre-LN transformer block.
        x = torch.cat([tokens, memory.reshape(frames, 1, width)], dim=1)
        normed = self.norm1(x)
        x = x + self.attn(normed, normed, normed, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TemporalMemoryDiffusion(nn.Module):
    """TMD over the backbone tokens; returns one feature per frame (the mean of its output tokens).

    Args:
        width: token width of the backbone.
        heads: attention heads.
        layers: blocks; each appends one memory token (the reference uses one).
    """

    def __init__(self, width: int, heads: int, layers: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList([TemporalMemoryBlock(width, heads) for _ in range(layers)])

    def forward(self, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
        """Tokens [B*T, L, D] -> frame features [B*T, D] (reference ``cls_f_sp``, model L269-275)."""
        for block in self.blocks:
            tokens = block(tokens, seq_len)
        return tokens.mean(dim=1)
