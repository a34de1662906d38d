"""TF-CLIP over an open_clip ViT: token forward with SIE, TMD, SSP, CLIP-Memory and BNNeck heads.

Submodules: ``config`` (ModelConfig, backbone configs by name), ``backbone`` (open_clip ViT + token forward),
``tmd`` (Temporal Memory Diffusion), ``temporal`` (the mean and attention fusions of the ablations), ``ssp`` (Sequence-Specific Prompt), ``tfclip`` (the whole model).
"""

from tfclip_cli.model.backbone import FrameTokens, VisionBackbone
from tfclip_cli.model.config import (
    BackboneSpec,
    ModelConfig,
    backbone_dims,
    backbone_names,
    backbone_spec,
    shares_cameras,
)
from tfclip_cli.model.ssp import SequenceSpecificPrompt
from tfclip_cli.model.temporal import TemporalAttention
from tfclip_cli.model.tfclip import TFCLIP, ClipMemory, ModelOutput, build_model
from tfclip_cli.model.tmd import TemporalMemoryDiffusion

__all__ = [
    "TFCLIP",
    "BackboneSpec",
    "ClipMemory",
    "FrameTokens",
    "ModelConfig",
    "ModelOutput",
    "SequenceSpecificPrompt",
    "TemporalAttention",
    "TemporalMemoryDiffusion",
    "VisionBackbone",
    "backbone_dims",
    "backbone_names",
    "backbone_spec",
    "build_model",
    "shares_cameras",
]
