"""What a TF-CLIP model is made of: the ModelConfig a checkpoint stores, and the backbone architectures by name.

Backbones are open_clip-format JSON files in ``tfclip_cli/model_configs/`` (``ViT-B-16``: OpenAI's ViT-B/16 with
QuickGELU at 256x128; ``tfclip-tiny`` and ``tfclip-small`` for tests, the demo and CPU runs). A name not found there
is looked up in open_clip's own registry, so any plain open_clip ViT config (e.g. ``ViT-L-14-quickgelu``) works too.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import open_clip

from tfclip_cli.errors import RecipeError

MODEL_CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
HEAD_WIDTH = 64  # every attention in TF-CLIP uses width // 64 heads (docs/fidelity.md#ssp, #tmd)
Embedding = Literal["before_bn", "after_bn"]
EMBEDDINGS: tuple[Embedding, ...] = ("before_bn", "after_bn")
Temporal = Literal["tmd", "mean", "attention"]
TEMPORALS: tuple[Temporal, ...] = ("tmd", "mean", "attention")


@dataclass(frozen=True)
class BackboneSpec:
    """The vision tower of one open_clip model config."""

    name: str
    width: int  # token width after ln_post (768 for ViT-B/16)
    layers: int  # transformer blocks
    heads: int  # attention heads of each block
    patch_size: int  # conv1 kernel and stride
    proj_dim: int  # width of the projected tokens, open_clip's embed_dim (512 for ViT-B/16)
    mlp_ratio: float  # MLP hidden width / width
    quick_gelu: bool  # OpenAI's weights need QuickGELU
    image_size: tuple[int, int]  # (height, width) the config was written for


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    """Everything needed to rebuild a TF-CLIP model; stored in every checkpoint."""

    backbone: str = "ViT-B-16"  # model config name: tfclip_cli/model_configs/*.json or an open_clip config
    image_size: tuple[int, int] = (256, 128)  # (height, width) of every frame; sets the positional grid
    seq_len: int = 8  # T, frames per clip: the Temporal Memory Diffusion exchanges memory across these T frames
    num_classes: int  # training identities: rows of the classifiers and of the CLIP-Memory
    num_cameras: int = 0  # train cameras with a learned SIE embedding; 0 = no camera embedding
    sie_coe: float = 1.0  # scale of the camera embedding (reference yml L13)
    camera_dataset: str = ""  # the dataset (manifest ``dataset``) whose camera ids the SIE rows belong to; tracklets
    #                           of another dataset get no camera embedding; "" = not recorded (any ids in range)
    temporal: Temporal = "tmd"  # temporal branch: TMD (the paper), the mean of frame features, or temporal attention
    tmd_layers: int = 1  # Temporal Memory Diffusion blocks (temporal "tmd"); 0 for the other fusions
    has_memory: bool = True  # trained against a CLIP-Memory (video-to-memory loss); False: the image-encoder baseline
    ssp_layers: int = 2  # Sequence-Specific Prompt layers; 0: the CLIP-Memory stays fixed (no SSP module)
    embedding: Embedding = "before_bn"  # test-time feature: concat(CLS, proj CLS, temporal) or concat(BN(CLS), BN(proj))

    def __post_init__(self) -> None:
        if self.embedding not in EMBEDDINGS:
            raise RecipeError(f"model.embedding is {self.embedding!r}: expected one of {', '.join(EMBEDDINGS)}")
        if self.temporal not in TEMPORALS:
            raise RecipeError(f"model.temporal is {self.temporal!r}: expected one of {', '.join(TEMPORALS)}")
        for key in ("seq_len", "num_classes"):
            if getattr(self, key) < 1:
                raise RecipeError(f"model {key} is {getattr(self, key)}: expected an integer >= 1")
        if (self.tmd_layers >= 1) != (self.temporal == "tmd") or self.tmd_layers < 0:
            raise RecipeError(f"model tmd_layers is {self.tmd_layers} with temporal {self.temporal!r}: expected >= 1 "
                              "for tmd, 0 for the other fusions")
        if self.ssp_layers < 0 or (self.ssp_layers and not self.has_memory):
            raise RecipeError(f"model ssp_layers is {self.ssp_layers} with has_memory {self.has_memory}: expected "
                              ">= 0, and 0 without a CLIP-Memory (SSP updates the memory)")
        if self.num_cameras < 0:
            raise RecipeError(f"model num_cameras is {self.num_cameras}: expected 0 (no SIE) or more")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, so a checkpoint loads with ``weights_only=True``."""
        values = dataclasses.asdict(self)
        values["image_size"] = list(self.image_size)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; raises TypeError on unknown or missing keys."""
        return cls(**{**values, "image_size": tuple(values.get("image_size", (256, 128)))})


def shares_cameras(config: ModelConfig, dataset: str) -> bool:
    """Whether tracklets of ``dataset`` may use the model's camera embedding: their camera ids are the ones it was
    trained on (same dataset, or the training dataset was not recorded). Cross-dataset evaluation uses none."""
    return config.num_cameras > 0 and config.camera_dataset in ("", dataset)


def backbone_names() -> list[str]:
    """The backbone configs shipped with tfclip."""
    return sorted(path.stem for path in MODEL_CONFIG_DIR.glob("*.json"))


@functools.cache
def backbone_spec(name: str) -> BackboneSpec:
    """The vision tower of the model config ``name`` (ours first, then open_clip's registry).

    Raises:
        RecipeError: the name is unknown, or not a plain ViT (timm and ResNet towers are not supported).
    """
    path = MODEL_CONFIG_DIR / f"{name}.json"
    config = json.loads(path.read_text()) if path.is_file() else open_clip.get_model_config(name)
    if config is None:
        raise RecipeError(
            f"model.backbone {name!r} is not a known model config",
            hint=f"use one of {', '.join(backbone_names())} or an open_clip ViT config name",
        )
    vision = config["vision_cfg"]
    if not isinstance(vision.get("layers"), int) or vision.get("timm_model_name"):
        raise RecipeError(f"model.backbone {name!r} is not a plain vision transformer: TF-CLIP needs a ViT")
    size = vision.get("image_size", 224)
    width = vision.get("width", 768)
    return BackboneSpec(
        name=name,
        width=width,
        layers=vision["layers"],
        heads=width // vision.get("head_width", HEAD_WIDTH),
        patch_size=vision.get("patch_size", 16),
        proj_dim=config["embed_dim"],
        mlp_ratio=vision.get("mlp_ratio", 4.0),
        quick_gelu=config.get("quick_gelu", False),
        image_size=(size, size) if isinstance(size, int) else (size[0], size[1]),
    )


def backbone_dims(name: str) -> tuple[int, int]:
    """``(width, proj_dim)`` of a backbone, e.g. ``(768, 512)`` for ViT-B-16."""
    spec = backbone_spec(name)
    return spec.width, spec.proj_dim


def attention_heads(width: int) -> int:
    """Heads of TF-CLIP's own attentions (TMD, SSP): width // 64, at least one."""
    return max(1, width // HEAD_WIDTH)
