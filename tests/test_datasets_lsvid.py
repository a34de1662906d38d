"""LS-VID: list files with prefix paths, 1-based query lines in a v7.3 .mat, cameras from file names, chunking."""

from pathlib import Path

import pytest

from fake_layouts import lsvid_prefix, make_lsvid, write_image
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.lsvid import chunk_bounds
from tfclip_cli.errors import DataError, UserError

# (pid, camera 1..15, frames)
TRAIN = [(5, 3, 100), (5, 4, 20), (7, 15, 48), (-1, 2, 3)]
TEST = [(-1, 2, 3), (8, 1, 4), (8, 2, 5), (9, 3, 2), (9, 7, 6)]
QUERY_ROWS = [2, 5]  # 1-based lines of list_seq_test.txt


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_lsvid(tmp_path / "LS-VID", train=TRAIN, test=TEST, query_rows=QUERY_ROWS)


def _rows(manifest) -> list[tuple]:
    return [(r.tracklet_id, r.pid, r.camid, r.split, r.num_frames) for r in manifest.table.itertuples()]


def test_lsvid_splits_follow_the_lists_and_one_based_query_lines(root: Path) -> None:
    manifest = prepare("lsvid", root, train_chunk=0)
    assert _rows(manifest) == [
        ("tracklet_train/0005/0005_001_03_0001", 5, 2, "train", 100),
        ("tracklet_train/0005/0005_002_04_0002", 5, 3, "train", 20),
        ("tracklet_train/0007/0007_003_15_0003", 7, 14, "train", 48),
        ("tracklet_test/0008/0008_002_01_0002", 8, 0, "query", 4),
        ("tracklet_test/0009/0009_005_07_0005", 9, 6, "query", 6),
        ("tracklet_test/0008/0008_003_02_0003", 8, 1, "gallery", 5),
        ("tracklet_test/0009/0009_004_03_0004", 9, 2, "gallery", 2),
    ]
    assert manifest.info.gallery_rule == "includes_query"


def test_lsvid_frames_are_the_prefix_matches_sorted_by_name(root: Path) -> None:
    # a second tracklet in the same folder must not leak into the first one's frames
    frames = prepare("lsvid", root, train_chunk=0).tracklets()[1].frames
    prefix = root / lsvid_prefix("train", 2, pid=5, camera=4)
    assert frames == tuple(f"{prefix}_{i:04d}.jpg" for i in range(20))


def test_lsvid_default_is_the_reference_48_frame_chunks_with_short_tracklets_left_out(root: Path) -> None:
    # reference lsvid.py L140-148: 100 frames → 100 // 48 = 2 chunks, 0-47 and 48-99 (the last keeps the remainder);
    # the 20-frame tracklet gives 20 // 48 = 0 chunks, so it is not trained on; 48 frames give exactly one chunk
    manifest = prepare("lsvid", root)
    train = [row for row in _rows(manifest) if row[3] == "train"]
    assert train == [
        ("tracklet_train/0005/0005_001_03_0001:c0", 5, 2, "train", 48),
        ("tracklet_train/0005/0005_001_03_0001:c1", 5, 2, "train", 52),
        ("tracklet_train/0007/0007_003_15_0003:c0", 7, 14, "train", 48),
    ]
    chunks = manifest.tracklets("train")[:2]
    assert chunks[0].frames[-1].endswith("_0047.jpg") and chunks[1].frames[0].endswith("_0048.jpg")
    assert chunks[1].frames[-1].endswith("_0099.jpg")
    assert manifest.split_counts()["query"] == 2
    assert manifest.info.extra["train_chunk"] == 48 and manifest.info.extra["short_train_tracklets_dropped"] == 1


@pytest.mark.parametrize(
    "num_frames, bounds",
    [(100, [(0, 48), (48, 100)]), (96, [(0, 48), (48, 96)]), (143, [(0, 48), (48, 143)]), (48, [(0, 48)]),
     (47, []), (1, [])],
)
def test_chunk_bounds_last_chunk_keeps_the_remainder_and_short_ones_give_none(num_frames: int, bounds: list) -> None:
    assert chunk_bounds(num_frames, 48) == bounds


def test_lsvid_release_layout_is_accepted(tmp_path: Path) -> None:
    root = make_lsvid(tmp_path / "LS-VID", train=TRAIN, test=TEST, query_rows=QUERY_ROWS, release=True)
    assert prepare("lsvid", root).split_counts() == {"train": 3, "query": 2, "gallery": 2}


def test_lsvid_missing_query_file_names_the_path(root: Path) -> None:
    (root / "info" / "data" / "info_test.mat").unlink()
    with pytest.raises(DataError) as error:
        prepare("lsvid", root)
    assert f"{root}/info/data/info_test.mat not found: expected the LS-VID layout" in error.value.message


def test_lsvid_missing_lists_name_the_tf_clip_layout(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match=r"empty/info/list_sequence/list_seq_train.txt not found"):
        prepare("lsvid", tmp_path / "empty")


def test_lsvid_frame_name_without_camera_is_a_data_error(root: Path) -> None:
    prefix = root / "tracklet_test" / "0010" / "odd"
    write_image(Path(f"{prefix}_name.jpg"))
    with (root / "info" / "list_sequence" / "list_seq_test.txt").open("a") as handle:
        handle.write("tracklet_test/0010/odd 10\n")
    with pytest.raises(DataError, match=r"odd_name.jpg: expected a name <a>_<b>_<camera 1..15>"):
        prepare("lsvid", root)


def test_lsvid_line_without_frames_is_skipped_or_strict_error(root: Path) -> None:
    with (root / "info" / "list_sequence" / "list_seq_train.txt").open("a") as handle:
        handle.write("tracklet_train/0011/0011_009_02_0009 11\n")
    assert prepare("lsvid", root).split_counts()["train"] == 3
    with pytest.raises(DataError, match="0011_009_02_0009\\*: no frame images"):
        prepare("lsvid", root, strict=True)


def test_train_chunk_is_rejected_for_other_kinds(root: Path) -> None:
    with pytest.raises(UserError, match="--train-chunk does not apply to mars: only to lsvid"):
        prepare("mars", root, train_chunk=48)
