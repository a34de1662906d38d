"""`tfclip prepare`: manifest written and summarised, clean exit-2 errors, nothing written on failure, --force."""

import dataclasses
import re
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from fake_layouts import make_mars, write_image, write_video
from tfclip_cli.cli import app
from tfclip_cli.datasets.synthetic import SyntheticOptions
from tfclip_cli.tables import read_manifest

TRAIN = [(1, 1, 3), (3, 2, 2)]
TEST = [(-1, 1, 2), (0, 2, 1), (2, 1, 2), (2, 3, 3)]


def _invoke(*args: str):
    return CliRunner().invoke(app, ["prepare", *map(str, args)], terminal_width=400)


@pytest.fixture
def mars_root(tmp_path: Path) -> Path:
    return make_mars(tmp_path / "MARS", train=TRAIN, test=TEST, query_rows=[3])


def test_prepare_writes_the_manifest_and_prints_the_split_table(mars_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "mars.parquet"
    result = _invoke("mars", mars_root, "--out", out)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.table["tracklet_id"].tolist() == [
        "0001C1T0001_train00001", "0003C2T0001_train00002", "0002C1T0001_test00003",
        "0000C2T0001_test00002", "0002C3T0001_test00004",
    ]
    assert (manifest.info.dataset, manifest.info.gallery_rule) == ("mars", "includes_query")
    lines = {line.split()[1]: line.split()[2:] for line in result.stdout.splitlines() if line.startswith("│")}
    assert lines["train"] == ["│", "2", "│", "2", "│", "5", "│", "2", "│"]
    assert lines["gallery"] == ["│", "2", "│", "2", "│", "4", "│", "2", "│"]
    assert "includes query" in result.stdout


def test_missing_file_exits_2_naming_the_path_and_writes_nothing(mars_root: Path, tmp_path: Path) -> None:
    (mars_root / "info" / "query_IDX.mat").unlink()
    out = tmp_path / "mars.parquet"
    result = _invoke("mars", mars_root, "--out", out)
    assert result.exit_code == 2
    assert f"{mars_root}/info/query_IDX.mat not found: expected the official MARS layout" in result.output
    assert "Traceback" not in result.output
    assert not out.exists() and list(tmp_path.glob("*.tmp")) == [] and list(tmp_path.glob(".*")) == []


def test_existing_output_is_kept_without_force_and_replaced_with_it(mars_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "mars.parquet"
    out.write_text("precious")
    refused = _invoke("mars", mars_root, "--out", out)
    assert refused.exit_code == 2 and f"{out} already exists" in refused.output and "--force" in refused.output
    assert out.read_text() == "precious"
    forced = _invoke("mars", mars_root, "--out", out, "--force")
    assert forced.exit_code == 0, forced.output
    assert len(read_manifest(out).table) == 5


def test_option_of_another_kind_is_refused(mars_root: Path, tmp_path: Path) -> None:
    result = _invoke("mars", mars_root, "--out", tmp_path / "m.parquet", "--split-id", "3")
    assert result.exit_code == 2
    assert "--split-id does not apply to mars: only to ilidsvid, prid2011" in result.output
    result = _invoke("mars", mars_root, "--out", tmp_path / "m.parquet", "--seed", "3")
    assert result.exit_code == 2 and "the synthetic options do not apply to mars" in result.output


def test_unknown_kind_lists_the_kinds(tmp_path: Path) -> None:
    result = _invoke("market", tmp_path, "--out", tmp_path / "m.parquet")
    assert result.exit_code == 2
    expected = "unknown dataset kind 'market': expected one of mars, lsvid, ilidsvid, prid2011, folder, synthetic"
    assert expected in result.output


def test_strict_corrupt_video_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "mine"
    write_image(root / "gallery" / "1" / "0" / "t" / "0.jpg")
    write_video(root / "query" / "1" / "1" / "v.mp4", 4)
    (root / "query" / "1" / "1" / "v.mp4").write_bytes(b"\x00" * 64)
    out = tmp_path / "mine.parquet"
    assert _invoke("folder", root, "--out", out).exit_code == 0
    out.unlink()
    result = _invoke("folder", root, "--out", out, "--strict")
    assert result.exit_code == 2 and f"{root}/query/1/1/v.mp4: the video does not decode" in result.output
    assert not out.exists()


def test_prepare_synthetic_draws_and_parses_both_storage_kinds(tmp_path: Path) -> None:
    out = tmp_path / "synthetic.parquet"
    result = _invoke(
        "synthetic", tmp_path / "synthetic", "--out", out, "--identities", "4", "--cameras", "2",
        "--image-size", "32", "16", "--min-frames", "3", "--max-frames", "4", "--distractors", "1",
        "--video-fraction", "0.5",
    )
    assert result.exit_code == 0, result.output
    manifest = read_manifest(out)
    assert manifest.info.dataset == "synthetic"
    assert manifest.info.extra["synthetic"]["identities"] == 4
    assert manifest.table["video"].notna().any() and manifest.table["frames"].notna().any()
    assert set(manifest.table["split"]) == {"train", "query", "gallery"}


def test_synthetic_help_states_the_true_defaults() -> None:
    params = typer.main.get_command(app).commands["prepare"].params
    stated = {p.name: re.search(r"\(default ([^)]+)\)", p.help or "") for p in params}
    stated = {name: match.group(1) for name, match in stated.items() if match}
    defaults = {f.name: f.default for f in dataclasses.fields(SyntheticOptions)}
    assert stated.keys() == defaults.keys()
    for name, text in stated.items():
        default = defaults[name]
        expected = list(default) if isinstance(default, tuple) else [default]
        assert [float(v) for v in text.split()] == pytest.approx(expected, abs=0.005), name
