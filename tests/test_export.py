"""ONNX: sessions that name the file, `tfclip export` (one file, metadata, verification, exit codes), and the
onnx backend of `extract` and `query` checked against the torch backend on the tiny synthetic dataset."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from typer.testing import CliRunner

from fresh_tfclip import run_fresh_tfclip
from test_inference import manifest, model  # noqa: F401  (the module-scoped tiny data and model, reused)
from tiny_training import TINY_CONFIG as CONFIG, save_tiny_checkpoint
from tfclip_cli import __version__, export, quantize
from tfclip_cli.checkpoint import Checkpoint, file_sha256, save_checkpoint
from tfclip_cli.cli import app
from tfclip_cli.errors import UserError
from tfclip_cli.evaluate import evaluate_file
from tfclip_cli.frames import CLIP_MEAN, CLIP_STD
from tfclip_cli.index import SearchOptions, build_index, query
from tfclip_cli.model import ModelConfig
from tfclip_cli.runtime import OnnxEmbedder, available_providers, onnx_session, read_metadata
from tfclip_cli.tables import read_embeddings, read_manifest


def _doubling_model(path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    graph = helper.make_graph([helper.make_node("Mul", ["x", "two"], ["y"])], "double", [x], [y], [two])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_onnx_session_runs_a_model(tmp_path: Path) -> None:
    _doubling_model(tmp_path / "double.onnx")
    session = onnx_session(tmp_path / "double.onnx")
    (out,) = session.run(None, {"x": np.ones((2, 3), np.float32)})
    np.testing.assert_array_equal(out, np.full((2, 3), 2.0, np.float32))


def test_onnx_session_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="missing.onnx not found"):
        onnx_session(tmp_path / "missing.onnx")


def test_onnx_session_names_a_file_that_is_not_onnx(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(UserError, match="bad.onnx is not a loadable ONNX model"):
        onnx_session(tmp_path / "bad.onnx")


def test_cpu_provider_is_always_last() -> None:
    assert available_providers(use_gpu=True)[-1] == "CPUExecutionProvider"
    assert available_providers(use_gpu=False) == ["CPUExecutionProvider"]


# ------------------------------------------------------------------------------------- tfclip export and backends



@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    return save_tiny_checkpoint(model, path, normalization="clip")


@pytest.fixture(scope="module")
def exported(checkpoint, tmp_path_factory, one_torch_thread):
    """`tfclip export` of the tiny checkpoint: (the .onnx path, the command's output)."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    result = CliRunner().invoke(app, ["export", "-c", str(checkpoint), "--out", str(out)], terminal_width=400)
    assert result.exit_code == 0, result.output
    return out, result.output


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_export_writes_one_file_whose_metadata_describes_the_checkpoint(exported, checkpoint):
    path, output = exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.onnx"]  # no .data, no temporary folder
    props = {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}
    assert (props["image_size"], props["seq_len"], props["embedding_dim"]) == ("[64, 32]", "4", "320")
    assert (props["embedding"], props["num_cameras"], props["precision"]) == ('"before_bn"', "2", '"fp32"')
    metadata = read_metadata(path)
    assert (metadata.mean, metadata.std) == (CLIP_MEAN, CLIP_STD)
    assert metadata.checkpoint_sha256 == file_sha256(checkpoint)
    assert metadata.tfclip_version == __version__ and ModelConfig.from_dict(metadata.model_config) == CONFIG
    printed = re.sub(r"[\s│]", "", output)  # the table folds long values across lines
    assert file_sha256(checkpoint) in printed and "5randomclips" in printed and "mincosine" in printed


@torch.inference_mode()
def test_onnx_embedder_matches_torch_for_any_batch_size_and_unknown_cameras(exported, model):
    embedder = OnnxEmbedder(exported[0])
    generator = torch.Generator().manual_seed(1)
    for batch, camids in ((1, torch.tensor([1])), (5, torch.tensor([0, 1, 1, 0, 1])), (3, None)):
        clips = torch.randn(batch, 4, 3, 64, 32, generator=generator)
        expected, found = model.embed(clips, camids).numpy(), embedder.embed(clips, camids).numpy()
        assert found.shape == (batch, 320)
        assert np.abs(found - expected).max() < 1e-4 and _cosines(found, expected).min() > 0.9999
    with pytest.raises(ValueError, match="outside 0..1"):
        embedder.embed(clips, torch.tensor([0, 2, 1]))


def test_unknown_camera_rows_embed_exactly_like_no_camera(model):
    clips = torch.randn(2, 4, 3, 64, 32)
    with torch.inference_mode():
        unknown = model.embed_with_camera(clips, model.camera_rows(torch.tensor([-1, -1])))
        assert torch.equal(unknown, model.embed(clips, None))
        known = model.embed_with_camera(clips, model.camera_rows(torch.tensor([1, -1])))
        # batches of different sizes may take different CPU kernels: equal up to float rounding, not bitwise
        torch.testing.assert_close(known[0], model.embed(clips[:1], torch.tensor([1]))[0], rtol=1e-5, atol=1e-5)


def test_export_then_onnx_extract_gives_the_embeddings_and_map_of_torch(exported, checkpoint, manifest, tmp_path):
    runner = CliRunner()
    tables = {}
    for backend, weights in (("torch", checkpoint), ("onnx", exported[0])):
        tables[backend] = tmp_path / f"{backend}.parquet"
        args = ["extract", "-c", str(weights), "-m", str(manifest), "--out", str(tables[backend]),
                "--workers", "0", "--backend", backend]
        result = runner.invoke(app, args, terminal_width=400)
        assert result.exit_code == 0, result.output
    torch_table, onnx_table = read_embeddings(tables["torch"]), read_embeddings(tables["onnx"])
    assert list(onnx_table.rows["tracklet_id"]) == list(torch_table.rows["tracklet_id"])
    assert np.abs(onnx_table.vectors - torch_table.vectors).max() < 1e-4
    assert _cosines(onnx_table.vectors, torch_table.vectors).min() > 0.9999
    assert onnx_table.info["checkpoint_sha256"] == torch_table.info["checkpoint_sha256"] == file_sha256(checkpoint)
    assert (onnx_table.info["backend"], torch_table.info["backend"]) == ("onnx", "torch")
    on_torch, on_onnx = evaluate_file(tables["torch"]), evaluate_file(tables["onnx"])
    assert on_onnx.mAP == pytest.approx(on_torch.mAP, abs=1e-6) and on_onnx.num_query == on_torch.num_query
    assert (on_onnx.rank1, on_onnx.rank5, on_onnx.mINP) == pytest.approx((on_torch.rank1, on_torch.rank5,
                                                                          on_torch.mINP), abs=1e-6)


@pytest.fixture(scope="module")
def torch_gallery(checkpoint, manifest, tmp_path_factory) -> Path:
    """A gallery of the tiny dataset's tracklets embedded by the checkpoint (PyTorch)."""
    folder = tmp_path_factory.mktemp("gallery")
    extract = ["extract", "-c", str(checkpoint), "-m", str(manifest), "--out", str(folder / "e.parquet"),
               "--workers", "0"]
    assert CliRunner().invoke(app, extract).exit_code == 0
    build_index(read_embeddings(folder / "e.parquet"), folder / "g.faiss")
    return folder / "g.faiss"


def test_query_onnx_backend_finds_the_hits_of_torch_and_exports_a_recorded_checkpoint(
    exported, torch_gallery, manifest
):
    clip = [next(Path(t.source) for t in read_manifest(manifest).tracklets("query") if t.frames)]

    def hits(**options) -> list[tuple[str, float]]:
        (result,) = query(torch_gallery, clip, SearchOptions(top_k=5, **options))
        return [(hit.tracklet_id, hit.score) for hit in result.hits]

    expected = hits()
    for found in (hits(checkpoint=exported[0], backend="onnx"), hits(backend="onnx")):
        assert [tracklet for tracklet, _ in found] == [tracklet for tracklet, _ in expected]
        assert np.allclose([score for _, score in found], [score for _, score in expected], atol=1e-5)


def test_query_with_an_exported_file_never_imports_torch_and_finds_the_torch_hits(exported, torch_gallery, manifest):
    queries = read_manifest(manifest).tracklets("query")
    clips = [next(Path(t.source) for t in queries if t.is_video), next(Path(t.source) for t in queries if t.frames)]
    # no --backend: the .onnx file says onnxruntime; the default detector tells crop from footage (OpenCV)
    answer, status = run_fresh_tfclip("query", *clips, "-c", exported[0], "--gallery", torch_gallery, "-k", "5")
    assert status["loaded"] == []
    on_torch = CliRunner().invoke(app, ["query", *map(str, clips), "--gallery", str(torch_gallery), "-k", "5",
                                        "--json"])
    assert on_torch.exit_code == 0, on_torch.output
    for onnx_query, torch_query in zip(answer["queries"], json.loads(on_torch.stdout)["queries"], strict=True):
        (onnx_person,), (torch_person,) = onnx_query["persons"], torch_query["persons"]
        assert [h["tracklet_id"] for h in onnx_person["hits"]] == [h["tracklet_id"] for h in torch_person["hits"]]
        np.testing.assert_allclose([h["score"] for h in onnx_person["hits"]],
                                   [h["score"] for h in torch_person["hits"]], atol=1e-4)


SERVE_ONNX = """
import json, sys
from pathlib import Path
from tfclip_cli.serve.service import ServeConfig, Service
from tfclip_cli.serve.uploads import UploadLimits
gallery, model, clip, store = map(Path, sys.argv[1:])
service = Service(ServeConfig(gallery=gallery, checkpoint=model, device=None, allow_dirs=(), store=store,
                              limits=UploadLimits(max_bytes=2**26, max_frames=1000), detector="hog"))
with clip.open("rb") as upload:
    answer = service.query(upload, top_k=5, min_score=None, camids=None)
loaded = sorted(name for name in ("torch", "open_clip", "torchvision") if name in sys.modules)
print(json.dumps({"hits": [[hit["tracklet_id"], hit["score"]] for hit in answer["hits"]], "loaded": loaded}))
"""


def test_serving_an_exported_file_never_imports_torch_and_answers_the_torch_hits(exported, torch_gallery, manifest,
                                                                                  tmp_path):
    clip = next(Path(t.source) for t in read_manifest(manifest).tracklets("query") if t.is_video)
    run = subprocess.run([sys.executable, "-c", SERVE_ONNX, str(torch_gallery), str(exported[0]), str(clip),
                          str(tmp_path / "store")], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    served = json.loads(run.stdout)
    assert served["loaded"] == []
    (expected,) = query(torch_gallery, [clip], SearchOptions(top_k=5))
    assert [tracklet for tracklet, _ in served["hits"]] == [hit.tracklet_id for hit in expected.hits]
    np.testing.assert_allclose([score for _, score in served["hits"]], [hit.score for hit in expected.hits],
                               atol=1e-4)


def test_failed_verification_exits_1_and_keeps_no_file_unless_not_verifying(
    exported, checkpoint, tmp_path, monkeypatch
):
    # A tolerance nothing meets stands in for a broken export; copying the tested file skips a second export.
    monkeypatch.setattr(export, "_write_onnx", _copy_of_the_fp32_export(exported))
    monkeypatch.setitem(export.TOLERANCES, "fp32", export.Tolerance(max_abs_diff=1e-4, min_cosine=1.5))
    out = tmp_path / "model.onnx"
    result = CliRunner().invoke(app, ["export", "-c", str(checkpoint), "--out", str(out)], terminal_width=400)
    assert result.exit_code == 1 and "verification failed" in result.output and "min cosine" in result.output
    assert list(tmp_path.iterdir()) == []
    result = CliRunner().invoke(app, ["export", "-c", str(checkpoint), "--out", str(out), "--no-verify"],
                                terminal_width=400)
    assert result.exit_code == 0 and "skipped (--no-verify)" in result.output and out.is_file()


def test_fp16_export_is_verified_to_its_stated_tolerance(checkpoint, model, tmp_path, one_torch_thread):
    out = tmp_path / "half.onnx"
    result = CliRunner().invoke(app, ["export", "-c", str(checkpoint), "--out", str(out), "--fp16"],
                                terminal_width=400)
    assert result.exit_code == 0, result.output
    tolerance = export.TOLERANCES["fp16"]
    assert f"(>= {tolerance.min_cosine:g})" in re.sub(r"\s*│\s*", " ", result.output)
    assert read_metadata(out).precision == "fp16"
    clips = torch.randn(2, 4, 3, 64, 32)
    found = OnnxEmbedder(out).embed(clips).numpy()
    with torch.inference_mode():
        expected = model.embed(clips).numpy()
    assert 0 < np.abs(found - expected).max() <= tolerance.max_abs_diff  # fp16 weights really are in the file
    assert _cosines(found, expected).min() >= tolerance.min_cosine


def _with_metadata(source: Path, target: Path, **changes: str) -> Path:
    proto = onnx.load(str(source))
    for prop in proto.metadata_props:
        prop.value = changes.get(prop.key, prop.value)
    onnx.save(proto, str(target))
    return target


def test_bad_inputs_are_one_line_errors_with_exit_2(exported, checkpoint, manifest, tmp_path):
    runner = CliRunner()
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    _doubling_model(tmp_path / "plain.onnx")
    resized = _with_metadata(exported[0], tmp_path / "resized.onnx", image_size="[128, 64]")
    cases = [
        (["export", "-c", str(tmp_path / "foreign.pt"), "--out", str(tmp_path / "a.onnx")], "not a tfclip checkpoint"),
        (["export", "-c", str(checkpoint), "--out", str(exported[0])], "already exists"),
        (["extract", "-c", str(tmp_path / "plain.onnx"), "-m", str(manifest), "--out", str(tmp_path / "e.parquet"),
          "--backend", "onnx"], "has no tfclip metadata"),
        (["extract", "-c", str(resized), "-m", str(manifest), "--out", str(tmp_path / "e.parquet"),
          "--backend", "onnx"], "input size does not match"),
        (["extract", "-c", str(exported[0]), "-m", str(manifest), "--out", str(tmp_path / "e.parquet"),
          "--backend", "torch"], "is an ONNX model"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args, terminal_width=400)
        assert result.exit_code == 2 and message in result.output, (args, result.output)
        assert "Traceback" not in result.output
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "e.parquet").exists()


def test_a_checkpoint_run_with_onnx_is_exported_and_verified_once_beside_it_until_it_changes(
    exported, model, tmp_path, monkeypatch, one_torch_thread
):
    folder = tmp_path / "run"
    folder.mkdir()
    checkpoint = save_tiny_checkpoint(model, folder / "model.ckpt", normalization="clip")
    # copying the tested export stands in for writing one (minutes on a busy runner; `exported` and the query
    # test above write real ones through this cache); the verification against the checkpoint's model still runs
    monkeypatch.setattr(export, "_write_onnx", _copy_of_the_fp32_export(exported))
    exports, verifications = [], []
    export_checkpoint, verify_onnx = export.export_checkpoint, export.verify_onnx
    monkeypatch.setattr(export, "export_checkpoint", lambda *a, **k: exports.append(a) or export_checkpoint(*a, **k))
    monkeypatch.setattr(export, "verify_onnx", lambda *a, **k: verifications.append(a) or verify_onnx(*a, **k))

    def files() -> list[str]:
        return sorted(path.name for path in folder.iterdir())

    first, second = export.load_embedder(checkpoint), export.load_embedder(checkpoint)
    key = export.export_key(file_sha256(checkpoint), "fp32")
    assert first.path == second.path == folder / f"model.ckpt.{key}.onnx"
    assert (len(exports), len(verifications)) == (1, 1) and files() == ["model.ckpt", first.path.name]
    clips = torch.randn(2, 4, 3, 64, 32)
    with torch.inference_mode():
        assert np.abs(second.embed(clips).numpy() - model.embed(clips).numpy()).max() < 1e-4

    # the checkpoint is replaced (another pid mapping, the same weights): exported again, the older export goes
    save_checkpoint(Checkpoint(model_config=CONFIG.to_dict(), model_state=model.state_dict(), pid_to_label={7: 0},
                               recipe={"data": {"normalization": "clip"}}), checkpoint)
    changed = export.load_embedder(checkpoint)
    assert changed.path.name == f"model.ckpt.{export.export_key(file_sha256(checkpoint), 'fp32')}.onnx"
    assert (len(exports), len(verifications)) == (2, 2) and files() == ["model.ckpt", changed.path.name]
    monkeypatch.setattr(export, "__version__", "99.0")  # a new exporter: the settings changed
    upgraded = export.load_embedder(checkpoint)
    assert (len(exports), len(verifications)) == (3, 3) and upgraded.path != changed.path
    assert files() == ["model.ckpt", upgraded.path.name]
    assert export.export_key("0" * 64, "fp32") not in {export.export_key("0" * 64, "fp16"),
                                                       export.export_key("1" * 64, "fp32")}

    monkeypatch.setattr(export, "_is_writable", lambda folder: False)  # a read-only folder: exported for the run
    assert export.load_embedder(checkpoint).embed(clips).shape == (2, 320)
    assert (len(exports), len(verifications)) == (4, 4) and files() == ["model.ckpt", upgraded.path.name]


# ------------------------------------------------------------------------------------------------ export --int8


def _copy_of_the_fp32_export(exported):
    """Stands in for `_write_onnx`: the module's tested fp32 export, copied (an export takes half a minute here)."""
    return lambda model, path, **_: shutil.copy(exported[0], path)


@pytest.fixture(scope="module")
def int8_exported(exported, checkpoint, manifest, tmp_path_factory, one_torch_thread):
    """`tfclip export --int8 --check-on` of the tiny checkpoint: (the .onnx path, the command's output)."""
    out = tmp_path_factory.mktemp("int8") / "model-int8.onnx"
    result = CliRunner().invoke(app, ["export", "-c", str(checkpoint), "--out", str(out), "--int8",
                                      "--check-on", str(manifest)], terminal_width=400)
    assert result.exit_code == 0, result.output
    return out, result.output


def _verification_clips() -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """The clips `verify_onnx` draws, rebuilt by hand: seed 0, 3 clips with cameras 0,1,0 then 2 without."""
    generator = torch.Generator().manual_seed(0)
    clips = [torch.randn(3, 4, 3, 64, 32, generator=generator)]
    clips.append(torch.randn(2, 4, 3, 64, 32, generator=generator))
    return [(clips[0], torch.tensor([0, 1, 0])), (clips[1], None)]


def test_int8_export_records_its_cosine_to_fp32_and_its_retrieval_beside_fp32(
    int8_exported, exported, checkpoint, manifest, tmp_path
):
    path, output = int8_exported
    assert sorted(p.name for p in path.parent.iterdir()) == ["model-int8.onnx"]
    metadata = read_metadata(path)
    assert metadata.precision == "int8" and metadata.checkpoint_sha256 == file_sha256(checkpoint)
    graph = onnx.load(str(path))
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= {node.op_type for node in graph.graph.node}
    assert path.stat().st_size < 0.5 * exported[0].stat().st_size
    figures = json.loads({prop.key: prop.value for prop in graph.metadata_props}["int8_accuracy"])
    fp32, int8 = OnnxEmbedder(exported[0]), OnnxEmbedder(path)
    cosines = np.concatenate([_cosines(fp32.embed(clips, camids).numpy(), int8.embed(clips, camids).numpy())
                              for clips, camids in _verification_clips()])
    assert figures["num_clips"] == 5
    assert figures["min_cosine"] == pytest.approx(cosines.min(), abs=1e-6)
    assert figures["mean_cosine"] == pytest.approx(cosines.mean(), abs=1e-6)
    # fp32 retrieval is what `extract` + `evaluate` report for the checkpoint
    table = tmp_path / "torch.parquet"
    extract = ["extract", "-c", str(checkpoint), "-m", str(manifest), "--out", str(table), "--workers", "0"]
    assert CliRunner().invoke(app, extract).exit_code == 0
    on_torch = evaluate_file(table)
    assert (figures["fp32"]["mAP"], figures["fp32"]["rank1"]) == pytest.approx((on_torch.mAP, on_torch.rank1),
                                                                                abs=1e-5)
    assert figures["check_on"] == str(manifest) and figures["num_query"] == on_torch.num_query
    assert 0 <= figures["int8"]["mAP"] <= 1 and 0 <= figures["int8"]["rank1"] <= 1
    printed = re.sub(r"[\s│]", "", output)
    assert "int8vsfp32" in printed and f"mAPfp32{100 * on_torch.mAP:.2f}%" in printed


@torch.inference_mode()
def test_int8_file_embeds_through_the_onnx_backend_close_to_torch_fp32(int8_exported, model):
    embedder = OnnxEmbedder(int8_exported[0])  # loaded exactly as an fp32 file is
    clips = torch.randn(6, 4, 3, 64, 32, generator=torch.Generator().manual_seed(3))
    camids = torch.tensor([0, 1, 1, 0, 1, 0])
    found, expected = embedder.embed(clips, camids).numpy(), model.embed(clips, camids).numpy()
    assert found.shape == (6, 320)
    # measured 0.99996 on these clips (onnxruntime 1.32); int8 rounding makes it inexact
    assert 0.999 < _cosines(found, expected).min() < 1 - 1e-7


def test_int8_quantises_the_linear_layers_per_output_channel_and_keeps_the_patch_convolution_fp32(int8_exported):
    graph = onnx.load(str(int8_exported[0])).graph
    ops = [node.op_type for node in graph.node]
    assert "Conv" in ops and "ConvInteger" not in ops
    assert any(op in ("MatMulInteger", "DynamicQuantizeMatMul") for op in ops)
    weights = {init.name: init for init in graph.initializer}
    quantized = [name for name, init in weights.items() if init.data_type == TensorProto.INT8 and len(init.dims) == 2]
    scales = [weights[f"{name.removesuffix('_quantized')}_scale"] for name in quantized
              if f"{name.removesuffix('_quantized')}_scale" in weights]
    assert quantized and len(scales) == len(quantized)
    assert all(len(scale.dims) == 1 and scale.dims[0] > 1 for scale in scales)  # one scale per output channel


def test_int8_quantises_self_attention_as_onnxruntimes_qattention_and_fp32_exports_stay_standard_onnx(
    int8_exported, exported, model
):
    int8 = onnx.load(str(int8_exported[0])).graph.node
    blocks = len(model.backbone.vit.transformer.resblocks)
    assert [node.domain for node in int8 if node.op_type == "QAttention"] == ["com.microsoft"] * blocks
    # a plain export runs anywhere ONNX runs: standard operators only
    assert {node.domain for node in onnx.load(str(exported[0])).graph.node} <= {"", "ai.onnx"}


def test_attention_written_for_onnxruntime_matches_pytorch(checkpoint, tmp_path):
    fused = export.export_checkpoint(checkpoint, tmp_path / "fused.onnx", fused_attention=True)
    assert fused.verification.passed and fused.verification.min_cosine > 0.99999
    assert "Attention" in {node.op_type for node in onnx.load(str(fused.path)).graph.node}


def test_int8_export_refuses_a_map_drop_over_the_limit_unless_forced(exported, checkpoint, manifest, tmp_path,
                                                                     monkeypatch):
    # A limit below zero makes any measured drop (even none) too much: the refusal path without a broken model.
    monkeypatch.setattr(export, "_write_onnx", _copy_of_the_fp32_export(exported))
    monkeypatch.setattr(quantize, "MAX_MAP_DROP", -1.0)
    out = tmp_path / "out" / "model-int8.onnx"
    args = ["export", "-c", str(checkpoint), "--out", str(out), "--int8", "--check-on", str(manifest)]
    result = CliRunner().invoke(app, args, terminal_width=400)
    assert result.exit_code == 2 and "points of mAP" in result.output and "not written" in result.output
    assert "Traceback" not in result.output
    assert list(out.parent.iterdir()) == []
    result = CliRunner().invoke(app, args + ["--force"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert read_metadata(out).precision == "int8"


def test_int8_options_that_do_not_combine_exit_2(checkpoint, manifest, tmp_path):
    cases = [
        (["--check-on", str(manifest)], "--check-on measures an int8 export"),
        (["--int8", "--fp16"], "leave out --fp16"),
        (["--int8", "--no-verify"], "leave out --fp16 and --no-verify"),
    ]
    for extra, message in cases:
        result = CliRunner().invoke(app, ["export", "-c", str(checkpoint), "--out", str(tmp_path / "m.onnx"), *extra],
                                    terminal_width=400)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)
    assert list(tmp_path.iterdir()) == []


def test_relinking_with_an_exported_file_embeds_the_cpu_batch_of_clips_per_pass(exported, monkeypatch):
    from tfclip_cli.footage import relink
    from tfclip_cli.runtime import OnnxEmbedder

    batches = []
    real = OnnxEmbedder.embed_array
    monkeypatch.setattr(OnnxEmbedder, "embed_array", lambda self, clips, camids=None: (
        batches.append(len(clips)), real(self, clips, camids))[1])
    relink._load_crop_embedder.cache_clear()
    crops = [np.full((24, 12, 3), value, dtype=np.uint8) for value in range(10)]
    vectors = relink.model_crop_embedder(exported[0])([crops] * 10)
    relink._load_crop_embedder.cache_clear()
    full, rest = divmod(10, relink.CPU_BATCH)
    assert vectors.shape == (10, 320) and batches == [relink.CPU_BATCH] * full + [rest] * (rest > 0)
    np.testing.assert_allclose(vectors, vectors[:1].repeat(10, axis=0), atol=1e-5)  # batching changes nothing
