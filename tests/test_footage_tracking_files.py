"""A camera network's tracks and ground truth read from every layout evaluate-tracks accepts, and bad files named."""

from __future__ import annotations

import numpy as np
import pytest
from fake_tracking_files import ROWS, write_aicity, write_mot, write_mot_folder, write_track_output

from tfclip_cli.datasets.mot import GroundTruth, write_gt
from tfclip_cli.errors import DataError
from tfclip_cli.footage.metrics import evaluate_tracks
from tfclip_cli.footage.tracking_files import camera_number, read_tracks, read_truth


def _as_lists(cameras: dict[int, GroundTruth]) -> dict[int, tuple]:
    return {c: (t.frame_indices.tolist(), t.pids.tolist(), t.boxes.tolist()) for c, t in cameras.items()}


def test_camera_names_carry_their_number():
    assert [camera_number(n) for n in ("cam2", "c002", "2", "camera_3", "cam2_20261203T120000", "MOT17-02",
                                       "mtmc_gt")] == [2, 2, 2, 3, 2, None, None]


@pytest.mark.parametrize("name", ["c{:03d}.txt", "c{:03d}/gt/gt.txt", "cam{}/gt.txt"])
def test_ground_truth_reads_the_same_from_an_aicity_file_and_every_mot_folder(tmp_path, name):
    from_aicity = read_truth(write_aicity(ROWS, tmp_path / "gt.txt"))
    from_folder = read_truth(write_mot_folder(ROWS, tmp_path / "mot", name))
    assert _as_lists(from_folder) == _as_lists(from_aicity)
    assert from_aicity[1].frame_indices.tolist() == [0, 0, 1]  # frames counted from 1 on disk, from 0 in memory
    assert from_aicity[2].boxes.tolist() == [[50, 5, 70, 45]]


def test_the_synthetic_footage_ground_truth_folder_reads_as_it_is_written(tmp_path):
    truth = GroundTruth(frame_indices=np.array([0, 3]), pids=np.array([4, 4]),
                        boxes=np.array([[1, 2, 11, 32], [5, 5, 9, 20]], dtype=np.float32))
    for camid in (0, 1):  # what prepare synthetic --footage writes: ROOT/footage/cam<N>/gt.txt
        write_gt(truth, tmp_path / "footage" / f"cam{camid}" / "gt.txt")
    read = read_truth(tmp_path / "footage")
    assert sorted(read) == [0, 1]
    assert _as_lists(read)[1] == _as_lists({1: truth})[1]


def test_tracks_from_a_file_are_one_track_per_id_with_their_frames_in_order(tmp_path):
    rows = [(1, 9, 3, 0, 0, 5, 5), (1, 9, 1, 1, 1, 5, 5), (1, 4, 2, 0, 0, 5, 5), (2, 9, 1, 0, 0, 5, 5)]
    for path in (write_aicity(rows, tmp_path / "result.txt"), write_mot_folder(rows, tmp_path / "mot", "cam{}.txt")):
        tracks = read_tracks(path)
        assert {c: [(t.track_id, t.frame_indices) for t in ts] for c, ts in tracks.items()} == {
            1: [(4, (1,)), (9, (0, 2))], 2: [(9, (0,))]}
        assert tracks[1][1].boxes.tolist() == [[1, 1, 6, 6], [0, 0, 5, 5]]


def test_tfclip_track_output_gets_one_network_wide_id_per_track(tmp_path):
    # tfclip track numbers tracks per video: 0001 in camera 0 and 0001 in camera 3 are two people
    root = write_track_output({(0, "cam0_lobby", "0001"): {0: [0, 0, 5, 5], 1: [1, 0, 6, 5]},
                               (0, "cam0_lobby", "0002"): {1: [20, 0, 25, 5]},
                               (3, "cam3_street", "0001"): {4: [0, 0, 5, 5]}}, tmp_path / "tracked")
    tracks = read_tracks(root)
    assert {c: [(t.track_id, t.frame_indices) for t in ts] for c, ts in tracks.items()} == {
        0: [(1, (0, 1)), (2, (1,))], 3: [(3, (4,))]}


def test_tfclip_track_output_with_two_videos_of_one_camera_is_refused(tmp_path):
    root = write_track_output({(0, "morning", "0001"): {0: [0, 0, 5, 5]}, (0, "evening", "0001"): {0: [0, 0, 5, 5]}},
                              tmp_path / "tracked")
    with pytest.raises(DataError, match="camera 0 has two videos"):
        read_tracks(root)
    with pytest.raises(DataError, match="tfclip track output"):
        read_truth(root)


@pytest.mark.parametrize("text, message", [
    ("1 1 1 10 20 30 60 -1 -1\n1 2 one 10 20 30 60 -1 -1\n", "line 2: '1 2 one"),
    ("1 1 1 10 20 30 60 -1 -1\n\n1 2 1 10 20\n", "line 3: 5 columns, expected at least 7"),
    ("1,1,1,10,20,30,60\n", "line 1: comma-separated"),
    ("1 1 1 10 20 30 60 -1 -1\n1 1 1 12 20 30 60 -1 -1\n", "camera 1: id 1 has 2 boxes in frame 1"),
    ("1 1 0 10 20 30 60 -1 -1\n", "frame 0: frames are counted from 1"),
])
def test_a_malformed_aicity_file_is_named_with_its_line(tmp_path, text, message):
    path = tmp_path / "gt.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message) as error:
        read_truth(path)
    assert str(path) in error.value.message


def test_a_binary_file_is_a_malformed_line_not_a_crash(tmp_path):
    path = tmp_path / "cam1.mp4"
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(DataError, match="cam1.mp4, line 1"):
        read_tracks(path)


def test_a_malformed_mot_file_is_named_with_its_line(tmp_path):
    write_mot_folder(ROWS, tmp_path / "mot", "cam{}.txt")
    (tmp_path / "mot" / "cam2.txt").write_text("4,1,50,5,20,40,1\n4,2,50,5,20\n")
    with pytest.raises(DataError, match=r"cam2\.txt, line 2: 5 columns, expected at least 6"):
        read_tracks(tmp_path / "mot")


@pytest.mark.parametrize("files, message", [
    (["MOT17-02/gt/gt.txt"], "MOT17-02 is not a camera number"),
    (["cam1.txt", "cam1/gt/gt.txt"], "camera 1 has two files"),
    (["notes.txt"], "no ground truth found"),
])
def test_folders_that_are_not_one_file_per_camera_are_refused(tmp_path, files, message):
    for name in files:
        write_mot(ROWS[:1], tmp_path / "mot" / name)
    with pytest.raises(DataError, match=message):
        read_truth(tmp_path / "mot")


def test_a_missing_path_is_named(tmp_path):
    with pytest.raises(DataError, match="nowhere.txt not found"):
        read_tracks(tmp_path / "nowhere.txt")


def test_tracks_of_a_camera_the_ground_truth_lacks_are_refused(tmp_path):
    truth = write_aicity(ROWS, tmp_path / "gt.txt")
    result = write_aicity(ROWS + [(5, 1, 1, 0, 0, 5, 5)], tmp_path / "result.txt")
    with pytest.raises(DataError, match=r"tracks of camera 5, which .*gt.txt lacks \(its cameras: 1, 2\)"):
        evaluate_tracks(result, truth)


def test_a_ground_truth_camera_without_tracks_scores_as_finding_no_one(tmp_path, caplog):
    truth = write_aicity(ROWS, tmp_path / "gt.txt")
    result = write_aicity([r for r in ROWS if r[0] == 1], tmp_path / "result.txt")
    evaluation = evaluate_tracks(result, truth)
    assert (evaluation.cameras[1].hota, evaluation.cameras[2].hota) == (1.0, 0.0)
    assert evaluation.network.deta == pytest.approx(3 / 4)  # 3 of the 4 boxes found, none of them wrong
    assert "no tracks of camera 2" in caplog.text
