"""The footage path from the command line: track → prepare footage, and pid -1 refused by training and evaluation."""

import json
from pathlib import Path

import numpy as np
import pytest
from fake_footage import STANDING, tiny_checkpoint, write_video, yolo_model
from tiny_training import tiny_recipe
from typer.testing import CliRunner

from tfclip_cli.cli import app
from tfclip_cli.index import build_index, load_index
from tfclip_cli.inference import extract_to_file
from tfclip_cli.tables import Embeddings, read_embeddings, read_manifest, row_to_tracklet, write_embeddings



@pytest.fixture(scope="module")
def footage_manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tfclip track`` on two small camera videos (their one person stands still: kept), then ``tfclip prepare
    footage``: the manifest."""
    tmp_path = tmp_path_factory.mktemp("footage")
    detector = yolo_model(tmp_path / "standing.onnx", STANDING)
    videos = [tmp_path / "cam0_door.avi", tmp_path / "cam1_hall.avi"]
    for video in videos:
        write_video(video, 10)
    root, manifest = tmp_path / "footage", tmp_path / "footage.parquet"
    runner = CliRunner()
    arguments = ["track", *map(str, videos), "--out", str(root), "--detector", str(detector), "--json",
                 "--keep-static"]
    tracked = runner.invoke(app, arguments)
    assert tracked.exit_code == 0, tracked.output
    summary = json.loads(tracked.stdout)
    assert [(v["camid"], v["tracklets"], v["static"]) for v in summary["videos"]] == [(0, 1, 0), (1, 1, 0)]
    prepared = runner.invoke(app, ["prepare", "footage", str(root), "--out", str(manifest)])
    assert prepared.exit_code == 0, prepared.output
    return manifest


def test_track_then_prepare_footage_keeps_where_each_tracklet_came_from(footage_manifest: Path) -> None:
    tracklets = read_manifest(footage_manifest).tracklets()
    assert [(t.tracklet_id, t.pid, t.camid, t.num_frames) for t in tracklets] == [
        ("0/cam0_door/0001", -1, 0, 10),
        ("1/cam1_hall/0001", -1, 1, 10),
    ]
    assert tracklets[1].origin.source_video == str((footage_manifest.parent / "cam1_hall.avi").resolve())
    assert (tracklets[1].origin.first_frame, tracklets[1].origin.last_frame) == (0, 9)


def test_track_leaves_out_what_never_moves_and_says_how_many(footage_manifest: Path, tmp_path: Path) -> None:
    folder = footage_manifest.parent
    arguments = ["track", str(folder / "cam0_door.avi"), "--out", str(tmp_path / "o"), "--detector",
                 str(folder / "standing.onnx")]
    shown = CliRunner().invoke(app, arguments)
    assert shown.exit_code == 0, shown.output
    assert "0 tracklets" in shown.stdout and "1 static left out" in shown.stdout
    summary = json.loads(CliRunner().invoke(app, [*arguments, "--json", "--force"]).stdout)
    assert [(v["tracks"], v["tracklets"], v["static"]) for v in summary["videos"]] == [(1, 0, 1)]
    assert list((tmp_path / "o" / "0" / "cam0_door").iterdir()) == []


def test_track_refuses_to_overwrite_without_force(footage_manifest: Path) -> None:
    folder = footage_manifest.parent
    result = CliRunner().invoke(app, ["track", str(folder / "cam0_door.avi"), "--out", str(folder / "footage")])
    assert result.exit_code == 2 and "already exists" in result.output and "--force" in result.output


def test_track_with_an_unknown_detector_is_one_clear_line(tmp_path: Path) -> None:
    write_video(tmp_path / "cam0.avi", 3)
    arguments = ["track", str(tmp_path / "cam0.avi"), "--out", str(tmp_path / "o"), "--detector", "rcnn"]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2 and "unknown detector 'rcnn'" in result.output and "Traceback" not in result.output


def test_training_on_unknown_identities_is_refused(footage_manifest: Path, tmp_path: Path) -> None:
    recipe = tiny_recipe(tmp_path / "r.yaml", manifest=footage_manifest, output_dir=tmp_path / "run")
    result = CliRunner().invoke(app, ["build-memory", str(recipe)])
    assert result.exit_code == 2 and "unknown identity (pid -1" in result.output
    assert not (tmp_path / "run" / "memory.pt").exists()


def test_evaluating_unknown_identities_is_refused(footage_manifest: Path, tmp_path: Path) -> None:
    rows = read_manifest(footage_manifest).table
    table = tmp_path / "emb.parquet"
    write_embeddings(Embeddings(rows=rows, vectors=np.eye(2, 8, dtype=np.float32), info={}), table)
    result = CliRunner().invoke(app, ["evaluate", str(table)])
    assert result.exit_code == 2 and "2 tracklet(s) of unknown identity" in result.output


def test_prepare_footage_counts_no_identities(footage_manifest: Path) -> None:
    from tfclip_cli.datasets import summarize

    gallery = next(row for row in summarize(read_manifest(footage_manifest)) if row.split == "gallery")
    assert (gallery.ids, gallery.tracklets, gallery.frames, gallery.cameras) == (0, 2, 20, 2)


def test_extract_and_index_keep_the_footage_origin(footage_manifest: Path, tmp_path: Path) -> None:
    checkpoint = tiny_checkpoint(tmp_path / "tiny.ckpt")
    extract_to_file(checkpoint, tmp_path / "e.parquet", manifest=footage_manifest, splits=("gallery",), workers=0)
    build_index(read_embeddings(tmp_path / "e.parquet"), tmp_path / "g.faiss")
    rows = load_index(tmp_path / "g.faiss").rows
    indexed = [row_to_tracklet(row) for row in rows.itertuples(index=False)]
    assert indexed == read_manifest(footage_manifest).tracklets()
    assert indexed[0].origin.boxes[0] == (60.0, 10.0, 100.0, 110.0)
