"""TF-CLIP: the CLIP image encoder with SIE, TMD, SSP over a fixed CLIP-Memory, and BNNeck heads.

reference: model/make_model_clipreid.py ``build_transformer``; docs/fidelity.md#loss to #sie. The ablations of the paper
are switches of :class:`ModelConfig`: no CLIP-Memory (``has_memory``), a fixed memory (``ssp_layers`` 0), and
another temporal fusion than TMD (``temporal``); a part switched off is not built, so it has no parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from tfclip_cli.model.backbone import FrameTokens, VisionBackbone
from tfclip_cli.model.config import ModelConfig, attention_heads, backbone_dims, backbone_spec
from tfclip_cli.model.ssp import SequenceSpecificPrompt
from tfclip_cli.model.temporal import TemporalAttention, TemporalFeatures, temporal_mean
from tfclip_cli.model.tmd import TemporalMemoryDiffusion

CLASSIFIER_STD = 0.001  # reference: weights_init_classifier
CAMERA_STD = 0.02  # reference: trunc_normal_(cv_embed, std=.02)


@dataclass(frozen=True)
class ClipMemory:
    """The CLIP-Memory: one projected CLIP feature per training identity, built once before training.

    ``features`` row ``label`` belongs to the pid with ``pid_to_label[pid] == label``; ``fingerprint`` identifies
    the tracklets and weights it was built from.
    """

    features: torch.Tensor  # [Y, proj_dim]
    pid_to_label: dict[int, int]
    fingerprint: str

    def __post_init__(self) -> None:
        """Raises ValueError unless ``features`` has one row per identity (a memory file is user input)."""
        if self.features.ndim != 2 or self.features.shape[0] != len(self.pid_to_label):
            raise ValueError(f"features of shape {tuple(self.features.shape)} for {len(self.pid_to_label)} "
                             "identities: expected one row per identity")


@dataclass(frozen=True)
class ModelOutput:
    """What one training forward returns; features are before the BNNecks, scores after them."""

    cls_scores: torch.Tensor  # [B, Y] classifier on BN(CLS feature)
    proj_scores: torch.Tensor  # [B, Y] classifier on BN(projected CLS feature)
    temporal_scores: torch.Tensor  # [B, Y] temporal classifier on BN(temporal TMD feature)
    frame_scores: torch.Tensor  # [B*T, Y] the same temporal classifier on BN(frame TMD features)
    cls_features: torch.Tensor  # [B, width] CLS after ln_post, mean over T
    proj_features: torch.Tensor  # [B, proj_dim] projected CLS, mean over T
    temporal_features: torch.Tensor  # [B, width] the temporal fusion of the frame features (TMD: mean over T)
    v2m_logits: torch.Tensor | None  # [B, Y] projected feature . (M + SSP(M, V))^T, no normalisation or
    #                                  temperature; M^T alone with ssp_layers 0; None without a CLIP-Memory


def _bnneck(dim: int) -> nn.BatchNorm1d:
    """BatchNorm1d with weight 1, bias 0 and the bias frozen (reference: model L151-163, weights_init_kaiming)."""
    neck = nn.BatchNorm1d(dim)
    neck.bias.requires_grad_(False)
    return neck


def _classifier(dim: int, classes: int) -> nn.Linear:
    classifier = nn.Linear(dim, classes, bias=False)
    nn.init.normal_(classifier.weight, std=CLASSIFIER_STD)
    return classifier


class TFCLIP(nn.Module):
    """TF-CLIP for video person re-identification.

    Args:
        config: the architecture; every width follows ``config.backbone``.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        spec = backbone_spec(config.backbone)
        width, proj_dim = spec.width, spec.proj_dim
        self.config = config
        self.backbone = VisionBackbone(spec, config.image_size)
        self.camera_embedding = nn.Parameter(torch.zeros(config.num_cameras, width)) if config.num_cameras else None
        if self.camera_embedding is not None:
            nn.init.trunc_normal_(self.camera_embedding, std=CAMERA_STD)
        self.tmd = (TemporalMemoryDiffusion(width, attention_heads(width), config.tmd_layers)
                    if config.temporal == "tmd" else None)
        self.temporal_attention = TemporalAttention(width) if config.temporal == "attention" else None
        self.ssp = (SequenceSpecificPrompt(proj_dim, attention_heads(proj_dim), config.ssp_layers)
                    if config.ssp_layers else None)
        self.neck_cls, self.neck_proj = _bnneck(width), _bnneck(proj_dim)
        self.neck_frame, self.neck_temporal = _bnneck(width), _bnneck(width)
        self.classifier_cls = _classifier(width, config.num_classes)
        self.classifier_proj = _classifier(proj_dim, config.num_classes)
        self.classifier_temporal = _classifier(width, config.num_classes)

    @property
    def embedding_dim(self) -> int:
        """Width of :meth:`embed`'s output: 2*width + proj_dim before BN (2048 for ViT-B-16), width + proj_dim after."""
        width, proj_dim = backbone_dims(self.config.backbone)
        return 2 * width + proj_dim if self.config.embedding == "before_bn" else width + proj_dim

    def check_camids(self, camids: torch.Tensor | None) -> None:
        """Raise ValueError unless every camera id has an SIE row (data-dependent, so kept out of exported graphs)."""
        if self.camera_embedding is None or camids is None:
            return
        if camids.min() < 0 or camids.max() >= self.camera_embedding.shape[0]:
            raise ValueError(
                f"camera ids {camids.tolist()} outside 0..{self.camera_embedding.shape[0] - 1}: pass None "
                "for a camera the model was not trained on"
            )

    def camera_rows(self, camids: torch.Tensor | None) -> torch.Tensor | None:
        """``sie_coe`` x each clip's camera vector [B, width]; a negative id (camera unknown) gets a zero row.

        No range check, so it exports to ONNX; callers check ids with :meth:`check_camids`. Adding a zero row is
        exactly adding nothing, so -1 embeds like ``camids=None``. None without SIE or camera ids.
        """
        if self.camera_embedding is None or camids is None:
            return None
        known = (camids >= 0).unsqueeze(1).to(self.camera_embedding.dtype)  # [B, 1]
        return self.config.sie_coe * self.camera_embedding[camids.clamp(min=0)] * known

    def _encode(self, clips: torch.Tensor, camera_rows: torch.Tensor | None) -> FrameTokens:
        """Clips [B, T, 3, H, W] and camera rows [B, width] -> the backbone tokens of all B*T frames (frames of a
        clip adjacent)."""
        seq_len = clips.shape[1]
        if seq_len != self.config.seq_len:
            raise ValueError(f"clips have {seq_len} frames, the model was built for seq_len={self.config.seq_len}")
        per_frame = None if camera_rows is None else camera_rows.repeat_interleave(seq_len, dim=0)  # [B*T, width]
        return self.backbone(clips.flatten(0, 1), per_frame)

    def _temporal(self, tokens: torch.Tensor) -> TemporalFeatures:
        """The temporal branch on detached tokens [B*T, L, width] (reference L266: TMD's losses do not reach the
        ViT; the other fusions keep that, so only the fusion differs) -> frame [B*T, width] and clip [B, width]."""
        seq_len, tokens = self.config.seq_len, tokens.detach()
        if self.tmd is not None:
            frames = self.tmd(tokens, seq_len)
            return TemporalFeatures(frames, frames.view(-1, seq_len, frames.shape[-1]).mean(dim=1))
        if self.temporal_attention is not None:
            return self.temporal_attention(tokens, seq_len)
        return temporal_mean(tokens, seq_len)

    def _v2m_logits(self, proj_features: torch.Tensor, video_tokens: torch.Tensor,
                    memory: torch.Tensor | None) -> torch.Tensor | None:
        """Projected features [B, proj_dim] . memory rows: M' = M + SSP(M, V) per sequence [B, Y, proj_dim], or the
        fixed M [Y, proj_dim] without SSP; None without a CLIP-Memory."""
        if (memory is None) == self.config.has_memory:
            raise ValueError("this model was built with a CLIP-Memory: pass memory" if self.config.has_memory
                             else "this model was built without a CLIP-Memory (loss.v2m 0): pass memory=None")
        if memory is None:
            return None
        if self.ssp is None:
            return proj_features @ memory.T
        updated_memory = memory + self.ssp(memory, video_tokens)  # [B, Y, proj_dim]
        return torch.einsum("bd,byd->by", proj_features, updated_memory)

    def forward(
        self, clips: torch.Tensor, *, memory: torch.Tensor | None, camids: torch.Tensor | None = None
    ) -> ModelOutput:
        """Training forward (reference ``build_transformer.forward``, training branch; docs/fidelity.md#loss to #tmd).

        Args:
            clips: [B, T, 3, H, W] normalised frames.
            memory: the CLIP-Memory features [Y, proj_dim], kept fixed (refined per sequence by SSP when the model
                has it); None exactly when the model was built without a memory (``has_memory`` false).
            camids: [B] 0-based train cameras for SIE; None leaves the camera embedding out.
        """
        batch, seq_len = clips.shape[:2]
        self.check_camids(camids)
        frames = self._encode(clips, self.camera_rows(camids))
        length = frames.tokens.shape[1]
        cls_features = frames.tokens[:, 0].view(batch, seq_len, -1).mean(dim=1)
        proj_features = frames.projected[:, 0].view(batch, seq_len, -1).mean(dim=1)
        temporal = self._temporal(frames.tokens)
        video_tokens = frames.projected.view(batch, seq_len, length, -1).mean(dim=1)  # [B, L, proj_dim]
        return ModelOutput(
            cls_scores=self.classifier_cls(self.neck_cls(cls_features)),
            proj_scores=self.classifier_proj(self.neck_proj(proj_features)),
            temporal_scores=self.classifier_temporal(self.neck_temporal(temporal.clips)),
            frame_scores=self.classifier_temporal(self.neck_frame(temporal.frames)),
            cls_features=cls_features,
            proj_features=proj_features,
            temporal_features=temporal.clips,
            v2m_logits=self._v2m_logits(proj_features, video_tokens, memory),
        )

    def embed(self, clips: torch.Tensor, camids: torch.Tensor | None = None) -> torch.Tensor:
        """The test-time embedding of clips [B, T, 3, H, W] -> [B, embedding_dim] (call in eval mode).

        ``before_bn``: concat(CLS, projected CLS, temporal feature); ``after_bn``: concat(BN(CLS), BN(projected
        CLS)), as the reference's ``TEST.NECK_FEAT`` (model L298-302; docs/fidelity.md#test-time-features). SSP, classifiers and the
        memory are not computed. ``camids`` None leaves the camera embedding out (a camera unknown to the model).
        """
        self.check_camids(camids)
        return self.embed_with_camera(clips, self.camera_rows(camids))

    def embed_with_camera(self, clips: torch.Tensor, camera_rows: torch.Tensor | None) -> torch.Tensor:
        """:meth:`embed` given the camera rows [B, width] of :meth:`camera_rows`; no data-dependent checks, so
        ``export`` traces it to ONNX."""
        batch, seq_len = clips.shape[:2]
        frames = self._encode(clips, camera_rows)
        cls_features = frames.tokens[:, 0].view(batch, seq_len, -1).mean(dim=1)
        proj_features = frames.projected[:, 0].view(batch, seq_len, -1).mean(dim=1)
        if self.config.embedding == "after_bn":
            return torch.cat([self.neck_cls(cls_features), self.neck_proj(proj_features)], dim=1)
        return torch.cat([cls_features, proj_features, self._temporal(frames.tokens).clips], dim=1)

    def memory_features(self, clips: torch.Tensor) -> torch.Tensor:
        """Projected CLS averaged over the T frames, without camera embedding [B, proj_dim] (reference L201-216)."""
        batch, seq_len = clips.shape[:2]
        frames = self.backbone(clips.flatten(0, 1))
        return frames.projected[:, 0].view(batch, seq_len, -1).mean(dim=1)


def build_model(config: ModelConfig) -> TFCLIP:
    """A TF-CLIP model with random weights; load CLIP weights with ``checkpoint.load_clip_weights``."""
    return TFCLIP(config)
