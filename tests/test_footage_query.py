"""Footage end to end: two synthetic cameras → track (ground-truth replay) → extract → index → query, by crop and by
footage; choosing a person; results traced back to the camera, time and box; crop-or-footage decided by detector."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
from rich.text import Text
from typer.testing import CliRunner

from fresh_tfclip import run_fresh_tfclip
from tiny_training import tiny_recipe
from tfclip_cli import display, index
from tfclip_cli.cli import app
from tfclip_cli.datasets import prepare
from tfclip_cli.datasets.mot import GroundTruth, read_gt
from tfclip_cli.datasets.synthetic_footage import FootageOptions, camera_video
from tfclip_cli.errors import UserError
from tfclip_cli.export import export_checkpoint
from tfclip_cli.footage.detection import Detection
from tfclip_cli.footage.pipeline import CutTracklet, PipelineOptions
from tfclip_cli.footage.query import FootageQuery, PersonPointer, PersonQuery, is_person_crop, pick_persons, query_json
from tfclip_cli.footage.track import Track, iou_matrix
from tfclip_cli.footage.tracklets import TrackOptions, track_videos
from tfclip_cli.inference import extract_to_file
from tfclip_cli.recipe import load_recipe
from tfclip_cli.tables import FootageOrigin, manifest_from_tracklets, read_embeddings, read_manifest, write_manifest
from tfclip_cli.train import train

SCENE = FootageOptions(walkers=4, cameras=2, image_size=(144, 192), frames=64, seed=5)
# people of camera 1 (4 walkers) whose first hit in camera 0's gallery is themselves: measured 2, with crops from
# files before the pipeline kept them in memory and after; the tiny model confuses two pairs of walkers in footage
FOOTAGE_RIGHT = 2
# From scratch as the demo trains (demo.TRAINING_OVERRIDES), on 8-frame pieces of the scene's ground-truth crops;
# with fewer epochs the tiny model tells these walkers apart no better than chance.
TRAINING = {
    "data": {"num_ids": 4, "num_instances": 2, "erase_p": 0.0},
    "model": {"sie": False, "embedding": "after_bn"},
    "loss": {"id": 1.0},
    "solver": {"epochs": 10, "base_lr": 1.0e-3},
    "eval": {"every": 0},
}


@dataclasses.dataclass(frozen=True)
class Scene:
    root: Path
    gallery: Path  # index over the tracklets `track` cut from camera 0
    identity: dict[str, int]  # gallery tracklet id → the walker it follows (by ground-truth overlap)
    crops: dict[int, Path]  # walker → its ground-truth crops in camera 1
    checkpoint: Path  # the model that cut and embedded the gallery


def _walker_of(origin, truth: GroundTruth) -> int:
    """The walker whose ground-truth box a tracklet's boxes overlap most often (first frame onwards)."""
    votes: dict[int, int] = {}
    for offset, box in enumerate(origin.boxes):
        rows = truth.at(origin.first_frame + offset)
        if len(rows):
            overlaps = iou_matrix(np.array([box]), truth.boxes[rows].astype(np.float64))[0]
            if overlaps.max() >= 0.5:
                pid = int(truth.pids[rows[int(np.argmax(overlaps))]])
                votes[pid] = votes.get(pid, 0) + 1
    return max(votes, key=votes.get)


def _train_tiny(manifest, folder: Path) -> Path:
    """The tiny model trained a few epochs on the scene's ground-truth tracklets (untrained, it tells no one
    apart); the gallery below is what `track` cuts, not these crops."""
    chunks = [  # 8-frame pieces: several clips of each walker per camera, so each epoch takes several steps
        dataclasses.replace(t, tracklet_id=f"{t.tracklet_id}/{start}", split="train", num_frames=len(frames),
                            frames=frames, origin=None)
        for t in manifest.tracklets()
        for start in range(0, t.num_frames - 7, 8)
        for frames in [t.frames[start:start + 8]]
    ]
    write_manifest(manifest_from_tracklets(chunks, manifest.info), folder / "train.parquet")
    recipe = tiny_recipe(folder / "r.yaml", manifest=folder / "train.parquet", output_dir=folder / "run", **TRAINING)
    return train(load_recipe(recipe)).last_checkpoint


@pytest.fixture(scope="module")
def scene(tmp_path_factory, one_torch_thread) -> Scene:
    folder = tmp_path_factory.mktemp("e2e")
    truth_manifest = prepare("synthetic", folder / "scene", synthetic_footage=SCENE)
    checkpoint = _train_tiny(truth_manifest, folder)
    cam0 = camera_video(folder / "scene", 0)
    options = TrackOptions(detector="gt", checkpoint=checkpoint, pipeline=PipelineOptions(min_frames=6))
    track_videos([cam0], folder / "tracked", options=options)
    write_manifest(prepare("footage", folder / "tracked"), folder / "tracked.parquet")
    extract_to_file(checkpoint, folder / "e.parquet", manifest=folder / "tracked.parquet", workers=0)
    index.build_index(read_embeddings(folder / "e.parquet"), folder / "g.faiss")
    truth = read_gt(cam0.parent / "gt.txt")
    tracked = read_manifest(folder / "tracked.parquet").tracklets()
    crops = {t.pid: Path(t.source) for t in truth_manifest.tracklets() if t.camid == 1}  # walkers both cameras see
    return Scene(folder / "scene", folder / "g.faiss", {t.tracklet_id: _walker_of(t.origin, truth) for t in tracked},
                 crops, checkpoint)


def _query(*args: object) -> list[dict]:
    """The ``queries`` of ``tfclip query ARGS --json``."""
    result = CliRunner().invoke(app, ["query", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert list(answer) == ["queries"]
    return answer["queries"]


QUERY_KEYS = ["query", "footage", "persons"]
PERSON_KEYS = ["person", "num_frames", "first_frame", "last_frame", "start_s", "end_s", "key_frame", "key_box",
               "threshold", "match", "hits"]
HIT_KEYS = ["rank", "score", "tracklet_id", "pid", "camid", "split", "source", "row", "match", "start_s", "end_s",
            "person", "origin"]  # Hit.to_dict; `tfclip query --json` adds the person's "timeline"


def test_a_crop_of_a_walker_from_the_other_camera_finds_their_tracklets_first(scene):
    assert set(scene.identity.values()) == set(range(SCENE.walkers))  # track found everyone in camera 0
    found = []
    for walker, crop in scene.crops.items():
        (query,) = _query(crop, "--gallery", scene.gallery, "--top-k", "3")
        assert list(query) == QUERY_KEYS and query["query"] == str(crop) and not query["footage"]  # a person crop
        (result,) = query["persons"]
        assert list(result) == PERSON_KEYS and result["person"] == 1 and result["key_box"] is None
        assert list(result["hits"][0]) == [*HIT_KEYS, "timeline"]
        found.append(scene.identity[result["hits"][0]["tracklet_id"]] == walker)
        origin = result["hits"][0]["origin"]
        assert origin["source_video"] == str(camera_video(scene.root, 0)) and origin["end_s"] > origin["start_s"]
        assert origin["first_frame"] <= origin["key_frame"] <= origin["last_frame"] and len(origin["key_box"]) == 4
    # the tiny model, trained for seconds, may confuse one pair of walkers; three of four must come first
    assert sum(found) >= len(found) - 1, found


def test_footage_query_prints_one_object_with_every_person_and_their_hits(scene):
    video = camera_video(scene.root, 1)
    (found,) = _query(video, "--gallery", scene.gallery, "--detector", "gt", "--top-k", "2")
    assert list(found) == QUERY_KEYS and found["query"] == str(video) and found["footage"]
    assert len(found["persons"]) >= SCENE.walkers
    assert [p["person"] for p in found["persons"]] == list(range(1, len(found["persons"]) + 1))
    truth = read_gt(video.parent / "gt.txt")
    right = 0
    for person in found["persons"]:
        assert list(person) == PERSON_KEYS and len(person["hits"]) == 2
        assert person["start_s"] == person["first_frame"] / 10 and person["end_s"] == (person["last_frame"] + 1) / 10
        rows = truth.at(person["key_frame"])
        overlaps = iou_matrix(np.array([person["key_box"]]), truth.boxes[rows].astype(np.float64))[0]
        right += scene.identity[person["hits"][0]["tracklet_id"]] == truth.pids[rows[int(np.argmax(overlaps))]]
    assert right >= FOOTAGE_RIGHT, (right, len(found["persons"]))  # what the model achieves here, measured


def test_footage_query_with_an_exported_model_never_imports_torch_and_finds_the_torch_hits(scene, tmp_path):
    exported = export_checkpoint(scene.checkpoint, tmp_path / "model.onnx").path
    video = camera_video(scene.root, 1)
    args = [video, "--gallery", scene.gallery, "--detector", "gt", "--top-k", "2"]
    answer, status = run_fresh_tfclip("query", *args, "-c", exported)
    assert status["loaded"] == []
    (on_torch,) = _query(*args)
    (on_onnx,) = answer["queries"]
    assert on_onnx["footage"] and len(on_onnx["persons"]) == len(on_torch["persons"]) >= SCENE.walkers
    for onnx_person, torch_person in zip(on_onnx["persons"], on_torch["persons"]):
        assert onnx_person["key_box"] == torch_person["key_box"]  # relinked alike: the same people
        assert [h["tracklet_id"] for h in onnx_person["hits"]] == [h["tracklet_id"] for h in torch_person["hits"]]
        np.testing.assert_allclose([h["score"] for h in onnx_person["hits"]],
                                   [h["score"] for h in torch_person["hits"]], atol=1e-4)


def test_person_and_box_pick_one_person_and_the_report_shows_where_hits_were_filmed(scene, tmp_path):
    video = camera_video(scene.root, 1)
    (everyone,) = _query(video, "--gallery", scene.gallery, "--detector", "gt")
    (second,) = _query(video, "--gallery", scene.gallery, "--detector", "gt", "--person", "2")
    assert [p["person"] for p in second["persons"]] == [2] and second["persons"][0] == everyone["persons"][1]
    x1, y1, x2, y2 = everyone["persons"][2]["key_box"]
    (pointed,) = _query(video, "--gallery", scene.gallery, "--detector", "gt", "--frame",
                        everyone["persons"][2]["key_frame"], "--box", f"{x1 + 2:.0f},{y1:.0f},{x2 - x1:.0f},{y2 - y1:.0f}")
    assert [p["person"] for p in pointed["persons"]] == [3]
    result = CliRunner().invoke(app, ["query", str(video), "--gallery", str(scene.gallery), "--detector", "gt",
                                      "--person", "1", "--html", str(tmp_path / "r.html")])
    assert result.exit_code == 0, result.output
    assert f"{video.name} person 1" in result.stdout and "footage" in result.stdout  # the table's footage column
    page = (tmp_path / "r.html").read_text()
    assert "person 1 (frames" in page and page.count("data:image/jpeg") >= 2 and "key frame" in page


def test_pointing_options_are_checked_before_any_work(scene):
    video = camera_video(scene.root, 1)
    base = ["query", str(video), "--gallery", str(scene.gallery), "--detector", "gt"]
    for extra, message in (
        (["--box", "1,2,3,4"], "--box and --frame go together"),
        (["--box", "1,2,3", "--frame", "0"], "expected X,Y,W,H"),
        (["--person", "1", "--box", "1,2,3,4", "--frame", "0"], "pass one of them"),
        (["--person", "99"], "holds persons 1 to"),
        (["--box", "0,0,3,3", "--frame", "0"], "overlaps no person there"),
    ):
        result = CliRunner().invoke(app, base + extra)
        assert result.exit_code == 2 and message in result.output, (extra, result.output)


class _FixedDetector:
    """Returns the same detections on every frame."""

    name = "fixed"

    def __init__(self, boxes: list[tuple[float, float, float, float]]) -> None:
        self.boxes = boxes

    def detect(self, frame: np.ndarray, *, frame_index: int) -> list[Detection]:
        return [Detection(box, 0.9) for box in self.boxes]


def test_crop_or_footage_is_decided_by_what_the_detector_finds(scene):
    crop = next(iter(scene.crops.values()))  # a frame folder of one walker's crops
    width, height = Image.open(sorted(crop.iterdir())[0]).size
    assert is_person_crop(crop, _FixedDetector([]))  # nobody found: as before, a crop
    assert is_person_crop(crop, _FixedDetector([(0, 0, width, height)]))  # one person filling it
    assert not is_person_crop(crop, _FixedDetector([(0, 0, 5, 10)]))  # one small person: footage
    assert not is_person_crop(crop, _FixedDetector([(0, 0, width, height), (0, 0, 5, 10)]))  # two people


def test_pick_persons_by_number_or_by_box():
    tracks = [Track(n, -1, (0, 1), np.array([[10 * n, 0, 10 * n + 8, 20]] * 2, np.float32), np.ones(2)) for n in (1, 2)]
    assert pick_persons(tracks, person=2) == [tracks[1]]
    assert pick_persons(tracks, pointer=PersonPointer(frame=1, box=(19, 0, 28, 20))) == [tracks[1]]
    with pytest.raises(UserError, match="person 1 at 10,0,8,20; person 2 at 20,0,8,20"):
        pick_persons(tracks, pointer=PersonPointer(frame=1, box=(100, 0, 110, 20)))
    with pytest.raises(UserError, match="found nobody"):
        pick_persons([])


def test_the_demo_closes_with_the_footage_commands_in_80_columns():
    steps = display.DEMO_NEXT_STEPS
    for command in ("tfclip track", "tfclip prepare footage", "--gallery footage.faiss --person 1"):
        assert command in steps
    assert max(len(line) for line in Text.from_markup(steps).plain.splitlines()) <= 80


def _origin(first: int, last: int, count: int, frame_indices: tuple[int, ...] | None = None) -> FootageOrigin:
    boxes = tuple((float(i), 0.0, i + 10.0, 20.0) for i in range(count))
    return FootageOrigin("/videos/cam0.mp4", first, last, first / 10, (last + 1) / 10, boxes, frame_indices)


def test_the_key_frame_is_the_middle_one_of_the_frames_recorded():
    assert (_origin(10, 14, 5).key_frame, _origin(10, 14, 5).key_box[0]) == (12, 2.0)
    relinked = _origin(10, 30, 5, (10, 11, 28, 29, 30))  # merged from two fragments: frames 12-27 are missing
    assert (relinked.key_frame, relinked.key_box[0]) == (28, 2.0)
    older = _origin(10, 30, 5)  # a table written before frame indices were recorded: the first frame
    assert (older.key_frame, older.key_box[0]) == (10, 0.0)


def test_a_footage_hit_reports_its_video_times_and_key_box_not_every_box():
    hit = index.Hit(1, 0.9, "0/cam0/0001", -1, 0, "gallery", "/crops/0001", 0, origin=_origin(10, 14, 5))
    as_dict = hit.to_dict()
    assert as_dict["origin"] == {"source_video": "/videos/cam0.mp4", "first_frame": 10, "last_frame": 14,
                                 "start_s": 1.0, "end_s": 1.5, "key_frame": 12, "key_box": [2.0, 0.0, 12.0, 20.0]}
    assert display.footage_label(hit.origin) == "cam0.mp4 1.0-1.5s key frame 12 box 2,0,12,20"
    plain = dataclasses.replace(hit, origin=None).to_dict()  # a hit not cut from footage: the same keys
    assert list(plain) == list(as_dict) == HIT_KEYS and plain["origin"] is None


def test_query_json_has_one_shape_for_crops_and_footage():
    hit = index.Hit(1, 0.9, "0/cam0/0001", -1, 0, "gallery", "/crops/0001", 0, match=True)
    crop = index.QueryResult("/q/crop", 8, np.zeros((1, 4, 4, 3), np.uint8), (hit,), threshold=0.5)
    track = Track(1, -1, (4, 5, 6), np.array([[0, 0, 10, 20]] * 3, np.float32), np.ones(3, np.float32))
    person = PersonQuery(1, CutTracklet(track, (), (np.zeros((20, 10, 3), np.uint8),) * 3, 10.0),
                         dataclasses.replace(crop, source="/q/scene.mp4 person 1"))
    empty = FootageQuery("/q/nobody.mp4", ())
    answer = query_json([crop, FootageQuery("/q/scene.mp4", (person,)), empty])
    crop_query, footage_query, empty_query = answer["queries"]
    assert [list(q) for q in answer["queries"]] == [QUERY_KEYS] * 3
    assert list(crop_query["persons"][0]) == list(footage_query["persons"][0]) == PERSON_KEYS
    assert (crop_query["footage"], footage_query["footage"], empty_query["persons"]) == (False, True, [])
    assert footage_query["persons"][0] | {"hits": None} == {
        "person": 1, "num_frames": 8, "first_frame": 4, "last_frame": 6, "start_s": 0.4, "end_s": 0.7,
        "key_frame": 5, "key_box": [0.0, 0.0, 10.0, 20.0], "threshold": 0.5, "match": True, "hits": None}
    assert crop_query["persons"][0]["first_frame"] is None and crop_query["persons"][0]["match"] is True


def test_draw_box_outlines_the_box_and_leaves_the_rest():
    frame = np.zeros((20, 30, 3), dtype=np.uint8)
    drawn = display.draw_box(frame, (5, 4, 15, 14))
    assert (drawn[4, 5:16] == (255, 40, 40)).all() and (drawn[4:15, 15] == (255, 40, 40)).all()
    assert not drawn[7:12, 8:13].any() and not drawn[:3].any() and not frame.any()
