"""The CLIP image encoder: an open_clip VisionTransformer run by TF-CLIP's own token forward.

open_clip's forward pools the CLS token and offers no hook to add a per-sample camera embedding to CLS before the
positional embedding, while TF-CLIP needs every token after ``ln_post`` (for TMD) and every token through ``proj``
(for SSP). So we keep open_clip's modules and weights and write the forward (docs/fidelity.md#building-on-open_clip).
The transformer blocks are open_clip's ``nn.MultiheadAttention`` (batch first), which runs PyTorch's fused
scaled-dot-product attention kernels in training and its native fast path under ``torch.inference_mode``.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from open_clip.transformer import QuickGELU, VisionTransformer
from torch import nn

from tfclip_cli.model.config import BackboneSpec


class FrameTokens(NamedTuple):
    """Every token of every frame: ``tokens`` after ln_post [N, L, width], ``projected`` through proj [N, L, proj_dim].

    L = 1 + grid height x grid width (129 for 256x128 with patch 16); token 0 is CLS.
    """

    tokens: torch.Tensor
    projected: torch.Tensor


class VisionBackbone(nn.Module):
    """An open_clip ViT built from a backbone spec at ``image_size``; ``vit`` holds OpenAI-named weights.

    Args:
        spec: the backbone architecture.
        image_size: (height, width) of the frames; the positional embedding has one row per patch plus CLS.
    """

    def __init__(self, spec: BackboneSpec, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.image_size = tuple(image_size)
        self.vit = VisionTransformer(
            image_size=self.image_size,
            patch_size=spec.patch_size,
            width=spec.width,
            layers=spec.layers,
            heads=spec.heads,
            mlp_ratio=spec.mlp_ratio,
            output_dim=spec.proj_dim,
            act_layer=QuickGELU if spec.quick_gelu else nn.GELU,
        )

    @property
    def grid_size(self) -> tuple[int, int]:
        """(rows, columns) of patches, e.g. (16, 8) for 256x128 with patch 16."""
        return tuple(self.vit.grid_size)

    def forward(self, images: torch.Tensor, camera_embedding: torch.Tensor | None = None) -> FrameTokens:
        """Encode frames [N, 3, H, W]; ``camera_embedding`` [N, width] is added to CLS before the positions.

        reference: model/clip/model.py VisionTransformer.forward; the camera embedding joins CLS at L223-225.
        """
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"frames are {tuple(images.shape[-2:])}, the model was built for {self.image_size}")
        vit = self.vit
        patches = vit.conv1(images).flatten(2).transpose(1, 2)  # [N, width, gh, gw] -> [N, gh*gw, width]
        cls = vit.class_embedding.to(patches.dtype).expand(patches.shape[0], 1, -1)
        if camera_embedding is not None:
            cls = cls + camera_embedding.to(patches.dtype).unsqueeze(1)
        x = torch.cat([cls, patches], dim=1) + vit.positional_embedding.to(patches.dtype)
        x = vit.transformer(vit.ln_pre(x))
        tokens = vit.ln_post(x)
        return FrameTokens(tokens=tokens, projected=tokens @ vit.proj)
