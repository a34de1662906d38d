"""MARS: 1-based track tables and query_IDX, junk dropped, distractors kept in the gallery, layout errors."""

from pathlib import Path

import numpy as np
import pytest
import scipy.io

from fake_layouts import make_mars
from tfclip_cli.datasets import prepare
from tfclip_cli.errors import DataError

TRAIN = [(1, 1, 3), (1, 2, 2), (-1, 3, 1), (3, 1, 2)]
# rows 1..7 (1-based): junk, distractor, pid 2 cam 1, pid 2 cam 3, pid 4 cam 2, pid 4 cam 6, pid 4 cam 2 again
TEST = [(-1, 1, 2), (0, 2, 1), (2, 1, 2), (2, 3, 3), (4, 2, 2), (4, 6, 1), (4, 2, 2)]
QUERY_ROWS = [3, 5]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_mars(tmp_path / "MARS", train=TRAIN, test=TEST, query_rows=QUERY_ROWS)


def _rows(manifest) -> list[tuple]:
    return [(r.tracklet_id, r.pid, r.camid, r.split, r.num_frames) for r in manifest.table.itertuples()]


def test_mars_splits_follow_the_one_based_index_files(root: Path) -> None:
    manifest = prepare("mars", root)
    assert _rows(manifest) == [
        ("0001C1T0001_train00001", 1, 0, "train", 3),
        ("0001C2T0001_train00002", 1, 1, "train", 2),
        ("0003C1T0001_train00004", 3, 0, "train", 2),
        ("0002C1T0001_test00003", 2, 0, "query", 2),
        ("0004C2T0001_test00005", 4, 1, "query", 2),
        ("0000C2T0001_test00002", 0, 1, "gallery", 1),
        ("0002C3T0001_test00004", 2, 2, "gallery", 3),
        ("0004C6T0001_test00006", 4, 5, "gallery", 1),
        ("0004C2T0002_test00007", 4, 1, "gallery", 2),
    ]


def test_mars_frames_are_absolute_paths_in_the_pid_folder(root: Path) -> None:
    first = prepare("mars", root).tracklets()[0]
    assert first.frames == tuple(str(root / "bbox_train" / "0001" / f"0001C1T0001F00{i}.jpg") for i in (1, 2, 3))
    assert first.video is None


def test_mars_drops_junk_everywhere_and_keeps_distractors_in_the_gallery(tmp_path: Path) -> None:
    # a junk row listed as a query is dropped too
    root = make_mars(tmp_path / "MARS", train=TRAIN, test=TEST, query_rows=[1, 3, 5])
    manifest = prepare("mars", root)
    assert -1 not in set(manifest.table["pid"])
    assert manifest.table.loc[manifest.table["pid"] == 0, "split"].tolist() == ["gallery"]
    assert manifest.split_counts() == {"train": 3, "query": 2, "gallery": 4}
    assert manifest.info.extra["junk_tracklets_dropped"] == 2


def test_mars_records_the_official_includes_query_gallery_rule(root: Path) -> None:
    info = prepare("mars", root).info
    assert (info.dataset, info.gallery_rule, info.root) == ("mars", "includes_query", str(root))


def test_mars_frames_are_sorted_by_name(root: Path) -> None:
    names_path = root / "info" / "train_name.txt"
    names = names_path.read_text().splitlines()
    names[0], names[2] = names[2], names[0]  # F003, F002, F001 inside the first track's range
    names_path.write_text("\n".join(names) + "\n")
    frames = prepare("mars", root).tracklets()[0].frames
    assert [Path(f).name for f in frames] == ["0001C1T0001F001.jpg", "0001C1T0001F002.jpg", "0001C1T0001F003.jpg"]


@pytest.mark.parametrize(
    "missing", ["info/query_IDX.mat", "info/tracks_test_info.mat", "info/train_name.txt", "bbox_test"]
)
def test_mars_missing_file_names_the_path_and_the_layout(root: Path, missing: str) -> None:
    target = root / missing
    if target.is_dir():
        for path in sorted(target.rglob("*"), reverse=True):
            path.rmdir() if path.is_dir() else path.unlink()
        target.rmdir()
    else:
        target.unlink()
    with pytest.raises(DataError) as error:
        prepare("mars", root)
    assert f"{root / missing} not found" in error.value.message
    assert "bbox_train/, bbox_test/, info/" in error.value.message
    assert "info/" in error.value.hint


def test_mars_track_spanning_two_cameras_is_a_data_error(root: Path) -> None:
    tracks = np.array([[1, 5, 1, 1], [4, 5, 1, 2], [6, 6, -1, 3], [7, 8, 3, 1]], dtype=np.float64)
    scipy.io.savemat(root / "info" / "tracks_train_info.mat", {"track_train_info": tracks})
    with pytest.raises(DataError, match=r"row 1 \(pid 1, camera 1.*includes 0001C2T0001F001.jpg.*one camera"):
        prepare("mars", root)


def test_mars_query_index_outside_the_test_rows_is_a_data_error(root: Path) -> None:
    scipy.io.savemat(root / "info" / "query_IDX.mat", {"query_IDX": np.array([[3, 8]], dtype=np.float64)})
    with pytest.raises(DataError, match=r"query index 8 is outside 1\.\.7"):
        prepare("mars", root)


def test_mars_wrong_mat_key_names_the_key(root: Path) -> None:
    scipy.io.savemat(root / "info" / "query_IDX.mat", {"query": np.array([[3, 5]], dtype=np.float64)})
    with pytest.raises(DataError, match="has no key 'query_IDX'"):
        prepare("mars", root)


def test_mars_tracklet_with_a_missing_frame_is_skipped_or_strict_error(root: Path, caplog) -> None:
    missing = root / "bbox_test" / "0002" / "0002C3T0001F002.jpg"
    missing.unlink()
    manifest = prepare("mars", root)
    assert "0002C3T0001_test00004" not in set(manifest.table["tracklet_id"])
    assert manifest.info.extra["skipped_files"] == 1
    assert str(missing) in caplog.text
    with pytest.raises(DataError, match="0002C3T0001F002.jpg: 1 of the 3 frames"):
        prepare("mars", root, strict=True)
