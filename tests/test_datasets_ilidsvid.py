"""iLIDS-VID: ls_set rows of 1-based positions in the sorted person folders, halves, split ids, layout errors."""

from pathlib import Path

import numpy as np
import pytest

from fake_layouts import make_ilidsvid
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.ilidsvid import window_bounds
from tfclip_cli.errors import DataError

# person number → frames in (cam1, cam2); numbers have gaps, as in the release (300 persons up to 319)
PERSONS = {1: (3, 2), 2: (2, 2), 4: (2, 3), 7: (1, 4)}
# positions 1..4 in the sorted folders person001, person002, person004, person007
LS_SET = np.array([[1, 3, 2, 4], [4, 2, 1, 3]])


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return make_ilidsvid(tmp_path / "iLIDS-VID", persons=PERSONS, ls_set=LS_SET)


def _rows(manifest) -> list[tuple]:
    return [(r.tracklet_id, r.pid, r.camid, r.split, r.num_frames) for r in manifest.table.itertuples()]


def test_ilidsvid_split_zero_first_half_trains_second_half_tests(root: Path) -> None:
    manifest = prepare("ilidsvid", root, window=0)
    # ls_set[0] = positions 1, 3 | 2, 4 → train person001, person004; test person002, person007
    assert _rows(manifest) == [
        ("cam1/person001", 1, 0, "train", 3),
        ("cam2/person001", 1, 1, "train", 2),
        ("cam1/person004", 4, 0, "train", 2),
        ("cam2/person004", 4, 1, "train", 3),
        ("cam1/person002", 2, 0, "query", 2),
        ("cam1/person007", 7, 0, "query", 1),
        ("cam2/person002", 2, 1, "gallery", 2),
        ("cam2/person007", 7, 1, "gallery", 4),
    ]
    assert (manifest.info.gallery_rule, manifest.info.extra["split_id"]) == ("gallery_only", 0)


@pytest.mark.parametrize(
    "num_frames, bounds",
    # reference datasequence.py L6-20: starts range(0, n - 8, 4); 20 frames → 0, 4, 8 (frames 16-19 in no window)
    [(20, [(0, 8), (4, 12), (8, 16)]), (21, [(0, 8), (4, 12), (8, 16), (12, 20)]), (12, [(0, 8)]),
     (8, [(0, 8)]), (5, [(0, 5)])],
)
def test_window_bounds_follow_the_reference(num_frames: int, bounds: list) -> None:
    assert window_bounds(num_frames, 8, 4) == bounds


def test_ilidsvid_default_cuts_every_split_into_8_frame_windows_ranked_against_query_and_gallery(tmp_path) -> None:
    root = make_ilidsvid(tmp_path / "iLIDS-VID", persons={1: (20, 9), 2: (12, 13), 4: (8, 3), 7: (2, 21)},
                         ls_set=LS_SET)
    manifest = prepare("ilidsvid", root)
    assert _rows(manifest) == [
        ("cam1/person001:w0", 1, 0, "train", 8), ("cam1/person001:w1", 1, 0, "train", 8),
        ("cam1/person001:w2", 1, 0, "train", 8), ("cam2/person001:w0", 1, 1, "train", 8),
        ("cam1/person004:w0", 4, 0, "train", 8), ("cam2/person004:w0", 4, 1, "train", 3),
        ("cam1/person002:w0", 2, 0, "query", 8), ("cam1/person007:w0", 7, 0, "query", 2),
        ("cam2/person002:w0", 2, 1, "gallery", 8), ("cam2/person002:w1", 2, 1, "gallery", 8),
        ("cam2/person007:w0", 7, 1, "gallery", 8), ("cam2/person007:w1", 7, 1, "gallery", 8),
        ("cam2/person007:w2", 7, 1, "gallery", 8), ("cam2/person007:w3", 7, 1, "gallery", 8),
    ]
    second = manifest.tracklets("train")[1].frames
    whole = prepare("ilidsvid", root, window=0).tracklets("train")[0].frames
    assert second == whole[4:12]
    assert manifest.info.gallery_rule == "includes_query"
    assert (manifest.info.extra["window"], manifest.info.extra["window_stride"]) == (8, 4)


def test_ilidsvid_split_id_selects_the_row(root: Path) -> None:
    manifest = prepare("ilidsvid", root, split_id=1)
    # ls_set[1] = positions 4, 2 | 1, 3 → train person002, person007; test person001, person004
    assert manifest.table.loc[manifest.table["split"] == "train", "pid"].tolist() == [2, 2, 7, 7]
    assert manifest.table.loc[manifest.table["split"] == "query", "pid"].tolist() == [1, 4]
    assert manifest.table.loc[manifest.table["split"] == "gallery", "camid"].tolist() == [1, 1]


def test_ilidsvid_frames_are_sorted_by_name(root: Path) -> None:
    frames = prepare("ilidsvid", root).tracklets()[0].frames
    folder = root / "i-LIDS-VID" / "sequences" / "cam1" / "person001"
    assert frames == tuple(str(folder / f"cam1_person001_{n:05d}.png") for n in (3, 10, 17))


def test_ilidsvid_split_id_out_of_range_is_a_data_error(root: Path) -> None:
    with pytest.raises(DataError, match=r"--split-id 2: .*holds 2 splits; expected 0\.\.1"):
        prepare("ilidsvid", root, split_id=2)


def test_ilidsvid_position_beyond_the_person_folders_is_a_data_error(tmp_path: Path) -> None:
    root = make_ilidsvid(tmp_path / "iLIDS-VID", persons=PERSONS, ls_set=np.array([[1, 2, 3, 5]]))
    with pytest.raises(DataError, match="names person position 5, but 4 person folders"):
        prepare("ilidsvid", root)


def test_ilidsvid_person_in_one_camera_only_is_a_data_error(tmp_path: Path) -> None:
    root = make_ilidsvid(tmp_path / "iLIDS-VID", persons=PERSONS, ls_set=LS_SET)
    (root / "i-LIDS-VID" / "sequences" / "cam2" / "person009").mkdir()
    with pytest.raises(DataError, match="person009 .* not in both cam1/ and cam2/"):
        prepare("ilidsvid", root)


def test_ilidsvid_missing_split_file_names_the_path(root: Path) -> None:
    path = root / "train-test people splits" / "train_test_splits_ilidsvid.mat"
    path.unlink()
    with pytest.raises(DataError) as error:
        prepare("ilidsvid", root)
    assert error.value.message.startswith(f"{path} not found: expected the iLIDS-VID layout")
