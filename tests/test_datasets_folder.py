"""The folder layout: videos and frame folders, integer pid/camid folders, unreadable files skipped or strict."""

from pathlib import Path

import pytest

from fake_layouts import truncate, write_image, write_video
from tfclip_cli.datasets import prepare, summarize
from tfclip_cli.datasets.common import Problems
from tfclip_cli.datasets.folder import parse
from tfclip_cli.errors import DataError


@pytest.fixture
def root(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    write_video(root / "train" / "0007" / "0" / "walk.mp4", 10)
    for name in ("0002.jpg", "0000.jpg", "0001.jpg"):
        write_image(root / "train" / "0007" / "1" / "t01" / name)
    for name in ("b.png", "a.png"):
        write_image(root / "query" / "12" / "0" / "seq" / name)
    write_video(root / "gallery" / "12" / "2" / "clip.mp4", 5)
    write_image(root / "gallery" / "0" / "1" / "d" / "x.jpeg")
    (root / "gallery" / "12" / "2" / "notes.txt").write_text("not a tracklet")
    (root / "gallery" / "12" / "2" / ".hidden").mkdir()
    return root


def _rows(manifest) -> list[tuple]:
    return [(r.tracklet_id, r.pid, r.camid, r.split, r.num_frames) for r in manifest.table.itertuples()]


def test_folder_layout_reads_videos_and_frame_folders(root: Path, caplog) -> None:
    manifest = prepare("folder", root)
    assert _rows(manifest) == [
        ("train/0007/0/walk.mp4", 7, 0, "train", 10),
        ("train/0007/1/t01", 7, 1, "train", 3),
        ("query/12/0/seq", 12, 0, "query", 2),
        ("gallery/0/1/d", 0, 1, "gallery", 1),
        ("gallery/12/2/clip.mp4", 12, 2, "gallery", 5),
    ]
    video, frames = manifest.tracklets()[:2]
    assert video.video == str(root / "train" / "0007" / "0" / "walk.mp4") and video.frames is None
    assert frames.frames == tuple(str(root / "train" / "0007" / "1" / "t01" / f"000{i}.jpg") for i in range(3))
    assert (manifest.info.dataset, manifest.info.gallery_rule) == ("folder", "gallery_only")
    assert "notes.txt" in caplog.text


def test_summary_counts_ids_tracklets_frames_and_cameras(root: Path) -> None:
    summary = {row.split: row for row in summarize(prepare("folder", root))}
    assert (summary["train"].ids, summary["train"].tracklets, summary["train"].frames) == (1, 2, 13)
    assert (summary["gallery"].ids, summary["gallery"].cameras) == (2, 2)
    assert (summary["total"].ids, summary["total"].tracklets, summary["total"].frames, summary["total"].cameras) == (
        3, 5, 21, 3,
    )


def test_corrupt_video_and_image_are_reported_and_excluded(root: Path, caplog) -> None:
    broken_video = root / "gallery" / "12" / "1" / "broken.mp4"
    write_video(broken_video, 8)
    truncate(broken_video)
    broken_image = root / "train" / "0007" / "1" / "t01" / "0001.jpg"
    truncate(broken_image)
    manifest = prepare("folder", root)
    assert "gallery/12/1/broken.mp4" not in set(manifest.table["tracklet_id"])
    frames = manifest.tracklets("train")[1].frames
    assert [Path(f).name for f in frames] == ["0000.jpg", "0002.jpg"]
    assert manifest.info.extra["skipped_files"] == 2
    assert str(broken_video) in caplog.text and str(broken_image) in caplog.text


def test_strict_turns_a_corrupt_video_into_an_error(root: Path) -> None:
    broken_video = root / "gallery" / "12" / "1" / "broken.mp4"
    write_video(broken_video, 8)
    truncate(broken_video)
    with pytest.raises(DataError, match=f"{broken_video}: the video does not decode"):
        prepare("folder", root, strict=True)


def test_strict_turns_a_corrupt_image_into_an_error(root: Path) -> None:
    broken_image = root / "query" / "12" / "0" / "seq" / "a.png"
    broken_image.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"{broken_image}: the frame image does not decode"):
        parse(root, problems=Problems(strict=True))


def test_non_integer_pid_folder_is_a_data_error(root: Path) -> None:
    write_image(root / "train" / "alice" / "0" / "t" / "0.jpg")
    with pytest.raises(DataError, match="'alice' is not a pid; expected the folder layout"):
        prepare("folder", root)


def test_root_without_split_folders_names_the_layout(tmp_path: Path) -> None:
    (tmp_path / "photos" / "test").mkdir(parents=True)
    with pytest.raises(DataError) as error:
        prepare("folder", tmp_path / "photos")
    assert error.value.message.startswith(f"{tmp_path}/photos/train not found: expected the folder layout")


def test_a_tree_with_nothing_readable_is_a_data_error(tmp_path: Path) -> None:
    (tmp_path / "mine" / "gallery" / "1" / "0" / "empty").mkdir(parents=True)
    with pytest.raises(DataError, match="no usable tracklets"):
        prepare("folder", tmp_path / "mine")
