"""A state dict shaped like the reference implementation's, and a plain functional forward over it (test oracle).

Key names follow AsuradaYuci/TF-CLIP model/make_model_clipreid.py ``build_transformer`` and model/clip/model.py;
the forward is written from docs/fidelity.md (#tmd, #test-time-features, #sie) in sequence-first layout with
``F.multi_head_attention_forward``, a different code path from tfclip's modules, so agreement means the conversion and
the model match the reference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PATCH = 16


class _Random:
    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, *shape: int, scale: float = 0.05, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(*shape, generator=self.generator) * scale + offset


def _layer_norm(state: dict, prefix: str, dim: int, random: _Random) -> None:
    state[f"{prefix}.weight"] = random(dim, offset=1.0)
    state[f"{prefix}.bias"] = random(dim)


def _linear(state: dict, prefix: str, rows: int, columns: int, random: _Random, bias: bool = True) -> None:
    state[f"{prefix}.weight"] = random(rows, columns, scale=columns**-0.5)
    if bias:
        state[f"{prefix}.bias"] = random(rows)


def _multihead(state: dict, prefix: str, dim: int, random: _Random) -> None:
    state[f"{prefix}.in_proj_weight"] = random(3 * dim, dim, scale=dim**-0.5)
    state[f"{prefix}.in_proj_bias"] = random(3 * dim)
    _linear(state, f"{prefix}.out_proj", dim, dim, random)


def _residual_block(state: dict, prefix: str, dim: int, random: _Random) -> None:
    _layer_norm(state, f"{prefix}.ln_1", dim, random)
    _multihead(state, f"{prefix}.attn", dim, random)
    _layer_norm(state, f"{prefix}.ln_2", dim, random)
    _linear(state, f"{prefix}.mlp.c_fc", 4 * dim, dim, random)
    _linear(state, f"{prefix}.mlp.c_proj", dim, 4 * dim, random)


def _image_encoder(state: dict, width: int, layers: int, proj: int, grid: tuple[int, int], random: _Random) -> None:
    state["image_encoder.class_embedding"] = random(width, scale=0.5)
    state["image_encoder.positional_embedding"] = random(1 + grid[0] * grid[1], width, scale=0.5)
    state["image_encoder.proj"] = random(width, proj, scale=width**-0.5)
    state["image_encoder.conv1.weight"] = random(width, 3, PATCH, PATCH, scale=0.02)
    _layer_norm(state, "image_encoder.ln_pre", width, random)
    for i in range(layers):
        _residual_block(state, f"image_encoder.transformer.resblocks.{i}", width, random)
    _layer_norm(state, "image_encoder.ln_post", width, random)


def _ssp(state: dict, proj: int, random: _Random) -> None:
    _layer_norm(state, "SSP.norm", proj, random)
    _layer_norm(state, "SSP.memory_proj.0", proj, random)
    _linear(state, "SSP.memory_proj.1", proj, proj, random)
    _layer_norm(state, "SSP.memory_proj.2", proj, random)
    _layer_norm(state, "SSP.text_proj.0", proj, random)
    _linear(state, "SSP.text_proj.1", proj, proj, random)
    _layer_norm(state, "SSP.out_proj.0", proj, random)
    _linear(state, "SSP.out_proj.1", proj, proj, random)
    for i in range(2):
        for attention in ("self_attn", "cross_attn"):
            for name in ("q_proj", "k_proj", "v_proj"):
                _linear(state, f"SSP.decoder.{i}.{attention}.{name}", proj, proj, random, bias=False)
            _linear(state, f"SSP.decoder.{i}.{attention}.proj", proj, proj, random)
        for norm in ("norm1", "norm2", "norm3"):
            _layer_norm(state, f"SSP.decoder.{i}.{norm}", proj, random)
        _linear(state, f"SSP.decoder.{i}.mlp.0", 4 * proj, proj, random)
        _linear(state, f"SSP.decoder.{i}.mlp.3", proj, 4 * proj, random)
    state["SSP.alpha"] = torch.full((proj,), 0.1)


def _tmd(state: dict, width: int, random: _Random) -> None:
    prefix = "TMD.resblocks.0"
    _linear(state, f"{prefix}.message_fc", width, width, random)
    _layer_norm(state, f"{prefix}.message_ln", width, random)
    _multihead(state, f"{prefix}.message_attn", width, random)
    _residual_block(state, prefix, width, random)


def _heads(state: dict, width: int, proj: int, classes: int, random: _Random) -> None:
    for name, dim in (("bottleneck", width), ("bottleneck_proj", proj), ("bottleneck_proj_temp", width),
                      ("bottleneck_proj_temp2", width)):
        _layer_norm(state, name, dim, random)
        state[f"{name}.running_mean"] = random(dim, scale=0.1)
        state[f"{name}.running_var"] = random(dim, scale=0.1, offset=1.0).abs()
        state[f"{name}.num_batches_tracked"] = torch.tensor(7)
    for name, dim in (("classifier2", width), ("classifier_proj", proj), ("classifier_proj_temp", width),
                      ("classifier_proj_temp2", width)):
        state[f"{name}.weight"] = random(classes, dim, scale=0.001)


def reference_state_dict(
    *, width: int = 128, layers: int = 4, proj: int = 64, grid: tuple[int, int] = (4, 2), classes: int = 5,
    cameras: int = 3, seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Every key of the reference ``build_transformer`` (ViT path, SIE on cameras), random values."""
    random = _Random(seed)
    state: dict[str, torch.Tensor] = {}
    _image_encoder(state, width, layers, proj, grid, random)
    state["cv_embed"] = random(cameras, width, scale=0.02)
    _ssp(state, proj, random)
    _tmd(state, width, random)
    _heads(state, width, proj, classes, random)
    return state


def _ln(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], state[f"{prefix}.weight"], state[f"{prefix}.bias"])


def _fc(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    return F.linear(x, state[f"{prefix}.weight"], state[f"{prefix}.bias"])


def _attention(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    """Self-attention over the first axis (sequence first, as the reference runs nn.MultiheadAttention)."""
    dim = x.shape[-1]
    return F.multi_head_attention_forward(
        x, x, x, dim, max(1, dim // 64), state[f"{prefix}.in_proj_weight"], state[f"{prefix}.in_proj_bias"],
        None, None, False, 0.0, state[f"{prefix}.out_proj.weight"], state[f"{prefix}.out_proj.bias"],
        training=False, need_weights=False,
    )[0]


def _block(state: dict, prefix: str, x: torch.Tensor) -> torch.Tensor:
    x = x + _attention(state, f"{prefix}.attn", _ln(state, f"{prefix}.ln_1", x))
    hidden = _fc(state, f"{prefix}.mlp.c_fc", _ln(state, f"{prefix}.ln_2", x))
    return x + _fc(state, f"{prefix}.mlp.c_proj", hidden * torch.sigmoid(1.702 * hidden))


def _encode(state: dict, frames: torch.Tensor, camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frames [N, 3, H, W], camera embedding [N, width] -> (tokens after ln_post [L, N, D], projected [L, N, P])."""
    x = F.conv2d(frames, state["image_encoder.conv1.weight"], stride=PATCH).flatten(2).permute(2, 0, 1)
    cls = (state["image_encoder.class_embedding"] + camera).unsqueeze(0)
    x = torch.cat([cls, x]) + state["image_encoder.positional_embedding"].unsqueeze(1)
    x = _ln(state, "image_encoder.ln_pre", x)
    layers = len({k.split(".")[3] for k in state if k.startswith("image_encoder.transformer.resblocks.")})
    for i in range(layers):
        x = _block(state, f"image_encoder.transformer.resblocks.{i}", x)
    x = _ln(state, "image_encoder.ln_post", x)
    return x, x @ state["image_encoder.proj"]


def _tmd_forward(state: dict, tokens: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Tokens [L, B*T, D] -> frame features [B*T, D]."""
    length, frames, dim = tokens.shape
    grouped = tokens.view(length, frames // seq_len, seq_len, dim)
    message = _fc(state, "TMD.resblocks.0.message_fc", grouped.mean(0)).transpose(0, 1)  # [T, B, D]
    normed = _ln(state, "TMD.resblocks.0.message_ln", message)
    message = message + _attention(state, "TMD.resblocks.0.message_attn", normed)
    x = torch.cat([grouped, message.transpose(0, 1).unsqueeze(0)]).view(length + 1, frames, dim)
    return _block(state, "TMD.resblocks.0", x).mean(0)


def _neck(state: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    return F.batch_norm(
        x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"], state[f"{name}.bias"]
    )


def reference_embedding(
    state: dict, clips: torch.Tensor, camids: torch.Tensor, *, neck_feat: str = "before", sie_coe: float = 1.0
) -> torch.Tensor:
    """The reference's eval-mode feature of clips [B, T, 3, H, W] seen by cameras ``camids`` [B]."""
    batch, seq_len = clips.shape[:2]
    camera = sie_coe * state["cv_embed"][camids].repeat_interleave(seq_len, dim=0)
    tokens, projected = _encode(state, clips.flatten(0, 1), camera)
    cls = tokens[0].view(batch, seq_len, -1).mean(1)
    cls_proj = projected[0].view(batch, seq_len, -1).mean(1)
    if neck_feat == "after":
        return torch.cat([_neck(state, "bottleneck", cls), _neck(state, "bottleneck_proj", cls_proj)], dim=1)
    temporal = _tmd_forward(state, tokens, seq_len).view(batch, seq_len, -1).mean(1)
    return torch.cat([cls, cls_proj, temporal], dim=1)


def _prompt_attention(state: dict, prefix: str, query: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """Batch-first attention with separate bias-free q/k/v and an output projection, written out with softmax."""
    batch, length, dim = query.shape
    heads = max(1, dim // 64)

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.reshape(batch, -1, heads, dim // heads).permute(0, 2, 1, 3)

    q = split(query @ state[f"{prefix}.q_proj.weight"].T)
    k = split(context @ state[f"{prefix}.k_proj.weight"].T)
    v = split(context @ state[f"{prefix}.v_proj.weight"].T)
    weights = (q @ k.transpose(-2, -1) * (dim // heads) ** -0.5).softmax(dim=-1)
    return _fc(state, f"{prefix}.proj", (weights @ v).transpose(1, 2).reshape(batch, length, dim))


def _ssp_forward(state: dict, memory: torch.Tensor, video: torch.Tensor) -> torch.Tensor:
    """SSP(M, V) in eval mode (no dropout): memory [B, Y, P], video tokens [B, L, P] -> [B, Y, P]."""
    video = _ln(state, "SSP.memory_proj.2", _fc(state, "SSP.memory_proj.1", _ln(state, "SSP.memory_proj.0", video)))
    text = _fc(state, "SSP.text_proj.1", _ln(state, "SSP.text_proj.0", memory))
    for i in range(2):
        prefix = f"SSP.decoder.{i}"
        normed = _ln(state, f"{prefix}.norm1", text)
        text = text + _prompt_attention(state, f"{prefix}.self_attn", normed, normed)
        text = text + _prompt_attention(state, f"{prefix}.cross_attn", _ln(state, f"{prefix}.norm2", text), video)
        hidden = _fc(state, f"{prefix}.mlp.0", _ln(state, f"{prefix}.norm3", text))
        text = text + _fc(state, f"{prefix}.mlp.3", hidden * torch.sigmoid(1.702 * hidden))
    return _fc(state, "SSP.out_proj.1", _ln(state, "SSP.out_proj.0", text))


def reference_training_outputs(
    state: dict, clips: torch.Tensor, camids: torch.Tensor, memory: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The reference's training-branch outputs with dropout off and BN on running statistics (model.eval())."""
    batch, seq_len = clips.shape[:2]
    camera = state["cv_embed"][camids].repeat_interleave(seq_len, dim=0)
    tokens, projected = _encode(state, clips.flatten(0, 1), camera)
    cls = tokens[0].view(batch, seq_len, -1).mean(1)
    cls_proj = projected[0].view(batch, seq_len, -1).mean(1)
    frames = _tmd_forward(state, tokens, seq_len)
    temporal = frames.view(batch, seq_len, -1).mean(1)
    video = projected.permute(1, 0, 2).reshape(batch, seq_len, projected.shape[0], -1).mean(1)
    expanded = memory.unsqueeze(0).expand(batch, -1, -1)
    updated = expanded + _ssp_forward(state, expanded, video)
    return {
        "cls_scores": _neck(state, "bottleneck", cls) @ state["classifier2.weight"].T,
        "proj_scores": _neck(state, "bottleneck_proj", cls_proj) @ state["classifier_proj.weight"].T,
        "temporal_scores": _neck(state, "bottleneck_proj_temp2", temporal) @ state["classifier_proj_temp.weight"].T,
        "frame_scores": _neck(state, "bottleneck_proj_temp", frames) @ state["classifier_proj_temp.weight"].T,
        "v2m_logits": torch.einsum("bd,byd->by", cls_proj, updated),
    }
