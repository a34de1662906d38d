"""Weight files: tfclip checkpoints, CLIP weights (OpenAI JIT archive, open_clip state dict) and reference imports."""

import hashlib
import json
import math
import re
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
from typer.testing import CliRunner

from reference_tfclip import reference_embedding, reference_state_dict, reference_training_outputs
from tfclip_cli.checkpoint import (
    Checkpoint,
    file_sha256,
    import_reference_checkpoint,
    load_checkpoint,
    load_clip_weights,
    model_from_checkpoint,
    save_checkpoint,
)
from tfclip_cli.cli import app
from tfclip_cli.errors import CheckpointError
from tfclip_cli.model import ModelConfig, build_model
from tfclip_cli.model.config import MODEL_CONFIG_DIR

TINY = ModelConfig(backbone="tfclip-tiny", image_size=(64, 32), seq_len=2, num_classes=5, num_cameras=3)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _clips(batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, 2, 3, 64, 32, generator=torch.Generator().manual_seed(5))


def _tiny_open_clip(image_size: int) -> open_clip.CLIP:
    """A whole open_clip CLIP (both towers) of the tiny config at a square input, as OpenAI's models are."""
    config = json.loads((MODEL_CONFIG_DIR / "tfclip-tiny.json").read_text())
    config["vision_cfg"]["image_size"] = image_size
    torch.manual_seed(11)
    return open_clip.CLIP(config["embed_dim"], config["vision_cfg"], config["text_cfg"], quick_gelu=True).eval()


def _bilinear_by_loop(grid: torch.Tensor, rows: int, columns: int) -> torch.Tensor:
    """Half-pixel bilinear resize of [g, g, D] to [rows, columns, D], edge-clamped, one output cell at a time."""
    side = grid.shape[0]
    out = torch.empty(rows, columns, grid.shape[2])
    for r in range(rows):
        y = max((r + 0.5) * side / rows - 0.5, 0.0)
        y0, wy = min(math.floor(y), side - 1), y - math.floor(y)
        y1 = min(y0 + 1, side - 1)
        for c in range(columns):
            x = max((c + 0.5) * side / columns - 0.5, 0.0)
            x0, wx = min(math.floor(x), side - 1), x - math.floor(x)
            x1 = min(x0 + 1, side - 1)
            top = grid[y0, x0] * (1 - wx) + grid[y0, x1] * wx
            bottom = grid[y1, x0] * (1 - wx) + grid[y1, x1] * wx
            out[r, c] = top * (1 - wy) + bottom * wy
    return out


# --- tfclip checkpoints ---------------------------------------------------------------------------------------------


def test_checkpoint_round_trip_keeps_every_field(tmp_path: Path) -> None:
    model = build_model(TINY)
    checkpoint = Checkpoint(
        model_config=TINY.to_dict(),
        model_state=model.state_dict(),
        pid_to_label={17: 0, 4: 1},
        memory=torch.ones(5, 64),
        recipe={"solver": {"epochs": 3}},
        training_state={"epoch": 2},
    )
    path = tmp_path / "run" / "last.ckpt"
    save_checkpoint(checkpoint, path)
    loaded = load_checkpoint(path)
    assert loaded.pid_to_label == {17: 0, 4: 1} and loaded.recipe == {"solver": {"epochs": 3}}
    assert loaded.training_state == {"epoch": 2} and torch.equal(loaded.memory, torch.ones(5, 64))
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()
    rebuilt = model_from_checkpoint(loaded, "cpu")
    with torch.inference_mode():
        torch.testing.assert_close(rebuilt.embed(_clips()), model.eval().embed(_clips()))
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_missing_and_corrupt_checkpoints_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nothing.ckpt not found"):
        load_checkpoint(tmp_path / "nothing.ckpt")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a zip file at all")
    with pytest.raises(CheckpointError, match="corrupt.ckpt is not a readable PyTorch file"):
        load_checkpoint(corrupt)
    bare = tmp_path / "bare.pth"
    torch.save({"image_encoder.proj": torch.zeros(2, 2)}, bare)
    with pytest.raises(CheckpointError, match="bare.pth is not a tfclip checkpoint") as raised:
        load_checkpoint(bare)
    assert "import-checkpoint" in raised.value.hint


def test_an_empty_checkpoint_gets_a_reason(tmp_path: Path) -> None:
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"empty.ckpt is empty \(0 bytes\)"):
        load_checkpoint(empty)


class _NotATensor:
    """A class a weights-only reader refuses to build."""


def test_a_file_of_python_objects_never_suggests_weights_only_false(tmp_path: Path) -> None:
    path = tmp_path / "objects.ckpt"
    torch.save({"format": "tfclip-checkpoint", "object": _NotATensor()}, path)
    with pytest.raises(CheckpointError) as raised:
        load_checkpoint(path)
    assert "holds Python objects (test_checkpoint._NotATensor)" in raised.value.message
    assert "weights_only" not in raised.value.message + str(raised.value.hint)


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"version": None}, "has no format version (found None)"),
        ({"model_state": None}, "field model_state holds nothing; expected dict"),
        ({"pid_to_label": [1, 2]}, "field pid_to_label holds list; expected dict"),
        ({"memory": "features"}, "field memory holds str; expected Tensor or NoneType"),
        ({"model_state": {"weight": "not a tensor"}}, "field model_state holds values that are not tensors"),
    ],
)
def test_a_checkpoint_with_fields_missing_or_odd_is_a_checkpoint_error(tmp_path: Path, change, named) -> None:
    payload = {"format": "tfclip-checkpoint", "version": 1, "model_config": TINY.to_dict(), "model_state": {},
               "pid_to_label": {}}
    payload.update(change)
    payload = {key: value for key, value in payload.items() if value is not None}
    path = tmp_path / "odd.ckpt"
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=re.escape(named)):
        load_checkpoint(path)


def test_weights_that_do_not_fit_the_config_are_listed() -> None:
    state = build_model(TINY).state_dict()
    state.pop("camera_embedding")
    state["extra.weight"] = torch.zeros(1)
    state["classifier_cls.weight"] = torch.zeros(9, 128)
    checkpoint = Checkpoint(model_config=TINY.to_dict(), model_state=state, pid_to_label={})
    with pytest.raises(CheckpointError) as raised:
        model_from_checkpoint(checkpoint, "cpu")
    message = raised.value.message
    assert "1 missing: camera_embedding" in message and "1 unexpected: extra.weight" in message
    assert "classifier_cls.weight (9, 128) != (5, 128)" in message


# --- CLIP weights ---------------------------------------------------------------------------------------------------


def test_open_clip_state_dict_loads_with_a_bilinear_positional_resize(tmp_path: Path) -> None:
    clip = _tiny_open_clip(64)  # 4x4 grid; our model has 64x32 -> 4x2
    path = tmp_path / "open_clip_tiny.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in clip.state_dict().items()}}, path)
    model = build_model(TINY)
    load_clip_weights(model, str(path))
    vit = model.backbone.vit
    assert torch.equal(vit.conv1.weight, clip.visual.conv1.weight)
    last_bias = clip.visual.transformer.resblocks[3].mlp.c_proj.bias
    assert torch.equal(vit.transformer.resblocks[3].mlp.c_proj.bias, last_bias)
    source = clip.visual.positional_embedding.detach()
    assert torch.equal(vit.positional_embedding[0], source[0])  # CLS row kept
    expected = _bilinear_by_loop(source[1:].reshape(4, 4, -1), 4, 2).reshape(8, -1)
    torch.testing.assert_close(vit.positional_embedding[1:].detach(), expected)


def test_openai_jit_archive_loads_as_float32(tmp_path: Path) -> None:
    clip = _tiny_open_clip(32)  # 2x2 grid, resized to 4x2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        archive = torch.jit.trace_module(clip, {"encode_image": torch.zeros(1, 3, 32, 32)}, check_trace=False)
        path = tmp_path / "ViT-tiny.pt"
        torch.jit.save(archive.half(), path)  # OpenAI's archives hold float16 weights
    model = build_model(TINY)
    load_clip_weights(model, str(path))
    vit = model.backbone.vit
    assert vit.proj.dtype == torch.float32
    assert torch.equal(vit.proj, clip.visual.proj.half().float())
    assert vit.positional_embedding.shape == (9, 128)
    weights = {key: value.float() for key, value in _jit_load(path).state_dict().items() if key.startswith("visual.")}
    model_weights = {f"visual.{k}": v for k, v in vit.state_dict().items() if k != "positional_embedding"}
    assert all(torch.equal(weights[key], value) for key, value in model_weights.items())


def _jit_load(path: Path) -> torch.jit.ScriptModule:
    """What tfclip used to do with a TorchScript archive: load it, running whatever code it holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(path, map_location="cpu")


class _FileWritingModule(torch.nn.Module):
    """A module whose TorchScript ``__setstate__`` creates a file when the archive is loaded."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(2))
        self.marker = marker

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return self.weight, self.marker, self.training

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.weight = state[0] + torch.from_file(state[1], shared=True, size=2)  # shared=True creates the file
        self.marker = state[1]
        self.training = state[2]


def test_a_torchscript_archive_that_writes_a_file_is_read_without_running(tmp_path: Path) -> None:
    marker = tmp_path / "written-by-the-archive"
    path = tmp_path / "evil.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_FileWritingModule(str(marker))), path)
    with pytest.raises(CheckpointError, match="no visual.. keys"):
        load_clip_weights(build_model(TINY), str(path))
    assert not marker.exists()
    _jit_load(path)  # the archive really is hostile: torch.jit.load runs its code
    assert marker.exists()


def test_a_torchscript_pickle_naming_other_globals_is_refused(tmp_path: Path) -> None:
    import pickle
    import zipfile

    class RunsCommand:
        def __reduce__(self):
            return (exec, ("open(%r, 'w').close()" % str(tmp_path / "marker"),))

    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps(RunsCommand(), protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
    with pytest.raises(CheckpointError, match="names (__builtin__|builtins).exec, which a weights-only reader does not run"):
        load_clip_weights(build_model(TINY), str(path))
    assert not (tmp_path / "marker").exists()


def test_openai_downloads_through_open_clip_and_reads_safetensors(tmp_path: Path, monkeypatch) -> None:
    from safetensors.torch import save_file

    clip = _tiny_open_clip(64)
    weights = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, weights)
    asked = []

    def pretrained_config(name: str, tag: str) -> dict:
        asked.append((name, tag))
        return {"hf_hub": "timm/tiny.openai/"}

    monkeypatch.setattr(open_clip, "get_pretrained_cfg", pretrained_config)
    monkeypatch.setattr(open_clip, "download_pretrained", lambda config: str(weights))
    model = build_model(TINY)
    load_clip_weights(model, "openai")
    assert asked == [("tfclip-tiny", "openai")]
    assert torch.equal(model.backbone.vit.conv1.weight, clip.visual.conv1.weight)

    def offline(config):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(CheckpointError, match="could not download OpenAI CLIP weights for tfclip-tiny") as raised:
        load_clip_weights(model, "openai")
    assert "ViT-B-16.pt" in raised.value.hint


def test_none_keeps_the_random_initialisation() -> None:
    model = build_model(TINY)
    before = model.backbone.vit.conv1.weight.clone()
    load_clip_weights(model, "none")
    assert torch.equal(model.backbone.vit.conv1.weight, before)


def test_bad_clip_weights_are_clear_errors(tmp_path: Path) -> None:
    model = build_model(TINY)
    with pytest.raises(CheckpointError, match="no OpenAI CLIP weights for backbone 'tfclip-tiny'"):
        load_clip_weights(model, "openai")
    with pytest.raises(CheckpointError, match="missing.pt not found"):
        load_clip_weights(model, str(tmp_path / "missing.pt"))
    text_only = tmp_path / "text_only.pt"
    torch.save({"token_embedding.weight": torch.zeros(3, 2)}, text_only)
    with pytest.raises(CheckpointError, match="no visual.. keys"):
        load_clip_weights(model, str(text_only))
    wrong_width = tmp_path / "wrong_width.pt"
    narrow = {f"visual.{k}": v[..., :8] for k, v in model.backbone.vit.state_dict().items()}
    torch.save(narrow, wrong_width)
    with pytest.raises(CheckpointError, match=r"shape mismatch .*conv1.weight \(128, 3, 16, 8\)"):
        load_clip_weights(model, str(wrong_width))


# --- the reference implementation's checkpoints ---------------------------------------------------------------------

EXPECTED_PAIRS = {
    "image_encoder.conv1.weight": "backbone.vit.conv1.weight",
    "image_encoder.transformer.resblocks.3.mlp.c_fc.weight": "backbone.vit.transformer.resblocks.3.mlp.c_fc.weight",
    "image_encoder.proj": "backbone.vit.proj",
    "cv_embed": "camera_embedding",
    "TMD.resblocks.0.message_fc.weight": "tmd.blocks.0.memory_fc.weight",
    "TMD.resblocks.0.message_ln.bias": "tmd.blocks.0.memory_norm.bias",
    "TMD.resblocks.0.message_attn.in_proj_weight": "tmd.blocks.0.memory_attn.in_proj_weight",
    "TMD.resblocks.0.ln_1.weight": "tmd.blocks.0.norm1.weight",
    "TMD.resblocks.0.attn.out_proj.bias": "tmd.blocks.0.attn.out_proj.bias",
    "TMD.resblocks.0.mlp.c_proj.weight": "tmd.blocks.0.mlp.c_proj.weight",
    "SSP.memory_proj.2.weight": "ssp.video_proj.2.weight",
    "SSP.text_proj.1.bias": "ssp.memory_proj.1.bias",
    "SSP.out_proj.0.weight": "ssp.out_proj.0.weight",
    "SSP.decoder.1.self_attn.proj.weight": "ssp.layers.1.self_attn.out_proj.weight",
    "SSP.decoder.0.cross_attn.k_proj.weight": "ssp.layers.0.cross_attn.k_proj.weight",
    "SSP.decoder.1.norm3.bias": "ssp.layers.1.norm3.bias",
    "SSP.decoder.0.mlp.0.weight": "ssp.layers.0.mlp.fc.weight",
    "SSP.decoder.1.mlp.3.bias": "ssp.layers.1.mlp.proj.bias",
    "bottleneck.running_var": "neck_cls.running_var",
    "bottleneck_proj.weight": "neck_proj.weight",
    "bottleneck_proj_temp.running_mean": "neck_frame.running_mean",
    "bottleneck_proj_temp2.bias": "neck_temporal.bias",
    "classifier2.weight": "classifier_cls.weight",
    "classifier_proj.weight": "classifier_proj.weight",
    "classifier_proj_temp.weight": "classifier_temporal.weight",
}
UNUSED = ["SSP.alpha", "SSP.norm.bias", "SSP.norm.weight", "classifier_proj_temp2.weight"]


def test_import_maps_every_reference_key_and_infers_the_config(tmp_path: Path) -> None:
    reference = reference_state_dict()
    source = tmp_path / "best_model.pth.tar"
    torch.save({f"module.{k}": v for k, v in reference.items()}, source)  # as saved from DataParallel
    checkpoint = import_reference_checkpoint(source, seq_len=2)
    config = ModelConfig.from_dict(checkpoint.model_config)
    assert config == ModelConfig(
        backbone="tfclip-tiny", image_size=(64, 32), seq_len=2, num_classes=5, num_cameras=3, tmd_layers=1, ssp_layers=2
    )
    for theirs, ours in EXPECTED_PAIRS.items():
        assert torch.equal(checkpoint.model_state[ours], reference[theirs]), theirs
    assert checkpoint.provenance["ignored_keys"] == UNUSED
    assert len(checkpoint.model_state) == len(reference) - len(UNUSED)
    ours = sorted(v.flatten()[:4].tolist() for v in checkpoint.model_state.values() if v.ndim)
    theirs = sorted(v.flatten()[:4].tolist() for k, v in reference.items() if v.ndim and k not in UNUSED)
    assert ours == theirs  # every used tensor arrives once, unchanged


@pytest.mark.parametrize("embedding,neck_feat", [("before_bn", "before"), ("after_bn", "after")])
def test_imported_model_embeds_like_the_reference(tmp_path: Path, embedding: str, neck_feat: str) -> None:
    reference = reference_state_dict(seed=3)
    torch.save(reference, tmp_path / "ref.pth")
    checkpoint = import_reference_checkpoint(tmp_path / "ref.pth", seq_len=2)
    checkpoint.model_config["embedding"] = embedding
    model = model_from_checkpoint(checkpoint, "cpu")
    clips, camids = _clips(3), torch.tensor([2, 0, 1])
    with torch.inference_mode():
        expected = reference_embedding(reference, clips, camids, neck_feat=neck_feat)
        torch.testing.assert_close(model.embed(clips, camids), expected, atol=1e-5, rtol=1e-4)


def test_imported_model_trains_on_the_reference_scores_and_memory_logits(tmp_path: Path) -> None:
    """SSP, the BNNecks and the classifiers map too: eval-mode training outputs equal the reference's."""
    reference = reference_state_dict(seed=4)
    torch.save(reference, tmp_path / "ref.pth")
    model = model_from_checkpoint(import_reference_checkpoint(tmp_path / "ref.pth", seq_len=2), "cpu")
    clips, camids = _clips(3), torch.tensor([1, 1, 0])
    memory = torch.randn(5, 64, generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        output = model(clips, memory=memory, camids=camids)
        expected = reference_training_outputs(reference, clips, camids, memory)
    for name, value in expected.items():
        torch.testing.assert_close(getattr(output, name), value, atol=1e-5, rtol=1e-4, msg=name)


def test_import_checkpoint_command_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    torch.save(reference_state_dict(), tmp_path / "ref.pth")
    out = tmp_path / "official.ckpt"
    runner = CliRunner()
    result = runner.invoke(app, ["import-checkpoint", str(tmp_path / "ref.pth"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "tfclip-tiny" in result.output
    assert load_checkpoint(out).model_config["num_cameras"] == 3
    again = runner.invoke(app, ["import-checkpoint", str(tmp_path / "ref.pth"), "--out", str(out)])
    assert again.exit_code == 2 and "already exists" in again.output
    forced = runner.invoke(app, ["import-checkpoint", str(tmp_path / "ref.pth"), "--out", str(out), "--force"])
    assert forced.exit_code == 0


def test_import_checkpoint_rejects_unknown_keys_and_shape_mismatches(tmp_path: Path) -> None:
    reference = reference_state_dict()
    reference["prompt_learner.ctx"] = torch.zeros(4, 64)
    torch.save(reference, tmp_path / "extra.pth")
    runner = CliRunner()
    result = runner.invoke(app, ["import-checkpoint", str(tmp_path / "extra.pth"), "--out", str(tmp_path / "a.ckpt")])
    assert result.exit_code == 2 and "prompt_learner.ctx" in result.output
    reference = reference_state_dict()
    reference["TMD.resblocks.0.message_fc.weight"] = torch.zeros(128, 64)
    torch.save(reference, tmp_path / "bad_shape.pth")
    with pytest.raises(CheckpointError, match=r"tmd.blocks.0.memory_fc.weight \(128, 64\) != \(128, 128\)"):
        import_reference_checkpoint(tmp_path / "bad_shape.pth")
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"\x00" * 10)
    result = runner.invoke(app, ["import-checkpoint", str(corrupt), "--out", str(tmp_path / "b.ckpt")])
    assert result.exit_code == 2 and "corrupt.pth" in result.output
    assert not (tmp_path / "a.ckpt").exists() and not (tmp_path / "b.ckpt").exists()
