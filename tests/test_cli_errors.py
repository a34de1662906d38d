"""What a user can do to tfclip's inputs, outputs and terminal ends in one plain line, never a traceback (issue 13):
unwritable destinations, names with markup, escape codes or non-UTF-8 bytes, narrow terminals and long paths,
Typer's own checks and native decoder logs."""

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fake_layouts import write_image, write_video
from tfclip_cli.cli import app
from tfclip_cli.tables import read_manifest

ROOT = Path(__file__).resolve().parents[1]


def _folder_layout(root: Path) -> Path:
    """A tiny folder-layout dataset: two train tracklets, a query and a gallery one."""
    for split, pid, camid in (("train", 1, 0), ("train", 1, 1), ("query", 2, 0), ("gallery", 2, 1)):
        for index in range(2):
            write_image(root / split / str(pid) / str(camid) / "t" / f"{index}.png")
    return root


def _lines_with(output: str, text: str) -> list[str]:
    return [line for line in output.splitlines() if text in line]


def test_output_off_a_terminal_is_never_wrapped_whatever_columns_and_path_length(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    deep = tmp_path / ("a-long-folder-name-" * 8) / ("another-long-one-" * 6)
    out = deep / "manifest.parquet"
    root = _folder_layout(tmp_path / "data")
    emptied = root / "train" / "1" / "0" / "t" / "1.png"
    emptied.write_bytes(b"")  # a skipped file: its warning is a log line naming the long path
    result = CliRunner(env={"COLUMNS": "40"}).invoke(app, ["prepare", "folder", str(root), "--out", str(out)],
                                                     terminal_width=40)
    assert result.exit_code == 0, result.output
    assert _lines_with(result.output, f"wrote {out}") == [f"wrote {out}"]
    assert len(_lines_with(result.output, str(emptied))) == 1
    assert any("gallery" in line and "│" in line for line in result.output.splitlines())


def test_names_with_markup_and_escape_codes_print_as_plain_escaped_text(tmp_path: Path) -> None:
    out = tmp_path / "[/x][bold]\x1b[31m" / "m.parquet"
    result = CliRunner().invoke(app, ["prepare", "folder", str(_folder_layout(tmp_path / "data")), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path}/[/x][bold]\\x1b[31m/m.parquet" in result.output
    assert "\x1b" not in result.output
    again = CliRunner().invoke(app, ["prepare", "folder", str(tmp_path / "data"), "--out", str(out)])
    assert again.exit_code == 2 and "[/x][bold]\\x1b[31m/m.parquet already exists" in again.output


def test_a_name_that_is_not_utf8_is_skipped_from_the_manifest_with_a_report(tmp_path: Path) -> None:
    root = _folder_layout(tmp_path / "data")
    odd = os.fsdecode(os.fsencode(root / "gallery" / "2" / "1") + b"/caf\xe9")  # a Latin-1 folder name
    write_image(Path(odd) / "0.png")
    out = tmp_path / "m.parquet"
    result = CliRunner().invoke(app, ["prepare", "folder", str(root), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "caf\\xe9" in result.output and "not valid UTF-8" in result.output
    assert read_manifest(out).table["tracklet_id"].tolist() == [
        "train/1/0/t", "train/1/1/t", "query/2/0/t", "gallery/2/1/t"]
    strict = CliRunner().invoke(app, ["prepare", "folder", str(root), "--out", str(out), "--force", "--strict"])
    assert strict.exit_code == 2 and strict.output.startswith("error: ") and "caf\\xe9" in strict.output
    assert "Traceback" not in strict.output


def test_an_out_path_under_a_regular_file_is_refused_before_any_work(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    data = tmp_path / "synthetic"
    result = CliRunner().invoke(app, ["prepare", "synthetic", str(data), "--out", str(tmp_path / "file" / "m.parquet")])
    assert result.exit_code == 2
    assert result.output.startswith(f"error: cannot write {tmp_path}/file/m.parquet: a part of the path is a file")
    assert not data.exists()


@pytest.mark.parametrize(("code", "reason"), [(errno.ENOSPC, "no space left on device"),
                                              (errno.EROFS, "read-only file system")])
def test_a_full_or_read_only_disk_at_the_last_write_is_one_red_line(tmp_path, monkeypatch, code, reason) -> None:
    def refuse(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "replace", refuse)
    out = tmp_path / "m.parquet"
    result = CliRunner().invoke(app, ["prepare", "folder", str(_folder_layout(tmp_path / "data")), "--out", str(out)])
    assert result.exit_code == 2
    assert result.output == f"error: cannot write {out}: {reason}\n" + result.output.split("\n", 1)[1]
    assert "Traceback" not in result.output
    assert not out.exists() and not list(tmp_path.glob(".m.parquet*"))


def test_typer_path_checks_are_one_red_line_not_a_usage_box(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path / "missing.parquet")])
    assert result.exit_code == 2
    assert result.output.lower().startswith("error: invalid value for 'embeddings':")
    assert "missing.parquet" in result.output and "does not exist" in result.output
    assert "Usage" not in result.output and "╭" not in result.output and len(result.output.splitlines()) == 1


def test_native_decoder_logs_never_print_before_the_red_line(tmp_path: Path) -> None:
    root = _folder_layout(tmp_path / "data")
    video = root / "train" / "1" / "2" / "walk.mp4"
    write_video(video, 10)
    video.write_bytes(video.read_bytes()[1000:])  # its head lost: FFmpeg and decord log "moov atom not found" ...
    command = [sys.executable, "-m", "tfclip_cli", "prepare", "folder", str(root), "--strict",
               "--out", str(tmp_path / "m.parquet")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.startswith(f"error: {video}: the video does not decode"), done.stderr
    assert len(done.stderr.splitlines()) == 2  # the error and its hint


def test_an_install_without_the_cpu_or_gpu_extra_names_the_extra_to_install(tmp_path: Path) -> None:
    embeddings = tmp_path / "e.parquet"
    embeddings.write_bytes(b"")
    blocked = "import sys; sys.modules['faiss'] = None; from tfclip_cli.cli import main; sys.argv[0] = 'tfclip'; main()"
    result = subprocess.run(
        [sys.executable, "-c", blocked, "index", str(embeddings), "--out", str(tmp_path / "g.faiss")],
        capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120,
    )
    assert result.returncode == 2, result.stderr
    assert "faiss is not installed" in result.stderr and "tfclip[cpu]" in result.stderr
    assert "Traceback" not in result.stderr
