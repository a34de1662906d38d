"""The benchmark recipes' official protocols: a manifest prepared otherwise is refused before any work, and
`tfclip train` states the protocol it runs (sampling, cut, erasing, precision, gallery rule) before it starts."""

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fake_layouts import make_ilidsvid, make_lsvid
from tfclip_cli.cli import app
from tfclip_cli.datasets import prepare
from tfclip_cli.errors import RecipeError
from tfclip_cli.recipe import load_recipe
from tfclip_cli.tables import read_manifest, write_manifest
from tfclip_cli.train import engine
from tfclip_cli.train.protocol import check_protocol, describe_protocol

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def _manifest(tmp_path: Path, kind: str, root: Path, **options) -> Path:
    path = tmp_path / f"{kind}-{'-'.join(f'{k}{v}' for k, v in options.items())}.parquet"
    write_manifest(prepare(kind, root, **options), path)
    return path


@pytest.fixture
def lsvid_root(tmp_path: Path) -> Path:
    return make_lsvid(tmp_path / "LS-VID", train=[(5, 3, 100), (5, 4, 20), (7, 15, 48), (7, 2, 60)],
                      test=[(8, 1, 4), (8, 2, 5), (9, 3, 2), (9, 7, 6)], query_rows=[1, 3])


@pytest.fixture
def ilidsvid_root(tmp_path: Path) -> Path:
    return make_ilidsvid(tmp_path / "iLIDS-VID", persons={1: (20, 9), 2: (12, 13), 4: (8, 10), 7: (9, 21)},
                         ls_set=np.array([[1, 3, 2, 4]]))


def _recipe(name: str, manifest: Path, *overrides: str):
    return load_recipe(ROOT / "recipes" / f"{name}.yaml", [f"data.manifest={manifest}", "data.num_ids=2", *overrides])


def test_the_lsvid_recipe_accepts_what_its_prepare_command_writes(tmp_path, lsvid_root):
    manifest = _manifest(tmp_path, "lsvid", lsvid_root)
    check_protocol(_recipe("lsvid", manifest), read_manifest(manifest))


def test_the_lsvid_recipe_refuses_an_unchunked_manifest_naming_the_fix(tmp_path, lsvid_root):
    manifest = _manifest(tmp_path, "lsvid", lsvid_root, train_chunk=0)
    with pytest.raises(RecipeError) as caught:
        check_protocol(_recipe("lsvid", manifest), read_manifest(manifest))
    assert f"data.protocol lsvid: data.manifest {manifest} does not follow it" in caught.value.message
    assert "48-frame chunks with shorter tracklets left out" in caught.value.message
    assert f"tfclip prepare lsvid ROOT --out {manifest}" in caught.value.hint
    check_protocol(_recipe("lsvid", manifest, "data.protocol=none"), read_manifest(manifest))


def test_the_ilidsvid_recipe_needs_windows_of_its_seq_len(tmp_path, ilidsvid_root):
    windows = _manifest(tmp_path, "ilidsvid", ilidsvid_root)
    check_protocol(_recipe("ilidsvid", windows), read_manifest(windows))
    whole = _manifest(tmp_path, "ilidsvid", ilidsvid_root, window=0)
    with pytest.raises(RecipeError, match="it has whole tracklets; the official protocol cuts every sequence into"):
        check_protocol(_recipe("ilidsvid", whole), read_manifest(whole))
    with pytest.raises(RecipeError, match="8-frame windows every 4 frames; .* data.seq_len = 4-frame") as caught:
        check_protocol(_recipe("ilidsvid", windows, "data.seq_len=4"), read_manifest(windows))
    assert "--window 4" in caught.value.hint


def test_a_recipe_over_another_dataset_is_refused(tmp_path, lsvid_root):
    manifest = _manifest(tmp_path, "lsvid", lsvid_root)
    with pytest.raises(RecipeError, match="data.protocol mars: .* prepared from the lsvid layout"):
        check_protocol(_recipe("mars", manifest), read_manifest(manifest))


def test_train_refuses_the_mismatch_before_writing_anything(tmp_path, lsvid_root):
    manifest = _manifest(tmp_path, "lsvid", lsvid_root, train_chunk=0)
    run_dir = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(ROOT / "recipes" / "lsvid.yaml"), "--set",
                                      f"data.manifest={manifest}", "--set", "data.num_ids=2", "--set",
                                      f"run.output_dir={run_dir}"], terminal_width=300)
    assert result.exit_code == 2, result.output
    assert "data.protocol lsvid" in result.output and "48-frame chunks" in result.output
    assert not run_dir.exists()


def test_the_ilidsvid_summary_states_windows_erasing_precision_and_gallery_rule(tmp_path, ilidsvid_root):
    manifest = _manifest(tmp_path, "ilidsvid", ilidsvid_root)
    rows = dict(describe_protocol(_recipe("ilidsvid", manifest), read_manifest(manifest), CPU))
    assert rows["protocol"] == "ilidsvid, official (manifest checked)"
    # windows start at range(0, n - 8, 4): train persons 1, 4 (20 → 3, 9 → 1, 8 → 1, 10 → 1), query cam1 of
    # persons 2, 7 (12 → 1, 9 → 1), gallery cam2 (13 → 2, 21 → 4)
    assert rows["data"] == ("ilidsvid: train 6, query 2, gallery 6 items; every sequence cut into 8-frame windows "
                            "every 4 frames")
    assert rows["training clips"].startswith("rrs_train, 8 frames at 256x128, 2 ids x 4 items per batch")
    assert rows["erasing"].startswith("each frame on its own, p=0.5, own box and colour at the reference's")
    assert rows["training precision"] == "fp32 (fp16 asked; no autocast on cpu)"
    assert rows["evaluation"] == "every 2 epochs, rrs_test sampling, fp32"
    assert rows["gallery rule"].startswith("includes_query: queries ranked against query + gallery")
    on_cuda = dict(describe_protocol(_recipe("ilidsvid", manifest), read_manifest(manifest), torch.device("cuda")))
    assert (on_cuda["training precision"], on_cuda["CLIP-Memory"]) == (
        "fp16 autocast + grad scaler", "every train item as dense clips, fp16 autocast")


def test_train_logs_the_protocol_before_any_work(tmp_path, lsvid_root, monkeypatch, caplog):
    manifest = _manifest(tmp_path, "lsvid", lsvid_root)
    recipe = _recipe("lsvid", manifest, f"run.output_dir={tmp_path / 'run'}", "data.erase=clip")

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before the run directory")

    monkeypatch.setattr(engine, "_prepare_run_dir", stop)
    with caplog.at_level(logging.INFO, logger="tfclip_cli.train.protocol"), pytest.raises(RuntimeError):
        engine.train(recipe)
    text = caplog.text
    assert "protocol of this run:" in text
    assert "training tracklets cut into 48-frame chunks (1 shorter ones left out)" in text
    assert "one box and colour on every frame of a clip, p=0.5 (tfclip's choice" in text
    assert "includes_query: queries ranked against query + gallery" in text
    assert "tfclip extract --sampling dense" in text
