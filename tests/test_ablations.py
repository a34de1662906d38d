"""The ablation switches: a model built without CLIP-Memory, without SSP, or with another temporal fusion really
lacks (or has) the part: parameter names and counts, the forward pass, the loss parts; and checkpoints, extract,
export and import keep the switch."""

import csv
import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from tfclip_cli.checkpoint import (
    Checkpoint,
    import_reference_checkpoint,
    load_checkpoint,
    model_from_checkpoint,
    save_checkpoint,
)
from tfclip_cli.errors import RecipeError
from tfclip_cli.export import export_checkpoint, load_embedder
from tfclip_cli.losses import LossWeights, compute_losses
from tfclip_cli.model import ModelConfig, SequenceSpecificPrompt, TemporalMemoryDiffusion, build_model
from tfclip_cli.model.temporal import TemporalAttention

from reference_tfclip import reference_state_dict
from tiny_training import tiny_manifest, tiny_recipe
from tfclip_cli import train as training
from tfclip_cli.cli import app
from tfclip_cli.recipe import load_recipe

FULL = ModelConfig(backbone="tfclip-tiny", image_size=(64, 32), seq_len=3, num_classes=4, num_cameras=2,
                   ssp_layers=2)
WIDTH, PROJ = 128, 64  # tfclip-tiny
LABELS = torch.tensor([0, 0, 1, 1, 2, 3])

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _names(config: ModelConfig) -> set[str]:
    return {name for name, _ in build_model(config).named_parameters()}


def _clips(batch: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, FULL.seq_len, 3, 64, 32, generator=torch.Generator().manual_seed(seed))


def _memory() -> torch.Tensor:
    return torch.randn(4, PROJ, generator=torch.Generator().manual_seed(1))


NO_MEMORY = dataclasses.replace(FULL, has_memory=False, ssp_layers=0)
FIXED_MEMORY = dataclasses.replace(FULL, ssp_layers=0)
MEAN = dataclasses.replace(FULL, temporal="mean", tmd_layers=0)
ATTENTION = dataclasses.replace(FULL, temporal="attention", tmd_layers=0)


def test_each_switch_removes_exactly_its_part_from_the_parameters() -> None:
    full = _numel(build_model(FULL))
    ssp = _numel(SequenceSpecificPrompt(PROJ, 1, 2))
    tmd = _numel(TemporalMemoryDiffusion(WIDTH, 2, 1))
    attention = _numel(TemporalAttention(WIDTH))
    assert attention == WIDTH * 256 + 256 + 256 * 3 + 1  # frame_fc, then the width-3 temporal convolution
    assert _numel(build_model(FIXED_MEMORY)) == full - ssp
    assert _numel(build_model(NO_MEMORY)) == full - ssp
    assert _numel(build_model(MEAN)) == full - tmd
    assert _numel(build_model(ATTENTION)) == full - tmd + attention
    assert any(n.startswith("ssp.") for n in _names(FULL)) and any(n.startswith("tmd.") for n in _names(FULL))
    assert not any(n.startswith("ssp.") for n in _names(FIXED_MEMORY) | _names(NO_MEMORY))
    assert not any(n.startswith(("tmd.", "temporal_attention.")) for n in _names(MEAN))
    assert {n for n in _names(ATTENTION) if n.startswith("temporal_attention.")} == {
        "temporal_attention.frame_fc.weight", "temporal_attention.frame_fc.bias",
        "temporal_attention.temporal_conv.weight", "temporal_attention.temporal_conv.bias"}


def test_without_memory_there_are_no_v2m_logits_and_no_v2m_loss() -> None:
    model = build_model(NO_MEMORY)
    output = model(_clips(), memory=None)
    assert output.v2m_logits is None
    parts = compute_losses(output, LABELS, LossWeights(v2m=0.0), seq_len=FULL.seq_len)
    assert set(parts) == {"id", "frame_id", "triplet", "total"}
    torch.testing.assert_close(parts["total"], parts["id"] + parts["frame_id"] + parts["triplet"])
    with pytest.raises(ValueError, match="without a CLIP-Memory"):
        model(_clips(), memory=_memory())
    with pytest.raises(ValueError, match="pass memory"):
        build_model(FULL)(_clips(), memory=None)


def test_a_fixed_memory_gives_raw_dot_products_with_the_memory_itself() -> None:
    model = build_model(FIXED_MEMORY).eval()
    with torch.no_grad():
        output = model(_clips(), memory=_memory())
    expected = torch.stack([torch.stack([f @ row for row in _memory()]) for f in output.proj_features])
    torch.testing.assert_close(output.v2m_logits, expected)
    assert "v2m" in compute_losses(output, LABELS, LossWeights(), seq_len=FULL.seq_len)


def _frame_token_means(model, clips: torch.Tensor) -> torch.Tensor:
    """[B, T, width]: each frame's mean backbone token, by a loop over frames."""
    rows = []
    for clip in clips:
        tokens = model.backbone(clip).tokens  # [T, L, width]
        rows.append(torch.stack([frame.mean(dim=0) for frame in tokens]))
    return torch.stack(rows)


def test_the_mean_fusion_is_the_mean_of_frame_token_means() -> None:
    model = build_model(dataclasses.replace(MEAN, embedding="before_bn")).eval()
    clips = _clips(2)
    with torch.no_grad():
        embedding = model.embed(clips)
        expected = _frame_token_means(model, clips).mean(dim=1)
    torch.testing.assert_close(embedding[:, WIDTH + PROJ:], expected, atol=1e-5, rtol=1e-5)


def test_temporal_attention_is_a_softmax_weighted_sum_of_frames() -> None:
    torch.manual_seed(0)
    attention = TemporalAttention(WIDTH, hidden=8)
    tokens = torch.randn(2 * 3, 5, WIDTH)
    features = attention(tokens, 3)
    frames = tokens.mean(dim=1).view(2, 3, WIDTH)
    for b in range(2):  # oracle: scores by hand, the width-3 convolution zero-padded at both ends
        hidden = F.relu(attention.frame_fc(frames[b]))  # [T, 8]
        padded = torch.cat([torch.zeros(1, 8), hidden, torch.zeros(1, 8)])
        kernel = attention.temporal_conv.weight[0]  # [8, 3]
        scores = torch.stack([F.relu((padded[t:t + 3].T * kernel).sum() + attention.temporal_conv.bias[0])
                              for t in range(3)])
        weights = scores.softmax(dim=0)
        torch.testing.assert_close(features.clips[b], (weights[:, None] * frames[b]).sum(dim=0))
    torch.testing.assert_close(features.frames, frames.reshape(6, WIDTH))
    same = torch.randn(1, 5, WIDTH).expand(3, 5, WIDTH)  # identical frames: any weights give that frame
    torch.testing.assert_close(attention(same, 3).clips[0], same[0].mean(dim=0))


@pytest.mark.parametrize("config", [MEAN, ATTENTION], ids=["mean", "attention"])
def test_other_fusions_train_every_new_parameter_and_keep_the_backbone_out_of_the_temporal_loss(config) -> None:
    model = build_model(config)
    output = model(_clips(), memory=_memory())
    output.temporal_scores.sum().backward()
    assert all(p.grad is None or not p.grad.abs().sum() for p in model.backbone.parameters())  # detached tokens
    if config.temporal == "attention":
        assert model.temporal_attention.frame_fc.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("change", "named"),
    [({"temporal": "mean"}, "tmd_layers is 1 with temporal 'mean'"),
     ({"temporal": "lstm"}, "model.temporal is 'lstm'"),
     ({"has_memory": False}, "ssp_layers is 2 with has_memory False"),
     ({"ssp_layers": -1}, "ssp_layers is -1")],
)
def test_inconsistent_switches_are_refused(change, named) -> None:
    with pytest.raises(RecipeError, match=named):
        dataclasses.replace(FULL, **change)


@pytest.mark.parametrize("config", [NO_MEMORY, ATTENTION, MEAN], ids=["no-memory", "attention", "mean"])
def test_checkpoints_and_exports_keep_the_switch(config, tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = build_model(config)
    path = tmp_path / "model.ckpt"
    save_checkpoint(Checkpoint(model_config=config.to_dict(), model_state=model.state_dict(), pid_to_label={},
                               memory=None if not config.has_memory else _memory()), path)
    assert model_from_checkpoint(load_checkpoint(path), "cpu").config == config
    result = export_checkpoint(path, tmp_path / "model.onnx", precision="fp32", verify=True, force=False)
    assert result.verification.min_cosine > 0.9999
    assert ModelConfig.from_dict(load_embedder(tmp_path / "model.onnx").metadata.model_config) == config


def test_import_of_a_reference_state_dict_without_tmd_and_ssp_builds_the_ablated_model(tmp_path: Path) -> None:
    reference = {k: v for k, v in reference_state_dict().items() if not k.startswith(("TMD.", "SSP."))}
    torch.save(reference, tmp_path / "ablated.pth")
    config = ModelConfig.from_dict(import_reference_checkpoint(tmp_path / "ablated.pth", seq_len=2).model_config)
    assert (config.temporal, config.tmd_layers, config.ssp_layers) == ("mean", 0, 0)


# ------------------------------------------------------------------------------------------- training honours them


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return tiny_manifest(tmp_path_factory.mktemp("tiny"))


def test_a_run_without_memory_builds_none_and_logs_no_v2m(manifest, tmp_path: Path) -> None:
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run", solver={"epochs": 1},
                       model={"ssp_layers": 0, "temporal": "attention"}, loss={"v2m": 0})
    result = training.train(load_recipe(path))
    assert set(result.history[0].losses) == {"total", "id", "frame_id", "triplet"}
    assert not (result.run_dir / "memory.pt").exists()
    checkpoint = load_checkpoint(result.last_checkpoint)
    assert checkpoint.memory is None and checkpoint.pid_to_label == {0: 0, 1: 1, 2: 2, 3: 3}
    config = ModelConfig.from_dict(checkpoint.model_config)
    assert (config.has_memory, config.ssp_layers, config.temporal, config.tmd_layers) == (False, 0, "attention", 0)
    with (result.run_dir / "metrics.csv").open() as handle:
        assert all(row["v2m"] == "" for row in csv.DictReader(handle))
    refused = CliRunner().invoke(app, ["build-memory", str(path)])
    assert refused.exit_code == 2 and "loss.v2m is 0" in refused.output


def test_recipe_switches_are_checked_together(manifest, tmp_path: Path) -> None:
    path = tiny_recipe(tmp_path / "r.yaml", manifest=manifest, output_dir=tmp_path / "run", loss={"v2m": 0})
    with pytest.raises(RecipeError, match="model.ssp_layers: found 1.*0 when loss.v2m is 0"):
        load_recipe(path)
    with pytest.raises(RecipeError, match="model.temporal: found 'lstm'.*tmd, mean, attention"):
        load_recipe(path, ["model.temporal=lstm"])
    fixed = load_recipe(path, ["model.ssp_layers=0", "model.temporal=mean"])
    assert (fixed.model.ssp_layers, fixed.model.temporal, fixed.loss.v2m) == (0, "mean", 0.0)
