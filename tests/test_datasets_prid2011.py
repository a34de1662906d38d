"""PRID2011: torchreid's splits_prid2011.json when present, else deterministic generated splits; cam_a query."""

from pathlib import Path

import pytest

from fake_layouts import make_prid2011
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.prid2011 import MIN_FRAMES, NUM_SPLITS, generate_splits
from tfclip_cli.errors import DataError

CAM_A = {1: 21, 2: 22, 3: 25, 4: 5, 5: 30, 8: 21}
CAM_B = {1: 21, 2: 30, 3: 21, 4: 40, 6: 30, 8: 20}
SPLITS = [
    {"train": ["person_0002", "person_0004"], "test": ["person_0001", "person_0003"]},
    {"train": ["person_0001"], "test": ["person_0002"]},
]


def _rows(manifest) -> list[tuple]:
    return [(r.tracklet_id, r.pid, r.camid, r.split, r.num_frames) for r in manifest.table.itertuples()]


def test_prid2011_reads_the_json_splits(tmp_path: Path) -> None:
    root = make_prid2011(tmp_path / "prid2011", cam_a=CAM_A, cam_b=CAM_B, splits=SPLITS)
    manifest = prepare("prid2011", root)
    assert _rows(manifest) == [
        ("cam_a/person_0002", 2, 0, "train", 22),
        ("cam_b/person_0002", 2, 1, "train", 30),
        ("cam_a/person_0004", 4, 0, "train", 5),
        ("cam_b/person_0004", 4, 1, "train", 40),
        ("cam_a/person_0001", 1, 0, "query", 21),
        ("cam_a/person_0003", 3, 0, "query", 25),
        ("cam_b/person_0001", 1, 1, "gallery", 21),
        ("cam_b/person_0003", 3, 1, "gallery", 21),
    ]
    assert manifest.info.extra["splits"] == str(root / "splits_prid2011.json")
    assert prepare("prid2011", root, split_id=1).table["pid"].tolist() == [1, 1, 2, 2]


def test_prid2011_frames_are_sorted_by_name(tmp_path: Path) -> None:
    root = make_prid2011(tmp_path / "prid2011", cam_a=CAM_A, cam_b=CAM_B, splits=SPLITS)
    frames = prepare("prid2011", root).tracklets()[0].frames
    folder = root / "prid_2011" / "multi_shot" / "cam_a" / "person_0002"
    assert frames == tuple(str(folder / f"{n:04d}.png") for n in range(1, 23))


def test_generated_splits_keep_ids_with_enough_frames_in_both_cameras(tmp_path: Path) -> None:
    root = make_prid2011(tmp_path / "prid2011", cam_a=CAM_A, cam_b=CAM_B)
    # eligible: 1 (21/21), 2 (22/30), 3 (25/21); not 4 (5 in cam_a), 5 and 6 (one camera), 8 (20 in cam_b)
    for split_id in range(NUM_SPLITS):
        manifest = prepare("prid2011", root, split_id=split_id)
        train = set(manifest.table.loc[manifest.table["split"] == "train", "pid"])
        test = set(manifest.table.loc[manifest.table["split"] == "query", "pid"])
        assert len(train) == 1 and len(test) == 2 and train | test == {1, 2, 3}
        assert set(manifest.table.loc[manifest.table["split"] == "gallery", "pid"]) == test
    assert "generated" in manifest.info.extra["splits"]


def test_generated_splits_are_deterministic_and_halve_the_ids() -> None:
    counts = {f"person_{n:04d}": (MIN_FRAMES, MIN_FRAMES + n) for n in range(1, 11)}
    counts["person_0099"] = (MIN_FRAMES - 1, 50)
    first, second = generate_splits(counts), generate_splits(dict(reversed(counts.items())))
    assert first == second and len(first) == NUM_SPLITS
    for split in first:
        assert len(split["train"]) == len(split["test"]) == 5
        assert sorted(split["train"] + split["test"]) == sorted(k for k in counts if k != "person_0099")
        assert split["train"] == sorted(split["train"])
    assert len({tuple(split["train"]) for split in first}) > 1


def test_prid2011_split_naming_an_unknown_person_is_a_data_error(tmp_path: Path) -> None:
    splits = [{"train": ["person_0002"], "test": ["person_0005"]}]
    root = make_prid2011(tmp_path / "prid2011", cam_a=CAM_A, cam_b=CAM_B, splits=splits)
    with pytest.raises(DataError, match="split 0 names person_0005, which is not a folder in both"):
        prepare("prid2011", root)


def test_prid2011_split_id_out_of_range_is_a_data_error(tmp_path: Path) -> None:
    root = make_prid2011(tmp_path / "prid2011", cam_a=CAM_A, cam_b=CAM_B, splits=SPLITS)
    with pytest.raises(DataError, match=r"--split-id 2: .*splits_prid2011.json holds 2 splits"):
        prepare("prid2011", root, split_id=2)


def test_prid2011_malformed_json_is_a_data_error(tmp_path: Path) -> None:
    root = make_prid2011(tmp_path / "prid2011", cam_a=CAM_A, cam_b=CAM_B)
    (root / "splits_prid2011.json").write_text('{"train": []}')
    with pytest.raises(DataError, match="expected a list of"):
        prepare("prid2011", root)


def test_prid2011_missing_camera_folder_names_the_path(tmp_path: Path) -> None:
    root = make_prid2011(tmp_path / "prid2011", cam_a=CAM_A, cam_b={})
    with pytest.raises(DataError) as error:
        prepare("prid2011", root)
    assert error.value.message.startswith(f"{root}/prid_2011/multi_shot/cam_b not found: expected the PRID2011")
