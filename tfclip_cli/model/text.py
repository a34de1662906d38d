"""CLIP's text tower, used only to ask where CLIP-Memory stands against CLIP's text embeddings (``inspect-memory``).

TF-CLIP never uses text; this builds an open_clip ``TextTransformer`` whose shape is read from a CLIP weight file
(as OpenAI's ``build_model`` reads its shapes from the state dict) and encodes prompts with CLIP's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

import open_clip
import torch
from open_clip.transformer import QuickGELU, TextTransformer
from torch import nn

from tfclip_cli.model.config import HEAD_WIDTH


@dataclass(frozen=True)
class TextSpec:
    """The text tower of a CLIP weight file."""

    context_length: int  # tokens per prompt (77 for OpenAI's CLIP)
    vocab_size: int  # rows of the token embedding (49,408 for CLIP's BPE tokenizer)
    width: int
    layers: int
    output_dim: int  # width of the text projection: the joint embedding space


def text_spec(state: dict[str, torch.Tensor]) -> TextSpec:
    """The text tower's shape from its tensors (``token_embedding.weight``, ``positional_embedding``,
    ``text_projection``, ``transformer.resblocks.N.*``); KeyError when one is missing."""
    layers = {key.split(".")[2] for key in state if key.startswith("transformer.resblocks.")}
    vocab_size, width = state["token_embedding.weight"].shape
    return TextSpec(context_length=state["positional_embedding"].shape[0], vocab_size=vocab_size, width=width,
                    layers=len(layers), output_dim=state["text_projection"].shape[1])


def build_text_encoder(spec: TextSpec, *, quick_gelu: bool) -> TextTransformer:
    """A text tower of this shape with width // 64 heads (OpenAI's rule), pooled at the end-of-text token."""
    return TextTransformer(
        context_length=spec.context_length, vocab_size=spec.vocab_size, width=spec.width,
        heads=max(1, spec.width // HEAD_WIDTH), layers=spec.layers, output_dim=spec.output_dim,
        act_layer=QuickGELU if quick_gelu else nn.GELU,
    )


@torch.inference_mode()
def encode_prompts(encoder: TextTransformer, prompts: list[str]) -> torch.Tensor:
    """L2-normalised text embeddings [P, output_dim] of the prompts (CLIP's BPE tokenizer)."""
    tokens = open_clip.tokenize(prompts, context_length=encoder.context_length)
    return nn.functional.normalize(encoder.eval()(tokens).float(), dim=-1)
