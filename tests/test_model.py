"""The TF-CLIP model: shapes per config, SIE, TMD detachment, V2M logits, training updates and overfitting."""

import dataclasses

import pytest
import torch

from tfclip_cli.errors import RecipeError
from tfclip_cli.losses import LossWeights, compute_losses
from tfclip_cli.model import ModelConfig, backbone_dims, backbone_spec, build_model

TINY = ModelConfig(backbone="tfclip-tiny", image_size=(64, 32), seq_len=2, num_classes=4, num_cameras=3)
LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
CAMIDS = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clips(batch: int, config: ModelConfig = TINY, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, config.seq_len, 3, *config.image_size, generator=generator)


def _tiny(config: ModelConfig = TINY, seed: int = 0):
    torch.manual_seed(seed)
    return build_model(config)


def _memory(rows: int = 4, dim: int = 64) -> torch.Tensor:
    return torch.randn(rows, dim, generator=torch.Generator().manual_seed(1))


def test_backbone_dims_follow_the_config_files() -> None:
    assert backbone_dims("ViT-B-16") == (768, 512)
    assert backbone_dims("tfclip-tiny") == (128, 64)
    spec = backbone_spec("ViT-B-16")
    assert (spec.layers, spec.heads, spec.patch_size, spec.quick_gelu) == (12, 12, 16, True)
    assert spec.image_size == (256, 128)


def test_unknown_backbone_is_a_recipe_error_naming_it() -> None:
    with pytest.raises(RecipeError, match="no-such-vit"):
        build_model(dataclasses.replace(TINY, backbone="no-such-vit"))


def test_model_config_round_trips_through_plain_dicts() -> None:
    values = TINY.to_dict()
    assert values["image_size"] == [64, 32]
    assert ModelConfig.from_dict(values) == TINY


def test_tiny_training_forward_shapes() -> None:
    model = _tiny()
    output = model(_clips(8), memory=_memory(), camids=CAMIDS)
    for name in ("cls_scores", "proj_scores", "temporal_scores", "v2m_logits"):
        assert getattr(output, name).shape == (8, 4)
    assert output.frame_scores.shape == (16, 4)
    assert output.cls_features.shape == (8, 128)
    assert output.proj_features.shape == (8, 64)
    assert output.temporal_features.shape == (8, 128)


def test_tiny_embeddings_before_and_after_bn() -> None:
    model = _tiny().eval()
    clips = _clips(3)
    with torch.inference_mode():
        before = model.embed(clips, CAMIDS[:3])
        after = build_model(dataclasses.replace(TINY, embedding="after_bn")).eval().embed(clips)
        memory = model.memory_features(clips)
    assert before.shape == (3, 128 + 64 + 128) and model.embedding_dim == 320
    assert after.shape == (3, 128 + 64)
    assert memory.shape == (3, 64)


def test_vit_b16_without_weights_has_a_16x8_grid_and_2048_d_embedding() -> None:
    config = ModelConfig(backbone="ViT-B-16", seq_len=2, num_classes=3, num_cameras=2)
    model = build_model(config).eval()
    assert model.backbone.grid_size == (16, 8)
    assert model.backbone.vit.positional_embedding.shape == (129, 768)
    with torch.inference_mode():
        embedding = model.embed(_clips(1, config), torch.tensor([1]))
    assert embedding.shape == (1, 2048) and model.embedding_dim == 2048


def test_camera_embedding_is_added_to_cls_before_the_positions() -> None:
    model = _tiny().eval()
    images = _clips(1).flatten(0, 1)
    shift = torch.randn(1, 128)
    with torch.inference_mode():
        with_camera = model.backbone(images, shift.expand(2, -1)).tokens
        model.backbone.vit.class_embedding += shift[0]
        shifted_cls = model.backbone(images).tokens
    torch.testing.assert_close(with_camera, shifted_cls)


def test_sie_on_off() -> None:
    model = _tiny().eval()
    clips = _clips(2)
    with torch.inference_mode():
        unknown = model.embed(clips)
        camera_0 = model.embed(clips, torch.tensor([0, 0]))
        camera_1 = model.embed(clips, torch.tensor([1, 1]))
    assert not torch.allclose(unknown, camera_0) and not torch.allclose(camera_0, camera_1)
    without_sie = _tiny(dataclasses.replace(TINY, num_cameras=0)).eval()
    assert without_sie.camera_embedding is None
    with torch.inference_mode():
        torch.testing.assert_close(without_sie.embed(clips, torch.tensor([0, 1])), without_sie.embed(clips))


def test_camera_outside_the_trained_ones_is_refused() -> None:
    with pytest.raises(ValueError, match="camera ids"):
        _tiny().eval().embed(_clips(1), torch.tensor([3]))


def test_clips_of_another_length_are_refused() -> None:
    with pytest.raises(ValueError, match="seq_len=2"):
        _tiny().embed(torch.zeros(1, 3, 3, 64, 32))


def test_memory_features_are_the_projected_cls_without_camera() -> None:
    model = _tiny().eval()
    clips = _clips(2)
    with torch.inference_mode():
        frames = model.backbone(clips.flatten(0, 1))
        expected = frames.projected[:, 0].view(2, 2, -1).mean(dim=1)
        torch.testing.assert_close(model.memory_features(clips), expected)


def test_embedding_does_not_depend_on_frame_order() -> None:
    """The reference has no temporal position encoding: the order of a clip's frames is invisible to the model."""
    model = _tiny().eval()
    clips = _clips(2)
    with torch.inference_mode():
        torch.testing.assert_close(model.embed(clips.flip(1)), model.embed(clips), atol=1e-5, rtol=1e-5)


def test_v2m_logits_are_raw_dot_products_with_the_memory_plus_its_update() -> None:
    model = _tiny().eval()
    memory = _memory()
    with torch.no_grad():
        model.ssp.out_proj[1].weight.zero_()
        model.ssp.out_proj[1].bias.fill_(0.5)  # SSP(M, V) is then 0.5 everywhere
        output = model(_clips(2), memory=memory, camids=CAMIDS[:2])
    torch.testing.assert_close(output.v2m_logits, output.proj_features @ (memory + 0.5).T)


def test_tmd_losses_do_not_reach_the_backbone() -> None:
    model = _tiny()
    output = model(_clips(4), memory=_memory(), camids=CAMIDS[:4])
    (output.temporal_scores.sum() + output.frame_scores.sum()).backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert model.tmd.blocks[0].memory_fc.weight.grad.abs().sum() > 0


def test_one_training_step_updates_every_trainable_parameter_and_no_frozen_one() -> None:
    model = _tiny().train()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {f"neck_{n}.bias" for n in ("cls", "proj", "frame", "temporal")}
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    output = model(_clips(8), memory=_memory(), camids=CAMIDS)
    compute_losses(output, LABELS, LossWeights(), seq_len=2)["total"].backward()
    optimizer.step()
    unchanged = [name for name, p in model.named_parameters() if p.requires_grad and torch.equal(p, before[name])]
    assert unchanged == []
    assert all(torch.equal(dict(model.named_parameters())[name], before[name]) for name in frozen)


def test_tiny_model_overfits_a_small_batch() -> None:
    model = _tiny().train()
    clips, memory = _clips(8), _memory()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    totals = []
    for _ in range(40):
        optimizer.zero_grad()
        output = model(clips, memory=memory, camids=CAMIDS)
        parts = compute_losses(output, LABELS, LossWeights(), seq_len=2)
        parts["total"].backward()
        optimizer.step()
        totals.append(parts["total"].item())
    assert totals[-1] < totals[0] / 10
    # Label smoothing 0.1 over 4 classes bounds each cross-entropy below by 0.349, so frame_id >= 0.349 / T.
    assert parts["frame_id"].item() < 0.2 and parts["triplet"].item() < 0.05
    assert torch.equal(output.cls_scores.argmax(dim=1), LABELS) and torch.equal(output.v2m_logits.argmax(dim=1), LABELS)
