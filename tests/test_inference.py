"""Embedding passes: dense and rrs test embeddings checked against explicit loops, the CLIP-Memory, and
`tfclip extract` (table schema, metadata, unreadable tracklets, inputs given as paths)."""

import dataclasses
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from tiny_training import TINY_CONFIG as CONFIG, save_tiny_checkpoint, tiny_manifest
from tfclip_cli import inference
from tfclip_cli.checkpoint import file_sha256
from tfclip_cli.cli import app
from tfclip_cli.clips import ClipTransform, read_frames
from tfclip_cli.frames import FrameTransform, sample_dense, sample_rrs_test, tracklet_from_path
from tfclip_cli.errors import DataError
from tfclip_cli.model import build_model
from tfclip_cli.runtime import embed_crop_tracklets
from tfclip_cli.tables import (
    ManifestInfo,
    manifest_from_tracklets,
    read_embeddings,
    read_manifest,
    write_manifest,
)

TRANSFORM = ClipTransform((64, 32), normalization="imagenet", is_train=False)


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    return tiny_manifest(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CONFIG).eval()


@pytest.fixture(scope="module")
def checkpoint(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "model.ckpt"
    return save_tiny_checkpoint(model, path)


def _longest(manifest: Path, split: str):
    return max(read_manifest(manifest).tracklets(split), key=lambda t: t.num_frames)


def test_dense_averages_all_clip_embeddings_before_any_normalisation(manifest, model):
    tracklet = _longest(manifest, "gallery")
    clips = sample_dense(tracklet.num_frames, 4)
    assert len(clips) >= 2
    with torch.inference_mode():
        expected = torch.stack([
            model.embed(TRANSFORM(read_frames(tracklet, clip))[None], torch.tensor([tracklet.camid]))[0]
            for clip in clips
        ]).mean(dim=0)
    result = inference.extract_embeddings(model, [tracklet], sampling="dense", transform=TRANSFORM,
                                          device=torch.device("cpu"), batch_size=3, workers=0)
    assert result.failures == ()
    np.testing.assert_allclose(result.embeddings.vectors[0], expected.numpy(), rtol=1e-4, atol=1e-5)
    assert result.embeddings.dim == 2 * 128 + 64


def test_rrs_embeds_the_first_frame_of_each_chunk_and_batches_do_not_change_results(manifest, model):
    tracklets = read_manifest(manifest).tracklets("query")
    with torch.inference_mode():
        expected = np.stack([
            model.embed(TRANSFORM(read_frames(t, sample_rrs_test(t.num_frames, 4)))[None],
                        torch.tensor([t.camid]))[0].numpy()
            for t in tracklets
        ])
    for batch_size in (1, 5):
        result = inference.extract_embeddings(model, tracklets, sampling="rrs", transform=TRANSFORM,
                                              device=torch.device("cpu"), batch_size=batch_size, workers=0)
        assert list(result.embeddings.rows["tracklet_id"]) == [t.tracklet_id for t in tracklets]
        np.testing.assert_allclose(result.embeddings.vectors, expected, rtol=1e-4, atol=1e-5)


def test_memory_is_the_mean_per_identity_of_tracklet_means_whatever_the_order(manifest, model):
    train = read_manifest(manifest).tracklets("train")[:6]
    with torch.inference_mode():
        per_tracklet = {
            t.tracklet_id: torch.stack([model.memory_features(TRANSFORM(read_frames(t, c))[None])[0]
                                        for c in sample_dense(t.num_frames, 4)]).mean(dim=0)
            for t in train
        }
    pids = sorted({t.pid for t in train})
    expected = torch.stack([torch.stack([per_tracklet[t.tracklet_id] for t in train if t.pid == pid]).mean(dim=0)
                            for pid in pids])
    shuffled = train[:]
    random.Random(1).shuffle(shuffled)
    memory = inference.build_memory(model, shuffled, transform=TRANSFORM, device=torch.device("cpu"),
                                    fingerprint="f", workers=0, batch_size=4)
    assert memory.pid_to_label == {pid: label for label, pid in enumerate(pids)}
    torch.testing.assert_close(memory.features, expected, rtol=1e-4, atol=1e-5)


def test_memory_fingerprint_changes_with_the_rows_and_the_weights(manifest):
    train = read_manifest(manifest).tracklets("train")
    base = inference.memory_fingerprint(train, weights="openai:ViT-B-16", settings={"seq_len": 8})
    assert base == inference.memory_fingerprint(train[::-1], weights="openai:ViT-B-16", settings={"seq_len": 8})
    assert base != inference.memory_fingerprint(train[1:], weights="openai:ViT-B-16", settings={"seq_len": 8})
    assert base != inference.memory_fingerprint(train, weights="file:abc", settings={"seq_len": 8})


def test_extract_writes_the_table_with_its_provenance(manifest, checkpoint, tmp_path):
    out = tmp_path / "e.parquet"
    result = CliRunner().invoke(app, ["extract", "--checkpoint", str(checkpoint), "--manifest", str(manifest),
                                      "--out", str(out), "--sampling", "rrs", "--workers", "0"])
    assert result.exit_code == 0, result.output
    source = read_manifest(manifest)
    expected = [t.tracklet_id for t in source.tracklets("query") + source.tracklets("gallery")]
    embeddings = read_embeddings(out)
    assert list(embeddings.rows["tracklet_id"]) == expected
    assert set(embeddings.rows["split"]) == {"query", "gallery"}
    assert embeddings.vectors.shape == (len(expected), 320)
    info = embeddings.info
    assert info["checkpoint"] == str(checkpoint.resolve())
    assert info["checkpoint_sha256"] == file_sha256(checkpoint)
    assert (info["sampling"], info["embedding"], info["gallery_rule"]) == ("rrs", "before_bn", "gallery_only")
    column = pq.read_schema(out).field("embedding").type
    assert pa.types.is_fixed_size_list(column) and column.value_type == pa.float32() and column.list_size == 320


def test_extract_runs_fp32_unless_told_and_records_the_precision_it_ran_at(manifest, checkpoint, tmp_path):
    base = ["extract", "-c", str(checkpoint), "-m", str(manifest), "--sampling", "rrs", "--workers", "0"]
    tables = {}
    for precision in ("default", "fp16", "bf16"):
        out = tmp_path / f"{precision}.parquet"
        option = [] if precision == "default" else ["--precision", precision]
        result = CliRunner().invoke(app, [*base, "--out", str(out), *option])
        assert result.exit_code == 0, result.output
        tables[precision] = read_embeddings(out)
    assert tables["default"].info["precision"] == "fp32"  # the reference evaluates in fp32
    # no fp16 autocast on the CPU: it runs (and says) fp32, identical vectors; bf16 autocast runs and differs a little
    assert (tables["fp16"].info["precision"], tables["bf16"].info["precision"]) == ("fp32", "bf16")
    assert np.array_equal(tables["fp16"].vectors, tables["default"].vectors)
    assert not np.array_equal(tables["bf16"].vectors, tables["default"].vectors)
    assert np.allclose(tables["bf16"].vectors, tables["default"].vectors, atol=0.1)


def _with_a_broken_tracklet(manifest: Path, folder: Path) -> tuple[Path, str]:
    """The query split with one frame-folder tracklet whose first frame is not an image."""
    tracklets = read_manifest(manifest).tracklets("query")
    index, victim = next((i, t) for i, t in enumerate(tracklets) if t.frames)
    broken = folder / "broken"
    shutil.copytree(Path(victim.frames[0]).parent, broken)
    (broken / Path(victim.frames[0]).name).write_bytes(b"not a jpeg")
    frames = tuple(str(broken / Path(f).name) for f in victim.frames)
    tracklets[index] = dataclasses.replace(victim, frames=frames)
    path = folder / "broken.parquet"
    write_manifest(manifest_from_tracklets(tracklets, ManifestInfo("x", "gallery_only", str(folder))), path)
    return path, str(broken)


def test_unreadable_tracklets_fail_the_extraction_and_write_nothing(manifest, checkpoint, tmp_path):
    broken, source = _with_a_broken_tracklet(manifest, tmp_path)
    out = tmp_path / "e.parquet"
    args = ["extract", "-c", str(checkpoint), "-m", str(broken), "--split", "query", "--out", str(out),
            "--workers", "0"]
    result = CliRunner().invoke(app, args, terminal_width=400)
    assert result.exit_code == 2
    assert "1 unreadable tracklet(s), nothing written" in result.output and source in result.output
    assert not out.exists() and not list(tmp_path.glob(".e.parquet*"))
    skipped = CliRunner().invoke(app, [*args, "--skip-bad"], terminal_width=400)
    assert skipped.exit_code == 0, skipped.output
    assert "skipped:" in skipped.output and source in skipped.output
    assert len(read_embeddings(out).rows) == read_manifest(broken).split_counts()["query"] - 1


def test_extract_embeds_videos_and_frame_folders_given_as_paths(manifest, checkpoint, tmp_path):
    tracklets = read_manifest(manifest).tracklets("gallery")
    video = next(t.video for t in tracklets if t.video)
    folder = next(t.source for t in tracklets if t.frames)
    out = tmp_path / "e.parquet"
    args = ["extract", "-c", str(checkpoint), video, folder, str(tmp_path / "missing.mp4"), "--out", str(out),
            "--camid", "1", "--workers", "0"]
    result = CliRunner().invoke(app, args, terminal_width=400)
    assert result.exit_code == 2 and "missing.mp4" in result.output and not out.exists()
    result = CliRunner().invoke(app, [*args, "--skip-bad"], terminal_width=400)
    assert result.exit_code == 0, result.output
    embeddings = read_embeddings(out)
    assert list(embeddings.rows["tracklet_id"]) == [video, folder]
    assert list(embeddings.rows["pid"]) == [-1, -1] and list(embeddings.rows["camid"]) == [1, 1]
    assert "gallery_rule" not in embeddings.info


def test_extract_reports_and_skips_a_video_whose_name_is_not_utf8(manifest, checkpoint, tmp_path):
    video = next(t.video for t in read_manifest(manifest).tracklets("gallery") if t.video)
    odd = os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9.mp4")  # a Latin-1 file name
    shutil.copy(video, odd)
    out = tmp_path / "e.parquet"
    args = ["extract", "-c", str(checkpoint), video, odd, "--out", str(out), "--workers", "0"]
    result = CliRunner().invoke(app, args, terminal_width=400)
    assert result.exit_code == 2 and "caf\\xe9.mp4: the name is not valid UTF-8" in result.output
    assert "Traceback" not in result.output and not out.exists()
    result = CliRunner().invoke(app, [*args, "--skip-bad"], terminal_width=400)
    assert result.exit_code == 0, result.output
    assert "skipped: " in result.output and list(read_embeddings(out).rows["tracklet_id"]) == [video]


def test_extract_refuses_an_existing_output_and_ambiguous_inputs(manifest, checkpoint, tmp_path):
    out = tmp_path / "e.parquet"
    out.write_text("keep me")
    runner = CliRunner()
    result = runner.invoke(app, ["extract", "-c", str(checkpoint), "-m", str(manifest), "--out", str(out)])
    assert result.exit_code == 2 and "already exists" in result.output and out.read_text() == "keep me"
    result = runner.invoke(app, ["extract", "-c", str(checkpoint), "--out", str(tmp_path / "x.parquet")])
    assert result.exit_code == 2 and "either --manifest" in result.output


def test_embed_tracklets_embeds_query_clips_without_camera_and_names_bad_ones(manifest, model, tmp_path):
    tracklets = read_manifest(manifest).tracklets("query")
    query = [tracklet_from_path(Path(t.source)) for t in tracklets[:2]]
    vectors = inference.embed_tracklets(model, query, sampling="rrs", transform=TRANSFORM,
                                        device=torch.device("cpu"))
    assert vectors.shape == (2, 320) and query[0].pid == -1
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no frame images"):
        tracklet_from_path(tmp_path / "empty")


@pytest.mark.parametrize("sampling", ["dense", "rrs"])
def test_crops_in_memory_embed_as_the_same_frames_read_from_files(model, tmp_path, sampling):
    # crops of one size already at the model's input size: decoding a PNG gives the same pixels back, so the
    # in-memory path and the file path must agree (crops of other sizes are resized each on its own)
    rng = np.random.default_rng(0)
    tracklets = [[rng.integers(0, 255, (*CONFIG.image_size, 3), dtype=np.uint8) for _ in range(count)]
                 for count in (5, 11)]
    files = []
    for number, crops in enumerate(tracklets):
        folder = tmp_path / str(number)
        folder.mkdir()
        for index, crop in enumerate(crops):
            Image.fromarray(crop).save(folder / f"{index:06d}.png")
        files.append(tracklet_from_path(folder))
    cpu = torch.device("cpu")
    test = FrameTransform(TRANSFORM.image_size, normalization=TRANSFORM.normalization)
    in_memory = embed_crop_tracklets(inference.batch_embedder(model, cpu), tracklets, sampling=sampling,
                                     seq_len=CONFIG.seq_len, transform=test, dim=model.embedding_dim)
    from_files = inference.embed_tracklets(model, files, sampling=sampling, transform=TRANSFORM, device=cpu)
    np.testing.assert_allclose(in_memory, from_files, rtol=1e-4, atol=1e-5)


def test_torchrun_extraction_shards_and_merges_in_manifest_order(manifest, checkpoint, tmp_path):
    single, sharded = tmp_path / "one.parquet", tmp_path / "two.parquet"
    base = ["extract", "-c", str(checkpoint), "-m", str(manifest), "--sampling", "rrs", "--workers", "0"]
    assert CliRunner().invoke(app, [*base, "--out", str(single)]).exit_code == 0
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "-m", "tfclip_cli", *base,
               "--out", str(sharded)]
    done = subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_embeddings(single), read_embeddings(sharded)
    assert list(two.rows["tracklet_id"]) == list(one.rows["tracklet_id"])
    np.testing.assert_allclose(two.vectors, one.vectors, rtol=1e-4, atol=1e-5)
