"""Synthetic camera footage: a camera network of videos named by their start, MOTChallenge and AI City ground truth
that matches the drawn pixels, global identities, the camera graph."""

from __future__ import annotations

import hashlib
from pathlib import Path

import av
import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from tfclip_cli.cli import app
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.mot import GroundTruth, read_gt, write_gt
from tfclip_cli.datasets.pedestrian import sample_appearances
from tfclip_cli.datasets.synthetic_footage import (
    NETWORK_START,
    FootageOptions,
    camera_video,
    generate_footage,
    plan_network,
    plan_walks,
    render_camera,
)
from tfclip_cli.errors import DataError
from tfclip_cli.footage.clock import time_from_name

TINY = FootageOptions(walkers=5, cameras=3, image_size=(96, 128), frames=60, seed=4)


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


def test_each_camera_gets_a_video_named_by_its_start_and_its_ground_truth(drawn):
    root, _ = drawn
    starts = plan_network(TINY).starts
    for camid in range(TINY.cameras):
        folder = root / "footage" / f"cam{camid}"
        video = camera_video(root, camid)
        assert sorted(p.name for p in folder.iterdir()) == sorted([video.name, "gt.txt"])
        assert time_from_name(video) == starts[camid] and NETWORK_START <= starts[camid] <= NETWORK_START + 3
        frames = _decode(video)
        assert len(frames) == TINY.frames and frames[0].shape == (96, 128, 3)
        truth = read_gt(folder / "gt.txt")
        assert truth.frame_indices.min() >= 0 and truth.frame_indices.max() < TINY.frames
        assert (truth.boxes[:, :2] >= 0).all() and (truth.boxes[:, 2] <= 128).all() and (truth.boxes[:, 3] <= 96).all()
        assert (truth.boxes[:, 2:] > truth.boxes[:, :2]).all()


def _visits(root: Path) -> dict[int, list[tuple[float, float, int]]]:
    """Each walker's visits (absolute start, end, camera) read from the per-camera gt.txt files, in time order."""
    starts = plan_network(TINY).starts
    visits: dict[int, list] = {}
    for camid in range(TINY.cameras):
        truth = read_gt(root / "footage" / f"cam{camid}" / "gt.txt")
        for pid in np.unique(truth.pids):
            frames = np.sort(truth.frame_indices[truth.pids == pid])
            for stretch in np.split(frames, np.flatnonzero(np.diff(frames) > 1) + 1):
                visits.setdefault(int(pid), []).append(
                    (starts[camid] + stretch[0] / 10, starts[camid] + stretch[-1] / 10, camid))
    return {pid: sorted(found) for pid, found in visits.items()}


def test_walkers_route_through_linked_cameras_within_the_graph_transit(drawn):
    root, _ = drawn
    graph = yaml.safe_load((root / "footage" / "cameras.yaml").read_text())
    links = {tuple(sorted(link["cameras"])): link for link in graph["links"]}
    assert [c["id"] for c in graph["cameras"]] == [0, 1, 2] and set(links) == {(0, 1), (1, 2)}
    assert [link["overlap"] for link in graph["links"]] == [True, True]
    visits = _visits(root)
    assert set(visits) == set(range(TINY.walkers))  # everyone is seen somewhere
    assert any(len({v[2] for v in mine}) > 1 for mine in visits.values())  # someone crosses cameras
    assert any(len({v[2] for v in mine}) < TINY.cameras for mine in visits.values())  # someone skips some
    moves = 0
    for mine in visits.values():
        for (_, end, here), (start, _, there) in zip(mine, mine[1:]):
            link = links[tuple(sorted((here, there)))]  # consecutive views are linked cameras
            assert link["min_s"] - 0.01 <= start - end <= link["max_s"], (here, there, start - end)
            moves += 1
    assert moves >= 3


def test_overlapping_views_show_a_walker_in_both_at_once_and_some_walkers_come_back():
    returns = overlaps = 0
    for seed in range(4):
        network = plan_network(FootageOptions(seed=seed))
        span = {w: (network.starts[w.camid] + w.enter / 10, network.starts[w.camid] + (w.enter + w.duration + w.pause) / 10)
                for w in network.walks}
        for pid in {w.pid for w in network.walks}:
            mine = sorted((w for w in network.walks if w.pid == pid), key=lambda w: span[w][0])
            returns += len({w.camid for w in mine}) < len(mine)
            overlaps += sum(span[b][0] < span[a][1] for a, b in zip(mine, mine[1:]))
            for a in mine:  # never twice in one view at once
                assert not any(b is not a and b.camid == a.camid and span[b][0] < span[a][1] <= span[b][1]
                               for b in mine)
        assert any(link.overlap for link in network.links) and not all(link.overlap for link in network.links)
    assert returns >= 1 and overlaps >= 1


def test_a_walker_is_in_view_for_one_unbroken_stretch_of_frames_per_walk(drawn):
    root, _ = drawn
    walks = plan_walks(TINY)
    for camid in range(TINY.cameras):
        truth = read_gt(root / "footage" / f"cam{camid}" / "gt.txt")
        for pid in np.unique(truth.pids):
            frames = np.sort(truth.frame_indices[truth.pids == pid])
            stretches = int((np.diff(frames) > 1).sum()) + 1
            assert stretches == sum(w.pid == pid and w.camid == camid for w in walks) and len(frames) >= 5


def test_the_network_ground_truth_is_every_camera_s_rows_in_the_ai_city_layout(drawn):
    root, _ = drawn
    rows = np.loadtxt(root / "footage" / "mtmc_gt.txt", ndmin=2)
    assert rows.shape[1] == 9 and (rows[:, 7:] == -1).all()
    for camid in range(TINY.cameras):
        truth = read_gt(root / "footage" / f"cam{camid}" / "gt.txt")
        mine = rows[rows[:, 0] == camid]
        order = np.lexsort((truth.pids, truth.frame_indices))
        assert mine[:, 1].tolist() == truth.pids[order].tolist()
        assert mine[:, 2].tolist() == (truth.frame_indices[order] + 1).tolist()  # 1-based frames
        boxes = truth.boxes[order]
        np.testing.assert_allclose(mine[:, 3:7], np.c_[boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], atol=0.01)


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
    for name in (camera_video(root, 0).relative_to(root / "footage"), "cam0/gt.txt", "mtmc_gt.txt", "cameras.yaml"):
        digest = [hashlib.sha256((r / "footage" / name).read_bytes()).hexdigest() for r in (root, again)]
        assert digest[0] == digest[1], name


def test_ground_truth_crops_are_one_tracklet_per_visit_with_absolute_times(drawn):
    root, tracklets = drawn
    truth = read_gt(root / "footage" / "cam1" / "gt.txt")
    starts = plan_network(TINY).starts
    for tracklet in tracklets:
        assert all(Path(frame).is_file() for frame in tracklet.frames)
        origin = tracklet.origin
        assert origin.source_video == str(camera_video(root, tracklet.camid))
        assert len(origin.boxes) == tracklet.num_frames == origin.last_frame - origin.first_frame + 1
        assert origin.start_s == origin.first_frame / 10
        assert origin.start_time == starts[tracklet.camid] + origin.first_frame / 10
        assert origin.end_time == pytest.approx(starts[tracklet.camid] + origin.last_frame / 10)
        if tracklet.camid == 1:
            rows = (truth.pids == tracklet.pid) & (truth.frame_indices >= origin.first_frame) & (
                truth.frame_indices <= origin.last_frame)
            np.testing.assert_allclose(origin.boxes, truth.boxes[rows], atol=0.01)
    by_walker: dict[int, list] = {}
    for tracklet in tracklets:
        by_walker.setdefault(tracklet.pid, []).append(tracklet)
    for mine in by_walker.values():  # the first visit of a walker seen more than once is the query
        first = min(mine, key=lambda t: t.origin.start_time)
        assert [t.split for t in mine] == ["query" if t is first and len(mine) > 1 else "gallery" for t in mine]


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


@pytest.mark.parametrize("change", [{"walkers": 2}, {"walkers": 21}, {"image_size": (95, 128)}, {"frames": 3}])
def test_rejects_impossible_options(tmp_path, change):
    with pytest.raises(DataError, match=next(iter(change))):
        generate_footage(tmp_path / "root", FootageOptions(**{**TINY.__dict__, **change}))
    assert not (tmp_path / "root").exists()


def test_prepare_synthetic_footage_lists_the_ground_truth_tracklets(tmp_path):
    manifest = prepare("synthetic", tmp_path / "root", synthetic_footage=TINY)
    table = manifest.table
    assert sorted(table["split"].unique()) == ["gallery", "query"]
    assert len(table) == len(generate_footage(tmp_path / "again", TINY)) and set(table["pid"]) == set(range(5))
    assert manifest.info.extra["footage"]["walkers"] == 5
    assert table["source_video"].str.endswith(".mp4").all() and (table["end_s"] > table["start_s"]).all()


def test_cli_prepare_synthetic_footage_maps_the_options_and_refuses_others(tmp_path):
    runner = CliRunner()
    args = ["prepare", "synthetic", str(tmp_path / "root"), "--out", str(tmp_path / "m.parquet"), "--footage",
            "--identities", "3", "--cameras", "1", "--max-frames", "24", "--image-size", "96", "128"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(_decode(camera_video(tmp_path / "root", 0))) == 24
    assert set(read_gt(tmp_path / "root" / "footage" / "cam0" / "gt.txt").pids.tolist()) == {0, 1, 2}
    assert yaml.safe_load((tmp_path / "root" / "footage" / "cameras.yaml").read_text())["links"] == []
    refused = runner.invoke(app, args[:3] + ["--out", str(tmp_path / "n.parquet"), "--footage", "--distractors", "2"])
    assert refused.exit_code == 2 and "--distractors do not apply with --footage" in refused.output
    assert not (tmp_path / "n.parquet").exists()
