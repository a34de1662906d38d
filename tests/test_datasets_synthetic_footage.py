"""Synthetic camera footage: videos, MOTChallenge ground truth that matches the drawn pixels, shared identities."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
from typer.testing import CliRunner

from tfclip_cli.cli import app
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.mot import GroundTruth, read_gt, write_gt
from tfclip_cli.datasets.pedestrian import sample_appearances
from tfclip_cli.datasets.synthetic_footage import FootageOptions, generate_footage, plan_walks, render_camera
from tfclip_cli.errors import DataError

TINY = FootageOptions(walkers=4, cameras=2, image_size=(96, 128), frames=40, seed=5)


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> tuple[Path, list]:
    root = tmp_path_factory.mktemp("footage") / "root"
    return root, generate_footage(root, TINY)


def _decode(video: Path) -> list[np.ndarray]:
    with av.open(str(video)) as container:
        return [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union


def test_each_camera_gets_a_video_and_its_ground_truth(drawn):
    root, _ = drawn
    for camid in range(TINY.cameras):
        folder = root / "footage" / f"cam{camid}"
        assert sorted(p.name for p in folder.iterdir()) == [f"cam{camid}.mp4", "gt.txt"]
        frames = _decode(folder / f"cam{camid}.mp4")
        assert len(frames) == TINY.frames and frames[0].shape == (96, 128, 3)
        truth = read_gt(folder / "gt.txt")
        assert truth.frame_indices.min() >= 0 and truth.frame_indices.max() < TINY.frames
        assert (truth.boxes[:, :2] >= 0).all() and (truth.boxes[:, 2] <= 128).all() and (truth.boxes[:, 3] <= 96).all()
        assert (truth.boxes[:, 2:] > truth.boxes[:, :2]).all()


def test_every_walker_is_one_identity_seen_by_every_camera(drawn):
    root, tracklets = drawn
    seen = [set(read_gt(root / "footage" / f"cam{c}" / "gt.txt").pids.tolist()) for c in range(TINY.cameras)]
    assert seen == [set(range(TINY.walkers))] * TINY.cameras
    assert sorted((t.pid, t.camid) for t in tracklets) == [(p, c) for p in range(4) for c in range(2)]


def test_a_walker_is_in_view_for_one_unbroken_stretch_of_frames(drawn):
    root, _ = drawn
    truth = read_gt(root / "footage" / "cam0" / "gt.txt")
    for pid in range(TINY.walkers):
        frames = np.sort(truth.frame_indices[truth.pids == pid])
        assert len(frames) >= 5 and (np.diff(frames) == 1).all(), pid


def test_walkers_cross_and_occlude_each_other(drawn):
    root, _ = drawn
    overlaps = []
    for camid in range(TINY.cameras):
        truth = read_gt(root / "footage" / f"cam{camid}" / "gt.txt")
        for frame_index in np.unique(truth.frame_indices):
            rows = truth.at(frame_index)
            overlaps += [_iou(truth.boxes[a], truth.boxes[b]) for a in rows for b in rows if a < b]
    assert max(overlaps) > 0.2


def test_ground_truth_boxes_hold_exactly_the_drawn_people():
    looks = sample_appearances(TINY.walkers, TINY.seed)
    walks = [walk for walk in plan_walks(TINY) if walk.camid == 1]
    with_people = render_camera(1, walks, looks, options=TINY)
    empty = render_camera(1, [], looks, options=TINY)  # same camera, same noise: only the people differ
    for frame_index in range(0, TINY.frames, 3):
        changed = np.abs(with_people.frames[frame_index].astype(int) - empty.frames[frame_index]).max(axis=2) > 12
        inside = np.zeros_like(changed)
        for row in with_people.truth.at(frame_index):
            x1, y1, x2, y2 = with_people.truth.boxes[row]
            box = (slice(max(0, int(y1) - 2), int(np.ceil(y2)) + 2), slice(max(0, int(x1) - 2), int(np.ceil(x2)) + 2))
            assert changed[box].mean() > 0.2, (frame_index, row)  # the box is mostly person, not background
            inside[box] = True
        # nobody drawn outside a ground-truth box, but for walkers mostly beyond the left or right edge
        assert not (changed & ~inside)[:, 13:-13].any(), frame_index


def test_same_seed_gives_the_same_bytes(drawn, tmp_path):
    root, _ = drawn
    again = tmp_path / "again"
    generate_footage(again, TINY)
    for name in ("cam0/cam0.mp4", "cam0/gt.txt", "cam1/cam1.mp4"):
        digest = [hashlib.sha256((r / "footage" / name).read_bytes()).hexdigest() for r in (root, again)]
        assert digest[0] == digest[1], name


def test_ground_truth_crops_are_tracklets_split_by_camera(drawn):
    root, tracklets = drawn
    truth = read_gt(root / "footage" / "cam1" / "gt.txt")
    for tracklet in tracklets:
        assert tracklet.split == ("query" if tracklet.pid % 2 == tracklet.camid else "gallery")
        assert all(Path(frame).is_file() for frame in tracklet.frames)
        origin = tracklet.origin
        assert origin.source_video == str(root / "footage" / f"cam{tracklet.camid}" / f"cam{tracklet.camid}.mp4")
        assert len(origin.boxes) == tracklet.num_frames == origin.last_frame - origin.first_frame + 1
        assert origin.start_s == origin.first_frame / 10
        if tracklet.camid == 1:
            rows = truth.pids == tracklet.pid
            assert tracklet.num_frames == int(rows.sum())
            np.testing.assert_allclose(origin.boxes, truth.boxes[rows], atol=0.01)


def test_gt_file_round_trips_and_reads_mot17_rows(tmp_path):
    truth = GroundTruth(frame_indices=np.array([0, 0, 4]), pids=np.array([2, 1, 2]),
                        boxes=np.array([[1, 2, 11, 32], [5, 5, 9, 20], [3.5, 2, 13.5, 32]], dtype=np.float32))
    write_gt(truth, tmp_path / "gt.txt")
    assert (tmp_path / "gt.txt").read_text().splitlines()[0] == "1,1,5.00,5.00,4.00,15.00,1,-1,-1,-1"
    back = read_gt(tmp_path / "gt.txt")
    assert back.frame_indices.tolist() == [0, 0, 4] and back.pids.tolist() == [1, 2, 2]
    np.testing.assert_allclose(back.boxes[2], [3.5, 2, 13.5, 32])
    (tmp_path / "mot17.txt").write_text("1,7,10,20,30,40,1,1,0.8\n1,8,0,0,5,5,0,2,1.0\n")  # conf 0: not a target
    mot17 = read_gt(tmp_path / "mot17.txt")
    assert mot17.pids.tolist() == [7] and mot17.boxes.tolist() == [[10, 20, 40, 60]]


def test_gt_reader_names_a_missing_or_malformed_file(tmp_path):
    with pytest.raises(DataError, match="gt.txt not found"):
        read_gt(tmp_path / "gt.txt")
    (tmp_path / "bad.txt").write_text("1,2,3\n")
    with pytest.raises(DataError, match="3 columns"):
        read_gt(tmp_path / "bad.txt")


@pytest.mark.parametrize("change", [{"walkers": 2}, {"walkers": 11}, {"image_size": (95, 128)}, {"frames": 3}])
def test_rejects_impossible_options(tmp_path, change):
    with pytest.raises(DataError, match=next(iter(change))):
        generate_footage(tmp_path / "root", FootageOptions(**{**TINY.__dict__, **change}))
    assert not (tmp_path / "root").exists()


def test_prepare_synthetic_footage_lists_the_ground_truth_tracklets(tmp_path):
    manifest = prepare("synthetic", tmp_path / "root", synthetic_footage=TINY)
    table = manifest.table
    assert sorted(table["split"].unique()) == ["gallery", "query"]
    assert len(table) == 8 and set(table["pid"]) == set(range(4))
    assert manifest.info.extra["footage"]["walkers"] == 4
    assert table["source_video"].str.endswith(".mp4").all() and (table["end_s"] > table["start_s"]).all()


def test_cli_prepare_synthetic_footage_maps_the_options_and_refuses_others(tmp_path):
    runner = CliRunner()
    args = ["prepare", "synthetic", str(tmp_path / "root"), "--out", str(tmp_path / "m.parquet"), "--footage",
            "--identities", "3", "--cameras", "1", "--max-frames", "24", "--image-size", "96", "128"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(_decode(tmp_path / "root" / "footage" / "cam0" / "cam0.mp4")) == 24
    assert set(read_gt(tmp_path / "root" / "footage" / "cam0" / "gt.txt").pids.tolist()) == {0, 1, 2}
    refused = runner.invoke(app, args[:3] + ["--out", str(tmp_path / "n.parquet"), "--footage", "--distractors", "2"])
    assert refused.exit_code == 2 and "--distractors do not apply with --footage" in refused.output
    assert not (tmp_path / "n.parquet").exists()
