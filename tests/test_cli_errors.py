"""What a user can do to tfclip's inputs, outputs and terminal ends in one plain line, never a traceback (issue 13):
unwritable destinations, names with markup, escape codes or non-UTF-8 bytes, narrow terminals and long paths,
Typer's own checks and native decoder logs."""

import errno
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from typer.testing import CliRunner

from fake_layouts import write_image, write_video
from tfclip_cli.cli import app
from tfclip_cli.tables import Embeddings, read_embeddings, read_manifest, write_embeddings

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


def _checkpoint(tmp_path: Path) -> str:
    from fake_footage import tiny_checkpoint

    return str(tiny_checkpoint(tmp_path / "m.ckpt"))


def _embeddings(tmp_path: Path) -> str:
    rows = read_manifest(_fake_manifest(tmp_path)).table.reset_index(drop=True)
    table = Embeddings(rows=rows, vectors=np.eye(len(rows), 4, dtype=np.float32), info={})
    write_embeddings(table, tmp_path / "e.parquet")
    return str(tmp_path / "e.parquet")


def _camera_video(tmp_path: Path) -> str:
    from fake_footage import write_video as write_camera_video

    write_camera_video(tmp_path / "cam1.mp4", 4)
    return str(tmp_path / "cam1.mp4")


def _recipe(tmp_path: Path, out: Path) -> str:
    from tiny_training import tiny_recipe

    return str(tiny_recipe(tmp_path / "r.yaml", manifest=_fake_manifest(tmp_path), output_dir=out))


# Every command that writes, as the arguments that send its output to ``out`` (a file or a folder).
WRITING_COMMANDS: dict[str, Callable[[Path, Path], list[str]]] = {
    "prepare": lambda tmp, out: ["prepare", "folder", str(_folder_layout(tmp / "data")), "--out", str(out)],
    "prepare synthetic": lambda tmp, out: ["prepare", "synthetic", str(out), "--out", str(tmp / "s.parquet")],
    "import-checkpoint": lambda tmp, out: ["import-checkpoint", _checkpoint(tmp), "--out", str(out)],
    "train": lambda tmp, out: ["train", _recipe(tmp, out)],
    "build-memory": lambda tmp, out: ["build-memory", _recipe(tmp, out)],
    "extract": lambda tmp, out: ["extract", "-c", _checkpoint(tmp), "--manifest", str(_fake_manifest(tmp)),
                                 "--out", str(out)],
    "index": lambda tmp, out: ["index", _embeddings(tmp), "--out", str(out)],
    "index --append": lambda tmp, out: ["index", _embeddings(tmp), "--out", str(out), "--append"],
    "export": lambda tmp, out: ["export", "-c", _checkpoint(tmp), "--out", str(out)],
    "query --html": lambda tmp, out: ["query", _camera_video(tmp), "-g", str(tmp / "g.faiss"), "--html", str(out)],
    "track": lambda tmp, out: ["track", _camera_video(tmp), "--out", str(out), "--detector", "hog"],
    "demo": lambda tmp, out: ["demo", "--out", str(out), "--quick"],
}


@pytest.mark.parametrize("command", WRITING_COMMANDS)
def test_every_command_refuses_an_output_under_a_regular_file_in_one_line(tmp_path: Path, command: str) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" / "sub" / "out"
    result = CliRunner().invoke(app, WRITING_COMMANDS[command](tmp_path, out))
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
    assert f"error: cannot write {tmp_path}/file/sub/" in result.output
    assert "a part of the path is a file, not a folder" in result.output
    assert (tmp_path / "file").read_text() == "x"


def _refused_folder() -> Path:
    """A folder that refuses new files even to root (sysfs), or skip where this machine lets us write there."""
    folder = Path("/sys")
    try:
        (folder / ".tfclip-probe").touch()
    except OSError:
        return folder
    (folder / ".tfclip-probe").unlink()
    pytest.skip("/sys takes new files here: no folder refuses root")


@pytest.mark.parametrize("command", ["prepare", "index", "index --append", "export", "track", "extract"])
def test_every_command_refuses_a_folder_that_refuses_new_files_even_as_root(tmp_path: Path, command: str) -> None:
    out = _refused_folder() / "tfclip-out"
    result = CliRunner().invoke(app, WRITING_COMMANDS[command](tmp_path, out))
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: cannot write {out}: ") and "Traceback" not in result.output
    assert len(result.output.splitlines()) <= 2  # the error and its hint


@pytest.mark.parametrize("command", ["index --append", "calibrate"])
def test_a_gallery_whose_folder_refuses_the_lock_file_is_one_red_line(tmp_path, monkeypatch, command) -> None:
    from tfclip_cli import index

    gallery = tmp_path / "g.faiss"
    embeddings = Path(_embeddings(tmp_path))
    index.build_index(read_embeddings(embeddings), gallery)
    index.store.lock_path(gallery).unlink()  # copied onto a read-only disk, say: no lock file there yet
    before = gallery.read_bytes()

    def read_only(file, *args, **kwargs):
        if str(file).endswith(".lock"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(file))
        return open(file, *args, **kwargs)

    monkeypatch.setattr(index.store, "open", read_only, raising=False)
    arguments = {"index --append": ["index", str(embeddings), "--out", str(gallery), "--append"],
                 "calibrate": ["calibrate", str(embeddings), "--gallery", str(gallery)]}[command]
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"error: cannot write {gallery}: read-only file system\n" in result.output
    assert gallery.read_bytes() == before


def _fake_manifest(tmp_path: Path) -> Path:
    from tiny_training import fake_manifest

    return fake_manifest(tmp_path / "manifest.parquet", train_pids=2)
