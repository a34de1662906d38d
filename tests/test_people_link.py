"""people.link / `tfclip link`: person ids in the table and the gallery, timelines, exports, incremental linking."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tfclip_cli import index
from tfclip_cli.cli import app
from tfclip_cli.errors import GalleryError
from tfclip_cli.people.link import LinkRequest, link_file
from tfclip_cli.people.timeline import build_people
from tfclip_cli.tables import Embeddings, read_embeddings, write_embeddings

T0 = 1796299200.0  # 2026-12-03T12:00:00Z
INFO = {"checkpoint": "/runs/a.ckpt", "checkpoint_sha256": "a" * 64, "sampling": "dense"}
# (tracklet id, camid, first frame, frames, start second after T0, look): two people, A and B, over three cameras;
# A walks cam0 → cam1 → cam2; B is in cam0 beside A, then in cam1; a fragment of A in cam0
SCENE = [
    ("0/v/0001", 0, 10, 20, 1.0, "A"),
    ("0/v/0002", 0, 12, 20, 1.2, "B"),
    ("0/v/0003", 0, 35, 5, 3.5, "A"),  # A again after an occlusion: the same visit
    ("1/v/0001", 1, 100, 30, 10.0, "A"),
    ("1/v/0002", 1, 120, 30, 12.0, "B"),
    ("2/v/0001", 2, 300, 10, 30.0, "A"),
]
LOOKS = {"A": [1.0, 0.1, 0.0], "B": [0.1, 1.0, 0.0], "C": [0.0, 0.0, 1.0]}


def _table(scene=SCENE) -> Embeddings:
    rows = pd.DataFrame({
        "tracklet_id": [s[0] for s in scene], "pid": -1, "camid": [s[1] for s in scene], "split": "gallery",
        "num_frames": [s[3] for s in scene], "frames": [None] * len(scene),
        "video": [f"/crops/{s[0]}.mp4" for s in scene],
        "source_video": [f"/cams/cam{s[1]}_20261203T120000.mp4" for s in scene],
        "first_frame": [s[2] for s in scene], "last_frame": [s[2] + s[3] - 1 for s in scene],
        "start_s": [s[4] for s in scene], "end_s": [s[4] + (s[3] - 1) / 10 for s in scene],
        "boxes": [[[float(f), 1.0, f + 10.0, 31.0] for f in range(s[2], s[2] + s[3])] for s in scene],
        "start_time": [T0 + s[4] for s in scene], "end_time": [T0 + s[4] + (s[3] - 1) / 10 for s in scene],
    })
    vectors = np.array([LOOKS[s[5]] for s in scene], dtype=np.float32)
    return Embeddings(rows=rows, vectors=vectors, info=INFO)


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    write_embeddings(_table(), tmp_path / "e.parquet")
    index.build_index(_table(), tmp_path / "g.faiss")
    return tmp_path


def test_link_writes_a_person_per_tracklet_and_each_person_s_timeline(scene):
    summary = link_file(LinkRequest(scene / "e.parquet", scene / "p.parquet", threshold=0.8))
    linked = read_embeddings(scene / "p.parquet").rows.set_index("tracklet_id")["person_id"]
    assert linked.tolist() == [0, 1, 0, 0, 1, 0]
    assert (summary.tracklets, summary.new_tracklets, summary.threshold_from) == (6, 6, "--threshold")
    a = summary.people[0]
    assert [(v.camid, v.tracklet_ids) for v in a.visits] == [
        (0, ("0/v/0001", "0/v/0003")), (1, ("1/v/0001",)), (2, ("2/v/0001",))]
    first = a.visits[0]
    assert (first.start_time, first.end_time) == (T0 + 1.0, pytest.approx(T0 + 3.9))
    assert first.key_frame.source_video == "/cams/cam0_20261203T120000.mp4"
    assert (first.key_frame.frame, first.key_frame.box) == (20, (20.0, 1.0, 30.0, 31.0))  # the longer one's middle
    assert a.cameras == (0, 1, 2)


def test_a_person_in_one_camera_beside_another_stays_two_people_however_alike(scene, tmp_path):
    twins = [s[:5] + ("A",) for s in SCENE]  # everyone looks the same
    write_embeddings(_table(twins), tmp_path / "twins.parquet")
    link_file(LinkRequest(tmp_path / "twins.parquet", tmp_path / "p.parquet", threshold=0.8))
    ids = read_embeddings(tmp_path / "p.parquet").rows["person_id"].tolist()
    assert ids[0] != ids[1]  # together in cam0 at once


def test_link_writes_person_ids_into_the_gallery_rows_under_its_lock(scene):
    link_file(LinkRequest(scene / "e.parquet", scene / "p.parquet", gallery=scene / "g.faiss", threshold=0.8))
    rows = index.load_index(scene / "g.faiss").rows
    assert rows["person_id"].tolist() == [0, 1, 0, 0, 1, 0]
    assert not list(scene.glob(".g.faiss.*.tmp"))  # written atomically
    people = build_people(rows)
    assert sorted(people) == [0, 1] and [v.camid for v in people[1].visits] == [0, 1]


def test_a_gallery_without_the_tracklets_is_refused_and_left_as_it_was(scene, tmp_path):
    other = _table()
    other.rows["tracklet_id"] = [f"x{i}" for i in range(6)]
    index.build_index(other, tmp_path / "other.faiss", force=True)
    before = (tmp_path / "other.faiss").read_bytes()
    with pytest.raises(GalleryError, match="holds no tracklet 0/v/0001"):
        index.set_person_ids(tmp_path / "other.faiss", {"0/v/0001": 0})
    assert (tmp_path / "other.faiss").read_bytes() == before


def test_exports_hold_every_linked_box_with_global_ids(scene):
    link_file(LinkRequest(scene / "e.parquet", scene / "p.parquet", threshold=0.8, export=scene / "all.txt"))
    rows = np.loadtxt(scene / "all.txt", ndmin=2)
    assert len(rows) == sum(s[3] for s in SCENE) and (rows[:, 7:] == -1).all()
    first = rows[(rows[:, 0] == 0) & (rows[:, 2] == 11)]  # camera 0, frame 11 (1-based): A's first box
    assert first.tolist() == [[0, 1, 11, 10.0, 1.0, 10.0, 30.0, -1, -1]]  # person 0 is id 1
    link_file(LinkRequest(scene / "e.parquet", scene / "q.parquet", threshold=0.8, export=scene / "mot",
                          export_format="mot"))
    assert sorted(p.name for p in (scene / "mot").iterdir()) == ["cam0.txt", "cam1.txt", "cam2.txt"]
    cam1 = np.loadtxt(scene / "mot" / "cam1.txt", delimiter=",", ndmin=2)
    assert set(cam1[:, 1].astype(int)) == {1, 2} and len(cam1) == 60
    assert cam1[0].tolist() == [101, 1, 100, 1, 10, 30, 1, -1, -1, -1]


def test_incremental_linking_keeps_earlier_people_and_links_new_tracklets_onto_them(scene, tmp_path):
    write_embeddings(_table(SCENE[:4]), tmp_path / "early.parquet")
    link_file(LinkRequest(tmp_path / "early.parquet", tmp_path / "p1.parquet", threshold=0.8))
    later = SCENE[4:] + [("3/v/0001", 3, 0, 10, 40.0, "C")]
    write_embeddings(_table(later), tmp_path / "late.parquet")
    summary = link_file(LinkRequest(tmp_path / "late.parquet", tmp_path / "p2.parquet", threshold=0.8,
                                    onto=tmp_path / "p1.parquet"))
    ids = read_embeddings(tmp_path / "p2.parquet").rows.set_index("tracklet_id")["person_id"]
    assert ids[:4].tolist() == [0, 1, 0, 0]  # kept
    assert (ids["1/v/0002"], ids["2/v/0001"], ids["3/v/0001"]) == (1, 0, 2)  # joined B, joined A, new person
    assert (summary.tracklets, summary.new_tracklets) == (7, 3)


def test_cli_link_prints_people_and_json(scene):
    runner = CliRunner()
    base = ["link", str(scene / "e.parquet"), "--threshold", "0.8"]
    result = runner.invoke(app, base + ["--out", str(scene / "p.parquet")])
    assert result.exit_code == 0, result.output
    assert "2 people from 6 tracklets" in result.stdout and "cam0 12:00:01-12:00:03 → cam1 12:00:10" in result.stdout
    result = runner.invoke(app, base + ["--out", str(scene / "p.parquet"), "--force", "--json"])
    summary = json.loads(result.stdout)
    assert summary["people"][0]["visits"][1]["camid"] == 1 and summary["threshold"] == 0.8
    again = runner.invoke(app, base + ["--out", str(scene / "p.parquet")])
    assert again.exit_code == 2 and "already exists" in again.output
    both = runner.invoke(app, base + ["--out", str(scene / "x.parquet"), "--labelled", str(scene / "e.parquet")])
    assert both.exit_code == 2 and "pass one of them" in both.output


def test_the_threshold_is_calibrated_on_labelled_tracklets_when_given(scene, tmp_path):
    labelled = _table()
    labelled.rows["pid"] = [0 if s[5] == "A" else 1 for s in SCENE]
    labelled = Embeddings(labelled.rows, labelled.vectors + np.float32(0.05) * np.eye(6, 3, dtype=np.float32), INFO)
    write_embeddings(labelled, tmp_path / "labelled.parquet")
    summary = link_file(LinkRequest(scene / "e.parquet", scene / "p.parquet", labelled=tmp_path / "labelled.parquet"))
    assert summary.threshold == index.calibrate_threshold(labelled, 0.01).threshold
    assert summary.threshold_from == "--labelled"
    default = link_file(LinkRequest(scene / "e.parquet", scene / "d.parquet"))
    assert (default.threshold, default.threshold_from) == (0.4, "default")


def test_a_timeline_splits_visits_at_a_visit_elsewhere_and_keeps_fragments_together():
    rows = _table().rows.assign(person_id=0)  # everyone one person: cam0 (two fragments), cam0, cam1, cam1, cam2
    (person,) = build_people(rows).values()
    assert [v.camid for v in person.visits] == [0, 1, 2]  # 0/v/0002 overlaps the fragments: the same visit
    rows.loc[5, "camid"], rows.loc[5, "start_time"], rows.loc[5, "end_time"] = 0, T0 + 30.0, T0 + 31.0
    (person,) = build_people(rows).values()
    assert [v.camid for v in person.visits] == [0, 1, 0]  # a return to camera 0 is a visit of its own
